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
use serde_json::{Map, Value};

pub use settings::{INJECT_KEY, Selector, Settings};

/// The policy.
pub struct SidecarInjector;

impl Policy for SidecarInjector {
    type Settings = Settings;

    const METADATA: Metadata = Metadata {
        name: "sidecar-injector",
        version: env!("CARGO_PKG_VERSION"),
        resources: portcullis_sdk::pods::WORKLOAD_RESOURCES,
        validates: false,
        mutates: true,
    };

    fn validate_settings(settings: &Settings) -> Result<(), String> {
        settings.check()
    }

    /// Pods are injected on CREATE only: the API server refuses to add
    /// containers or volumes to an existing pod. Pod templates are injected
    /// on CREATE and UPDATE.
    fn mutate(request: &Request, settings: &Settings) -> Result<Mutation, String> {
        let Some(original) = &request.object else {
            return Ok(Mutation::unchanged());
        };
        let is_pod = object::kind(original) == Some("Pod");
        match request.operation {
            Operation::Create => {}
            Operation::Update if !is_pod => {}
            _ => return Ok(Mutation::unchanged()),
        }
        let targets: Vec<(&'static str, String)> = pods::pod_specs(original)
            .into_iter()
            .map(|spec| (spec.path, metadata_path(spec.path)))
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
            added.extend(annotate(&mut object, &metadata_path, settings)?);
            if !added.is_empty() {
                log::debug(&format!("{spec_path}: injected {}", added.join(", ")));
            }
        }
        Ok(Mutation::patched(object))
    }
}

/// The metadata beside a pod spec: `/metadata` for a Pod's `/spec`,
/// `/spec/template/metadata` for `/spec/template/spec`. Opt-in is judged
/// there, on the labels and annotations the pods will carry, not on the
/// controller's own metadata.
fn metadata_path(spec_path: &str) -> String {
    let parent = spec_path.strip_suffix("/spec").unwrap_or_default();
    format!("{parent}/metadata")
}

/// Adds the configured annotations the metadata at `path` lacks.
fn annotate(object: &mut Value, path: &str, settings: &Settings) -> Result<Vec<String>, String> {
    let missing: Vec<(&String, &String)> = settings
        .annotations
        .iter()
        .filter(|(key, _)| {
            object
                .pointer(&format!("{path}/annotations/{}", escape(key)))
                .is_none()
        })
        .collect();
    if missing.is_empty() {
        return Ok(Vec::new());
    }
    let metadata = object
        .pointer_mut(path)
        .ok_or_else(|| format!("{path} is missing"))?
        .as_object_mut()
        .ok_or_else(|| format!("{path} is not a JSON object"))?;
    let annotations = metadata
        .entry("annotations")
        .or_insert_with(|| Value::Object(Map::new()));
    if annotations.is_null() {
        *annotations = Value::Object(Map::new());
    }
    let annotations = annotations
        .as_object_mut()
        .ok_or_else(|| format!("{path}/annotations is not a JSON object"))?;
    let mut added = Vec::new();
    for (key, value) in missing {
        annotations.insert(key.clone(), Value::String(value.clone()));
        added.push(format!("annotation {key}"));
    }
    Ok(added)
}

/// Escapes a key for use in a JSON pointer (RFC 6901).
fn escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

portcullis_sdk::export_policy!(SidecarInjector);

#[cfg(test)]
mod tests;
