//! `default-labels`: adds configured labels and annotations to objects
//! that lack them, never overwriting a value that is already there.
//!
//! Idempotent by construction: a key is only ever added when absent, so
//! running the policy on its own output finds nothing to add and the SDK
//! reports the object unchanged. See README.md for the settings.

use std::collections::BTreeMap;

use portcullis_sdk::{Metadata, Mutation, Policy, Request, log, object};
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

    const METADATA: Metadata =
        Metadata::mutating("default-labels", env!("CARGO_PKG_VERSION"), &["*"]);

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
        let Some(object) = request.written_object() else {
            return Ok(Mutation::unchanged());
        };
        let mut object = object.clone();
        let labels =
            object::add_missing(&mut object, "/metadata/labels", entries(&settings.labels))?;
        let annotations = object::add_missing(
            &mut object,
            "/metadata/annotations",
            entries(&settings.annotations),
        )?;
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

/// A settings map as the `(key, value)` pairs `object::add_missing` takes.
fn entries(map: &BTreeMap<String, String>) -> impl Iterator<Item = (&str, &str)> {
    map.iter()
        .map(|(key, value)| (key.as_str(), value.as_str()))
}

portcullis_sdk::export_policy!(DefaultLabels);

#[cfg(test)]
mod tests;
