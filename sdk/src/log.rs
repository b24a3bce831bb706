//! Logging through the host.
//!
//! The contract's only import: the host tags each line with the policy's
//! name, rate-limits and size-caps it. Natively (unit tests) lines go to
//! stderr instead, since there is no host to call.

use std::fmt;

/// Severity of a log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Very detailed tracing.
    Trace,
    /// Details for debugging a policy.
    Debug,
    /// Normal operation.
    Info,
    /// Something unexpected that the policy handled.
    Warn,
    /// Something the policy could not handle.
    Error,
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Level::Trace => "TRACE",
            Level::Debug => "DEBUG",
            Level::Info => "INFO",
            Level::Warn => "WARN",
            Level::Error => "ERROR",
        })
    }
}

impl From<Level> for crate::bindings::portcullis::policy::types::LogLevel {
    fn from(level: Level) -> Self {
        use crate::bindings::portcullis::policy::types::LogLevel;
        match level {
            Level::Trace => LogLevel::Trace,
            Level::Debug => LogLevel::Debug,
            Level::Info => LogLevel::Info,
            Level::Warn => LogLevel::Warn,
            Level::Error => LogLevel::Error,
        }
    }
}

/// Logs `message` at `level`.
pub fn log(level: Level, message: &str) {
    #[cfg(target_arch = "wasm32")]
    crate::bindings::portcullis::policy::host::log(level.into(), message);
    #[cfg(not(target_arch = "wasm32"))]
    eprintln!("{level} {message}");
}

/// Logs at [`Level::Trace`].
pub fn trace(message: &str) {
    log(Level::Trace, message);
}

/// Logs at [`Level::Debug`].
pub fn debug(message: &str) {
    log(Level::Debug, message);
}

/// Logs at [`Level::Info`].
pub fn info(message: &str) {
    log(Level::Info, message);
}

/// Logs at [`Level::Warn`].
pub fn warn(message: &str) {
    log(Level::Warn, message);
}

/// Logs at [`Level::Error`].
pub fn error(message: &str) {
    log(Level::Error, message);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn native_logging_does_not_call_the_host() {
        trace("t");
        debug("d");
        info("i");
        warn("w");
        error("e");
    }

    #[test]
    fn levels_are_ordered_and_named() {
        assert!(Level::Trace < Level::Error);
        assert_eq!(Level::Warn.to_string(), "WARN");
    }
}
