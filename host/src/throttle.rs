//! Warnings that a flood could multiply (refused connections, shadow
//! disagreements): logged at most once a second, with how many were left
//! out since the last line.

use std::time::{Duration, Instant};

/// A warning logged at most once a second, with how many were left out:
/// a flood of refused connections must not become a flood of log lines.
#[derive(Debug, Default)]
pub struct Throttled {
    last: Option<Instant>,
    left_out: u64,
}

impl Throttled {
    /// Calls `log` with how many were left out since the last line, unless
    /// a line was logged less than a second ago.
    pub fn warn(&mut self, log: impl FnOnce(u64)) {
        let now = Instant::now();
        if self
            .last
            .is_some_and(|last| now.duration_since(last) < Duration::from_secs(1))
        {
            self.left_out += 1;
            return;
        }
        log(self.left_out);
        self.last = Some(now);
        self.left_out = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttled_warnings_count_what_they_leave_out() {
        let mut throttled = Throttled::default();
        let mut logged = Vec::new();
        for _ in 0..5 {
            throttled.warn(|also| logged.push(also));
        }
        assert_eq!(logged, vec![0]);
        assert_eq!(throttled.left_out, 4);
    }
}
