//! The review body: JSON content type, uncompressed, at most the body
//! limit, received within the body timeout. Every rejection is a plain-text
//! answer saying what was wrong.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, Request};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use http_body_util::BodyExt as _;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::{ServerState, plain};

/// A review body: JSON content type, at most `body_limit` bytes. Rejections
/// are plain-text answers saying what was wrong. Holds its share of the
/// body budget until the review is answered.
pub struct ReviewBody(Bytes, #[allow(dead_code)] Option<OwnedSemaphorePermit>);

impl ReviewBody {
    /// The body as received.
    pub fn bytes(&self) -> &[u8] {
        &self.0
    }
}

/// The bytes of request bodies all requests may hold at once, counted in
/// KiB. Bodies take their share chunk by chunk as they are read; a request
/// that finds no room stops reading (HTTP flow control then holds the
/// client back) until others are answered, or its body timeout ends it.
pub struct BodyBudget {
    kib: Arc<Semaphore>,
}

impl BodyBudget {
    pub fn new(bytes: usize) -> Self {
        let kib = (bytes >> 10).clamp(1, Semaphore::MAX_PERMITS);
        Self {
            kib: Arc::new(Semaphore::new(kib)),
        }
    }

    /// Takes room for `bytes` more, adding it to `held`.
    async fn take(&self, bytes: usize, held: &mut Option<OwnedSemaphorePermit>) {
        let Ok(kib) = u32::try_from(bytes.div_ceil(1024)) else {
            return;
        };
        // Never closed: the budget owns the semaphore.
        if let Ok(permit) = self.kib.clone().acquire_many_owned(kib).await {
            match held {
                Some(held) => held.merge(permit),
                None => *held = Some(permit),
            }
        }
    }
}

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
        let budget = &state.body_budget;
        let read = read_limited(request.into_body(), state.body_limit, budget);
        match tokio::time::timeout(timeout, read).await {
            Ok(body) => body.map(|(bytes, held)| Self(bytes, held)),
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

/// Reads a body of at most `limit` bytes, taking its room in `budget` as
/// it goes. A larger body is drained up to `DRAIN_FACTOR * limit` bytes
/// (holding nothing) and answered 413.
async fn read_limited(
    mut body: Body,
    limit: usize,
    budget: &BodyBudget,
) -> Result<(Bytes, Option<OwnedSemaphorePermit>), Response> {
    let mut held = None;
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
            held = None;
            if seen > limit.saturating_mul(DRAIN_FACTOR) {
                break;
            }
            continue;
        }
        budget.take(chunk.len(), &mut held).await;
        collected.extend_from_slice(&chunk);
    }
    if over {
        return Err(too_large());
    }
    Ok((Bytes::from(collected), held))
}
