//! `namespace-reservation`: reserves namespace names and name prefixes for
//! given users and groups; anyone else creating (or deleting) a reserved
//! namespace is denied.
//!
//! The multi-tenant case from the Kubernetes admission design: the team
//! that owns `payments` should be the only one able to create
//! `payments-prod`. See README.md for the settings.
//!
//! Layout: `settings.rs` reads and checks the settings; `reservation.rs`
//! decides who may touch a namespace and words the denial.

mod reservation;
mod settings;

use portcullis_sdk::{Metadata, Operation, Policy, Request, Verdict};
use serde_json::Value;

pub use settings::{Reservation, Settings};

/// The policy.
pub struct NamespaceReservation;

impl Policy for NamespaceReservation {
    type Settings = Settings;

    const METADATA: Metadata = portcullis_sdk::metadata!(validate, &["namespaces"]);

    fn validate_settings(settings: &Settings) -> Result<(), String> {
        settings.check()
    }

    fn validate(request: &Request, settings: &Settings) -> Result<Verdict, String> {
        if !is_namespace(request) || !settings.guards(&request.operation) {
            return Ok(Verdict::allow());
        }
        let Some(name) = namespace_name(request) else {
            return Ok(Verdict::allow());
        };
        Ok(reservation::judge(settings, &name, request))
    }
}

/// Whether the request is about a Namespace itself (not a subresource
/// such as `namespaces/finalize`, which the namespace controller uses
/// while deleting and must never be blocked).
fn is_namespace(request: &Request) -> bool {
    let by_resource =
        request.resource.resource == "namespaces" && request.resource.group.is_empty();
    // A hand-written or older request may give only the kind.
    let by_kind = request.kind.kind == "Namespace" && request.kind.group.is_empty();
    (by_resource || by_kind) && request.sub_resource.is_empty()
}

/// The name the request is about: `request.name`, else the object's (or,
/// on DELETE, the old object's) `metadata.name`, else, for a CREATE still
/// in the mutating phase, the `metadata.generateName` the name will start
/// with (marked as such so only prefixes are compared with it).
fn namespace_name(request: &Request) -> Option<reservation::Name> {
    if !request.name.is_empty() {
        return Some(reservation::Name::Exact(request.name.clone()));
    }
    let object = request.object().or(request.old_object())?;
    let metadata = object.get("metadata")?;
    let text = |key| {
        metadata
            .get(key)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
    };
    if let Some(name) = text("name") {
        return Some(reservation::Name::Exact(name.to_string()));
    }
    if request.operation == Operation::Create {
        return text("generateName").map(|prefix| reservation::Name::Generated(prefix.to_string()));
    }
    None
}

portcullis_sdk::export_policy!(NamespaceReservation);

#[cfg(test)]
mod tests;
