//! `image-digests`: placeholder until the policy is written (issue 5).

use portcullis_sdk::{Metadata, Policy};

/// The policy.
pub struct ImageDigests;

impl Policy for ImageDigests {
    type Settings = serde_json::Value;

    const METADATA: Metadata = Metadata {
        name: "image-digests",
        version: env!("CARGO_PKG_VERSION"),
        resources: &["*"],
        validates: true,
        mutates: true,
    };
}

portcullis_sdk::export_policy!(ImageDigests);
