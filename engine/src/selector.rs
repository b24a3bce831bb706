//! Label selectors as Kubernetes writes them (`metav1.LabelSelector`:
//! `matchLabels` and `matchExpressions`), checked at load as the API
//! server checks a webhook's `namespaceSelector` and `objectSelector`, and
//! matched against a set of labels. Also the grammar of the names they use
//! (qualified names, label values), which `matchConditions` names share.

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;
use serde_json::value::RawValue;

/// A set of labels: a namespace's or an object's `metadata.labels`.
pub type Labels = BTreeMap<String, String>;

/// An object of a request (`object` or `oldObject`): as received, or as
/// the mutators before a policy left it.
#[derive(Debug, Clone, Copy)]
pub enum ObjectJson<'r> {
    Raw(&'r RawValue),
    Parsed(&'r serde_json::Value),
}

impl ObjectJson<'_> {
    /// Its `metadata.labels` (none when it has none).
    ///
    /// # Errors
    /// When it is not an object, or its labels are not a map of strings.
    pub fn labels(self) -> Result<Labels, serde_json::Error> {
        #[derive(Deserialize)]
        struct Object {
            metadata: Option<Metadata>,
        }
        #[derive(Deserialize)]
        struct Metadata {
            labels: Option<Labels>,
        }
        let object: Object = match self {
            Self::Raw(raw) => serde_json::from_str(raw.get())?,
            Self::Parsed(value) => Object::deserialize(value)?,
        };
        Ok(object
            .metadata
            .and_then(|metadata| metadata.labels)
            .unwrap_or_default())
    }
}

/// A selector as written. Both parts are optional; an empty selector
/// selects everything.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RawLabelSelector {
    match_labels: Option<BTreeMap<String, String>>,
    match_expressions: Option<Vec<RawRequirement>>,
}

/// One `matchExpressions` entry as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawRequirement {
    key: String,
    operator: Operator,
    values: Option<Vec<String>>,
}

/// How a requirement compares a label with its values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
enum Operator {
    /// The label is set to one of the values.
    In,
    /// The label is not set, or set to none of the values.
    NotIn,
    /// The label is set (to anything).
    Exists,
    /// The label is not set.
    DoesNotExist,
}

/// A checked selector: every `matchLabels` entry is an `In` requirement
/// with one value, as the API server reads it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelector {
    requirements: Vec<Requirement>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Requirement {
    key: String,
    operator: Operator,
    values: BTreeSet<String>,
}

impl LabelSelector {
    /// Checks a selector as the API server does (`ValidateLabelSelector`):
    /// keys are qualified names, values label values; `In` and `NotIn`
    /// need values, `Exists` and `DoesNotExist` take none.
    ///
    /// # Errors
    /// The first problem, prefixed with the field it is in (e.g.
    /// `matchExpressions[0].values: ...`).
    pub fn parse(raw: RawLabelSelector) -> Result<Self, String> {
        let mut requirements = Vec::new();
        for (key, value) in raw.match_labels.unwrap_or_default() {
            qualified_name(&key).map_err(|m| format!("matchLabels: key {key:?}: {m}"))?;
            label_value(&value).map_err(|m| format!("matchLabels.{key}: value {value:?}: {m}"))?;
            requirements.push(Requirement {
                key,
                operator: Operator::In,
                values: BTreeSet::from([value]),
            });
        }
        for (index, raw) in raw
            .match_expressions
            .unwrap_or_default()
            .into_iter()
            .enumerate()
        {
            let at = format!("matchExpressions[{index}]");
            qualified_name(&raw.key).map_err(|m| format!("{at}.key: {:?}: {m}", raw.key))?;
            let values = raw.values.unwrap_or_default();
            match raw.operator {
                Operator::In | Operator::NotIn if values.is_empty() => {
                    return Err(format!(
                        "{at}.values: must be specified when `operator` is In or NotIn"
                    ));
                }
                Operator::Exists | Operator::DoesNotExist if !values.is_empty() => {
                    return Err(format!(
                        "{at}.values: may not be specified when `operator` is Exists or DoesNotExist"
                    ));
                }
                _ => {}
            }
            for value in &values {
                label_value(value).map_err(|m| format!("{at}.values: {value:?}: {m}"))?;
            }
            requirements.push(Requirement {
                key: raw.key,
                operator: raw.operator,
                values: values.into_iter().collect(),
            });
        }
        Ok(Self { requirements })
    }

    /// Whether it selects everything (no requirement at all).
    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }

    /// Whether `labels` satisfy every requirement.
    pub fn matches(&self, labels: &Labels) -> bool {
        self.requirements.iter().all(|requirement| {
            let value = labels.get(&requirement.key);
            match requirement.operator {
                Operator::In => value.is_some_and(|v| requirement.values.contains(v)),
                Operator::NotIn => value.is_none_or(|v| !requirement.values.contains(v)),
                Operator::Exists => value.is_some(),
                Operator::DoesNotExist => value.is_none(),
            }
        })
    }
}

/// The most characters in a name part (after the optional prefix) or a
/// label value.
const MAX_NAME: usize = 63;
/// The most characters in a DNS subdomain (a qualified name's prefix).
const MAX_SUBDOMAIN: usize = 253;

/// Checks a qualified name (a label key, a match condition's name): an
/// optional DNS subdomain prefix and `/`, then 1 to 63 alphanumerics,
/// `-`, `_` or `.`, starting and ending with an alphanumeric, as
/// Kubernetes' `IsQualifiedName`.
///
/// # Errors
/// What is wrong, in the API server's words.
pub fn qualified_name(text: &str) -> Result<(), String> {
    let name = match text.split('/').collect::<Vec<_>>()[..] {
        [name] => name,
        [prefix, name] => {
            if prefix.is_empty() {
                return Err("prefix part must be non-empty".to_string());
            }
            dns_subdomain(prefix).map_err(|m| format!("prefix part {m}"))?;
            name
        }
        _ => {
            return Err(
                "a qualified name must consist of alphanumeric characters, '-', '_' \
                        or '.', and must start and end with an alphanumeric character, with \
                        an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')"
                    .to_string(),
            );
        }
    };
    if name.is_empty() {
        return Err("name part must be non-empty".to_string());
    }
    if name.len() > MAX_NAME {
        return Err(format!(
            "name part must be no more than {MAX_NAME} characters"
        ));
    }
    if !is_name_part(name) {
        return Err(
            "name part must consist of alphanumeric characters, '-', '_' or '.', \
                    and must start and end with an alphanumeric character \
                    (e.g. 'MyName', or 'my.name', or '123-abc')"
                .to_string(),
        );
    }
    Ok(())
}

/// Checks a label value: empty, or up to 63 alphanumerics, `-`, `_` or
/// `.`, starting and ending with an alphanumeric.
///
/// # Errors
/// What is wrong, in the API server's words.
pub fn label_value(text: &str) -> Result<(), String> {
    if text.len() > MAX_NAME {
        return Err(format!("must be no more than {MAX_NAME} characters"));
    }
    if !text.is_empty() && !is_name_part(text) {
        return Err(
            "a valid label must be an empty string or consist of alphanumeric \
                    characters, '-', '_' or '.', and must start and end with an \
                    alphanumeric character"
                .to_string(),
        );
    }
    Ok(())
}

/// `([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]`
fn is_name_part(text: &str) -> bool {
    let bytes = text.as_bytes();
    let (Some(first), Some(last)) = (bytes.first(), bytes.last()) else {
        return false;
    };
    first.is_ascii_alphanumeric()
        && last.is_ascii_alphanumeric()
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// A lowercase RFC 1123 subdomain: dot-separated labels of lowercase
/// alphanumerics and `-`, each starting and ending with an alphanumeric.
fn dns_subdomain(text: &str) -> Result<(), String> {
    if text.len() > MAX_SUBDOMAIN {
        return Err(format!("must be no more than {MAX_SUBDOMAIN} characters"));
    }
    let label_ok = |label: &str| {
        let bytes = label.as_bytes();
        match (bytes.first(), bytes.last()) {
            (Some(first), Some(last)) => {
                (first.is_ascii_lowercase() || first.is_ascii_digit())
                    && (last.is_ascii_lowercase() || last.is_ascii_digit())
                    && bytes
                        .iter()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
            }
            _ => false,
        }
    };
    if text.split('.').all(label_ok) {
        Ok(())
    } else {
        Err(
            "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric \
             characters, '-' or '.', and must start and end with an alphanumeric character"
                .to_string(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn selector(yaml: &str) -> Result<LabelSelector, String> {
        let raw: RawLabelSelector = serde_yaml_ng::from_str(yaml).map_err(|e| e.to_string())?;
        LabelSelector::parse(raw)
    }

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn each_operator() {
        let s = selector("matchExpressions: [{key: env, operator: In, values: [prod, staging]}]")
            .expect("valid");
        assert!(s.matches(&labels(&[("env", "prod")])));
        assert!(!s.matches(&labels(&[("env", "dev")])));
        assert!(!s.matches(&labels(&[])));

        let s = selector("matchExpressions: [{key: env, operator: NotIn, values: [prod]}]")
            .expect("valid");
        assert!(!s.matches(&labels(&[("env", "prod")])));
        assert!(s.matches(&labels(&[("env", "dev")])));
        assert!(
            s.matches(&labels(&[])),
            "NotIn matches where the label is not set"
        );

        let s = selector("matchExpressions: [{key: example.com/team, operator: Exists}]")
            .expect("valid");
        assert!(s.matches(&labels(&[("example.com/team", "")])));
        assert!(!s.matches(&labels(&[("team", "a")])));

        let s = selector("matchExpressions: [{key: legacy, operator: DoesNotExist, values: []}]")
            .expect("valid: an empty list is no values");
        assert!(s.matches(&labels(&[("team", "a")])));
        assert!(!s.matches(&labels(&[("legacy", "true")])));
    }

    #[test]
    fn match_labels_and_expressions_all_hold() {
        let s = selector(
            "matchLabels: {team: a}\nmatchExpressions: [{key: env, operator: NotIn, values: [prod]}]",
        )
        .expect("valid");
        assert!(s.matches(&labels(&[("team", "a"), ("env", "dev")])));
        assert!(!s.matches(&labels(&[("team", "a"), ("env", "prod")])));
        assert!(!s.matches(&labels(&[("team", "b")])));
        assert!(!s.is_empty());
        let empty = selector("{}").expect("valid");
        assert!(empty.is_empty());
        assert!(empty.matches(&labels(&[])));
    }

    #[test]
    fn selectors_are_checked_as_the_api_server_does() {
        for (yaml, expected) in [
            (
                "matchExpressions: [{key: env, operator: In}]",
                "matchExpressions[0].values: must be specified when `operator` is In or NotIn",
            ),
            (
                "matchExpressions: [{key: env, operator: NotIn, values: []}]",
                "matchExpressions[0].values: must be specified when `operator` is In or NotIn",
            ),
            (
                "matchExpressions: [{key: env, operator: Exists, values: [x]}]",
                "matchExpressions[0].values: may not be specified when `operator` is Exists or DoesNotExist",
            ),
            (
                "matchExpressions: [{key: env, operator: Equals, values: [x]}]",
                "unknown variant `Equals`, expected one of `In`, `NotIn`, `Exists`, `DoesNotExist`",
            ),
            (
                "matchExpressions: [{key: \"bad key\", operator: Exists}]",
                "matchExpressions[0].key: \"bad key\": name part must consist of alphanumeric characters",
            ),
            (
                "matchExpressions: [{key: \"Example.com/x\", operator: Exists}]",
                "prefix part a lowercase RFC 1123 subdomain",
            ),
            (
                "matchLabels: {\"/x\": a}",
                "matchLabels: key \"/x\": prefix part must be non-empty",
            ),
            (
                "matchLabels: {\"a/b/c\": a}",
                "a qualified name must consist of",
            ),
            (
                "matchLabels: {team: \"-a\"}",
                "matchLabels.team: value \"-a\": a valid label must be an empty string",
            ),
            (
                "matchExpressions: [{key: env, operator: In, values: [\"a b\"]}]",
                "matchExpressions[0].values: \"a b\": a valid label",
            ),
            ("matchLabel: {a: b}", "unknown field `matchLabel`"),
        ] {
            let err = selector(yaml).expect_err(yaml);
            assert!(err.contains(expected), "{yaml}: {err}");
        }
        let long = "x".repeat(64);
        let err = qualified_name(&long).expect_err("too long");
        assert_eq!(err, "name part must be no more than 63 characters");
        assert!(label_value(&long).is_err());
        assert!(label_value("").is_ok());
        assert!(qualified_name("kubernetes.io/metadata.name").is_ok());
        assert!(qualified_name("").is_err());
    }
}
