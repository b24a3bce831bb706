//! `required-labels`: objects must carry the configured labels, optionally
//! with values matching a regex.
//!
//! Works on any kind: it reads only `metadata.labels`. See README.md for
//! the settings.

mod rules;

use portcullis_sdk::{Metadata, Policy, Request, Verdict, object};
use serde::Deserialize;

pub use rules::LabelRules;
use rules::Rule;

/// The policy.
pub struct RequiredLabels;

/// `labels: { key: null | "regex" }`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Required label keys; a regex, when given, must match the whole value.
    pub labels: LabelRules,
}

impl Policy for RequiredLabels {
    type Settings = Settings;

    const METADATA: Metadata = portcullis_sdk::metadata!(validate, &["*"]);

    fn validate_settings(settings: &Settings) -> Result<(), String> {
        if settings.labels.0.is_empty() {
            return Err("labels must name at least one required label".to_string());
        }
        settings.labels.compile().map(|_| ())
    }

    /// Checks CREATE and UPDATE; DELETE has no object and CONNECT's object
    /// is an options object without labels.
    fn validate(request: &Request, settings: &Settings) -> Result<Verdict, String> {
        let Some(object) = request.written_object() else {
            return Ok(Verdict::allow());
        };
        let rules = settings.labels.compile()?;
        match problems(object, &rules) {
            None => Ok(Verdict::allow()),
            Some(message) => Ok(Verdict::deny(message)),
        }
    }
}

/// The denial message for `object`, or `None` when every rule holds:
/// all missing keys first, then every value that does not match.
fn problems(object: &serde_json::Value, rules: &[Rule<'_>]) -> Option<String> {
    let mut missing = Vec::new();
    let mut wrong = Vec::new();
    for rule in rules {
        match (object::label(object, rule.key), &rule.pattern) {
            (None, _) => missing.push(rule.key),
            (Some(value), Some((text, regex))) if !regex.is_match(value) => wrong.push(format!(
                "label {:?} has value {value:?}, which does not match {text}",
                rule.key
            )),
            _ => {}
        }
    }
    let mut parts = Vec::new();
    match missing.as_slice() {
        [] => {}
        [one] => parts.push(format!("missing required label: {one}")),
        many => parts.push(format!("missing required labels: {}", many.join(", "))),
    }
    parts.extend(wrong);
    (!parts.is_empty()).then(|| parts.join("; "))
}

portcullis_sdk::export_policy!(RequiredLabels);

#[cfg(test)]
mod tests;
