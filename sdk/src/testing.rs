//! Running a policy natively in unit tests, through the same path the
//! exported functions take: JSON text in (settings parsed, `null` read as
//! `{}`), and for `mutate` an unchanged object reported as `None`, exactly
//! as the host would see it.

use portcullis_kube::review::ReviewBuilder;
use serde_json::Value;

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
/// as the API server sends it (built by the same builder as `portcullis
/// test` suites use): kind from the object's `apiVersion` and `kind`,
/// resource the API server's plural of the kind, user `alice` in
/// `system:authenticated`; the object is `oldObject` for DELETE. An UPDATE
/// has no `oldObject` here: set it, or any other field, afterwards as a
/// test needs.
///
/// An object without `apiVersion` is taken as `v1`.
///
/// # Panics
/// When `operation` is not CREATE, UPDATE, DELETE or CONNECT: the test is
/// wrong.
pub fn request(operation: &str, namespace: &str, object: Value) -> Value {
    let api_version = object["apiVersion"].as_str().unwrap_or("v1").to_string();
    let kind = object["kind"].as_str().unwrap_or_default().to_string();
    match ReviewBuilder::for_kind(operation, &api_version, &kind, object) {
        Ok(builder) => builder
            .namespace(namespace)
            .old_object(Value::Null)
            .request(),
        Err(error) => panic!("testing::request: {error}"),
    }
}
