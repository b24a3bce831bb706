//! Which UPDATEs are evaluated: upstream (`admission/admission.go`,
//! `isSignificantPodUpdate`) lets a Pod update through unevaluated when
//! nothing the checks can see may have changed. A running pod's spec is
//! immutable except for images (and ephemeral containers, through their
//! subresource), so only those, the seccomp annotations and the number of
//! containers count.

use serde_json::Value;

use crate::pod::{name, string};

const SECCOMP_POD_ANNOTATION: &str = "seccomp.security.alpha.kubernetes.io/pod";
const SECCOMP_CONTAINER_ANNOTATION_PREFIX: &str = "container.seccomp.security.alpha.kubernetes.io/";

/// Whether a Pod UPDATE from `old` to `new` must be evaluated.
pub fn significant_pod_update(new: &Value, old: &Value) -> bool {
    let annotation = |pod: &Value, key: &str| -> String {
        pod.get("metadata")
            .and_then(|m| m.get("annotations"))
            .and_then(|a| a.get(key))
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    let list = |pod: &'_ Value, field: &str| -> Vec<Value> {
        pod.get("spec")
            .and_then(|s| s.get(field))
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    };
    let container_changed = |c: &Value, old_c: &Value| {
        if string(c, "image") != string(old_c, "image") {
            return true;
        }
        let key = format!("{SECCOMP_CONTAINER_ANNOTATION_PREFIX}{}", name(c));
        annotation(new, &key) != annotation(old, &key)
    };

    if annotation(new, SECCOMP_POD_ANNOTATION) != annotation(old, SECCOMP_POD_ANNOTATION) {
        return true;
    }
    for field in ["containers", "initContainers"] {
        let (now, before) = (list(new, field), list(old, field));
        if now.len() != before.len() {
            return true;
        }
        if now
            .iter()
            .zip(&before)
            .any(|(c, o)| container_changed(c, o))
        {
            return true;
        }
    }
    // Ephemeral containers are matched by name: one can only be added.
    let (now, before) = (
        list(new, "ephemeralContainers"),
        list(old, "ephemeralContainers"),
    );
    if now.len() != before.len() {
        return true;
    }
    now.iter().any(|c| {
        before
            .iter()
            .find(|o| name(o) == name(c))
            .is_none_or(|o| container_changed(c, o))
    })
}

/// Whether a workload UPDATE changed its pod template (spec or metadata):
/// a scale or a status-like change of a workload whose template stays as
/// it was is not re-evaluated, so an existing workload can still be scaled
/// after the policy is introduced.
pub fn template_changed(
    new_spec: &Value,
    old_spec: Option<&Value>,
    new_meta: &Value,
    old_meta: &Value,
) -> bool {
    old_spec != Some(new_spec) || new_meta != old_meta
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(image: &str, labels: Value) -> Value {
        json!({
            "kind": "Pod",
            "metadata": {"name": "p", "labels": labels},
            "spec": {"containers": [{"name": "app", "image": image}]}
        })
    }

    #[test]
    fn label_change_is_not_significant() {
        assert!(!significant_pod_update(
            &pod("nginx", json!({"a": "1"})),
            &pod("nginx", json!({"a": "2"}))
        ));
    }

    #[test]
    fn image_and_seccomp_annotation_changes_are_significant() {
        assert!(significant_pod_update(
            &pod("nginx:2", json!({})),
            &pod("nginx:1", json!({}))
        ));
        let mut annotated = pod("nginx", json!({}));
        annotated["metadata"]["annotations"] =
            json!({"container.seccomp.security.alpha.kubernetes.io/app": "unconfined"});
        assert!(significant_pod_update(&annotated, &pod("nginx", json!({}))));
    }

    #[test]
    fn added_ephemeral_container_is_significant() {
        let old = pod("nginx", json!({}));
        let mut new = old.clone();
        new["spec"]["ephemeralContainers"] = json!([{"name": "debug", "image": "busybox"}]);
        assert!(significant_pod_update(&new, &old));
        assert!(!significant_pod_update(&new, &new.clone()));
    }
}
