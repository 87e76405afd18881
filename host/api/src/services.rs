//! `/v1/services` (the service registry: discovery, external registrations, watches) and
//! `/v1/routes` (the gateway's routes).
//!
//! - `GET /v1/services[?index=N&wait=30s]`: every service with instance counts;
//! - `GET /v1/services/{svc}[?healthy=true&index=N&wait=30s]`: its instances. With `index`, the
//!   request blocks until the registry's index passes `N` or `wait` ends (default 60 s, at most
//!   5 min), like Consul's blocking queries; the index to pass next time is in `X-Shoal-Index`;
//! - `GET /v1/services/{svc}/watch`: the same as Server-Sent Events, one `instances` event per
//!   change of the service (and one at the start);
//! - `PUT /v1/services/{svc}/instances/{id}`: register an external instance (JSON
//!   `Registration`; `ttl_seconds` makes it expire unless renewed);
//!   `PUT …/{id}/heartbeat` renews it; `DELETE …/{id}` removes it;
//! - `GET /v1/routes`, `GET|PUT|DELETE /v1/routes/{name}`.
//!
//! Reading needs any token; writing needs `admin` or `operator`, and a registration with a
//! `command` check `admin` (the node runs it with `sh -c`). An instance's `health_output` (at most
//! 4 KiB, then a truncation marker) is shown to admin and operator tokens only.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::Stream;
use serde::Deserialize;
use serde_json::json;
use shoal_discovery::{Discovery, DiscoveryError, Instance, Registration};
use shoal_gateway::{Route, RouteError, Routes};
use shoal_health::CheckKind;

use crate::AppState;
use crate::auth::Scope;
use crate::dto::ErrorBody;
use crate::error::{ApiError, json_body};

/// The response header carrying the registry index of an answer.
pub const INDEX_HEADER: &str = "x-shoal-index";
/// Longest wait of a blocking query.
pub const MAX_WAIT: Duration = Duration::from_secs(300);
/// Wait of a blocking query that names none.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(60);

/// Query of a discovery read.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ServiceQuery {
    /// Only passing instances.
    healthy: Option<bool>,
    /// Block until the registry's index is greater than this.
    index: Option<u64>,
    /// Longest block: `30s`, `500ms`, `2m` or seconds; default 60 s, at most 5 min.
    wait: Option<String>,
}

/// The wait of a blocking query: `text` or the default, cut to the node's `max`.
fn parse_wait(text: Option<&str>, max: Duration) -> Result<Duration, ApiError> {
    let Some(text) = text else { return Ok(DEFAULT_WAIT.min(max)) };
    let bad = || ApiError::bad_request(format!("wait `{text}` is not a duration like 30s, 500ms or 2m"));
    let (number, unit) = text.find(|c: char| !c.is_ascii_digit()).map_or((text, "s"), |i| text.split_at(i));
    let n: u64 = number.parse().map_err(|_| bad())?;
    let wait = match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        _ => return Err(bad()),
    };
    Ok(wait.min(MAX_WAIT).min(max))
}

fn discovery(state: &AppState) -> Result<&Arc<Discovery>, ApiError> {
    state.discovery.as_ref().ok_or_else(|| {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "no_registry", "this node does not run the service registry")
    })
}

fn routes(state: &AppState) -> Result<&Arc<Routes>, ApiError> {
    state
        .routes
        .as_ref()
        .ok_or_else(|| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "no_gateway", "this node does not run a gateway"))
}

impl From<DiscoveryError> for ApiError {
    fn from(err: DiscoveryError) -> Self {
        match err {
            DiscoveryError::NotFound { .. } => ApiError::new(StatusCode::NOT_FOUND, "not_found", err.to_string()),
            DiscoveryError::NotExternal(_) => ApiError::new(StatusCode::CONFLICT, "not_external", err.to_string()),
            DiscoveryError::InvalidName { .. } | DiscoveryError::Invalid(_) => ApiError::bad_request(err.to_string()),
        }
    }
}

impl From<RouteError> for ApiError {
    fn from(err: RouteError) -> Self {
        match err {
            RouteError::Invalid(_) => ApiError::bad_request(err.to_string()),
            RouteError::NotFound(_) => ApiError::not_found(err.to_string()),
            RouteError::Storage(_) => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "storage", err.to_string()),
            RouteError::NotLeader => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not_leader", err.to_string()),
        }
    }
}

fn with_index(index: u64, body: serde_json::Value) -> Response {
    let mut response = Json(body).into_response();
    response.headers_mut().insert(INDEX_HEADER, HeaderValue::from(index));
    response
}

/// Instances as `scope` may read them: the output of their health checks (bounded to
/// `shoal_health::MAX_OUTPUT` bytes by the registry) only for admin and operator tokens.
fn for_scope(scope: &Scope, mut instances: Vec<Instance>) -> Vec<Instance> {
    if !scope.sees_everything() {
        for instance in &mut instances {
            instance.health_output.clear();
        }
    }
    instances
}

/// Every service, with instance counts.
#[utoipa::path(get, path = "/v1/services", params(ServiceQuery),
    responses((status = 200, description = "`{index, self_preservation, services: [{name, instances, passing}]}`"), (status = 400, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn list(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<ServiceQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    state.auth.reader(&headers)?;
    let Query(query) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let wait = parse_wait(query.wait.as_deref(), state.max_query_time)?;
    let d = discovery(&state)?;
    if let Some(index) = query.index {
        d.wait(index, wait).await;
    }
    let index = d.index();
    let services: Vec<_> = d
        .services()
        .into_iter()
        .map(|(name, n, passing)| json!({"name": name, "instances": n, "passing": passing}))
        .collect();
    Ok(with_index(index, json!({"index": index, "self_preservation": d.self_preservation(), "services": services})))
}

/// The instances of one service.
#[utoipa::path(get, path = "/v1/services/{svc}", params(("svc" = String, Path), ServiceQuery),
    responses((status = 200, description = "`{index, service, instances: [Instance]}`; an instance's `health_output` (at most 4096 bytes of the last check's output, then ` [… truncated]`) is absent for app tokens"), (status = 400, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn show(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(svc): Path<String>,
    query: Result<Query<ServiceQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let scope = state.auth.reader(&headers)?;
    let Query(query) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    shoal_discovery::validate_service(&svc)?;
    let wait = parse_wait(query.wait.as_deref(), state.max_query_time)?;
    let d = discovery(&state)?;
    if let Some(index) = query.index {
        d.wait(index, wait).await;
    }
    let (instances, index) = d.instances(&svc, query.healthy.unwrap_or(false));
    let instances = for_scope(&scope, instances);
    Ok(with_index(index, json!({"index": index, "service": svc, "instances": instances})))
}

/// Watch one service as Server-Sent Events.
#[utoipa::path(get, path = "/v1/services/{svc}/watch", params(("svc" = String, Path)),
    responses((status = 200, content_type = "text/event-stream", body = String), (status = 400, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn watch(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(svc): Path<String>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let scope = state.auth.reader(&headers)?;
    shoal_discovery::validate_service(&svc)?;
    let d = discovery(&state)?.clone();
    let slot = state.streams.open(&headers)?;
    let mut changes = d.subscribe();
    let stream = async_stream_of(move |tx| async move {
        let snapshot = |d: &Discovery| {
            let (instances, index) = d.instances(&svc, false);
            let instances = for_scope(&scope, instances);
            Event::default()
                .event("instances")
                .id(index.to_string())
                .data(json!({"index": index, "service": svc, "instances": instances}).to_string())
        };
        if tx.send(snapshot(&d)).await.is_err() {
            return;
        }
        loop {
            match changes.recv().await {
                Ok(change) if change.service == svc || change.service.is_empty() => {
                    if tx.send(snapshot(&d)).await.is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                // Missed changes: the next snapshot covers them.
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                    if tx.send(snapshot(&d)).await.is_err() {
                        return;
                    }
                }
                Err(_) => return,
            }
        }
    });
    Ok(Sse::new(crate::streams::holding(stream, slot)).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

/// A stream fed by a task through a channel (the task ends when the client goes away).
fn async_stream_of<F, Fut>(f: F) -> impl Stream<Item = Result<Event, Infallible>>
where
    F: FnOnce(tokio::sync::mpsc::Sender<Event>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(f(tx));
    futures::StreamExt::map(tokio_stream::wrappers::ReceiverStream::new(rx), Ok)
}

/// Register (or update) an external instance.
#[utoipa::path(put, path = "/v1/services/{svc}/instances/{id}", params(("svc" = String, Path), ("id" = String, Path)),
    request_body(content = String, description = "`{address, ports?, weight?, labels?, version?, health?, ttl_seconds?, check?}`: `check` is a health check the node runs (`{\"type\": \"http\", \"path\": \"/health\", \"interval_ms\": 1000, \"timeout_ms\": 500}`); a `command` check needs an admin token"),
    responses((status = 200, description = "`{index}`"), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody, description = "a `command` check with a token that is not admin"), (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn register(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((svc, id)): Path<(String, String)>,
    body: Body,
) -> Result<Response, ApiError> {
    let scope = state.auth.operator(&headers)?;
    let body = crate::body::read(body, crate::body::JSON, "a registration").await?;
    // A check's `type` that is not a name is refused by `CheckKind` itself.
    let registration: Registration = json_body(&body)?;
    let command_check = registration.check.as_ref().is_some_and(|c| matches!(c.kind, CheckKind::Command { .. }));
    if command_check && scope != Scope::Admin {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "a `command` health check runs `sh -c` on the control-plane node, so only an admin token may register \
                 one (the token has `{scope}`); use an `http`, `tcp` or `wasm` check"
            ),
        ));
    }
    let index = discovery(&state)?.register(&svc, &id, registration)?;
    Ok(with_index(index, json!({"index": index})))
}

/// Renew an external instance's TTL.
#[utoipa::path(put, path = "/v1/services/{svc}/instances/{id}/heartbeat", params(("svc" = String, Path), ("id" = String, Path)),
    responses((status = 200, description = "`{index}`"), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn heartbeat(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((svc, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    state.auth.operator(&headers)?;
    let index = discovery(&state)?.heartbeat(&svc, &id)?;
    Ok(with_index(index, json!({"index": index})))
}

/// Remove an instance.
#[utoipa::path(delete, path = "/v1/services/{svc}/instances/{id}", params(("svc" = String, Path), ("id" = String, Path)),
    responses((status = 200, description = "`{index}`"), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn deregister(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((svc, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    state.auth.operator(&headers)?;
    let index = discovery(&state)?.deregister(&svc, &id)?;
    Ok(with_index(index, json!({"index": index})))
}

/// Every route.
#[utoipa::path(get, path = "/v1/routes", responses((status = 200, description = "`{routes: [Route]}`")), security(("bearer" = [])))]
pub async fn list_routes(State(state): State<AppState>, headers: HeaderMap) -> Result<Response, ApiError> {
    state.auth.reader(&headers)?;
    let list = routes(&state)?.list();
    let plain: Vec<&Route> = list.iter().map(|r| r.as_ref()).collect();
    Ok(Json(json!({ "routes": plain })).into_response())
}

/// One route.
#[utoipa::path(get, path = "/v1/routes/{name}", params(("name" = String, Path)),
    responses((status = 200, description = "the route"), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
pub async fn show_route(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    state.auth.reader(&headers)?;
    let route = routes(&state)?.get(&name).ok_or_else(|| ApiError::not_found(format!("no route named `{name}`")))?;
    Ok(Json(route.as_ref().clone()).into_response())
}

/// Add or replace a route.
#[utoipa::path(put, path = "/v1/routes/{name}", params(("name" = String, Path)),
    request_body(content = String, description = "`{service, host?, path_prefix?, router?, strip_prefix?, timeout_ms?}`"),
    responses((status = 200, description = "the route"), (status = 400, body = ErrorBody)), security(("bearer" = [])))]
pub async fn put_route(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: Body,
) -> Result<Response, ApiError> {
    state.auth.operator(&headers)?;
    let body = crate::body::read(body, crate::body::JSON, "a route").await?;
    let mut route: Route = json_body(&body)?;
    if !route.name.is_empty() && route.name != name {
        return Err(ApiError::bad_request(format!("the body names route `{}` but the path `{name}`", route.name)));
    }
    route.name = name;
    routes(&state)?.put(route.clone()).await?;
    Ok((StatusCode::OK, Json(route)).into_response())
}

/// Remove a route.
#[utoipa::path(delete, path = "/v1/routes/{name}", params(("name" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
pub async fn delete_route(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.auth.operator(&headers)?;
    routes(&state)?.delete(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}
