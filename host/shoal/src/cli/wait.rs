//! The CLI commands that follow something until it ends: `app deploy|scale|restart --wait` (the
//! service framework's deployment, from its app view) and `task logs -f`.
//!
//! An app change is **done** when the app has no deployment under way, is not being deleted, and
//! runs exactly its `instances`, all healthy (an app without health checks counts running as
//! healthy). It has **failed** when a task of the app fails after the change was accepted (the
//! app's `last_failure` is a new one: a command that exits, a health check that kills it), or the
//! app is deleted meanwhile. An app that cannot be placed (no offer fits) is neither: `--timeout`
//! ends the wait, with the framework's reason (`waiting`) in the message.

use std::io::Write;
use std::time::{Duration, Instant};

use clap::Args;
use serde_json::Value;

use super::output::at;
use super::{Client, Failure};

/// How often a wait polls the API: the framework's view changes at most this often in practice
/// (an allocation cycle is a second by default).
const POLL: Duration = Duration::from_millis(500);

/// `--wait` and `--timeout` of the app commands.
#[derive(Args, Debug, Clone, Copy)]
pub(super) struct Wait {
    /// Follow the deployment, a line each time it progresses, until every instance runs and is
    /// healthy; exit 5 if a task of the app fails or `--timeout` passes first.
    #[arg(long)]
    pub(super) wait: bool,
    /// Seconds `--wait` waits at most.
    #[arg(long, default_value_t = 300, requires = "wait")]
    pub(super) timeout: u64,
}

/// Where an app stands, as a progress line: `web: version v2, 2/3 running, 1/3 healthy,
/// deploying (1 new running, 1 old left), waiting: …`.
fn progress(id: &str, app: &Value) -> String {
    let wanted = app["instances"].as_u64().unwrap_or(0);
    let mut line = format!(
        "{id}: {}, version {}, {}/{wanted} running, {}/{wanted} healthy",
        at(app, "status"),
        at(app, "version"),
        app["running"].as_u64().unwrap_or(0),
        app["healthy"].as_u64().unwrap_or(0),
    );
    let d = &app["deployment"];
    if d.is_object() {
        line.push_str(&format!(
            ", deploying ({} new running, {} new healthy, {} old left)",
            at(d, "new_running"),
            at(d, "new_healthy"),
            at(d, "old_remaining")
        ));
    }
    if let Some(why) = app["waiting"].as_str() {
        line.push_str(&format!(", waiting: {why}"));
    }
    line
}

fn done(app: &Value) -> bool {
    let wanted = app["instances"].as_u64();
    app["deployment"].is_null()
        && app["status"] != "deleting"
        && app["running"].as_u64() == wanted
        && app["healthy"].as_u64() == wanted
}

/// Follow app `id` from `answer` (the app view the change was answered with) until it is done,
/// has failed, or the timeout passes.
pub(super) async fn wait_for_app(c: &Client, id: &str, answer: &Value, wait: Wait) -> anyhow::Result<()> {
    let out = c.out;
    let say = |line: &str| {
        if out.for_people() {
            println!("{line}");
        } else {
            eprintln!("{line}");
        }
    };
    let known_failure = answer["last_failure"].clone();
    let deadline = Instant::now() + Duration::from_secs(wait.timeout);
    let mut app = answer.clone();
    let mut last_line = String::new();
    loop {
        let line = progress(id, &app);
        if line != last_line {
            say(&line);
            last_line = line;
        }
        let failure = &app["last_failure"];
        if !failure.is_null() && *failure != known_failure {
            return Err(Failure::WaitFailed(format!(
                "app {id} failed: task {} {}: {}",
                at(failure, "task_id"),
                at(failure, "state"),
                at(failure, "message")
            ))
            .into());
        }
        if app["status"] == "deleting" {
            return Err(Failure::WaitFailed(format!("app {id} is being deleted")).into());
        }
        if done(&app) {
            out.emit_done(&app, id, &format!("app {id} is ready"));
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(
                Failure::WaitFailed(format!("app {id} not ready after {} s ({last_line})", wait.timeout)).into()
            );
        }
        tokio::time::sleep(POLL.min(deadline.saturating_duration_since(Instant::now()))).await;
        app = c.send(c.http.get(c.url(&format!("/v1/apps/{id}")))).await?;
    }
}

/// `task logs -f`: print what task `id` wrote to `stream` (the last `tail` bytes first, if
/// given), then what it writes, until it ends or Ctrl-C.
///
/// The agent keeps the newest bytes of each stream and counts the older ones it dropped, so
/// `dropped + kept` is the stream's length so far: each poll prints the bytes past the length
/// already printed (and says so if more were written between two polls than the agent keeps).
pub(super) async fn follow_logs(c: &Client, id: &str, stream: &str, tail: Option<usize>) -> anyhow::Result<()> {
    let mut printed: Option<u64> = None;
    let mut stdout = std::io::stdout();
    loop {
        let task = c.send(c.http.get(c.url(&format!("/v1/tasks/{id}")))).await?;
        let ended = matches!(task["state"].as_str(), Some("finished" | "failed" | "killed" | "lost"));
        let mut query = vec![("stream", stream.to_owned())];
        if let (None, Some(n)) = (printed, tail) {
            query.push(("tail", n.to_string()));
        }
        let (body, headers) = match c.send_raw(c.http.get(c.url(&format!("/v1/tasks/{id}/logs"))).query(&query)).await {
            Ok(answer) => answer,
            // An ended task's agent may have let its output go: nothing more to print.
            Err(_) if ended => return Ok(()),
            Err(e) => return Err(e),
        };
        let dropped: u64 = headers.get("x-shoal-dropped").and_then(|v| v.to_str().ok()?.parse().ok()).unwrap_or(0);
        let length = dropped + body.len() as u64;
        let new = length - printed.unwrap_or(dropped).min(length);
        if new > body.len() as u64 {
            eprintln!("({} bytes written between two reads were not kept)", new - body.len() as u64);
        }
        let start = body.len() - (new as usize).min(body.len());
        stdout.write_all(&body[start..])?;
        stdout.flush()?;
        printed = Some(length);
        if ended {
            return Ok(());
        }
        tokio::select! {
            _ = tokio::time::sleep(POLL) => {}
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
    }
}
