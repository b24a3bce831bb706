//! `field-rules`: placeholder until the policy is written (issue 5).

use portcullis_sdk::{Metadata, Policy};

/// The policy.
pub struct FieldRules;

impl Policy for FieldRules {
    type Settings = serde_json::Value;

    const METADATA: Metadata = Metadata {
        name: "field-rules",
        version: env!("CARGO_PKG_VERSION"),
        resources: &["*"],
        validates: true,
        mutates: true,
    };
}

portcullis_sdk::export_policy!(FieldRules);
