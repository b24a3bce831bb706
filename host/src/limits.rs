//! Bounds on reviews: the API server's `?timeout=`, and how many reviews
//! are evaluated at once (and how many may wait). Connections are bounded
//! by the listener (`listener`).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{Semaphore, SemaphorePermit};

use crate::metrics::Metrics;

/// Parses a Go duration as the API server writes `?timeout=` (`10s`,
/// `500ms`, `1m30s`). `None` for anything else.
pub fn parse_go_duration(text: &str) -> Option<Duration> {
    if text.is_empty() {
        return None;
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (number, tail) = rest.split_at(digits);
        let number: f64 = number.parse().ok()?;
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, next) = tail.split_at(unit_len);
        let seconds = match unit {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        total += Duration::try_from_secs_f64(number * seconds).ok()?;
        rest = next;
    }
    Some(total)
}

/// The moment by which a review must be answered: a little before the API
/// server gives up, so the answer is still used.
pub fn review_deadline(started: Instant, query: Option<&str>) -> Option<Instant> {
    let timeout = query?
        .split('&')
        .find_map(|pair| pair.strip_prefix("timeout="))
        .and_then(parse_go_duration)?;
    // Keep a margin for writing the answer: a tenth, at most 200 ms.
    let margin = (timeout / 10).min(Duration::from_millis(200));
    Some(started + timeout.saturating_sub(margin))
}

/// Why a review was not admitted to evaluation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Busy {
    /// Every evaluation slot is taken and the queue is full.
    #[error("server busy: {running} reviews are being evaluated and {queued} are waiting")]
    QueueFull { running: usize, queued: usize },
    /// The review's deadline passed while it waited for a slot.
    #[error("server busy: no evaluation slot freed up before the review's deadline")]
    Deadline,
}

/// At most `slots` reviews are evaluated at once and at most `queue` wait;
/// beyond that a review is refused at once (HTTP 503) rather than queued
/// without limit.
pub struct EvalLimiter {
    slots: Semaphore,
    capacity: usize,
    waiting: AtomicUsize,
    queue: usize,
    metrics: Arc<Metrics>,
}

/// A held evaluation slot; released on drop.
pub struct EvalSlot<'a> {
    _permit: SemaphorePermit<'a>,
    metrics: &'a Metrics,
}

impl Drop for EvalSlot<'_> {
    fn drop(&mut self) {
        self.metrics.evaluations_in_flight.dec();
    }
}

impl EvalLimiter {
    pub fn new(slots: usize, queue: usize, metrics: Arc<Metrics>) -> Self {
        let slots = slots.max(1);
        Self {
            slots: Semaphore::new(slots),
            capacity: slots,
            waiting: AtomicUsize::new(0),
            queue,
            metrics,
        }
    }

    /// Whether reviews are waiting for a slot now: then work that is not
    /// an answer (shadow evaluations) gives way.
    pub fn is_queueing(&self) -> bool {
        self.waiting.load(Ordering::Relaxed) > 0
    }

    /// Takes a slot, waiting in the bounded queue until `deadline`.
    ///
    /// # Errors
    /// [`Busy`] when the queue is full or the deadline passes.
    pub async fn acquire(&self, deadline: Option<Instant>) -> Result<EvalSlot<'_>, Busy> {
        let permit = match self.slots.try_acquire() {
            Ok(permit) => permit,
            Err(_) => {
                let queued = self.waiting.fetch_add(1, Ordering::SeqCst);
                if queued >= self.queue {
                    self.waiting.fetch_sub(1, Ordering::SeqCst);
                    return Err(Busy::QueueFull {
                        running: self.capacity,
                        queued,
                    });
                }
                self.metrics.evaluations_queued.inc();
                let acquired = match deadline {
                    Some(deadline) => {
                        tokio::time::timeout_at(deadline.into(), self.slots.acquire())
                            .await
                            .map_err(|_| Busy::Deadline)
                    }
                    None => Ok(self.slots.acquire().await),
                };
                self.waiting.fetch_sub(1, Ordering::SeqCst);
                self.metrics.evaluations_queued.dec();
                // The semaphore is never closed.
                acquired?.map_err(|_| Busy::Deadline)?
            }
        };
        self.metrics.evaluations_in_flight.inc();
        Ok(EvalSlot {
            _permit: permit,
            metrics: &self.metrics,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::task::Poll;

    use super::*;

    #[test]
    fn parses_go_durations() {
        assert_eq!(parse_go_duration("10s"), Some(Duration::from_secs(10)));
        assert_eq!(parse_go_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_go_duration("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_go_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_go_duration("banana"), None);
        assert_eq!(parse_go_duration("10"), None);
        assert_eq!(parse_go_duration(""), None);
        assert_eq!(parse_go_duration("-1s"), None);
    }

    #[test]
    fn deadline_keeps_a_margin_before_the_api_servers_timeout() {
        let now = Instant::now();
        assert_eq!(
            review_deadline(now, Some("timeout=10s")),
            Some(now + Duration::from_millis(9800))
        );
        assert_eq!(
            review_deadline(now, Some("a=b&timeout=1s")),
            Some(now + Duration::from_millis(900))
        );
        assert_eq!(review_deadline(now, Some("timeout=banana")), None);
        assert_eq!(review_deadline(now, None), None);
    }

    #[tokio::test]
    async fn a_full_queue_is_refused_at_once() {
        let limiter = EvalLimiter::new(1, 1, Metrics::new());
        let first = limiter.acquire(None).await.expect("a free slot");
        let waiter = limiter.acquire(None);
        tokio::pin!(waiter);
        // Poll once so the second review takes the one queue place.
        assert!(futures_poll_once(waiter.as_mut()).await.is_none());
        let refused = limiter.acquire(None).await.err();
        assert_eq!(
            refused,
            Some(Busy::QueueFull {
                running: 1,
                queued: 1
            })
        );
        drop(first);
        assert!(waiter.await.is_ok());
    }

    #[tokio::test]
    async fn a_queued_review_gives_up_at_its_deadline() {
        let limiter = EvalLimiter::new(1, 4, Metrics::new());
        let _held = limiter.acquire(None).await.expect("a free slot");
        let deadline = Instant::now() + Duration::from_millis(20);
        assert_eq!(
            limiter.acquire(Some(deadline)).await.err(),
            Some(Busy::Deadline)
        );
    }

    async fn futures_poll_once<F: std::future::Future + Unpin>(future: F) -> Option<F::Output> {
        let mut future = future;
        std::future::poll_fn(|cx| {
            Poll::Ready(match std::pin::Pin::new(&mut future).poll(cx) {
                Poll::Ready(output) => Some(output),
                Poll::Pending => None,
            })
        })
        .await
    }
}
