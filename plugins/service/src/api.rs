//! The HTTP API (`/v1/apps…` and `/v1/frameworks/service/…` on the host), as a pure function of
//! the state.

use serde_json::{Value, json};
use shoal_framework_common::http::{ApiError, segments};
use shoal_framework_common::json::Fields;

use crate::app::{AppDef, MAX_INSTANCES};
use crate::engine::{counts, new_version};
use crate::model::{AppRecord, Deployment, State, TaskRecord};

/// A JSON answer: status and body.
pub type Answer = Result<(u16, Value), ApiError>;

/// Routes one request.
pub fn handle(state: &mut State, method: &str, path: &str, body: &[u8], now: u64) -> Answer {
    let segs = segments(path);
    match (method, segs.as_slice()) {
        ("GET", ["apps"]) => Ok((200, list_apps(state))),
        ("GET", ["tasks"]) => Ok((200, json!({ "tasks": state.tasks.values().map(task_view).collect::<Vec<_>>() }))),
        ("GET", ["apps", id]) => Ok((200, app_view(state, get(state, id)?))),
        ("PUT", ["apps", id]) => put_app(state, id, body, now),
        ("POST", ["apps", id, "scale"]) => scale(state, id, body),
        ("POST", ["apps", id, "restart"]) => restart(state, id, now),
        ("DELETE", ["apps", id]) => delete(state, id),
        ("GET", ["openapi.json"]) => Ok((200, crate::doc::document())),
        (_, ["apps"] | ["tasks"] | ["openapi.json"]) => Err(ApiError::method(method, path, "GET")),
        (_, ["apps", _]) => Err(ApiError::method(method, path, "GET, PUT, DELETE")),
        (_, ["apps", _, "scale" | "restart"]) => Err(ApiError::method(method, path, "POST")),
        _ => Err(ApiError::not_found(format!("no such path: {path}"))),
    }
}

fn get<'a>(state: &'a State, id: &str) -> Result<&'a AppRecord, ApiError> {
    state.apps.get(id).ok_or_else(|| ApiError::not_found(format!("unknown app {id:?}")))
}

fn live_app<'a>(state: &'a mut State, id: &str) -> Result<&'a mut AppRecord, ApiError> {
    let app = state.apps.get_mut(id).ok_or_else(|| ApiError::not_found(format!("unknown app {id:?}")))?;
    if app.deleting {
        return Err(ApiError::conflict(format!("app {id:?} is being deleted; wait until it is gone")));
    }
    Ok(app)
}

fn put_app(state: &mut State, id: &str, body: &[u8], now: u64) -> Answer {
    let def = AppDef::parse(body, id).map_err(|(status, message)| ApiError { status, message, allow: None })?;
    let created = !state.apps.contains_key(id);
    if created {
        let version = new_version(state, now);
        state.put_app(AppRecord {
            def,
            version: version.clone(),
            created_ms: now,
            deleting: false,
            deployment: Some(Deployment { version, started_ms: now }),
            failures: 0,
            delay_until_ms: 0,
            revive_on_expiry: false,
            waiting: None,
            last_failure: None,
            constraints: Vec::new(),
        });
    } else {
        let current = live_app(state, id)?;
        if current.def.differs_beyond_instances(&def) {
            let mut app = current.clone();
            let version = new_version(state, now);
            app.def = def;
            app.version = version.clone();
            app.deployment = Some(Deployment { version, started_ms: now });
            // A new version starts with a clean slate.
            app.failures = 0;
            app.delay_until_ms = 0;
            app.waiting = None;
            state.put_app(app);
        } else if current.def.instances != def.instances {
            current.def.instances = def.instances;
            state.touch_app(id);
        }
    }
    state.want_revive();
    Ok((if created { 201 } else { 200 }, app_view(state, get(state, id)?)))
}

fn scale(state: &mut State, id: &str, body: &[u8]) -> Answer {
    let mut f = Fields::parse(body)?;
    let instances: u32 = f.require("instances")?;
    f.finish()?;
    if instances > MAX_INSTANCES {
        return Err(ApiError::bad(format!("instances must be within 0..={MAX_INSTANCES}, got {instances}")));
    }
    let app = live_app(state, id)?;
    if app.def.instances != instances {
        app.def.instances = instances;
        state.touch_app(id);
        state.want_revive();
    }
    Ok((200, app_view(state, get(state, id)?)))
}

fn restart(state: &mut State, id: &str, now: u64) -> Answer {
    let mut app = live_app(state, id)?.clone();
    let version = new_version(state, now);
    app.version = version.clone();
    app.deployment = Some(Deployment { version, started_ms: now });
    app.failures = 0;
    app.delay_until_ms = 0;
    state.put_app(app);
    state.want_revive();
    Ok((200, app_view(state, get(state, id)?)))
}

fn delete(state: &mut State, id: &str) -> Answer {
    let app = state.apps.get_mut(id).ok_or_else(|| ApiError::not_found(format!("unknown app {id:?}")))?;
    if !app.deleting {
        app.deleting = true;
        app.deployment = None;
        app.waiting = None;
        state.touch_app(id);
    }
    Ok((202, json!({ "id": id, "deleting": true })))
}

/// One task as the API shows it.
pub fn task_view(t: &TaskRecord) -> Value {
    json!({
        "id": t.id,
        "app": t.app,
        "version": t.version,
        "state": t.state,
        "healthy": t.healthy,
        "agent_id": t.agent_id,
        "host": t.host,
        "ports": t.ports,
        "since_ms": t.since_ms,
        "launched_ms": t.launched_ms,
        "message": t.message,
        "killing": t.kill,
    })
}

fn status_of(app: &AppRecord, running: usize) -> &'static str {
    if app.deleting {
        "deleting"
    } else if app.deployment.is_some() {
        "deploying"
    } else if app.waiting.is_some() {
        "waiting"
    } else if app.def.instances == 0 {
        "suspended"
    } else if running >= app.def.instances as usize {
        "running"
    } else {
        "starting"
    }
}

/// An app with its version, counts, deployment progress, waiting reason and tasks.
pub fn app_view(state: &State, app: &AppRecord) -> Value {
    let (running, healthy, staged) = counts(state, app);
    let has_checks = !app.def.health_checks.is_empty();
    let deployment = app.deployment.as_ref().map(|d| {
        let (mut new_running, mut new_healthy, mut old) = (0, 0, 0);
        for t in state.tasks_of(&app.def.id).filter(|t| !t.state.is_terminal()) {
            if t.version == d.version {
                if t.state == shoal_framework_common::state::State::Running {
                    new_running += 1;
                }
                if t.is_healthy(has_checks) {
                    new_healthy += 1;
                }
            } else {
                old += 1;
            }
        }
        json!({
            "version": d.version,
            "started_ms": d.started_ms,
            "target": app.def.instances,
            "new_running": new_running,
            "new_healthy": new_healthy,
            "old_remaining": old,
        })
    });
    let backoff = (app.failures > 0).then(|| json!({ "failures": app.failures, "delay_until_ms": app.delay_until_ms }));
    json!({
        "id": app.def.id,
        "status": status_of(app, running),
        "version": app.version,
        "created_ms": app.created_ms,
        "instances": app.def.instances,
        "running": running,
        "healthy": healthy,
        "staged": staged,
        "deployment": deployment,
        "waiting": app.waiting,
        "last_failure": app.last_failure,
        "backoff": backoff,
        "definition": app.def,
        "tasks": state.tasks_of(&app.def.id).map(task_view).collect::<Vec<_>>(),
    })
}

fn list_apps(state: &State) -> Value {
    let apps: Vec<Value> = state
        .apps
        .values()
        .map(|app| {
            let (running, healthy, staged) = counts(state, app);
            json!({
                "id": app.def.id,
                "status": status_of(app, running),
                "version": app.version,
                "instances": app.def.instances,
                "running": running,
                "healthy": healthy,
                "staged": staged,
                "deploying": app.deployment.is_some(),
                "waiting": app.waiting,
            })
        })
        .collect();
    json!({ "apps": apps })
}
