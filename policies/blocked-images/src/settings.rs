//! The settings and their load-time checks.

use portcullis_sdk::image;
use serde::Deserialize;

/// `digests`, `tags`, `untagged`, `registries`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Blocked digests, `sha256:` and 64 lower-case hex digits.
    pub digests: Vec<String>,
    /// Blocked tags, compared exactly with the tag as written.
    pub tags: Vec<String>,
    /// Block images that give neither tag nor digest (implicitly
    /// `latest`).
    pub untagged: bool,
    /// Blocked registries, `host[:port]`, optionally followed by a
    /// repository path prefix: `quay.io/badorg/`.
    pub registries: Vec<String>,
    /// Containers whose image matches one of these patterns are not
    /// checked (e.g. a vetted debug image that is only ever tagged
    /// `latest`).
    #[serde(rename = "exemptImages")]
    pub exempt_images: portcullis_sdk::image::ImagePatterns,
}

/// A `registries` entry, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryEntry {
    /// The entry as written, for messages.
    pub text: String,
    /// The normalized registry (`index.docker.io` is `docker.io`).
    pub registry: String,
    /// Whether the entry names a port: `evil.io` blocks `evil.io` on every
    /// port, `evil.io:5000` only that port.
    pub has_port: bool,
    /// Repository path prefix without slashes at either end, or `None`
    /// for the whole registry.
    pub path: Option<String>,
}

/// The settings, ready to check images against.
#[derive(Debug)]
pub struct Rules<'a> {
    pub digests: &'a [String],
    pub tags: &'a [String],
    pub untagged: bool,
    pub registries: Vec<RegistryEntry>,
}

impl RegistryEntry {
    /// Parses `host[:port][/path/prefix][/]`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let bad = |why: &str| format!("registries: {text:?} {why}");
        let (host, path) = match text.split_once('/') {
            Some((host, path)) => (host, path.trim_end_matches('/')),
            None => (text, ""),
        };
        if host.is_empty() {
            return Err(bad("does not start with a registry host"));
        }
        // The same rule Docker uses to tell `quay.io/x` (registry) from
        // `library/x` (a Docker Hub repository).
        if !image::is_registry(host) {
            return Err(bad(
                "does not start with a registry host (one with a '.' or ':', or localhost), \
                 e.g. docker.io or quay.io/badorg/",
            ));
        }
        if !path.is_empty() && path.split('/').any(str::is_empty) {
            return Err(bad("has an empty path component"));
        }
        if path.chars().any(|c| c.is_ascii_uppercase())
            || host.chars().any(|c| c.is_ascii_uppercase())
        {
            return Err(bad("must be lower case, as normalized image names are"));
        }
        // Normalized as in image references (`index.docker.io` is
        // `docker.io`), by the SDK's own rule.
        let registry = image::normalize_registry(host);
        Ok(RegistryEntry {
            text: text.to_string(),
            has_port: image::registry_host(&registry) != registry,
            registry,
            path: (!path.is_empty()).then(|| path.to_string()),
        })
    }

    /// Whether `registry`/`repository` (normalized) falls under the entry;
    /// a path prefix matches whole path components only, so `quay.io/bad`
    /// does not block `quay.io/badger/x`.
    pub fn blocks(&self, registry: &str, repository: &str) -> bool {
        // A portless entry blocks the host on any port: `evil.io:443/x` is
        // still evil.io.
        let same_registry = if self.has_port {
            registry == self.registry
        } else {
            image::registry_host(registry) == self.registry
        };
        same_registry
            && self.path.as_deref().is_none_or(|path| {
                repository
                    .strip_prefix(path)
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
            })
    }
}

impl Settings {
    /// Every problem with the settings, joined with `; `.
    pub fn check(&self) -> Result<(), String> {
        let mut errors = Vec::new();
        if self.digests.is_empty()
            && self.tags.is_empty()
            && !self.untagged
            && self.registries.is_empty()
        {
            errors.push(
                "settings must block something: give digests, tags, registries or untagged: true"
                    .to_string(),
            );
        }
        for digest in &self.digests {
            if !is_sha256_digest(digest) {
                errors.push(format!(
                    "digests: {digest:?} is not sha256: followed by 64 lower-case hex digits"
                ));
            }
        }
        for tag in &self.tags {
            if !is_tag(tag) {
                errors.push(format!(
                    "tags: {tag:?} is not a valid tag (letters, digits, '_', '.', '-', \
                     not starting with '.' or '-', at most 128)"
                ));
            }
        }
        for entry in &self.registries {
            if let Err(e) = RegistryEntry::parse(entry) {
                errors.push(e);
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    }

    /// The settings, with registry entries parsed.
    pub fn rules(&self) -> Result<Rules<'_>, String> {
        Ok(Rules {
            digests: &self.digests,
            tags: &self.tags,
            untagged: self.untagged,
            registries: self
                .registries
                .iter()
                .map(|r| RegistryEntry::parse(r))
                .collect::<Result<_, _>>()?,
        })
    }
}

fn is_sha256_digest(text: &str) -> bool {
    text.strip_prefix("sha256:").is_some_and(|hex| {
        hex.len() == 64
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// Docker's tag grammar: `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
fn is_tag(tag: &str) -> bool {
    let word = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut chars = tag.chars();
    chars.next().is_some_and(word)
        && tag.len() <= 128
        && chars.all(|c| word(c) || c == '.' || c == '-')
}
