//! `/v1/agents`: the agents the resource master knows, active or lost.
//!
//! - `GET /v1/agents`: every agent (`{agents: [AgentView]}`);
//! - `GET /v1/agents/{id}`: one.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use serde_json::json;
use shoal_master::Master;

use crate::AppState;
use crate::dto::ErrorBody;
use crate::error::ApiError;

fn master(state: &AppState) -> Result<&std::sync::Arc<Master>, ApiError> {
    state
        .master
        .as_ref()
        .ok_or_else(|| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "no_master", "this node does not run the master"))
}

/// Every agent.
#[utoipa::path(get, path = "/v1/agents",
    responses((status = 200, description = "`{agents: [{id, hostname, attributes, total, state, tasks, registrations, last_seen_ms_ago, registered_at_ms}]}`")),
    security(("bearer" = [])))]
pub async fn list(State(state): State<AppState>, headers: HeaderMap) -> Result<Json<serde_json::Value>, ApiError> {
    state.auth.reader(&headers)?;
    Ok(Json(json!({ "agents": master(&state)?.agents() })))
}

/// One agent.
#[utoipa::path(get, path = "/v1/agents/{id}", params(("id" = String, Path)),
    responses((status = 200, description = "the agent"), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn show(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    state.auth.reader(&headers)?;
    let agent = master(&state)?.agent(&id).ok_or_else(|| ApiError::not_found(format!("no agent `{id}`")))?;
    Ok(Json(json!(agent)))
}
