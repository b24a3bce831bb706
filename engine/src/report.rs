//! An error and its causes on one line, for people: logs, the status page,
//! the CLI. Each error's own message says only its part; `source()` holds
//! the rest, so code can still inspect every cause.

use std::error::Error;
use std::fmt;

/// Displays `error: cause: root cause`.
pub struct Report<'a>(pub &'a (dyn Error + 'static));

impl fmt::Display for Report<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut cause = self.0.source();
        while let Some(error) = cause {
            write!(f, ": {error}")?;
            cause = error.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot read config file x.yaml")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn every_cause_follows_its_error() {
        let error = Outer(std::io::Error::other("disk on fire"));
        assert_eq!(
            Report(&error).to_string(),
            "cannot read config file x.yaml: disk on fire"
        );
    }
}
