//! `allowed-images`: every container image of a Pod or of a workload's pod
//! template must match the allow-list.
//!
//! Images are compared in Docker's normalized form, so an image cannot slip
//! past the list by being spelled differently (`nginx` is
//! `docker.io/library/nginx:latest`). See README.md for the settings.

mod glob;
mod pattern;

use portcullis_sdk::image::ImageRef;
use portcullis_sdk::pods::{self, ContainerRef};
use portcullis_sdk::{Metadata, Operation, Policy, Request, Verdict};
use serde::Deserialize;

pub use pattern::Pattern;

/// The policy.
pub struct AllowedImages;

/// `allowed: [pattern, ...]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// The patterns an image must match (any one of them).
    pub allowed: Vec<Pattern>,
}

impl Policy for AllowedImages {
    type Settings = Settings;

    const METADATA: Metadata = Metadata {
        name: "allowed-images",
        version: env!("CARGO_PKG_VERSION"),
        resources: portcullis_sdk::pods::CONTAINER_RESOURCES,
        validates: true,
        mutates: false,
    };

    /// Patterns are parsed while deserializing; what is left is an empty
    /// list, which would deny every workload.
    fn validate_settings(settings: &Settings) -> Result<(), String> {
        if settings.allowed.is_empty() {
            return Err("allowed must list at least one image pattern".to_string());
        }
        Ok(())
    }

    fn validate(request: &Request, settings: &Settings) -> Result<Verdict, String> {
        if !matches!(request.operation, Operation::Create | Operation::Update) {
            return Ok(Verdict::allow());
        }
        let Some(object) = &request.object else {
            return Ok(Verdict::allow());
        };
        let problems: Vec<String> = pods::containers(object)
            .iter()
            .filter_map(|container| problem(container, &settings.allowed))
            .collect();
        if problems.is_empty() {
            return Ok(Verdict::allow());
        }
        let allowed: Vec<String> = settings.allowed.iter().map(ToString::to_string).collect();
        Ok(Verdict::deny(format!(
            "{}; allowed images: {}",
            problems.join("; "),
            allowed.join(", ")
        )))
    }
}

/// Why `container`'s image is not allowed, or `None` when it is.
fn problem(container: &ContainerRef<'_>, allowed: &[Pattern]) -> Option<String> {
    let who = format!("{} {:?}", container.kind, container.name().unwrap_or(""));
    let Some(text) = container.image().filter(|image| !image.is_empty()) else {
        return Some(format!("{who} has no image"));
    };
    match ImageRef::parse(text) {
        Ok(image) if allowed.iter().any(|p| p.allows(&image)) => None,
        Ok(image) => Some(format!(
            "{who} uses image {text:?} ({image}), which is not allowed"
        )),
        Err(e) => Some(format!(
            "{who} uses image {text:?}, which is not a valid image reference ({})",
            e.reason()
        )),
    }
}

portcullis_sdk::export_policy!(AllowedImages);

#[cfg(test)]
mod tests;
