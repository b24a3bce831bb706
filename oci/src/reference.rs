//! `oci://REGISTRY/REPOSITORY:TAG` and `oci://REGISTRY/REPOSITORY@sha256:HEX`.

use std::fmt;
use std::str::FromStr;

use oci_client::Reference;

/// The scheme every policy reference starts with.
pub const SCHEME: &str = "oci://";

/// Why a reference was refused.
#[derive(Debug, thiserror::Error)]
pub enum ReferenceError {
    #[error("{0:?} is not a registry reference: it must start with {SCHEME}")]
    Scheme(String),
    #[error("invalid registry reference {text:?}: {message}")]
    Invalid { text: String, message: String },
}

/// A policy module's place in a registry. The registry is always named:
/// a reference never falls back to a public default registry.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PolicyRef {
    inner: Reference,
}

impl PolicyRef {
    /// The registry host (and port).
    pub fn registry(&self) -> &str {
        self.inner.resolve_registry()
    }

    pub fn repository(&self) -> &str {
        self.inner.repository()
    }

    /// The tag, unless the reference names a digest.
    pub fn tag(&self) -> Option<&str> {
        if self.inner.digest().is_some() {
            None
        } else {
            self.inner.tag()
        }
    }

    /// The manifest digest the reference pins, if it does.
    pub fn digest(&self) -> Option<&str> {
        self.inner.digest()
    }

    /// `REGISTRY/REPOSITORY`: what a signature's identity names.
    pub fn repository_name(&self) -> String {
        format!("{}/{}", self.registry(), self.repository())
    }

    /// The same repository pinned to `digest`.
    #[must_use]
    pub fn at_digest(&self, digest: &str) -> Self {
        Self {
            inner: Reference::with_digest(
                self.registry().to_string(),
                self.repository().to_string(),
                digest.to_string(),
            ),
        }
    }

    /// The same repository at `tag`.
    #[must_use]
    pub fn at_tag(&self, tag: &str) -> Self {
        Self {
            inner: Reference::with_tag(
                self.registry().to_string(),
                self.repository().to_string(),
                tag.to_string(),
            ),
        }
    }

    /// The client's form of the reference.
    pub(crate) fn oci(&self) -> &Reference {
        &self.inner
    }
}

impl FromStr for PolicyRef {
    type Err = ReferenceError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let invalid = |message: &str| ReferenceError::Invalid {
            text: text.to_string(),
            message: message.to_string(),
        };
        let rest = text
            .strip_prefix(SCHEME)
            .ok_or_else(|| ReferenceError::Scheme(text.to_string()))?;
        // Without an explicit registry the client would assume a public
        // default one: a typo must not send a cluster's policy lookups there.
        let registry = rest.split('/').next().unwrap_or_default();
        let explicit = registry.contains('.') || registry.contains(':') || registry == "localhost";
        if !rest.contains('/') || !explicit {
            return Err(invalid(
                "name the registry host first (REGISTRY/REPOSITORY:TAG, e.g. \
                 registry.example:5000/policies/name:v1)",
            ));
        }
        let inner = Reference::from_str(rest).map_err(|err| invalid(&err.to_string()))?;
        if let Some(digest) = inner.digest() {
            let hex = digest.strip_prefix("sha256:").unwrap_or_default();
            if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(invalid("only sha256 digests of 64 hex digits are accepted"));
            }
        }
        Ok(Self { inner })
    }
}

impl fmt::Display for PolicyRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{SCHEME}{}/{}", self.registry(), self.repository())?;
        match (self.inner.tag(), self.inner.digest()) {
            (_, Some(digest)) => write!(f, "@{digest}"),
            (Some(tag), None) => write!(f, ":{tag}"),
            (None, None) => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn tags_and_digests_parse_and_print_back() {
        let by_tag: PolicyRef = "oci://127.0.0.1:5000/policies/labels:v1"
            .parse()
            .expect("valid");
        assert_eq!(by_tag.registry(), "127.0.0.1:5000");
        assert_eq!(by_tag.repository(), "policies/labels");
        assert_eq!(by_tag.tag(), Some("v1"));
        assert_eq!(by_tag.digest(), None);
        assert_eq!(
            by_tag.to_string(),
            "oci://127.0.0.1:5000/policies/labels:v1"
        );
        assert_eq!(by_tag.repository_name(), "127.0.0.1:5000/policies/labels");

        let text = format!("oci://registry.example/policies/labels@{DIGEST}");
        let by_digest: PolicyRef = text.parse().expect("valid");
        assert_eq!(by_digest.digest(), Some(DIGEST));
        assert_eq!(by_digest.tag(), None);
        assert_eq!(by_digest.to_string(), text);
        assert_eq!(by_tag.at_digest(DIGEST).digest(), Some(DIGEST));
        assert_eq!(by_digest.at_tag("v2").tag(), Some("v2"));
    }

    #[test]
    fn a_missing_tag_means_latest() {
        let reference: PolicyRef = "oci://localhost:5000/labels".parse().expect("valid");
        assert_eq!(reference.tag(), Some("latest"));
    }

    #[test]
    fn references_without_a_registry_or_with_bad_digests_are_refused() {
        for text in [
            "labels:v1",
            "oci://labels:v1",
            "oci://policies/labels:v1",
            "oci://registry.example/policies/labels@sha256:abc",
            "oci://registry.example/policies/labels@md5:0123456789abcdef0123456789abcdef",
            "oci://registry.example/Policies/UPPER:v1",
        ] {
            let err = text.parse::<PolicyRef>().expect_err(text);
            assert!(err.to_string().contains(text), "{text}: {err}");
        }
    }
}
