//! The HTTP surface: routes, the review body extractor, and handlers that
//! turn a review into a chain run and a chain run into a response.
//!
//! Never names a wasmtime type: it sees policies only through the policy
//! set and the chain.
//!

//! # Layout
//! - `body`: the review body extractor (content type, size, read timeout).
//! - `review`: `/mutate`, `/validate` and their per-policy forms: one
//!   snapshot, parse, admission to evaluation, the chain, the answer.
//! - `status`: `/healthz`, `/readyz`, `/metrics`, `/policies`.

mod body;
mod review;
mod status;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use portcullis_engine::{EvalPool, PolicyStore};

pub use self::body::BodyBudget;
use self::review::Endpoint;
use crate::limits::EvalLimiter;
use crate::listener::Phase;
use crate::metrics::Metrics;
use crate::shadow::Shadows;

/// Largest review body accepted: an UPDATE carries object and oldObject,
/// up to about 6 MiB together.
pub const DEFAULT_BODY_LIMIT: usize = 8 << 20;

/// Bytes of request bodies held at once, by default: eight of the largest.
pub const DEFAULT_BODY_BYTES_IN_FLIGHT: usize = 64 << 20;

/// What the handlers share.
#[derive(Clone)]
pub struct ServerState {
    pub policies: Arc<PolicyStore>,
    /// Where reviews are parsed and policies called, apart from the
    /// network's runtime.
    pub pool: Arc<EvalPool>,
    pub metrics: Arc<Metrics>,
    /// Whether `/policies` and `/metrics` are served on the HTTPS port.
    pub status_on_https: bool,
    pub body_limit: usize,
    /// Bytes of request bodies held at once, across all requests.
    pub body_budget: Arc<BodyBudget>,
    /// How long a client may take to send its body.
    pub body_timeout: Duration,
    pub limiter: Arc<EvalLimiter>,
    /// Shadow candidates: their budget and what they found.
    pub shadows: Arc<Shadows>,
    /// Where the process is in its life: `/readyz` fails once it drains.
    pub phase: tokio::sync::watch::Receiver<Phase>,
    /// With `--cluster-policies`: what this replica does with each policy
    /// resource (as its lease reports it), for `/policies`.
    pub cluster_reports: Option<crate::replica::Reports>,
}

/// The webhook router. `/policies` and `/metrics` only with
/// `status_on_https`: by default whoever reaches the webhook sees
/// admission answers and probes, nothing about the policies.
pub fn router(state: ServerState) -> Router {
    let status = if state.status_on_https {
        Router::new()
            .route("/policies", get(status::policies))
            .route("/metrics", get(status::metrics))
    } else {
        Router::new()
    };
    Router::new()
        .route(
            "/mutate",
            post(|s, q, b| review::whole_chain(Endpoint::Mutate, s, q, b)),
        )
        .route(
            "/validate",
            post(|s, q, b| review::whole_chain(Endpoint::Validate, s, q, b)),
        )
        .route(
            "/mutate/{policy}",
            post(|s, p, q, b| review::one_policy(Endpoint::Mutate, s, p, q, b)),
        )
        .route(
            "/validate/{policy}",
            post(|s, p, q, b| review::one_policy(Endpoint::Validate, s, p, q, b)),
        )
        .route("/healthz", get(status::healthz))
        .route("/readyz", get(status::readyz))
        .merge(status)
        .fallback(not_found)
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(
            panic_response,
        ))
        .with_state(state)
}

/// The operations router for the plain-HTTP listener: probes, metrics and
/// the policy status, never the webhook endpoints.
pub fn operations_router(state: ServerState) -> Router {
    Router::new()
        .route("/healthz", get(status::healthz))
        .route("/readyz", get(status::readyz))
        .route("/metrics", get(status::metrics))
        .route("/policies", get(status::policies))
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

/// A JSON answer (`/policies`, review responses).
fn json(body: Vec<u8>) -> Response {
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
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
