//! Container image references, normalized the way Docker does it.
//!
//! `nginx` and `docker.io/library/nginx:latest` name the same image; a
//! policy comparing images must compare normalized references or it can
//! be bypassed by spelling an image differently.

use std::fmt;

mod pattern;

pub use pattern::{ImagePattern, ImagePatterns};

/// The registry of references that name none.
pub const DEFAULT_REGISTRY: &str = "docker.io";
/// The tag of references that give neither tag nor digest.
pub const DEFAULT_TAG: &str = "latest";
/// Other names of Docker Hub, normalized to [`DEFAULT_REGISTRY`]: the
/// legacy index and the API endpoint, which serve the same images.
const DOCKER_HUB_ALIASES: [&str; 2] = ["index.docker.io", "registry-1.docker.io"];
/// Where Docker Hub keeps single-component ("official") repositories.
const OFFICIAL_NAMESPACE: &str = "library/";
/// Longest tag Docker accepts.
const MAX_TAG_LEN: usize = 128;
/// Longest name (registry and repository) Docker accepts.
const MAX_NAME_LEN: usize = 255;

/// A parsed, normalized image reference:
/// `registry/repository[:tag][@digest]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ImageRef {
    registry: String,
    repository: String,
    tag: Option<String>,
    digest: Option<String>,
    implicit_tag: bool,
}

/// Why a reference could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageError {
    reference: String,
    reason: &'static str,
}

impl ImageError {
    fn new(reference: &str, reason: &'static str) -> Self {
        ImageError {
            reference: reference.to_string(),
            reason,
        }
    }

    /// What is wrong, e.g. `repository name must be lowercase`.
    pub fn reason(&self) -> &'static str {
        self.reason
    }
}

impl fmt::Display for ImageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid image reference {:?}: {}",
            self.reference, self.reason
        )
    }
}

impl std::error::Error for ImageError {}

/// Whether the first path component of a reference names a registry:
/// only when it contains `.` or `:` or is `localhost` (so `nginx/x` is a
/// repository on Docker Hub, `ghcr.io/x` and `localhost:5000/x` are not).
pub fn is_registry(component: &str) -> bool {
    component.contains(['.', ':']) || component == "localhost"
}

/// Splits a name into its registry ([`DEFAULT_REGISTRY`] when none is
/// named) and the rest of the path, without further checks. The registry
/// is as written; [`normalize_registry`] gives the form to compare.
pub fn split_registry(name: &str) -> (&str, &str) {
    match name.split_once('/') {
        Some((first, rest)) if is_registry(first) => (first, rest),
        _ => (DEFAULT_REGISTRY, name),
    }
}

/// A registry host as policies must compare it: lower case (host names
/// are case-insensitive, so `EVIL.IO` is `evil.io` to the runtime that
/// pulls), and Docker Hub's other names as [`DEFAULT_REGISTRY`].
pub fn normalize_registry(registry: &str) -> String {
    let lower = registry.to_ascii_lowercase();
    if DOCKER_HUB_ALIASES.contains(&lower.as_str()) {
        DEFAULT_REGISTRY.to_string()
    } else {
        lower
    }
}

/// A registry's host without its port: `localhost:5000` is `localhost`.
pub fn registry_host(registry: &str) -> &str {
    split_port(registry).map_or(registry, |(host, _)| host)
}

impl ImageRef {
    /// Parses and normalizes a reference: the registry defaults to
    /// `docker.io`, single-component Docker Hub repositories get
    /// `library/`, and the tag defaults to `latest` when neither tag nor
    /// digest is given.
    pub fn parse(reference: &str) -> Result<Self, ImageError> {
        Self::parse_with(reference, false)
    }

    /// Like [`ImageRef::parse`], but `*` may appear in the registry, the
    /// repository and the tag (not the digest); for policies matching
    /// images against patterns such as `ghcr.io/acme/*`.
    pub fn parse_glob(pattern: &str) -> Result<Self, ImageError> {
        Self::parse_with(pattern, true)
    }

    fn parse_with(reference: &str, glob: bool) -> Result<Self, ImageError> {
        let err = |reason| ImageError::new(reference, reason);
        if reference.is_empty() {
            return Err(err("empty reference"));
        }
        if reference.len() == 64 && reference.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(err(
                "a 64-character hexadecimal string is an image id, not a reference",
            ));
        }
        let (rest, digest) = match reference.split_once('@') {
            Some((rest, digest)) => (rest, Some(digest)),
            None => (reference, None),
        };
        let (written, path) = split_registry(rest);
        let registry = normalize_registry(written);
        let registry = registry.as_str();
        let (path, tag) = match path.rsplit_once(':') {
            Some((path, tag)) => (path, Some(tag)),
            None => (path, None),
        };
        check_registry(registry, glob).map_err(err)?;
        check_path(path, glob).map_err(err)?;
        if let Some(tag) = tag {
            check_tag(tag, glob).map_err(err)?;
        }
        if let Some(digest) = digest {
            check_digest(digest).map_err(err)?;
        }
        let repository = if registry == DEFAULT_REGISTRY && !path.contains('/') {
            format!("{OFFICIAL_NAMESPACE}{path}")
        } else {
            path.to_string()
        };
        if registry.len() + 1 + repository.len() > MAX_NAME_LEN {
            return Err(err("name longer than 255 characters"));
        }
        let implicit_tag = tag.is_none() && digest.is_none();
        Ok(ImageRef {
            registry: registry.to_string(),
            repository,
            tag: tag
                .or(implicit_tag.then_some(DEFAULT_TAG))
                .map(str::to_string),
            digest: digest.map(str::to_string),
            implicit_tag,
        })
    }

    /// The registry, e.g. `docker.io` or `localhost:5000`.
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// The repository within the registry, e.g. `library/nginx`.
    pub fn repository(&self) -> &str {
        &self.repository
    }

    /// `registry/repository`, e.g. `docker.io/library/nginx`.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// The tag; `latest` when the reference gave neither tag nor digest.
    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    /// True when the tag is the default `latest` rather than written.
    pub fn tag_is_implicit(&self) -> bool {
        self.implicit_tag
    }

    /// The digest, e.g. `sha256:…`.
    pub fn digest(&self) -> Option<&str> {
        self.digest.as_deref()
    }
}

impl fmt::Display for ImageRef {
    /// The full normalized reference, e.g.
    /// `docker.io/library/nginx:latest`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

impl std::str::FromStr for ImageRef {
    type Err = ImageError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ImageRef::parse(s)
    }
}

/// `host[:port]`, the host being DNS labels or a bracketed IPv6 address.
fn check_registry(registry: &str, glob: bool) -> Result<(), &'static str> {
    let (host, port) = split_port(registry).ok_or("invalid registry host")?;
    let label_ok = |label: &str| {
        !label.is_empty()
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || (glob && c == '*'))
    };
    let host_ok = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(v6) => !v6.is_empty() && v6.chars().all(|c| c.is_ascii_hexdigit() || c == ':'),
        None => host.split('.').all(label_ok),
    };
    if !host_ok {
        return Err("invalid registry host");
    }
    let port_ok = |port: &str| {
        !port.is_empty()
            && port
                .chars()
                .all(|c| c.is_ascii_digit() || (glob && c == '*'))
    };
    if port.is_some_and(|port| !port_ok(port)) {
        return Err("invalid registry port");
    }
    Ok(())
}

/// Splits `host[:port]`; a bracketed IPv6 host keeps its brackets.
fn split_port(registry: &str) -> Option<(&str, Option<&str>)> {
    if registry.starts_with('[') {
        let (host, after) = registry.split_at(registry.find(']')? + 1);
        match after {
            "" => Some((host, None)),
            _ => Some((host, Some(after.strip_prefix(':')?))),
        }
    } else {
        Some(match registry.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (registry, None),
        })
    }
}

/// Lower-case path components of `[a-z0-9]` joined by `.`, `_`, `__` or
/// runs of `-`.
fn check_path(path: &str, glob: bool) -> Result<(), &'static str> {
    if path.is_empty() {
        return Err("empty repository name");
    }
    if path.chars().any(|c| c.is_ascii_uppercase()) {
        return Err("repository name must be lowercase");
    }
    for component in path.split('/') {
        if !is_path_component(component, glob) {
            return Err("invalid repository name");
        }
    }
    Ok(())
}

fn is_path_component(component: &str, glob: bool) -> bool {
    let alnum = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit() || (glob && *b == b'*');
    // Alternating runs: alphanumerics, a separator (one `.`, one or two
    // `_`, or any number of `-`), alphanumerics, and so on.
    let mut rest = component.as_bytes();
    loop {
        let word = rest.iter().take_while(|b| alnum(b)).count();
        if word == 0 {
            return false;
        }
        rest = &rest[word..];
        if rest.is_empty() {
            return true;
        }
        let sep = rest.iter().take_while(|b| !alnum(b)).count();
        let (separator, after) = rest.split_at(sep);
        if !(matches!(separator, b"." | b"_" | b"__") || separator.iter().all(|b| *b == b'-')) {
            return false;
        }
        rest = after;
    }
}

/// `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
fn check_tag(tag: &str, glob: bool) -> Result<(), &'static str> {
    let word = |c: char| c.is_ascii_alphanumeric() || c == '_' || (glob && c == '*');
    let mut chars = tag.chars();
    let first_ok = chars.next().is_some_and(word);
    if !first_ok || tag.len() > MAX_TAG_LEN || !chars.all(|c| word(c) || c == '.' || c == '-') {
        return Err("invalid tag");
    }
    Ok(())
}

/// `algorithm:hex`, the hex at least 32 characters (64 for sha256).
fn check_digest(digest: &str) -> Result<(), &'static str> {
    let (algorithm, hex) = digest.split_once(':').ok_or("invalid digest")?;
    let algorithm_ok = !algorithm.is_empty()
        && algorithm.split(['+', '.', '-', '_']).all(|part| {
            let mut chars = part.chars();
            chars.next().is_some_and(|c| c.is_ascii_alphabetic())
                && chars.all(|c| c.is_ascii_alphanumeric())
        });
    let hex_ok = hex.len() >= 32 && hex.chars().all(|c| c.is_ascii_hexdigit());
    if !algorithm_ok || !hex_ok || (algorithm == "sha256" && hex.len() != 64) {
        return Err("invalid digest");
    }
    Ok(())
}

#[cfg(test)]
mod tests;
