//! `/v1/kv/{ns}`: the state store's key-value API for apps.
//!
//! - `GET /v1/kv/{ns}/{*key}`: the raw value; its version in `X-Shoal-Version`;
//! - `PUT /v1/kv/{ns}/{*key}?version=N&ttl=S`: the raw body is the value; `version` makes it a
//!   compare-and-set (0 = create only if absent), `ttl` expires it after `S` seconds;
//! - `DELETE /v1/kv/{ns}/{*key}?version=N`;
//! - `GET /v1/kv/{ns}?prefix=&cursor=&limit=`: a page of entries, in key order, across shards;
//! - `POST /v1/kv/{ns}`: a JSON batch.
//!
//! An `app:<ns>` token opens only its own namespace; admin and operator tokens open every one.
//! Store calls run on tokio's blocking pool: RocksDB blocks, and more so with synced writes.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use shoal_store::{Op, PutOptions, Store, StoreError};

use crate::AppState;
use crate::auth::Scope;
use crate::dto::{ErrorBody, KvBatchOp, KvBatchRequest, KvBatchResponse, KvEntryDto, KvList, KvWritten};
use crate::error::ApiError;

/// The response header that carries an entry's version.
pub const VERSION_HEADER: &str = "x-shoal-version";

/// Query of a put.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct PutQuery {
    /// Compare-and-set: write only if the current version is this one; 0 = only if absent.
    version: Option<u64>,
    /// Time to live in seconds.
    ttl: Option<u64>,
}

/// Query of a delete.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct DeleteQuery {
    /// Compare-and-set: delete only if the current version is this one.
    version: Option<u64>,
}

/// Query of a listing.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Only keys starting with this.
    prefix: Option<String>,
    /// The `cursor` of the previous page.
    cursor: Option<String>,
    /// Page size, 1 to 1000; default 100.
    limit: Option<usize>,
}

fn store(state: &AppState) -> Result<Arc<Store>, ApiError> {
    state.store.clone().ok_or_else(|| {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "store_unavailable", "this node serves no state store")
    })
}

/// The token must open namespace `ns`: admin and operator open all, `app:<ns>` its own.
fn allow(state: &AppState, headers: &HeaderMap, ns: &str) -> Result<(), ApiError> {
    match state.auth.scope(headers)? {
        Scope::Admin | Scope::Operator => Ok(()),
        Scope::App(own) if own == ns => Ok(()),
        other => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("the token has `{other}`, which does not open namespace `{ns}`"),
        )),
    }
}

/// Run a store call off the async threads.
async fn blocking<T: Send + 'static>(
    store: Arc<Store>,
    f: impl FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(move || f(&store))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", format!("store call failed: {e}")))?
        .map_err(ApiError::from)
}

fn ttl(seconds: Option<u64>) -> Result<Option<Duration>, ApiError> {
    match seconds {
        Some(0) => Err(ApiError::bad_request("ttl must be at least 1 second")),
        Some(s) => Ok(Some(Duration::from_secs(s))),
        None => Ok(None),
    }
}

fn version_header(version: u64) -> [(header::HeaderName, HeaderValue); 1] {
    [(header::HeaderName::from_static(VERSION_HEADER), HeaderValue::from(version))]
}

fn query<T>(query: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    query.map(|Query(q)| q).map_err(|e| ApiError::bad_request(e.body_text()))
}

/// Read a value.
#[utoipa::path(get, path = "/v1/kv/{ns}/{key}", params(("ns" = String, Path), ("key" = String, Path, description = "the key; may contain `/`")),
    responses((status = 200, content_type = "application/octet-stream", body = Vec<u8>, headers(("x-shoal-version" = u64))),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn get(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((ns, key)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    allow(&state, &headers, &ns)?;
    let store = store(&state)?;
    let (n, k) = (ns.clone(), key.clone());
    let entry = blocking(store, move |s| s.get(&n, &k)).await?;
    let entry = entry.ok_or_else(|| ApiError::not_found(format!("no key `{key}` in namespace `{ns}`")))?;
    let mut response =
        (version_header(entry.version), [(header::CONTENT_TYPE, "application/octet-stream")], entry.value)
            .into_response();
    if let Some(at) = entry.expires_at {
        response.headers_mut().insert("x-shoal-expires-at-ms", HeaderValue::from(at));
    }
    Ok(response)
}

/// Write a value: the body is the value.
#[utoipa::path(put, path = "/v1/kv/{ns}/{key}", params(("ns" = String, Path), ("key" = String, Path), PutQuery),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses((status = 200, body = KvWritten, headers(("x-shoal-version" = u64))), (status = 400, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 409, body = ErrorBody), (status = 413, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn put(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((ns, key)): Path<(String, String)>,
    q: Result<Query<PutQuery>, QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    allow(&state, &headers, &ns)?;
    let q = query(q)?;
    let body = body.map_err(body_error)?;
    let options = PutOptions { version: q.version, ttl: ttl(q.ttl)? };
    let store = store(&state)?;
    let (n, k) = (ns, key.clone());
    let version = blocking(store, move |s| s.put(&n, &k, &body, options)).await?;
    Ok((version_header(version), Json(KvWritten { key, version })).into_response())
}

/// Delete a key.
#[utoipa::path(delete, path = "/v1/kv/{ns}/{key}", params(("ns" = String, Path), ("key" = String, Path), DeleteQuery),
    responses((status = 204, headers(("x-shoal-version" = u64))), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn delete(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((ns, key)): Path<(String, String)>,
    q: Result<Query<DeleteQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    allow(&state, &headers, &ns)?;
    let q = query(q)?;
    let store = store(&state)?;
    let version = blocking(store, move |s| s.delete(&ns, &key, q.version)).await?;
    Ok((StatusCode::NO_CONTENT, version_header(version)).into_response())
}

/// List entries by prefix, in key order across shards, a page at a time.
#[utoipa::path(get, path = "/v1/kv/{ns}", params(("ns" = String, Path), ListQuery),
    responses((status = 200, body = KvList), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn list(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(ns): Path<String>,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<KvList>, ApiError> {
    allow(&state, &headers, &ns)?;
    let q = query(q)?;
    let store = store(&state)?;
    let limit = q.limit.unwrap_or(shoal_store::DEFAULT_LIST_LIMIT);
    let page = blocking(store, move |s| {
        s.list(&ns, q.prefix.as_deref().unwrap_or(""), q.cursor.as_deref().filter(|c| !c.is_empty()), limit)
    })
    .await?;
    Ok(Json(KvList { entries: page.entries.into_iter().map(Into::into).collect(), cursor: page.cursor }))
}

/// Apply a batch of puts and deletes: all of them or none (see the store's documentation for
/// what holds when the keys span shards).
#[utoipa::path(post, path = "/v1/kv/{ns}", params(("ns" = String, Path)), request_body = KvBatchRequest,
    responses((status = 200, body = KvBatchResponse), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 413, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn batch(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(ns): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<KvBatchResponse>, ApiError> {
    allow(&state, &headers, &ns)?;
    let body = body.map_err(body_error)?;
    let request: KvBatchRequest = crate::error::json_body(&body)?;
    let mut ops = Vec::with_capacity(request.ops.len());
    for op in request.ops {
        ops.push(match op {
            KvBatchOp::Put { key, value, version, ttl: seconds } => {
                Op::Put { key, value: value.into_bytes(), options: PutOptions { version, ttl: ttl(seconds)? } }
            }
            KvBatchOp::Delete { key, version } => Op::Delete { key, version },
        });
    }
    let store = store(&state)?;
    let versions = blocking(store, move |s| s.batch(&ns, ops)).await?;
    Ok(Json(KvBatchResponse { versions }))
}

fn body_error(e: BytesRejection) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", "body is over the request size limit")
    } else {
        ApiError::bad_request(e.body_text())
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        let message = err.to_string();
        let (status, code) = match &err {
            StoreError::InvalidNamespace(_) => (StatusCode::BAD_REQUEST, "invalid_namespace"),
            StoreError::InvalidKey(_) => (StatusCode::BAD_REQUEST, "invalid_key"),
            StoreError::InvalidTtl(_) => (StatusCode::BAD_REQUEST, "invalid_ttl"),
            StoreError::InvalidBatch(_) => (StatusCode::BAD_REQUEST, "invalid_batch"),
            StoreError::InvalidListing(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            StoreError::ValueTooLarge { .. } | StoreError::BatchTooLarge { .. } => {
                (StatusCode::PAYLOAD_TOO_LARGE, "too_large")
            }
            StoreError::Conflict { .. } => (StatusCode::CONFLICT, "version_conflict"),
            StoreError::NotFound { .. } => (StatusCode::NOT_FOUND, "not_found"),
            StoreError::Config(_) | StoreError::Storage(_) | StoreError::Corrupt(_) | StoreError::Io(_) => {
                (StatusCode::INTERNAL_SERVER_ERROR, "storage")
            }
        };
        ApiError::new(status, code, message)
    }
}

impl From<shoal_store::Entry> for KvEntryDto {
    fn from(e: shoal_store::Entry) -> Self {
        let (value, value_base16) = match String::from_utf8(e.value) {
            Ok(text) => (Some(text), None),
            Err(bytes) => (None, Some(hex::encode(bytes.into_bytes()))),
        };
        KvEntryDto { key: e.key, version: e.version, value, value_base16, expires_at_ms: e.expires_at }
    }
}
