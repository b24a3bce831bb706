//! Running policies over one review: the mutation chain (config order, each
//! policy seeing the previous one's output, one RFC 6902 patch at the end)
//! and validation (every policy on the object as received; any deny
//! denies). Applies each policy's mode and onError.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::invoke::parse_mutated;

use crate::admission::{Decision, Review};
use crate::config::{Mode, OnError};
use crate::invoke::{PolicyError, Verdict};
use crate::log_text::LogText;
use crate::matcher::MatchInput;
use crate::policy::Policy;
use crate::policy_set::PolicySet;
use crate::shadow::ShadowCall;

/// HTTP code of a denial caused by a policy error.
const POLICY_ERROR_CODE: u16 = 500;

/// A policy failed and its config says `onError: fail`: the whole review
/// must be answered with HTTP 500 so the API server applies the webhook's
/// failurePolicy.
#[derive(Debug, thiserror::Error)]
#[error("policy {policy:?} failed: {error}")]
pub struct ChainFailure {
    pub policy: String,
    pub error: PolicyError,
}

/// Which policies a chain runs.
#[derive(Debug, Clone, Copy)]
pub enum Selection<'a> {
    /// Every matching policy of the set.
    All,
    /// Only this one (the per-policy endpoints).
    One(&'a Arc<Policy>),
}

/// One policy call of a chain run, for metrics and the decision log.
#[derive(Debug, Clone)]
pub struct Evaluation {
    pub policy: Arc<str>,
    /// `allow`, `deny`, `mutate` (allowed with a changed object), or the
    /// error's kind (`timeout`, `memory`, `trap`, `invalid_output`, ...).
    pub outcome: &'static str,
    pub duration: Duration,
    /// For a policy with a shadow candidate: the candidate's evaluation
    /// on the same input, to run once the answer is out. `None` (and no
    /// work done) for every other policy.
    pub shadow: Option<Box<ShadowCall>>,
}

/// Accumulates what the policies said.
struct Outcome<'t> {
    decision: Decision,
    denials: Vec<String>,
    evaluations: &'t mut Vec<Evaluation>,
    /// The shadow call of the policy call being recorded.
    shadow: Option<Box<ShadowCall>>,
}

impl<'t> Outcome<'t> {
    fn new(set: &PolicySet, evaluations: &'t mut Vec<Evaluation>) -> Self {
        let mut decision = Decision {
            allowed: true,
            ..Decision::default()
        };
        decision
            .audit_annotations
            .insert("generation".to_string(), set.generation.to_string());
        Self {
            decision,
            denials: Vec::new(),
            evaluations,
            shadow: None,
        }
    }

    fn evaluated(&mut self, policy: &Policy, outcome: &'static str, started: Instant) {
        self.evaluations.push(Evaluation {
            policy: policy.name.clone(),
            outcome,
            duration: started.elapsed(),
            shadow: self.shadow.take(),
        });
    }

    /// Records that `policy` decided, so the answer traces to exact code.
    fn record(&mut self, policy: &Policy) {
        self.decision.audit_annotations.insert(
            format!("{}-digest", policy.name),
            policy.module.digest.clone(),
        );
    }

    /// Applies a verdict under the policy's mode. Returns whether the
    /// policy's verdict stands as an allow (its mutation may be used).
    fn verdict(&mut self, policy: &Policy, verdict: Verdict) -> bool {
        self.record(policy);
        let name = &policy.name;
        self.decision.warnings.extend(verdict.warnings);
        for (key, value) in verdict.audit_annotations {
            self.decision
                .audit_annotations
                .insert(format!("{name}.{key}"), value);
        }
        if verdict.allowed {
            return true;
        }
        let message = verdict
            .message
            .unwrap_or_else(|| "denied the request".to_string());
        match policy.mode {
            Mode::Enforce => {
                if self.denials.is_empty() {
                    self.decision.code = verdict.code;
                }
                self.denials.push(format!("{name}: {message}"));
            }
            Mode::Warn => self
                .decision
                .warnings
                .push(format!("{name} (warn mode) would deny: {message}")),
            Mode::Audit => {
                tracing::info!(policy = %name, message = %LogText(&message), "audit mode: would deny");
                self.decision
                    .audit_annotations
                    .insert(format!("{name}-audit"), format!("would deny: {message}"));
            }
        }
        false
    }

    /// Applies a policy error under the policy's onError.
    fn error(&mut self, policy: &Policy, error: PolicyError) -> Result<(), ChainFailure> {
        self.record(policy);
        let name = &policy.name;
        tracing::warn!(policy = %name, kind = error.kind(), error = %LogText(&error.to_string()), "policy error");
        match policy.on_error {
            OnError::Deny => {
                if self.denials.is_empty() {
                    self.decision.code = Some(POLICY_ERROR_CODE);
                }
                self.denials.push(format!("{name}: policy failed: {error}"));
                Ok(())
            }
            OnError::Allow => {
                self.decision.warnings.push(format!(
                    "{name}: policy failed and was skipped (onError: allow): {error}"
                ));
                Ok(())
            }
            OnError::Fail => Err(ChainFailure {
                policy: name.to_string(),
                error,
            }),
        }
    }

    fn is_denied(&self) -> bool {
        !self.denials.is_empty()
    }

    fn finish(mut self) -> Decision {
        if self.is_denied() {
            self.decision.allowed = false;
            self.decision.message = Some(self.denials.join("; "));
            self.decision.patch = None;
        }
        self.decision
    }
}

/// The policies whose operation, resource and namespace match; each must
/// still pass [`applies`] (its selectors and match conditions) before it
/// runs.
fn selected<'a>(
    candidates: impl Iterator<Item = &'a Arc<Policy>>,
    selection: Selection<'a>,
    review: &Review<'_>,
) -> Vec<&'a Arc<Policy>> {
    let facts = review.facts();
    match selection {
        Selection::All => candidates.filter(|p| p.matches(&facts)).collect(),
        Selection::One(policy) => {
            if policy.matches(&facts) {
                vec![policy]
            } else {
                Vec::new()
            }
        }
    }
}

/// Whether `policy` applies by its selectors and match conditions. One
/// that cannot tell is a policy error, handled by its onError (and
/// recorded like a failed call): a policy is never skipped silently.
///
/// # Errors
/// [`ChainFailure`] when the policy says `onError: fail`.
fn applies<'r, I: std::borrow::Borrow<MatchInput<'r>>>(
    outcome: &mut Outcome<'_>,
    policy: &Policy,
    input: impl FnOnce() -> I,
) -> Result<bool, ChainFailure> {
    // Most policies have no selector or condition: nothing to build or
    // time for them on the request path.
    if !policy.needs_match_input() {
        return Ok(true);
    }
    let started = Instant::now();
    match policy.selects(input().borrow()) {
        Ok(selected) => Ok(selected),
        Err(error) => {
            outcome.evaluated(policy, error.kind(), started);
            outcome.error(policy, error)?;
            Ok(false)
        }
    }
}

/// Runs the mutation chain, every call finishing by `deadline`. DELETE (no
/// object) never gets a patch, though its policies still run and may deny.
/// Each policy call is appended to `evaluations`, also when the chain
/// fails.
///
/// # Errors
/// [`ChainFailure`] when a policy with `onError: fail` fails.
pub async fn mutate(
    set: &PolicySet,
    review: &Review<'_>,
    selection: Selection<'_>,
    deadline: Option<Instant>,
    evaluations: &mut Vec<Evaluation>,
) -> Result<Decision, ChainFailure> {
    let mut outcome = Outcome::new(set, evaluations);
    let policies = selected(set.mutators(), selection, review);
    if policies.is_empty() {
        return Ok(outcome.finish());
    }
    let original: Option<Value> = review
        .object
        .and_then(|raw| serde_json::from_str(raw.get()).ok());
    // The object so far, parsed (to check and diff) and as the text the
    // last policy wrote (spliced into the next policy's request as is).
    let mut current: Option<Value> = None;
    let mut next_request: Option<String> = None;
    for policy in policies {
        // Selected on the object as the mutators before it left it, as
        // separate webhooks would be.
        if !applies(&mut outcome, policy, || {
            review.match_input(current.as_ref())
        })? {
            if outcome.is_denied() {
                break;
            }
            continue;
        }
        let request = next_request.as_deref().unwrap_or(review.request.get());
        let started = Instant::now();
        let result = policy.mutate(request, deadline).await;
        if let Some(candidate) = &policy.shadow {
            // The candidate sees the object as this mutator saw it.
            outcome.shadow = Some(ShadowCall::mutated(
                policy,
                candidate,
                request.into(),
                &result,
            ));
        }
        let output = match result {
            Ok(output) => output,
            Err(error) => {
                outcome.evaluated(policy, error.kind(), started);
                outcome.error(policy, error)?;
                if outcome.is_denied() {
                    break;
                }
                continue;
            }
        };
        let allowed = output.verdict.allowed;
        let stands = outcome.verdict(policy, output.verdict);
        let (Some(text), true, Some(before)) = (output.object, stands, original.as_ref()) else {
            outcome.evaluated(policy, if allowed { "allow" } else { "deny" }, started);
            if outcome.is_denied() {
                break;
            }
            continue;
        };
        if outcome.is_denied() {
            break;
        }
        let previous = current.as_ref().unwrap_or(before);
        match parse_mutated(previous, &text) {
            Ok(object) => {
                outcome.evaluated(policy, "mutate", started);
                current = Some(object);
                next_request = review.request_with_object_text(&text);
            }
            Err(error) => {
                outcome.evaluated(policy, error.kind(), started);
                outcome.error(policy, error)?;
                if outcome.is_denied() {
                    break;
                }
            }
        }
    }
    if let (Some(before), Some(after)) = (original.as_ref(), current.as_ref()) {
        let patch = json_patch::diff(before, after);
        if !patch.0.is_empty() {
            outcome.decision.patch = serde_json::to_string(&patch).ok();
        }
    }
    Ok(outcome.finish())
}

/// Runs every matching validating policy on the object as received. Each
/// policy call is appended to `evaluations`, also when the run fails.
///
/// # Errors
/// [`ChainFailure`] when a policy with `onError: fail` fails.
pub async fn validate(
    set: &PolicySet,
    review: &Review<'_>,
    selection: Selection<'_>,
    deadline: Option<Instant>,
    evaluations: &mut Vec<Evaluation>,
) -> Result<Decision, ChainFailure> {
    let mut outcome = Outcome::new(set, evaluations);
    let request = review.request.get();
    // The request text, copied once for every candidate that judges it.
    let mut shared: Option<Arc<str>> = None;
    // Built once, for the first validator that needs it.
    let input = std::cell::OnceCell::new();
    for policy in selected(set.validators(), selection, review) {
        if !applies(&mut outcome, policy, || {
            input.get_or_init(|| review.match_input(None))
        })? {
            continue;
        }
        let started = Instant::now();
        let result = policy.validate(request, deadline).await;
        if let Some(candidate) = &policy.shadow {
            let request = shared.get_or_insert_with(|| request.into()).clone();
            outcome.shadow = Some(ShadowCall::validated(policy, candidate, request, &result));
        }
        match result {
            Ok(verdict) => {
                let label = if verdict.allowed { "allow" } else { "deny" };
                outcome.evaluated(policy, label, started);
                outcome.verdict(policy, verdict);
            }
            Err(error) => {
                outcome.evaluated(policy, error.kind(), started);
                outcome.error(policy, error)?;
            }
        }
    }
    Ok(outcome.finish())
}
