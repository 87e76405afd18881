//! Bearer tokens and scopes.
//!
//! | scope | may |
//! | --- | --- |
//! | `admin` | everything: plugins, tokens, the allocator, system namespaces, command health checks |
//! | `operator` | read everything (check output included); apps, jobs, tasks, services, routes, artifacts, KV outside system namespaces |
//! | `app:<namespace>` | its own KV namespace, and reading what belongs to it (see `crate::scoped`) |
//!
//! Every `/v1` endpoint needs a valid, unexpired token. Tokens are kept as sha256 digests, never
//! in clear: in memory and, on a master, in the table [`TOKENS_TABLE`] of its state (one key per
//! token, the digest; see [`table`]), committed before a token is handed out or a revocation is
//! answered, so issued tokens survive a restart and reach every master. Each master's table
//! follows the commits it applies, so a token revoked on the leader stops working on every
//! master. A token is named by its **id**, the first [`ID_LEN`] hex digits of its digest: enough
//! to list and revoke it, useless to authenticate. The admin token is apart: the node sets it
//! ([`Auth::set_admin_token`]); it is listed too, never stored in the table, and replaced by
//! rotating `admin.token`, not revoked.
//!
//! Earlier versions kept issued tokens in a `tokens` file; [`migrate_token_file`] moves one into
//! the table.

mod table;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode};
use parking_lot::RwLock;
use sha2::{Digest, Sha256};
use shoal_state::{Batch, StateDb, StateError};

pub use table::{TOKENS_TABLE, migrate_token_file};

use crate::AppState;
use crate::dto::{TokenInfo, TokenList, TokenRequest, TokenResponse};
use crate::error::ApiError;

/// Hex digits of a digest that name a token (48 bits: unique among any number of tokens an
/// operator issues, and of no use for guessing the token itself).
pub const ID_LEN: usize = 12;
/// The longest TTL a token may get (ten years): longer is a token that never expires, which is
/// what leaving `ttl` out says.
pub const MAX_TTL: Duration = Duration::from_secs(3650 * 24 * 3600);

/// What a token may do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Everything.
    Admin,
    /// Apps and reading.
    Operator,
    /// One KV namespace.
    App(String),
}

impl Scope {
    /// Parse `admin`, `operator` or `app:<namespace>`.
    pub fn parse(text: &str) -> Option<Scope> {
        match text {
            "admin" => Some(Scope::Admin),
            "operator" => Some(Scope::Operator),
            _ => {
                let ns = text.strip_prefix("app:")?;
                let valid = !ns.is_empty()
                    && ns.len() <= 63
                    && ns.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
                valid.then(|| Scope::App(ns.to_owned()))
            }
        }
    }

    /// Admin and operator tokens see everything that is read (check output included); app
    /// tokens only what belongs to their namespace.
    pub fn sees_everything(&self) -> bool {
        matches!(self, Scope::Admin | Scope::Operator)
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Scope::Admin => f.write_str("admin"),
            Scope::Operator => f.write_str("operator"),
            Scope::App(ns) => write!(f, "app:{ns}"),
        }
    }
}

/// One token as the table keeps it.
#[derive(Clone, Debug)]
struct Entry {
    scope: Scope,
    /// Issued at, ms since the Unix epoch; unknown for tokens of the older file format.
    created_ms: Option<u64>,
    /// Stops working at, ms since the Unix epoch; never without.
    expires_ms: Option<u64>,
}

/// Wall-clock milliseconds since the Unix epoch. Expiry is a wall-clock date (it survives a
/// restart in the token table), so the table reads a clock it is given: tests move it.
pub type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

fn system_clock() -> Clock {
    Arc::new(|| std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64))
}

/// Why a token could not be issued, revoked or loaded. Nothing changed.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// No token has this id.
    #[error("no token with id `{0}`")]
    NotFound(String),
    /// The id is the node's admin token, which is rotated through its file, not revoked.
    #[error("`{0}` is the node's admin token: replace it by rotating admin.token and restarting the node")]
    NodeToken(String),
    /// The state refused the change or could not be read ([`StateError::NotLeader`] on a master
    /// that does not lead).
    #[error("the token table: {0}")]
    State(#[from] StateError),
    /// An entry of the table does not parse.
    #[error("the token table holds an unreadable entry `{key}`: {reason}")]
    Corrupt {
        /// The entry's key.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A token file of an earlier version could not be read or has a line that does not parse.
    #[error("token file {file}: {problem}")]
    File {
        /// The file.
        file: String,
        /// What went wrong.
        problem: String,
    },
}

impl From<TokenError> for ApiError {
    fn from(err: TokenError) -> Self {
        match err {
            TokenError::NotFound(_) => ApiError::not_found(err.to_string()),
            TokenError::NodeToken(_) => ApiError::new(StatusCode::CONFLICT, "node_token", err.to_string()),
            TokenError::State(StateError::NotLeader) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not_leader", err.to_string())
            }
            _ => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "storage", err.to_string()),
        }
    }
}

/// The token table.
pub struct Auth {
    /// Issued tokens by digest (the admin token is apart).
    tokens: RwLock<HashMap<String, Entry>>,
    /// Where issued tokens are kept, if anywhere: table [`TOKENS_TABLE`] of the master's state.
    state: Option<Arc<StateDb>>,
    admin_digest: RwLock<String>,
    clock: Clock,
}

fn digest(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// A new random token: `shoal_` and 32 hex digits (128 bits from the OS).
pub fn generate_token() -> String {
    format!("shoal_{}", uuid::Uuid::new_v4().simple())
}

/// Parse a TTL: a positive whole number without leading zeros and a unit, `s`, `m`, `h` or `d`
/// (`90s`, `30m`, `1h`, `7d`), at most [`MAX_TTL`] ([`TTL_PATTERN`] says the same).
pub fn parse_ttl(text: &str) -> Option<Duration> {
    let split = text.find(|c: char| !c.is_ascii_digit())?;
    let (number, unit) = text.split_at(split);
    if number.starts_with('0') {
        return None;
    }
    let n: u64 = number.parse().ok().filter(|n| *n > 0)?;
    let unit = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return None,
    };
    let ttl = Duration::from_secs(n.checked_mul(unit)?);
    (ttl <= MAX_TTL).then_some(ttl)
}

/// What [`parse_ttl`] takes, as a regular expression (for the OpenAPI document): each unit's
/// numbers from 1 to [`MAX_TTL`] (315360000 s, 5256000 m, 87600 h, 3650 d).
pub const TTL_PATTERN: &str = concat!(
    "^(",
    "([1-9][0-9]{0,7}|[12][0-9]{8}|30[0-9]{7}|31[0-4][0-9]{6}|315[0-2][0-9]{5}|3153[0-5][0-9]{4}|315360000)s",
    "|([1-9][0-9]{0,5}|[1-4][0-9]{6}|5[01][0-9]{5}|52[0-4][0-9]{4}|525[0-5][0-9]{3}|5256000)m",
    "|([1-9][0-9]{0,3}|[1-7][0-9]{4}|8[0-6][0-9]{3}|87[0-5][0-9]{2}|87600)h",
    "|([1-9][0-9]{0,2}|[12][0-9]{3}|3[0-5][0-9]{2}|36[0-4][0-9]|3650)d",
    ")$"
);

impl Auth {
    /// A table with one admin token, in memory only.
    pub fn new(admin_token: &str) -> Self {
        Auth {
            tokens: RwLock::new(HashMap::new()),
            state: None,
            admin_digest: RwLock::new(digest(admin_token)),
            clock: system_clock(),
        }
    }

    /// The same table reading time from `clock` (ms since the Unix epoch) instead of the system.
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// The same table kept in `state` (table [`TOKENS_TABLE`], which `state` must have): loaded
    /// now, and following every change this member applies from then on, so a token issued or
    /// revoked on the leader is (or stops being) valid here too. An entry that does not parse is
    /// an error: a token table is not something to half-load.
    pub fn backed_by(mut self, state: Arc<StateDb>) -> Result<Arc<Auth>, TokenError> {
        let watch = state.watch(TOKENS_TABLE);
        self.tokens = RwLock::new(table::load(&state)?);
        self.state = Some(state);
        let auth = Arc::new(self);
        tokio::spawn(table::follow(Arc::downgrade(&auth), watch));
        Ok(auth)
    }

    /// Make `token` the admin token (the old one stops working at once): the node calls this when
    /// it learns the cluster's admin token.
    pub fn set_admin_token(&self, token: &str) {
        *self.admin_digest.write() = digest(token);
    }

    fn now_ms(&self) -> u64 {
        (self.clock)()
    }

    /// Add a token that never expires; with a state, it is committed when this returns.
    pub async fn insert(&self, token: &str, scope: Scope) -> Result<(), TokenError> {
        self.issue(token, scope, None).await.map(|_| ())
    }

    /// Add a token, valid for `ttl` from now (forever without); with a state, it is committed
    /// (durable, and on its way to every master) when this returns `Ok`, and nothing changed
    /// otherwise.
    pub async fn issue(&self, token: &str, scope: Scope, ttl: Option<Duration>) -> Result<TokenInfo, TokenError> {
        let now = self.now_ms();
        let entry =
            Entry { scope, created_ms: Some(now), expires_ms: ttl.map(|t| now.saturating_add(t.as_millis() as u64)) };
        let d = digest(token);
        match &self.state {
            None => {
                self.tokens.write().insert(d.clone(), entry.clone());
            }
            Some(state) => {
                let mut batch = Batch::new();
                batch.put(TOKENS_TABLE, d.as_bytes(), table::encode(&entry));
                state.commit(batch).await?;
                self.reread(state, &[d.clone().into_bytes()]);
            }
        }
        Ok(self.info(&d, &entry, now))
    }

    fn info(&self, d: &str, e: &Entry, now: u64) -> TokenInfo {
        TokenInfo {
            id: d[..ID_LEN].to_owned(),
            scope: e.scope.to_string(),
            created_ms: e.created_ms,
            expires_ms: e.expires_ms,
            expired: e.expires_ms.is_some_and(|at| at <= now),
            node: *d == *self.admin_digest.read(),
        }
    }

    /// Every token, without its secret: the node's admin token first, then by age.
    pub fn list(&self) -> Vec<TokenInfo> {
        let now = self.now_ms();
        let admin = self.admin_digest.read().clone();
        let admin_entry = Entry { scope: Scope::Admin, created_ms: None, expires_ms: None };
        let mut list: Vec<TokenInfo> = self
            .tokens
            .read()
            .iter()
            .filter(|(d, _)| **d != admin)
            .map(|(d, e)| self.info(d, e, now))
            .chain([self.info(&admin, &admin_entry, now)])
            .collect();
        list.sort_by(|a, b| b.node.cmp(&a.node).then(a.created_ms.cmp(&b.created_ms)).then(a.id.cmp(&b.id)));
        list
    }

    /// Revoke the token whose id is `id`: it stops working at once (and, with a state, on every
    /// master once they apply the commit, which is done when this returns `Ok`).
    pub async fn revoke(&self, id: &str) -> Result<TokenInfo, TokenError> {
        let now = self.now_ms();
        let id_lower = id.to_ascii_lowercase();
        if id.len() == ID_LEN && self.admin_digest.read().starts_with(&id_lower) {
            return Err(TokenError::NodeToken(id.to_owned()));
        }
        let found = (id.len() == ID_LEN)
            .then(|| {
                self.tokens.read().iter().find(|(d, _)| d.starts_with(&id_lower)).map(|(d, e)| (d.clone(), e.clone()))
            })
            .flatten();
        let Some((d, entry)) = found else { return Err(TokenError::NotFound(id.to_owned())) };
        match &self.state {
            None => {
                self.tokens.write().remove(&d);
            }
            Some(state) => {
                let mut batch = Batch::new();
                batch.delete(TOKENS_TABLE, d.as_bytes());
                state.commit(batch).await?;
                self.reread(state, &[d.clone().into_bytes()]);
            }
        }
        Ok(self.info(&d, &entry, now))
    }

    /// Bring the named keys of the table up to date from `state` (under the table's lock, so a
    /// later reread never loses to an earlier one).
    fn reread(&self, state: &StateDb, keys: &[Vec<u8>]) {
        let mut tokens = self.tokens.write();
        for key in keys {
            table::reread(state, &mut tokens, key);
        }
    }

    /// The scope of the bearer token in `headers`; 401 for a missing, unknown or expired one.
    pub fn scope(&self, headers: &HeaderMap) -> Result<Scope, ApiError> {
        let unauthorized = |message: String| ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message);
        let value = headers
            .get(axum::http::header::AUTHORIZATION)
            .ok_or_else(|| unauthorized("missing `Authorization: Bearer <token>` header".into()))?;
        let token = value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| unauthorized("authorization must be `Bearer <token>`".into()))?;
        let d = digest(token.trim());
        if d == *self.admin_digest.read() {
            return Ok(Scope::Admin);
        }
        let entry = self.tokens.read().get(&d).cloned().ok_or_else(|| unauthorized("unknown token".into()))?;
        match entry.expires_ms {
            Some(at) if at <= self.now_ms() => Err(unauthorized(format!(
                "token `{}` expired at {at} ms since the Unix epoch; ask an admin for a new one (shoal token create)",
                &d[..ID_LEN]
            ))),
            _ => Ok(entry.scope),
        }
    }

    /// Any valid token.
    pub fn reader(&self, headers: &HeaderMap) -> Result<Scope, ApiError> {
        self.scope(headers)
    }

    /// An admin or operator token.
    pub fn operator(&self, headers: &HeaderMap) -> Result<Scope, ApiError> {
        match self.scope(headers)? {
            scope @ (Scope::Admin | Scope::Operator) => Ok(scope),
            other => Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!("this needs the admin or operator scope; the token has `{other}`"),
            )),
        }
    }

    /// An admin token.
    pub fn admin(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        match self.scope(headers)? {
            Scope::Admin => Ok(()),
            other => Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!("this needs the admin scope; the token has `{other}`"),
            )),
        }
    }
}

/// `POST /v1/tokens`: issue a token with a scope and, optionally, a TTL (admin only). The token
/// is in this answer only.
#[utoipa::path(post, path = "/v1/tokens", request_body = TokenRequest,
    responses((status = 201, body = TokenResponse), (status = 400, body = crate::dto::ErrorBody), (status = 401, body = crate::dto::ErrorBody), (status = 403, body = crate::dto::ErrorBody)),
    security(("bearer" = [])))]
pub async fn issue(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<(StatusCode, Json<TokenResponse>), ApiError> {
    state.auth.admin(&headers)?;
    let body = crate::body::read(body, crate::body::JSON, "a token request").await?;
    let request: TokenRequest = crate::error::json_body(&body)?;
    let scope = Scope::parse(&request.scope).ok_or_else(|| {
        ApiError::bad_request(format!("invalid scope `{}`: use admin, operator or app:<namespace>", request.scope))
    })?;
    let ttl = match &request.ttl {
        None => None,
        Some(text) => Some(parse_ttl(text).ok_or_else(|| {
            ApiError::bad_request(format!(
                "invalid ttl `{text}`: a whole number and s, m, h or d (`30m`, `1h`, `7d`), at most 3650d"
            ))
        })?),
    };
    let token = generate_token();
    let info = state.auth.issue(&token, scope, ttl).await?;
    Ok((StatusCode::CREATED, Json(TokenResponse { token, info })))
}

/// `GET /v1/tokens`: every token without its secret (admin only).
#[utoipa::path(get, path = "/v1/tokens",
    responses((status = 200, body = TokenList), (status = 401, body = crate::dto::ErrorBody), (status = 403, body = crate::dto::ErrorBody)),
    security(("bearer" = [])))]
pub async fn list(State(state): State<AppState>, headers: HeaderMap) -> Result<Json<TokenList>, ApiError> {
    state.auth.admin(&headers)?;
    Ok(Json(TokenList { tokens: state.auth.list() }))
}

/// `DELETE /v1/tokens/{id}`: revoke a token; it stops working at once (admin only).
#[utoipa::path(delete, path = "/v1/tokens/{id}", params(("id" = String, Path, description = "the token's id, as listed")),
    responses((status = 200, body = TokenInfo), (status = 401, body = crate::dto::ErrorBody), (status = 403, body = crate::dto::ErrorBody),
        (status = 404, body = crate::dto::ErrorBody), (status = 409, body = crate::dto::ErrorBody)),
    security(("bearer" = [])))]
pub async fn revoke(
    State(state): State<AppState>,
    headers: HeaderMap,
    UrlPath(id): UrlPath<String>,
) -> Result<Json<TokenInfo>, ApiError> {
    state.auth.admin(&headers)?;
    Ok(Json(state.auth.revoke(&id).await?))
}
