//! Native tests of the scheduling rules and the API, driven through the pure functions.

#![allow(clippy::unwrap_used)]

use std::cell::RefCell;

use serde_json::Value;
use shoal_framework_common::state::State as TS;
use shoal_framework_common::store::{Cache, MemStore, with_state};
use shoal_sdk::scheduling::{OfferInfo, Operation, TaskSpec};
use shoal_sdk::{Attribute, PortRange, Resources, TaskState, TaskStatus};

use crate::api;
use crate::engine::{self, BACKOFF_RESET_MS};
use crate::model::{KillReason, State};

const T0: u64 = 1_795_475_753_000;

fn offer(n: usize, cpus: f64, mem: f64, ports: (u16, u16), rack: Option<&str>) -> OfferInfo {
    OfferInfo {
        id: format!("o{n}"),
        agent_id: format!("a{n}"),
        hostname: format!("h{n}"),
        attributes: rack.map(|r| vec![Attribute { name: "rack".into(), value: r.into() }]).unwrap_or_default(),
        resources: Resources {
            cpus,
            mem_mb: mem,
            disk_mb: 1000.0,
            ports: if ports.1 >= ports.0 { vec![PortRange { begin: ports.0, end: ports.1 }] } else { vec![] },
            scalars: vec![],
        },
    }
}

fn big(n: usize) -> OfferInfo {
    offer(n, 8.0, 8192.0, (31000, 31099), None)
}

fn req(state: &mut State, method: &str, path: &str, body: &str, now: u64) -> (u16, Value) {
    match api::handle(state, method, path, body.as_bytes(), now) {
        Ok(x) => x,
        Err(e) => (e.status, serde_json::json!({ "error": e.message })),
    }
}

fn put(state: &mut State, id: &str, body: &str) -> (u16, Value) {
    req(state, "PUT", &format!("/apps/{id}"), body, T0)
}

fn launches(ops: &[Operation]) -> Vec<(String, TaskSpec)> {
    ops.iter()
        .filter_map(|o| match o {
            Operation::Launch(l) => Some(l.tasks.iter().map(|t| (l.offer_id.clone(), t.clone())).collect::<Vec<_>>()),
            _ => None,
        })
        .flatten()
        .collect()
}

fn kills(ops: &[Operation]) -> Vec<String> {
    let mut k: Vec<String> =
        ops.iter().filter_map(|o| if let Operation::Kill(id) = o { Some(id.clone()) } else { None }).collect();
    k.sort();
    k
}

fn status(task: &str, state: TaskState, healthy: Option<bool>, ts: u64) -> TaskStatus {
    TaskStatus {
        task_id: task.into(),
        agent_id: String::new(),
        state,
        healthy,
        message: format!("{state:?}"),
        timestamp_ms: ts,
    }
}

fn per_offer(l: &[(String, TaskSpec)]) -> std::collections::BTreeMap<String, usize> {
    let mut m = std::collections::BTreeMap::new();
    for (o, _) in l {
        *m.entry(o.clone()).or_insert(0) += 1;
    }
    m
}

/// Runs every launched task to `running` (healthy when `healthy`).
fn run_all(state: &mut State, l: &[(String, TaskSpec)], healthy: Option<bool>, now: u64) -> Vec<Operation> {
    let mut ops = Vec::new();
    for (_, t) in l {
        ops.extend(engine::status_update(state, &status(&t.task_id, TaskState::Running, healthy, now), now));
    }
    ops
}

fn app(state: &mut State, id: &str) -> Value {
    req(state, "GET", &format!("/apps/{id}"), "", T0).1
}

#[test]
fn spreads_across_offers_counting_existing_tasks() {
    let mut s = State::default();
    assert_eq!(put(&mut s, "web", r#"{"cmd":"x","instances":6}"#).0, 201);
    let ops = engine::resource_offers(&mut s, vec![big(1), big(2), big(3)], T0);
    let l = launches(&ops);
    assert_eq!(l.len(), 6);
    assert_eq!(per_offer(&l).values().copied().collect::<Vec<_>>(), vec![2, 2, 2]);
    // Round-robin order: o1, o2, o3, o1, …
    assert_eq!(l.iter().map(|(o, _)| o.as_str()).collect::<Vec<_>>(), vec!["o1", "o1", "o2", "o2", "o3", "o3"]);
    let order: Vec<&str> = {
        let mut by_seq: Vec<_> = l.iter().map(|(o, t)| (t.task_id.clone(), o.as_str())).collect();
        by_seq.sort_by_key(|(id, _)| id.split('.').nth(1).unwrap().parse::<u64>().unwrap());
        by_seq.into_iter().map(|(_, o)| o).collect()
    };
    assert_eq!(order, vec!["o1", "o2", "o3", "o1", "o2", "o3"]);

    // Scale to 9 with agent a1 no longer offered: existing tasks count, so a4 (empty) gets 2… no:
    // fewest first — a4 (0) before a2/a3 (2 each).
    assert_eq!(req(&mut s, "POST", "/apps/web/scale", r#"{"instances":9}"#, T0).0, 200);
    let l = launches(&engine::resource_offers(&mut s, vec![big(2), big(3), big(4)], T0));
    assert_eq!(
        per_offer(&l),
        [("o2".to_string(), 1), ("o3".to_string(), 0), ("o4".to_string(), 2)]
            .into_iter()
            .filter(|(_, n)| *n > 0)
            .collect()
    );
    // Nothing more is wanted: offers are declined for 5 s.
    let ops = engine::resource_offers(&mut s, vec![big(5)], T0);
    assert!(matches!(&ops[0], Operation::Decline(d) if d.refuse_seconds == 5.0));
}

#[test]
fn labels_env_ports_and_health_spec() {
    let mut s = State::default();
    put(
        &mut s,
        "web",
        r#"{"cmd":"x","instances":2,"ports":["http","admin"],"labels":{"shoal.route.path":"/web","shoal.weight":"3"},
            "env":{"K":"V"},"health_checks":[{"type":"http","port_index":1,"path":"/health","interval_ms":1000,"timeout_ms":500}]}"#,
    );
    let l = launches(&engine::resource_offers(&mut s, vec![offer(1, 1.0, 512.0, (31000, 31003), None)], T0));
    assert_eq!(l.len(), 2);
    let ports: Vec<Vec<(u16, u16)>> =
        l.iter().map(|(_, t)| t.resources.ports.iter().map(|r| (r.begin, r.end)).collect()).collect();
    assert_eq!(ports, vec![vec![(31000, 31000), (31001, 31001)], vec![(31002, 31002), (31003, 31003)]]);
    let t = &l[1].1;
    let label = |n: &str| t.labels.iter().find(|a| a.name == n).map(|a| a.value.clone());
    assert_eq!(label("shoal.service").as_deref(), Some("web"));
    assert_eq!(label("shoal.route.path").as_deref(), Some("/web"));
    assert_eq!(label("shoal.weight").as_deref(), Some("3"));
    assert_eq!(label("shoal.version"), Some(app(&mut s, "web")["version"].as_str().unwrap().to_string()));
    let health: Value = serde_json::from_str(&label("shoal.health").unwrap()).unwrap();
    assert_eq!(health["port"], 31003);
    assert_eq!(health["path"], "/health");
    assert_eq!(health["interval_ms"], 1000);
    assert!(label("shoal.framework").is_none());
    let env = |n: &str| t.env.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
    assert_eq!(env("PORT_ADMIN").as_deref(), Some("31003"));
    assert_eq!(env("K").as_deref(), Some("V"));
    assert_eq!(env("SHOAL_TASK_ID"), Some(t.task_id.clone()));
    assert!(t.task_id.starts_with("web."));
    assert!((t.resources.cpus - 0.1).abs() < 1e-12 && t.resources.mem_mb == 32.0);
}

#[test]
fn fit_checks_and_waiting_reason() {
    let mut s = State::default();
    put(&mut s, "big", r#"{"cmd":"x","instances":3,"cpus":4,"mem":64}"#);
    let ops = engine::resource_offers(
        &mut s,
        vec![offer(1, 2.0, 1000.0, (0, 0), None), offer(2, 1.0, 1000.0, (0, 0), None)],
        T0,
    );
    assert!(launches(&ops).is_empty());
    assert!(ops.iter().all(|o| matches!(o, Operation::Decline(d) if d.refuse_seconds == 1.0)));
    assert_eq!(
        app(&mut s, "big")["waiting"],
        "3 tasks missing: 2 offers, none fits: 2 lack cpus (needs 4, largest free 2)"
    );
    assert_eq!(app(&mut s, "big")["status"], "deploying");

    // Ports run out first: 2 ports, each task needs 1.
    let mut s = State::default();
    put(&mut s, "p", r#"{"cmd":"x","instances":3,"ports":1}"#);
    let l = launches(&engine::resource_offers(&mut s, vec![offer(1, 8.0, 8000.0, (31000, 31001), None)], T0));
    assert_eq!(l.len(), 2);
    let waiting = app(&mut s, "p")["waiting"].as_str().unwrap().to_string();
    assert_eq!(
        waiting,
        "placed 2 of 3 tasks; 1 still missing: 1 offer, none fits: 1 lacks ports (needs 1, most free 0)"
    );
    // Placed once the next offer arrives; the reason clears.
    let l = launches(&engine::resource_offers(&mut s, vec![offer(2, 8.0, 8000.0, (31000, 31001), None)], T0));
    assert_eq!(l.len(), 1);
    assert!(app(&mut s, "p")["waiting"].is_null());
    // Memory: five 0.1-cpu tasks fit 0.5 cpus exactly.
    let mut s = State::default();
    put(&mut s, "m", r#"{"cmd":"x","instances":6,"cpus":0.1,"mem":100}"#);
    let l = launches(&engine::resource_offers(&mut s, vec![offer(1, 0.5, 1000.0, (0, 0), None)], T0));
    assert_eq!(l.len(), 5);
}

fn racks() -> Vec<OfferInfo> {
    vec![
        offer(1, 8.0, 8000.0, (0, 0), Some("r1")),
        offer(2, 8.0, 8000.0, (0, 0), Some("r1")),
        offer(3, 8.0, 8000.0, (0, 0), Some("r2")),
        offer(4, 8.0, 8000.0, (0, 0), Some("r3")),
        offer(5, 8.0, 8000.0, (0, 0), None),
    ]
}

fn place_with(constraints: &str, instances: u32) -> (Vec<(String, TaskSpec)>, Value) {
    let mut s = State::default();
    let (code, body) =
        put(&mut s, "c", &format!(r#"{{"cmd":"x","instances":{instances},"constraints":{constraints}}}"#));
    assert_eq!(code, 201, "{body}");
    let l = launches(&engine::resource_offers(&mut s, racks(), T0));
    (l, app(&mut s, "c"))
}

#[test]
fn constraint_unique_and_max_per() {
    let (l, a) = place_with(r#"[["@hostname","UNIQUE"]]"#, 7);
    assert_eq!(l.len(), 5);
    assert!(per_offer(&l).values().all(|&n| n == 1));
    assert_eq!(
        a["waiting"],
        "placed 5 of 7 tasks; 2 still missing: 5 offers, none fits: 5 blocked by constraint @hostname UNIQUE"
    );
    let (l, _) = place_with(r#"[["rack","UNIQUE"]]"#, 7);
    // r1, r2, r3 and the agent without a rack (its own empty value).
    assert_eq!(l.len(), 4);
    let (l, _) = place_with(r#"[["rack","MAX_PER","3"]]"#, 20);
    let m = per_offer(&l);
    assert_eq!(m["o1"] + m["o2"], 3);
    assert_eq!((m["o3"], m["o4"], m["o5"]), (3, 3, 3));
}

#[test]
fn constraint_like_unlike_cluster() {
    let (l, _) = place_with(r#"[["rack","LIKE","r[12]"]]"#, 6);
    assert_eq!(per_offer(&l).keys().cloned().collect::<Vec<_>>(), vec!["o1", "o2", "o3"]);
    let (l, _) = place_with(r#"[["rack","UNLIKE","r1"]]"#, 6);
    assert_eq!(per_offer(&l).keys().cloned().collect::<Vec<_>>(), vec!["o3", "o4", "o5"]);
    let (l, _) = place_with(r#"[["rack","CLUSTER","r1"]]"#, 4);
    assert_eq!(per_offer(&l).keys().cloned().collect::<Vec<_>>(), vec!["o1", "o2"]);
    // Without a value: the first task's rack (o1 → r1).
    let (l, _) = place_with(r#"[["rack","CLUSTER"]]"#, 4);
    assert_eq!(per_offer(&l).keys().cloned().collect::<Vec<_>>(), vec!["o1", "o2"]);
    let (l, a) = place_with(r#"[["rack","LIKE","r9"]]"#, 1);
    assert!(l.is_empty());
    assert_eq!(a["waiting"], "1 task missing: 5 offers, none fits: 5 blocked by constraint rack LIKE r9");
}

#[test]
fn constraint_group_by_spreads_over_values() {
    let (l, _) = place_with(r#"[["rack","GROUP_BY"]]"#, 8);
    let mut per_rack = std::collections::BTreeMap::new();
    for (o, _) in &l {
        let rack = match o.as_str() {
            "o1" | "o2" => "r1",
            "o3" => "r2",
            "o4" => "r3",
            _ => "",
        };
        *per_rack.entry(rack).or_insert(0) += 1;
    }
    assert_eq!(per_rack.values().copied().collect::<Vec<_>>(), vec![2, 2, 2, 2]);
    // GROUP_BY 5 with only 4 values: one task per value, then it waits for a fifth value.
    let (l, a) = place_with(r#"[["rack","GROUP_BY","5"]]"#, 8);
    assert_eq!(l.len(), 4);
    assert!(a["waiting"].as_str().unwrap().contains("blocked by constraint rack GROUP_BY 5"));
}

#[test]
fn status_updates_are_idempotent() {
    let mut s = State::default();
    put(&mut s, "web", r#"{"cmd":"x","instances":1}"#);
    let l = launches(&engine::resource_offers(&mut s, vec![big(1)], T0));
    let id = l[0].1.task_id.clone();
    assert!(engine::status_update(&mut s, &status(&id, TaskState::Running, None, T0 + 10), T0 + 10).is_empty());
    let before = s.tasks[&id].clone();
    // Duplicate and late repeat of an older state change nothing.
    assert!(engine::status_update(&mut s, &status(&id, TaskState::Running, None, T0 + 10), T0 + 20).is_empty());
    assert!(engine::status_update(&mut s, &status(&id, TaskState::Staging, None, T0 + 5), T0 + 20).is_empty());
    assert_eq!(s.tasks[&id], before);
    assert!(!s.is_dirty() || s.tasks[&id] == before);
    // Terminal is final; a later "running" of the same task is killed (it was replaced).
    engine::status_update(&mut s, &status(&id, TaskState::Lost, None, T0 + 30), T0 + 30);
    assert_eq!(s.tasks[&id].state, TS::Lost);
    assert!(engine::status_update(&mut s, &status(&id, TaskState::Lost, None, T0 + 30), T0 + 31).is_empty());
    assert_eq!(
        kills(&engine::status_update(&mut s, &status(&id, TaskState::Running, None, T0 + 40), T0 + 40)),
        vec![id.clone()]
    );
    assert_eq!(s.tasks[&id].state, TS::Lost);
    // Unknown tasks: killed when alive, ignored when ended.
    assert_eq!(
        kills(&engine::status_update(&mut s, &status("other.9", TaskState::Running, None, T0), T0)),
        vec!["other.9"]
    );
    assert!(engine::status_update(&mut s, &status("other.9", TaskState::Failed, None, T0), T0).is_empty());
    // LOST is replaced without backoff.
    let a = app(&mut s, "web");
    assert!(a["backoff"].is_null());
    assert_eq!(a["last_failure"]["state"], "lost");
    assert_eq!(launches(&engine::resource_offers(&mut s, vec![big(2)], T0 + 50)).len(), 1);
}

#[test]
fn backoff_after_failures_and_reset() {
    let mut s = State::default();
    put(
        &mut s,
        "crash",
        r#"{"cmd":"x","instances":1,"backoff_seconds":2,"backoff_factor":2,"max_launch_delay_seconds":5}"#,
    );
    let mut now = T0;
    let mut delays = Vec::new();
    for _ in 0..4 {
        let l = launches(&engine::resource_offers(&mut s, vec![big(1)], now));
        assert_eq!(l.len(), 1, "launches once the backoff expired");
        let id = l[0].1.task_id.clone();
        engine::status_update(&mut s, &status(&id, TaskState::Failed, None, now), now);
        let a = app(&mut s, "crash");
        let until = a["backoff"]["delay_until_ms"].as_u64().unwrap();
        delays.push(until - now);
        // While backing off: nothing launched, the reason says why, offers declined for 1 s.
        let ops = engine::resource_offers(&mut s, vec![big(1)], now + 100);
        assert!(launches(&ops).is_empty());
        assert!(matches!(&ops[0], Operation::Decline(d) if d.refuse_seconds == 1.0));
        let waiting = app(&mut s, "crash")["waiting"].as_str().unwrap().to_string();
        assert!(waiting.starts_with("backing off for"), "{waiting}");
        // The tick after expiry revives offers.
        assert!(!engine::tick(&mut s, until).is_empty());
        now = until;
    }
    assert_eq!(delays, vec![2000, 4000, 5000, 5000]);
    assert_eq!(app(&mut s, "crash")["last_failure"]["state"], "failed");
    // A task running for BACKOFF_RESET_MS resets the count.
    let l = launches(&engine::resource_offers(&mut s, vec![big(1)], now));
    run_all(&mut s, &l, None, now);
    engine::tick(&mut s, now + BACKOFF_RESET_MS - 1);
    assert_eq!(s.apps["crash"].failures, 4);
    engine::tick(&mut s, now + BACKOFF_RESET_MS);
    assert_eq!(s.apps["crash"].failures, 0);
}

#[test]
fn health_kill_after_max_failures() {
    let mut s = State::default();
    put(
        &mut s,
        "h",
        r#"{"cmd":"x","instances":1,"ports":1,"backoff_seconds":1,
           "health_checks":[{"type":"tcp","interval_ms":1000,"timeout_ms":500,"max_failures":3}]}"#,
    );
    let l = launches(&engine::resource_offers(&mut s, vec![big(1)], T0));
    let id = l[0].1.task_id.clone();
    run_all(&mut s, &l, Some(true), T0);
    engine::tick(&mut s, T0 + 1); // the creation deployment completes
    assert!(app(&mut s, "h")["deployment"].is_null());
    assert!(
        engine::status_update(&mut s, &status(&id, TaskState::Running, Some(false), T0 + 100), T0 + 100).is_empty()
    );
    // (max_failures - 1) × interval = 2 s.
    assert!(kills(&engine::tick(&mut s, T0 + 2099)).is_empty());
    assert_eq!(kills(&engine::tick(&mut s, T0 + 2100)), vec![id.clone()]);
    assert_eq!(s.tasks[&id].kill, Some(KillReason::Unhealthy));
    // Not killed twice; the replacement waits for the kill to end and then backs off.
    assert!(kills(&engine::tick(&mut s, T0 + 2200)).is_empty());
    assert!(launches(&engine::resource_offers(&mut s, vec![big(1)], T0 + 2200)).is_empty());
    engine::status_update(&mut s, &status(&id, TaskState::Killed, None, T0 + 2300), T0 + 2300);
    let a = app(&mut s, "h");
    assert_eq!(a["last_failure"]["state"], "unhealthy");
    assert_eq!(a["backoff"]["failures"], 1);
    assert!(launches(&engine::resource_offers(&mut s, vec![big(1)], T0 + 2400)).is_empty());
    assert_eq!(launches(&engine::resource_offers(&mut s, vec![big(1)], T0 + 3300)).len(), 1);
}

#[test]
fn rolling_deploy_keeps_healthy_capacity() {
    let mut s = State::default();
    let def = |cmd: &str| {
        format!(
            r#"{{"cmd":"{cmd}","instances":2,"ports":1,"upgrade_strategy":{{"minimum_health_capacity":1,"maximum_over_capacity":0.5}},
               "health_checks":[{{"type":"http","interval_ms":1000,"timeout_ms":500}}]}}"#
        )
    };
    put(&mut s, "web", &def("v1"));
    let v1 = launches(&engine::resource_offers(&mut s, vec![big(1), big(2)], T0));
    run_all(&mut s, &v1, Some(true), T0);
    engine::tick(&mut s, T0);
    assert!(app(&mut s, "web")["deployment"].is_null());
    assert_eq!(app(&mut s, "web")["status"], "running");

    // New command → new version; max total = 2 × 1.5 = 3 tasks, so one new task at a time.
    let (code, body) = put(&mut s, "web", &def("v2"));
    assert_eq!(code, 200);
    let v2 = body["version"].as_str().unwrap().to_string();
    assert_ne!(v2, v1[0].1.labels.iter().find(|a| a.name == "shoal.version").unwrap().value);
    let n1 = launches(&engine::resource_offers(&mut s, vec![big(1), big(2)], T0 + 1));
    assert_eq!(n1.len(), 1);
    // Running but not yet healthy: no old task may go (2 healthy needed).
    assert!(kills(&run_all(&mut s, &n1, None, T0 + 2)).is_empty());
    assert!(kills(&engine::tick(&mut s, T0 + 3)).is_empty());
    // Healthy: one old task (the oldest) goes.
    let ops = run_all(&mut s, &n1, Some(true), T0 + 4);
    assert_eq!(kills(&ops), vec![v1[0].1.task_id.clone()]);
    let d = &app(&mut s, "web")["deployment"];
    assert_eq!((d["new_healthy"].as_u64(), d["old_remaining"].as_u64()), (Some(1), Some(2)));
    // The killed one is not counted: another new task fits under the 3-task cap.
    let n2 = launches(&engine::resource_offers(&mut s, vec![big(1), big(2)], T0 + 5));
    assert_eq!(n2.len(), 1);
    engine::status_update(&mut s, &status(&v1[0].1.task_id, TaskState::Killed, None, T0 + 6), T0 + 6);
    assert_eq!(kills(&run_all(&mut s, &n2, Some(true), T0 + 7)), vec![v1[1].1.task_id.clone()]);
    // Killed tasks are not failures.
    assert!(app(&mut s, "web")["backoff"].is_null());
    engine::status_update(&mut s, &status(&v1[1].1.task_id, TaskState::Killed, None, T0 + 8), T0 + 8);
    engine::tick(&mut s, T0 + 9);
    let a = app(&mut s, "web");
    assert!(a["deployment"].is_null(), "{a}");
    assert_eq!((a["running"].as_u64(), a["healthy"].as_u64()), (Some(2), Some(2)));
    assert!(launches(&engine::resource_offers(&mut s, vec![big(3)], T0 + 10)).is_empty());

    // Changing only instances is not a new version.
    let (_, body) = put(&mut s, "web", &def("v2").replace("\"instances\":2", "\"instances\":3"));
    assert_eq!(body["version"], v2);
    assert!(body["deployment"].is_null());
}

#[test]
fn deploy_without_health_capacity_replaces_at_once() {
    let mut s = State::default();
    let def = |cmd: &str| {
        format!(
            r#"{{"cmd":"{cmd}","instances":3,"upgrade_strategy":{{"minimum_health_capacity":0,"maximum_over_capacity":0}}}}"#
        )
    };
    put(&mut s, "w", &def("a"));
    let v1 = launches(&engine::resource_offers(&mut s, vec![big(1)], T0));
    run_all(&mut s, &v1, None, T0);
    put(&mut s, "w", &def("b"));
    // Nothing new before the old are gone (no over-capacity); all old killed at once.
    assert_eq!(kills(&engine::tick(&mut s, T0 + 1)).len(), 3);
    assert_eq!(launches(&engine::resource_offers(&mut s, vec![big(1)], T0 + 2)).len(), 3);
}

#[test]
fn scale_down_kills_newest_and_delete_forgets() {
    let mut s = State::default();
    put(&mut s, "web", r#"{"cmd":"x","instances":4}"#);
    let l = launches(&engine::resource_offers(&mut s, vec![big(1), big(2)], T0));
    run_all(&mut s, &l, None, T0);
    let mut ids: Vec<String> = l.iter().map(|(_, t)| t.task_id.clone()).collect();
    ids.sort_by_key(|id| id.split('.').nth(1).unwrap().parse::<u64>().unwrap());
    assert_eq!(req(&mut s, "POST", "/apps/web/scale", r#"{"instances":2}"#, T0).0, 200);
    let mut newest = ids[2..].to_vec();
    newest.sort();
    assert_eq!(kills(&engine::tick(&mut s, T0 + 1)), newest);
    // Re-sent after 30 s without an answer.
    assert_eq!(kills(&engine::tick(&mut s, T0 + 1 + 30_000)), newest);

    let (code, body) = req(&mut s, "DELETE", "/apps/web", "", T0);
    assert_eq!((code, body["deleting"].as_bool()), (202, Some(true)));
    assert_eq!(app(&mut s, "web")["status"], "deleting");
    assert_eq!(req(&mut s, "PUT", "/apps/web", r#"{"cmd":"x"}"#, T0).0, 409);
    let ops = engine::tick(&mut s, T0 + 40_000);
    assert_eq!(kills(&ops), ids[..2].to_vec());
    for id in &ids {
        engine::status_update(&mut s, &status(id, TaskState::Killed, None, T0 + 41_000), T0 + 41_000);
    }
    assert_eq!(req(&mut s, "GET", "/apps/web", "", T0).0, 404);
    assert!(s.tasks.is_empty());
}

#[test]
fn api_shapes_and_errors() {
    let mut s = State::default();
    let (code, body) = put(&mut s, "web", r#"{"cmd":"x","instances":1,"bogus":1}"#);
    assert_eq!((code, body["error"].as_str()), (400, Some(r#"unknown field "bogus""#)));
    let (code, body) = put(&mut s, "web", r#"{"cmd":"x","constraints":[["rack","FOO"]]}"#);
    assert_eq!(code, 400);
    assert!(body["error"].as_str().unwrap().contains("unknown constraint operator FOO (one of UNIQUE"));
    assert_eq!(req(&mut s, "GET", "/apps/nope", "", T0).0, 404);
    assert_eq!(req(&mut s, "POST", "/apps/nope/scale", r#"{"instances":1}"#, T0).0, 404);
    assert_eq!(req(&mut s, "GET", "/nothing", "", T0).0, 404);
    assert_eq!(req(&mut s, "PATCH", "/apps/web", "", T0).0, 405);
    let (code, body) = put(&mut s, "web", r#"{"cmd":"x","instances":2,"labels":{"a":"b"}}"#);
    assert_eq!(code, 201);
    for key in [
        "id",
        "status",
        "version",
        "instances",
        "running",
        "healthy",
        "staged",
        "deployment",
        "waiting",
        "last_failure",
        "definition",
        "tasks",
    ] {
        assert!(body.get(key).is_some(), "missing {key} in {body}");
    }
    assert_eq!(body["definition"]["labels"]["a"], "b");
    assert_eq!(req(&mut s, "POST", "/apps/web/scale", r#"{"instances":"x"}"#, T0).0, 400);
    let v = body["version"].as_str().unwrap().to_string();
    let (code, body) = req(&mut s, "POST", "/apps/web/restart", "", T0 + 1);
    assert_eq!(code, 200);
    assert_ne!(body["version"].as_str().unwrap(), v);
    let (_, list) = req(&mut s, "GET", "/apps", "", T0);
    assert_eq!(list["apps"][0]["id"], "web");
    assert_eq!(list["apps"][0]["instances"], 2);
    engine::resource_offers(&mut s, vec![big(1)], T0);
    let (_, tasks) = req(&mut s, "GET", "/tasks", "", T0);
    assert_eq!(tasks["tasks"].as_array().unwrap().len(), 2);
    assert_eq!(tasks["tasks"][0]["state"], "staging");
}

#[test]
fn state_survives_a_new_instance() {
    let mut store = MemStore::default();
    let a = RefCell::new(Cache::<State>::new());
    let b = RefCell::new(Cache::<State>::new());
    with_state(&a, &mut store, |s: &mut State| {
        put(s, "web", r#"{"cmd":"x","instances":3,"constraints":[["@hostname","UNIQUE"]]}"#);
    })
    .unwrap();
    let l = with_state(&a, &mut store, |s: &mut State| launches(&engine::resource_offers(s, vec![big(1), big(2)], T0)))
        .unwrap();
    assert_eq!(l.len(), 2);
    // One key per app and per task.
    assert!(store.map.contains_key("app/web"));
    assert!(store.map.contains_key(&format!("task/{}", l[0].1.task_id)));
    // A fresh instance sees the tasks (and the compiled constraints) and places only the third.
    let l2 = with_state(&b, &mut store, |s: &mut State| {
        launches(&engine::resource_offers(s, vec![big(1), big(2), big(3)], T0))
    })
    .unwrap();
    assert_eq!(l2.len(), 1);
    assert_eq!(l2[0].0, "o3");
    // And the first instance notices b's write.
    let n = with_state(&a, &mut store, |s: &mut State| s.tasks.len()).unwrap();
    assert_eq!(n, 3);
    // A read-only call writes nothing.
    let writes = store.writes;
    with_state(&b, &mut store, |s: &mut State| req(s, "GET", "/apps", "", T0)).unwrap();
    assert_eq!(store.writes, writes);
}

#[test]
fn places_five_thousand_tasks_on_five_thousand_offers() {
    let mut s = State::default();
    put(&mut s, "many", r#"{"cmd":"x","instances":5000,"ports":1}"#);
    let offers: Vec<OfferInfo> = (0..5000).map(|i| offer(i, 4.0, 4096.0, (31000, 31010), None)).collect();
    let start = std::time::Instant::now();
    let l = launches(&engine::resource_offers(&mut s, offers, T0));
    let took = start.elapsed();
    assert_eq!(l.len(), 5000);
    assert!(per_offer(&l).values().all(|&n| n == 1));
    eprintln!("placed 5000 tasks on 5000 offers in {took:?}");
    let mut store = MemStore::default();
    let start = std::time::Instant::now();
    shoal_framework_common::store::Persistent::flush(&mut s, &mut store).unwrap();
    eprintln!("wrote {} keys in {:?}", store.map.len(), start.elapsed());
}

/// Checks `value` against the object schema `schema` of `doc` at the level of fields: every
/// required field is there and no field is undocumented (Schemathesis checks the rest against
/// a running `shoal dev`).
fn conforms(doc: &Value, schema: &Value, value: &Value, at: &str) {
    let schema = match schema.get("$ref").and_then(Value::as_str) {
        Some(r) => &doc["components"]["schemas"][r.rsplit('/').next().unwrap()],
        None => schema,
    };
    let Some(object) = value.as_object() else { return };
    if let Some(branches) = schema.get("oneOf").and_then(Value::as_array).filter(|_| schema.get("properties").is_none())
    {
        // The branch of a health check is its `type`.
        let kind = &value["type"];
        let branch = branches.iter().find(|b| &b["properties"]["type"]["const"] == kind);
        return conforms(doc, branch.unwrap_or_else(|| panic!("{at}: no branch for {value}")), value, at);
    }
    let properties = schema["properties"].as_object().unwrap_or_else(|| panic!("{at}: no properties in {schema}"));
    for required in schema["required"].as_array().unwrap() {
        assert!(object.contains_key(required.as_str().unwrap()), "{at}: {required} is missing from {value}");
    }
    for (name, field) in object {
        let documented = properties.get(name).unwrap_or_else(|| panic!("{at}.{name} is not documented"));
        if let Some(items) = documented.get("items").filter(|_| field.is_array()) {
            for (i, item) in field.as_array().unwrap().iter().enumerate() {
                conforms(doc, items, item, &format!("{at}.{name}[{i}]"));
            }
        } else if documented.get("$ref").is_some() {
            conforms(doc, documented, field, &format!("{at}.{name}"));
        }
    }
}

#[test]
fn the_document_describes_the_answers_field_by_field() {
    let doc = crate::doc::document();
    let mut s = State::default();
    let (status, created) = put(
        &mut s,
        "web",
        r#"{"cmd":"x","instances":2,"ports":["http"],"health_checks":[{"type":"http","port_index":0,"path":"/"}],
            "upgrade_strategy":{"minimum_health_capacity":0.5}}"#,
    );
    assert_eq!(status, 201);
    let put_answer = &doc["paths"]["/apps/{id}"]["put"]["responses"]["201"]["content"]["application/json"]["schema"];
    conforms(&doc, put_answer, &created, "PUT /apps/web");
    launches(&engine::resource_offers(&mut s, vec![big(1)], T0));
    let view = app(&mut s, "web");
    assert_eq!(view["tasks"].as_array().unwrap().len(), 2, "{view}");
    conforms(&doc, &serde_json::json!({"$ref": "App"}), &view, "GET /apps/web");
    let list = req(&mut s, "GET", "/apps", "", T0).1;
    let list_schema = &doc["paths"]["/apps"]["get"]["responses"]["200"]["content"]["application/json"]["schema"];
    conforms(&doc, list_schema, &list, "GET /apps");
    let tasks = req(&mut s, "GET", "/tasks", "", T0).1;
    let tasks_schema = &doc["paths"]["/tasks"]["get"]["responses"]["200"]["content"]["application/json"]["schema"];
    conforms(&doc, tasks_schema, &tasks, "GET /tasks");
    assert_eq!(shoal_framework_common::openapi::undefined_references(&doc), Vec::<String>::new());
}
