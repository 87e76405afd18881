//! Tasks and frameworks of the resource master, and the framework APIs behind it:
//!
//! - `GET /v1/tasks` (`?framework=&service=&state=`), `GET /v1/tasks/{id}`,
//!   `POST /v1/tasks/{id}/kill`, `GET /v1/tasks/{id}/logs?stream=stdout|stderr&tail=N`;
//! - `GET /v1/frameworks`; any method on `/v1/frameworks/{name}/{rest}` is handed to the
//!   framework plugin (`handle-request` with path `/{rest}`);
//! - `/v1/apps[/…]` is the `service` framework's `/apps[/…]`, `/v1/jobs[/…]` the `batch`
//!   framework's `/jobs[/…]`. Before a definition reaches its framework, the host refuses one that
//!   asks for more than any active agent has (422), since a framework only ever sees offers.
//!
//! Reads need any token; kills and framework requests other than `GET` need an operator token.
//! An `app:<namespace>` token sees only what belongs to its namespace (`crate::scoped`): its own
//! tasks (others are left out of listings and are 403, logs included), `/v1/apps/<namespace>…`
//! and `/v1/jobs/<namespace>…` (listings of all and frameworks' own APIs are 403), and no
//! artifact downloads.

use std::collections::BTreeMap;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, RawQuery, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;
use shoal_bus::subject;
use shoal_master::{Master, MasterError};
use shoal_protocol::Resources;

use crate::AppState;
use crate::dto::ErrorBody;
use crate::error::ApiError;
use crate::scoped;

fn master(state: &AppState) -> Result<std::sync::Arc<Master>, ApiError> {
    state
        .master
        .load_full()
        .ok_or_else(|| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "no_master", "this node does not run the master"))
}

/// Filters of `GET /v1/tasks`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskFilter {
    framework: Option<String>,
    service: Option<String>,
    state: Option<String>,
}

/// Every task the master knows (live ones, finished ones for a few minutes).
#[utoipa::path(get, path = "/v1/tasks",
    params(("framework" = Option<String>, Query), ("service" = Option<String>, Query), ("state" = Option<String>, Query)),
    responses((status = 200, description = "`{tasks: [{id, framework, agent_id, hostname, command, resources, env, labels, state, healthy, message, created_ms, updated_ms}]}`")),
    security(("bearer" = [])))]
pub async fn list_tasks(
    State(state): State<AppState>,
    headers: HeaderMap,
    filter: Result<Query<TaskFilter>, QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let scope = state.auth.reader(&headers)?;
    let Query(filter) = filter.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let tasks: Vec<_> = master(&state)?
        .tasks()
        .into_iter()
        .filter(|t| scoped::may_read_task(&scope, t))
        .map(|t| scoped::task_for(&scope, t))
        .filter(|t| filter.framework.as_ref().is_none_or(|f| *f == t.info.framework))
        .filter(|t| filter.service.as_ref().is_none_or(|s| Some(s.as_str()) == t.service()))
        .filter(|t| filter.state.as_ref().is_none_or(|s| *s == t.state.as_str()))
        .collect();
    Ok(Json(json!({ "tasks": tasks })))
}

/// One task.
#[utoipa::path(get, path = "/v1/tasks/{id}", params(("id" = String, Path)),
    responses((status = 200, description = "the task"), (status = 403, body = ErrorBody, description = "an app token and a task of another namespace"), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn show_task(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let scope = state.auth.reader(&headers)?;
    let task = master(&state)?.task(&id).ok_or_else(|| ApiError::not_found(format!("no task `{id}`")))?;
    scoped::check_task(&scope, &task)?;
    Ok(Json(json!(scoped::task_for(&scope, task))))
}

/// Kill a task (SIGTERM, then SIGKILL after the agent's grace period). Its framework learns it
/// from the `killed` status update and may start a replacement.
#[utoipa::path(post, path = "/v1/tasks/{id}/kill", params(("id" = String, Path)),
    responses((status = 202, description = "the kill was sent"), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn kill_task(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    state.auth.operator(&headers)?;
    let master = master(&state)?;
    if master.task(&id).is_none() {
        return Err(ApiError::not_found(format!("no task `{id}`")));
    }
    master.kill_task(&id).await.map_err(|e| ApiError::new(StatusCode::CONFLICT, "conflict", e.to_string()))?;
    Ok((StatusCode::ACCEPTED, Json(json!({ "id": id, "kill": "sent" }))))
}

/// Query of the logs endpoint.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogsQuery {
    stream: Option<String>,
    tail: Option<usize>,
}

/// A task's captured output (the newest bytes the agent kept), as text. Header
/// `x-shoal-dropped` says how many older bytes are gone.
#[utoipa::path(get, path = "/v1/tasks/{id}/logs",
    params(("id" = String, Path), ("stream" = Option<String>, Query, description = "`stdout` (default) or `stderr`"), ("tail" = Option<usize>, Query, description = "at most this many bytes")),
    responses((status = 200, description = "the output, text/plain"), (status = 403, body = ErrorBody, description = "an app token and a task of another namespace"), (status = 404, body = ErrorBody), (status = 502, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn task_logs(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    q: Result<Query<LogsQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let scope = state.auth.reader(&headers)?;
    let Query(q) = q.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let stream = q.stream.unwrap_or_else(|| "stdout".into());
    if stream != "stdout" && stream != "stderr" {
        return Err(ApiError::bad_request(format!("stream `{stream}` is neither `stdout` nor `stderr`")));
    }
    let master = master(&state)?;
    let task = master.task(&id).ok_or_else(|| ApiError::not_found(format!("no task `{id}`")))?;
    scoped::check_task(&scope, &task)?;
    let logs = master
        .task_logs(&id, &stream, q.tail)
        .await
        .map_err(|e| ApiError::new(StatusCode::BAD_GATEWAY, "agent", e.to_string()))?;
    if !logs.found {
        return Err(ApiError::not_found(format!("the agent of task `{id}` no longer keeps its output")));
    }
    Ok((
        [("content-type", "text/plain; charset=utf-8".to_owned()), ("x-shoal-dropped", logs.dropped.to_string())],
        logs.data,
    )
        .into_response())
}

/// Every framework: name, role, weight, quota, plugin, suppressed, decline filters, live tasks,
/// outstanding offers, allocation.
#[utoipa::path(get, path = "/v1/frameworks",
    responses((status = 200, description = "`{frameworks: [...]}`")),
    security(("bearer" = [])))]
pub async fn list_frameworks(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    state.auth.reader(&headers)?;
    Ok(Json(json!({ "frameworks": master(&state)?.framework_views() })))
}

/// `/v1/frameworks/{name}/{rest}`: handed to the framework plugin.
pub async fn framework_request(
    State(state): State<AppState>,
    method: Method,
    headers: HeaderMap,
    Path((name, rest)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    body: Body,
) -> Result<Response, ApiError> {
    scoped::check_operator(&state.auth.reader(&headers)?, "a framework's own API")?;
    framework_caller(&state, &method, &headers)?;
    let body = crate::body::read(body, crate::body::FRAMEWORK, "a framework request").await?;
    forward(&state, &name, method, &headers, format!("/{rest}"), query, body).await
}

/// Longest a framework may take to describe its API for `/v1/openapi.json`.
const DESCRIBE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// The documents of the framework plugins this node runs (their answers to `GET /openapi.json`),
/// by name; a framework that does not describe itself, or fails to in time, is left out.
pub async fn framework_documents(state: &AppState) -> Vec<(String, serde_json::Value)> {
    let Some(master) = state.master.load_full() else { return Vec::new() };
    let mut names: Vec<String> =
        master.framework_views().into_iter().filter(|v| v.plugin).map(|v| v.spec.name.clone()).collect();
    names.sort();
    let mut documents = Vec::new();
    for name in names {
        let request = shoal_abi::HttpRequest {
            method: "GET".into(),
            path: "/openapi.json".into(),
            query: String::new(),
            headers: Vec::new(),
            body: Vec::new(),
        };
        let answer = tokio::time::timeout(DESCRIBE_TIMEOUT, master.framework_request(&name, request)).await;
        match answer {
            Ok(Ok(response)) if response.status == 200 => match serde_json::from_slice(&response.body) {
                Ok(doc @ serde_json::Value::Object(_)) => documents.push((name, doc)),
                _ => tracing::debug!(framework = %name, "its /openapi.json is not a JSON object; left out"),
            },
            Ok(Ok(response)) => {
                tracing::debug!(framework = %name, status = response.status, "it does not describe its API")
            }
            Ok(Err(e)) => tracing::debug!(framework = %name, error = %e, "cannot ask it for its API"),
            Err(_) => tracing::debug!(framework = %name, "no description of its API within 2 s"),
        }
    }
    documents
}

/// `/v1/apps[/…]` → the `service` framework.
pub async fn apps(
    State(state): State<AppState>,
    method: Method,
    headers: HeaderMap,
    rest: Option<Path<String>>,
    RawQuery(query): RawQuery,
    body: Body,
) -> Result<Response, ApiError> {
    let rest = rest.map(|Path(r)| r);
    let scope = state.auth.reader(&headers)?;
    scoped::check_definition(&scope, "app", rest.as_deref().map(|r| r.split('/').next().unwrap_or_default()))?;
    framework_caller(&state, &method, &headers)?;
    let body = crate::body::read(body, crate::body::FRAMEWORK, "a framework request").await?;
    let path = match &rest {
        Some(rest) => format!("/apps/{rest}"),
        None => "/apps".to_owned(),
    };
    if method == Method::PUT || method == Method::POST {
        fits_some_agent(master(&state)?.as_ref(), &body, "app")?;
    }
    let response = forward(&state, "service", method.clone(), &headers, path, query, body).await?;
    announce(&state, "app", &method, rest.as_deref(), response.status()).await;
    Ok(response)
}

/// An event for a successful change through `/v1/apps` or `/v1/jobs`: `deployed` (PUT),
/// `deleted` (DELETE), or the last path segment of a POST (`scaled`, `restarted`, `run`).
async fn announce(state: &AppState, kind: &str, method: &Method, rest: Option<&str>, status: StatusCode) {
    if !status.is_success() || method == Method::GET || method == Method::HEAD {
        return;
    }
    let Some(rest) = rest else { return };
    let mut parts = rest.split('/');
    let id = parts.next().unwrap_or_default();
    let action = match (method.as_str(), parts.next()) {
        ("PUT", None) => "deployed",
        ("DELETE", None) => "deleted",
        ("POST", Some("scale")) => "scaled",
        ("POST", Some("restart")) => "restarted",
        ("POST", Some("run")) => "run",
        _ => return,
    };
    let subject = if kind == "app" { subject::app_event(id, action) } else { subject::job_event(id, action) };
    let event = shoal_bus::event::CloudEvent::new(
        shoal_bus::event::source("api"),
        format!("io.shoal.{kind}.{action}"),
        format!("{kind}s/{id}"),
        json!({ "id": id, "action": action }),
    );
    if let Err(e) = shoal_bus::event::publish_event(state.bus.as_ref(), &subject, &event).await {
        tracing::warn!(cause = %e, %subject, "event not published");
    }
}

/// `/v1/jobs[/…]` → the `batch` framework.
pub async fn jobs(
    State(state): State<AppState>,
    method: Method,
    headers: HeaderMap,
    rest: Option<Path<String>>,
    RawQuery(query): RawQuery,
    body: Body,
) -> Result<Response, ApiError> {
    let rest = rest.map(|Path(r)| r);
    let scope = state.auth.reader(&headers)?;
    scoped::check_definition(&scope, "job", rest.as_deref().map(|r| r.split('/').next().unwrap_or_default()))?;
    framework_caller(&state, &method, &headers)?;
    let body = crate::body::read(body, crate::body::FRAMEWORK, "a framework request").await?;
    let path = match &rest {
        Some(rest) => format!("/jobs/{rest}"),
        None => "/jobs".to_owned(),
    };
    if method == Method::PUT || method == Method::POST {
        fits_some_agent(master(&state)?.as_ref(), &body, "job")?;
    }
    let response = forward(&state, "batch", method.clone(), &headers, path, query, body).await?;
    announce(&state, "job", &method, rest.as_deref(), response.status()).await;
    Ok(response)
}

/// Who may call a framework's API: any token reads (GET, HEAD), an operator or admin writes.
fn framework_caller(state: &AppState, method: &Method, headers: &HeaderMap) -> Result<(), ApiError> {
    if method == Method::GET || method == Method::HEAD {
        state.auth.reader(headers)?;
    } else {
        state.auth.operator(headers)?;
    }
    Ok(())
}

/// Hand a request to framework `framework` (its caller checked the token: [`framework_caller`]).
async fn forward(
    state: &AppState,
    framework: &str,
    method: Method,
    headers: &HeaderMap,
    path: String,
    query: Option<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let request = shoal_abi::HttpRequest {
        method: method.as_str().to_owned(),
        path,
        query: query.unwrap_or_default(),
        headers: headers
            .iter()
            .filter(|(k, _)| *k != axum::http::header::AUTHORIZATION)
            .filter_map(|(k, v)| Some((k.as_str().to_owned(), v.to_str().ok()?.to_owned())))
            .collect(),
        body: body.to_vec(),
    };
    let master = master(state)?;
    let response = master.framework_request(framework, request).await.map_err(|e| match e {
        // A framework whose plugin was deleted runs no more: nothing answers at this path.
        MasterError::NoFramework(_) | MasterError::NoFrameworkPlugin(_) => ApiError::not_found(e.to_string()),
        MasterError::FrameworkBusy { .. } => {
            ApiError::new(StatusCode::TOO_MANY_REQUESTS, "framework_busy", e.to_string())
        }
        e => ApiError::new(StatusCode::BAD_GATEWAY, "framework_failed", format!("framework `{framework}`: {e}")),
    })?;
    let status = StatusCode::from_u16(response.status).unwrap_or(StatusCode::BAD_GATEWAY);
    let error = (status.is_client_error() || status.is_server_error()).then(|| framework_error(status, &response.body));
    let mut out = Response::builder().status(status);
    for (k, v) in &response.headers {
        if let (Ok(name), Ok(value)) =
            (axum::http::HeaderName::try_from(k.as_str()), axum::http::HeaderValue::try_from(v.as_str()))
            && !matches!(name.as_str(), "content-length" | "transfer-encoding" | "connection")
            && !(error.is_some() && name == axum::http::header::CONTENT_TYPE)
        {
            out = out.header(name, value);
        }
    }
    let body = match error {
        Some(error) => {
            out = out.header(axum::http::header::CONTENT_TYPE, "application/json");
            serde_json::to_vec(&error).unwrap_or_default()
        }
        None => response.body,
    };
    out.body(axum::body::Body::from(body))
        .map_err(|e| ApiError::new(StatusCode::BAD_GATEWAY, "framework_failed", e.to_string()))
}

/// A framework's error answer in the API's one error shape, `{"error": {"code", "message"}}`:
/// its own `{"error": "…"}` (or any other body: JSON with a `message`, or text) becomes the
/// message, and the code follows the status. An answer already in the shape is kept.
fn framework_error(status: StatusCode, body: &[u8]) -> crate::dto::ErrorBody {
    use crate::dto::{ErrorBody, ErrorDetail};
    let parsed: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    if let Some(ok) = parsed.as_ref().and_then(|v| serde_json::from_value::<ErrorBody>(v.clone()).ok()) {
        return ok;
    }
    let message = match &parsed {
        Some(serde_json::Value::Object(o)) => match (o.get("error"), o.get("message")) {
            (Some(serde_json::Value::String(m)), _) | (_, Some(serde_json::Value::String(m))) => m.clone(),
            _ => serde_json::Value::Object(o.clone()).to_string(),
        },
        Some(serde_json::Value::String(m)) => m.clone(),
        _ => String::from_utf8_lossy(body).trim().to_owned(),
    };
    let mut message =
        if message.is_empty() { status.canonical_reason().unwrap_or("error").to_lowercase() } else { message };
    if message.len() > 4096 {
        message.truncate(message.floor_char_boundary(4096));
        message.push('…');
    }
    let code = match status.as_u16() {
        400 => "bad_request",
        401 => "unauthorized",
        403 => "forbidden",
        404 => "not_found",
        405 => "method_not_allowed",
        409 => "conflict",
        410 => "gone",
        412 => "precondition_failed",
        413 => "too_large",
        422 => "unprocessable",
        429 => "too_many_requests",
        503 => "unavailable",
        s if s >= 500 => "framework_error",
        _ => "framework_refused",
    };
    ErrorBody { error: ErrorDetail { code: code.to_owned(), message } }
}

/// Refuse a definition that no active agent could ever hold (`cpus`, `mem`, `disk` and the
/// number of `ports`), naming the largest agent. Malformed bodies pass: the framework answers
/// them with its own 400.
fn fits_some_agent(master: &Master, body: &[u8], what: &str) -> Result<(), ApiError> {
    let Ok(def) = serde_json::from_slice::<serde_json::Value>(body) else { return Ok(()) };
    let num = |k: &str| def.get(k).and_then(serde_json::Value::as_f64).unwrap_or(0.0);
    let ports = match def.get("ports") {
        Some(serde_json::Value::Number(n)) => n.as_u64().unwrap_or(0),
        Some(serde_json::Value::Array(a)) => a.len() as u64,
        _ => 0,
    };
    let (cpus, mem, disk) = (num("cpus"), num("mem"), num("disk"));
    if !(cpus.is_finite() && mem.is_finite() && disk.is_finite()) || cpus <= 0.0 && mem <= 0.0 {
        return Ok(()); // the framework's validation says what is wrong
    }
    let agents = master.active_agent_totals();
    if agents.is_empty() {
        return Ok(());
    }
    let port_count = |r: &Resources| r.ports.iter().map(|p| u64::from(p.end - p.begin) + 1).sum::<u64>();
    let fits = |r: &Resources| cpus <= r.cpus && mem <= r.mem_mb && disk <= r.disk_mb && ports <= port_count(r);
    if agents.iter().any(|(_, r)| fits(r)) {
        return Ok(());
    }
    let mut largest: BTreeMap<&str, String> = BTreeMap::new();
    let max = |f: &dyn Fn(&Resources) -> f64| agents.iter().map(|(_, r)| f(r)).fold(0.0, f64::max);
    largest.insert("cpus", format!("{}", max(&|r| r.cpus)));
    largest.insert("mem", format!("{}", max(&|r| r.mem_mb)));
    largest.insert("disk", format!("{}", max(&|r| r.disk_mb)));
    largest.insert("ports", format!("{}", max(&|r| port_count(r) as f64)));
    let largest: Vec<String> = largest.iter().map(|(k, v)| format!("{k} {v}")).collect();
    Err(ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "unschedulable",
        format!(
            "this {what} asks for cpus {cpus}, mem {mem}, disk {disk}, ports {ports}: more than any of the {} active \
             agents has (largest: {})",
            agents.len(),
            largest.join(", ")
        ),
    ))
}

fn artifacts(state: &AppState) -> Result<&std::sync::Arc<shoal_task_io::ArtifactStore>, ApiError> {
    state
        .artifacts
        .as_ref()
        .ok_or_else(|| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "no_master", "this node does not keep artifacts"))
}

/// Every artifact: `{artifacts: [{digest, size}]}`.
#[utoipa::path(get, path = "/v1/artifacts",
    responses((status = 200, description = "`{artifacts: [{digest, size}]}`")),
    security(("bearer" = [])))]
pub async fn list_artifacts(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    state.auth.reader(&headers)?;
    Ok(Json(json!({ "artifacts": artifacts(&state)?.list() })))
}

/// Upload a Wasm component for Wasm tasks (the body is the component); answers its digest, the
/// name apps and jobs use (`"wasm": "<digest>"`).
#[utoipa::path(post, path = "/v1/artifacts",
    request_body(content = Vec<u8>, content_type = "application/wasm"),
    responses((status = 201, description = "`{digest, size}`"), (status = 400, body = ErrorBody), (status = 413, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn push_artifact(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    state.auth.operator(&headers)?;
    let body = crate::body::read(body, state.max_upload, "the artifact").await?;
    let info = artifacts(&state)?.put(&body).await.map_err(|e| match e {
        shoal_task_io::ArtifactError::State(shoal_state::StateError::NotLeader) => {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not_leader", e.to_string())
        }
        shoal_task_io::ArtifactError::Io { .. } | shoal_task_io::ArtifactError::State(_) => {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "storage", e.to_string())
        }
        e => ApiError::bad_request(e.to_string()),
    })?;
    Ok((StatusCode::CREATED, Json(json!(info))))
}

/// Download an artifact.
#[utoipa::path(get, path = "/v1/artifacts/{digest}", params(("digest" = String, Path)),
    responses((status = 200, description = "the component"), (status = 403, body = ErrorBody, description = "an app token"), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn get_artifact(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(digest): Path<String>,
) -> Result<Response, ApiError> {
    scoped::check_operator(&state.auth.reader(&headers)?, "downloading an artifact")?;
    let bytes =
        artifacts(&state)?.get(&digest).ok_or_else(|| ApiError::not_found(format!("no artifact `{digest}`")))?;
    Ok(([("content-type", "application/wasm")], bytes).into_response())
}

/// Body of `PUT /v1/allocator`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AllocatorChoice {
    /// Name of an active allocator plugin.
    pub plugin: String,
}

/// The allocator plugin the master's cycles call.
#[utoipa::path(get, path = "/v1/allocator",
    responses((status = 200, description = "`{plugin}`")),
    security(("bearer" = [])))]
pub async fn get_allocator(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    state.auth.reader(&headers)?;
    Ok(Json(json!({ "plugin": master(&state)?.allocator() })))
}

/// Switch the allocator plugin live: the next cycle calls it (admin only).
#[utoipa::path(put, path = "/v1/allocator", request_body = AllocatorChoice,
    responses((status = 200, description = "`{plugin, previous}`"), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn put_allocator(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<serde_json::Value>, ApiError> {
    state.auth.admin(&headers)?;
    let body = crate::body::read(body, crate::body::JSON, "an allocator choice").await?;
    let choice: AllocatorChoice = crate::error::json_body(&body)?;
    let previous = master(&state)?.set_allocator(&choice.plugin).map_err(|e| ApiError::not_found(e.to_string()))?;
    let event = shoal_bus::event::CloudEvent::new(
        shoal_bus::event::source("api"),
        "io.shoal.allocator.switched",
        format!("allocators/{}", choice.plugin),
        json!({ "plugin": choice.plugin, "previous": previous }),
    );
    let _ = shoal_bus::event::publish_event(state.bus.as_ref(), &subject::allocator_switched(), &event).await;
    Ok(Json(json!({ "plugin": choice.plugin, "previous": previous })))
}
