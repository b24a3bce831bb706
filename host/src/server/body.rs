//! The review body: JSON content type, uncompressed, at most the body
//! limit, received within the body timeout. Every rejection is a plain-text
//! answer saying what was wrong.

use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, Request};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use http_body_util::BodyExt as _;

use super::{ServerState, plain};

/// A review body: JSON content type, at most `body_limit` bytes. Rejections
/// are plain-text answers saying what was wrong.
pub struct ReviewBody(Bytes);

impl ReviewBody {
    /// The body as received.
    pub fn bytes(&self) -> &[u8] {
        &self.0
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
