//! Members of the request that are parsed only when a policy reads them.
//!
//! `object`, `oldObject` and `options` are most of a request's bytes, and
//! most policies read one of them or none: a validating policy on CREATE
//! never looks at `oldObject`, a policy about labels never walks the pod
//! spec's containers twice. The request keeps their JSON text (checked to
//! be JSON when the request is parsed) and builds a `serde_json::Value`
//! the first time a policy asks.
//!
//! `metadata.managedFields` is left out of that `Value`: it is the
//! API server's bookkeeping of which client set which field, often the
//! largest part of an object, and no admission decision reads it. Its text
//! is kept so that a mutating policy's output carries it back unchanged.

use std::fmt;
use std::sync::OnceLock;

use serde::de::DeserializeOwned;
use serde::de::{DeserializeSeed, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

/// The key left out of an object's `metadata`.
const MANAGED_FIELDS: &str = "managedFields";

/// One JSON member of the request, kept as text until first read.
#[derive(Debug, Clone, Default)]
pub(crate) struct LazyObject {
    raw: Option<Box<RawValue>>,
    parsed: OnceLock<Parsed>,
}

#[derive(Debug, Clone, Default)]
struct Parsed {
    /// `None` when the member is absent or `null`.
    value: Option<Value>,
    /// The text of `metadata.managedFields`, when the object had one.
    managed_fields: Option<Box<RawValue>>,
}

impl LazyObject {
    /// The member as a `Value` without `metadata.managedFields`; `None`
    /// when absent or `null`. Parsed on the first call.
    pub(crate) fn get(&self) -> Option<&Value> {
        self.parsed().value.as_ref()
    }

    /// The member's JSON text as the API server sent it, managed fields
    /// included; `None` when absent or `null`.
    pub(crate) fn raw(&self) -> Option<&str> {
        self.raw
            .as_deref()
            .map(RawValue::get)
            .filter(|text| *text != "null")
    }

    /// `object` with `metadata.managedFields` put back as they were, for a
    /// mutated copy of this member that is sent back to the host (which
    /// would otherwise read their absence as a removal).
    pub(crate) fn restore_managed_fields(&self, object: &mut Value) {
        let Some(raw) = &self.parsed().managed_fields else {
            return;
        };
        let Some(metadata) = object.get_mut("metadata").and_then(Value::as_object_mut) else {
            return;
        };
        if metadata.contains_key(MANAGED_FIELDS) {
            return;
        }
        // The text was checked to be JSON when the request was parsed.
        if let Ok(fields) = serde_json::from_str::<Value>(raw.get()) {
            metadata.insert(MANAGED_FIELDS.to_string(), fields);
        }
    }

    fn parsed(&self) -> &Parsed {
        self.parsed
            .get_or_init(|| self.raw.as_deref().map(parse).unwrap_or_default())
    }
}

impl LazyObject {
    /// Parses the member now, as `deserialize_with` of a field every
    /// policy reads (`object`): one pass over its text instead of a check
    /// now and a parse later.
    pub(crate) fn parse_now<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let mut managed_fields = None;
        let value = TopLevel {
            managed_fields: &mut managed_fields,
        }
        .deserialize(deserializer)?;
        Ok(LazyObject {
            raw: None,
            parsed: OnceLock::from(Parsed {
                value: Some(value).filter(|v| !v.is_null()),
                managed_fields,
            }),
        })
    }

    /// The member as a `T`: read from its text when it was kept, else
    /// from the parsed value (without managed fields).
    pub(crate) fn typed<T: DeserializeOwned>(&self) -> Option<serde_json::Result<T>> {
        match self.raw() {
            Some(text) => Some(serde_json::from_str(text)),
            None => self.get().map(T::deserialize),
        }
    }
}

impl PartialEq for LazyObject {
    fn eq(&self, other: &Self) -> bool {
        self.get() == other.get()
    }
}

impl<'de> Deserialize<'de> for LazyObject {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // `RawValue` checks that the text is JSON (with serde_json's depth
        // limit), so parsing it later cannot fail on malformed input.
        Ok(LazyObject {
            raw: Option::<Box<RawValue>>::deserialize(deserializer)?,
            parsed: OnceLock::new(),
        })
    }
}

/// Parses `raw`, leaving `metadata.managedFields` out of the value. An
/// object of another shape (not a map, `metadata` not a map) is parsed
/// whole.
fn parse(raw: &RawValue) -> Parsed {
    let mut managed_fields = None;
    let seed = TopLevel {
        managed_fields: &mut managed_fields,
    };
    let mut deserializer = serde_json::Deserializer::from_str(raw.get());
    match seed.deserialize(&mut deserializer) {
        Ok(value) => Parsed {
            value: Some(value).filter(|v| !v.is_null()),
            managed_fields,
        },
        // Not reachable for text that parsed as JSON (every shape is
        // visited); kept so that an oddity never loses the object.
        Err(_) => Parsed {
            value: serde_json::from_str::<Value>(raw.get())
                .ok()
                .filter(|v| !v.is_null()),
            managed_fields: None,
        },
    }
}

/// The visits of [`Value`] for everything but maps, so the seeds below
/// read any JSON and only treat maps specially.
macro_rules! visit_like_value {
    () => {
        fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<Value, E> {
            Ok(Value::Bool(v))
        }
        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Value, E> {
            Ok(Value::from(v))
        }
        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Value, E> {
            Ok(Value::from(v))
        }
        fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Value, E> {
            Ok(Value::from(v))
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Value, E> {
            Ok(Value::String(v.to_string()))
        }
        fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Value, E> {
            Ok(Value::String(v))
        }
        fn visit_unit<E: serde::de::Error>(self) -> Result<Value, E> {
            Ok(Value::Null)
        }
        fn visit_none<E: serde::de::Error>(self) -> Result<Value, E> {
            Ok(Value::Null)
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, seq: A) -> Result<Value, A::Error> {
            Value::deserialize(serde::de::value::SeqAccessDeserializer::new(seq))
        }
    };
}

/// The object: a map whose `metadata` is read by [`Metadata`].
struct TopLevel<'a> {
    managed_fields: &'a mut Option<Box<RawValue>>,
}

impl<'de> DeserializeSeed<'de> for TopLevel<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for TopLevel<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a Kubernetes object")
    }

    visit_like_value!();

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut object = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let value = if key == "metadata" {
                map.next_value_seed(Metadata {
                    managed_fields: &mut *self.managed_fields,
                })?
            } else {
                map.next_value::<Value>()?
            };
            object.insert(key, value);
        }
        Ok(Value::Object(object))
    }
}

/// An object's `metadata`, with `managedFields` kept as text.
struct Metadata<'a> {
    managed_fields: &'a mut Option<Box<RawValue>>,
}

impl<'de> DeserializeSeed<'de> for Metadata<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Metadata<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object's metadata")
    }

    visit_like_value!();

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut metadata = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if key == MANAGED_FIELDS {
                *self.managed_fields = Some(map.next_value::<Box<RawValue>>()?);
                continue;
            }
            metadata.insert(key, map.next_value::<Value>()?);
        }
        Ok(Value::Object(metadata))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn lazy(value: &Value) -> LazyObject {
        serde_json::from_str(&value.to_string()).unwrap()
    }

    #[test]
    fn managed_fields_are_left_out_and_put_back() {
        let object = json!({
            "kind": "Pod",
            "metadata": {"name": "p", "managedFields": [{"manager": "kubectl", "fieldsV1": {"f:spec": {}}}]},
            "spec": {"containers": [{"name": "c", "image": "nginx"}]}
        });
        let member = lazy(&object);
        let read = member.get().unwrap();
        assert_eq!(read["metadata"], json!({"name": "p"}));
        assert_eq!(read["spec"], object["spec"]);
        assert_eq!(
            serde_json::from_str::<Value>(member.raw().unwrap()).unwrap(),
            object
        );

        let mut mutated = read.clone();
        mutated["metadata"]["labels"] = json!({"a": "b"});
        member.restore_managed_fields(&mut mutated);
        let mut expected = object.clone();
        expected["metadata"]["labels"] = json!({"a": "b"});
        assert_eq!(mutated, expected);
    }

    #[test]
    fn other_shapes_are_parsed_whole() {
        for value in [
            json!(null),
            json!("text"),
            json!([1, 2]),
            json!({"metadata": null, "a": 1}),
            json!({"metadata": "odd", "a": [true]}),
            json!({"metadata": {"managedFields": null}}),
        ] {
            let member = lazy(&value);
            let expected = Some(value.clone()).filter(|v| !v.is_null());
            // managedFields: null is left out like any other managedFields.
            let expected = expected.map(|mut v| {
                if let Some(m) = v.get_mut("metadata").and_then(Value::as_object_mut) {
                    m.remove(MANAGED_FIELDS);
                }
                v
            });
            assert_eq!(member.get(), expected.as_ref(), "{value}");
        }
    }

    #[test]
    fn absent_and_null_read_as_none() {
        assert_eq!(LazyObject::default().get(), None);
        assert_eq!(LazyObject::default().raw(), None);
        let member = lazy(&json!(null));
        assert_eq!(member.get(), None);
        assert_eq!(member.raw(), None);
    }

    #[test]
    fn a_mutation_that_sets_managed_fields_keeps_them() {
        let member = lazy(&json!({"metadata": {"managedFields": [1]}}));
        let mut mutated = json!({"metadata": {"managedFields": [2]}});
        member.restore_managed_fields(&mut mutated);
        assert_eq!(mutated, json!({"metadata": {"managedFields": [2]}}));
    }
}
