//! `shoal token create|list|revoke`: API tokens (admin only). `create` prints the new token,
//! once: that is its purpose; nothing else ever prints a token.

use clap::Subcommand;
use serde_json::{Value, json};

use super::{Client, Remote};

#[derive(Subcommand, Debug)]
pub(super) enum TokenCommand {
    /// Issue a token and print it (the only time it is shown).
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
    List {
        #[command(flatten)]
        remote: Remote,
    },
    /// Revoke a token by its id (as listed); it stops working at once.
    Revoke {
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

pub(super) async fn token(cmd: TokenCommand) -> anyhow::Result<()> {
    match cmd {
        TokenCommand::Create { scope, ttl, remote } => {
            let c = Client::new(remote)?;
            let v = c.send(c.http.post(c.url("/v1/tokens")).json(&json!({ "scope": scope, "ttl": ttl }))).await?;
            println!("{}", v["token"].as_str().unwrap_or_default());
            eprintln!(
                "id {}, scope {}, expires {}: store the token now, it is not shown again",
                v["id"].as_str().unwrap_or_default(),
                v["scope"].as_str().unwrap_or_default(),
                expiry(&v, now_ms())
            );
        }
        TokenCommand::List { remote } => {
            let c = Client::new(remote)?;
            let v = c.send(c.http.get(c.url("/v1/tokens"))).await?;
            let now = now_ms();
            println!("{:<14} {:<24} {:<10} EXPIRES", "ID", "SCOPE", "AGE");
            for t in v["tokens"].as_array().into_iter().flatten() {
                let age = t["created_ms"].as_u64().map_or("-".into(), |at| span(now.saturating_sub(at)));
                let note = if t["node"] == true { "  (the node's admin token)" } else { "" };
                println!(
                    "{:<14} {:<24} {:<10} {}{note}",
                    t["id"].as_str().unwrap_or_default(),
                    t["scope"].as_str().unwrap_or_default(),
                    age,
                    expiry(t, now)
                );
            }
        }
        TokenCommand::Revoke { id, remote } => {
            let c = Client::new(remote)?;
            let v = c.send(c.http.delete(c.url(&format!("/v1/tokens/{id}")))).await?;
            println!("revoked {} ({})", v["id"].as_str().unwrap_or(&id), v["scope"].as_str().unwrap_or_default());
        }
    }
    Ok(())
}
