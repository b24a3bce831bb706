//! Running a policy natively in unit tests, through the same path the
//! exported functions take: JSON text in (settings parsed, `null` read as
//! `{}`), and for `mutate` an unchanged object reported as `None`, exactly
//! as the host would see it.

use serde_json::{Value, json};

use crate::{Mutation, Policy, Verdict, guest};

/// Runs `validate-settings` on `settings`.
pub fn validate_settings<P: Policy>(settings: &Value) -> Result<(), String> {
    guest::validate_settings::<P>(&settings.to_string())
}

/// Runs `validate` on an AdmissionRequest (the review's `request`).
pub fn validate<P: Policy>(request: &Value, settings: &Value) -> Result<Verdict, String> {
    guest::validate::<P>(&request.to_string(), &settings.to_string())
}

/// Runs `mutate`; the returned object is `None` when unchanged.
pub fn mutate<P: Policy>(request: &Value, settings: &Value) -> Result<Mutation, String> {
    let (verdict, object) = guest::mutate::<P>(&request.to_string(), &settings.to_string())?;
    let object = object
        .map(|text| serde_json::from_str(&text))
        .transpose()
        .map_err(|e| format!("mutated object is not JSON: {e}"))?;
    Ok(Mutation { verdict, object })
}

/// An AdmissionRequest for `operation` of `object` in `namespace`, shaped
/// as the API server sends it: kind from the object's `apiVersion` and
/// `kind`, resource its lower-case plural, user `alice` in
/// `system:authenticated`; the object is `oldObject` for DELETE. Set
/// `oldObject` of an UPDATE, or any other field, afterwards as a test needs.
pub fn request(operation: &str, namespace: &str, object: Value) -> Value {
    let api_version = object["apiVersion"].as_str().unwrap_or("v1").to_string();
    let (group, version) = api_version.split_once('/').unwrap_or(("", &api_version));
    let kind = object["kind"].as_str().unwrap_or_default().to_string();
    let resource = format!("{}s", kind.to_ascii_lowercase());
    let (new, old) = match operation {
        "DELETE" => (Value::Null, object),
        _ => (object, Value::Null),
    };
    json!({
        "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
        "kind": {"group": group, "version": version, "kind": kind},
        "resource": {"group": group, "version": version, "resource": resource},
        "operation": operation,
        "namespace": namespace,
        "userInfo": {"username": "alice", "groups": ["system:authenticated"]},
        "object": new,
        "oldObject": old,
        "dryRun": false
    })
}
