//! Reading a pod (its metadata and spec, as JSON) the way the upstream
//! checks read the typed Go structs, and the message helpers they share.
//!
//! Go's pointer fields become "present and not `null`" here: `"emptyDir": {}`
//! is set, `"emptyDir": null` and a missing key are not.

use serde_json::{Map, Value};

/// The pod metadata and spec one evaluation looks at: a Pod's own, or a
/// workload's pod template.
#[derive(Debug, Clone, Copy)]
pub struct PodView<'a> {
    /// `metadata` (of the Pod or of the template); `Null` when absent.
    pub meta: &'a Value,
    /// The pod spec.
    pub spec: &'a Value,
}

impl<'a> PodView<'a> {
    /// Every container in upstream's visiting order (`visitor.go`):
    /// initContainers, containers, ephemeralContainers.
    pub fn containers(&self) -> Vec<&'a Value> {
        ["initContainers", "containers", "ephemeralContainers"]
            .iter()
            .filter_map(|field| self.spec.get(field)?.as_array())
            .flatten()
            .collect()
    }

    /// `spec.securityContext`, when set.
    pub fn security_context(&self) -> Option<&'a Value> {
        set(self.spec, "securityContext")
    }

    /// `metadata.annotations`, when a map.
    pub fn annotations(&self) -> Option<&'a Map<String, Value>> {
        self.meta.get("annotations")?.as_object()
    }

    /// `spec.volumes`.
    pub fn volumes(&self) -> Vec<&'a Value> {
        self.spec
            .get("volumes")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .collect()
    }

    /// A boolean pod spec field such as `hostNetwork`; `false` when unset.
    pub fn flag(&self, field: &str) -> bool {
        boolean(self.spec, field) == Some(true)
    }

    /// `spec.os.name == "windows"`: upstream skips Linux-only restricted
    /// checks for such pods from policy v1.25.
    pub fn is_windows(&self) -> bool {
        self.spec
            .get("os")
            .and_then(|os| os.get("name"))
            .and_then(Value::as_str)
            == Some("windows")
    }

    /// `spec.hostUsers == false`: the pod runs in a user namespace, which
    /// relaxes some checks from policy v1.35 (`relaxPolicyForUserNamespacePod`).
    pub fn in_user_namespace(&self) -> bool {
        boolean(self.spec, "hostUsers") == Some(false)
    }
}

/// `value[key]` when present and not `null` (a set Go pointer).
pub fn set<'a>(value: &'a Value, key: &str) -> Option<&'a Value> {
    value.get(key).filter(|v| !v.is_null())
}

/// A boolean field, when it is a boolean.
pub fn boolean(value: &Value, key: &str) -> Option<bool> {
    value.get(key)?.as_bool()
}

/// A string field; `""` when absent, as Go's zero value.
pub fn string<'a>(value: &'a Value, key: &str) -> &'a str {
    value.get(key).and_then(Value::as_str).unwrap_or("")
}

/// A container's `name`.
pub fn name(container: &Value) -> &str {
    string(container, "name")
}

/// A container's `securityContext`, when set.
pub fn security_context(container: &Value) -> Option<&Value> {
    set(container, "securityContext")
}

/// Upstream's `joinQuote`: `"a", "b"`.
pub fn join_quote<S: AsRef<str>>(items: &[S]) -> String {
    if items.is_empty() {
        return String::new();
    }
    let inner: Vec<&str> = items.iter().map(AsRef::as_ref).collect();
    format!("\"{}\"", inner.join("\", \""))
}

/// Upstream's `pluralize`.
pub fn pluralize<'a>(singular: &'a str, plural: &'a str, count: usize) -> &'a str {
    if count == 1 { singular } else { plural }
}

/// `container "a"` / `containers "a", "b"`.
pub fn containers_phrase<S: AsRef<str>>(names: &[S]) -> String {
    format!(
        "{} {}",
        pluralize("container", "containers", names.len()),
        join_quote(names)
    )
}

/// Go's `%q` for the strings checks quote (annotation values): a
/// double-quoted string with Go escapes for quotes, backslashes and
/// control characters.
pub fn go_quote(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\u{b}' => out.push_str("\\v"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_quote_and_pluralize_match_upstream() {
        assert_eq!(join_quote::<&str>(&[]), "");
        assert_eq!(join_quote(&["a"]), r#""a""#);
        assert_eq!(join_quote(&["a", "b"]), r#""a", "b""#);
        assert_eq!(containers_phrase(&["a"]), r#"container "a""#);
        assert_eq!(containers_phrase(&["a", "b"]), r#"containers "a", "b""#);
        assert_eq!(pluralize("x", "xs", 0), "xs");
    }

    #[test]
    fn go_quote_escapes() {
        assert_eq!(go_quote("unconfined"), r#""unconfined""#);
        assert_eq!(go_quote("a\"b\\c\nd\u{1}"), r#""a\"b\\c\nd\x01""#);
    }
}
