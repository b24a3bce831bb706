//! The policy's settings: which level, which version of the standard, and
//! who or what is exempt.

use std::fmt;

use portcullis_sdk::image::ImagePatterns;
use serde::Deserialize;

/// The newest policy version this module implements; `latest` means it.
pub const LATEST_MINOR: u32 = 37;

/// `level`, `version`, `exemptions`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// `baseline` or `restricted`; required (checked in `validate_settings`
    /// so that a missing level gets a message that names the choices).
    pub level: Option<Level>,
    /// `latest` (the default) or `v1.N`.
    pub version: Version,
    /// Requests that are allowed without evaluation.
    pub exemptions: Exemptions,
    /// Checks that do not run, for every container or only for containers
    /// whose image matches (like Kyverno's `podSecurity.exclude`).
    pub exclude: Vec<Exclusion>,
    /// Containers whose image matches one of these patterns are left out
    /// of every check; the pod-level fields are still checked.
    #[serde(rename = "exemptImages")]
    pub exempt_images: ImagePatterns,
}

/// One `exclude` entry: a check by its upstream ID (`capabilities_baseline`,
/// `hostPorts`, `runAsNonRoot`, ...), for the containers whose image
/// matches `images`, or for the whole pod without `images`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Exclusion {
    pub check: String,
    #[serde(default)]
    pub images: ImagePatterns,
}

/// A level of the Pod Security Standards. `privileged` is deliberately
/// absent: it checks nothing, so configuring it would be a mistake.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// Prevents known privilege escalations.
    Baseline,
    /// Baseline plus current pod hardening practice.
    Restricted,
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Level::Baseline => "baseline",
            Level::Restricted => "restricted",
        })
    }
}

/// A version of the standard, as the API server's
/// `pod-security.kubernetes.io/enforce-version` label spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(try_from = "String")]
pub enum Version {
    /// The newest version this module knows ([`LATEST_MINOR`]).
    #[default]
    Latest,
    /// `v1.N`, with N at most [`LATEST_MINOR`].
    Minor(u32),
}

impl Version {
    /// Parses `latest` or `v1.N` (no leading zeros, as upstream's
    /// `api.ParseVersion` requires).
    pub fn parse(text: &str) -> Result<Self, String> {
        if text == "latest" {
            return Ok(Version::Latest);
        }
        let invalid = || {
            format!(
                "invalid version {text:?}: expected \"latest\" or \"v1.N\" with N from 0 to {LATEST_MINOR}"
            )
        };
        let digits = text.strip_prefix("v1.").ok_or_else(invalid)?;
        let well_formed = !digits.is_empty()
            && digits.bytes().all(|b| b.is_ascii_digit())
            && (digits == "0" || !digits.starts_with('0'));
        if !well_formed {
            return Err(invalid());
        }
        let minor: u32 = digits.parse().map_err(|_| invalid())?;
        if minor > LATEST_MINOR {
            return Err(format!(
                "invalid version {text:?}: this module implements the standard up to v1.{LATEST_MINOR}"
            ));
        }
        Ok(Version::Minor(minor))
    }

    /// The minor version the checks are evaluated at.
    pub fn minor(self) -> u32 {
        match self {
            Version::Latest => LATEST_MINOR,
            Version::Minor(minor) => minor,
        }
    }
}

impl TryFrom<String> for Version {
    type Error = String;
    fn try_from(text: String) -> Result<Self, Self::Error> {
        Version::parse(&text)
    }
}

impl fmt::Display for Version {
    /// As written in the settings: `latest` or `v1.N`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Version::Latest => f.write_str("latest"),
            Version::Minor(minor) => write!(f, "v1.{minor}"),
        }
    }
}

/// Exemptions, as the built-in admission's `AdmissionConfiguration` has.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct Exemptions {
    /// Request `userInfo.username`s that are exempt.
    pub usernames: Vec<String>,
    /// Request namespaces that are exempt.
    pub namespaces: Vec<String>,
    /// Pod `runtimeClassName`s that are exempt.
    pub runtime_classes: Vec<String>,
}

impl Settings {
    /// What `validate_settings` reports.
    pub fn check(&self) -> Result<(), String> {
        if self.level.is_none() {
            return Err("level is required: baseline or restricted".to_string());
        }
        let lists = [
            ("exemptions.usernames", &self.exemptions.usernames),
            ("exemptions.namespaces", &self.exemptions.namespaces),
            (
                "exemptions.runtimeClasses",
                &self.exemptions.runtime_classes,
            ),
        ];
        for (name, list) in lists {
            if list.iter().any(String::is_empty) {
                return Err(format!("{name} must not contain an empty string"));
            }
        }
        for (index, exclusion) in self.exclude.iter().enumerate() {
            if !crate::checks::CHECKS
                .iter()
                .any(|c| c.id == exclusion.check)
            {
                let known: Vec<&str> = crate::checks::CHECKS.iter().map(|c| c.id).collect();
                return Err(format!(
                    "exclude[{index}].check: {:?} is not a check; the checks are {}",
                    exclusion.check,
                    known.join(", ")
                ));
            }
        }
        Ok(())
    }

    /// The level; `baseline` if unset, which `check` rejects at load time.
    pub fn level(&self) -> Level {
        self.level.unwrap_or(Level::Baseline)
    }
}
