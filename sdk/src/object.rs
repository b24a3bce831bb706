//! Reading the common metadata of any Kubernetes object given as JSON.
//!
//! Objects stay `serde_json::Value` (no typed Kubernetes structs): a policy
//! usually needs a handful of fields, and typed structs would both grow the
//! module and drop fields a mutation must keep.

use serde_json::{Map, Value};

/// The object's `kind`, e.g. `"Pod"`.
pub fn kind(object: &Value) -> Option<&str> {
    object.get("kind")?.as_str()
}

/// `metadata.name`.
pub fn name(object: &Value) -> Option<&str> {
    object.get("metadata")?.get("name")?.as_str()
}

/// `metadata.namespace`.
pub fn namespace(object: &Value) -> Option<&str> {
    object.get("metadata")?.get("namespace")?.as_str()
}

/// `metadata.labels`, when present and a map.
pub fn labels(object: &Value) -> Option<&Map<String, Value>> {
    object.get("metadata")?.get("labels")?.as_object()
}

/// The value of label `key`, when present and a string.
pub fn label<'a>(object: &'a Value, key: &str) -> Option<&'a str> {
    labels(object)?.get(key)?.as_str()
}

/// `metadata.annotations`, when present and a map.
pub fn annotations(object: &Value) -> Option<&Map<String, Value>> {
    object.get("metadata")?.get("annotations")?.as_object()
}

/// The value of annotation `key`, when present and a string.
pub fn annotation<'a>(object: &'a Value, key: &str) -> Option<&'a str> {
    annotations(object)?.get(key)?.as_str()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_metadata() {
        let pod = json!({
            "kind": "Pod",
            "metadata": {
                "name": "web",
                "namespace": "shop",
                "labels": {"app": "web", "n": 1},
                "annotations": {"note": "hi"}
            }
        });
        assert_eq!(kind(&pod), Some("Pod"));
        assert_eq!(name(&pod), Some("web"));
        assert_eq!(namespace(&pod), Some("shop"));
        assert_eq!(labels(&pod).map(|l| l.len()), Some(2));
        assert_eq!(label(&pod, "app"), Some("web"));
        assert_eq!(label(&pod, "n"), None);
        assert_eq!(label(&pod, "missing"), None);
        assert_eq!(annotation(&pod, "note"), Some("hi"));
    }

    #[test]
    fn missing_or_odd_metadata_reads_as_none() {
        for object in [
            json!({}),
            json!({"metadata": null}),
            json!({"metadata": {"labels": null}}),
            json!(3),
        ] {
            assert_eq!(labels(&object), None);
            assert_eq!(label(&object, "a"), None);
            assert_eq!(annotations(&object), None);
            assert_eq!(name(&object), None);
        }
    }
}
