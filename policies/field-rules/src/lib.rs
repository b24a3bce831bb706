//! `field-rules`: generic "if field A is set (or has value V), field B
//! must be set (or match a pattern)" rules for any resource, custom
//! resources included: the dependent-field validation CRD schemas cannot
//! express. Fields are addressed by JSON Pointer (RFC 6901) with `*` for
//! every element of an array. See README.md for the schema and semantics.
//!
//! Layout: `settings.rs` reads the settings and compiles them;
//! `pointer.rs` parses and expands pointers; `rule.rs` evaluates rules and
//! words the violations.

mod pointer;
mod rule;
mod settings;

use portcullis_sdk::{Metadata, Policy, Request, Verdict};
use serde_json::Value;

pub use settings::{ConditionSpec, RuleSpec, Settings};

/// The policy.
pub struct FieldRules;

impl Policy for FieldRules {
    type Settings = Settings;

    const METADATA: Metadata = portcullis_sdk::metadata!(validate, &["*"]);

    fn validate_settings(settings: &Settings) -> Result<(), String> {
        settings.compile().map(|_| ())
    }

    /// Checks the object of CREATE and UPDATE of a main resource; DELETE
    /// has no object, CONNECT's is an options object, and subresources
    /// (`status`, `scale`) are written by controllers a rule about the
    /// spec should not block.
    fn validate(request: &Request, settings: &Settings) -> Result<Verdict, String> {
        let Some(object) = request.written_object() else {
            return Ok(Verdict::allow());
        };
        if !request.sub_resource.is_empty() {
            return Ok(Verdict::allow());
        }
        let (group, kind) = group_kind(request, object);
        let violations: Vec<String> = settings
            .compile()?
            .iter()
            .filter(|rule| rule.applies_to(&group, &kind, request.operation.as_str()))
            .flat_map(|rule| rule.violations(object))
            .collect();
        if violations.is_empty() {
            Ok(Verdict::allow())
        } else {
            Ok(Verdict::deny(violations.join("; ")))
        }
    }
}

/// The API group and kind: the request's, else the object's own
/// `apiVersion` and `kind` (for hand-written requests).
fn group_kind(request: &Request, object: &Value) -> (String, String) {
    if !request.kind.kind.is_empty() {
        return (request.kind.group.clone(), request.kind.kind.clone());
    }
    let text = |key| object.get(key).and_then(Value::as_str).unwrap_or_default();
    let group = text("apiVersion")
        .rsplit_once('/')
        .map_or("", |(group, _)| group);
    (group.to_string(), text("kind").to_string())
}

portcullis_sdk::export_policy!(FieldRules);

#[cfg(test)]
mod tests;
