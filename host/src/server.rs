//! The HTTP surface: routes, the review body extractor, and handlers that
//! turn a review into a chain run and a chain run into a response.
//!
//! Never names a wasmtime type: it sees policies only through the policy
//! set and the chain.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::body::Bytes;
use axum::extract::{FromRequest, Path, RawQuery, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use http_body_util::BodyExt as _;
use serde::Serialize;

use crate::admission::{self, Review};
use crate::chain::{self, Evaluation, Selection};
use crate::limits::{self, EvalLimiter};
use crate::matcher::Operation;
use crate::metrics::{Metrics, RequestLabels};
use crate::policy::Policy;
use crate::policy_set::PolicySet;
use crate::policy_store::PolicyStore;

/// Largest review body accepted: an UPDATE carries object and oldObject,
/// up to about 6 MiB together.
pub const DEFAULT_BODY_LIMIT: usize = 8 << 20;

/// What the handlers share.
#[derive(Clone)]
pub struct ServerState {
    pub policies: Arc<PolicyStore>,
    pub metrics: Arc<Metrics>,
    pub body_limit: usize,
    /// How long a client may take to send its body.
    pub body_timeout: Duration,
    pub limiter: Arc<EvalLimiter>,
}

/// The webhook router.
pub fn router(state: ServerState) -> Router {
    Router::new()
        .route("/mutate", post(mutate_all))
        .route("/validate", post(validate_all))
        .route("/mutate/{policy}", post(mutate_one))
        .route("/validate/{policy}", post(validate_one))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/policies", get(list_policies))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(
            panic_response,
        ))
        .with_state(state)
}

/// The operations router for the plain-HTTP listener: probes and metrics
/// only, never the webhook endpoints.
pub fn operations_router(state: ServerState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .with_state(state)
}

/// A plain-text answer: every error this server gives has this shape.
fn plain(status: StatusCode, message: impl Into<String>) -> Response {
    let mut message = message.into();
    message.push('\n');
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        )],
        message,
    )
        .into_response()
}

fn panic_response(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    tracing::error!("a request handler panicked; answered 500");
    plain(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal error while handling the review",
    )
}

async fn not_found(request: Request) -> Response {
    plain(
        StatusCode::NOT_FOUND,
        format!("no route for {} {}", request.method(), request.uri().path()),
    )
}

/// A review body: JSON content type, at most `body_limit` bytes. Rejections
/// are plain-text answers saying what was wrong.
pub struct ReviewBody(Bytes);

impl FromRequest<ServerState> for ReviewBody {
    type Rejection = Response;

    async fn from_request(request: Request, state: &ServerState) -> Result<Self, Self::Rejection> {
        if let Some(content_type) = request.headers().get(header::CONTENT_TYPE) {
            let media_type = content_type
                .to_str()
                .unwrap_or_default()
                .split(';')
                .next()
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase();
            if media_type != "application/json" {
                return Err(plain(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    format!("unsupported content type {content_type:?}: expected application/json"),
                ));
            }
        }
        // The API server sends bodies uncompressed; a compressed one would
        // otherwise be reported as malformed JSON.
        if let Some(encoding) = request.headers().get(header::CONTENT_ENCODING)
            && !encoding.as_bytes().eq_ignore_ascii_case(b"identity")
        {
            return Err(plain(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!("unsupported content encoding {encoding:?}: send the body uncompressed"),
            ));
        }
        let timeout = state.body_timeout;
        match tokio::time::timeout(timeout, read_limited(request.into_body(), state.body_limit))
            .await
        {
            Ok(body) => body.map(Self),
            Err(_) => Err(plain(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "request body was not received within {} seconds",
                    timeout.as_secs_f64()
                ),
            )),
        }
    }
}

/// How much of an oversized body is read and discarded before answering
/// 413. An HTTP/1.1 client that writes its whole body before reading the
/// answer (as most do) would otherwise see a reset connection instead of
/// the 413; past this much the connection is simply closed.
const DRAIN_FACTOR: usize = 4;

/// Reads a body of at most `limit` bytes. A larger body is drained up to
/// `DRAIN_FACTOR * limit` bytes and answered 413.
async fn read_limited(mut body: Body, limit: usize) -> Result<Bytes, Response> {
    let too_large = || {
        let mut response = plain(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body is larger than the limit of {limit} bytes"),
        );
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        response
    };
    let mut collected = Vec::new();
    let mut seen: usize = 0;
    let mut over = false;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|err| {
            plain(
                StatusCode::BAD_REQUEST,
                format!("cannot read request body: {err}"),
            )
        })?;
        let Ok(chunk) = frame.into_data() else {
            continue;
        };
        seen = seen.saturating_add(chunk.len());
        if seen > limit {
            over = true;
            collected = Vec::new();
            if seen > limit.saturating_mul(DRAIN_FACTOR) {
                break;
            }
            continue;
        }
        collected.extend_from_slice(&chunk);
    }
    if over {
        return Err(too_large());
    }
    Ok(Bytes::from(collected))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Endpoint {
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

async fn mutate_all(
    State(state): State<ServerState>,
    RawQuery(query): RawQuery,
    body: ReviewBody,
) -> Response {
    handle(&state, Endpoint::Mutate, None, query.as_deref(), &body.0).await
}

async fn validate_all(
    State(state): State<ServerState>,
    RawQuery(query): RawQuery,
    body: ReviewBody,
) -> Response {
    handle(&state, Endpoint::Validate, None, query.as_deref(), &body.0).await
}

async fn mutate_one(
    State(state): State<ServerState>,
    Path(policy): Path<String>,
    RawQuery(query): RawQuery,
    body: ReviewBody,
) -> Response {
    handle(
        &state,
        Endpoint::Mutate,
        Some(&policy),
        query.as_deref(),
        &body.0,
    )
    .await
}

async fn validate_one(
    State(state): State<ServerState>,
    Path(policy): Path<String>,
    RawQuery(query): RawQuery,
    body: ReviewBody,
) -> Response {
    handle(
        &state,
        Endpoint::Validate,
        Some(&policy),
        query.as_deref(),
        &body.0,
    )
    .await
}

async fn handle(
    state: &ServerState,
    endpoint: Endpoint,
    policy: Option<&str>,
    query: Option<&str>,
    body: &[u8],
) -> Response {
    let started = Instant::now();
    let mut evaluations = Vec::new();
    let (response, operation, result) = answer(
        state,
        endpoint,
        policy,
        query,
        body,
        started,
        &mut evaluations,
    )
    .await;
    let route = match (endpoint, policy) {
        (Endpoint::Mutate, None) => "/mutate",
        (Endpoint::Validate, None) => "/validate",
        (Endpoint::Mutate, Some(_)) => "/mutate/{policy}",
        (Endpoint::Validate, Some(_)) => "/validate/{policy}",
    };
    state.metrics.request(
        RequestLabels {
            endpoint: route,
            operation,
            result,
        },
        started.elapsed(),
        &evaluations,
    );
    response
}

/// `name=outcome` of every policy call, for the decision log.
fn outcomes(evaluations: &[Evaluation]) -> String {
    evaluations
        .iter()
        .map(|e| format!("{}={}", e.policy, e.outcome))
        .collect::<Vec<_>>()
        .join(",")
}

/// The answer to one review, with the operation and result metric labels.
async fn answer(
    state: &ServerState,
    endpoint: Endpoint,
    policy: Option<&str>,
    query: Option<&str>,
    body: &[u8],
    started: Instant,
    evaluations: &mut Vec<Evaluation>,
) -> (Response, &'static str, &'static str) {
    // Answer before the API server gives up (`?timeout=`); work past that
    // point could not be used.
    let deadline = limits::review_deadline(started, query);
    // One snapshot for the whole request: it is answered by one generation.
    let set: Arc<PolicySet> = state.policies.current();
    let selection = match policy {
        None => Selection::All,
        Some(name) => match set.get(name) {
            None => {
                let response = plain(
                    StatusCode::NOT_FOUND,
                    format!("no policy named {name:?} is loaded"),
                );
                return (response, "", "rejected");
            }
            Some(found) if !endpoint.serves(found) => {
                let other = match endpoint {
                    Endpoint::Mutate => "validating",
                    Endpoint::Validate => "mutating",
                };
                let response = plain(
                    StatusCode::NOT_FOUND,
                    format!(
                        "policy {name:?} does not {} (it is a {other} policy)",
                        endpoint.as_str()
                    ),
                );
                return (response, "", "rejected");
            }
            Some(found) => Selection::One(found),
        },
    };
    let review = match Review::parse(body) {
        Ok(review) => review,
        Err(err) => {
            let status = StatusCode::from_u16(err.status()).unwrap_or(StatusCode::BAD_REQUEST);
            tracing::debug!(status = status.as_u16(), error = %err, "rejecting a body that is not a review");
            return (plain(status, err.to_string()), "", "rejected");
        }
    };
    let operation = review.operation().map_or("", Operation::as_str);
    let _slot = match state.limiter.acquire(deadline).await {
        Ok(slot) => slot,
        Err(busy) => {
            tracing::warn!(uid = %review.uid, %busy, "refusing review");
            let mut response = plain(StatusCode::SERVICE_UNAVAILABLE, busy.to_string());
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            return (response, operation, "busy");
        }
    };
    let result = match endpoint {
        Endpoint::Mutate => chain::mutate(&set, &review, selection, deadline, evaluations).await,
        Endpoint::Validate => {
            chain::validate(&set, &review, selection, deadline, evaluations).await
        }
    };
    let elapsed_ms = started.elapsed().as_secs_f64() * 1000.0;
    match result {
        Ok(decision) => {
            tracing::info!(
                uid = %review.uid,
                endpoint = endpoint.as_str(),
                operation,
                kind = review.kind(),
                resource = review.resource(),
                namespace = review.namespace(),
                name = review.name(),
                allowed = decision.allowed,
                patched = decision.patch.is_some(),
                policies = %outcomes(evaluations),
                generation = set.generation,
                elapsed_ms,
                "admission decision"
            );
            let result = if decision.allowed {
                "allowed"
            } else {
                "denied"
            };
            let body = admission::response(review.api_version, &review.uid, &decision);
            let response = (
                StatusCode::OK,
                [(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                )],
                Body::from(body),
            )
                .into_response();
            (response, operation, result)
        }
        Err(failure) => {
            tracing::warn!(
                uid = %review.uid,
                endpoint = endpoint.as_str(),
                operation,
                kind = review.kind(),
                namespace = review.namespace(),
                name = review.name(),
                policies = %outcomes(evaluations),
                %failure,
                elapsed_ms,
                "answering 500 (onError: fail)"
            );
            let response = plain(StatusCode::INTERNAL_SERVER_ERROR, failure.to_string());
            (response, operation, "error")
        }
    }
}

async fn healthz() -> Response {
    plain(StatusCode::OK, "ok")
}

async fn readyz(State(state): State<ServerState>) -> Response {
    let set = state.policies.current();
    if set.generation == 0 {
        return plain(
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: no policy set loaded yet",
        );
    }
    plain(
        StatusCode::OK,
        format!(
            "ready: generation {} with {} policies",
            set.generation,
            set.policies().len()
        ),
    )
}

async fn metrics(State(state): State<ServerState>) -> Response {
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
        )],
        state.metrics.encode(),
    )
        .into_response()
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct PolicyView {
    name: String,
    module: String,
    digest: String,
    size_bytes: usize,
    format: crate::module::ModuleFormat,
    contract: String,
    version: String,
    validates: bool,
    mutates: bool,
    mode: crate::config::Mode,
    on_error: crate::config::OnError,
    timeout_ms: u128,
    memory_limit_bytes: u64,
    /// The newest reload's error for this policy; the version listed here
    /// keeps serving meanwhile.
    last_load_error: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct FailureView {
    at: String,
    policy: Option<String>,
    message: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ReloadView {
    last_attempt: Option<String>,
    last_error: Option<FailureView>,
    succeeded: u64,
    failed: u64,
    unchanged: u64,
    modules_compiled: u64,
    modules_reused: u64,
    modules_from_disk_cache: u64,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct PoliciesView {
    generation: u64,
    loaded_at: String,
    policies: Vec<PolicyView>,
    reload: ReloadView,
}

async fn list_policies(State(state): State<ServerState>) -> Json<serde_json::Value> {
    let set = state.policies.current();
    let status = state.policies.status();
    let rfc3339 = crate::telemetry::rfc3339;
    let error_of = |name: &str| {
        status
            .last_error
            .as_ref()
            .filter(|failure| failure.policy.as_deref() == Some(name))
            .map(|failure| failure.message.clone())
    };
    let view = PoliciesView {
        generation: set.generation,
        loaded_at: rfc3339(set.loaded_at),
        policies: set
            .policies()
            .iter()
            .map(|p| PolicyView {
                name: p.name.to_string(),
                module: p.module_path.display().to_string(),
                digest: p.module.digest.clone(),
                size_bytes: p.module.size,
                format: p.module.format,
                contract: p.module.contract.to_string(),
                version: p.metadata.version.clone(),
                validates: p.metadata.validates,
                mutates: p.metadata.mutates,
                mode: p.mode,
                on_error: p.on_error,
                timeout_ms: p.limits.timeout.as_millis(),
                memory_limit_bytes: p.limits.memory,
                last_load_error: error_of(&p.name),
            })
            .collect(),
        reload: ReloadView {
            last_attempt: status.last_attempt.map(rfc3339),
            last_error: status.last_error.as_ref().map(|failure| FailureView {
                at: rfc3339(failure.at),
                policy: failure.policy.clone(),
                message: failure.message.clone(),
            }),
            succeeded: status.succeeded,
            failed: status.failed,
            unchanged: status.unchanged,
            modules_compiled: status.modules_compiled,
            modules_reused: status.modules_reused,
            modules_from_disk_cache: status.modules_from_disk_cache,
        },
    };
    Json(serde_json::to_value(view).unwrap_or_default())
}
