//! The content store: module blobs by digest, and what each manifest and
//! tag resolved to, so a restart or a registry outage never needs the
//! network for a digest already here.
//!
//! ```text
//! DIR/blobs/sha256/HEX          module bytes, checked against HEX when stored
//! DIR/manifests/HEX.json        manifest digest -> layer digest, annotations, keys it verified with
//! DIR/tags/HASH.json            reference with a tag -> manifest digest it last resolved to
//! ```
//!
//! Every file is written to a temporary name and renamed into place: a
//! crash never leaves a half-written blob under a digest's name.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// Why the store could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot write {}", .path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the bytes for {expected} hash to {actual}: refused")]
    DigestMismatch { expected: String, actual: String },
    #[error("{0:?} is not a sha256 digest")]
    BadDigest(String),
}

/// What a manifest was found to hold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ManifestRecord {
    /// Digest of the module layer.
    pub layer: String,
    pub size: u64,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    /// Fingerprints of public keys a signature of this manifest verified with.
    #[serde(default)]
    pub verified_with: Vec<String>,
}

#[derive(Debug, Serialize, Deserialize)]
struct TagRecord {
    reference: String,
    manifest: String,
}

/// A content store in a directory.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

impl Store {
    /// A store kept in `dir` (made when first written).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where the blob of `digest` is (or would be) kept.
    ///
    /// # Errors
    /// When `digest` is not `sha256:` and 64 hex digits.
    pub fn blob_path(&self, digest: &str) -> Result<PathBuf, StoreError> {
        Ok(self.dir.join("blobs/sha256").join(hex_of(digest)?))
    }

    /// Whether the blob is here. Its bytes are checked again by whoever
    /// reads them, against the digest the manifest gave.
    pub fn has_blob(&self, digest: &str) -> bool {
        self.blob_path(digest).is_ok_and(|path| path.is_file())
    }

    /// Stores `bytes` as the blob of `digest`, refusing bytes that do not
    /// hash to it.
    ///
    /// # Errors
    /// A mismatch, or the write failing.
    pub fn put_blob(&self, digest: &str, bytes: &[u8]) -> Result<PathBuf, StoreError> {
        let actual = sha256(bytes);
        if actual != digest {
            return Err(StoreError::DigestMismatch {
                expected: digest.to_string(),
                actual,
            });
        }
        let path = self.blob_path(digest)?;
        write_atomically(&path, bytes)?;
        Ok(path)
    }

    /// What `manifest` (a digest) was found to hold, if it was seen before.
    pub fn manifest(&self, manifest: &str) -> Option<ManifestRecord> {
        let path = self.manifest_path(manifest).ok()?;
        let text = std::fs::read(path).ok()?;
        serde_json::from_slice(&text).ok()
    }

    /// Records what `manifest` holds.
    ///
    /// # Errors
    /// The write failing.
    pub fn put_manifest(&self, manifest: &str, record: &ManifestRecord) -> Result<(), StoreError> {
        let path = self.manifest_path(manifest)?;
        write_atomically(&path, &json(record))
    }

    /// The manifest digest `reference` (with a tag) last resolved to.
    pub fn tag(&self, reference: &str) -> Option<String> {
        let text = std::fs::read(self.tag_path(reference)).ok()?;
        let record: TagRecord = serde_json::from_slice(&text).ok()?;
        (record.reference == reference).then_some(record.manifest)
    }

    /// Records that `reference` resolved to `manifest`.
    ///
    /// # Errors
    /// The write failing.
    pub fn put_tag(&self, reference: &str, manifest: &str) -> Result<(), StoreError> {
        let record = TagRecord {
            reference: reference.to_string(),
            manifest: manifest.to_string(),
        };
        write_atomically(&self.tag_path(reference), &json(&record))
    }

    fn manifest_path(&self, manifest: &str) -> Result<PathBuf, StoreError> {
        Ok(self
            .dir
            .join("manifests")
            .join(format!("{}.json", hex_of(manifest)?)))
    }

    fn tag_path(&self, reference: &str) -> PathBuf {
        let name = hex::encode(Sha256::digest(reference.as_bytes()));
        self.dir.join("tags").join(format!("{name}.json"))
    }
}

/// `sha256:HEX` of `bytes`.
pub fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

fn hex_of(digest: &str) -> Result<&str, StoreError> {
    digest
        .strip_prefix("sha256:")
        .filter(|hex| hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
        .ok_or_else(|| StoreError::BadDigest(digest.to_string()))
}

fn json(value: &impl Serialize) -> Vec<u8> {
    // Serializing these plain structs cannot fail.
    serde_json::to_vec_pretty(value).unwrap_or_default()
}

fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let write_error = |source| StoreError::Write {
        path: path.to_path_buf(),
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(write_error)?;
    let temporary = dir.join(format!(
        ".{}.{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("blob"),
        std::process::id()
    ));
    let result = (|| {
        let mut file = std::fs::File::create(&temporary)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&temporary, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&temporary);
    }
    result.map_err(write_error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blobs_are_kept_by_digest_and_checked_when_stored() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::new(dir.path());
        let digest = sha256(b"module");
        assert!(!store.has_blob(&digest));
        let path = store.put_blob(&digest, b"module").expect("stored");
        assert!(store.has_blob(&digest));
        assert_eq!(std::fs::read(path).expect("read"), b"module");
        let err = store.put_blob(&digest, b"tampered").expect_err("mismatch");
        assert!(matches!(err, StoreError::DigestMismatch { .. }), "{err}");
        assert!(store.blob_path("sha256:../../etc").is_err());
    }

    #[test]
    fn manifests_and_tags_are_remembered() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::new(dir.path());
        let manifest = sha256(b"manifest");
        assert_eq!(store.manifest(&manifest), None);
        let record = ManifestRecord {
            layer: sha256(b"module"),
            size: 6,
            annotations: BTreeMap::from([("k".to_string(), "v".to_string())]),
            verified_with: vec!["key".to_string()],
        };
        store.put_manifest(&manifest, &record).expect("stored");
        assert_eq!(store.manifest(&manifest), Some(record));
        let reference = "oci://127.0.0.1:5000/p:v1";
        assert_eq!(store.tag(reference), None);
        store.put_tag(reference, &manifest).expect("stored");
        assert_eq!(store.tag(reference), Some(manifest));
    }
}
