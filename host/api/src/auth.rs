//! Bearer tokens and scopes.
//!
//! | scope | may |
//! | --- | --- |
//! | `admin` | everything: plugins, tokens, the allocator, system namespaces, command health checks |
//! | `operator` | read everything (check output included); apps, jobs, tasks, services, routes, artifacts, KV outside system namespaces |
//! | `app:<namespace>` | its own KV namespace, and reading what belongs to it (see `crate::scoped`) |
//!
//! Every `/v1` endpoint needs a valid, unexpired token. Tokens are kept as sha256 digests, never
//! in clear: in memory and, for a node with a data directory, in a `tokens` file replaced
//! atomically (written with mode 0600, fsynced) before a token is handed out or a revocation is
//! answered, so issued tokens survive a restart. One line per token:
//!
//! ```text
//! <sha256 hex> <scope> created=<ms since the Unix epoch> expires=<ms since the Unix epoch>
//! ```
//!
//! `created=` and `expires=` are optional: lines of the older `<sha256 hex> <scope>` format are
//! read as tokens of unknown age that never expire, and the file is rewritten in the new format
//! on its next change. A token is named by its **id**, the first [`ID_LEN`] hex digits of its
//! digest: enough to list and revoke it, useless to authenticate. The node's admin token (from
//! `admin.token`) is listed too but never written to the file, and is replaced by rotating that
//! file, not revoked.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode};
use parking_lot::RwLock;
use sha2::{Digest, Sha256};

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
/// restart in the token file), so the table reads a clock it is given: tests move it.
pub type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

fn system_clock() -> Clock {
    Arc::new(|| std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64))
}

/// Why a token could not be issued or revoked. Nothing changed.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// No token has this id.
    #[error("no token with id `{0}`")]
    NotFound(String),
    /// The id is the node's admin token, which is rotated through its file, not revoked.
    #[error("`{0}` is the node's admin token: replace it by rotating admin.token and restarting the node")]
    NodeToken(String),
    /// The token file could not be written.
    #[error("could not store the token table: {0}")]
    Storage(#[from] std::io::Error),
}

/// The token table.
pub struct Auth {
    tokens: RwLock<HashMap<String, Entry>>,
    /// Where issued tokens are kept, if anywhere.
    file: Option<PathBuf>,
    admin_digest: String,
    clock: Clock,
}

fn digest(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// A new random token: `shoal_` and 32 hex digits (128 bits from the OS).
pub fn generate_token() -> String {
    format!("shoal_{}", uuid::Uuid::new_v4().simple())
}

/// Parse a TTL: a positive whole number and a unit, `s`, `m`, `h` or `d` (`90s`, `30m`, `1h`,
/// `7d`), at most [`MAX_TTL`].
pub fn parse_ttl(text: &str) -> Option<Duration> {
    let split = text.find(|c: char| !c.is_ascii_digit())?;
    let (number, unit) = text.split_at(split);
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

fn parse_line(line: &str) -> Option<(String, Entry)> {
    let mut fields = line.split_whitespace();
    let d = fields.next()?;
    if d.len() != 64 || !d.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut entry = Entry { scope: Scope::parse(fields.next()?)?, created_ms: None, expires_ms: None };
    for field in fields {
        match field.split_once('=')? {
            ("created", ms) => entry.created_ms = Some(ms.parse().ok()?),
            ("expires", ms) => entry.expires_ms = Some(ms.parse().ok()?),
            _ => return None,
        }
    }
    Some((d.to_ascii_lowercase(), entry))
}

impl Auth {
    /// A table with one admin token, in memory only.
    pub fn new(admin_token: &str) -> Self {
        let admin_digest = digest(admin_token);
        let admin = Entry { scope: Scope::Admin, created_ms: None, expires_ms: None };
        let tokens = HashMap::from([(admin_digest.clone(), admin)]);
        Auth { tokens: RwLock::new(tokens), file: None, admin_digest, clock: system_clock() }
    }

    /// The same table reading time from `clock` (ms since the Unix epoch) instead of the system.
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// A table with one admin token plus the tokens issued earlier and kept in `file` (created
    /// on the first issue), in either line format (see the module's docs). A line that does not
    /// parse is an error naming the line: a token table is not something to half-load.
    pub fn persistent(admin_token: &str, file: &Path) -> std::io::Result<Self> {
        let mut auth = Auth::new(admin_token);
        match std::fs::read_to_string(file) {
            Ok(text) => {
                let mut tokens = auth.tokens.write();
                for (n, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
                    let (d, entry) = parse_line(line).ok_or_else(|| {
                        std::io::Error::new(
                            std::io::ErrorKind::InvalidData,
                            format!(
                                "{}:{}: expected `<sha256 hex> <scope> [created=<ms>] [expires=<ms>]`",
                                file.display(),
                                n + 1
                            ),
                        )
                    })?;
                    if d != auth.admin_digest {
                        tokens.insert(d, entry);
                    }
                }
            }
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => return Err(err),
        }
        auth.file = Some(file.to_owned());
        Ok(auth)
    }

    fn now_ms(&self) -> u64 {
        (self.clock)()
    }

    /// Write the table (all but the node's admin token) to the file, atomically.
    fn save(&self, tokens: &HashMap<String, Entry>) -> std::io::Result<()> {
        let Some(file) = &self.file else { return Ok(()) };
        let mut lines: Vec<String> = tokens
            .iter()
            .filter(|(d, _)| **d != self.admin_digest)
            .map(|(d, e)| {
                let mut line = format!("{d} {}", e.scope);
                if let Some(ms) = e.created_ms {
                    line.push_str(&format!(" created={ms}"));
                }
                if let Some(ms) = e.expires_ms {
                    line.push_str(&format!(" expires={ms}"));
                }
                line
            })
            .collect();
        lines.sort();
        let tmp = file.with_extension("tmp");
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut f = options.open(&tmp)?;
        for line in &lines {
            writeln!(f, "{line}")?;
        }
        f.sync_all()?;
        std::fs::rename(&tmp, file)
    }

    /// Add a token that never expires; with a file, it is on disk (fsynced) when this returns.
    pub fn insert(&self, token: &str, scope: Scope) -> std::io::Result<()> {
        self.issue(token, scope, None).map(|_| ())
    }

    /// Add a token, valid for `ttl` from now (forever without); with a file, it is on disk
    /// (fsynced) when this returns `Ok`, and nothing changed otherwise.
    pub fn issue(&self, token: &str, scope: Scope, ttl: Option<Duration>) -> std::io::Result<TokenInfo> {
        let now = self.now_ms();
        let entry =
            Entry { scope, created_ms: Some(now), expires_ms: ttl.map(|t| now.saturating_add(t.as_millis() as u64)) };
        let d = digest(token);
        let mut tokens = self.tokens.write();
        let previous = tokens.insert(d.clone(), entry.clone());
        if let Err(err) = self.save(&tokens) {
            match previous {
                Some(p) => tokens.insert(d, p),
                None => tokens.remove(&d),
            };
            return Err(err);
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
            node: d == self.admin_digest,
        }
    }

    /// Every token, without its secret: the node's admin token first, then by age.
    pub fn list(&self) -> Vec<TokenInfo> {
        let now = self.now_ms();
        let mut list: Vec<TokenInfo> = self.tokens.read().iter().map(|(d, e)| self.info(d, e, now)).collect();
        list.sort_by(|a, b| b.node.cmp(&a.node).then(a.created_ms.cmp(&b.created_ms)).then(a.id.cmp(&b.id)));
        list
    }

    /// Revoke the token whose id is `id`: it stops working at once (and, with a file, is gone
    /// from it when this returns `Ok`).
    pub fn revoke(&self, id: &str) -> Result<TokenInfo, TokenError> {
        let now = self.now_ms();
        let mut tokens = self.tokens.write();
        let found = (id.len() == ID_LEN)
            .then(|| tokens.keys().find(|d| d.starts_with(&id.to_ascii_lowercase())).cloned())
            .flatten();
        let Some(d) = found else { return Err(TokenError::NotFound(id.to_owned())) };
        if d == self.admin_digest {
            return Err(TokenError::NodeToken(id.to_owned()));
        }
        let Some(entry) = tokens.remove(&d) else { return Err(TokenError::NotFound(id.to_owned())) };
        if let Err(err) = self.save(&tokens) {
            tokens.insert(d, entry);
            return Err(err.into());
        }
        Ok(self.info(&d, &entry, now))
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
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<TokenResponse>), ApiError> {
    state.auth.admin(&headers)?;
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
    let info = state.auth.issue(&token, scope, ttl).map_err(|err| {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "storage", format!("could not store the token: {err}"))
    })?;
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
    state.auth.revoke(&id).map(Json).map_err(|err| match err {
        TokenError::NotFound(_) => ApiError::not_found(err.to_string()),
        TokenError::NodeToken(_) => ApiError::new(StatusCode::CONFLICT, "node_token", err.to_string()),
        TokenError::Storage(_) => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "storage", err.to_string()),
    })
}
