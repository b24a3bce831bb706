//! `portcullis promote`: makes a policy's shadow candidate its enforcing
//! version, by rewriting the config file. A server watching the file
//! reloads it the usual way (the whole new set is built first; if it does
//! not load, the old one keeps serving).

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::Args;
use serde_yaml_ng::{Mapping, Value};

use crate::commands::CliError;
use portcullis_engine::Config;

/// The keys of a `shadow:` block, each replacing the live key of the same
/// name when present.
const CANDIDATE_KEYS: [&str; 4] = ["module", "settings", "timeoutMs", "memoryLimit"];

#[derive(Debug, Args)]
#[command(
    long_about = "Make POLICY's shadow candidate its enforcing version: its module, settings, \
                  timeoutMs and memoryLimit (those the `shadow:` block gives) replace the live \
                  ones and the `shadow:` block is removed. The file is replaced atomically (a \
                  new file in the same directory, renamed over it), so a server watching it \
                  reloads it like any edit.\n\n\
                  The file is rewritten from its parsed YAML: comments, anchors and the layout \
                  of the original are not kept. Keep the config under version control, or edit \
                  it by hand instead, if they matter."
)]
pub struct PromoteCommand {
    /// The policy config file (YAML) to rewrite.
    #[arg(long, env = "PORTCULLIS_CONFIG")]
    pub config: PathBuf,

    /// The policy whose shadow candidate becomes the enforcing version.
    pub policy: String,
}

/// Why a config cannot be promoted.
#[derive(Debug, thiserror::Error)]
pub enum PromoteError {
    /// The file is not YAML, or not a config's shape.
    #[error("not a config file: {0}")]
    Shape(String),
    /// No policy of that name.
    #[error("no policy named {0:?} in the config")]
    NoPolicy(String),
    /// The policy has no candidate.
    #[error("policy {0:?} has no `shadow:` candidate to promote")]
    NoShadow(String),
    /// The YAML could not be written back.
    #[error("cannot write the config back as YAML")]
    Write(#[source] serde_yaml_ng::Error),
}

impl PromoteCommand {
    /// Rewrites the config.
    ///
    /// # Errors
    /// Exit 2 when the file is not a valid config or the policy or its
    /// candidate does not exist; 1 when the file cannot be written.
    pub fn execute(self) -> Result<(), CliError> {
        let text =
            portcullis_engine::read_text_bounded(&self.config, portcullis_engine::MAX_CONFIG_BYTES)
                .with_context(|| format!("cannot read {}", self.config.display()))
                .map_err(CliError::usage)?;
        // Only a config the server would load is promoted, and only into
        // one it would load.
        Config::parse(&self.config, &text).map_err(CliError::usage)?;
        let promoted = promoted(&text, &self.policy)
            .with_context(|| format!("cannot promote in {}", self.config.display()))
            .map_err(CliError::usage)?;
        Config::parse(&self.config, &promoted)
            .context("the promoted config would not load")
            .map_err(CliError::usage)?;
        replace_atomically(&self.config, promoted.as_bytes())
            .with_context(|| format!("cannot write {}", self.config.display()))
            .map_err(CliError::failure)?;
        println!(
            "promoted the shadow candidate of {:?} in {}",
            self.policy,
            self.config.display()
        );
        Ok(())
    }
}

/// The config text with `policy`'s candidate in place of its live version.
///
/// # Errors
/// A [`PromoteError`] saying what is missing.
pub fn promoted(text: &str, policy: &str) -> Result<String, PromoteError> {
    let mut config: Value =
        serde_yaml_ng::from_str(text).map_err(|e| PromoteError::Shape(e.to_string()))?;
    let policies = config
        .get_mut("policies")
        .and_then(Value::as_sequence_mut)
        .ok_or_else(|| PromoteError::Shape("no `policies:` list".to_string()))?;
    let entry = policies
        .iter_mut()
        .filter_map(Value::as_mapping_mut)
        .find(|entry| entry.get("name").and_then(Value::as_str) == Some(policy))
        .ok_or_else(|| PromoteError::NoPolicy(policy.to_string()))?;
    let Some(Value::Mapping(shadow)) = entry.remove("shadow") else {
        return Err(PromoteError::NoShadow(policy.to_string()));
    };
    promote_into(entry, shadow);
    serde_yaml_ng::to_string(&config).map_err(PromoteError::Write)
}

/// Moves the candidate's keys over the live ones.
fn promote_into(entry: &mut Mapping, mut shadow: Mapping) {
    for key in CANDIDATE_KEYS {
        if let Some(value) = shadow.remove(key) {
            entry.insert(Value::from(key), value);
        }
    }
}

/// Writes `bytes` to a new file beside `path` (with `path`'s permissions)
/// and renames it over `path`: a reader sees the old file or the new one,
/// never half of it.
fn replace_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let permissions = std::fs::metadata(path)?.permissions();
    let mut file = tempfile::Builder::new()
        .prefix(".portcullis-promote-")
        .tempfile_in(dir)?;
    file.write_all(bytes)?;
    file.as_file().sync_all()?;
    file.as_file().set_permissions(permissions)?;
    file.persist(path).map_err(|e| e.error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = r#"
defaults: { timeoutMs: 100 }
policies:
  - name: images
    module: images.wasm
    timeoutMs: 50
    settings: { allowed: ["a/"] }
    shadow:
      module: images-v2.wasm
      settings: { allowed: ["a/", "b/"] }
      memoryLimit: 64Mi
  - name: labels
    module: labels.wasm
"#;

    #[test]
    fn the_candidate_replaces_the_live_version() {
        let text = promoted(CONFIG, "images").expect("promoted");
        let config = Config::parse(Path::new("/etc/p/config.yaml"), &text).expect("loads");
        let images = &config.policies[0];
        assert_eq!(images.module, Path::new("/etc/p/images-v2.wasm"));
        assert_eq!(images.settings, r#"{"allowed":["a/","b/"]}"#);
        assert_eq!(images.limits.memory, 64 << 20);
        // Not in the shadow block: the live value stays.
        assert_eq!(images.limits.timeout, std::time::Duration::from_millis(50));
        assert!(images.shadow.is_none());
        assert_eq!(config.policies[1].module, Path::new("/etc/p/labels.wasm"));
    }

    #[test]
    fn a_missing_policy_or_candidate_is_refused() {
        assert!(matches!(
            promoted(CONFIG, "nope"),
            Err(PromoteError::NoPolicy(name)) if name == "nope"
        ));
        assert!(matches!(
            promoted(CONFIG, "labels"),
            Err(PromoteError::NoShadow(name)) if name == "labels"
        ));
        assert!(matches!(
            promoted("just text", "images"),
            Err(PromoteError::Shape(_))
        ));
    }

    #[test]
    fn the_file_is_replaced_whole_with_its_permissions() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().expect("a directory");
        let path = dir.path().join("config.yaml");
        std::fs::write(&path, "old").expect("written");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).expect("chmod");
        replace_atomically(&path, b"new").expect("replaced");
        assert_eq!(std::fs::read_to_string(&path).expect("read"), "new");
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o640);
        let left: Vec<_> = std::fs::read_dir(dir.path()).expect("listed").collect();
        assert_eq!(left.len(), 1, "a temporary file was left behind");
    }
}
