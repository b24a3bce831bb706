//! Running a policy natively in unit tests, through the same path the
//! exported functions take: JSON text in (settings parsed, `null` read as
//! `{}`), and for `mutate` an unchanged object reported as `None`, exactly
//! as the host would see it.

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
