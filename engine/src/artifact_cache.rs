//! Compiled policy modules on disk, so a start or a reload deserializes a
//! module (~1 ms) instead of componentizing and compiling it again (tens to
//! hundreds of milliseconds each).
//!
//! An entry is keyed by the module's sha256 and by everything that shapes
//! the compiled artifact: the engine's compatibility hash (wasmtime
//! version, target, settings), this host's version and the WASI adapter it
//! componentizes with. An entry is written whole (temporary file, then
//! rename) with a checksum of its payload; one that fails the checksum or
//! that wasmtime refuses is deleted and rebuilt, never used.
//!
//! wasmtime runs deserialized artifacts as native code, so the cache
//! directory must be as trusted as the binary: it is created owner-only,
//! and one that others can write to is not used.

use std::hash::{DefaultHasher, Hash as _, Hasher as _};
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};
use wasmtime::component::Component;

use crate::componentize::ModuleFormat;
use crate::report::Report;

/// First bytes of every entry: the format of this file, not wasmtime's.
const MAGIC: &[u8; 16] = b"PORTCULLIS-CWASM";
/// `MAGIC`, one format byte, the payload's sha256.
const HEADER_LEN: usize = MAGIC.len() + 1 + 32;

/// Why the cache directory cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("cannot create the module cache directory {path}")]
    Create {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the module cache directory {path} is writable by others (mode {mode:o}); \
         compiled modules run as native code, so it is not used"
    )]
    Unsafe { path: PathBuf, mode: u32 },
}

/// A directory of compiled modules for one engine configuration.
#[derive(Debug, Clone)]
pub struct ArtifactCache {
    dir: PathBuf,
    /// Hex digest of everything besides the module that shapes an artifact.
    key: String,
}

/// What a lookup found.
pub struct Cached {
    pub component: Component,
    pub format: ModuleFormat,
}

impl ArtifactCache {
    /// Opens (creating it owner-only if needed) the cache in `dir` for
    /// `engine`.
    ///
    /// # Errors
    /// A [`CacheError`] when the directory cannot be created or is unsafe.
    pub fn open(dir: &Path, engine: &wasmtime::Engine) -> Result<Self, CacheError> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|source| CacheError::Create {
                path: dir.to_path_buf(),
                source,
            })?;
        let mode = std::fs::metadata(dir)
            .map_err(|source| CacheError::Create {
                path: dir.to_path_buf(),
                source,
            })?
            .permissions()
            .mode();
        if mode & 0o022 != 0 {
            return Err(CacheError::Unsafe {
                path: dir.to_path_buf(),
                mode: mode & 0o7777,
            });
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            key: engine_key(engine),
        })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, digest: &str) -> PathBuf {
        let module = digest.strip_prefix("sha256:").unwrap_or(digest);
        self.dir.join(format!("{module}-{}.cwasm", self.key))
    }

    /// The compiled module for `digest`, if a sound entry exists. A corrupt
    /// or incompatible entry is deleted (and logged) and `None` returned.
    pub fn load(&self, engine: &wasmtime::Engine, digest: &str) -> Option<Cached> {
        let path = self.path(digest);
        let bytes = std::fs::read(&path).ok()?;
        match decode(engine, &bytes) {
            Ok(cached) => Some(cached),
            Err(reason) => {
                tracing::warn!(path = %path.display(), %reason, "discarding a compiled module from the cache");
                let _ = std::fs::remove_file(&path);
                None
            }
        }
    }

    /// Stores a compiled module. Failures are logged, not fatal: the cache
    /// only saves time.
    pub fn store(&self, digest: &str, component: &Component, format: ModuleFormat) {
        if let Err(error) = self.try_store(digest, component, format) {
            tracing::warn!(dir = %self.dir.display(), error = %Report(&error), "cannot write a compiled module to the cache");
        }
    }

    fn try_store(
        &self,
        digest: &str,
        component: &Component,
        format: ModuleFormat,
    ) -> Result<(), StoreError> {
        let payload = component
            .serialize()
            .map_err(|err| StoreError::Serialize(format!("{err:#}")))?;
        let path = self.path(digest);
        let mut temp = tempfile_in(&self.dir)?;
        temp.1.write_all(MAGIC)?;
        temp.1.write_all(&[format_byte(format)])?;
        temp.1.write_all(&Sha256::digest(&payload))?;
        temp.1.write_all(&payload)?;
        temp.1.sync_all()?;
        std::fs::rename(&temp.0, &path)?;
        Ok(())
    }
}

/// Why a compiled module could not be written to the cache.
#[derive(Debug, thiserror::Error)]
enum StoreError {
    /// wasmtime could not serialize the component.
    #[error("cannot serialize the compiled module: {0}")]
    Serialize(String),
    /// The file could not be written.
    #[error("cannot write the cache file")]
    Io(#[from] std::io::Error),
}

/// A new file in `dir` with a name no other writer uses.
fn tempfile_in(dir: &Path) -> std::io::Result<(PathBuf, std::fs::File)> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let name = format!(
        ".tmp-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    );
    let path = dir.join(name);
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)?;
    Ok((path, file))
}

fn format_byte(format: ModuleFormat) -> u8 {
    match format {
        ModuleFormat::CoreModule => 1,
        ModuleFormat::Component => 2,
    }
}

fn decode(engine: &wasmtime::Engine, bytes: &[u8]) -> Result<Cached, String> {
    if bytes.len() < HEADER_LEN || &bytes[..MAGIC.len()] != MAGIC {
        return Err("not a cache entry (bad header)".into());
    }
    let format = match bytes[MAGIC.len()] {
        1 => ModuleFormat::CoreModule,
        2 => ModuleFormat::Component,
        other => return Err(format!("unknown module format {other}")),
    };
    let (checksum, payload) = bytes[MAGIC.len() + 1..].split_at(32);
    if Sha256::digest(payload).as_slice() != checksum {
        return Err("checksum mismatch (a corrupt or partial entry)".into());
    }
    let component = deserialize(engine, payload).map_err(|err| format!("{err:#}"))?;
    Ok(Cached { component, format })
}

/// Turns an artifact back into a component.
#[allow(unsafe_code)]
fn deserialize(engine: &wasmtime::Engine, payload: &[u8]) -> wasmtime::Result<Component> {
    // SAFETY: wasmtime requires that the bytes come from its own
    // `serialize`. They do: only `try_store` writes entries, into an
    // owner-only directory this process checked, and the checksum above
    // proves the payload is the one written, not a corrupt or partial file.
    // wasmtime itself refuses artifacts from another version or
    // configuration.
    unsafe { Component::deserialize(engine, payload) }
}

/// Hex digest of what shapes an artifact besides the module's bytes.
fn engine_key(engine: &wasmtime::Engine) -> String {
    let mut hasher = DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut hasher);
    let mut digest = Sha256::new();
    digest.update(hasher.finish().to_le_bytes());
    digest.update(env!("CARGO_PKG_VERSION").as_bytes());
    digest.update(wasi_preview1_component_adapter_provider::WASI_SNAPSHOT_PREVIEW1_REACTOR_ADAPTER);
    hex::encode(&digest.finalize()[..12])
}

/// The default cache directory: `$XDG_CACHE_HOME/portcullis/modules`, else
/// `$HOME/.cache/portcullis/modules`.
pub fn default_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|v| !v.is_empty())
                .map(|home| PathBuf::from(home).join(".cache"))
        })?;
    Some(base.join("portcullis").join("modules"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn engine() -> wasmtime::Engine {
        let mut config = wasmtime::Config::new();
        config.wasm_component_model(true);
        wasmtime::Engine::new(&config).expect("engine")
    }

    /// The empty component: magic, component-model version 0x0d, layer 1.
    fn component(engine: &wasmtime::Engine) -> Component {
        let empty = [0x00, 0x61, 0x73, 0x6d, 0x0d, 0x00, 0x01, 0x00];
        Component::from_binary(engine, &empty).expect("component")
    }

    #[test]
    fn stores_and_loads_and_discards_what_is_corrupt() {
        let dir = tempfile::tempdir().expect("tempdir");
        let engine = engine();
        let cache = ArtifactCache::open(&dir.path().join("c"), &engine).expect("open");
        let digest = "sha256:abc";
        assert!(cache.load(&engine, digest).is_none());
        cache.store(digest, &component(&engine), ModuleFormat::CoreModule);
        let hit = cache.load(&engine, digest).expect("a hit");
        assert_eq!(hit.format, ModuleFormat::CoreModule);

        // One flipped byte in the payload: discarded, file removed.
        let path = cache.path(digest);
        let mut bytes = std::fs::read(&path).expect("read");
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        std::fs::write(&path, &bytes).expect("write");
        assert!(cache.load(&engine, digest).is_none());
        assert!(!path.exists(), "a corrupt entry must be deleted");

        // Garbage under the right name: discarded too.
        std::fs::write(&path, b"not a cache entry").expect("write");
        assert!(cache.load(&engine, digest).is_none());
        assert!(!path.exists());
    }

    #[test]
    fn a_valid_checksum_over_a_foreign_artifact_is_refused_by_wasmtime() {
        let dir = tempfile::tempdir().expect("tempdir");
        let engine = engine();
        let cache = ArtifactCache::open(dir.path(), &engine).expect("open");
        let payload = b"\0asm not an artifact".to_vec();
        let mut bytes = MAGIC.to_vec();
        bytes.push(2);
        bytes.extend_from_slice(&Sha256::digest(&payload));
        bytes.extend_from_slice(&payload);
        std::fs::write(cache.path("sha256:def"), bytes).expect("write");
        assert!(cache.load(&engine, "sha256:def").is_none());
    }

    #[test]
    fn a_directory_others_can_write_is_not_used() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777))
            .expect("chmod");
        let err = ArtifactCache::open(dir.path(), &engine()).expect_err("unsafe");
        assert!(matches!(err, CacheError::Unsafe { .. }), "{err}");
    }

    #[test]
    fn entries_are_keyed_by_the_engine_configuration() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = ArtifactCache::open(dir.path(), &engine()).expect("a");
        let mut config = wasmtime::Config::new();
        config.wasm_component_model(true);
        config.epoch_interruption(true);
        let other = wasmtime::Engine::new(&config).expect("engine");
        let b = ArtifactCache::open(dir.path(), &other).expect("b");
        assert_ne!(a.path("sha256:1"), b.path("sha256:1"));
    }
}
