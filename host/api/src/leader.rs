//! Several masters, one leader: `GET /v1/leader`, and the standby's forwarding.
//!
//! A master that does not lead forwards every `/v1` request to the leader's API (as it came: the
//! method, the path and query, the headers with the token, the body streamed), except what it
//! answers itself: `GET /v1/leader`, the event stream (`/v1/events`, the bus is the same
//! everywhere), `/healthz` and `/metrics`, and reads of what lives in the replicated state.
//!
//! **Reads on a standby.** `GET`s of plugins (and their components), tokens, artifacts and routes
//! are answered from the standby's own copy of the state, also while no master leads; add
//! `?consistent` to have the leader answer instead. Every answer from the state carries
//! `X-Shoal-Applied`, the last log entry the answering master had applied, and `X-Shoal-Served-By`,
//! its id. A write forwarded through a standby returns once the standby has applied it too (up to
//! [`READ_YOUR_WRITES`]), so reading back through the same master sees it; through another
//! standby a read may lag the leader by what that one has not applied yet, as in Consul's
//! default-to-stale servers or etcd's serializable reads.
//!
//! A forwarded request carries `X-Shoal-Forwarded-By`;
//! a master that receives one while not leading answers 503 instead of forwarding again, so a
//! request never loops between two masters that disagree for a moment. Without a leader (an
//! election under way) the answer is 503 `no_leader` with `Retry-After: 1`.

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;
use shoal_replication::Role;
use tokio::sync::watch;

use crate::AppState;
use crate::error::ApiError;

/// The header a forwarded request carries: the id of the master that forwarded it.
pub const FORWARDED_BY: &str = "x-shoal-forwarded-by";
/// The header of answers from the state: the last log entry the answering master had applied.
pub const APPLIED: &str = "x-shoal-applied";
/// The header of answers from the state: the answering master's id.
pub const SERVED_BY: &str = "x-shoal-served-by";
/// How long a standby waits to apply a write it forwarded before it answers anyway.
pub const READ_YOUR_WRITES: std::time::Duration = std::time::Duration::from_secs(2);

/// What `GET` reads from the replicated state: a standby answers these itself.
const STATE_READS: [&str; 4] = ["/v1/plugins", "/v1/tokens", "/v1/artifacts", "/v1/routes"];

/// A master's view of the leadership, for the API.
pub struct Leadership {
    id: String,
    api: String,
    role: watch::Receiver<Role>,
    members: Arc<dyn Fn() -> Vec<Member> + Send + Sync>,
    state: Arc<shoal_state::StateDb>,
    client: Client<HttpConnector, Body>,
}

/// A master as the others see it.
#[derive(Clone, Debug, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct Member {
    /// Its id.
    pub id: String,
    /// Its API's URL.
    pub api: String,
}

impl Member {
    /// The holder name a master takes the lease with: `<id>@<api url>`.
    pub fn holder(&self) -> String {
        format!("{}@{}", self.id, self.api)
    }

    /// The member a lease holder name names.
    pub fn from_holder(holder: &str) -> Option<Member> {
        let (id, api) = holder.split_once('@')?;
        Some(Member { id: id.to_owned(), api: api.to_owned() })
    }
}

impl Leadership {
    /// Master `id`, whose API is at `api` (`http://host:port`), following the lease's `role`;
    /// `members` lists the masters seen lately; `state` is this master's copy of the state.
    pub fn new(
        id: &str,
        api: &str,
        role: watch::Receiver<Role>,
        members: Arc<dyn Fn() -> Vec<Member> + Send + Sync>,
        state: Arc<shoal_state::StateDb>,
    ) -> Leadership {
        Leadership {
            id: id.to_owned(),
            api: api.to_owned(),
            role,
            members,
            state,
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    /// This master's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The leader, if one is known, and its term.
    fn leader(&self) -> (Option<Member>, u64) {
        match &*self.role.borrow() {
            Role::Leader { term } => (Some(Member { id: self.id.clone(), api: self.api.clone() }), *term),
            Role::Follower { leader, term } => (leader.as_deref().and_then(Member::from_holder), *term),
        }
    }

    fn leads(&self) -> bool {
        matches!(*self.role.borrow(), Role::Leader { .. })
    }
}

/// `GET /v1/leader`: who leads, with which term, and the masters seen.
pub async fn show(State(state): State<AppState>) -> Result<Response, ApiError> {
    let Some(l) = &state.leadership else {
        return Ok(Json(serde_json::json!({
            "leader": { "id": "local", "api": null }, "term": 1, "self": { "id": "local", "role": "leader" }, "members": []
        }))
        .into_response());
    };
    let (leader, term) = l.leader();
    let role = if l.leads() { "leader" } else { "standby" };
    Ok(Json(serde_json::json!({
        "leader": leader,
        "term": term,
        "self": { "id": l.id, "api": l.api, "role": role },
        "members": (l.members)(),
    }))
    .into_response())
}

/// Whether this master answers `request` itself even when it does not lead.
fn served_here(request: &Request) -> bool {
    let path = request.uri().path();
    // The document is the leader's: it runs the frameworks whose routes it lists.
    !path.starts_with("/v1/") || path == "/v1/leader" || path == "/v1/events"
}

/// Whether `request` reads the replicated state, and may be answered from this master's copy.
fn reads_state(request: &Request) -> bool {
    let path = request.uri().path();
    let consistent =
        request.uri().query().is_some_and(|q| q.split('&').any(|p| p == "consistent" || p.starts_with("consistent=")));
    matches!(*request.method(), axum::http::Method::GET | axum::http::Method::HEAD)
        && !consistent
        && STATE_READS.iter().any(|p| path.strip_prefix(p).is_some_and(|rest| rest.is_empty() || rest.starts_with('/')))
}

/// The middleware: on a standby, forward what the leader must answer.
pub async fn forward(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let Some(l) = state.leadership.clone() else { return next.run(request).await };
    let from_state = reads_state(&request);
    if l.leads() || served_here(&request) || from_state {
        // A read is stamped with what was applied before it (the copy it read had at least
        // that); anything else the leader answers, with what was applied after it (a write it
        // acknowledged is in).
        let before = l.state.applied();
        let mut response = next.run(request).await;
        if from_state {
            stamp(&l, before, &mut response);
        } else if l.leads() {
            stamp(&l, l.state.applied(), &mut response);
        }
        return response;
    }
    if request.headers().contains_key(FORWARDED_BY) {
        return no_leader("this master was forwarded a request but does not lead").into_response();
    }
    let (Some(leader), _) = l.leader() else {
        return no_leader("no master leads right now (an election is under way); retry").into_response();
    };
    match send(&l, &leader, request).await {
        Ok(response) => {
            // Read-your-writes through this master: what the leader had applied when it answered
            // is applied here before the answer goes back.
            let applied = response.headers().get(APPLIED).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
            if let Some(sequence) = applied {
                let _ = tokio::time::timeout(READ_YOUR_WRITES, l.state.wait_applied(sequence)).await;
            }
            response
        }
        Err(e) => no_leader(&format!("the leader {} at {} did not answer: {e}", leader.id, leader.api)).into_response(),
    }
}

/// Mark an answer of this master with the log entry its state had applied and its id.
fn stamp(l: &Leadership, applied: u64, response: &mut Response) {
    let headers = response.headers_mut();
    headers.insert(APPLIED, HeaderValue::from(applied));
    if let Ok(id) = HeaderValue::from_str(&l.id) {
        headers.insert(SERVED_BY, id);
    }
}

async fn send(l: &Leadership, leader: &Member, request: Request) -> Result<Response, String> {
    let (mut parts, body) = request.into_parts();
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    parts.uri = format!("{}{path}", leader.api).parse().map_err(|e| format!("bad leader URL: {e}"))?;
    parts.headers.remove(header::HOST);
    let by = HeaderValue::from_str(&l.id).map_err(|e| e.to_string())?;
    parts.headers.insert(FORWARDED_BY, by);
    // The leader's span for the request is a child of this one's.
    shoal_trace::inject_headers(&mut parts.headers);
    let response = l.client.request(Request::from_parts(parts, body)).await.map_err(|e| e.to_string())?;
    Ok(response.map(Body::new))
}

fn no_leader(message: &str) -> impl IntoResponse + use<> {
    let mut response = ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "no_leader", message).into_response();
    response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    response
}
