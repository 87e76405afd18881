//! Where issued tokens live: table [`TOKENS_TABLE`] of the master's state, one key per token.
//!
//! | key | value |
//! | --- | --- |
//! | `<sha256 hex of the token>` | `{"scope": "app:shop", "created_ms": 1700000000000, "expires_ms": 1700003600000}` |
//!
//! `created_ms` and `expires_ms` are left out when unknown (tokens of the oldest file format) or
//! never. Never the token itself, and never the admin token.
//!
//! Earlier versions kept the same entries in a `tokens` file, one line per token:
//! `<sha256 hex> <scope> [created=<ms>] [expires=<ms>]` (the oldest lines have neither field).
//! [`migrate_token_file`] moves such a file into an empty table once and removes it.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Weak;

use serde::{Deserialize, Serialize};
use shoal_state::{Batch, StateDb, TableChange, TableWatch};

use super::{Auth, Entry, Scope, TokenError};

/// The state's table of issued tokens.
pub const TOKENS_TABLE: &str = "tokens";

/// An entry as the table stores it.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Stored {
    scope: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    created_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    expires_ms: Option<u64>,
}

pub(super) fn encode(entry: &Entry) -> Vec<u8> {
    let stored = Stored { scope: entry.scope.to_string(), created_ms: entry.created_ms, expires_ms: entry.expires_ms };
    serde_json::to_vec(&stored).unwrap_or_default()
}

fn decode(key: &[u8], value: &[u8]) -> Result<(String, Entry), TokenError> {
    let corrupt = |reason: String| TokenError::Corrupt { key: String::from_utf8_lossy(key).into_owned(), reason };
    let digest = std::str::from_utf8(key)
        .ok()
        .filter(|d| d.len() == 64 && d.bytes().all(|b| b.is_ascii_hexdigit()))
        .ok_or_else(|| corrupt("the key is not a sha256 digest".into()))?;
    let stored: Stored = serde_json::from_slice(value).map_err(|e| corrupt(e.to_string()))?;
    let scope = Scope::parse(&stored.scope).ok_or_else(|| corrupt(format!("invalid scope `{}`", stored.scope)))?;
    Ok((digest.to_ascii_lowercase(), Entry { scope, created_ms: stored.created_ms, expires_ms: stored.expires_ms }))
}

/// Every token of the table.
pub(super) fn load(state: &StateDb) -> Result<HashMap<String, Entry>, TokenError> {
    state.scan(TOKENS_TABLE, b"")?.iter().map(|(k, v)| decode(k, v)).collect()
}

/// Bring `key` of `tokens` up to date with the table.
pub(super) fn reread(state: &StateDb, tokens: &mut HashMap<String, Entry>, key: &[u8]) {
    match state.get(TOKENS_TABLE, key).map_err(TokenError::from).and_then(|v| v.map(|v| decode(key, &v)).transpose()) {
        Ok(Some((digest, entry))) => {
            tokens.insert(digest, entry);
        }
        Ok(None) => {
            tokens.remove(String::from_utf8_lossy(key).to_ascii_lowercase().as_str());
        }
        Err(e) => tracing::error!(cause = %e, "a token of the table could not be read; it is not valid here"),
    }
}

/// Apply every change of the table to `auth`'s tokens, for as long as both exist.
pub(super) async fn follow(auth: Weak<Auth>, mut watch: TableWatch) {
    while let Some(change) = watch.next().await {
        let Some(auth) = auth.upgrade() else { return };
        let Some(state) = auth.state.clone() else { return };
        match change {
            TableChange::Keys(keys) => auth.reread(&state, &keys),
            TableChange::Lost => {
                let mut tokens = auth.tokens.write();
                match load(&state) {
                    Ok(all) => *tokens = all,
                    Err(e) => tracing::error!(cause = %e, "the token table could not be reread"),
                }
            }
        }
    }
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

/// Move the `tokens` file of an earlier version into the table, in one commit, when the table is
/// empty; then remove the file (a table that already has tokens wins: the file is a leftover of
/// an earlier migration). Returns the number of tokens moved. A line that does not parse is an
/// error and changes nothing; so is a commit the state refuses (a master that does not lead).
pub async fn migrate_token_file(state: &StateDb, file: &Path) -> Result<usize, TokenError> {
    let problem = |problem: String| TokenError::File { file: file.display().to_string(), problem };
    let text = match std::fs::read_to_string(file) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(problem(e.to_string())),
    };
    let mut entries = Vec::new();
    for (n, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let entry = parse_line(line).ok_or_else(|| {
            problem(format!("line {}: expected `<sha256 hex> <scope> [created=<ms>] [expires=<ms>]`", n + 1))
        })?;
        entries.push(entry);
    }
    let mut moved = 0;
    if state.scan(TOKENS_TABLE, b"")?.is_empty() && !entries.is_empty() {
        let mut batch = Batch::new();
        for (digest, entry) in &entries {
            batch.put(TOKENS_TABLE, digest.as_bytes(), encode(entry));
        }
        state.commit(batch).await?;
        moved = entries.len();
    }
    std::fs::remove_file(file).map_err(|e| problem(format!("moved into the state, but not removed: {e}")))?;
    Ok(moved)
}
