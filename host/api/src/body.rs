//! Request bodies, read only once the handler knows who is calling and only up to what its
//! route takes.
//!
//! A handler takes the body as an unread [`Body`], checks the caller's token (401/403 with
//! nothing read), and then [`read`]s it with its route's limit: a `Content-Length` over the
//! limit is refused before a byte of the body is read, and a body without one (chunked) is
//! refused as soon as it passes the limit. So a client without a token cannot make the API hold
//! more than a request head, and one with a token no more than its route allows.

use axum::body::HttpBody as _;
use axum::body::{Body, Bytes};
use axum::http::StatusCode;
use http_body_util::{BodyExt, LengthLimitError, Limited};

use crate::error::ApiError;

/// Largest JSON body of the routes that take a small document (tokens, services, routes, the
/// allocator, activations, scale-outs).
pub const JSON: usize = 64 << 10;
/// Largest body of a framework's own API (`/v1/apps`, `/v1/jobs`, `/v1/frameworks/…`).
pub const FRAMEWORK: usize = 4 << 20;
/// Largest value of a key (`PUT /v1/kv/…`): the store's own limit.
pub const KV_VALUE: usize = shoal_store::MAX_VALUE_LEN;
/// Largest batch (`POST /v1/kv/{ns}`): up to 128 operations, their values base64 in JSON.
pub const KV_BATCH: usize = 8 << 20;

/// Reads `body`, at most `limit` bytes of it; `what` names it in the 413.
pub async fn read(body: Body, limit: usize, what: &str) -> Result<Bytes, ApiError> {
    let too_large = || {
        ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", format!("{what} is over the limit of {limit} bytes"))
    };
    if body.size_hint().lower() > limit as u64 {
        return Err(too_large());
    }
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => Err(too_large()),
        Err(e) => Err(ApiError::bad_request(format!("could not read the request body: {e}"))),
    }
}
