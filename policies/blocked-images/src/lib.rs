//! `blocked-images`: placeholder until the policy is written (issue 5).

use portcullis_sdk::{Metadata, Policy};

/// The policy.
pub struct BlockedImages;

impl Policy for BlockedImages {
    type Settings = serde_json::Value;

    const METADATA: Metadata = Metadata {
        name: "blocked-images",
        version: env!("CARGO_PKG_VERSION"),
        resources: &["*"],
        validates: true,
        mutates: true,
    };
}

portcullis_sdk::export_policy!(BlockedImages);
