//! The service framework: long-running apps with instances, placement constraints, health checks,
//! launch backoff and rolling deploys (Marathon's job), as a Shoal framework plugin.
//!
//! # HTTP API
//!
//! The host routes `/v1/apps…` here as `/apps…` (and `/v1/frameworks/service/<rest>` as
//! `/<rest>`). Bodies and answers are JSON; errors are `{"error": "<why>"}` with 400 (malformed
//! JSON, invalid or unknown field; the message names the field), 404 (unknown app or path), 405,
//! 409 (the app is being deleted) or 422 (a definition that can never deploy).
//!
//! | request | answer |
//! | --- | --- |
//! | `PUT /apps/<id>` + definition | 201 (created) or 200: the app view |
//! | `GET /apps` | `{"apps": [{"id", "status", "version", "instances", "running", "healthy", "staged", "deploying", "waiting"}]}` |
//! | `GET /apps/<id>` | the app view |
//! | `POST /apps/<id>/scale` + `{"instances": N}` | 200: the app view |
//! | `POST /apps/<id>/restart` | 200: the app view (a new version, same definition) |
//! | `DELETE /apps/<id>` | 202 `{"id", "deleting": true}`; the app shows `"status": "deleting"` until its tasks are gone |
//! | `GET /tasks` | `{"tasks": [task view…]}`: every task, ended ones for 10 minutes |
//! | `GET /openapi.json` | this API as OpenAPI 3.1 ([`doc`]), merged by the host into `/v1/openapi.json` |
//!
//! The **app view**: `{"id", "status": "deploying"|"running"|"starting"|"waiting"|"suspended"|"deleting",
//! "version", "created_ms", "instances", "running", "healthy", "staged", "deployment": null |
//! {"version", "started_ms", "target", "new_running", "new_healthy", "old_remaining"}, "waiting":
//! null | "<why tasks are missing>", "last_failure": null | {"task_id", "state", "message", "at_ms"},
//! "backoff": null | {"failures", "delay_until_ms"}, "definition": {…}, "tasks": [task view…]}`.
//!
//! A **task view**: `{"id", "app", "version", "state", "healthy": null|bool, "agent_id", "host",
//! "ports": [31000], "since_ms", "launched_ms", "message", "killing": null|"scale"|"deploy"|"unhealthy"|"delete"}`.
//!
//! # The app definition
//!
//! ```json
//! {"id": "web", "instances": 5, "cmd": "python3 -m http.server $PORT0",
//!  "cpus": 0.1, "mem": 32, "disk": 0, "ports": 1,
//!  "env": {"K": "V"}, "labels": {"shoal.route.path": "/web"},
//!  "constraints": [["@hostname", "UNIQUE"], ["rack", "GROUP_BY", "2"]],
//!  "health_checks": [{"type": "http", "port_index": 0, "path": "/", "grace_ms": 10000,
//!                     "interval_ms": 10000, "timeout_ms": 2000, "max_failures": 3}],
//!  "backoff_seconds": 1, "backoff_factor": 1.15, "max_launch_delay_seconds": 300,
//!  "upgrade_strategy": {"minimum_health_capacity": 1.0, "maximum_over_capacity": 1.0}}
//! ```
//!
//! `id` is `[a-z0-9-]{1,63}` and may be omitted (the path's id is used); `instances` 0..=10000
//! (default 1); exactly one of `cmd` (shell) and `wasm` (sha256 of a Wasm component); `cpus` > 0
//! (default 0.1), `mem` > 0 MiB (default 32), `disk` ≥ 0; `ports` a count ≤ 100 or a list of names
//! (each also exported as `PORT_<NAME>`; the agent sets `PORT0…`); unknown fields are refused.
//! Health checks are `http` (`port_index`, `path`), `tcp` (`port_index`), `command` (`command`) or
//! `wasm` (`plugin`, `config`), with the agent's timing fields. **Only the first health check is
//! run** (the agent runs one check per task). Every task also gets `SHOAL_APP_ID`,
//! `SHOAL_APP_VERSION` and `SHOAL_TASK_ID`.
//!
//! Constraints follow Marathon; see `shoal_framework_common::constraint` for the table. An agent
//! without the attribute never matches `LIKE`/`CLUSTER`, passes `UNLIKE`, and counts as the empty
//! value for `UNIQUE`, `GROUP_BY` and `MAX_PER`.
//!
//! # Task labels (the contract with the host)
//!
//! Every task carries the app's `labels` plus `shoal.service` = app id, `shoal.version` = app
//! version and, when the app has a health check, `shoal.health` = the agent's check spec with the
//! task's real port (`{"type":"http","port":31002,"path":"/",...}`). A `shoal.weight` label (an
//! integer) is passed through from `labels`. `shoal.framework` is the host's.
//!
//! # Behaviour
//!
//! * **Versions.** Any change except `instances` (and `POST …/restart`) makes a new version
//!   (`2026-11-23T23:15:53.123Z-7`) and starts a rolling deploy: new-version tasks are launched up
//!   to `instances × (1 + maximum_over_capacity)` tasks in total, and old-version tasks are killed
//!   (not-healthy ones first, then the oldest) only while `minimum_health_capacity × instances`
//!   tasks stay healthy. The deploy is done when `instances` healthy tasks run the new version.
//!   Healthy = running and, with health checks, reported healthy.
//! * **Placement** (`resource-offers`): apps in id order; each missing task goes to the offer that
//!   holds the fewest tasks of the app (existing and just placed) and fits its cpus, mem, disk,
//!   ports and constraints; ties go to the earlier offer. Ports are the lowest free ones. Offers
//!   left unused are declined for 1 s while some app still waits, else 5 s. When tasks are still
//!   missing, the app's `waiting` says why (`3 offers, none fits: 2 lack cpus (needs 4, largest
//!   free 2), 1 blocked by constraint @hostname UNIQUE`, or `backing off for 1.3 s after 2
//!   failures`).
//! * **Backoff.** A task that ends `failed` or `finished` (a service should not exit), or is killed
//!   for failing health checks, delays the app's next launch by `backoff_seconds ×
//!   backoff_factor^(n-1)` (at most `max_launch_delay_seconds`; `n` = consecutive failures). The
//!   count resets once a task has run (healthy, with checks) for 30 s, and on a new version.
//!   `lost` tasks and tasks killed by others are replaced without backoff.
//! * **Health.** A task reported unhealthy for `(max_failures - 1) × interval_ms` is killed and
//!   replaced (with backoff); `last_failure` says so.
//! * **Status updates** are idempotent: a task never leaves a terminal state, late duplicates of
//!   earlier states are ignored, a live task this framework does not know (or already gave up as
//!   lost) is killed. Kills without an answer are re-sent every 30 s.
//! * `tick` sends `revive` after a change that wants tasks (deploy, scale, a task that ended, an
//!   expired backoff).
//!
//! # State
//!
//! Everything lives in the plugin's key-value store (see [`model`] for the layout: `gen`, `meta`,
//! `app/<id>`, `task/<task-id>`); an instance caches the decoded state while the `gen` counter is
//! unchanged and writes only the keys a call changed.

pub mod api;
pub mod app;
pub mod doc;
pub mod engine;
pub mod model;

#[cfg(test)]
mod tests;

use std::cell::RefCell;

use shoal_framework_common::http;
use shoal_framework_common::store::{Cache, HostStore, with_state};
use shoal_sdk::scheduling::{Decline, OfferInfo, Operation};
use shoal_sdk::{Framework, HttpRequest, HttpResponse, TaskStatus, clock, log};

use model::State;

thread_local! {
    static CACHE: RefCell<Cache<State>> = const { RefCell::new(Cache::new()) };
}

/// Runs `f` on the state (cached while the store's generation is unchanged), writing back what it
/// changed.
fn run<R>(f: impl FnOnce(&mut State) -> R) -> Result<R, String> {
    CACHE.with(|cache| {
        with_state(cache, &mut HostStore, |state: &mut State| {
            for e in state.load_errors.drain(..) {
                log::error(&format!("skipped a corrupt record: {e}"));
            }
            f(state)
        })
    })
}

struct Service;

impl Framework for Service {
    fn init(_config: String) -> Result<(), String> {
        Ok(())
    }

    fn resource_offers(offers: Vec<OfferInfo>) -> Vec<Operation> {
        let ids: Vec<String> = offers.iter().map(|o| o.id.clone()).collect();
        let now = clock::now_ms();
        match run(|state| engine::resource_offers(state, offers, now)) {
            Ok(ops) => ops,
            Err(e) => {
                log::error(&format!("offers not used, the store failed: {e}"));
                ids.into_iter().map(|offer_id| Operation::Decline(Decline { offer_id, refuse_seconds: 1.0 })).collect()
            }
        }
    }

    fn status_update(status: TaskStatus) -> Vec<Operation> {
        let now = clock::now_ms();
        run(|state| engine::status_update(state, &status, now)).unwrap_or_else(|e| {
            log::error(&format!("status of {} not recorded, the store failed: {e}", status.task_id));
            Vec::new()
        })
    }

    fn handle_request(request: HttpRequest) -> HttpResponse {
        let now = clock::now_ms();
        let answer = run(|state| api::handle(state, &request.method, &request.path, &request.body, now));
        match answer {
            Ok(Ok((status, body))) => http::json(status, &body),
            Ok(Err(e)) => http::error(&e),
            Err(e) => http::error(&http::ApiError::internal(format!("store failed: {e}"))),
        }
    }

    fn tick(now_ms: u64) -> Vec<Operation> {
        run(|state| engine::tick(state, now_ms)).unwrap_or_else(|e| {
            log::error(&format!("tick failed, the store failed: {e}"));
            Vec::new()
        })
    }
}

shoal_sdk::export_framework!(Service);
