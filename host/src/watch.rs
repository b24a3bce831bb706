//! Watching the config and module files, at the level of their
//! directories, so that every way files change in practice is seen: an
//! in-place write, write-to-temp-then-rename, and the Kubernetes
//! ConfigMap/Secret volume swap, where the files are symlinks through
//! `..data` and only `..data` is renamed (no event names the file itself).
//!
//! The watcher only reports "something relevant changed"; the reload loop
//! debounces and decides.

use std::collections::HashSet;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use notify::{Event, EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;

use crate::reload::directories;

/// Errors starting the watcher.
#[derive(Debug, thiserror::Error)]
#[error("cannot watch policy files: {0}")]
pub struct WatchError(notify::Error);

/// Watches the directories of a set of files.
pub struct FileWatcher {
    watcher: RecommendedWatcher,
    directories: HashSet<PathBuf>,
    /// File names that matter in those directories.
    names: Arc<Mutex<HashSet<OsString>>>,
}

impl FileWatcher {
    /// Starts a watcher that sends `()` on `events` for each relevant
    /// change.
    ///
    /// # Errors
    /// When the platform watcher cannot be created.
    pub fn new(events: mpsc::UnboundedSender<()>) -> Result<Self, WatchError> {
        let names: Arc<Mutex<HashSet<OsString>>> = Arc::default();
        let filter = names.clone();
        let watcher = notify::recommended_watcher(move |result: notify::Result<Event>| {
            match result {
                Ok(event) => {
                    let names = filter.lock().unwrap_or_else(PoisonError::into_inner);
                    if is_relevant(&event, &names) {
                        // The receiver is gone only at shutdown.
                        let _ = events.send(());
                    }
                }
                Err(error) => tracing::warn!(%error, "file watcher error"),
            }
        })
        .map_err(WatchError)?;
        Ok(Self {
            watcher,
            directories: HashSet::new(),
            names,
        })
    }

    /// Watches the directories of `files` (and stops watching others).
    /// A directory that does not exist yet is logged and skipped; SIGHUP
    /// still reloads.
    pub fn watch(&mut self, files: &[PathBuf]) {
        // A file reached through symlinks (a Kubernetes volume) is also
        // watched where it really lives, so an in-place write there is seen.
        let files: Vec<PathBuf> = files
            .iter()
            .cloned()
            .chain(files.iter().filter_map(|f| std::fs::canonicalize(f).ok()))
            .collect();
        let wanted = directories(&files);
        {
            let mut names = self.names.lock().unwrap_or_else(PoisonError::into_inner);
            names.clear();
            names.extend(
                files
                    .iter()
                    .filter_map(|f| f.file_name().map(OsString::from)),
            );
        }
        for gone in self.directories.difference(&wanted) {
            let _ = self.watcher.unwatch(gone);
        }
        // Re-adding every directory each time also recovers a directory
        // that was replaced (new inode) since it was first watched.
        let mut watching = HashSet::new();
        for dir in wanted {
            let _ = self.watcher.unwatch(&dir);
            match self.watcher.watch(&dir, RecursiveMode::NonRecursive) {
                Ok(()) => {
                    watching.insert(dir);
                }
                Err(error) => {
                    tracing::warn!(directory = %dir.display(), %error, "cannot watch directory");
                }
            }
        }
        self.directories = watching;
    }
}

/// Whether an event touches a watched file name, or is a Kubernetes
/// volume swap (`..data`, `..data_tmp`, `..2026_11_22_...`).
fn is_relevant(event: &Event, names: &HashSet<OsString>) -> bool {
    if matches!(event.kind, EventKind::Access(_)) {
        return false;
    }
    event.paths.iter().any(|path| relevant_path(path, names))
}

fn relevant_path(path: &Path, names: &HashSet<OsString>) -> bool {
    let Some(name) = path.file_name() else {
        return false;
    };
    names.contains(name) || name.to_string_lossy().starts_with("..")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relevant_paths_are_watched_names_and_volume_swaps() {
        let names: HashSet<OsString> = ["config.yaml", "a.wasm"]
            .iter()
            .map(OsString::from)
            .collect();
        assert!(relevant_path(Path::new("/etc/p/config.yaml"), &names));
        assert!(relevant_path(Path::new("/etc/p/a.wasm"), &names));
        assert!(relevant_path(Path::new("/etc/p/..data"), &names));
        assert!(relevant_path(Path::new("/etc/p/..data_tmp"), &names));
        assert!(!relevant_path(Path::new("/etc/p/other.txt"), &names));
        assert!(!relevant_path(Path::new("/etc/p/a.wasm.d"), &names));
    }

    #[tokio::test]
    async fn sees_a_rename_into_place() {
        let dir = tempfile::tempdir().expect("tempdir");
        let target = dir.path().join("config.yaml");
        std::fs::write(&target, "a").expect("write");
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut watcher = FileWatcher::new(tx).expect("watcher");
        watcher.watch(std::slice::from_ref(&target));
        let temp = dir.path().join("config.yaml.tmp");
        std::fs::write(&temp, "b").expect("write temp");
        std::fs::rename(&temp, &target).expect("rename");
        let seen = tokio::time::timeout(std::time::Duration::from_secs(5), rx.recv()).await;
        assert_eq!(seen, Ok(Some(())));
    }
}
