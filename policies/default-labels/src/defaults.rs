//! Adding absent keys to one of an object's metadata maps.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

/// Adds each of `defaults` to `metadata.<field>` when the key is absent,
/// and returns the keys it added.
///
/// Existing values are kept whatever they are. The metadata map and the
/// field's map are created only when something is added, so an object that
/// needs nothing stays byte-for-byte equal. A `null` map counts as absent.
pub fn add_missing<'a>(
    object: &mut Value,
    field: &str,
    defaults: &'a BTreeMap<String, String>,
) -> Result<Vec<&'a str>, String> {
    let existing = object
        .get("metadata")
        .and_then(|m| m.get(field))
        .and_then(Value::as_object);
    let missing: Vec<(&String, &String)> = defaults
        .iter()
        .filter(|(key, _)| existing.is_none_or(|map| !map.contains_key(*key)))
        .collect();
    if missing.is_empty() {
        return Ok(Vec::new());
    }
    let root = object
        .as_object_mut()
        .ok_or("the object is not a JSON object")?;
    let metadata = map_entry(root, "metadata").ok_or("metadata is not a JSON object")?;
    let map = map_entry(metadata, field)
        .ok_or_else(|| format!("metadata.{field} is not a JSON object"))?;
    let mut added = Vec::with_capacity(missing.len());
    for (key, value) in missing {
        map.insert(key.clone(), Value::String(value.clone()));
        added.push(key.as_str());
    }
    Ok(added)
}

/// The map under `key`, created when absent or `null`; `None` when
/// something else is there.
fn map_entry<'a>(
    parent: &'a mut Map<String, Value>,
    key: &str,
) -> Option<&'a mut Map<String, Value>> {
    let slot = parent.entry(key).or_insert(Value::Null);
    if slot.is_null() {
        *slot = Value::Object(Map::new());
    }
    slot.as_object_mut()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn defaults() -> BTreeMap<String, String> {
        [("team", "platform"), ("tier", "backend")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn adds_only_absent_keys() {
        let mut object = json!({"metadata": {"labels": {"team": "payments"}}});
        let defaults = defaults();
        assert_eq!(
            add_missing(&mut object, "labels", &defaults),
            Ok(vec!["tier"])
        );
        assert_eq!(
            object,
            json!({"metadata": {"labels": {"team": "payments", "tier": "backend"}}})
        );
    }

    #[test]
    fn creates_maps_only_when_adding() {
        let mut object = json!({"kind": "ConfigMap"});
        add_missing(&mut object, "labels", &BTreeMap::new()).unwrap();
        assert_eq!(object, json!({"kind": "ConfigMap"}));
        add_missing(&mut object, "labels", &defaults()).unwrap();
        assert_eq!(
            object,
            json!({"kind": "ConfigMap", "metadata": {"labels": {"team": "platform", "tier": "backend"}}})
        );
        let mut object = json!({"metadata": {"labels": null}});
        add_missing(&mut object, "labels", &defaults()).unwrap();
        assert_eq!(object["metadata"]["labels"]["team"], "platform");
    }

    #[test]
    fn full_map_is_left_alone() {
        let mut object = json!({"metadata": {"labels": {"team": "", "tier": "x"}}});
        let before = object.clone();
        assert_eq!(add_missing(&mut object, "labels", &defaults()), Ok(vec![]));
        assert_eq!(object, before);
    }

    #[test]
    fn odd_shapes_are_errors() {
        let mut object = json!({"metadata": {"labels": ["team"]}});
        assert_eq!(
            add_missing(&mut object, "labels", &defaults()),
            Err("metadata.labels is not a JSON object".to_string())
        );
        let mut object = json!({"metadata": 3});
        assert_eq!(
            add_missing(&mut object, "labels", &defaults()),
            Err("metadata is not a JSON object".to_string())
        );
        let mut object = json!("pod");
        assert_eq!(
            add_missing(&mut object, "labels", &defaults()),
            Err("the object is not a JSON object".to_string())
        );
    }
}
