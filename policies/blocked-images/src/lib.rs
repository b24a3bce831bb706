//! `blocked-images`: denies container images by digest, by tag (and
//! untagged images, which mean `latest`) and by registry, in Pods and in
//! the pod templates of every workload controller.
//!
//! Images are compared in Docker's normalized form (`nginx` is
//! `docker.io/library/nginx:latest`), so a blocked image cannot get through
//! by being spelled differently. See README.md for the settings.
//!
//! Layout: `settings.rs` reads and checks the settings (the registry
//! entries are parsed there); `check.rs` says what is wrong with one
//! container's image.

mod check;
mod settings;

use portcullis_sdk::pods;
use portcullis_sdk::{Metadata, Policy, Request, Verdict};

pub use settings::{RegistryEntry, Settings};

/// The policy.
pub struct BlockedImages;

impl Policy for BlockedImages {
    type Settings = Settings;

    const METADATA: Metadata = portcullis_sdk::metadata!(validate, pods::CONTAINER_RESOURCES);

    fn validate_settings(settings: &Settings) -> Result<(), String> {
        settings.check()
    }

    /// Checks CREATE and UPDATE of the object itself and of
    /// `pods/ephemeralcontainers`; other subresources (`status`, `scale`,
    /// ...) do not choose images, and blocking them would only get in the
    /// way of controllers.
    fn validate(request: &Request, settings: &Settings) -> Result<Verdict, String> {
        if !matches!(request.sub_resource.as_str(), "" | "ephemeralcontainers") {
            return Ok(Verdict::allow());
        }
        let Some(object) = request.written_object() else {
            return Ok(Verdict::allow());
        };
        let rules = settings.rules()?;
        let problems: Vec<String> = pods::containers(object)
            .iter()
            .filter(|container| !container.is_exempt(&settings.exempt_images))
            .filter_map(|container| check::problem(container, &rules))
            .collect();
        if problems.is_empty() {
            Ok(Verdict::allow())
        } else {
            Ok(Verdict::deny(problems.join("; ")))
        }
    }
}

portcullis_sdk::export_policy!(BlockedImages);

#[cfg(test)]
mod tests;
