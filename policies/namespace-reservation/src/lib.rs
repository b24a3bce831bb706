//! `namespace-reservation`: placeholder until the policy is written (issue 5).

use portcullis_sdk::{Metadata, Policy};

/// The policy.
pub struct NamespaceReservation;

impl Policy for NamespaceReservation {
    type Settings = serde_json::Value;

    const METADATA: Metadata = Metadata {
        name: "namespace-reservation",
        version: env!("CARGO_PKG_VERSION"),
        resources: &["*"],
        validates: true,
        mutates: true,
    };
}

portcullis_sdk::export_policy!(NamespaceReservation);
