//! Shadow evaluation on the server: runs the candidate evaluations a chain
//! recorded once the answer is out, within a budget of their own, and
//! keeps what they found per policy (counts, the latest disagreements)
//! for `/metrics`, `/policies` and the log.
//!
//! Live traffic comes first: a candidate evaluation is dropped (and
//! counted as such), never queued, when the shadow budget is full or when
//! reviews are waiting for an evaluation slot. Candidates run on the
//! evaluation pool, like policies, never on the network's threads.
//!
//! What is kept is keyed by the policy's name, so a reload that keeps the
//! same candidate keeps its history; it starts over when the candidate's
//! module or settings change.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use portcullis_engine::{
    Comparison, EvalPool, LogText, Policy, Review, Said, ShadowCall, ShadowResult,
};
use serde::Serialize;
use tokio::sync::Semaphore;

use crate::limits::EvalLimiter;
use crate::metrics::Metrics;
use crate::throttle::Throttled;

/// Candidate evaluations running at once, by default.
pub const DEFAULT_SHADOW_CONCURRENCY: usize = 2;
/// Disagreements kept per policy, newest first out last.
pub const RECENT_DISAGREEMENTS: usize = 20;

/// The server's shadow evaluations: budget, counts, recent disagreements.
pub struct Shadows {
    /// One permit per candidate evaluation allowed to run at once.
    budget: Arc<Semaphore>,
    /// `--shadow-concurrency 0`: every candidate evaluation is dropped.
    enabled: bool,
    metrics: Arc<Metrics>,
    records: Mutex<HashMap<Arc<str>, Record>>,
    /// Disagreement and candidate-error lines: a flood of either must not
    /// drown the log.
    disagreements_logged: Mutex<Throttled>,
    errors_logged: Mutex<Throttled>,
}

/// What was reviewed, for the record: identifying fields only, never the
/// object (it can hold Secret data). Escaped and capped: the client chose
/// them.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
struct Reviewed {
    uid: String,
    kind: String,
    namespace: String,
    name: String,
    operation: &'static str,
}

impl Reviewed {
    fn of(review: &Review<'_>, operation: &'static str) -> Self {
        Self {
            uid: LogText(&review.uid).to_string(),
            kind: LogText(review.kind()).to_string(),
            namespace: LogText(review.namespace()).to_string(),
            name: LogText(review.name()).to_string(),
            operation,
        }
    }
}

/// What one policy's current candidate has done.
#[derive(Debug)]
struct Record {
    /// Which candidate the counts are for: its module digest and settings.
    digest: String,
    settings: String,
    counts: Counts,
    /// The latest disagreements, oldest first.
    recent: VecDeque<Disagreement>,
    /// The candidate's latest failure.
    last_error: Option<String>,
}

impl Record {
    fn new(candidate: &Policy) -> Self {
        Self {
            digest: candidate.module.digest.clone(),
            settings: candidate.settings.clone(),
            counts: Counts::default(),
            recent: VecDeque::with_capacity(RECENT_DISAGREEMENTS),
            last_error: None,
        }
    }

    fn is_for(&self, candidate: &Policy) -> bool {
        self.digest == candidate.module.digest && self.settings == candidate.settings
    }

    /// Keeps `disagreement`, forgetting the oldest beyond the bound.
    fn keep(&mut self, disagreement: Disagreement) {
        while self.recent.len() >= RECENT_DISAGREEMENTS {
            self.recent.pop_front();
        }
        self.recent.push_back(disagreement);
    }
}

/// Candidate evaluations of one policy by result.
#[derive(Debug, Clone, Copy, Default, Serialize)]
#[serde(rename_all = "camelCase")]
struct Counts {
    agree: u64,
    disagree: u64,
    error: u64,
    dropped: u64,
}

/// One review on which the candidate and the live version disagreed.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
struct Disagreement {
    at: String,
    #[serde(flatten)]
    reviewed: Reviewed,
    live: Verdict,
    candidate: Verdict,
}

/// One version's verdict as shown: texts escaped and capped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
struct Verdict {
    /// `allow`, `deny` or `error`.
    verdict: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<String>,
    /// A mutator's RFC 6902 patch from its input, as JSON text.
    #[serde(skip_serializing_if = "Option::is_none")]
    patch: Option<String>,
    /// An error's kind: `timeout`, `memory`, `trap`, ...
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'static str>,
}

impl From<&Said> for Verdict {
    fn from(said: &Said) -> Self {
        let capped = |text: &str| LogText(text).to_string();
        match said {
            Said::Allow { patch } => Self {
                verdict: "allow",
                message: None,
                patch: patch.as_deref().map(capped),
                error: None,
            },
            Said::Deny { message } => Self {
                verdict: "deny",
                message: message.as_deref().map(capped),
                patch: None,
                error: None,
            },
            Said::Error { kind, message } => Self {
                verdict: "error",
                message: Some(capped(message)),
                patch: None,
                error: Some(kind),
            },
        }
    }
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.verdict)?;
        if let Some(kind) = self.error {
            write!(f, " ({kind})")?;
        }
        if let Some(message) = &self.message {
            write!(f, ": {message}")?;
        }
        if let Some(patch) = &self.patch {
            write!(f, " patch {patch}")?;
        }
        Ok(())
    }
}

/// A policy's candidate in `/policies`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ShadowView {
    /// The file, or the `oci://` reference as configured.
    module: String,
    /// For a registry module: the manifest it resolved to.
    #[serde(skip_serializing_if = "Option::is_none")]
    manifest: Option<String>,
    digest: String,
    settings: serde_json::Value,
    timeout_ms: u128,
    memory_limit_bytes: u64,
    counts: Counts,
    last_error: Option<String>,
    /// Newest first, at most [`RECENT_DISAGREEMENTS`].
    recent_disagreements: Vec<Disagreement>,
}

impl Shadows {
    /// `concurrency` candidate evaluations may run at once; 0 turns shadow
    /// evaluation off (every candidate evaluation counts as dropped).
    pub fn new(concurrency: usize, metrics: Arc<Metrics>) -> Self {
        Self {
            budget: Arc::new(Semaphore::new(concurrency.min(Semaphore::MAX_PERMITS))),
            enabled: concurrency > 0,
            metrics,
            records: Mutex::new(HashMap::new()),
            disagreements_logged: Mutex::new(Throttled::default()),
            errors_logged: Mutex::new(Throttled::default()),
        }
    }

    /// Starts the candidate evaluations a review's chain recorded, or
    /// drops them. Call once the answer is ready: nothing here waits.
    pub fn dispatch(
        self: &Arc<Self>,
        pool: &EvalPool,
        limiter: &EvalLimiter,
        review: &Review<'_>,
        operation: &'static str,
        calls: impl Iterator<Item = Box<ShadowCall>>,
    ) {
        let mut reviewed: Option<Arc<Reviewed>> = None;
        for call in calls {
            // Live traffic first: waiting reviews mean no spare capacity.
            let permit = if self.enabled && !limiter.is_queueing() {
                self.budget.clone().try_acquire_owned().ok()
            } else {
                None
            };
            let Some(permit) = permit else {
                self.dropped(&call);
                continue;
            };
            let reviewed = reviewed
                .get_or_insert_with(|| Arc::new(Reviewed::of(review, operation)))
                .clone();
            let shadows = self.clone();
            self.metrics.shadow_in_flight.inc();
            pool.detach(async move {
                let candidate = call.candidate().clone();
                let result = call.run().await;
                drop(permit);
                shadows.metrics.shadow_in_flight.dec();
                shadows.record(&candidate, &reviewed, result);
            });
        }
    }

    /// The candidate's part in `/policies`: what it is and what it found
    /// (nothing yet when its module or settings changed since).
    pub fn view(&self, candidate: &Policy, live_name: &str) -> ShadowView {
        let records = lock(&self.records);
        let record = records.get(live_name).filter(|r| r.is_for(candidate));
        ShadowView {
            module: candidate.source.to_string(),
            manifest: candidate
                .origin
                .as_ref()
                .map(|origin| origin.manifest.clone()),
            digest: candidate.module.digest.clone(),
            settings: serde_json::from_str(&candidate.settings)
                .unwrap_or_else(|_| serde_json::Value::String(candidate.settings.clone())),
            timeout_ms: candidate.limits.timeout.as_millis(),
            memory_limit_bytes: candidate.limits.memory,
            counts: record.map(|r| r.counts).unwrap_or_default(),
            last_error: record.and_then(|r| r.last_error.clone()),
            recent_disagreements: record
                .map(|r| r.recent.iter().rev().cloned().collect())
                .unwrap_or_default(),
        }
    }

    fn dropped(&self, call: &ShadowCall) {
        self.metrics.shadow(&call.policy, "dropped");
        let mut records = lock(&self.records);
        record_for(&mut records, &call.policy, call.candidate())
            .counts
            .dropped += 1;
    }

    fn record(&self, candidate: &Policy, reviewed: &Reviewed, result: ShadowResult) {
        let ShadowResult {
            policy,
            comparison,
            live,
            candidate: said,
            duration,
        } = result;
        self.metrics.shadow(&policy, comparison.as_str());
        let live = Verdict::from(&live);
        let said = Verdict::from(&said);
        {
            let mut records = lock(&self.records);
            let record = record_for(&mut records, &policy, candidate);
            match comparison {
                Comparison::Agree => record.counts.agree += 1,
                Comparison::Disagree => {
                    record.counts.disagree += 1;
                    record.keep(Disagreement {
                        at: crate::telemetry::rfc3339(SystemTime::now()),
                        reviewed: reviewed.clone(),
                        live: live.clone(),
                        candidate: said.clone(),
                    });
                }
                Comparison::Error => {
                    record.counts.error += 1;
                    record.last_error = Some(said.to_string());
                }
            }
        }
        let elapsed_ms = duration.as_secs_f64() * 1000.0;
        match comparison {
            Comparison::Agree => {}
            Comparison::Disagree => lock(&self.disagreements_logged).warn(|left_out| {
                tracing::warn!(
                    policy = %policy,
                    uid = %reviewed.uid,
                    operation = reviewed.operation,
                    kind = %reviewed.kind,
                    namespace = %reviewed.namespace,
                    name = %reviewed.name,
                    live = %live,
                    candidate = %said,
                    elapsed_ms,
                    not_logged = left_out,
                    "shadow candidate disagrees with the live policy"
                );
            }),
            Comparison::Error => lock(&self.errors_logged).warn(|left_out| {
                tracing::warn!(
                    policy = %policy,
                    uid = %reviewed.uid,
                    candidate = %said,
                    elapsed_ms,
                    not_logged = left_out,
                    "shadow candidate failed"
                );
            }),
        }
    }
}

/// The record of `policy`, started over when it was for another candidate.
fn record_for<'r>(
    records: &'r mut HashMap<Arc<str>, Record>,
    policy: &Arc<str>,
    candidate: &Policy,
) -> &'r mut Record {
    let record = records
        .entry(policy.clone())
        .or_insert_with(|| Record::new(candidate));
    if !record.is_for(candidate) {
        *record = Record::new(candidate);
    }
    record
}

/// The records are only counted into and copied out of (no section can
/// panic half-way), so poisoning is ignored.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disagreement(uid: &str) -> Disagreement {
        Disagreement {
            at: String::new(),
            reviewed: Reviewed {
                uid: uid.to_string(),
                kind: "Pod".to_string(),
                namespace: "default".to_string(),
                name: "p".to_string(),
                operation: "CREATE",
            },
            live: Verdict::from(&Said::Allow { patch: None }),
            candidate: Verdict::from(&Said::Deny {
                message: Some("no\nforged=line".to_string()),
            }),
        }
    }

    #[test]
    fn the_ring_keeps_only_the_latest_disagreements() {
        let mut record = Record {
            digest: String::new(),
            settings: String::new(),
            counts: Counts::default(),
            recent: VecDeque::new(),
            last_error: None,
        };
        for n in 0..RECENT_DISAGREEMENTS + 5 {
            record.keep(disagreement(&n.to_string()));
        }
        assert_eq!(record.recent.len(), RECENT_DISAGREEMENTS);
        assert_eq!(
            record.recent.front().map(|d| d.reviewed.uid.as_str()),
            Some("5")
        );
        let last = (RECENT_DISAGREEMENTS + 4).to_string();
        assert_eq!(
            record.recent.back().map(|d| d.reviewed.uid.as_str()),
            Some(last.as_str())
        );
    }

    #[test]
    fn verdicts_are_escaped_and_capped() {
        let shown = disagreement("u").candidate;
        assert_eq!(shown.message.as_deref(), Some("no\\nforged=line"));
        assert_eq!(shown.to_string(), "deny: no\\nforged=line");
        let huge = Verdict::from(&Said::Error {
            kind: "trap",
            message: "x".repeat(100_000),
        });
        let message = huge.message.unwrap_or_default();
        assert!(message.len() < 600, "{}", message.len());
        assert!(message.ends_with("more bytes)"), "{message}");
        assert_eq!(huge.error, Some("trap"));
    }
}
