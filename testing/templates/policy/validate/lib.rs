//! `{{name}}`: a validating admission policy, scaffolded by
//! `portcullis new policy`. As generated it denies containers whose image
//! has no version (the `latest` tag, written or implied, and no digest),
//! except in the namespaces its settings exempt. Replace the rule in
//! `validate` with yours; README.md says how to build, test and serve it.

use portcullis_sdk::image::DEFAULT_TAG;
use portcullis_sdk::pods::{self, CONTAINER_RESOURCES, ContainerRef};
use portcullis_sdk::{Metadata, Policy, Request, Verdict};
use serde::Deserialize;

/// The policy. It keeps no state: every call gets the request and the
/// settings, and the host may run each call in a fresh instance.
pub struct {{type_name}};

/// The `settings:` of the policy's config entry. Unknown fields are
/// rejected, so a typo in the config stops the module from loading instead
/// of being ignored.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct Settings {
    /// Namespaces where images without a version are allowed, e.g. `dev`.
    pub exempt_namespaces: Vec<String>,
}

impl Policy for {{type_name}} {
    type Settings = Settings;

    /// Name and version from Cargo.toml, what the policy implements, and
    /// the resources it is written for (a config's `match` can narrow
    /// them): Pods, every workload that makes Pods, and
    /// `pods/ephemeralcontainers`, where `kubectl debug` adds containers.
    const METADATA: Metadata = portcullis_sdk::metadata!(validate, CONTAINER_RESOURCES);

    /// Called when the host loads the module; an error keeps the module
    /// (and the config naming it) from serving.
    fn validate_settings(settings: &Settings) -> Result<(), String> {
        if settings.exempt_namespaces.iter().any(String::is_empty) {
            return Err("exemptNamespaces must not contain an empty name".into());
        }
        Ok(())
    }

    /// Judges CREATE and UPDATE; every problem is reported in one denial.
    /// On UPDATE only new or changed images are judged: an unchanged one
    /// was admitted before (perhaps before this policy was installed), and
    /// blocking an unrelated update such as `kubectl label` for it would
    /// help nobody.
    fn validate(request: &Request, settings: &Settings) -> Result<Verdict, String> {
        if settings.exempt_namespaces.contains(&request.namespace) {
            return Ok(Verdict::allow());
        }
        let before = pods::containers_before(request);
        let unchanged = |c: &&ContainerRef<'_>| {
            let same = |b: &ContainerRef<'_>| {
                (b.kind, b.name(), b.image()) == (c.kind, c.name(), c.image())
            };
            before.iter().any(same)
        };
        let containers = pods::written_containers(request);
        let judged = containers.iter().filter(|c| !unchanged(c));
        Ok(Verdict::from_problems(judged.filter_map(problem)))
    }
}

/// What is wrong with the container's image, or `None` when nothing is.
fn problem(container: &ContainerRef<'_>) -> Option<String> {
    let image = match container.image_ref() {
        Ok(image) => image,
        Err(problem) => return Some(problem),
    };
    if image.digest().is_some() || image.tag() != Some(DEFAULT_TAG) {
        return None;
    }
    let (who, text) = (container.describe(), container.image().unwrap_or_default());
    Some(format!(
        "{who} uses image {text:?} without a version; use a tag other than latest or a digest"
    ))
}

portcullis_sdk::export_policy!({{type_name}});

#[cfg(test)]
mod tests;
