//! `/mutate`, `/validate`, `/mutate/{policy}` and `/validate/{policy}`:
//! one review in, one AdmissionReview (or a plain-text error) out.
//!
//! Each step is its own function: take one snapshot of the policies,
//! resolve the route to a selection, parse the review, wait for an
//! evaluation slot, run the chain, then log the decision and answer. The
//! handler records the request's metrics around all of it.

use std::time::Instant;

use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use portcullis_engine::{
    ChainFailure, Decision, Evaluation, LogText, Operation, Policy, PolicySet, Report, Review,
    Selection,
};

use super::body::ReviewBody;
use super::{ServerState, json, plain};
use crate::limits::{self, Busy};
use crate::metrics::RequestLabels;

/// Which chain a route runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Endpoint {
    Mutate,
    Validate,
}

impl Endpoint {
    fn as_str(self) -> &'static str {
        match self {
            Self::Mutate => "mutate",
            Self::Validate => "validate",
        }
    }

    fn serves(self, policy: &Policy) -> bool {
        match self {
            Self::Mutate => policy.metadata.mutates,
            Self::Validate => policy.metadata.validates,
        }
    }
}

/// The route a review came in on: a chain, and maybe one policy.
#[derive(Debug, Clone, Copy)]
struct Route<'a> {
    endpoint: Endpoint,
    policy: Option<&'a str>,
}

impl Route<'_> {
    /// The route's label in metrics (never the policy name from the path,
    /// which a client chooses).
    fn label(self) -> &'static str {
        match (self.endpoint, self.policy) {
            (Endpoint::Mutate, None) => "/mutate",
            (Endpoint::Validate, None) => "/validate",
            (Endpoint::Mutate, Some(_)) => "/mutate/{policy}",
            (Endpoint::Validate, Some(_)) => "/validate/{policy}",
        }
    }
}

/// `/mutate` or `/validate`: the whole chain.
pub(super) async fn whole_chain(
    endpoint: Endpoint,
    State(state): State<ServerState>,
    RawQuery(query): RawQuery,
    body: ReviewBody,
) -> Response {
    handle(&state, endpoint, None, query, body).await
}

/// `/mutate/{policy}` or `/validate/{policy}`: one policy.
pub(super) async fn one_policy(
    endpoint: Endpoint,
    State(state): State<ServerState>,
    Path(policy): Path<String>,
    RawQuery(query): RawQuery,
    body: ReviewBody,
) -> Response {
    handle(&state, endpoint, Some(policy), query, body).await
}

/// An answer and the labels its request is counted under.
struct Answered {
    response: Response,
    operation: &'static str,
    result: &'static str,
}

impl Answered {
    /// Refused before evaluation: not a review, or no such policy.
    fn rejected(refusal: Refusal) -> Self {
        Self {
            response: plain(refusal.status, refusal.message),
            operation: "",
            result: "rejected",
        }
    }
}

/// Why a review was refused before evaluation.
struct Refusal {
    status: StatusCode,
    message: String,
}

/// Answers one review, then counts it. A review that may call a policy is
/// parsed and answered on the evaluation pool, so the network's runtime
/// only waits; one that cannot (an unknown policy, no policy on its chain)
/// is answered here, without the hop.
async fn handle(
    state: &ServerState,
    endpoint: Endpoint,
    policy: Option<String>,
    query: Option<String>,
    body: ReviewBody,
) -> Response {
    let started = Instant::now();
    // One snapshot for the whole request: it is answered by one generation.
    let set = state.policies.current();
    let route = Route {
        endpoint,
        policy: policy.as_deref(),
    };
    let label = route.label();
    let deadline = limits::review_deadline(started, query.as_deref());
    let clock = Clock { deadline, started };
    // A review that may call a policy is parsed once, on the pool; one that
    // cannot (no such policy, or none on this chain) is answered here.
    let (answered, evaluations) = if may_call_policies(&set, route) {
        let state = state.clone();
        let pooled = state.pool.clone().run(async move {
            let route = Route {
                endpoint,
                policy: policy.as_deref(),
            };
            let mut evaluations = Vec::new();
            let answered = answer(&state, &set, route, body.bytes(), clock, &mut evaluations).await;
            (answered, evaluations)
        });
        pooled.await.unwrap_or_else(|error| {
            tracing::error!(error = %Report(&error), "answering 500");
            let answered = Answered {
                response: plain(StatusCode::INTERNAL_SERVER_ERROR, error.to_string()),
                operation: "",
                result: "error",
            };
            (answered, Vec::new())
        })
    } else {
        let mut evaluations = Vec::new();
        let answered = answer(state, &set, route, body.bytes(), clock, &mut evaluations).await;
        (answered, evaluations)
    };
    let labels = RequestLabels {
        endpoint: label,
        operation: answered.operation,
        result: answered.result,
    };
    state
        .metrics
        .request(labels, started.elapsed(), &evaluations);
    answered.response
}

/// When a review arrived and by when it must be answered.
#[derive(Debug, Clone, Copy)]
struct Clock {
    /// Answer before the API server gives up (`?timeout=`); work past that
    /// point could not be used.
    deadline: Option<Instant>,
    started: Instant,
}

/// A review ready for its chain.
struct Prepared<'a> {
    set: &'a PolicySet,
    route: Route<'a>,
    selection: Selection<'a>,
    review: &'a Review<'a>,
    clock: Clock,
}

/// Parses the review and runs its chain; every policy call made is left in
/// `evaluations`.
async fn answer(
    state: &ServerState,
    set: &PolicySet,
    route: Route<'_>,
    body: &[u8],
    clock: Clock,
    evaluations: &mut Vec<Evaluation>,
) -> Answered {
    match prepare(set, route, body) {
        Err(refusal) => Answered::rejected(refusal),
        Ok((selection, review)) => {
            let prepared = Prepared {
                set,
                route,
                selection,
                review: &review,
                clock,
            };
            evaluate(state, prepared, evaluations).await
        }
    }
}

/// The route's selection and the parsed review, or why there are none.
fn prepare<'a>(
    set: &'a PolicySet,
    route: Route<'_>,
    body: &'a [u8],
) -> Result<(Selection<'a>, Review<'a>), Refusal> {
    Ok((select(set, route)?, parse(body)?))
}

/// Runs the review's chain once it has an evaluation slot; every policy
/// call made is left in `evaluations`.
async fn evaluate(
    state: &ServerState,
    prepared: Prepared<'_>,
    evaluations: &mut Vec<Evaluation>,
) -> Answered {
    let Prepared {
        set,
        route,
        selection,
        review,
        clock: Clock { deadline, started },
    } = prepared;
    let operation = review.operation().map_or("", Operation::as_str);
    let _slot = match state.limiter.acquire(deadline).await {
        Ok(slot) => slot,
        Err(busy) => return refuse_busy(review, operation, busy),
    };
    let result = match route.endpoint {
        Endpoint::Mutate => {
            portcullis_engine::mutate(set, review, selection, deadline, evaluations).await
        }
        Endpoint::Validate => {
            portcullis_engine::validate(set, review, selection, deadline, evaluations).await
        }
    };
    let decision_log = DecisionLog {
        review,
        endpoint: route.endpoint,
        operation,
        evaluations,
        generation: set.generation,
        started,
    };
    let answered = match result {
        Ok(decision) => decided(&decision_log, &decision),
        Err(failure) => failed(&decision_log, &failure),
    };
    // The answer is ready: candidates run after it, never before.
    state.shadows.dispatch(
        &state.pool,
        &state.limiter,
        review,
        operation,
        evaluations.iter_mut().filter_map(|e| e.shadow.take()),
    );
    answered
}

/// Whether a review on `route` may call a policy, known before parsing it:
/// the route names a policy, or the set has policies on the route's chain.
fn may_call_policies(set: &PolicySet, route: Route<'_>) -> bool {
    match select(set, route) {
        Err(_) => false,
        Ok(Selection::One(_)) => true,
        Ok(Selection::All) => match route.endpoint {
            Endpoint::Mutate => set.mutators().next().is_some(),
            Endpoint::Validate => set.validators().next().is_some(),
        },
    }
}

/// The policies a route asks for, or a 404 saying why there are none.
fn select<'a>(set: &'a PolicySet, route: Route<'_>) -> Result<Selection<'a>, Refusal> {
    // Generation 0 is "nothing loaded yet" (`--allow-empty` with a config
    // that failed). Allowing would fail open wherever readiness is not
    // checked: answer an error, so the webhook's failurePolicy applies.
    if set.generation == 0 {
        return Err(Refusal {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: "no policy set is loaded: the config has not loaded yet (see GET /policies); \
                      answering an error so that the webhook's failurePolicy applies"
                .to_string(),
        });
    }
    let Some(name) = route.policy else {
        return Ok(Selection::All);
    };
    let Some(policy) = set.get(name) else {
        return Err(Refusal {
            status: StatusCode::NOT_FOUND,
            message: format!("no policy named {name:?} is loaded"),
        });
    };
    if !route.endpoint.serves(policy) {
        let kind = match route.endpoint {
            Endpoint::Mutate => "validating",
            Endpoint::Validate => "mutating",
        };
        return Err(Refusal {
            status: StatusCode::NOT_FOUND,
            message: format!(
                "policy {name:?} does not {} (it is a {kind} policy)",
                route.endpoint.as_str()
            ),
        });
    }
    Ok(Selection::One(policy))
}

/// The review, or the 4xx its body deserves.
fn parse(body: &[u8]) -> Result<Review<'_>, Refusal> {
    Review::parse(body).map_err(|err| {
        let status = StatusCode::from_u16(err.status()).unwrap_or(StatusCode::BAD_REQUEST);
        tracing::debug!(status = status.as_u16(), error = %LogText(&err.to_string()), "rejecting a body that is not a review");
        Refusal {
            status,
            message: err.to_string(),
        }
    })
}

/// 503 with `Retry-After`: no evaluation slot in time.
fn refuse_busy(review: &Review<'_>, operation: &'static str, busy: Busy) -> Answered {
    tracing::warn!(uid = %LogText(&review.uid), %busy, "refusing review");
    let mut response = plain(StatusCode::SERVICE_UNAVAILABLE, busy.to_string());
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    Answered {
        response,
        operation,
        result: "busy",
    }
}

/// What the decision log says about one review. Never the object itself:
/// it can hold Secret data.
struct DecisionLog<'a> {
    review: &'a Review<'a>,
    endpoint: Endpoint,
    operation: &'static str,
    evaluations: &'a [Evaluation],
    generation: u64,
    started: Instant,
}

impl DecisionLog<'_> {
    /// `name=outcome` of every policy call.
    fn outcomes(&self) -> String {
        self.evaluations
            .iter()
            .map(|e| format!("{}={}", e.policy, e.outcome))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn elapsed_ms(&self) -> f64 {
        self.started.elapsed().as_secs_f64() * 1000.0
    }
}

/// HTTP 200 with the AdmissionReview response.
fn decided(log: &DecisionLog<'_>, decision: &Decision) -> Answered {
    let review = log.review;
    tracing::info!(
        uid = %LogText(&review.uid),
        endpoint = log.endpoint.as_str(),
        operation = log.operation,
        kind = %LogText(review.kind()),
        resource = %LogText(review.resource()),
        namespace = %LogText(review.namespace()),
        name = %LogText(review.name()),
        allowed = decision.allowed,
        patched = decision.patch.is_some(),
        policies = %log.outcomes(),
        generation = log.generation,
        elapsed_ms = log.elapsed_ms(),
        "admission decision"
    );
    let result = if decision.allowed {
        "allowed"
    } else {
        "denied"
    };
    let response = match portcullis_engine::admission_response(
        review.api_version,
        &review.uid,
        decision,
    ) {
        Ok(body) => json(body),
        Err(error) => {
            tracing::error!(uid = %LogText(&review.uid), %error, "cannot serialize the response");
            return Answered {
                response: plain(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("cannot serialize the response: {error}"),
                ),
                operation: log.operation,
                result: "error",
            };
        }
    };
    Answered {
        response,
        operation: log.operation,
        result,
    }
}

/// HTTP 500: a policy with `onError: fail` failed, so the API server
/// applies the webhook's failurePolicy.
fn failed(log: &DecisionLog<'_>, failure: &ChainFailure) -> Answered {
    let review = log.review;
    tracing::warn!(
        uid = %LogText(&review.uid),
        endpoint = log.endpoint.as_str(),
        operation = log.operation,
        kind = %LogText(review.kind()),
        namespace = %LogText(review.namespace()),
        name = %LogText(review.name()),
        policies = %log.outcomes(),
        failure = %LogText(&failure.to_string()),
        elapsed_ms = log.elapsed_ms(),
        "answering 500 (onError: fail)"
    );
    Answered {
        response: plain(StatusCode::INTERNAL_SERVER_ERROR, failure.to_string()),
        operation: log.operation,
        result: "error",
    }
}
