//! Image patterns for allow- and deny-lists, normalized like image
//! references so that `nginx` and `docker.io/library/nginx` are the same
//! pattern.

use std::fmt;

use serde::Deserialize;

use super::ImageRef;
use crate::glob;

/// A pattern over image references, e.g. one entry of an allow-list.
/// Deserializes from its text, so a settings field can be
/// `Vec<ImagePattern>` and a bad pattern is a settings error.
///
/// - ending in `/`: every repository below that registry or path, at a
///   path boundary (`registry.k8s.io/`, `ghcr.io/acme/`);
/// - a name (`nginx`, `docker.io/library/nginx`): that repository, any tag
///   or digest;
/// - with a tag (`nginx:1.27`): exactly that tag;
/// - with a digest (`nginx@sha256:…`): exactly that digest;
/// - `*` anywhere but the digest matches any run of characters: within the
///   registry it stays within the registry (`*.gcr.io/x` never matches
///   `evil.io/eu.gcr.io/x`); in the repository it crosses `/`
///   (`ghcr.io/acme/*` matches `ghcr.io/acme/team/app`); `nginx:1.*` globs
///   the tag; `*` alone allows every image.
///
/// Patterns are normalized like references, `*` or not: a single-component
/// Docker Hub pattern gets `library/` (`*nginx*` is
/// `docker.io/library/*nginx*`, so it does not match `bitnami/nginx`). For
/// every repository of a registry write the prefix form (`docker.io/`).
/// In an allow-list that only ever allows less; a deny-list should use
/// prefixes or full names.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct ImagePattern {
    /// As written in the settings; shown in messages.
    text: String,
    /// Glob over the normalized registry. Matched on its own so that a `*`
    /// in it cannot swallow a `/` and match a path on another registry.
    registry: String,
    /// Glob over the normalized repository.
    repository: String,
    /// Glob over the tag, when the pattern gives one.
    tag: Option<String>,
    /// The exact digest, when the pattern gives one.
    digest: Option<String>,
}

/// Appended to a prefix pattern so it parses as a reference; two
/// components, so Docker Hub's `library/` is not inserted into it.
const PREFIX_PROBE: &str = "x/x";

impl ImagePattern {
    /// Parses and normalizes a pattern.
    pub fn parse(text: &str) -> Result<Self, String> {
        let invalid = |reason: &str| format!("invalid image pattern {text:?}: {reason}");
        if text == "*" {
            return Ok(ImagePattern {
                text: text.to_string(),
                registry: "*".to_string(),
                repository: "*".to_string(),
                tag: None,
                digest: None,
            });
        }
        if let Some(prefix) = text.strip_suffix('/') {
            // `registry.k8s.io/`, `ghcr.io/acme/`, `library/`: parse as the
            // registry and namespace of a probe repository, then drop the
            // probe and match anything below.
            let probe = ImageRef::parse_glob(&format!("{prefix}/{PREFIX_PROBE}"))
                .map_err(|e| invalid(e.reason()))?;
            let below = probe
                .repository()
                .strip_suffix(PREFIX_PROBE)
                .ok_or_else(|| invalid("a prefix cannot have a tag or digest"))?;
            if !probe.tag_is_implicit() {
                return Err(invalid("a prefix cannot have a tag or digest"));
            }
            return Ok(ImagePattern {
                text: text.to_string(),
                registry: probe.registry().to_string(),
                repository: format!("{below}*"),
                tag: None,
                digest: None,
            });
        }
        let image = ImageRef::parse_glob(text).map_err(|e| invalid(e.reason()))?;
        Ok(ImagePattern {
            text: text.to_string(),
            registry: image.registry().to_string(),
            repository: image.repository().to_string(),
            tag: if image.tag_is_implicit() {
                None
            } else {
                image.tag().map(str::to_string)
            },
            digest: image.digest().map(str::to_string),
        })
    }

    /// Whether `image` matches this pattern.
    pub fn matches(&self, image: &ImageRef) -> bool {
        glob::matches(&self.registry, image.registry())
            && glob::matches(&self.repository, image.repository())
            && self
                .tag
                .as_deref()
                .is_none_or(|tag| image.tag().is_some_and(|t| glob::matches(tag, t)))
            && self
                .digest
                .as_deref()
                .is_none_or(|digest| image.digest() == Some(digest))
    }
}

impl TryFrom<String> for ImagePattern {
    type Error = String;
    fn try_from(text: String) -> Result<Self, Self::Error> {
        ImagePattern::parse(&text)
    }
}

impl fmt::Display for ImagePattern {
    /// The pattern as written in the settings.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// A list of [`ImagePattern`]s, as an allow- or deny-list in settings
/// (`allowed: ["registry.k8s.io/", "nginx:1.*"]`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct ImagePatterns(Vec<ImagePattern>);

impl ImagePatterns {
    /// Whether any pattern matches `image`.
    pub fn matches(&self, image: &ImageRef) -> bool {
        self.0.iter().any(|pattern| pattern.matches(image))
    }

    /// Whether the list is empty (an allow-list that allows nothing).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The patterns, in the order written.
    pub fn iter(&self) -> impl Iterator<Item = &ImagePattern> {
        self.0.iter()
    }
}

impl From<Vec<ImagePattern>> for ImagePatterns {
    fn from(patterns: Vec<ImagePattern>) -> Self {
        ImagePatterns(patterns)
    }
}

impl fmt::Display for ImagePatterns {
    /// The patterns as written, joined by `, `: for messages.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, pattern) in self.0.iter().enumerate() {
            if index > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{pattern}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
