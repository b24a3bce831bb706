//! Reading and changing any Kubernetes object given as JSON: its common
//! metadata, and changes that keep a mutation's patch minimal.
//!
//! Objects stay `serde_json::Value`: a policy usually needs a handful of
//! fields, and typed structs would both grow the module and drop fields a
//! mutation must keep (see [`crate::Request::object_as`] for typed reads).
//!
//! The changing functions only touch the object when the value differs, and
//! create a missing map (and its parents) only when they put something in
//! it, so a policy that finds nothing to do returns an equal object and the
//! host sends no patch. Paths are JSON pointers (RFC 6901) such as
//! `/metadata/labels`; use [`escape_key`] for keys containing `/` or `~`.

use std::borrow::Cow;

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

/// Escapes one key for a JSON pointer (RFC 6901): `~` as `~0` and `/` as
/// `~1`, so `app.kubernetes.io/name` can be a step of a path.
pub fn escape_key(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

/// One step of a JSON pointer, unescaped (`~1` is `/`, `~0` is `~`);
/// borrowed when there is nothing to unescape, as in almost every path.
fn unescape(step: &str) -> Cow<'_, str> {
    if step.contains('~') {
        Cow::Owned(step.replace("~1", "/").replace("~0", "~"))
    } else {
        Cow::Borrowed(step)
    }
}

/// The raw (still escaped) steps of a JSON pointer with the pointer up to
/// each step's parent, for errors; `""` (the whole object) has none.
fn steps(pointer: &str) -> Result<impl Iterator<Item = (&str, &str)>, String> {
    let rest =
        match pointer {
            "" => None,
            _ => Some(pointer.strip_prefix('/').ok_or_else(|| {
                format!("invalid JSON pointer {pointer:?}: it must start with /")
            })?),
        };
    let mut parent_end = 0;
    Ok(rest
        .into_iter()
        .flat_map(|rest| rest.split('/'))
        .map(move |step| {
            let parent = &pointer[..parent_end];
            parent_end += 1 + step.len();
            (parent, step)
        }))
}

/// What a path is called in errors: `the object` for the root.
fn place(pointer: &str) -> &str {
    if pointer.is_empty() {
        "the object"
    } else {
        pointer
    }
}

/// The map at `pointer`, created when absent or `null`, with every missing
/// or `null` parent map. An existing array is stepped into by index (e.g.
/// `/spec/containers/0/securityContext`), but no array or element is ever
/// created. An error names the first place on the way that holds something
/// else.
pub fn ensure_map<'a>(
    object: &'a mut Value,
    pointer: &str,
) -> Result<&'a mut Map<String, Value>, String> {
    let mut here = object;
    for (parent, step) in steps(pointer)? {
        let at = place(parent);
        here = match here {
            Value::Object(map) => {
                let slot = map.entry(unescape(step)).or_insert(Value::Null);
                if slot.is_null() {
                    *slot = Value::Object(Map::new());
                }
                slot
            }
            Value::Array(items) => step
                .parse::<usize>()
                .ok()
                .and_then(|index| items.get_mut(index))
                .ok_or_else(|| format!("{at} has no element {step}"))?,
            _ => return Err(format!("{at} is not a JSON object")),
        };
    }
    here.as_object_mut()
        .ok_or_else(|| format!("{} is not a JSON object", place(pointer)))
}

/// Adds each `(key, value)` to the map at `pointer` when the key is absent,
/// and returns the keys it added. Existing values are kept whatever they
/// are; the map is created only when something is added.
pub fn add_missing<'a>(
    object: &mut Value,
    pointer: &str,
    entries: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Result<Vec<&'a str>, String> {
    let existing = object.pointer(pointer).and_then(Value::as_object);
    let missing: Vec<(&str, &str)> = entries
        .into_iter()
        .filter(|(key, _)| existing.is_none_or(|map| !map.contains_key(*key)))
        .collect();
    if missing.is_empty() {
        return Ok(Vec::new());
    }
    let map = ensure_map(object, pointer)?;
    Ok(missing
        .into_iter()
        .map(|(key, value)| {
            map.insert(key.to_string(), Value::String(value.to_string()));
            key
        })
        .collect())
}

/// Sets the value at `pointer`, creating missing parent maps, unless it is
/// already equal; returns whether the object changed.
pub fn set(object: &mut Value, pointer: &str, value: Value) -> Result<bool, String> {
    if object.pointer(pointer) == Some(&value) {
        return Ok(false);
    }
    let (parent, key) = split_last(pointer)?;
    ensure_map(object, parent)?.insert(key, value);
    Ok(true)
}

/// Sets the value at `pointer` only when it is absent or `null`: a default
/// that never overrides what the user wrote. Returns whether it changed.
pub fn set_default(object: &mut Value, pointer: &str, value: Value) -> Result<bool, String> {
    if object.pointer(pointer).is_some_and(|v| !v.is_null()) {
        return Ok(false);
    }
    set(object, pointer, value)
}

/// Sets label `key` to `value` in `metadata.labels`; returns whether the
/// object changed. For a pod template, use [`set`] with
/// [`crate::pods::PodSpecRef::metadata_path`].
pub fn set_label(object: &mut Value, key: &str, value: &str) -> Result<bool, String> {
    let pointer = format!("/metadata/labels/{}", escape_key(key));
    set(object, &pointer, Value::String(value.to_string()))
}

/// Sets annotation `key` to `value` in `metadata.annotations`; returns
/// whether the object changed.
pub fn set_annotation(object: &mut Value, key: &str, value: &str) -> Result<bool, String> {
    let pointer = format!("/metadata/annotations/{}", escape_key(key));
    set(object, &pointer, Value::String(value.to_string()))
}

/// Removes `key` from the map at `pointer`; returns whether it was there.
pub fn remove(object: &mut Value, pointer: &str, key: &str) -> bool {
    object
        .pointer_mut(pointer)
        .and_then(Value::as_object_mut)
        .is_some_and(|map| map.remove(key).is_some())
}

/// A pointer's parent and last key: `/a/b` is `/a` and `b`.
fn split_last(pointer: &str) -> Result<(&str, String), String> {
    match pointer.rsplit_once('/') {
        Some((parent, key)) if pointer.starts_with('/') => Ok((parent, unescape(key).into_owned())),
        _ => Err(format!(
            "invalid JSON pointer {pointer:?}: it must name a member, e.g. /metadata/labels/app"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ensure_map_creates_missing_and_null_maps_only() {
        let mut object = json!({"metadata": {"labels": null}});
        ensure_map(&mut object, "/metadata/labels")
            .unwrap()
            .insert("a".into(), json!("b"));
        ensure_map(&mut object, "/spec/template/metadata").unwrap();
        let mut escaped = json!({});
        ensure_map(&mut escaped, "/a~1b/c~0d").unwrap();
        assert_eq!(escaped, json!({"a/b": {"c~d": {}}}));
        assert_eq!(
            object,
            json!({"metadata": {"labels": {"a": "b"}}, "spec": {"template": {"metadata": {}}}})
        );
        let mut odd = json!({"metadata": {"labels": "x"}});
        assert_eq!(
            ensure_map(&mut odd, "/metadata/labels/deeper").map(|_| ()),
            Err("/metadata/labels is not a JSON object".to_string())
        );
        assert_eq!(
            ensure_map(&mut json!(3), "/metadata").map(|_| ()),
            Err("the object is not a JSON object".to_string())
        );
        assert_eq!(
            ensure_map(&mut json!({}), "metadata").map(|_| ()),
            Err("invalid JSON pointer \"metadata\": it must start with /".to_string())
        );
    }

    #[test]
    fn changes_go_through_existing_array_elements() {
        let mut pod = json!({"spec": {"containers": [{"name": "a"}, {"name": "b", "securityContext": null}]}});
        assert_eq!(
            set_default(
                &mut pod,
                "/spec/containers/1/securityContext/runAsNonRoot",
                json!(true)
            ),
            Ok(true)
        );
        assert_eq!(
            set(
                &mut pod,
                "/spec/containers/0/imagePullPolicy",
                json!("IfNotPresent")
            ),
            Ok(true)
        );
        assert_eq!(
            pod["spec"]["containers"],
            json!([{"name": "a", "imagePullPolicy": "IfNotPresent"},
                   {"name": "b", "securityContext": {"runAsNonRoot": true}}])
        );
        assert_eq!(
            set(&mut pod, "/spec/containers/2/image", json!("x")),
            Err("/spec/containers has no element 2".to_string())
        );
        assert_eq!(
            set(&mut pod, "/spec/containers/first/image", json!("x")),
            Err("/spec/containers has no element first".to_string())
        );
    }

    #[test]
    fn add_missing_never_overwrites_and_keeps_equal_objects_equal() {
        let mut object = json!({"metadata": {"labels": {"team": "a"}}});
        let defaults = [("team", "b"), ("tier", "web")];
        assert_eq!(
            add_missing(&mut object, "/metadata/labels", defaults),
            Ok(vec!["tier"])
        );
        assert_eq!(
            object,
            json!({"metadata": {"labels": {"team": "a", "tier": "web"}}})
        );
        let before = object.clone();
        assert_eq!(
            add_missing(&mut object, "/metadata/labels", defaults),
            Ok(vec![])
        );
        assert_eq!(object, before);
        let mut bare = json!({"kind": "Pod"});
        assert_eq!(
            add_missing(&mut bare, "/metadata/annotations", []),
            Ok(vec![])
        );
        assert_eq!(
            bare,
            json!({"kind": "Pod"}),
            "nothing added, no map created"
        );
    }

    #[test]
    fn set_reports_change_and_escapes_keys() {
        let mut object = json!({"metadata": {}});
        assert_eq!(
            set_label(&mut object, "app.kubernetes.io/name", "web"),
            Ok(true)
        );
        assert_eq!(
            set_label(&mut object, "app.kubernetes.io/name", "web"),
            Ok(false)
        );
        assert_eq!(label(&object, "app.kubernetes.io/name"), Some("web"));
        assert_eq!(set_annotation(&mut object, "a~b", "1"), Ok(true));
        assert_eq!(annotation(&object, "a~b"), Some("1"));
        assert!(remove(&mut object, "/metadata/annotations", "a~b"));
        assert!(!remove(&mut object, "/metadata/annotations", "a~b"));
        assert_eq!(set(&mut object, "/spec/replicas", json!(2)), Ok(true));
        assert_eq!(object["spec"]["replicas"], json!(2));
        assert!(set(&mut object, "", json!(1)).is_err());
    }

    #[test]
    fn set_default_keeps_what_is_written() {
        let mut object = json!({"spec": {"a": 1, "b": null}});
        assert_eq!(set_default(&mut object, "/spec/a", json!(9)), Ok(false));
        assert_eq!(set_default(&mut object, "/spec/b", json!(9)), Ok(true));
        assert_eq!(set_default(&mut object, "/spec/c", json!(9)), Ok(true));
        assert_eq!(object, json!({"spec": {"a": 1, "b": 9, "c": 9}}));
    }

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
