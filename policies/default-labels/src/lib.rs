//! `default-labels`: adds configured labels and annotations to objects
//! that lack them, never overwriting a value that is already there.
//!
//! Idempotent by construction: a key is only ever added when absent, so
//! running the policy on its own output finds nothing to add and the SDK
//! reports the object unchanged. See README.md for the settings.

mod defaults;

use std::collections::BTreeMap;

use portcullis_sdk::{Metadata, Mutation, Operation, Policy, Request, log};
use serde::Deserialize;

/// The policy.
pub struct DefaultLabels;

/// `labels: {k: v}`, `annotations: {k: v}`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Labels to add when absent.
    pub labels: BTreeMap<String, String>,
    /// Annotations to add when absent.
    pub annotations: BTreeMap<String, String>,
}

impl Policy for DefaultLabels {
    type Settings = Settings;

    const METADATA: Metadata = Metadata {
        name: "default-labels",
        version: env!("CARGO_PKG_VERSION"),
        resources: &["*"],
        validates: false,
        mutates: true,
    };

    /// Settings that add nothing are a configuration mistake, not a no-op
    /// worth loading.
    fn validate_settings(settings: &Settings) -> Result<(), String> {
        if settings.labels.is_empty() && settings.annotations.is_empty() {
            return Err("settings must give at least one label or annotation".to_string());
        }
        Ok(())
    }

    /// Mutates CREATE and UPDATE; DELETE has no object and CONNECT's
    /// object is an options object, not the resource.
    fn mutate(request: &Request, settings: &Settings) -> Result<Mutation, String> {
        if !matches!(request.operation, Operation::Create | Operation::Update) {
            return Ok(Mutation::unchanged());
        }
        let Some(object) = &request.object else {
            return Ok(Mutation::unchanged());
        };
        let mut object = object.clone();
        let labels = defaults::add_missing(&mut object, "labels", &settings.labels)?;
        let annotations = defaults::add_missing(&mut object, "annotations", &settings.annotations)?;
        if !labels.is_empty() || !annotations.is_empty() {
            log::debug(&format!(
                "added labels [{}] and annotations [{}]",
                labels.join(", "),
                annotations.join(", ")
            ));
        }
        Ok(Mutation::patched(object))
    }
}

portcullis_sdk::export_policy!(DefaultLabels);

#[cfg(test)]
mod tests;
