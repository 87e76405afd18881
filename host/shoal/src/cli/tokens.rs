//! `shoal token create|list|show|delete`: API tokens (admin only). `create` prints the new token,
//! once: that is its purpose; nothing else ever prints a token.

use clap::Subcommand;
use serde_json::{Value, json};

use super::output::{Table, at};
use super::{Client, Remote};

#[derive(Subcommand, Debug)]
pub(super) enum TokenCommand {
    /// Issue a token and print it (the only time it is shown; `-o json` adds its id, scope and
    /// expiry).
    #[command(visible_alias = "put")]
    Create {
        /// `admin`, `operator` or `app:<namespace>`.
        #[arg(long)]
        scope: String,
        /// How long it works: `30m`, `1h`, `7d`…; without, until revoked.
        #[arg(long)]
        ttl: Option<String>,
        #[command(flatten)]
        remote: Remote,
    },
    /// Every token: id, scope, age and expiry (never the token itself).
    #[command(visible_alias = "ls")]
    List {
        #[command(flatten)]
        remote: Remote,
    },
    /// One token by its id: scope, age and expiry.
    #[command(visible_alias = "get")]
    Show {
        /// The token's id.
        id: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// Revoke a token by its id (as listed); it stops working at once.
    #[command(visible_aliases = ["revoke", "rm", "del"])]
    Delete {
        /// The token's id.
        id: String,
        #[command(flatten)]
        remote: Remote,
    },
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// `3d`, `5h`, `12m` or `40s`: the largest unit that fits.
fn span(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        3600..86_400 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

fn expiry(token: &Value, now: u64) -> String {
    match token["expires_ms"].as_u64() {
        None => "never".into(),
        Some(at) if at <= now => format!("expired {} ago", span(now - at)),
        Some(at) => format!("in {}", span(at - now)),
    }
}

/// The cells of a token (`token list`).
fn row(t: &Value, now: u64) -> Vec<String> {
    let age = t["created_ms"].as_u64().map_or("-".into(), |at| span(now.saturating_sub(at)));
    let note = if t["node"] == true { "the node's admin token" } else { "" };
    vec![at(t, "id"), at(t, "scope"), age, expiry(t, now), note.to_owned()]
}

const HEADER: [&str; 5] = ["ID", "SCOPE", "AGE", "EXPIRES", "NOTE"];

pub(super) async fn token(cmd: TokenCommand) -> anyhow::Result<()> {
    match cmd {
        TokenCommand::Create { scope, ttl, remote } => {
            let c = Client::new(remote)?;
            let v = c.send(c.http.post(c.url("/v1/tokens")).json(&json!({ "scope": scope, "ttl": ttl }))).await?;
            let token = at(&v, "token");
            // The token is what a script wants from `create`, `-q` or not.
            c.out.emit_done(&v, &token, &token);
            if c.out.for_people() {
                eprintln!(
                    "id {}, scope {}, expires {}: store the token now, it is not shown again",
                    at(&v, "id"),
                    at(&v, "scope"),
                    expiry(&v, now_ms())
                );
            }
        }
        TokenCommand::List { remote } => {
            let c = Client::new(remote)?;
            let v = c.send(c.http.get(c.url("/v1/tokens"))).await?;
            let now = now_ms();
            c.out.emit(&v, Table::new(&HEADER).rows(&v["tokens"], |t| row(t, now)));
        }
        TokenCommand::Show { id, remote } => {
            let c = Client::new(remote)?;
            let t = c.find_in_list("/v1/tokens", "tokens", "id", &id, "token").await?;
            c.out.emit_one(&t, &id, &[]);
        }
        TokenCommand::Delete { id, remote } => {
            let c = Client::new(remote)?;
            let v = c.send(c.http.delete(c.url(&format!("/v1/tokens/{id}")))).await?;
            c.out.emit_done(&v, &id, &format!("revoked {} ({})", v["id"].as_str().unwrap_or(&id), at(&v, "scope")));
        }
    }
    Ok(())
}
