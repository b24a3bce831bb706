//! `image-digests`: rewrites container images from tags to the digests
//! configured for them (`nginx:1.27` becomes `nginx:1.27@sha256:…`), so
//! what runs cannot change when someone moves a tag. Optionally denies
//! images it cannot pin.
//!
//! Policies have no network access: the digests come from the settings.
//! Images are compared normalized, so `nginx:1.27` in the settings pins
//! `docker.io/library/nginx:1.27` in a pod and the other way round. An
//! image that already has a digest is left alone, so running the policy
//! on its own output changes nothing (idempotent). See README.md.
//!
//! Layout: `settings.rs` (settings, normalized digests, checks), `pin.rs`
//! (the decision for one container), this file (visiting the containers,
//! the verdict).

mod pin;
mod settings;

use std::collections::HashMap;

use portcullis_sdk::pods::{self, ContainerKind};
use portcullis_sdk::{Metadata, Mutation, Policy, Request, Verdict, log};
use serde_json::Value;

use pin::Pin;
pub use settings::Settings;

/// The policy.
pub struct ImageDigests;

impl Policy for ImageDigests {
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
        let digests = settings.digests()?;
        let old = old_images(request);
        let mut rewrites = Vec::new();
        let mut warnings = Vec::new();
        let mut unpinned = Vec::new();
        for container in pods::containers(original) {
            let key = (container.kind, container.name().unwrap_or_default());
            if container.image().is_some() && old.get(&key) == Some(&container.image()) {
                continue;
            }
            if container.is_exempt(&settings.exempt_images) {
                continue;
            }
            match pin::pin(&container, &digests) {
                Pin::Keep => {}
                Pin::Rewrite(image) => rewrites.push((container.path.clone(), image)),
                Pin::Mismatch(warning) => warnings.push(warning),
                Pin::Unpinned(problem) => unpinned.push(problem),
            }
        }
        if settings.deny_unpinned && !unpinned.is_empty() {
            return Ok(Mutation::deny(unpinned.join("; ")));
        }
        let mut object = original.clone();
        for (path, image) in rewrites {
            if let Some(slot) = object.pointer_mut(&format!("{path}/image")) {
                log::debug(&format!("{path}: image {slot} -> {image}"));
                *slot = Value::String(image);
            }
        }
        let verdict = warnings
            .into_iter()
            .fold(Verdict::allow(), Verdict::with_warning);
        Ok(Mutation::patched(object).with_verdict(verdict))
    }
}

/// On UPDATE, each container's image in `oldObject`, by list and name.
///
/// A container whose image the update does not change is left alone: not
/// rewritten, because changing a running Pod's image restarts the
/// container and changing a template rolls the workload, neither of which
/// an unrelated update (`kubectl label`, a replica count) should cause; and
/// not denied, so such an update is never blocked by an image that was
/// admitted before.
fn old_images(request: &Request) -> HashMap<(ContainerKind, &str), Option<&str>> {
    pods::containers_before(request)
        .into_iter()
        .map(|c| ((c.kind, c.name().unwrap_or_default()), c.image()))
        .collect()
}

portcullis_sdk::export_policy!(ImageDigests);

#[cfg(test)]
mod tests;
