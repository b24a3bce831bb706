//! `container-defaults`: fills in the securityContext fields the Pod
//! Security Standard *restricted* asks for, and optional resource requests
//! and limits, on every container that does not set them.
//!
//! A field is only ever added when absent, so running the policy on its own
//! output finds nothing to add (idempotent), and an explicit choice such as
//! `allowPrivilegeEscalation: true` is never overridden. See README.md for
//! the settings and for the cases where a default is deliberately skipped.
//!
//! Layout: `settings.rs` (the settings and their checks; quantities are
//! compared with the SDK's `quantity`), `security.rs` (the securityContext defaults), `resources.rs` (the
//! resource defaults), this file (which containers are visited).

mod resources;
mod security;
mod settings;

use std::collections::HashSet;

use portcullis_sdk::pods::{self, ContainerKind};
use portcullis_sdk::{Metadata, Mutation, Policy, Request, log, object};
use serde_json::Value;

pub use settings::{Resources, Settings};

/// The policy.
pub struct ContainerDefaults;

impl Policy for ContainerDefaults {
    type Settings = Settings;

    const METADATA: Metadata = portcullis_sdk::metadata!(mutate, pods::CONTAINER_RESOURCES);

    fn validate_settings(settings: &Settings) -> Result<(), String> {
        settings.check()
    }

    /// Mutates CREATE and UPDATE; DELETE has no object and CONNECT's
    /// object is an options object, not the workload.
    fn mutate(request: &Request, settings: &Settings) -> Result<Mutation, String> {
        let Some(original) = request.written_object() else {
            return Ok(Mutation::unchanged());
        };
        let existing = existing_pod_containers(request);
        let mut targets = Vec::new();
        for spec in pods::pod_specs(original) {
            let pod = security::PodLevel::of(spec.spec);
            for container in spec.containers() {
                let name = container.name().unwrap_or_default();
                if existing.contains(&(container.kind, name))
                    || container.is_exempt(&settings.exempt_images)
                {
                    continue;
                }
                targets.push((container.path.clone(), container.kind, pod));
            }
        }
        let mut object = original.clone();
        for (path, kind, pod) in targets {
            let Some(container) = object.pointer_mut(&path).and_then(Value::as_object_mut) else {
                continue;
            };
            let mut added: Vec<String> = security::add_defaults(container, &pod, settings)
                .map_err(|e| format!("{path}: {e}"))?
                .into_iter()
                .map(String::from)
                .collect();
            // The API server rejects resources on ephemeral containers.
            if kind != ContainerKind::EphemeralContainer {
                added.extend(
                    resources::add_defaults(container, &settings.resources)
                        .map_err(|e| format!("{path}: {e}"))?,
                );
            }
            if !added.is_empty() {
                log::debug(&format!("{path}: added {}", added.join(", ")));
            }
        }
        Ok(Mutation::patched(object))
    }
}

/// The containers (list and name) an UPDATE of a Pod finds already there.
///
/// A running Pod's containers are immutable apart from their image, so
/// defaulting them on UPDATE (e.g. `kubectl label` on a Pod created before
/// this policy was installed) would make the API server reject the update.
/// Only containers the update adds, such as the ephemeral container of
/// `kubectl debug`, are defaulted. Pod templates of controllers are
/// mutable and are defaulted whole on UPDATE too.
fn existing_pod_containers(request: &Request) -> HashSet<(ContainerKind, &str)> {
    if request.old_object().and_then(object::kind) != Some("Pod") {
        return HashSet::new();
    }
    pods::containers_before(request)
        .into_iter()
        .map(|c| (c.kind, c.name().unwrap_or_default()))
        .collect()
}

portcullis_sdk::export_policy!(ContainerDefaults);

#[cfg(test)]
mod tests;
