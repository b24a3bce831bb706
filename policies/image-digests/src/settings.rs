//! The settings and their checks.

use std::collections::{BTreeMap, HashMap};

use portcullis_sdk::image::ImageRef;
use serde::Deserialize;

/// `images: {tagged reference: digest}`, `denyUnpinned: bool`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct Settings {
    /// Tagged image references (any spelling) and the digest each pins to.
    pub images: BTreeMap<String, String>,
    /// Deny a pod with an image that is neither pinned already nor in
    /// `images`.
    pub deny_unpinned: bool,
    /// Containers whose image matches one of these patterns are left as
    /// they are, and not denied as unpinned.
    pub exempt_images: portcullis_sdk::image::ImagePatterns,
}

/// The digests by normalized `registry/repository:tag`, so that `nginx:1.27`
/// in the settings matches `docker.io/library/nginx:1.27` in a pod and the
/// other way round.
pub type Digests = HashMap<String, String>;

impl Settings {
    /// Normalizes the keys; the error names the first bad entry, the
    /// setting and what was expected.
    pub fn digests(&self) -> Result<Digests, String> {
        let mut digests = Digests::new();
        let mut spelled: HashMap<String, &str> = HashMap::new();
        for (key, digest) in &self.images {
            let image = ImageRef::parse(key).map_err(|e| {
                format!(
                    "images: key {key:?} is not a valid image reference ({})",
                    e.reason()
                )
            })?;
            if image.digest().is_some() {
                return Err(format!(
                    "images: key {key:?} must be a tagged reference, not one with a digest"
                ));
            }
            if image.tag_is_implicit() {
                return Err(format!(
                    "images: key {key:?} must name a tag (e.g. \"{key}:1.0\")"
                ));
            }
            if !is_sha256(digest) {
                return Err(format!(
                    "images[{key:?}]: {digest:?} is not a digest (expected \"sha256:\" and 64 lower-case hex characters)"
                ));
            }
            let normalized = image.to_string();
            if let Some(previous) = digests.get(&normalized).filter(|d| *d != digest) {
                let other = spelled.get(&normalized).copied().unwrap_or_default();
                return Err(format!(
                    "images: {other:?} and {key:?} both name {normalized} but map it to different digests ({previous} and {digest})"
                ));
            }
            spelled.insert(normalized.clone(), key);
            digests.insert(normalized, digest.clone());
        }
        Ok(digests)
    }

    /// What `validate-settings` checks.
    pub fn check(&self) -> Result<(), String> {
        if self.images.is_empty() {
            return Err("images must map at least one tagged image to a digest".to_string());
        }
        self.digests().map(|_| ())
    }
}

/// `sha256:` and 64 lower-case hex characters: the only form a registry
/// gives for the content digests this policy pins to.
fn is_sha256(digest: &str) -> bool {
    digest.strip_prefix("sha256:").is_some_and(|hex| {
        hex.len() == 64
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}
