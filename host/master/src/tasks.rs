//! Tasks: what the master knows of each (launched, running, ended), the status updates agents
//! send about them, and the commands it sends agents.
//!
//! - **Launch** and **kill** commands go to the task's agent as requests (`shoal_protocol::task`);
//!   a launch the agent does not answer fails its tasks, which the framework then replaces.
//! - **Status updates** from agents are acknowledged after they are applied. A duplicate, or a
//!   move backwards or out of a terminal state, changes nothing. Each change reaches the
//!   framework, the service registry (tasks with ports and a `shoal.service` label), and the bus
//!   (`shoal.evt.task.<service>.<state>`).
//! - **Reconciliation**: re-registering agents confirm their tasks (and the framework receives
//!   their status again); tasks the cluster gave up are killed on their agent; tasks whose agent
//!   does not come back within the recovery window are `lost` (see [`crate::journal`]).

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde::Serialize;
use shoal_bus::subject;
use shoal_protocol::{
    AgentTask, KillReply, KillRequest, LaunchReply, LaunchRequest, Resources, StatusUpdate, TaskInfo, TaskState, labels,
};

use crate::allocation::ToWit;
use crate::frameworks::{FwInput, Outgoing};
use crate::{AgentState, Master, MasterError};

/// Journal key prefix of tasks.
pub(crate) const JOURNAL_TASKS: &str = "task/";
/// How long finished tasks stay listed.
pub(crate) const KEEP_TERMINAL: Duration = Duration::from_secs(300);
/// Default refusal of offers a framework neither used nor declined, and of offers of a failed call.
pub(crate) const DEFAULT_REFUSE: Duration = Duration::from_secs(5);
/// Inputs one worker call batch handles at most.
pub(crate) const BATCH: usize = 256;

/// A task as the master knows it.
#[derive(Clone, Debug, PartialEq, Serialize, serde::Deserialize)]
pub struct TaskEntry {
    /// What runs, where.
    #[serde(flatten)]
    pub info: TaskInfo,
    /// Host name of its agent.
    pub hostname: String,
    /// State.
    pub state: TaskState,
    /// Health, once its check has a verdict.
    pub healthy: Option<bool>,
    /// Last message.
    pub message: String,
    /// Launched at, ms since the Unix epoch.
    pub created_ms: u64,
    /// Last change, ms since the Unix epoch.
    pub updated_ms: u64,
    /// Seen by its agent since this master started (false for journaled tasks until their agent
    /// registers again).
    #[serde(skip)]
    pub confirmed: bool,
}

impl TaskEntry {
    /// The service the task is an instance of (label `shoal.service`), if any.
    pub fn service(&self) -> Option<&str> {
        self.info.labels.get(labels::SERVICE).map(String::as_str)
    }

    fn wit_status(&self) -> shoal_abi::TaskStatus {
        shoal_abi::TaskStatus {
            task_id: self.info.id.clone(),
            agent_id: self.info.agent_id.clone(),
            state: self.state.to_wit(),
            healthy: self.healthy,
            message: self.message.clone(),
            timestamp_ms: self.updated_ms,
        }
    }
}

impl Master {
    // ---- queries -------------------------------------------------------------------------

    /// Every task the master knows (live ones, and finished ones for a few minutes).
    pub fn tasks(&self) -> Vec<TaskEntry> {
        self.tasks.lock().values().cloned().collect()
    }

    /// One task.
    pub fn task(&self, id: &str) -> Option<TaskEntry> {
        self.tasks.lock().get(id).cloned()
    }

    /// Resources held per agent by live tasks.
    pub(crate) fn task_usage(&self) -> (BTreeMap<String, Resources>, BTreeMap<String, Resources>) {
        let mut per_agent: BTreeMap<String, Resources> = BTreeMap::new();
        let mut per_framework: BTreeMap<String, Resources> = BTreeMap::new();
        for t in self.tasks.lock().values().filter(|t| !t.state.is_terminal()) {
            let a = per_agent.entry(t.info.agent_id.clone()).or_default();
            *a = a.plus(&t.info.resources);
            let f = per_framework.entry(t.info.framework.clone()).or_default();
            *f = f.plus(&t.info.resources);
        }
        (per_agent, per_framework)
    }

    // ---- frameworks ----------------------------------------------------------------------

    pub(crate) async fn send_outgoing(self: &Arc<Self>, outgoing: Vec<Outgoing>) {
        if self.is_stopped() {
            // A master that no longer leads sends nothing; the next leader decides again.
            return;
        }
        for o in outgoing {
            match o {
                Outgoing::Launch(agent, tasks, trace) => {
                    let me = self.clone();
                    let span = match trace {
                        Some(trace) => {
                            let span = tracing::info_span!(
                                target: shoal_trace::TARGET, "master.launch",
                                agent = %agent, tasks = tasks.len(),
                            );
                            trace.adopt(&span);
                            span
                        }
                        None => tracing::Span::none(),
                    };
                    tokio::spawn(tracing::Instrument::instrument(me.send_launch(agent, tasks), span));
                }
                Outgoing::Kill(agent, task) => {
                    let me = self.clone();
                    tokio::spawn(async move { me.send_kill(agent, task).await });
                }
                Outgoing::Status(fw, status) => {
                    if let Some(w) = self.fw_state.lock().get(&fw).and_then(|s| s.worker.clone()) {
                        let _ = w.send(FwInput::Status(status));
                    }
                }
                Outgoing::Event(subject, ty, cloud_subject, data) => {
                    self.events.emit(subject, ty, &cloud_subject, data).await;
                }
            }
        }
    }

    pub(crate) async fn send_launch(self: Arc<Self>, agent: String, tasks: Vec<TaskInfo>) {
        let ids: Vec<String> = tasks.iter().map(|t| t.id.clone()).collect();
        if self.is_stopped() {
            return;
        }
        if let Some(flush) = &self.journal_flush
            && let Err(e) = flush().await
        {
            // Not journaled durably: a next leader would not know these tasks, so they never leave.
            for id in ids {
                let why = format!("the master could not journal the launch: {e}");
                self.internal_status(&id, &agent, TaskState::Failed, why).await;
            }
            return;
        }
        if self.is_stopped() {
            // The leadership ended while the journal was flushed: the next leader decides.
            return;
        }
        let body = serde_json::to_vec(&LaunchRequest { term: self.config.term, tasks }).expect("a launch serialises");
        let reply = self.bus.request(&subject::agent_launch(&agent), body.into(), Duration::from_secs(5)).await;
        match reply.map(|m| serde_json::from_slice::<LaunchReply>(&m.payload)) {
            Ok(Ok(reply)) => {
                for (id, why) in reply.refused {
                    self.internal_status(&id, &agent, TaskState::Failed, format!("the agent refused it: {why}")).await;
                }
            }
            Ok(Err(e)) => {
                for id in ids {
                    self.internal_status(
                        &id,
                        &agent,
                        TaskState::Lost,
                        format!("the agent answered the launch with {e}"),
                    )
                    .await;
                }
            }
            Err(e) => {
                for id in ids {
                    self.internal_status(
                        &id,
                        &agent,
                        TaskState::Lost,
                        format!("agent {agent} did not take the launch: {e}"),
                    )
                    .await;
                }
            }
        }
    }

    pub(crate) async fn send_kill(self: Arc<Self>, agent: String, task: String) {
        if self.is_stopped() {
            return;
        }
        let request = KillRequest { term: self.config.term, task_id: task.clone(), grace_ms: None };
        let body = serde_json::to_vec(&request).expect("serialises");
        match self.bus.request(&subject::agent_kill(&agent), body.into(), Duration::from_secs(5)).await {
            Ok(m) => match serde_json::from_slice(&m.payload) {
                Ok(KillReply { refused: Some(why), .. }) => {
                    // A newer leader has spoken to the agent: this master is deposed, and its
                    // kill is not carried out.
                    tracing::warn!(%task, %agent, term = self.config.term, cause = %why, "the agent refused the kill");
                }
                Ok(KillReply { known: false, .. }) => {
                    self.internal_status(&task, &agent, TaskState::Lost, "its agent does not know it".into()).await;
                }
                _ => {}
            },
            Err(e) => {
                tracing::warn!(%task, %agent, cause = %e, "kill not delivered; the task ends when its agent is lost")
            }
        }
    }

    /// A status update the master makes itself (launch failures, lost agents).
    pub(crate) async fn internal_status(&self, task_id: &str, agent: &str, state: TaskState, message: String) {
        let update = StatusUpdate {
            uuid: format!("master-{}", self.next_uuid.fetch_add(1, Ordering::Relaxed)),
            task_id: task_id.to_owned(),
            agent_id: agent.to_owned(),
            state,
            healthy: None,
            message,
            timestamp_ms: self.clock.now_ms(),
        };
        self.apply_status(&update, true).await;
    }

    // ---- status updates ------------------------------------------------------------------

    /// Apply a status update (idempotent); forward a change to the framework, the service
    /// registry and the bus. `force` forwards the status even when nothing changed
    /// (reconciliation after a restart).
    pub async fn apply_status(&self, update: &StatusUpdate, force: bool) {
        let changed = {
            let mut tasks = self.tasks.lock();
            let Some(t) = tasks.get_mut(&update.task_id) else {
                if !update.state.is_terminal() {
                    tracing::warn!(task = %update.task_id, agent = %update.agent_id, "status of a task the master does not know");
                }
                return;
            };
            if t.info.agent_id != update.agent_id {
                return;
            }
            let same = t.state == update.state && t.healthy == update.healthy.or(t.healthy);
            if !t.state.may_become(update.state) || (same && !force) {
                return;
            }
            t.state = update.state;
            if update.healthy.is_some() {
                t.healthy = update.healthy;
            }
            if update.state.is_terminal() {
                t.healthy = None;
            }
            t.message = update.message.clone();
            t.updated_ms = update.timestamp_ms.max(t.created_ms);
            t.confirmed = true;
            t.clone()
        };
        metrics::counter!("shoal_task_transitions_total", "state" => changed.state.as_str()).increment(1);
        if changed.state.is_terminal() {
            self.journal_delete(&changed.info.id);
            self.kick.notify_one();
        } else {
            self.journal_put(&changed);
        }
        self.sync_discovery(&changed);
        let fw = changed.info.framework.clone();
        if let Some(w) = self.fw_state.lock().get(&fw).and_then(|s| s.worker.clone()) {
            let _ = w.send(FwInput::Status(changed.wit_status()));
        }
        let group = changed.service().unwrap_or(&fw).to_owned();
        self.events
            .emit(
                subject::task_event(&group, changed.state.as_str()),
                &format!("io.shoal.task.{}", changed.state),
                &format!("tasks/{}", changed.info.id),
                serde_json::json!({
                    "id": changed.info.id, "framework": fw, "agent_id": changed.info.agent_id,
                    "hostname": changed.hostname, "state": changed.state, "healthy": changed.healthy,
                    "message": changed.message, "ports": changed.info.ports(),
                }),
            )
            .await;
    }

    pub(crate) fn sync_discovery(&self, t: &TaskEntry) {
        let Some(discovery) = &self.discovery else { return };
        let Some(service) = t.service() else { return };
        let ports = t.info.ports();
        let Some(first) = ports.first() else { return };
        if t.state.is_terminal() {
            let _ = discovery.deregister(service, &t.info.id);
            return;
        }
        if t.state != TaskState::Running {
            return;
        }
        let address = self
            .agents
            .lock()
            .get(&t.info.agent_id)
            .map(|a| a.reg.address.clone().unwrap_or_else(|| a.reg.hostname.clone()))
            .unwrap_or_else(|| t.hostname.clone());
        let has_check = t.info.labels.contains_key(labels::HEALTH);
        let health = match t.healthy {
            Some(true) => shoal_discovery::Health::Passing,
            Some(false) => shoal_discovery::Health::Critical,
            None if has_check => shoal_discovery::Health::Unknown,
            None => shoal_discovery::Health::Passing,
        };
        let registration = shoal_discovery::Registration {
            address: format!("{address}:{first}"),
            ports: ports.iter().enumerate().map(|(i, p)| (format!("port{i}"), *p)).collect(),
            weight: t.info.labels.get(labels::WEIGHT).and_then(|w| w.parse().ok()).unwrap_or(1),
            // Labels the host consumed stay out; the rest (`shoal.route.*` included) describe the instance.
            labels: t
                .info
                .labels
                .iter()
                .filter(|(k, _)| !labels::is_consumed(k))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            version: t.info.labels.get(labels::VERSION).cloned().unwrap_or_default(),
            health: Some(health),
            ttl_seconds: None,
            check: None,
        };
        if let Err(e) = discovery.upsert_task(service, &t.info.id, registration) {
            tracing::warn!(task = %t.info.id, %service, cause = %e, "could not register the task's instance");
        }
    }

    // ---- agents' tasks -------------------------------------------------------------------

    /// An agent (re-)registered reporting `reported`: confirm what the master knows, adopt
    /// nothing it does not, and answer the tasks the agent must kill.
    pub(crate) async fn reconcile_agent(&self, agent: &str, reported: &[AgentTask]) -> Vec<String> {
        let mut kill = Vec::new();
        let mut updates = Vec::new();
        let reported_ids: HashSet<&str> = reported.iter().map(|t| t.info.id.as_str()).collect();
        {
            let tasks = self.tasks.lock();
            for r in reported {
                match tasks.get(&r.info.id) {
                    Some(t) if t.info.agent_id == agent && !t.state.is_terminal() => {
                        updates.push((r.info.id.clone(), r.state, r.healthy, r.message.clone(), !t.confirmed));
                    }
                    _ if r.state.is_terminal() => {} // over, and the master knows or never will
                    _ => kill.push(r.info.id.clone()),
                }
            }
            for t in tasks.values() {
                if t.info.agent_id == agent && !t.state.is_terminal() && !reported_ids.contains(t.info.id.as_str()) {
                    // Launched a moment ago and not yet on the agent: the launch is in flight.
                    if t.state == TaskState::Staging && t.confirmed {
                        continue;
                    }
                    updates.push((
                        t.info.id.clone(),
                        TaskState::Lost,
                        None,
                        "its agent registered again without it".into(),
                        false,
                    ));
                }
            }
        }
        for (id, state, healthy, message, force) in updates {
            let update = StatusUpdate {
                uuid: format!("master-{}", self.next_uuid.fetch_add(1, Ordering::Relaxed)),
                task_id: id,
                agent_id: agent.to_owned(),
                state,
                healthy,
                message,
                timestamp_ms: self.clock.now_ms(),
            };
            self.apply_status(&update, force).await;
        }
        kill
    }

    /// Every live task of a lost agent is lost.
    pub(crate) async fn agent_lost(&self, agent: &str) {
        let ids: Vec<String> = self
            .tasks
            .lock()
            .values()
            .filter(|t| t.info.agent_id == agent && !t.state.is_terminal())
            .map(|t| t.info.id.clone())
            .collect();
        for id in ids {
            self.internal_status(&id, agent, TaskState::Lost, format!("agent {agent} was lost")).await;
        }
    }

    /// After the recovery window of a restarted master: journaled tasks whose agent never came
    /// back are lost. Also drops finished tasks listed long enough.
    /// Gauges of the cluster for `/metrics`: agents and tasks by state, outstanding offers.
    pub(crate) fn record_gauges(&self) {
        let (mut active, mut lost) = (0u64, 0u64);
        for a in self.agents.lock().values() {
            if a.state == AgentState::Active { active += 1 } else { lost += 1 }
        }
        metrics::gauge!("shoal_agents", "state" => "active").set(active as f64);
        metrics::gauge!("shoal_agents", "state" => "lost").set(lost as f64);
        let mut by_state: BTreeMap<&'static str, u64> = BTreeMap::new();
        for t in self.tasks.lock().values() {
            *by_state.entry(t.state.as_str()).or_default() += 1;
        }
        for state in ["staging", "starting", "running", "finished", "failed", "killed", "lost"] {
            metrics::gauge!("shoal_tasks", "state" => state).set(by_state.get(state).copied().unwrap_or(0) as f64);
        }
        metrics::gauge!("shoal_offers_outstanding").set(self.offers.lock().by_id.len() as f64);
    }

    pub(crate) async fn tasks_housekeeping(&self) {
        let recovery_over = self.started.elapsed() > self.config.agent_timeout * 2;
        let cutoff = self.clock.now_ms().saturating_sub(KEEP_TERMINAL.as_millis() as u64);
        let mut orphans = Vec::new();
        {
            let mut tasks = self.tasks.lock();
            tasks.retain(|_, t| !t.state.is_terminal() || t.updated_ms > cutoff);
            if recovery_over {
                let agents = self.agents.lock();
                for t in tasks.values().filter(|t| !t.confirmed && !t.state.is_terminal()) {
                    if agents.get(&t.info.agent_id).is_none_or(|a| a.state != AgentState::Active) {
                        orphans.push((t.info.id.clone(), t.info.agent_id.clone()));
                    }
                }
            }
        }
        for (id, agent) in orphans {
            self.internal_status(
                &id,
                &agent,
                TaskState::Lost,
                format!("agent {agent} did not come back after the master restarted"),
            )
            .await;
        }
    }
}

impl Master {
    /// Ask the agent of a live task to kill it; the end arrives as a `killed` status update.
    pub async fn kill_task(self: &Arc<Self>, id: &str) -> Result<(), MasterError> {
        let task = self.task(id).ok_or_else(|| MasterError::NoTask(id.to_owned()))?;
        if task.state.is_terminal() {
            return Err(MasterError::TaskEnded { id: id.to_owned(), state: task.state });
        }
        self.clone().send_kill(task.info.agent_id.clone(), id.to_owned()).await;
        Ok(())
    }

    /// A task's captured output, from its agent.
    pub async fn task_logs(
        &self,
        id: &str,
        stream: &str,
        tail: Option<usize>,
    ) -> Result<shoal_protocol::LogsReply, MasterError> {
        let task = self.task(id).ok_or_else(|| MasterError::NoTask(id.to_owned()))?;
        let request = shoal_protocol::LogsRequest { task_id: id.to_owned(), stream: stream.to_owned(), tail };
        let body = serde_json::to_vec(&request).expect("serialises");
        let reply = self
            .bus
            .request(&subject::agent_logs(&task.info.agent_id), body.into(), Duration::from_secs(5))
            .await
            .map_err(|source| MasterError::AgentUnreachable { agent: task.info.agent_id.clone(), source })?;
        serde_json::from_slice(&reply.payload)
            .map_err(|source| MasterError::AgentMalformed { agent: task.info.agent_id.clone(), source })
    }

    /// Total resources and host name of every active agent.
    pub fn active_agent_totals(&self) -> Vec<(String, Resources)> {
        self.agents
            .lock()
            .values()
            .filter(|a| a.state == AgentState::Active)
            .map(|a| (a.reg.id.clone(), a.reg.resources.clone()))
            .collect()
    }
}
