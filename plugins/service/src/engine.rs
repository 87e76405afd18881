//! The scheduling rules, as pure functions of the state: placing tasks on offers, applying status
//! updates, and the periodic reconciliation (scale, rolling deploy, health kills, backoff, revive).

use std::collections::HashMap;

use shoal_framework_common::constraint::ConstraintCounts;
use shoal_framework_common::place::{self, Diagnosis, REFUSE_IDLE, REFUSE_WAITING, Slot};
use shoal_framework_common::state::State as TaskState;
use shoal_framework_common::time::iso8601;
use shoal_sdk::labels as label;
use shoal_sdk::scheduling::{OfferInfo, Operation, TaskSpec};
use shoal_sdk::{Attribute, Resources, TaskStatus};

use crate::model::{AppRecord, Failure, KillReason, State, TERMINAL_KEEP_MS, TaskRecord};

/// A task running (and healthy, with checks) this long resets its app's failure count.
pub const BACKOFF_RESET_MS: u64 = 30_000;
/// A kill without a terminal status after this long is sent again.
pub const KILL_RETRY_MS: u64 = 30_000;

/// A new version string: `2026-11-23T23:15:53.123Z-7`.
pub fn new_version(state: &mut State, now: u64) -> String {
    let seq = state.next_seq();
    format!("{}-{seq}", iso8601(now))
}

/// How many tasks `app` should launch now (ignoring backoff).
pub fn launch_need<'a>(app: &AppRecord, tasks: impl Iterator<Item = &'a TaskRecord>) -> u32 {
    if app.deleting {
        return 0;
    }
    let (mut new, mut old) = (0u64, 0u64);
    // A task being killed for failing its health checks holds its place until it has ended: its
    // replacement then starts under the app's backoff, not beside it.
    let counts = |t: &&TaskRecord| t.alive() || (t.kill == Some(KillReason::Unhealthy) && !t.state.is_terminal());
    for t in tasks.filter(counts) {
        if t.version == app.version { new += 1 } else { old += 1 }
    }
    let instances = u64::from(app.def.instances);
    let missing = instances.saturating_sub(new);
    if old == 0 {
        return missing as u32;
    }
    let max_total = (instances as f64 * (1.0 + app.def.upgrade_strategy.maximum_over_capacity) + 1e-9).floor() as u64;
    missing.min(max_total.saturating_sub(new + old)) as u32
}

fn backoff_text(app: &AppRecord, now: u64) -> String {
    let left = app.delay_until_ms.saturating_sub(now) as f64 / 1000.0;
    let n = app.failures;
    format!("backing off for {left:.1} s after {n} failure{}", if n == 1 { "" } else { "s" })
}

/// Whether `app` is in its launch backoff.
pub fn backing_off(app: &AppRecord, now: u64) -> bool {
    now < app.delay_until_ms
}

/// What one app's placement produced.
struct Placed {
    tasks: Vec<TaskRecord>,
    waiting: Option<String>,
}

/// Places up to `need` tasks of `app`, each on the offer holding the fewest of its tasks that fits
/// under all constraints (ties: offer order).
fn place_app(
    app: &AppRecord,
    existing: &[&TaskRecord],
    slots: &mut [Slot],
    slot_of_agent: &HashMap<String, usize>,
    need: u32,
    seq: &mut u64,
    now: u64,
) -> Placed {
    let def = &app.def;
    let constraints = &app.constraints;
    let demand = def.task.demand(def.ports.count());
    let mut ccounts = ConstraintCounts::new(constraints);
    let mut count = vec![0u32; slots.len()];
    for t in existing.iter().filter(|t| !t.state.is_terminal()) {
        ccounts.add_pairs(constraints, &t.host, &t.attributes);
        if let Some(&i) = slot_of_agent.get(&t.agent_id) {
            count[i] += 1;
        }
    }
    let non_monotonic = constraints.iter().any(|c| c.is_non_monotonic());
    let fits = |slot: &Slot, cc: &ConstraintCounts| {
        slot.lack(&demand).is_none()
            && (constraints.is_empty()
                || cc.blocking(constraints, &slot.offer.hostname, &slot.offer.attributes).is_none())
    };

    let mut out = Vec::new();
    let mut level = count.iter().copied().min().unwrap_or(0);
    let mut max_level = count.iter().copied().max().unwrap_or(0);
    let mut cursor = 0;
    while (out.len() as u32) < need {
        // Offers before `cursor` at `level` were found unfit; resources only shrink and counts
        // only grow, so they stay unfit (GROUP_BY excepted: then every placement rescans).
        let mut found = None;
        'search: while level <= max_level {
            while cursor < slots.len() {
                let i = cursor;
                cursor += 1;
                if count[i] == level && fits(&slots[i], &ccounts) {
                    found = Some(i);
                    break 'search;
                }
            }
            level += 1;
            cursor = 0;
        }
        let Some(i) = found else { break };
        *seq += 1;
        let task_id = format!("{}.{}", def.id, *seq);
        let resources = slots[i].take(&demand);
        let ports: Vec<u16> = resources.ports.iter().map(|r| r.begin).collect();
        let offer = &slots[i].offer;
        let attributes: Vec<(String, String)> =
            offer.attributes.iter().map(|a| (a.name.clone(), a.value.clone())).collect();
        ccounts.add(constraints, &offer.hostname, &offer.attributes);
        let record = TaskRecord {
            id: task_id.clone(),
            app: def.id.clone(),
            version: app.version.clone(),
            seq: *seq,
            agent_id: offer.agent_id.clone(),
            host: offer.hostname.clone(),
            attributes,
            ports,
            state: TaskState::Staging,
            healthy: None,
            since_ms: now,
            status_ms: 0,
            message: String::new(),
            launched_ms: now,
            running_since_ms: None,
            healthy_since_ms: None,
            unhealthy_since_ms: None,
            kill: None,
            kill_sent_ms: 0,
        };
        let spec = task_spec(app, &record, resources);
        slots[i].tasks.push(spec);
        out.push(record);
        count[i] += 1;
        max_level = max_level.max(count[i]);
        if non_monotonic {
            level = count.iter().copied().min().unwrap_or(0);
            cursor = 0;
        }
    }

    let placed = out.len() as u32;
    let waiting = (placed < need).then(|| {
        let mut diag = Diagnosis::default();
        for slot in slots.iter() {
            if let Some(lack) = slot.lack(&demand) {
                diag.lack(lack, slot);
            } else if let Some(c) = ccounts.blocking(constraints, &slot.offer.hostname, &slot.offer.attributes) {
                diag.blocked(c.describe());
            } else {
                diag.other("unused");
            }
        }
        let missing = need - placed;
        let head = if placed > 0 {
            format!("placed {placed} of {need} tasks; {missing} still missing: ")
        } else {
            format!("{missing} task{} missing: ", if missing == 1 { "" } else { "s" })
        };
        head + &diag.message(&demand)
    });
    Placed { tasks: out, waiting }
}

/// The task spec of `record`: command, resources, env (app env, `PORT_<NAME>` for named ports,
/// `SHOAL_APP_ID`, `SHOAL_APP_VERSION`, `SHOAL_TASK_ID`) and labels (the app's labels,
/// `shoal.service`, `shoal.version`, `shoal.health`).
pub fn task_spec(app: &AppRecord, record: &TaskRecord, resources: Resources) -> TaskSpec {
    let def = &app.def;
    let mut env: Vec<(String, String)> = def.task.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    if let crate::app::Ports::Names(names) = &def.ports {
        for (name, port) in names.iter().zip(&record.ports) {
            env.push((format!("PORT_{}", name.to_ascii_uppercase().replace('-', "_")), port.to_string()));
        }
    }
    env.push(("SHOAL_APP_ID".into(), def.id.clone()));
    env.push(("SHOAL_APP_VERSION".into(), record.version.clone()));
    env.push(("SHOAL_TASK_ID".into(), record.id.clone()));
    let mut labels: Vec<Attribute> =
        def.task.labels.iter().map(|(k, v)| Attribute { name: k.clone(), value: v.clone() }).collect();
    labels.push(Attribute { name: label::SERVICE.into(), value: def.id.clone() });
    labels.push(Attribute { name: label::VERSION.into(), value: record.version.clone() });
    if let Some(hc) = def.health_checks.first() {
        labels.push(Attribute { name: label::HEALTH.into(), value: hc.spec_json(&record.ports) });
    }
    TaskSpec { task_id: record.id.clone(), command: def.task.command(), resources, env, labels }
}

/// Answers offers: places the tasks every app lacks, declines the rest.
pub fn resource_offers(state: &mut State, offers: Vec<OfferInfo>, now: u64) -> Vec<Operation> {
    let mut slots: Vec<Slot> = offers.into_iter().map(Slot::new).collect();
    let slot_of_agent: HashMap<String, usize> =
        slots.iter().enumerate().map(|(i, s)| (s.offer.agent_id.clone(), i)).collect();
    let mut seq = state.seq;
    let mut any_waiting = false;
    let mut new_tasks = Vec::new();
    let mut waiting_changes = Vec::new();
    for (id, app) in &state.apps {
        let existing: Vec<&TaskRecord> = state.tasks_of(id).collect();
        let need = launch_need(app, existing.iter().copied());
        let waiting = if need == 0 {
            None
        } else if backing_off(app, now) {
            any_waiting = true;
            Some(backoff_text(app, now))
        } else {
            let placed = place_app(app, &existing, &mut slots, &slot_of_agent, need, &mut seq, now);
            new_tasks.extend(placed.tasks);
            any_waiting |= placed.waiting.is_some();
            placed.waiting
        };
        if waiting != app.waiting {
            waiting_changes.push((id.clone(), waiting));
        }
    }
    for (id, waiting) in waiting_changes {
        if let Some(app) = state.apps.get_mut(&id) {
            app.waiting = waiting;
            state.touch_app(&id);
        }
    }
    if seq != state.seq {
        state.seq = seq;
        state.touch_meta();
    }
    for t in new_tasks {
        state.touch_task(&t.id);
        state.tasks.insert(t.id.clone(), t);
    }
    place::answer(slots, if any_waiting { REFUSE_WAITING } else { REFUSE_IDLE })
}

/// Applies one (at-least-once) status update.
pub fn status_update(state: &mut State, status: &TaskStatus, now: u64) -> Vec<Operation> {
    let next = TaskState::from(status.state);
    let Some(task) = state.tasks.get_mut(&status.task_id) else {
        // Not ours (or forgotten long ago): a live one must not run unmanaged.
        return if next.is_terminal() { Vec::new() } else { vec![Operation::Kill(status.task_id.clone())] };
    };
    if !task.state.accepts(next) {
        // A late duplicate. A task we consider ended that reports itself alive (its agent came back
        // after we gave it up as lost) has been replaced: kill it.
        return if task.state.is_terminal() && !next.is_terminal() {
            vec![Operation::Kill(status.task_id.clone())]
        } else {
            Vec::new()
        };
    }
    if next == task.state && status.timestamp_ms < task.status_ms {
        return Vec::new();
    }
    let before = task.clone();
    task.status_ms = task.status_ms.max(status.timestamp_ms);
    if next != task.state {
        task.state = next;
        task.since_ms = now;
    }
    if !status.message.is_empty() {
        task.message = status.message.clone();
    }
    if task.agent_id.is_empty() {
        task.agent_id = status.agent_id.clone();
    }
    if next == TaskState::Running {
        task.running_since_ms.get_or_insert(now);
        if status.healthy != task.healthy {
            task.healthy = status.healthy;
            match status.healthy {
                Some(true) => {
                    task.unhealthy_since_ms = None;
                    task.healthy_since_ms.get_or_insert(now);
                }
                Some(false) => {
                    task.healthy_since_ms = None;
                    task.unhealthy_since_ms.get_or_insert(now);
                }
                None => {
                    task.healthy_since_ms = None;
                    task.unhealthy_since_ms = None;
                }
            }
        }
    }
    // Only the status timestamp moved: not worth a write.
    let changed = TaskRecord { status_ms: before.status_ms, ..task.clone() } != before;
    if !changed {
        return Vec::new();
    }
    let (task_id, app_id) = (task.id.clone(), task.app.clone());
    state.touch_task(&task_id);
    if next.is_terminal() {
        on_terminal(state, &task_id, now);
    }
    reconcile_app(state, &app_id, now)
}

/// A task ended: count failures for backoff, remember the last failure, ask for a replacement.
fn on_terminal(state: &mut State, task_id: &str, now: u64) {
    let Some(task) = state.tasks.get(task_id).cloned() else { return };
    let Some(app) = state.apps.get_mut(&task.app) else { return };
    if app.deleting {
        return;
    }
    let unhealthy = task.kill == Some(KillReason::Unhealthy);
    let failed = unhealthy || (task.kill.is_none() && matches!(task.state, TaskState::Failed | TaskState::Finished));
    if failed {
        app.failures += 1;
        let delay = app.def.backoff_ms(app.failures);
        app.delay_until_ms = now + delay;
        app.revive_on_expiry = delay > 0;
        let message = if unhealthy {
            format!("killed for failing health checks ({})", task.message)
        } else if task.state == TaskState::Finished {
            format!("exited although it is a service ({})", task.message)
        } else {
            task.message.clone()
        };
        let state_name = if unhealthy { "unhealthy".to_string() } else { task.state.name().to_string() };
        app.last_failure = Some(Failure { task_id: task.id.clone(), state: state_name, message, at_ms: now });
    } else if task.kill.is_none() {
        // LOST (replaced without backoff) or killed by someone else.
        app.last_failure = Some(Failure {
            task_id: task.id.clone(),
            state: task.state.name().into(),
            message: task.message.clone(),
            at_ms: now,
        });
    }
    let id = task.app.clone();
    state.touch_app(&id);
    state.want_revive();
}

/// Kills what must go for `app_id` now: tasks of a deleted app, tasks failing health checks past
/// `(max_failures - 1) × interval_ms`, extra tasks after a scale-down (newest first), and old
/// versions during a rolling deploy while `minimum_health_capacity × instances` healthy tasks
/// remain. Forgets a deleted app once its tasks are gone and ends a deployment once done.
pub fn reconcile_app(state: &mut State, app_id: &str, now: u64) -> Vec<Operation> {
    let Some(app) = state.apps.get(app_id) else { return Vec::new() };
    let has_checks = !app.def.health_checks.is_empty();
    let live: Vec<&TaskRecord> = state.tasks_of(app_id).filter(|t| !t.state.is_terminal()).collect();
    let mut kills: Vec<(String, KillReason)> = Vec::new();
    let mut deployment_done = false;
    if app.deleting {
        if live.is_empty() {
            for id in state.task_ids(app_id) {
                state.tasks.remove(&id);
                state.touch_task(&id);
            }
            state.apps.remove(app_id);
            state.touch_app(app_id);
            return Vec::new();
        }
        kills.extend(live.iter().filter(|t| t.kill.is_none()).map(|t| (t.id.clone(), KillReason::Delete)));
    } else {
        if let Some(hc) = app.def.health_checks.first() {
            for t in live.iter().filter(|t| t.alive() && t.state == TaskState::Running && t.healthy == Some(false)) {
                if t.unhealthy_since_ms.is_some_and(|since| now >= since + hc.kill_after_ms()) {
                    kills.push((t.id.clone(), KillReason::Unhealthy));
                }
            }
        }
        let doomed = |t: &TaskRecord, kills: &[(String, KillReason)]| kills.iter().any(|(id, _)| *id == t.id);
        let alive: Vec<&TaskRecord> = live.iter().copied().filter(|t| t.alive() && !doomed(t, &kills)).collect();
        let (mut new, mut old): (Vec<&TaskRecord>, Vec<&TaskRecord>) =
            alive.iter().partition(|t| t.version == app.version);
        let instances = app.def.instances as usize;
        if new.len() > instances {
            // Newest first.
            new.sort_by(|a, b| b.seq.cmp(&a.seq));
            let extra = new.len() - instances;
            kills.extend(new.drain(..extra).map(|t| (t.id.clone(), KillReason::Scale)));
        }
        if !old.is_empty() {
            let mut healthy = new.iter().chain(old.iter()).filter(|t| t.is_healthy(has_checks)).count();
            let min_healthy =
                (instances as f64 * app.def.upgrade_strategy.minimum_health_capacity - 1e-9).ceil().max(0.0) as usize;
            // Not-healthy old tasks first (they hold no capacity), then the oldest.
            old.sort_by_key(|t| (t.is_healthy(has_checks), t.seq));
            for t in &old {
                if !t.is_healthy(has_checks) {
                    kills.push((t.id.clone(), KillReason::Deploy));
                } else if healthy > min_healthy {
                    kills.push((t.id.clone(), KillReason::Deploy));
                    healthy -= 1;
                } else {
                    break;
                }
            }
        } else if app.deployment.is_some() {
            let new_healthy = new.iter().filter(|t| t.is_healthy(has_checks)).count();
            deployment_done = new_healthy >= instances;
        }
    }
    let mut ops = Vec::new();
    for (id, reason) in kills {
        if let Some(t) = state.tasks.get_mut(&id) {
            t.kill = Some(reason);
            t.kill_sent_ms = now;
            if reason == KillReason::Unhealthy {
                let secs = t.unhealthy_since_ms.map(|s| now.saturating_sub(s) / 1000).unwrap_or(0);
                t.message = format!("health checks failing for {secs} s");
            }
            state.touch_task(&id);
            ops.push(Operation::Kill(id));
        }
    }
    if deployment_done && let Some(app) = state.apps.get_mut(app_id) {
        app.deployment = None;
        state.touch_app(app_id);
    }
    ops
}

/// The periodic timer: reconciles every app, expires backoffs, resets failure counts of apps that
/// run healthy again, re-sends unanswered kills, forgets old ended tasks, and revives offers when
/// an app wants tasks.
pub fn tick(state: &mut State, now: u64) -> Vec<Operation> {
    let mut ops = Vec::new();
    let ids: Vec<String> = state.apps.keys().cloned().collect();
    for id in &ids {
        ops.extend(reconcile_app(state, id, now));
    }
    let mut revive = false;
    let mut touched = Vec::new();
    for (id, app) in state.apps.iter_mut() {
        if app.revive_on_expiry && !backing_off(app, now) {
            app.revive_on_expiry = false;
            revive = true;
            touched.push(id.clone());
        }
        if app.failures > 0 {
            let has_checks = !app.def.health_checks.is_empty();
            let prefix = format!("{id}.");
            let steady =
                state.tasks.range(prefix.clone()..).take_while(|(k, _)| k.starts_with(&prefix)).any(|(_, t)| {
                    let since = if has_checks { t.healthy_since_ms } else { t.running_since_ms };
                    t.alive() && t.is_healthy(has_checks) && since.is_some_and(|s| now >= s + BACKOFF_RESET_MS)
                });
            if steady {
                app.failures = 0;
                app.delay_until_ms = 0;
                app.revive_on_expiry = false;
                touched.push(id.clone());
            }
        }
    }
    for id in touched {
        state.touch_app(&id);
    }
    let mut resend = Vec::new();
    let mut forget = Vec::new();
    for t in state.tasks.values_mut() {
        if t.state.is_terminal() {
            if now >= t.since_ms + TERMINAL_KEEP_MS {
                forget.push(t.id.clone());
            }
        } else if t.kill.is_some() && now >= t.kill_sent_ms + KILL_RETRY_MS {
            t.kill_sent_ms = now;
            resend.push(t.id.clone());
        }
    }
    for id in forget {
        state.tasks.remove(&id);
        state.touch_task(&id);
    }
    for id in resend {
        state.touch_task(&id);
        ops.push(Operation::Kill(id));
    }
    if revive {
        state.want_revive();
    }
    if state.revive {
        state.revive = false;
        state.touch_meta();
        let wanted =
            state.apps.iter().any(|(id, app)| !backing_off(app, now) && launch_need(app, state.tasks_of(id)) > 0);
        if wanted {
            ops.push(Operation::Revive);
        }
    }
    ops
}

/// Counts of an app's tasks: (running, healthy, staged).
pub fn counts(state: &State, app: &AppRecord) -> (usize, usize, usize) {
    let has_checks = !app.def.health_checks.is_empty();
    let (mut running, mut healthy, mut staged) = (0, 0, 0);
    for t in state.tasks_of(&app.def.id) {
        match t.state {
            TaskState::Running => {
                running += 1;
                if t.is_healthy(has_checks) {
                    healthy += 1;
                }
            }
            TaskState::Staging | TaskState::Starting => staged += 1,
            _ => {}
        }
    }
    (running, healthy, staged)
}
