//! The trait a policy author implements.

use serde::de::DeserializeOwned;

use crate::{Mutation, Request, Verdict};

/// What a policy says about itself; becomes the contract's `metadata`
/// record, which the host reads once when it loads the module.
///
/// A `const` so a policy declares it in one place, next to its code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Metadata {
    /// The policy's name, e.g. `"allowed-images"`.
    pub name: &'static str,
    /// The policy's own version; `env!("CARGO_PKG_VERSION")` is usual.
    pub version: &'static str,
    /// The resources it is written for, as `resource[.group]`
    /// (e.g. `"pods"`, `"deployments.apps"`); `"*"` for any.
    pub resources: &'static [&'static str],
    /// Whether it implements [`Policy::validate`].
    pub validates: bool,
    /// Whether it implements [`Policy::mutate`].
    pub mutates: bool,
}

impl Metadata {
    /// A policy that implements [`Policy::validate`] only:
    /// `const METADATA: Metadata = Metadata::validating("no-latest",
    /// env!("CARGO_PKG_VERSION"), &["pods"]);`
    pub const fn validating(
        name: &'static str,
        version: &'static str,
        resources: &'static [&'static str],
    ) -> Self {
        Metadata {
            name,
            version,
            resources,
            validates: true,
            mutates: false,
        }
    }

    /// A policy that implements [`Policy::mutate`] only.
    pub const fn mutating(
        name: &'static str,
        version: &'static str,
        resources: &'static [&'static str],
    ) -> Self {
        Metadata {
            validates: false,
            mutates: true,
            ..Metadata::validating(name, version, resources)
        }
    }
}

/// The [`Metadata`] of the policy crate being compiled: its name and
/// version from `Cargo.toml`, what it implements, and its resources.
///
/// ```
/// use portcullis_sdk::Metadata;
/// const VALIDATES: Metadata = portcullis_sdk::metadata!(validate, &["pods"]);
/// const MUTATES: Metadata = portcullis_sdk::metadata!(mutate, &["*"]);
/// const BOTH: Metadata = portcullis_sdk::metadata!(validate, mutate, &["pods"]);
/// assert!(VALIDATES.validates && !VALIDATES.mutates);
/// assert!(BOTH.validates && BOTH.mutates);
/// ```
#[macro_export]
macro_rules! metadata {
    (validate, $resources:expr) => {
        $crate::Metadata::validating(
            env!("CARGO_PKG_NAME"),
            env!("CARGO_PKG_VERSION"),
            $resources,
        )
    };
    (mutate, $resources:expr) => {
        $crate::Metadata::mutating(
            env!("CARGO_PKG_NAME"),
            env!("CARGO_PKG_VERSION"),
            $resources,
        )
    };
    (validate, mutate, $resources:expr) => {
        $crate::Metadata {
            validates: true,
            ..$crate::Metadata::mutating(
                env!("CARGO_PKG_NAME"),
                env!("CARGO_PKG_VERSION"),
                $resources,
            )
        }
    };
}

/// An admission policy.
///
/// Every function is associated (no `self`): the host may run each call in
/// a fresh instance, so a policy keeps no state between calls. Settings
/// arrive with every call and are deserialized into [`Policy::Settings`];
/// the host passes `{}` when its config gives none, and `null` or empty
/// text is read as `{}` too, so `Settings` should accept `{}` (use
/// `#[serde(default)]`) or let [`Policy::validate_settings`] say what is
/// missing. Prefer `#[serde(deny_unknown_fields)]` so a typo in the config
/// is reported when the module is loaded rather than silently ignored.
///
/// Implement [`Policy::validate`], [`Policy::mutate`] or both, and say so
/// in [`Policy::METADATA`]; the one not implemented answers with an error.
pub trait Policy {
    /// The policy's settings, deserialized from the config's JSON.
    type Settings: DeserializeOwned;

    /// What the policy says about itself.
    const METADATA: Metadata;

    /// Checks settings beyond what deserialization checks (e.g. that a
    /// list is not empty, that patterns compile). Called by the host every
    /// time it loads the module; an error keeps the module from serving.
    fn validate_settings(_settings: &Self::Settings) -> Result<(), String> {
        Ok(())
    }

    /// Work on the settings worth doing once instead of on every call
    /// (parsing expressions, compiling patterns): do it here, keep the
    /// result in a static (e.g. a `OnceLock`) and return `true`. The host
    /// calls this once per settings when it loads the module and then
    /// starts every call from a snapshot of the instance's memory taken
    /// right after it, so `validate` and `mutate` find the static filled
    /// in. They must still work without it: natively (tests) and on hosts
    /// that do not pre-initialize, the static is empty. An error rejects
    /// the settings. The default prepares nothing.
    fn prepare(_settings: &Self::Settings) -> Result<bool, String> {
        Ok(false)
    }

    /// Judges a request. An `Err` is a policy error, which the host
    /// handles according to the policy's `onError`, unlike a denial.
    fn validate(_request: &Request, _settings: &Self::Settings) -> Result<Verdict, String> {
        Err(format!(
            "policy {} does not support validate",
            Self::METADATA.name
        ))
    }

    /// Mutates the request's object. An `Err` is a policy error.
    fn mutate(_request: &Request, _settings: &Self::Settings) -> Result<Mutation, String> {
        Err(format!(
            "policy {} does not support mutate",
            Self::METADATA.name
        ))
    }
}
