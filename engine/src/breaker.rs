//! A circuit breaker per policy: a policy whose calls keep running into
//! their deadline or their memory cap is holding evaluation capacity the
//! other policies need (a loop holds a slot and a core for its whole
//! deadline). After `failures` such calls in a row its calls fail fast,
//! as policy errors handled by its `onError`, for `open_for`; then one
//! call is let through again, and a success closes the breaker.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::invoke::PolicyError;

/// When a policy's calls start failing fast, and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerSettings {
    /// Deadline or memory-cap failures in a row that open the breaker;
    /// 0 never opens it.
    pub failures: u32,
    /// How long calls fail fast once it is open.
    pub open_for: Duration,
}

impl Default for BreakerSettings {
    fn default() -> Self {
        Self {
            failures: 5,
            open_for: Duration::from_secs(5),
        }
    }
}

/// One policy's breaker.
#[derive(Debug, Default)]
pub(crate) struct Breaker {
    /// Hogging failures since the last call that did not hog.
    in_a_row: AtomicU32,
    /// Until when calls fail fast.
    open_until: Mutex<Option<Instant>>,
    /// Once the open period is over, whether the one trial call is out.
    trial: AtomicBool,
}

impl Breaker {
    /// `Err` when calls fail fast now.
    pub(crate) fn admit(&self, settings: BreakerSettings) -> Result<(), PolicyError> {
        if settings.failures == 0 {
            return Ok(());
        }
        let open_until = *self
            .open_until
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let failures = self.in_a_row.load(Ordering::Relaxed);
        let open = |retry_in| Err(PolicyError::CircuitOpen { failures, retry_in });
        match open_until {
            Some(until) if Instant::now() < until => {
                open(until.saturating_duration_since(Instant::now()))
            }
            // Half open: one trial call at a time; the rest still fail fast.
            Some(_) if failures >= settings.failures => {
                if self.trial.swap(true, Ordering::AcqRel) {
                    open(Duration::ZERO)
                } else {
                    Ok(())
                }
            }
            _ => Ok(()),
        }
    }

    /// Records how a call ended; `policy` names it in the log line when
    /// the breaker opens.
    pub(crate) fn record<T>(
        &self,
        settings: BreakerSettings,
        policy: &str,
        result: &Result<T, PolicyError>,
    ) {
        if settings.failures == 0 {
            return;
        }
        if matches!(result, Err(PolicyError::CircuitOpen { .. })) {
            return;
        }
        // A call that ran ends the trial, whatever it did.
        self.trial.store(false, Ordering::Release);
        let hogged = matches!(
            result,
            Err(PolicyError::Deadline(_) | PolicyError::MemoryLimit(_))
        );
        if !hogged {
            self.in_a_row.store(0, Ordering::Relaxed);
            return;
        }
        let in_a_row = self
            .in_a_row
            .fetch_add(1, Ordering::Relaxed)
            .saturating_add(1);
        if in_a_row >= settings.failures {
            let mut open_until = self
                .open_until
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let now = Instant::now();
            if open_until.is_none_or(|until| until <= now) {
                tracing::warn!(
                    policy,
                    failures = in_a_row,
                    open_ms = settings.open_for.as_millis() as u64,
                    "policy keeps exceeding its deadline or memory limit; its calls fail fast for a while"
                );
            }
            *open_until = Some(now + settings.open_for);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SETTINGS: BreakerSettings = BreakerSettings {
        failures: 3,
        open_for: Duration::from_millis(200),
    };

    fn timeout() -> Result<(), PolicyError> {
        Err(PolicyError::Deadline(Duration::from_millis(100)))
    }

    #[test]
    fn opens_after_failures_in_a_row_and_closes_after_a_success() {
        let breaker = Breaker::default();
        for _ in 0..2 {
            breaker.record(SETTINGS, "p", &timeout());
            assert!(breaker.admit(SETTINGS).is_ok(), "not yet");
        }
        breaker.record(SETTINGS, "p", &timeout());
        let err = breaker.admit(SETTINGS).expect_err("open");
        assert_eq!(err.kind(), "circuit_open");
        assert!(err.to_string().contains("3 times in a row"), "{err}");
        std::thread::sleep(SETTINGS.open_for + Duration::from_millis(20));
        assert!(
            breaker.admit(SETTINGS).is_ok(),
            "half open: one call goes through"
        );
        assert!(breaker.admit(SETTINGS).is_err(), "only one trial at a time");
        // That call fails again: open again at once.
        breaker.record(SETTINGS, "p", &timeout());
        assert!(breaker.admit(SETTINGS).is_err());
        std::thread::sleep(SETTINGS.open_for + Duration::from_millis(20));
        breaker.record(SETTINGS, "p", &Ok(()));
        assert!(breaker.admit(SETTINGS).is_ok());
        breaker.record(SETTINGS, "p", &timeout());
        assert!(breaker.admit(SETTINGS).is_ok(), "the count started over");
    }

    #[test]
    fn other_errors_do_not_count_and_zero_disables() {
        let breaker = Breaker::default();
        for _ in 0..10 {
            breaker.record(
                SETTINGS,
                "p",
                &Err::<(), _>(PolicyError::Trap("unreachable".into())),
            );
        }
        assert!(breaker.admit(SETTINGS).is_ok());
        let off = BreakerSettings {
            failures: 0,
            ..SETTINGS
        };
        for _ in 0..10 {
            breaker.record(off, "p", &timeout());
        }
        assert!(breaker.admit(off).is_ok());
    }
}
