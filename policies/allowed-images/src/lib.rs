//! `allowed-images`: every container image of a Pod or a workload's pod template must match
//! the allow-list, compared normalized (`nginx` is `docker.io/library/nginx:latest`).
use portcullis_sdk::image::ImagePatterns;
use portcullis_sdk::pods::{self, CONTAINER_RESOURCES, ContainerRef};
use portcullis_sdk::{Metadata, Policy, Request, Verdict};

pub struct AllowedImages;

/// `allowed: [pattern, ...]`: an image must match one of them (see README.md).
#[derive(Debug, Default, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    pub allowed: ImagePatterns,
}

impl Policy for AllowedImages {
    type Settings = Settings;
    const METADATA: Metadata = portcullis_sdk::metadata!(validate, CONTAINER_RESOURCES);

    fn validate_settings(settings: &Settings) -> Result<(), String> {
        if settings.allowed.is_empty() {
            return Err("allowed must list at least one image pattern".into());
        }
        Ok(())
    }

    fn validate(request: &Request, settings: &Settings) -> Result<Verdict, String> {
        let (containers, allowed) = (pods::written_containers(request), &settings.allowed);
        let problems = containers.iter().filter_map(|c| problem(c, allowed));
        let hint = || format!("allowed images: {allowed}");
        Ok(Verdict::from_problems(problems).with_hint(hint))
    }
}

/// Why the container's image is not allowed, or `None` when it is.
fn problem(c: &ContainerRef<'_>, allowed: &ImagePatterns) -> Option<String> {
    let image = match c.image_ref() {
        Ok(image) if allowed.matches(&image) => return None,
        Ok(image) => image,
        Err(problem) => return Some(problem),
    };
    let (who, text) = (c.describe(), c.image().unwrap_or_default());
    let message = format!("{who} uses image {text:?} ({image}), which is not allowed");
    Some(message)
}

portcullis_sdk::export_policy!(AllowedImages);

#[cfg(test)]
mod tests;
