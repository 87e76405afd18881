//! `/v1/kv/{ns}`: the state store's key-value API for apps.
//!
//! - `GET /v1/kv/{ns}/{*key}`: the raw value; its version in `X-Shoal-Version`; linearizable
//!   (a replicated shard's leader answers), or with `?consistency=stale` whatever copy is asked,
//!   saying how far behind it was (`X-Shoal-Applied`, `X-Shoal-Behind`);
//! - `PUT /v1/kv/{ns}/{*key}?version=N&ttl=S`: the raw body is the value; `version` makes it a
//!   compare-and-set (0 = create only if absent), `ttl` expires it after `S` seconds;
//! - `DELETE /v1/kv/{ns}/{*key}?version=N`;
//! - `GET /v1/kv/{ns}?prefix=&cursor=&limit=`: a page of entries, in key order, across shards;
//! - `POST /v1/kv/{ns}`: a JSON batch;
//! - watches: `?index=N&wait=S` on a key or a listing is a blocking query (Consul's): it answers
//!   once the key's version (0 = absent), or the listing's `X-Shoal-Index`, differs from `N`, or
//!   after `S` seconds (default 30, at most 300) with what is there then; `?watch=true` is a
//!   Server-Sent Events stream with one event per write (`put` with the entry as it is when read —
//!   `"superseded": true` and no value when the key was deleted before — and `delete`);
//! - `GET /v1/store`, `POST /v1/store/scale-out` (`{"node"?}`), `POST /v1/store/scale-in`: the
//!   shard map, its nodes and moves (admin).
//!
//! An `app:<ns>` token opens only its own namespace; admin and operator tokens open every one.
//! Reads and writes go through the [`StoreClient`], which routes each key to its shard's node.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::{Stream, StreamExt};
use serde::Deserialize;
use shoal_bus::subject;
use shoal_store::client::StoreClient;
use shoal_store::coordinator::{Coordinator, ScaleError};
use shoal_store::wire::KvChange;
use shoal_store::{Entry, Op, PutOptions, StoreError};

use crate::AppState;
use crate::auth::Scope;
use crate::dto::{ErrorBody, KvBatchOp, KvBatchRequest, KvBatchResponse, KvEntryDto, KvList, KvWritten};
use crate::error::ApiError;

/// The response header that carries an entry's version.
pub const VERSION_HEADER: &str = "x-shoal-version";
/// The response header that carries the index a blocking query waits on.
pub const INDEX_HEADER: &str = "x-shoal-index";
/// How long a blocking query waits when the caller gives no `wait`.
const DEFAULT_WAIT: Duration = Duration::from_secs(30);
/// The longest `wait` of a blocking query: longer waits outlive proxies' idle timeouts.
const MAX_WAIT: Duration = Duration::from_secs(300);

/// Query of a read: plain, blocking (`index`, `wait`) or a stream (`watch`).
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct GetQuery {
    /// Blocking query: answer once the key's version differs from this (0 = absent).
    index: Option<u64>,
    /// Seconds a blocking query waits at most (default 30, at most 300).
    wait: Option<u64>,
    /// `true`: a Server-Sent Events stream of the key's writes.
    watch: Option<bool>,
    /// `linearizable` (the default: every write acknowledged before the read) or `stale` (any
    /// copy of a replicated shard answers with what it has applied; `X-Shoal-Applied` and
    /// `X-Shoal-Behind` say how far behind it was). A plain read only.
    consistency: Option<ReadConsistency>,
}

/// `?consistency=` of a read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ReadConsistency {
    /// Every write acknowledged before the read began (the shard's leader answers).
    Linearizable,
    /// What the copy asked has applied.
    Stale,
}

/// Query of a put.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct PutQuery {
    /// Compare-and-set: write only if the current version is this one; 0 = only if absent.
    version: Option<u64>,
    /// Time to live in seconds.
    ttl: Option<u64>,
}

/// Query of a delete.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct DeleteQuery {
    /// Compare-and-set: delete only if the current version is this one.
    version: Option<u64>,
}

/// Query of a listing.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Only keys starting with this.
    prefix: Option<String>,
    /// The `cursor` of the previous page.
    cursor: Option<String>,
    /// Page size, 1 to 1000; default 100.
    limit: Option<usize>,
    /// Blocking query: answer once the page's `X-Shoal-Index` differs from this.
    index: Option<u64>,
    /// Seconds a blocking query waits at most (default 30, at most 300).
    wait: Option<u64>,
    /// `true`: a Server-Sent Events stream of the writes of keys under `prefix`.
    watch: Option<bool>,
}

fn store(state: &AppState) -> Result<Arc<StoreClient>, ApiError> {
    state.store.clone().ok_or_else(|| {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "store_unavailable", "this node serves no state store")
    })
}

/// The token must open namespace `ns`: admin and operator open all, `app:<ns>` its own. System
/// namespaces (`_…`, the host's own state such as plugins' stores) are read by admin and
/// operator tokens and written only by admin ones.
fn allow(state: &AppState, headers: &HeaderMap, ns: &str, write: bool) -> Result<(), ApiError> {
    match state.auth.scope(headers)? {
        Scope::Admin => Ok(()),
        Scope::Operator if write && shoal_store::is_system_namespace(ns) => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("`{ns}` is a system namespace: only an admin token writes it"),
        )),
        Scope::Operator => Ok(()),
        Scope::App(own) if own == ns => Ok(()),
        other => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("the token has `{other}`, which does not open namespace `{ns}`"),
        )),
    }
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

/// Read a value; a blocking query with `index`, a stream of its writes with `watch=true`.
#[utoipa::path(get, path = "/v1/kv/{ns}/{key}", params(("ns" = String, Path), ("key" = String, Path, description = "the key; may contain `/`"), GetQuery, ("Last-Event-ID" = Option<String>, Header, description = "with `watch=true`: the `id` of the last event received; the watch starts after it")),
    responses((status = 200, content_type = "application/octet-stream", body = Vec<u8>, headers(("x-shoal-version" = u64), ("x-shoal-index" = u64))),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn get(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((ns, key)): Path<(String, String)>,
    q: Result<Query<GetQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    allow(&state, &headers, &ns, false)?;
    let q = query(q)?;
    let store = store(&state)?;
    if q.watch.is_some() || q.index.is_some() {
        // Checked before subscribing to the namespace's events (plain reads: by the client).
        shoal_store::validate_namespace(&ns)?;
        shoal_store::validate_key(&key)?;
    }
    let stale = q.consistency == Some(ReadConsistency::Stale);
    if stale && (q.watch.is_some() || q.index.is_some()) {
        return Err(ApiError::bad_request("`consistency=stale` is for a plain read; it takes no `index` or `watch`"));
    }
    if q.watch == Some(true) {
        if q.index.is_some() {
            return Err(ApiError::bad_request("`watch` streams every write; it takes no `index`"));
        }
        let slot = state.streams.open(&headers)?;
        return Ok(watch_stream(state, store, ns, KeyFilter::Exact(key), slot, &headers).into_response());
    }
    let mut staleness = None;
    let entry = match q.index {
        None if stale => {
            let (entry, how_far) = store.get_at(&ns, &key, shoal_store::Consistency::Stale).await?;
            staleness = how_far;
            entry
        }
        None => store.get(&ns, &key).await?,
        Some(index) => {
            let wait = wait_for(q.wait, state.max_query_time)?;
            let mut changes = subscribe(&state, &ns).await?;
            let deadline = tokio::time::Instant::now() + wait;
            loop {
                let entry = store.get(&ns, &key).await?;
                if entry.as_ref().map_or(0, |e| e.version) != index
                    || !next_change(&mut changes, deadline, |c| c.key == key).await
                {
                    break entry;
                }
            }
        }
    };
    let Some(entry) = entry else {
        let mut response = ApiError::not_found(format!("no key `{key}` in namespace `{ns}`")).into_response();
        response.headers_mut().insert(INDEX_HEADER, HeaderValue::from(0u64));
        say_staleness(&mut response, staleness);
        return Ok(response);
    };
    let mut response =
        (version_header(entry.version), [(header::CONTENT_TYPE, "application/octet-stream")], entry.value)
            .into_response();
    response.headers_mut().insert(INDEX_HEADER, HeaderValue::from(entry.version));
    if let Some(at) = entry.expires_at {
        response.headers_mut().insert("x-shoal-expires-at-ms", HeaderValue::from(at));
    }
    say_staleness(&mut response, staleness);
    Ok(response)
}

/// A stale read's headers: `X-Shoal-Consistency: stale`, the log entry the copy had applied,
/// and how many entries of the log it had not (when the log said in time).
fn say_staleness(response: &mut Response, staleness: Option<shoal_store::Staleness>) {
    let Some(s) = staleness else { return };
    let headers = response.headers_mut();
    headers.insert("x-shoal-consistency", HeaderValue::from_static("stale"));
    headers.insert("x-shoal-applied", HeaderValue::from(s.applied));
    if let Some(behind) = s.behind {
        headers.insert("x-shoal-behind", HeaderValue::from(behind));
    }
}

/// Which keys a watch follows.
#[derive(Clone)]
enum KeyFilter {
    Exact(String),
    Prefix(String),
}

impl KeyFilter {
    fn matches(&self, key: &str) -> bool {
        match self {
            KeyFilter::Exact(k) => k == key,
            KeyFilter::Prefix(p) => key.starts_with(p.as_str()),
        }
    }
}

/// The wait of a blocking query: `seconds` (at most 300) or the default, cut to the node's
/// `max`.
fn wait_for(seconds: Option<u64>, max: Duration) -> Result<Duration, ApiError> {
    match seconds {
        None => Ok(DEFAULT_WAIT.min(max)),
        Some(s) if Duration::from_secs(s) > MAX_WAIT => {
            Err(ApiError::bad_request(format!("wait of {s} s is over the limit of {} s", MAX_WAIT.as_secs())))
        }
        Some(s) => Ok(Duration::from_secs(s).min(max)),
    }
}

/// The writes of namespace `ns`, subscribed before the caller reads (so none slips between).
async fn subscribe(state: &AppState, ns: &str) -> Result<shoal_bus::Subscription, ApiError> {
    let bus_error =
        |e: shoal_bus::BusError| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "bus_unavailable", e.to_string());
    let subscription = state.bus.subscribe(&subject::kv_events(ns)).await.map_err(bus_error)?;
    state.bus.flush().await.map_err(bus_error)?;
    Ok(subscription)
}

fn change_of(message: &shoal_bus::Message) -> Option<KvChange> {
    change_in(&message.payload)
}

/// The change a KV event's CloudEvent JSON announces.
fn change_in(payload: &[u8]) -> Option<KvChange> {
    let event: shoal_bus::CloudEvent = serde_json::from_slice(payload).ok()?;
    serde_json::from_value(event.data).ok()
}

/// Wait for a write that `wanted` accepts; false when the deadline passed (or the bus closed).
async fn next_change(
    changes: &mut shoal_bus::Subscription,
    deadline: tokio::time::Instant,
    wanted: impl Fn(&KvChange) -> bool,
) -> bool {
    loop {
        match tokio::time::timeout_at(deadline, changes.next()).await {
            Ok(Some(message)) => {
                if change_of(&message).is_some_and(|c| wanted(&c)) {
                    return true;
                }
            }
            Ok(None) | Err(_) => return false,
        }
    }
}

/// The SSE stream of a watch: `put` events carry the entry as it is when read, `delete` events
/// the key and the delete's version (an expired entry's: the sweeper's deletes say
/// `"expired": true`). Read from the node's journal (`crate::journal`): each event's `id` is its
/// place there, and a client that reconnects with `Last-Event-ID` gets the writes it missed
/// (or an `event: gap` when they are no longer kept).
fn watch_stream(
    state: AppState,
    store: Arc<StoreClient>,
    ns: String,
    filter: KeyFilter,
    slot: crate::streams::StreamSlot,
    headers: &HeaderMap,
) -> Sse<impl Stream<Item = Result<Event, Infallible>> + use<>> {
    let items = state.journal.stream(subject::kv_events(&ns), crate::journal::last_event_id(headers));
    let events = items
        .filter_map(move |sent| {
            let (store, ns, filter) = (store.clone(), ns.clone(), filter.clone());
            async move {
                let entry = match &sent.item {
                    crate::journal::Item::Event(entry) => entry.clone(),
                    crate::journal::Item::Gap { .. } => return Some(Ok(crate::events::gap_event(&sent))),
                };
                let change = change_in(&entry.payload).filter(|c| filter.matches(&c.key))?;
                let data = if change.op == "put" {
                    match store.get(&ns, &change.key).await {
                        // Newer writes come with their own events; this one is what was read.
                        Ok(Some(entry)) => serde_json::to_value(KvEntryDto::from(entry)).unwrap_or_default(),
                        // Deleted before it was read: the write is still announced (one event per
                        // write), without a value; the delete's own event follows.
                        Ok(None) => {
                            serde_json::json!({"key": change.key, "version": change.version, "superseded": true})
                        }
                        Err(e) => {
                            serde_json::json!({"key": change.key, "version": change.version, "error": e.to_string()})
                        }
                    }
                } else if change.expired {
                    serde_json::json!({"key": change.key, "version": change.version, "expired": true})
                } else {
                    serde_json::json!({"key": change.key, "version": change.version})
                };
                Some(Ok(Event::default().event(change.op).id(&sent.id).data(data.to_string())))
            }
        })
        .boxed();
    Sse::new(crate::streams::holding(events, slot)).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
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
    body: Body,
) -> Result<Response, ApiError> {
    allow(&state, &headers, &ns, true)?;
    let q = query(q)?;
    let body = crate::body::read(body, crate::body::KV_VALUE, "a value").await?;
    let options = PutOptions { version: q.version, ttl: ttl(q.ttl)? };
    let store = store(&state)?;
    let version = store.put(&ns, &key, &body, options).await?;
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
    allow(&state, &headers, &ns, true)?;
    let q = query(q)?;
    let store = store(&state)?;
    let version = store.delete(&ns, &key, q.version).await?;
    Ok((StatusCode::NO_CONTENT, version_header(version)).into_response())
}

/// List entries by prefix, in key order across shards, a page at a time; a blocking query with
/// `index`, a stream of the writes under the prefix with `watch=true`.
#[utoipa::path(get, path = "/v1/kv/{ns}", params(("ns" = String, Path), ListQuery, ("Last-Event-ID" = Option<String>, Header, description = "with `watch=true`: the `id` of the last event received; the watch starts after it")),
    responses((status = 200, body = KvList, headers(("x-shoal-index" = u64))), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn list(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(ns): Path<String>,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    allow(&state, &headers, &ns, false)?;
    let q = query(q)?;
    let store = store(&state)?;
    let prefix = q.prefix.unwrap_or_default();
    let limit = q.limit.unwrap_or(shoal_store::DEFAULT_LIST_LIMIT);
    let cursor = q.cursor.filter(|c| !c.is_empty());
    if q.watch == Some(true) {
        if q.index.is_some() || cursor.is_some() {
            return Err(ApiError::bad_request(
                "`watch` streams every write under the prefix; it takes no `index` or `cursor`",
            ));
        }
        shoal_store::validate_namespace(&ns)?;
        let slot = state.streams.open(&headers)?;
        return Ok(watch_stream(state, store, ns, KeyFilter::Prefix(prefix), slot, &headers).into_response());
    }
    let page = match q.index {
        None => store.list(&ns, &prefix, cursor.as_deref(), limit).await?,
        Some(index) => {
            let wait = wait_for(q.wait, state.max_query_time)?;
            let mut changes = subscribe(&state, &ns).await?;
            let deadline = tokio::time::Instant::now() + wait;
            loop {
                let page = store.list(&ns, &prefix, cursor.as_deref(), limit).await?;
                if page_index(&page.entries) != index
                    || !next_change(&mut changes, deadline, |c| c.key.starts_with(prefix.as_str())).await
                {
                    break page;
                }
            }
        }
    };
    let index = page_index(&page.entries);
    let body = KvList { entries: page.entries.into_iter().map(Into::into).collect(), cursor: page.cursor };
    Ok(([(header::HeaderName::from_static(INDEX_HEADER), HeaderValue::from(index))], Json(body)).into_response())
}

/// The index of a page: a hash of its keys and versions (FNV-1a 64), so it changes whenever an
/// entry of the page is written, added or removed. Never 0, which a caller may use for "nothing
/// seen yet".
fn page_index(entries: &[Entry]) -> u64 {
    let mut bytes = Vec::with_capacity(entries.len() * 24);
    for e in entries {
        bytes.extend_from_slice(e.key.as_bytes());
        bytes.push(0);
        bytes.extend_from_slice(&e.version.to_be_bytes());
    }
    shoal_keyspace::fnv1a64(&bytes).max(1)
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
    body: Body,
) -> Result<Json<KvBatchResponse>, ApiError> {
    allow(&state, &headers, &ns, true)?;
    let body = crate::body::read(body, crate::body::KV_BATCH, "a batch").await?;
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
    let versions = store.batch(&ns, ops).await?;
    Ok(Json(KvBatchResponse { versions }))
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
            StoreError::NotOwner { .. }
            | StoreError::NotLeader { .. }
            | StoreError::Moving
            | StoreError::Unavailable { .. } => (StatusCode::SERVICE_UNAVAILABLE, "shard_unavailable"),
            StoreError::Partial { .. } => (StatusCode::INTERNAL_SERVER_ERROR, "batch_partly_applied"),
            StoreError::Protocol(_) => (StatusCode::BAD_GATEWAY, "store_protocol"),
            StoreError::StaleTerm(_) => (StatusCode::SERVICE_UNAVAILABLE, "stale_term"),
            StoreError::State(shoal_state::StateError::NotLeader) => (StatusCode::SERVICE_UNAVAILABLE, "not_leader"),
            StoreError::State(_) => (StatusCode::INTERNAL_SERVER_ERROR, "storage"),
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

fn coordinator(state: &AppState) -> Result<Arc<Coordinator>, ApiError> {
    state.store_coordinator.load_full().ok_or_else(|| {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not_master", "this node does not own the store's shard map")
    })
}

/// The store: its shard map, its nodes, the move in progress and the last one.
#[utoipa::path(get, path = "/v1/store", responses((status = 200, description = "`{map, nodes, moving, last_move}`"), (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn status(State(state): State<AppState>, headers: HeaderMap) -> Result<Response, ApiError> {
    state.auth.reader(&headers)?;
    Ok(Json(coordinator(&state)?.status()).into_response())
}

/// `POST /v1/store/scale-out`.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScaleOutRequest {
    /// The store node that gets the new shard (default: the live one with the fewest).
    pub node: Option<String>,
}

/// Grow the store by one shard, moving the keys whose jump hash changes (about 1/(N+1)) while
/// reads and writes go on. Answers at once with the move; follow it with `GET /v1/store` or the
/// `shoal.evt.store.move.*` events.
#[utoipa::path(post, path = "/v1/store/scale-out", request_body = ScaleOutRequest,
    responses((status = 202, description = "the move, started"), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn scale_out(State(state): State<AppState>, headers: HeaderMap, body: Body) -> Result<Response, ApiError> {
    state.auth.admin(&headers)?;
    let body = crate::body::read(body, crate::body::JSON, "a scale-out request").await?;
    let request: ScaleOutRequest = if body.iter().all(u8::is_ascii_whitespace) {
        ScaleOutRequest::default()
    } else {
        crate::error::json_body(&body)?
    };
    let started = coordinator(&state)?.scale_out(request.node).await.map_err(scale_error)?;
    Ok((StatusCode::ACCEPTED, Json(started)).into_response())
}

/// Remove the last shard, moving its keys to the others, online.
#[utoipa::path(post, path = "/v1/store/scale-in",
    responses((status = 202, description = "the move, started"), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn scale_in(State(state): State<AppState>, headers: HeaderMap) -> Result<Response, ApiError> {
    state.auth.admin(&headers)?;
    let started = coordinator(&state)?.scale_in().await.map_err(scale_error)?;
    Ok((StatusCode::ACCEPTED, Json(started)).into_response())
}

fn scale_error(e: ScaleError) -> ApiError {
    match e {
        ScaleError::Busy(_) => ApiError::new(StatusCode::CONFLICT, "move_in_progress", e.to_string()),
        // No node to take a shard, the most or the fewest shards already: the store's state,
        // not the request, is what stands in the way.
        ScaleError::Invalid(_) => ApiError::new(StatusCode::CONFLICT, "cannot_scale", e.to_string()),
        ScaleError::Unrecorded(e) => e.into(),
    }
}
