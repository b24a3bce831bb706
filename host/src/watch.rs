//! Watching the config and module files, at the level of their
//! directories, so that every way files change in practice is seen: an
//! in-place write, write-to-temp-then-rename, and the Kubernetes
//! ConfigMap/Secret volume swap, where the files are symlinks through
//! `..data` and only `..data` is renamed (no event names the file itself).
//!
//! The watcher only reports "something relevant changed"; the reload loop
//! debounces and decides.

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use notify::{Event, EventKind, RecommendedWatcher, RecursiveMode, Watcher};

/// Errors starting the watcher.
#[derive(Debug, thiserror::Error)]
#[error("cannot start a file watcher")]
pub struct WatchError(#[source] notify::Error);

/// Watches the directories of a set of files.
pub struct FileWatcher {
    watcher: RecommendedWatcher,
    /// Watched directories and their inode when the watch was added.
    directories: HashMap<PathBuf, Option<u64>>,
    /// File names that matter in those directories.
    names: Arc<Mutex<HashSet<OsString>>>,
}

impl FileWatcher {
    /// Starts a watcher that calls `on_change` for each relevant change
    /// (on the watcher's own thread: it should only send a message).
    ///
    /// # Errors
    /// When the platform watcher cannot be created.
    pub fn new(on_change: impl Fn() + Send + 'static) -> Result<Self, WatchError> {
        let names: Arc<Mutex<HashSet<OsString>>> = Arc::default();
        let filter = names.clone();
        let watcher =
            notify::recommended_watcher(move |result: notify::Result<Event>| match result {
                Ok(event) => {
                    let names = filter.lock().unwrap_or_else(PoisonError::into_inner);
                    if is_relevant(&event, &names) {
                        on_change();
                    }
                }
                Err(error) => tracing::warn!(%error, "file watcher error"),
            })
            .map_err(WatchError)?;
        Ok(Self {
            watcher,
            directories: HashMap::new(),
            names,
        })
    }

    /// Watches the directories of `files` (and stops watching others).
    /// A directory that does not exist yet is logged and skipped; the
    /// reload loop's fingerprint check still notices its files later.
    ///
    /// Only the difference is applied: re-registering a directory that is
    /// already watched would open a gap in which events are lost. A
    /// directory whose inode changed (it was replaced) is registered anew.
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
        self.directories.retain(|dir, _| {
            let keep = wanted.contains(dir);
            // A directory that is gone has lost its watch already.
            if !keep && dir.exists() {
                let _ = self.watcher.unwatch(dir);
            }
            keep
        });
        for dir in wanted {
            let inode = inode_of(&dir);
            match self.directories.get(&dir) {
                Some(watched) if *watched == inode => continue,
                Some(_) => {
                    let _ = self.watcher.unwatch(&dir);
                }
                None => {}
            }
            match self.watcher.watch(&dir, RecursiveMode::NonRecursive) {
                Ok(()) => {
                    self.directories.insert(dir, inode);
                }
                Err(error) => {
                    self.directories.remove(&dir);
                    tracing::warn!(directory = %dir.display(), %error, "cannot watch directory");
                }
            }
        }
    }
}

/// The directories to watch for `files`: each file's parent.
pub fn directories(files: &[PathBuf]) -> HashSet<PathBuf> {
    files
        .iter()
        .map(|file| {
            file.parent()
                .filter(|dir| !dir.as_os_str().is_empty())
                .unwrap_or(Path::new("."))
                .to_path_buf()
        })
        .collect()
}

fn inode_of(dir: &Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata(dir).ok().map(|meta| meta.ino())
}

/// What the watched files look like now: where each leads and its inode,
/// size and modification time. Taken before a reload reads the files and
/// again after the watches are updated: a difference means a change may
/// have slipped past the watcher, and another reload is due.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Fingerprint(Vec<Option<FileStat>>);

/// Where a file leads, and its inode, size, mtime (s, ns) and ctime (ns).
type FileStat = (PathBuf, u64, u64, i64, i64, i64);

impl Fingerprint {
    /// This fingerprint followed by `other`'s.
    pub fn then(mut self, other: Fingerprint) -> Self {
        self.0.extend(other.0);
        self
    }

    /// Stats every file (following symlinks).
    pub fn of(files: &[PathBuf]) -> Self {
        use std::os::unix::fs::MetadataExt as _;
        Self(
            files
                .iter()
                .map(|file| {
                    let target = std::fs::canonicalize(file).ok()?;
                    let meta = std::fs::metadata(&target).ok()?;
                    Some((
                        target,
                        meta.ino(),
                        meta.size(),
                        meta.mtime(),
                        meta.mtime_nsec(),
                        meta.ctime_nsec(),
                    ))
                })
                .collect(),
        )
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

    #[test]
    fn fingerprints_change_with_content_and_symlink_swaps() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("config.yaml");
        std::fs::write(&file, "a").expect("write");
        let files = vec![file.clone(), dir.path().join("missing.wasm")];
        let before = Fingerprint::of(&files);
        assert_eq!(before, Fingerprint::of(&files));
        std::fs::write(&file, "bb").expect("rewrite");
        assert_ne!(before, Fingerprint::of(&files));
        let link = dir.path().join("link.yaml");
        let other = dir.path().join("other.yaml");
        std::fs::write(&other, "bb").expect("write other");
        std::os::unix::fs::symlink(&file, &link).expect("symlink");
        let linked = Fingerprint::of(std::slice::from_ref(&link));
        std::fs::remove_file(&link).expect("unlink");
        std::os::unix::fs::symlink(&other, &link).expect("relink");
        assert_ne!(linked, Fingerprint::of(std::slice::from_ref(&link)));
    }

    #[tokio::test]
    async fn sees_a_rename_into_place() {
        let dir = tempfile::tempdir().expect("tempdir");
        let target = dir.path().join("config.yaml");
        std::fs::write(&target, "a").expect("write");
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut watcher = FileWatcher::new(move || {
            let _ = tx.send(());
        })
        .expect("watcher");
        watcher.watch(std::slice::from_ref(&target));
        let temp = dir.path().join("config.yaml.tmp");
        std::fs::write(&temp, "b").expect("write temp");
        std::fs::rename(&temp, &target).expect("rename");
        let seen = tokio::time::timeout(std::time::Duration::from_secs(5), rx.recv()).await;
        assert_eq!(seen, Ok(Some(())));
    }

    #[test]
    fn watches_each_files_directory_once() {
        let dirs = directories(&[
            PathBuf::from("/etc/portcullis/config.yaml"),
            PathBuf::from("/etc/portcullis/a.wasm"),
            PathBuf::from("/opt/policies/b.wasm"),
            PathBuf::from("relative.wasm"),
        ]);
        assert_eq!(dirs.len(), 3);
        assert!(dirs.contains(Path::new("/etc/portcullis")));
        assert!(dirs.contains(Path::new("/opt/policies")));
        assert!(dirs.contains(Path::new(".")));
    }
}
