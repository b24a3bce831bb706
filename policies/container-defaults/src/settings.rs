//! The settings and their checks.

use std::collections::BTreeMap;

use serde::Deserialize;

use portcullis_sdk::quantity::{self, Quantity};

/// Which defaults apply; every securityContext default is on unless
/// turned off, resources are off unless given.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct Settings {
    /// Add `runAsNonRoot: true`.
    pub run_as_non_root: bool,
    /// Add `seccompProfile: {type: RuntimeDefault}`.
    pub seccomp_profile: bool,
    /// Add `allowPrivilegeEscalation: false`.
    pub allow_privilege_escalation: bool,
    /// Add `capabilities.drop: ["ALL"]` where no drop list is set.
    pub drop_all_capabilities: bool,
    /// Also append `"ALL"` to an existing drop list that lacks it. Off by
    /// default: a drop list someone wrote is a choice, and changing it is
    /// "touching what is already set".
    pub add_drop_all: bool,
    /// Resource requests and limits to add where a container sets none
    /// for that resource.
    pub resources: Resources,
    /// Containers whose image matches one of these patterns are left as
    /// they are (e.g. a node agent that must run as root).
    pub exempt_images: portcullis_sdk::image::ImagePatterns,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            run_as_non_root: true,
            seccomp_profile: true,
            allow_privilege_escalation: true,
            drop_all_capabilities: true,
            add_drop_all: false,
            resources: Resources::default(),
            exempt_images: Default::default(),
        }
    }
}

/// `requests: {cpu: 100m}`, `limits: {memory: 256Mi}`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Resources {
    /// Default requests, by resource name.
    pub requests: BTreeMap<String, Quantity>,
    /// Default limits, by resource name.
    pub limits: BTreeMap<String, Quantity>,
}

impl Settings {
    /// What `validate-settings` checks: that something is left to do, that
    /// quantities parse, and that no default request exceeds the default
    /// limit of the same resource (the API server would reject every pod
    /// the policy touched).
    pub fn check(&self) -> Result<(), String> {
        let any_security = self.run_as_non_root
            || self.seccomp_profile
            || self.allow_privilege_escalation
            || self.drop_all_capabilities
            || self.add_drop_all;
        let resources = &self.resources;
        if !any_security && resources.requests.is_empty() && resources.limits.is_empty() {
            return Err(
                "settings turn every securityContext default off and give no resources: nothing to do"
                    .to_string(),
            );
        }
        for (field, map) in [
            ("requests", &resources.requests),
            ("limits", &resources.limits),
        ] {
            for (name, value) in map {
                if name.is_empty() {
                    return Err(format!("resources.{field} has an empty resource name"));
                }
                if quantity::parse(value.as_str()).is_none() {
                    return Err(format!(
                        "resources.{field}.{name}: {:?} is not a valid quantity (e.g. 100m, 0.5, 128Mi, 1G)",
                        value.as_str()
                    ));
                }
            }
        }
        for (name, request) in &resources.requests {
            let Some(limit) = resources.limits.get(name) else {
                continue;
            };
            if quantity::parse(request.as_str()) > quantity::parse(limit.as_str()) {
                return Err(format!(
                    "resources.requests.{name} ({}) is greater than resources.limits.{name} ({})",
                    request.as_str(),
                    limit.as_str()
                ));
            }
        }
        Ok(())
    }
}
