//! `/v1/agents`: the agents the resource master knows, active or lost.
//!
//! - `GET /v1/agents`: every agent (`{agents: [AgentView]}`);
//! - `GET /v1/agents/{id}`: one.
//!
//! An agent's `tasks` lists, for an `app:<namespace>` token, only the tasks of its namespace.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use serde_json::json;
use shoal_master::{AgentView, Master};

use crate::AppState;
use crate::auth::Scope;
use crate::dto::ErrorBody;
use crate::error::ApiError;

fn master(state: &AppState) -> Result<std::sync::Arc<Master>, ApiError> {
    state
        .master
        .load_full()
        .ok_or_else(|| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "no_master", "this node does not run the master"))
}

/// The agent as `scope` sees it: an app token sees only its own namespace's tasks on it.
fn for_scope(scope: &Scope, master: &Master, mut agent: AgentView) -> AgentView {
    if !scope.sees_everything() {
        agent.tasks.retain(|id| master.task(id).is_some_and(|t| crate::scoped::may_read_task(scope, &t)));
    }
    agent
}

/// Every agent.
#[utoipa::path(get, path = "/v1/agents",
    responses((status = 200, description = "`{agents: [{id, hostname, attributes, total, state, tasks, registrations, last_seen_ms_ago, registered_at_ms}]}`")),
    security(("bearer" = [])))]
pub async fn list(State(state): State<AppState>, headers: HeaderMap) -> Result<Json<serde_json::Value>, ApiError> {
    let scope = state.auth.reader(&headers)?;
    let master = master(&state)?;
    let agents: Vec<AgentView> = master.agents().into_iter().map(|a| for_scope(&scope, &master, a)).collect();
    Ok(Json(json!({ "agents": agents })))
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
    let scope = state.auth.reader(&headers)?;
    let master = master(&state)?;
    let agent = master.agent(&id).ok_or_else(|| ApiError::not_found(format!("no agent `{id}`")))?;
    Ok(Json(json!(for_scope(&scope, &master, agent))))
}
