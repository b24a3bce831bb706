//! Logs: `tracing` to stderr, text for people or JSON for machines.

use std::io::IsTerminal as _;
use std::time::SystemTime;

use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Installs the global subscriber. `level` is a filter directive such as
/// `info` or `portcullis=debug,info`.
///
/// # Errors
/// When the directive does not parse.
pub fn init(format: LogFormat, level: &str) -> Result<(), String> {
    let filter =
        EnvFilter::try_new(level).map_err(|err| format!("invalid --log-level {level:?}: {err}"))?;
    // Colour codes only for a person at a terminal: a log file, journald
    // or `kubectl logs` would show them as garbage.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    // A second init (tests) keeps the first subscriber.
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    Ok(())
}

/// RFC 3339 UTC timestamp of a system time.
pub fn rfc3339(at: SystemTime) -> String {
    let at: time::OffsetDateTime = at.into();
    at.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}
