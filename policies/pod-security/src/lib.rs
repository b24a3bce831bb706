//! `pod-security`: placeholder until the policy is written (issue 5).

use portcullis_sdk::{Metadata, Policy};

/// The policy.
pub struct PodSecurity;

impl Policy for PodSecurity {
    type Settings = serde_json::Value;

    const METADATA: Metadata = Metadata {
        name: "pod-security",
        version: env!("CARGO_PKG_VERSION"),
        resources: &["*"],
        validates: true,
        mutates: true,
    };
}

portcullis_sdk::export_policy!(PodSecurity);
