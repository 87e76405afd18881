//! Bearer tokens and scopes.
//!
//! | scope | may |
//! | --- | --- |
//! | `admin` | everything: plugins, cluster, tokens |
//! | `operator` | read everything; manage apps (later issues) |
//! | `app:<namespace>` | its own KV namespace (later issues) |
//!
//! Every `/v1` endpoint needs a valid token; reading needs any scope, changing plugins or issuing
//! tokens needs `admin`. Tokens are kept as sha256 digests, never in clear: in memory and, for a
//! node with a data directory, in a `tokens` file (`<sha256 hex> <scope>` per line, replaced
//! atomically and fsynced before the token is handed out), so issued tokens survive a restart.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use parking_lot::RwLock;
use sha2::{Digest, Sha256};

use crate::AppState;
use crate::dto::{TokenRequest, TokenResponse};
use crate::error::ApiError;

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

/// The token table.
pub struct Auth {
    tokens: RwLock<HashMap<String, Scope>>,
    /// Where issued tokens are kept, if anywhere.
    file: Option<PathBuf>,
    admin_digest: String,
}

fn digest(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// A new random token: `shoal_` and 32 hex digits (128 bits from the OS).
pub fn generate_token() -> String {
    format!("shoal_{}", uuid::Uuid::new_v4().simple())
}

impl Auth {
    /// A table with one admin token, in memory only.
    pub fn new(admin_token: &str) -> Self {
        let admin_digest = digest(admin_token);
        let tokens = HashMap::from([(admin_digest.clone(), Scope::Admin)]);
        Auth { tokens: RwLock::new(tokens), file: None, admin_digest }
    }

    /// A table with one admin token plus the tokens issued earlier and kept in `file` (created
    /// on the first issue). A line that does not parse is an error naming the line: a token
    /// table is not something to half-load.
    pub fn persistent(admin_token: &str, file: &Path) -> std::io::Result<Self> {
        let mut auth = Auth::new(admin_token);
        match std::fs::read_to_string(file) {
            Ok(text) => {
                let mut tokens = auth.tokens.write();
                for (n, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
                    let parsed = line.split_once(' ').and_then(|(d, s)| {
                        let valid = d.len() == 64 && d.bytes().all(|b| b.is_ascii_hexdigit());
                        Some((d.to_owned(), Scope::parse(s.trim()).filter(|_| valid)?))
                    });
                    let (d, scope) = parsed.ok_or_else(|| {
                        std::io::Error::new(
                            std::io::ErrorKind::InvalidData,
                            format!("{}:{}: expected `<sha256 hex> <scope>`", file.display(), n + 1),
                        )
                    })?;
                    tokens.insert(d, scope);
                }
            }
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => return Err(err),
        }
        auth.file = Some(file.to_owned());
        Ok(auth)
    }

    /// Add a token; with a file, it is on disk (fsynced) when this returns `Ok`.
    pub fn insert(&self, token: &str, scope: Scope) -> std::io::Result<()> {
        let mut tokens = self.tokens.write();
        tokens.insert(digest(token), scope);
        let Some(file) = &self.file else { return Ok(()) };
        let mut text = String::new();
        for (d, scope) in tokens.iter().filter(|(d, _)| **d != self.admin_digest) {
            text.push_str(&format!("{d} {scope}\n"));
        }
        let tmp = file.with_extension("tmp");
        let written = (|| {
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create(true).truncate(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            let mut f = options.open(&tmp)?;
            f.write_all(text.as_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, file)
        })();
        if written.is_err() {
            tokens.remove(&digest(token));
        }
        written
    }

    /// The scope of the bearer token in `headers`.
    pub fn scope(&self, headers: &HeaderMap) -> Result<Scope, ApiError> {
        let value = headers.get(axum::http::header::AUTHORIZATION).ok_or_else(|| {
            ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "missing `Authorization: Bearer <token>` header")
        })?;
        let token = value.to_str().ok().and_then(|v| v.strip_prefix("Bearer ")).ok_or_else(|| {
            ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "authorization must be `Bearer <token>`")
        })?;
        self.tokens
            .read()
            .get(&digest(token.trim()))
            .cloned()
            .ok_or_else(|| ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "unknown token"))
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

/// `POST /v1/tokens`: issue a token with a scope (admin only).
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
    let token = generate_token();
    state.auth.insert(&token, scope.clone()).map_err(|err| {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "storage", format!("could not store the token: {err}"))
    })?;
    Ok((StatusCode::CREATED, Json(TokenResponse { token, scope: scope.to_string() })))
}
