//! The batch framework: one-shot and cron jobs with retries and a history of runs, as a Shoal
//! framework plugin.
//!
//! # HTTP API (the host routes `/v1/jobs…` here as `/jobs…`)
//!
//! | request | answer |
//! | --- | --- |
//! | `PUT /jobs/<id>` + definition | 201 (created) or 200: the job view; a job without `schedule` starts a run at once |
//! | `POST /jobs/<id>/run` | 201: the new run (409 when `concurrency` is `forbid` and a run is active) |
//! | `GET /jobs` | `{"jobs": [{"id", "schedule", "last_run"}]}` |
//! | `GET /jobs/<id>` | the job view: `{"id", "definition", "runs": [run…]}` (newest 20 first) |
//! | `DELETE /jobs/<id>` | 202: runs stop (running tasks are killed at the next tick), the job is forgotten |
//! | `GET /openapi.json` | this API as OpenAPI 3.1 ([`doc`]), merged by the host into `/v1/openapi.json` |
//!
//! A **run**: `{"run", "job", "state": "pending"|"running"|"succeeded"|"failed"|"cancelled",
//! "attempts", "task_id", "started_ms", "finished_ms", "message"}`.
//!
//! # The definition
//!
//! `{"id": "report", "cmd": "…" | "wasm": "<sha256>", "cpus": 0.1, "mem": 32, "disk": 0,
//! "ports": 0, "env": {}, "labels": {}, "constraints": [...], "schedule": "*/5 * * * *",
//! "max_retries": 2, "retry_backoff_seconds": 1, "concurrency": "forbid" | "allow"}` — fields
//! as in the service framework (`shoal_framework_common::validate`), unknown fields refused.
//! `schedule` is five-field cron in UTC ([`cron`]); a scheduled job starts a run at each matching
//! minute after it was defined (a missed minute is not caught up). A failed or killed attempt
//! is retried up to `max_retries` times, `retry_backoff_seconds` apart; a `lost` attempt (its
//! agent went away) is retried without counting.
//!
//! Tasks are labelled `shoal.job` = the job id and get `SHOAL_JOB_ID`, `SHOAL_RUN`.
//!
//! # State (the plugin's KV)
//!
//! `job/<id>` (definition), `run/<id>/<run, 10 digits>` (runs), `task/<task id>` (→ job and run),
//! `cron/<id>` (last minute considered), `kill/<task id>` (kills to send at the next tick), `seq`.

mod cron;
mod doc;

use serde::{Deserialize, Serialize};
use shoal_framework_common::constraint::{Constraint, Counts};
use shoal_framework_common::http::{self, ApiError};
use shoal_framework_common::json::Fields;
use shoal_framework_common::place::{self, Slot};
use shoal_framework_common::store::{HostStore, Store, get_json, get_u64, set_json};
use shoal_framework_common::validate::{TaskTemplate, check_id};
use shoal_sdk::scheduling::{OfferInfo, Operation, TaskSpec};
use shoal_sdk::{Attribute, Framework, HttpRequest, HttpResponse, TaskState, TaskStatus};

/// Runs kept per job.
const KEEP_RUNS: usize = 20;

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Job {
    id: String,
    #[serde(flatten)]
    template: TaskTemplate,
    ports: u32,
    schedule: Option<String>,
    max_retries: u32,
    retry_backoff_seconds: f64,
    concurrency: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Run {
    run: u64,
    job: String,
    state: String,
    attempts: u32,
    task_id: Option<String>,
    started_ms: u64,
    finished_ms: Option<u64>,
    not_before_ms: u64,
    message: String,
}

impl Run {
    fn active(&self) -> bool {
        self.state == "pending" || self.state == "running"
    }
}

fn now() -> u64 {
    shoal_sdk::clock::now_ms()
}

fn run_key(job: &str, run: u64) -> String {
    format!("run/{job}/{run:010}")
}

fn runs_of(store: &dyn Store, job: &str) -> Result<Vec<Run>, String> {
    let mut runs = Vec::new();
    for key in store.list(&format!("run/{job}/"))? {
        if let Some(r) = get_json::<Run>(store, &key)? {
            runs.push(r);
        }
    }
    Ok(runs)
}

fn jobs(store: &dyn Store) -> Result<Vec<Job>, String> {
    let mut out = Vec::new();
    for key in store.list("job/")? {
        if let Some(j) = get_json::<Job>(store, &key)? {
            out.push(j);
        }
    }
    Ok(out)
}

/// Start a run of `job` now; returns it.
fn start_run(store: &mut dyn Store, job: &Job) -> Result<Run, String> {
    let seq = get_u64(store, "seq")? + 1;
    store.set("seq", seq.to_string().as_bytes())?;
    let run = Run {
        run: seq,
        job: job.id.clone(),
        state: "pending".into(),
        attempts: 0,
        task_id: None,
        started_ms: now(),
        finished_ms: None,
        not_before_ms: 0,
        message: "waiting for an offer".into(),
    };
    set_json(store, &run_key(&job.id, seq), &run)?;
    // Forget the oldest runs beyond the history kept.
    let runs = runs_of(store, &job.id)?;
    if runs.len() > KEEP_RUNS {
        for r in runs.iter().filter(|r| !r.active()).take(runs.len() - KEEP_RUNS) {
            store.delete(&run_key(&r.job, r.run))?;
        }
    }
    Ok(run)
}

fn read_job(id: &str, body: &[u8]) -> Result<Job, ApiError> {
    check_id(id).map_err(ApiError::bad)?;
    let mut f = Fields::parse(body).map_err(ApiError::bad)?;
    if let Some(given) = f.take::<String>("id").map_err(ApiError::bad)?
        && given != id
    {
        return Err(ApiError::bad(format!("id {given:?} does not match the path's {id:?}")));
    }
    let template = TaskTemplate::read(&mut f, 0.1, 32.0).map_err(ApiError::bad)?;
    let ports: u32 = f.take("ports").map_err(ApiError::bad)?.unwrap_or(0);
    if ports > 100 {
        return Err(ApiError::bad(format!("ports must be at most 100, got {ports}")));
    }
    let schedule: Option<String> = f.take("schedule").map_err(ApiError::bad)?;
    if let Some(s) = &schedule {
        cron::Schedule::parse(s).map_err(ApiError::bad)?;
    }
    let max_retries: u32 = f.take("max_retries").map_err(ApiError::bad)?.unwrap_or(0);
    if max_retries > 100 {
        return Err(ApiError::bad(format!("max_retries must be at most 100, got {max_retries}")));
    }
    let retry_backoff_seconds: f64 = f.take("retry_backoff_seconds").map_err(ApiError::bad)?.unwrap_or(1.0);
    if !(0.0..=3600.0).contains(&retry_backoff_seconds) {
        return Err(ApiError::bad(format!(
            "retry_backoff_seconds must be within 0..=3600, got {retry_backoff_seconds}"
        )));
    }
    let concurrency: String = f.take("concurrency").map_err(ApiError::bad)?.unwrap_or_else(|| "forbid".into());
    if concurrency != "forbid" && concurrency != "allow" {
        return Err(ApiError::bad(format!("concurrency must be \"forbid\" or \"allow\", got {concurrency:?}")));
    }
    f.finish().map_err(ApiError::bad)?;
    Ok(Job { id: id.into(), template, ports, schedule, max_retries, retry_backoff_seconds, concurrency })
}

fn job_view(store: &dyn Store, job: &Job) -> Result<serde_json::Value, String> {
    let mut runs = runs_of(store, &job.id)?;
    runs.reverse();
    Ok(serde_json::json!({ "id": job.id, "definition": job, "runs": runs }))
}

fn handle(store: &mut dyn Store, request: &HttpRequest) -> Result<HttpResponse, ApiError> {
    let segments = http::segments(&request.path);
    match (request.method.as_str(), segments.as_slice()) {
        ("GET", ["jobs"]) => {
            let mut list = Vec::new();
            for j in jobs(store)? {
                let last = runs_of(store, &j.id)?.pop();
                list.push(serde_json::json!({ "id": j.id, "schedule": j.schedule, "last_run": last }));
            }
            Ok(http::json(200, &serde_json::json!({ "jobs": list })))
        }
        ("PUT", ["jobs", id]) => {
            let job = read_job(id, &request.body)?;
            let existed = get_json::<Job>(store, &format!("job/{id}"))?.is_some();
            set_json(store, &format!("job/{id}"), &job)?;
            store.set(&format!("cron/{id}"), (now() / 60_000).to_string().as_bytes())?;
            if job.schedule.is_none() {
                start_run(store, &job)?;
            }
            Ok(http::json(if existed { 200 } else { 201 }, &job_view(store, &job)?))
        }
        ("GET", ["jobs", id]) => {
            let job = get_json::<Job>(store, &format!("job/{id}"))?
                .ok_or_else(|| ApiError::not_found(format!("unknown job {id}")))?;
            Ok(http::json(200, &job_view(store, &job)?))
        }
        ("POST", ["jobs", id, "run"]) => {
            let job = get_json::<Job>(store, &format!("job/{id}"))?
                .ok_or_else(|| ApiError::not_found(format!("unknown job {id}")))?;
            if job.concurrency == "forbid" && runs_of(store, id)?.iter().any(Run::active) {
                return Err(ApiError::conflict(format!("job {id} has a run in progress and forbids concurrent runs")));
            }
            let run = start_run(store, &job)?;
            Ok(http::json(201, &run))
        }
        ("DELETE", ["jobs", id]) => {
            if get_json::<Job>(store, &format!("job/{id}"))?.is_none() {
                return Err(ApiError::not_found(format!("unknown job {id}")));
            }
            for mut r in runs_of(store, id)? {
                if let Some(t) = r.task_id.clone().filter(|_| r.state == "running") {
                    store.set(&format!("kill/{t}"), b"1")?;
                    store.delete(&format!("task/{t}"))?;
                }
                if r.active() {
                    r.state = "cancelled".into();
                    r.finished_ms = Some(now());
                }
                store.delete(&run_key(id, r.run))?;
            }
            store.delete(&format!("job/{id}"))?;
            store.delete(&format!("cron/{id}"))?;
            Ok(http::json(202, &serde_json::json!({ "id": id, "deleted": true })))
        }
        ("GET", ["openapi.json"]) => Ok(http::json(200, &doc::document())),
        (_, ["jobs"] | ["openapi.json"]) => Err(ApiError::method(&request.method, &request.path, "GET")),
        (_, ["jobs", _]) => Err(ApiError::method(&request.method, &request.path, "GET, PUT, DELETE")),
        (_, ["jobs", _, "run"]) => Err(ApiError::method(&request.method, &request.path, "POST")),
        _ => Err(ApiError::not_found(format!("no such path {}", request.path))),
    }
}

/// Place pending runs whose backoff is over on the offers.
fn offers(store: &mut dyn Store, offers: Vec<OfferInfo>) -> Result<Vec<Operation>, String> {
    let t = now();
    let mut slots: Vec<Slot> = offers.into_iter().map(Slot::new).collect();
    let mut waiting = false;
    for job in jobs(store)? {
        let constraints: Vec<Constraint> = job.template.compiled_constraints();
        let demand = job.template.demand(job.ports);
        for mut run in runs_of(store, &job.id)? {
            if run.state != "pending" {
                continue;
            }
            if run.not_before_ms > t {
                waiting = true;
                continue;
            }
            let counts = Counts::default();
            let slot = slots.iter_mut().find(|s| {
                s.lack(&demand).is_none()
                    && constraints.iter().all(|c| c.allows(c.value_of(&s.offer.hostname, &s.offer.attributes), &counts))
            });
            let Some(slot) = slot else {
                waiting = true;
                run.message = "waiting: no offer fits its resources and constraints".into();
                set_json(store, &run_key(&job.id, run.run), &run)?;
                continue;
            };
            run.attempts += 1;
            let task_id = format!("{}.r{}.a{}", job.id, run.run, run.attempts);
            let resources = slot.take(&demand);
            let mut env: Vec<(String, String)> = job.template.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
            env.push(("SHOAL_JOB_ID".into(), job.id.clone()));
            env.push(("SHOAL_RUN".into(), run.run.to_string()));
            let mut labels: Vec<Attribute> =
                job.template.labels.iter().map(|(k, v)| Attribute { name: k.clone(), value: v.clone() }).collect();
            labels.push(Attribute { name: shoal_sdk::labels::JOB.into(), value: job.id.clone() });
            slot.tasks.push(TaskSpec {
                task_id: task_id.clone(),
                command: job.template.command(),
                resources,
                env,
                labels,
            });
            run.state = "running".into();
            run.task_id = Some(task_id.clone());
            run.message = format!("attempt {} launched on {}", run.attempts, slot.offer.hostname);
            set_json(store, &run_key(&job.id, run.run), &run)?;
            store.set(&format!("task/{task_id}"), run_key(&job.id, run.run).as_bytes())?;
        }
    }
    Ok(place::answer(slots, if waiting { place::REFUSE_WAITING } else { place::REFUSE_IDLE }))
}

fn status(store: &mut dyn Store, s: &TaskStatus) -> Result<Vec<Operation>, String> {
    let terminal = matches!(s.state, TaskState::Finished | TaskState::Failed | TaskState::Killed | TaskState::Lost);
    let Some(key) = store.get(&format!("task/{}", s.task_id))? else {
        return Ok(if terminal { Vec::new() } else { vec![Operation::Kill(s.task_id.clone())] });
    };
    let key = String::from_utf8_lossy(&key).into_owned();
    let Some(mut run) = get_json::<Run>(store, &key)? else { return Ok(Vec::new()) };
    if run.task_id.as_deref() != Some(s.task_id.as_str()) || run.state != "running" || !terminal {
        return Ok(Vec::new());
    }
    store.delete(&format!("task/{}", s.task_id))?;
    let job = get_json::<Job>(store, &format!("job/{}", run.job))?;
    let mut ops = Vec::new();
    match (s.state, job) {
        (TaskState::Finished, _) => {
            run.state = "succeeded".into();
            run.finished_ms = Some(now());
            run.message = format!("attempt {} succeeded", run.attempts);
        }
        (TaskState::Lost, Some(_)) => {
            // Not the task's fault: again, without counting the attempt.
            run.attempts = run.attempts.saturating_sub(1);
            run.state = "pending".into();
            run.task_id = None;
            run.message = format!("attempt lost ({}); retrying", s.message);
            ops.push(Operation::Revive);
        }
        (_, Some(job)) if run.attempts <= job.max_retries => {
            run.state = "pending".into();
            run.task_id = None;
            run.not_before_ms = now() + (job.retry_backoff_seconds * 1000.0) as u64;
            run.message = format!("attempt {} {}: {}; retrying", run.attempts, s.state.name(), s.message);
            ops.push(Operation::Revive);
        }
        _ => {
            run.state = "failed".into();
            run.finished_ms = Some(now());
            run.message = format!("attempt {} {}: {}", run.attempts, s.state.name(), s.message);
        }
    }
    set_json(store, &key, &run)?;
    Ok(ops)
}

fn tick(store: &mut dyn Store, now_ms: u64) -> Result<Vec<Operation>, String> {
    let mut ops: Vec<Operation> = Vec::new();
    for key in store.list("kill/")? {
        store.delete(&key)?;
        ops.push(Operation::Kill(key.trim_start_matches("kill/").to_owned()));
    }
    let minute = now_ms / 60_000;
    let mut started = false;
    for job in jobs(store)? {
        let Some(text) = &job.schedule else { continue };
        let Ok(schedule) = cron::Schedule::parse(text) else { continue };
        let last = get_u64(store, &format!("cron/{}", job.id))?;
        if minute <= last {
            continue;
        }
        store.set(&format!("cron/{}", job.id), minute.to_string().as_bytes())?;
        // Only the minutes since the last tick; a long pause is not caught up.
        let due = ((last + 1).max(minute.saturating_sub(1))..=minute).any(|m| schedule.matches(m));
        if !due {
            continue;
        }
        if job.concurrency == "forbid" && runs_of(store, &job.id)?.iter().any(Run::active) {
            continue;
        }
        start_run(store, &job)?;
        started = true;
    }
    let pending = started || {
        let mut any = false;
        for job in jobs(store)? {
            any |= runs_of(store, &job.id)?.iter().any(|r| r.state == "pending" && r.not_before_ms <= now_ms);
        }
        any
    };
    if pending {
        ops.push(Operation::Revive);
    }
    Ok(ops)
}

struct Batch;

fn or_log(result: Result<Vec<Operation>, String>) -> Vec<Operation> {
    result.unwrap_or_else(|e| {
        shoal_sdk::log::error(&e);
        Vec::new()
    })
}

impl Framework for Batch {
    fn init(_config: String) -> Result<(), String> {
        Ok(())
    }

    fn resource_offers(o: Vec<OfferInfo>) -> Vec<Operation> {
        let ids: Vec<String> = o.iter().map(|x| x.id.clone()).collect();
        match offers(&mut HostStore, o) {
            Ok(ops) => ops,
            Err(e) => {
                shoal_sdk::log::error(&e);
                ids.into_iter()
                    .map(|offer_id| {
                        Operation::Decline(shoal_sdk::scheduling::Decline {
                            offer_id,
                            refuse_seconds: place::REFUSE_IDLE,
                        })
                    })
                    .collect()
            }
        }
    }

    fn status_update(s: TaskStatus) -> Vec<Operation> {
        or_log(status(&mut HostStore, &s))
    }

    fn handle_request(request: HttpRequest) -> HttpResponse {
        match handle(&mut HostStore, &request) {
            Ok(r) => r,
            Err(e) => http::error(&e),
        }
    }

    fn tick(now_ms: u64) -> Vec<Operation> {
        or_log(tick(&mut HostStore, now_ms))
    }
}

shoal_sdk::export_framework!(Batch);
