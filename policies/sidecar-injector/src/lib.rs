//! `sidecar-injector`: injects configured sidecar containers, init
//! containers, volumes and environment variables into pods that opt in by
//! label or annotation, the way a service mesh's injector does.
//!
//! Items are matched by name: a pod that already has a container, volume or
//! env var of that name keeps its own, so running the policy on its own
//! output adds nothing (idempotent). See README.md for the settings.
//!
//! Layout: `settings.rs` (settings, opt-in selectors and their checks),
//! `inject.rs` (adding the items to one pod spec), this file (which pod
//! specs, and whether they opted in).

mod inject;
mod settings;

use portcullis_sdk::pods;
use portcullis_sdk::{Metadata, Mutation, Operation, Policy, Request, log, object};
use serde_json::Value;

pub use settings::{INJECT_KEY, Selector, Settings};

/// The policy.
pub struct SidecarInjector;

impl Policy for SidecarInjector {
    type Settings = Settings;

    const METADATA: Metadata = portcullis_sdk::metadata!(mutate, pods::WORKLOAD_RESOURCES);

    fn validate_settings(settings: &Settings) -> Result<(), String> {
        settings.check()
    }

    /// Pods are injected on CREATE only: the API server refuses to add
    /// containers or volumes to an existing pod. Pod templates are injected
    /// on CREATE and UPDATE.
    fn mutate(request: &Request, settings: &Settings) -> Result<Mutation, String> {
        let Some(original) = request.object() else {
            return Ok(Mutation::unchanged());
        };
        let is_pod = object::kind(original) == Some("Pod");
        match request.operation {
            Operation::Create => {}
            Operation::Update if !is_pod => {}
            _ => return Ok(Mutation::unchanged()),
        }
        // Opt-in is judged on the metadata beside each pod spec, the labels
        // and annotations the pods will carry, not on the controller's own.
        let targets: Vec<(&'static str, &'static str)> = pods::pod_specs(original)
            .into_iter()
            .map(|spec| (spec.path, spec.metadata_path))
            .filter(|(_, metadata)| {
                let metadata = original.pointer(metadata).unwrap_or(&Value::Null);
                settings.opt_in.matches(metadata) && !settings.opt_out.matches(metadata)
            })
            .collect();
        let mut object = original.clone();
        for (spec_path, metadata_path) in targets {
            let spec = object
                .pointer_mut(spec_path)
                .and_then(Value::as_object_mut)
                .ok_or_else(|| format!("{spec_path} is not a JSON object"))?;
            let mut added =
                inject::inject(spec, settings).map_err(|e| format!("{spec_path}/{e}"))?;
            let annotations = settings
                .annotations
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()));
            let annotated = object::add_missing(
                &mut object,
                &format!("{metadata_path}/annotations"),
                annotations,
            )?;
            added.extend(annotated.into_iter().map(|key| format!("annotation {key}")));
            if !added.is_empty() {
                log::debug(&format!("{spec_path}: injected {}", added.join(", ")));
            }
        }
        Ok(Mutation::patched(object))
    }
}

portcullis_sdk::export_policy!(SidecarInjector);

#[cfg(test)]
mod tests;
