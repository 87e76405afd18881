//! The framework's state and how it maps onto the key-value store.
//!
//! | key | value |
//! | --- | --- |
//! | `gen` | generation counter, bumped by every call that writes |
//! | `meta` | `{"seq": N, "revive": bool}`: the task/version sequence and a pending revive |
//! | `app/<id>` | [`AppRecord`]: definition, version, deployment, backoff, waiting reason, last failure |
//! | `task/<task-id>` | [`TaskRecord`]: app, version, agent, host, ports, state, health, times, kill reason |
//!
//! Ended tasks stay (as tombstones, so late duplicates are recognised) for
//! [`TERMINAL_KEEP_MS`], then are forgotten.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use shoal_framework_common::constraint::Constraint;
use shoal_framework_common::state::State as TaskState;
use shoal_framework_common::store::{Persistent, Store, get_json, set_json};

use crate::app::AppDef;

/// How long ended tasks are kept (shown in `GET /tasks`, and late duplicates recognised).
pub const TERMINAL_KEEP_MS: u64 = 10 * 60 * 1000;

/// A rolling deploy in progress.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Deployment {
    /// The version being rolled out.
    pub version: String,
    /// When it started.
    pub started_ms: u64,
}

/// The last task of an app that ended badly.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Failure {
    /// Task id.
    pub task_id: String,
    /// Its final state (or `unhealthy` when killed for failing health checks).
    pub state: String,
    /// Why.
    pub message: String,
    /// When.
    pub at_ms: u64,
}

/// One app.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AppRecord {
    /// The definition.
    pub def: AppDef,
    /// Current version.
    pub version: String,
    /// When the app was created.
    pub created_ms: u64,
    /// Deleted by the operator: its tasks are being killed.
    #[serde(default)]
    pub deleting: bool,
    /// Rolling deploy in progress.
    #[serde(default)]
    pub deployment: Option<Deployment>,
    /// Consecutive failures (for backoff).
    #[serde(default)]
    pub failures: u32,
    /// No launch before this time.
    #[serde(default)]
    pub delay_until_ms: u64,
    /// Revive offers when the backoff expires.
    #[serde(default)]
    pub revive_on_expiry: bool,
    /// Why tasks are missing, after the last offer round.
    #[serde(default)]
    pub waiting: Option<String>,
    /// Last failure.
    #[serde(default)]
    pub last_failure: Option<Failure>,
    /// Parsed constraints (not stored).
    #[serde(skip)]
    pub constraints: Vec<Constraint>,
}

/// Why the framework killed a task.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KillReason {
    /// The app was scaled down.
    Scale,
    /// Replaced by a newer version.
    Deploy,
    /// Failing health checks.
    Unhealthy,
    /// The app was deleted.
    Delete,
}

/// One task.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskRecord {
    /// Task id, `<app>.<seq>`.
    pub id: String,
    /// App id.
    pub app: String,
    /// App version it runs.
    pub version: String,
    /// Sequence number (higher = newer).
    pub seq: u64,
    /// Agent id.
    pub agent_id: String,
    /// Agent host name.
    pub host: String,
    /// Agent attributes at launch, for constraints.
    #[serde(default)]
    pub attributes: Vec<(String, String)>,
    /// The task's ports.
    pub ports: Vec<u16>,
    /// Current state.
    pub state: TaskState,
    /// Health verdict.
    #[serde(default)]
    pub healthy: Option<bool>,
    /// When it entered its current state (framework clock).
    pub since_ms: u64,
    /// Timestamp of the newest status applied.
    #[serde(default)]
    pub status_ms: u64,
    /// Last status message.
    #[serde(default)]
    pub message: String,
    /// When it was launched.
    pub launched_ms: u64,
    /// When it was first seen running.
    #[serde(default)]
    pub running_since_ms: Option<u64>,
    /// When its checks first passed since it was last unhealthy.
    #[serde(default)]
    pub healthy_since_ms: Option<u64>,
    /// When its checks started failing.
    #[serde(default)]
    pub unhealthy_since_ms: Option<u64>,
    /// Why the framework killed it, if it did.
    #[serde(default)]
    pub kill: Option<KillReason>,
    /// When the kill was (last) sent.
    #[serde(default)]
    pub kill_sent_ms: u64,
}

impl TaskRecord {
    /// Not ended and not being killed: counts toward the app's instances.
    pub fn alive(&self) -> bool {
        !self.state.is_terminal() && self.kill.is_none()
    }

    /// Running, and passing its checks when the app has any.
    pub fn is_healthy(&self, has_checks: bool) -> bool {
        self.state == TaskState::Running && (!has_checks || self.healthy == Some(true))
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Meta {
    seq: u64,
    #[serde(default)]
    revive: bool,
}

/// Everything the framework knows.
#[derive(Debug, Default)]
pub struct State {
    /// Apps by id.
    pub apps: BTreeMap<String, AppRecord>,
    /// Tasks by id; an app's tasks are the ids starting with `<app>.`.
    pub tasks: BTreeMap<String, TaskRecord>,
    /// Sequence for task ids and versions.
    pub seq: u64,
    /// Send `revive` at the next tick (the set of wanted tasks grew).
    pub revive: bool,
    /// Records that could not be decoded at load (skipped), to log.
    pub load_errors: Vec<String>,
    dirty_apps: BTreeSet<String>,
    dirty_tasks: BTreeSet<String>,
    dirty_meta: bool,
}

impl State {
    /// Marks app `id` for writing (or deleting, when absent).
    pub fn touch_app(&mut self, id: &str) {
        self.dirty_apps.insert(id.to_string());
    }
    /// Marks task `id` for writing (or deleting, when absent).
    pub fn touch_task(&mut self, id: &str) {
        self.dirty_tasks.insert(id.to_string());
    }
    /// Marks the sequence/revive flag for writing.
    pub fn touch_meta(&mut self) {
        self.dirty_meta = true;
    }

    /// The next sequence number.
    pub fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.dirty_meta = true;
        self.seq
    }

    /// Asks for a revive at the next tick.
    pub fn want_revive(&mut self) {
        if !self.revive {
            self.revive = true;
            self.dirty_meta = true;
        }
    }

    /// Ids of the tasks of `app` (ended ones included).
    pub fn task_ids(&self, app: &str) -> Vec<String> {
        let prefix = format!("{app}.");
        self.tasks.range(prefix.clone()..).take_while(|(k, _)| k.starts_with(&prefix)).map(|(k, _)| k.clone()).collect()
    }

    /// The tasks of `app` (ended ones included).
    pub fn tasks_of<'a>(&'a self, app: &str) -> impl Iterator<Item = &'a TaskRecord> + 'a {
        let prefix = format!("{app}.");
        self.tasks.range(prefix.clone()..).take_while(move |(k, _)| k.starts_with(&prefix)).map(|(_, t)| t)
    }

    /// Inserts an app, compiling its constraints.
    pub fn put_app(&mut self, mut app: AppRecord) {
        app.constraints = app.def.task.compiled_constraints();
        let id = app.def.id.clone();
        self.touch_app(&id);
        self.apps.insert(id, app);
    }

    /// Whether anything is waiting to be written.
    pub fn is_dirty(&self) -> bool {
        self.dirty_meta || !self.dirty_apps.is_empty() || !self.dirty_tasks.is_empty()
    }
}

impl Persistent for State {
    fn load(store: &dyn Store) -> Result<Self, String> {
        let mut state = State::default();
        let meta: Meta = get_json(store, "meta")?.unwrap_or_default();
        state.seq = meta.seq;
        state.revive = meta.revive;
        for key in store.list("app/")? {
            match get_json::<AppRecord>(store, &key) {
                Ok(Some(mut app)) => {
                    app.constraints = app.def.task.compiled_constraints();
                    state.apps.insert(app.def.id.clone(), app);
                }
                Ok(None) => {}
                Err(e) => state.load_errors.push(e),
            }
        }
        for key in store.list("task/")? {
            match get_json::<TaskRecord>(store, &key) {
                Ok(Some(task)) => {
                    state.tasks.insert(task.id.clone(), task);
                }
                Ok(None) => {}
                Err(e) => state.load_errors.push(e),
            }
        }
        Ok(state)
    }

    fn flush(&mut self, store: &mut dyn Store) -> Result<bool, String> {
        if !self.is_dirty() {
            return Ok(false);
        }
        for id in std::mem::take(&mut self.dirty_apps) {
            let key = format!("app/{id}");
            match self.apps.get(&id) {
                Some(app) => set_json(store, &key, app)?,
                None => store.delete(&key)?,
            }
        }
        for id in std::mem::take(&mut self.dirty_tasks) {
            let key = format!("task/{id}");
            match self.tasks.get(&id) {
                Some(task) => set_json(store, &key, task)?,
                None => store.delete(&key)?,
            }
        }
        if std::mem::take(&mut self.dirty_meta) {
            set_json(store, "meta", &Meta { seq: self.seq, revive: self.revive })?;
        }
        Ok(true)
    }
}
