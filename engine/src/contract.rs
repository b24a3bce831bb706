//! The contract version this host speaks, and the check that a component
//! was built for it.

use wasmtime::component::Component;

/// The WIT package every policy targets.
pub const PACKAGE: &str = "portcullis:policy";
/// The interface a policy exports.
pub const POLICY_INTERFACE: &str = "portcullis:policy/policy";
/// The contract version of this host (`wit/policy.wit`).
pub const VERSION: Version = Version {
    major: 0,
    minor: 1,
    patch: 0,
};

/// A semantic version of the contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Version {
    pub major: u64,
    pub minor: u64,
    pub patch: u64,
}

impl Version {
    /// Parses `MAJOR.MINOR.PATCH` (a pre-release or build suffix is ignored).
    pub fn parse(text: &str) -> Option<Self> {
        let core = text.split(['-', '+']).next()?;
        let mut parts = core.split('.').map(|part| part.parse::<u64>().ok());
        let version = Self {
            major: parts.next()??,
            minor: parts.next()??,
            patch: parts.next()??,
        };
        parts.next().is_none().then_some(version)
    }

    /// Semver compatibility as the component model links it: same major
    /// version, and for 0.x the same minor version.
    pub fn is_compatible_with(self, other: Version) -> bool {
        if self.major != other.major {
            return false;
        }
        self.major != 0 || self.minor == other.minor
    }

    /// `0.1` style: the part that decides compatibility.
    pub fn series(self) -> String {
        if self.major == 0 {
            format!("0.{}", self.minor)
        } else {
            self.major.to_string()
        }
    }
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// Why a component does not fit this host's contract.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ContractError {
    /// It exports the policy interface of another, incompatible version.
    #[error(
        "module was built for contract {PACKAGE}@{found}, this host speaks {PACKAGE}@{VERSION} \
         (compatible with {series}.x); rebuild the policy against a matching portcullis-sdk",
        series = VERSION.series()
    )]
    Incompatible { found: Version },
    /// It exports no policy interface at all.
    #[error(
        "module does not export {POLICY_INTERFACE}: it is not a Portcullis policy \
         (it exports: {exports})"
    )]
    NotAPolicy { exports: String },
}

/// Checks the component's exports for a compatible policy interface.
///
/// # Errors
/// When the interface is missing or of an incompatible version.
pub fn check(component: &Component, engine: &wasmtime::Engine) -> Result<Version, ContractError> {
    let exports: Vec<String> = component
        .component_type()
        .exports(engine)
        .map(|(name, _)| name.to_string())
        .collect();
    check_export_names(&exports)
}

fn check_export_names(exports: &[String]) -> Result<Version, ContractError> {
    let found = exports.iter().find_map(|name| {
        let (interface, version) = name.split_once('@').unwrap_or((name, ""));
        (interface == POLICY_INTERFACE).then(|| Version::parse(version))
    });
    match found {
        Some(Some(version)) if version.is_compatible_with(VERSION) => Ok(version),
        Some(Some(version)) => Err(ContractError::Incompatible { found: version }),
        // An unversioned export cannot be matched against a versioned host.
        Some(None) | None => Err(ContractError::NotAPolicy {
            exports: if exports.is_empty() {
                "nothing".to_string()
            } else {
                exports.join(", ")
            },
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn accepts_same_and_newer_patch_versions() {
        let ok = check_export_names(&names(&["portcullis:policy/policy@0.1.0"]));
        assert_eq!(ok, Ok(VERSION));
        let newer = check_export_names(&names(&["portcullis:policy/policy@0.1.7"]));
        assert_eq!(newer.map(|v| v.patch), Ok(7));
    }

    #[test]
    fn refuses_another_minor_version_with_both_versions_named() {
        let err = check_export_names(&names(&["portcullis:policy/policy@0.2.0"]))
            .expect_err("0.2 is incompatible with 0.1");
        let message = err.to_string();
        assert!(message.contains("portcullis:policy@0.2.0"), "{message}");
        assert!(
            message.contains("this host speaks portcullis:policy@0.1.0"),
            "{message}"
        );
    }

    #[test]
    fn refuses_a_component_without_the_interface() {
        let err = check_export_names(&names(&["wasi:cli/run@0.2.0"])).expect_err("not a policy");
        assert_eq!(
            err.to_string(),
            "module does not export portcullis:policy/policy: it is not a Portcullis policy \
             (it exports: wasi:cli/run@0.2.0)"
        );
    }

    #[test]
    fn parses_versions() {
        assert_eq!(
            Version::parse("1.2.3-rc1"),
            Some(Version {
                major: 1,
                minor: 2,
                patch: 3
            })
        );
        assert_eq!(Version::parse("1.2"), None);
        assert_eq!(Version::parse("1.2.3.4"), None);
        assert!(
            Version::parse("1.2.0").is_some_and(|v| v.is_compatible_with(Version {
                major: 1,
                minor: 0,
                patch: 0
            }))
        );
    }
}
