//! Reading the files an operator points the host at (the config, policy
//! modules) without trusting them to be ordinary files: a FIFO must not
//! block the reload loop (and with it shutdown), and `/dev/zero` or a
//! runaway file must not be read until the process runs out of memory.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

/// Largest config file read (a config with thousands of policies is a
/// few hundred KiB).
pub const MAX_CONFIG_BYTES: u64 = 4 << 20;
/// Largest module read: a Python or JavaScript component is 12-18 MB.
pub const MAX_MODULE_BYTES: u64 = 128 << 20;

/// Why a file was not read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// It could not be opened.
    #[error("cannot open {}", .path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// It is a FIFO, a device, a socket or a directory.
    #[error("{} is {kind}, not a regular file; only regular files are read", .path.display())]
    NotAFile { path: PathBuf, kind: &'static str },
    /// It is larger than the limit.
    #[error("{} is larger than the limit of {limit} bytes", .path.display())]
    TooLarge { path: PathBuf, limit: u64 },
    /// Reading failed part way.
    #[error("cannot read {}", .path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Reads `path` whole, refusing anything but a regular file of at most
/// `limit` bytes. Opening never blocks (a FIFO without a writer would
/// block a plain `open` forever).
///
/// # Errors
/// A [`ReadError`] naming the file and, for size, the limit.
pub fn read_bounded(path: &Path, limit: u64) -> Result<Vec<u8>, ReadError> {
    let file = open_nonblocking(path).map_err(|source| ReadError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    let read_error = |source| ReadError::Read {
        path: path.to_path_buf(),
        source,
    };
    let metadata = file.metadata().map_err(read_error)?;
    let file_type = metadata.file_type();
    if !file_type.is_file() {
        return Err(ReadError::NotAFile {
            path: path.to_path_buf(),
            kind: describe(&file_type),
        });
    }
    let too_large = || ReadError::TooLarge {
        path: path.to_path_buf(),
        limit,
    };
    if metadata.len() > limit {
        return Err(too_large());
    }
    // The size may change while reading (a writer appending): never read
    // past the limit, whatever the size said.
    let capacity = usize::try_from(metadata.len()).unwrap_or(0);
    let mut bytes = Vec::with_capacity(capacity);
    file.take(limit.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(read_error)?;
    if bytes.len() as u64 > limit {
        return Err(too_large());
    }
    Ok(bytes)
}

/// [`read_bounded`] as UTF-8 text.
///
/// # Errors
/// A [`ReadError`]; text that is not UTF-8 is a `Read` error.
pub fn read_text_bounded(path: &Path, limit: u64) -> Result<String, ReadError> {
    let bytes = read_bounded(path, limit)?;
    String::from_utf8(bytes).map_err(|err| ReadError::Read {
        path: path.to_path_buf(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, err.utf8_error()),
    })
}

#[cfg(unix)]
fn open_nonblocking(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    // O_NONBLOCK only changes how a FIFO or device opens; a regular file
    // reads the same with it.
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
}

#[cfg(not(unix))]
fn open_nonblocking(path: &Path) -> std::io::Result<File> {
    File::open(path)
}

#[cfg(unix)]
fn describe(file_type: &std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if file_type.is_fifo() {
        "a FIFO"
    } else if file_type.is_char_device() {
        "a character device"
    } else if file_type.is_block_device() {
        "a block device"
    } else if file_type.is_socket() {
        "a socket"
    } else if file_type.is_dir() {
        "a directory"
    } else {
        "not a regular file"
    }
}

#[cfg(not(unix))]
fn describe(file_type: &std::fs::FileType) -> &'static str {
    if file_type.is_dir() {
        "a directory"
    } else {
        "not a regular file"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regular_files_are_read_whole() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("a");
        std::fs::write(&path, b"hello").expect("write");
        assert_eq!(read_bounded(&path, 5).expect("read"), b"hello");
        assert_eq!(read_text_bounded(&path, 5).expect("read"), "hello");
    }

    #[test]
    fn files_over_the_limit_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("a");
        std::fs::write(&path, b"hello!").expect("write");
        let err = read_bounded(&path, 5).expect_err("too large");
        assert!(matches!(err, ReadError::TooLarge { limit: 5, .. }), "{err}");
        assert!(
            err.to_string()
                .ends_with("is larger than the limit of 5 bytes")
        );
    }

    #[test]
    fn directories_devices_and_fifos_are_refused_without_blocking() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = read_bounded(dir.path(), 5).expect_err("a directory");
        assert!(
            matches!(
                err,
                ReadError::NotAFile {
                    kind: "a directory",
                    ..
                }
            ) || matches!(err, ReadError::Open { .. }),
            "{err}"
        );
        #[cfg(unix)]
        {
            let err = read_bounded(Path::new("/dev/zero"), 1 << 20).expect_err("a device");
            assert!(
                matches!(
                    err,
                    ReadError::NotAFile {
                        kind: "a character device",
                        ..
                    }
                ),
                "{err}"
            );
            let fifo = dir.path().join("fifo");
            let status = std::process::Command::new("mkfifo")
                .arg(&fifo)
                .status()
                .expect("mkfifo");
            assert!(status.success());
            // No writer: a blocking open would never return.
            let err = read_bounded(&fifo, 1 << 20).expect_err("a FIFO");
            assert!(
                matches!(err, ReadError::NotAFile { kind: "a FIFO", .. }),
                "{err}"
            );
        }
    }
}
