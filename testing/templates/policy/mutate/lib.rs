//! `{{name}}`: a mutating admission policy, scaffolded by
//! `portcullis new policy --mutating`. As generated it gives the pods of
//! Pods and workloads the labels its settings list, when they lack them.
//! Replace the change in `mutate` with yours; README.md says how to build,
//! test and serve it.
//!
//! Mutation rules the host relies on: return the whole object and let the
//! host compute the patch; change only what must change (the SDK sends no
//! object when nothing changed, so no patch); be idempotent (running on
//! your own output changes nothing); leave DELETE and CONNECT alone.

use std::collections::BTreeMap;

use portcullis_sdk::pods::{self, WORKLOAD_RESOURCES};
use portcullis_sdk::{Metadata, Mutation, Policy, Request, log, object};
use serde::Deserialize;

/// The policy. It keeps no state: every call gets the request and the
/// settings, and the host may run each call in a fresh instance.
pub struct {{type_name}};

/// The `settings:` of the policy's config entry. Unknown fields are
/// rejected, so a typo in the config stops the module from loading instead
/// of being ignored.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Labels every pod gets when it lacks them, e.g. `team: unassigned`.
    /// A label already there is never changed.
    pub labels: BTreeMap<String, String>,
}

impl Policy for {{type_name}} {
    type Settings = Settings;

    /// Name and version from Cargo.toml, what the policy implements, and
    /// the resources it is written for (a config's `match` can narrow
    /// them): Pods and every workload that makes Pods.
    const METADATA: Metadata = portcullis_sdk::metadata!(mutate, WORKLOAD_RESOURCES);

    /// Called when the host loads the module; an error keeps the module
    /// (and the config naming it) from serving.
    fn validate_settings(settings: &Settings) -> Result<(), String> {
        if settings.labels.is_empty() {
            return Err("labels must give at least one label to add".into());
        }
        Ok(())
    }

    /// Adds the missing labels to the metadata of every pod the object
    /// makes: a Pod's own, a Deployment's `spec.template.metadata`, etc.
    fn mutate(request: &Request, settings: &Settings) -> Result<Mutation, String> {
        let Some(original) = request.written_object() else {
            return Ok(Mutation::unchanged());
        };
        let mut object = original.clone();
        for spec in pods::pod_specs(original) {
            let labels = format!("{}/labels", spec.metadata_path);
            let entries = settings
                .labels
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()));
            let added = object::add_missing(&mut object, &labels, entries)?;
            if !added.is_empty() {
                log::debug(&format!("{labels}: added {}", added.join(", ")));
            }
        }
        Ok(Mutation::patched(object))
    }
}

portcullis_sdk::export_policy!({{type_name}});

#[cfg(test)]
mod tests;
