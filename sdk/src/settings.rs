//! Reading a policy's settings from the JSON text the host passes.

use serde::de::DeserializeOwned;

/// Deserializes settings JSON text into `S`.
///
/// Empty text and `null` mean "no settings" and are read as `{}`, so a
/// policy sees the same thing however the config leaves settings out.
/// Errors read `invalid settings: <serde's message with line and column>`,
/// which is what the operator sees when a module is rejected at load.
pub fn parse_settings<S: DeserializeOwned>(text: &str) -> Result<S, String> {
    let trimmed = text.trim();
    let text = if trimmed.is_empty() || trimmed == "null" {
        "{}"
    } else {
        text
    };
    serde_json::from_str(text).map_err(|e| format!("invalid settings: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Default, Deserialize, PartialEq)]
    #[serde(default, deny_unknown_fields)]
    struct Settings {
        allowed: Vec<String>,
    }

    #[test]
    fn empty_and_null_are_empty_objects() {
        for text in ["", "  ", "null", " null\n", "{}"] {
            assert_eq!(
                parse_settings::<Settings>(text),
                Ok(Settings::default()),
                "{text:?}"
            );
        }
    }

    #[test]
    fn reads_fields() {
        let s: Settings = parse_settings(r#"{"allowed":["a"]}"#).unwrap();
        assert_eq!(s.allowed, vec!["a".to_string()]);
    }

    #[test]
    fn unknown_field_is_a_clear_error() {
        let err = parse_settings::<Settings>(r#"{"foo": 1}"#).unwrap_err();
        assert_eq!(
            err,
            "invalid settings: unknown field `foo`, expected `allowed` at line 1 column 6"
        );
    }

    #[test]
    fn syntax_error_names_the_position() {
        let err = parse_settings::<Settings>("{\"allowed\": [}").unwrap_err();
        assert!(err.starts_with("invalid settings: "), "{err}");
        assert!(err.contains("line 1 column"), "{err}");
    }
}
