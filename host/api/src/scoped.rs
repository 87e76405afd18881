//! What an `app:<namespace>` token may see beyond its KV namespace, in one place.
//!
//! Admin and operator tokens read everything. An app token reads only what **belongs to its
//! namespace** `ns`:
//!
//! - a **task** belongs to `ns` when it is an instance of app `ns` (label `shoal.service`), a
//!   run of job `ns` (`shoal.job`), or may open KV namespace `ns` (its `shoal.kv` label names
//!   it): the app a user named after its namespace, and whatever was granted its data. Other
//!   tasks are left out of listings and answered 403 (their view, logs, kill);
//! - an **app** or **job** (`/v1/apps/{id}…`, `/v1/jobs/{id}…`) belongs to `ns` when its id is
//!   `ns`; listings of every app or job and frameworks' own APIs are 403;
//! - **events**: `shoal.evt.kv.<ns>.*`, `shoal.evt.app.<ns>.*`, `shoal.evt.job.<ns>.*`,
//!   `shoal.evt.service.<ns>.*` and task events of tasks that belong to `ns`; nothing else (no
//!   other namespace's keys, no plugin, agent, offer, framework or health events);
//! - **health-check output** (an instance's `health_output`, the output a task's check left in
//!   its `message`) is never shown to app tokens, whoever owns it: a check's output is what an
//!   attacker would make a check print;
//! - plugin components and task artifacts are downloaded with admin or operator tokens only.
//!
//! What this module must never do: widen what a scope may see; every rule here only narrows.

use std::collections::BTreeMap;

use axum::http::StatusCode;
use shoal_master::{Master, TaskEntry};
use shoal_protocol::labels;

use crate::auth::Scope;
use crate::error::ApiError;

/// What replaces check output for tokens that may not read it.
pub const REDACTED: &str = "(check output is shown to admin and operator tokens only)";

/// The prefix an agent gives a task's `message` when its health check changed the verdict
/// (`health check <kind>: <output>`).
const HEALTH_MESSAGE: &str = "health check ";

/// True when the task with these labels belongs to namespace `ns` (see the module's docs).
pub fn task_labels_belong(task_labels: &BTreeMap<String, String>, ns: &str) -> bool {
    task_labels.get(labels::SERVICE).is_some_and(|s| s == ns)
        || task_labels.get(labels::JOB).is_some_and(|j| j == ns)
        || task_labels.get(labels::KV).is_some_and(|kv| labels::kv_namespaces(kv).any(|n| n == ns))
}

/// May `scope` read this task?
pub fn may_read_task(scope: &Scope, task: &TaskEntry) -> bool {
    match scope {
        Scope::Admin | Scope::Operator => true,
        Scope::App(ns) => task_labels_belong(&task.info.labels, ns),
    }
}

/// 403 unless `scope` may read the task.
pub fn check_task(scope: &Scope, task: &TaskEntry) -> Result<(), ApiError> {
    if may_read_task(scope, task) {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::FORBIDDEN,
        "forbidden",
        format!(
            "task `{}` does not belong to the token's namespace (`{scope}`): an app token reads tasks of its own app, \
             job or KV namespace only",
            task.info.id
        ),
    ))
}

/// A task's message as `scope` may read it: check output removed for app tokens.
pub fn message_for(scope: &Scope, message: &str) -> String {
    if scope.sees_everything() {
        return message.to_owned();
    }
    match message.strip_prefix(HEALTH_MESSAGE).and_then(|rest| rest.split_once(": ")) {
        Some((kind, _)) => format!("{HEALTH_MESSAGE}{kind}: {REDACTED}"),
        None => message.to_owned(),
    }
}

/// The task as `scope` sees it.
pub fn task_for(scope: &Scope, mut task: TaskEntry) -> TaskEntry {
    task.message = message_for(scope, &task.message);
    task
}

/// 403 unless `scope` is admin or operator: for things that belong to no namespace and may hold
/// anyone's secrets (plugin components, task artifacts, frameworks' own APIs).
pub fn check_operator(scope: &Scope, what: &str) -> Result<(), ApiError> {
    if scope.sees_everything() {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::FORBIDDEN,
        "forbidden",
        format!("{what} needs the admin or operator scope; the token has `{scope}`"),
    ))
}

/// 403 unless `scope` may read the app or job `id` (`None`: the listing of all of them).
pub fn check_definition(scope: &Scope, what: &str, id: Option<&str>) -> Result<(), ApiError> {
    match (scope, id) {
        (Scope::Admin | Scope::Operator, _) => Ok(()),
        (Scope::App(ns), Some(id)) if id == ns => Ok(()),
        (Scope::App(ns), Some(id)) => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("{what} `{id}` is not in the token's namespace `{ns}`"),
        )),
        (Scope::App(ns), None) => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("listing every {what} needs the admin or operator scope; an `app:{ns}` token reads {what} `{ns}`"),
        )),
    }
}

/// The event published on `subject` with `payload` as an `app:<ns>` token may see it: `None`
/// when it is not for that token (see the module's docs), the payload otherwise (a task event's
/// check output redacted). Task events are looked up in `master` to learn whose task it is.
pub fn event_for_app(ns: &str, subject: &str, payload: &[u8], master: Option<&Master>) -> Option<String> {
    let (family, name) = shoal_bus::subject::event_family(subject)?;
    match family {
        "kv" | "app" | "job" | "service" if name == ns => Some(String::from_utf8_lossy(payload).into_owned()),
        "task" => {
            let mut event: serde_json::Value = serde_json::from_slice(payload).ok()?;
            let id = event["data"]["id"].as_str()?;
            let task = master?.task(id)?;
            if !task_labels_belong(&task.info.labels, ns) {
                return None;
            }
            if let Some(message) = event["data"]["message"].as_str() {
                event["data"]["message"] = message_for(&Scope::App(ns.to_owned()), message).into();
            }
            Some(event.to_string())
        }
        _ => None,
    }
}
