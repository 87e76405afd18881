//! Tasks and frameworks: the master's half of two-level scheduling.
//!
//! - Every framework plugin (kind `framework`) with an active version is a framework. Each has a
//!   **worker**: one async task that calls the plugin one call at a time (offers, status updates,
//!   ticks, HTTP requests), so a framework's key-value state is never raced, and applies the
//!   operations it answers. A call that traps or times out is an event
//!   (`shoal.evt.framework.<name>.failed`) and its offers are declined; the master goes on.
//! - **Launch**: the tasks must fit in the offer they quote (ports included), with fresh,
//!   well-formed ids; then they are `staging`, journaled, and sent to the agent. An invalid launch
//!   returns the offer to the pool and fails its tasks with the reason.
//! - **Status updates** from agents are acknowledged after they are applied. A duplicate, or a
//!   move backwards or out of a terminal state, changes nothing. Each change reaches the
//!   framework, the service registry (tasks with ports and a `shoal.service` label), and the bus
//!   (`shoal.evt.task.<service>.<state>`).
//! - **Journal**: every live task is kept in the master's key-value journal, so a restarted master
//!   knows what ran where. Re-registering agents confirm their tasks (and the framework receives
//!   their status again: reconciliation); tasks the cluster gave up are killed on their agent;
//!   tasks whose agent does not come back within the recovery window are `lost`.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde::Serialize;
use shoal_abi::{AnyPlugin, FrameworkInput, FrameworkOutput, PluginKind, scheduling};
use shoal_bus::subject;
use tokio::sync::{mpsc, oneshot};

use crate::protocol::{
    AgentTask, KillReply, KillRequest, LaunchReply, LaunchRequest, StatusUpdate, TaskCommand, TaskInfo, TaskState,
    validate_task_id,
};
use crate::{AgentState, AllocationReport, FrameworkSpec, Master, OfferView, Resources, now_ms};

/// Journal key prefix of tasks.
const JOURNAL_TASKS: &str = "task/";
/// How long finished tasks stay listed.
const KEEP_TERMINAL: Duration = Duration::from_secs(300);
/// Default refusal of offers a framework neither used nor declined, and of offers of a failed call.
const DEFAULT_REFUSE: Duration = Duration::from_secs(5);
/// Inputs one worker call batch handles at most.
const BATCH: usize = 256;
/// Task labels the host reads itself and does not copy onto the service instance.
const CONSUMED_LABELS: [&str; 5] =
    ["shoal.service", "shoal.health", "shoal.framework", "shoal.version", "shoal.weight"];

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
        self.info.labels.get("shoal.service").map(String::as_str)
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

/// What a framework worker is asked to do.
pub(crate) enum FwInput {
    Offers(OfferBatch),
    Status(shoal_abi::TaskStatus),
    Tick(u64),
    Request(shoal_abi::HttpRequest, oneshot::Sender<Result<shoal_abi::HttpResponse, String>>),
}

/// Offers of one cycle for one framework.
pub(crate) struct OfferBatch {
    pub offers: Vec<OfferView>,
    /// The framework's revive count when the cycle took its snapshot.
    pub revived: u64,
    /// It includes offers held back once already (see [`Master::offers_to_use`]).
    pub held_before: bool,
}

/// Per-framework scheduling state.
#[derive(Default)]
pub(crate) struct FwState {
    /// Agent → declined until (ms since the epoch).
    pub filters: BTreeMap<String, u64>,
    pub suppressed: bool,
    /// The worker of a framework plugin.
    pub worker: Option<mpsc::UnboundedSender<FwInput>>,
    /// A tick is queued (ticks do not pile up behind a slow framework).
    pub tick_queued: Arc<std::sync::atomic::AtomicBool>,
    /// Configuration handed to `init`.
    pub config: String,
    /// How many times the framework revived (asked for offers again, its filters cleared). A
    /// cycle whose snapshot saw an older count computed its offers against filters that no
    /// longer hold: they wait for the next cycle (see [`Master::offers_to_use`]).
    pub revived: u64,
    /// Offers of such a cycle, still outstanding, handed over with the next cycle's.
    pub held: Vec<OfferView>,
}

impl FwState {
    /// The framework wants offers again: its filters and suppression end.
    fn revive(&mut self) {
        self.filters.clear();
        self.suppressed = false;
        self.revived += 1;
    }
}

/// Something to send once the master's locks are released.
enum Outgoing {
    Launch(String, Vec<TaskInfo>),
    Kill(String, String),
    /// A status the master made up itself (failed launch, unknown task): goes to the framework.
    Status(String, shoal_abi::TaskStatus),
    Event(String, &'static str, String, serde_json::Value),
}

/// A framework as `/v1/frameworks` lists it.
#[derive(Clone, Debug, Serialize)]
pub struct FrameworkView {
    /// Name, role, weight, quota.
    #[serde(flatten)]
    pub spec: FrameworkSpec,
    /// Backed by a framework plugin.
    pub plugin: bool,
    /// Asked for no offers.
    pub suppressed: bool,
    /// Agents it declined, with the time (ms since the epoch) the refusal ends.
    pub filters: BTreeMap<String, u64>,
    /// Live tasks.
    pub tasks: usize,
    /// Outstanding offers.
    pub offers: usize,
    /// Resources held by live tasks and offers.
    pub allocated: Resources,
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

    /// Frameworks with their state.
    pub fn framework_views(&self) -> Vec<FrameworkView> {
        let specs = self.frameworks.lock().clone();
        let state = self.fw_state.lock();
        let tasks = self.tasks.lock();
        let offers = self.offers.lock();
        specs
            .into_values()
            .map(|spec| {
                let st = state.get(&spec.name);
                let mut allocated = Resources::default();
                let mut live = 0;
                for t in tasks.values().filter(|t| t.info.framework == spec.name && !t.state.is_terminal()) {
                    live += 1;
                    allocated = allocated.plus(&t.info.resources);
                }
                let mut n_offers = 0;
                for o in offers.by_id.values().filter(|o| o.framework == spec.name) {
                    n_offers += 1;
                    allocated = allocated.plus(&o.resources);
                }
                FrameworkView {
                    plugin: st.is_some_and(|s| s.worker.is_some()),
                    suppressed: st.is_some_and(|s| s.suppressed),
                    filters: st.map(|s| s.filters.clone()).unwrap_or_default(),
                    tasks: live,
                    offers: n_offers,
                    allocated,
                    spec,
                }
            })
            .collect()
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

    /// Make every framework plugin with an active version a framework with a worker.
    pub fn sync_framework_plugins(self: &Arc<Self>) {
        let Some(registry) = &self.registry else { return };
        let Ok(plugins) = registry.list() else { return };
        for p in plugins.into_iter().filter(|p| p.kind == PluginKind::Framework && p.active.is_some()) {
            let mut state = self.fw_state.lock();
            let st = state.entry(p.name.clone()).or_default();
            if st.worker.is_some() {
                continue;
            }
            let (tx, rx) = mpsc::unbounded_channel();
            st.worker = Some(tx);
            drop(state);
            self.frameworks.lock().entry(p.name.clone()).or_insert_with(|| FrameworkSpec {
                name: p.name.clone(),
                role: p.name.clone(),
                weight: 1.0,
                quota: None,
            });
            tracing::info!(framework = %p.name, "framework plugin attached");
            tokio::spawn(self.clone().framework_worker(p.name.clone(), rx));
        }
    }

    /// Set a framework's configuration (handed to `init` of new instances).
    pub fn set_framework_config(&self, name: &str, config: String) {
        self.fw_state.lock().entry(name.to_owned()).or_default().config = config;
    }

    /// Route an HTTP request to a framework plugin.
    pub async fn framework_request(
        &self,
        name: &str,
        request: shoal_abi::HttpRequest,
    ) -> Result<shoal_abi::HttpResponse, String> {
        let worker = self.fw_state.lock().get(name).and_then(|s| s.worker.clone());
        let Some(worker) = worker else { return Err(format!("no framework `{name}`")) };
        let (tx, rx) = oneshot::channel();
        worker.send(FwInput::Request(request, tx)).map_err(|_| format!("framework `{name}` stopped"))?;
        rx.await.map_err(|_| format!("framework `{name}` dropped the request"))?
    }

    /// Queue a tick for every framework worker that has none queued.
    pub(crate) fn tick_frameworks(&self) {
        let now = now_ms();
        for st in self.fw_state.lock().values() {
            if let Some(worker) = &st.worker
                && !st.tick_queued.swap(true, Ordering::Relaxed)
            {
                let _ = worker.send(FwInput::Tick(now));
            }
        }
    }

    /// Hand the offers a cycle made to their frameworks' workers, with the offers held back
    /// since the last cycle (see [`Master::offers_to_use`]); offers of frameworks without a
    /// plugin stay outstanding (simulations hold them).
    pub fn dispatch_offers(&self, report: &AllocationReport) {
        let mut per: BTreeMap<&str, Vec<OfferView>> = BTreeMap::new();
        for o in &report.offers {
            per.entry(o.framework.as_str()).or_default().push(o.clone());
        }
        let mut state = self.fw_state.lock();
        for (fw, st) in state.iter_mut() {
            if st.worker.is_none() {
                continue;
            }
            let held_before = !st.held.is_empty();
            let mut offers = self.take_held(st);
            offers.extend(per.remove(fw.as_str()).unwrap_or_default());
            if let (false, Some(worker)) = (offers.is_empty(), &st.worker) {
                let revived = report.revived.get(fw).copied().unwrap_or(st.revived);
                let _ = worker.send(FwInput::Offers(OfferBatch { offers, revived, held_before }));
            }
        }
    }

    /// The framework wants offers again (a `Revive` operation, or a request that may change what
    /// it wants, once it has answered it): filters and suppression end, and offers computed
    /// before are held back once (see [`Master::offers_to_use`]).
    pub(crate) fn revive(&self, framework: &str) {
        self.fw_state.lock().entry(framework.to_owned()).or_default().revive();
        self.kick.notify_one();
    }

    /// What the worker of `framework` hands to the framework out of `batch`, as it is about to
    /// call it: all of it, or nothing when the framework revived after the cycle took its
    /// snapshot. That snapshot still had filters the revive cleared, so these offers alone are a
    /// partial view of the cluster (a deploy would land on the agents whose filters happened to
    /// have expired while the others were still declined). They stay outstanding, so nothing
    /// else is offered their resources, and go out with the next cycle's; offers are held back
    /// once, never twice.
    pub(crate) fn offers_to_use(&self, framework: &str, batch: OfferBatch) -> Vec<OfferView> {
        let mut state = self.fw_state.lock();
        let st = state.entry(framework.to_owned()).or_default();
        if !batch.held_before && batch.revived != st.revived {
            st.held.extend(batch.offers);
            drop(state);
            self.kick.notify_one();
            return Vec::new();
        }
        // Offers held back before this batch arrived go with it (a later cycle may have been
        // dispatched before the worker got to the stale batch).
        let mut offers = self.take_held(st);
        offers.extend(batch.offers);
        offers
    }

    /// The offers held back for a framework, minus those taken back meanwhile (their agent was
    /// lost).
    fn take_held(&self, st: &mut FwState) -> Vec<OfferView> {
        let mut held = std::mem::take(&mut st.held);
        if !held.is_empty() {
            let outstanding = self.offers.lock();
            held.retain(|o| outstanding.by_id.contains_key(&o.id));
        }
        held
    }

    /// Decline filters, suppression and revive count of `framework`, for the allocator's
    /// snapshot.
    pub(crate) fn filters_of(&self, framework: &str, now: u64) -> (Vec<shoal_abi::DeclineFilter>, bool, u64) {
        let mut state = self.fw_state.lock();
        let Some(st) = state.get_mut(framework) else { return (Vec::new(), false, 0) };
        st.filters.retain(|_, until| *until > now);
        let filters = st
            .filters
            .iter()
            .map(|(agent, until)| shoal_abi::DeclineFilter { agent_id: agent.clone(), until_ms: *until })
            .collect();
        (filters, st.suppressed, st.revived)
    }

    async fn framework_worker(self: Arc<Self>, name: String, mut rx: mpsc::UnboundedReceiver<FwInput>) {
        while let Some(first) = rx.recv().await {
            let mut batch = vec![first];
            while batch.len() < BATCH {
                match rx.try_recv() {
                    Ok(input) => batch.push(input),
                    Err(_) => break,
                }
            }
            let me = self.clone();
            let fw = name.clone();
            let outgoing = match tokio::task::spawn_blocking(move || me.run_batch(&fw, batch)).await {
                Ok(outgoing) => outgoing,
                Err(e) => {
                    tracing::error!(framework = %name, cause = %e, "framework batch panicked");
                    continue;
                }
            };
            self.send_outgoing(outgoing).await;
        }
    }

    /// Run a batch of inputs through the framework, one call each, in order.
    fn run_batch(self: &Arc<Self>, name: &str, batch: Vec<FwInput>) -> Vec<Outgoing> {
        let Some(registry) = self.registry.clone() else { return Vec::new() };
        let (config, tick_flag) = {
            let state = self.fw_state.lock();
            let st = state.get(name);
            (st.map(|s| s.config.clone()).unwrap_or_default(), st.map(|s| s.tick_queued.clone()))
        };
        let mut out = Vec::new();
        for input in batch {
            let (wit_input_offers, offers, status, tick, request) = match input {
                FwInput::Offers(batch) => {
                    let offers = self.offers_to_use(name, batch);
                    if offers.is_empty() {
                        continue;
                    }
                    (Some(offer_infos(self, &offers)), offers, None, None, None)
                }
                FwInput::Status(s) => (None, Vec::new(), Some(s), None, None),
                FwInput::Tick(now) => {
                    if let Some(f) = &tick_flag {
                        f.store(false, Ordering::Relaxed);
                    }
                    (None, Vec::new(), None, Some(now), None)
                }
                FwInput::Request(r, tx) => (None, Vec::new(), None, None, Some((r, tx))),
            };
            let input = match (&wit_input_offers, &status, tick, &request) {
                (Some(o), _, _, _) => FrameworkInput::Offers(o),
                (_, Some(s), _, _) => FrameworkInput::Status(s),
                (_, _, Some(now), _) => FrameworkInput::Tick(now),
                (_, _, _, Some((r, _))) => FrameworkInput::Request(r),
                _ => continue,
            };
            let answer = registry.call(PluginKind::Framework, name, |p| match p {
                AnyPlugin::Framework(f) => shoal_abi::framework_call(f, &config, input),
                _ => unreachable!("the registry keys plugins by kind"),
            });
            let answer = match answer {
                None => Err(format!("no active framework plugin `{name}`")),
                Some(Err(e)) => Err(e.to_string()),
                Some(Ok(a)) => Ok(a),
            };
            // A deploy or a scale wants offers now, not after its decline filters expire or at
            // the next interval: a request that may change what the framework wants counts as
            // `revive` (`handle-request` cannot answer operations itself), in the worker, so
            // that offers queued behind the request and computed before it are held back.
            if request.as_ref().is_some_and(|(r, _)| r.method != "GET" && r.method != "HEAD") {
                self.revive(name);
            }
            match (answer, request) {
                (Ok(FrameworkOutput::Response(r)), Some((_, tx))) => {
                    let _ = tx.send(Ok(r));
                }
                (Err(e), Some((_, tx))) => {
                    out.push(failed_event(name, "handle-request", &e));
                    let _ = tx.send(Err(e));
                }
                (Ok(FrameworkOutput::Operations(ops)), _) => {
                    let offered: HashSet<u64> = offers.iter().map(|o| o.id).collect();
                    self.apply_operations(name, ops, &offered, &mut out);
                    // Offers neither used nor declined: declined with the default refusal.
                    self.decline_remaining(name, &offered, DEFAULT_REFUSE);
                }
                (Err(e), None) => {
                    let call = if !offers.is_empty() {
                        "resource-offers"
                    } else if status.is_some() {
                        "status-update"
                    } else {
                        "tick"
                    };
                    tracing::warn!(framework = %name, call, cause = %e, "framework call failed");
                    out.push(failed_event(name, call, &e));
                    let offered: HashSet<u64> = offers.iter().map(|o| o.id).collect();
                    self.decline_remaining(name, &offered, DEFAULT_REFUSE);
                }
                (Ok(FrameworkOutput::Response(_)), None) => {}
            }
        }
        out
    }

    fn decline_remaining(&self, framework: &str, offered: &HashSet<u64>, refuse: Duration) {
        if offered.is_empty() {
            return;
        }
        let until = now_ms() + refuse.as_millis() as u64;
        let removed: Vec<OfferView> = {
            let mut offers = self.offers.lock();
            offered.iter().filter_map(|id| offers.by_id.remove(id)).collect()
        };
        if removed.is_empty() {
            return;
        }
        let mut state = self.fw_state.lock();
        let st = state.entry(framework.to_owned()).or_default();
        for o in removed {
            st.filters.insert(o.agent_id, until);
        }
    }

    fn apply_operations(
        self: &Arc<Self>,
        framework: &str,
        ops: Vec<scheduling::Operation>,
        offered: &HashSet<u64>,
        out: &mut Vec<Outgoing>,
    ) {
        let mut launched = false;
        for op in ops {
            match op {
                scheduling::Operation::Launch(l) => {
                    launched = true;
                    self.apply_launch(framework, l, out);
                }
                scheduling::Operation::Decline(d) => {
                    let Some(id) = parse_offer_id(&d.offer_id) else { continue };
                    if !offered.contains(&id) {
                        continue;
                    }
                    let refuse = if d.refuse_seconds.is_finite() { d.refuse_seconds.clamp(0.0, 3600.0) } else { 5.0 };
                    self.decline_remaining(
                        framework,
                        &HashSet::from([id]),
                        Duration::from_millis((refuse * 1000.0) as u64),
                    );
                }
                scheduling::Operation::Kill(task_id) => self.apply_kill(framework, &task_id, out),
                scheduling::Operation::Suppress => {
                    self.fw_state.lock().entry(framework.to_owned()).or_default().suppressed = true;
                }
                scheduling::Operation::Revive => self.revive(framework),
            }
        }
        if launched {
            self.kick.notify_one();
        }
    }

    fn apply_launch(&self, framework: &str, launch: scheduling::Launch, out: &mut Vec<Outgoing>) {
        let offer = parse_offer_id(&launch.offer_id).and_then(|id| {
            let mut offers = self.offers.lock();
            match offers.by_id.get(&id) {
                Some(o) if o.framework == framework => offers.by_id.remove(&id),
                _ => None,
            }
        });
        let fail_all = |why: String, out: &mut Vec<Outgoing>| {
            tracing::warn!(%framework, offer = %launch.offer_id, cause = %why, "launch refused");
            out.push(Outgoing::Event(
                subject::framework_event(framework, "invalid"),
                "io.shoal.framework.invalid",
                format!("frameworks/{framework}"),
                serde_json::json!({ "operation": "launch", "offer": launch.offer_id, "reason": why }),
            ));
            for t in &launch.tasks {
                out.push(Outgoing::Status(
                    framework.to_owned(),
                    shoal_abi::TaskStatus {
                        task_id: t.task_id.clone(),
                        agent_id: String::new(),
                        state: shoal_abi::TaskState::Failed,
                        healthy: None,
                        message: format!("launch refused: {why}"),
                        timestamp_ms: now_ms(),
                    },
                ));
            }
        };
        let Some(offer) = offer else {
            return fail_all(format!("offer `{}` is not an outstanding offer of this framework", launch.offer_id), out);
        };
        let hostname = self.agents.lock().get(&offer.agent_id).map(|a| a.reg.hostname.clone());
        let Some(hostname) = hostname else {
            return fail_all(format!("agent {} is gone", offer.agent_id), out);
        };
        let mut left = offer.resources.clone();
        let mut infos = Vec::with_capacity(launch.tasks.len());
        let mut ids = HashSet::new();
        {
            let tasks = self.tasks.lock();
            for t in &launch.tasks {
                if let Err(e) = validate_task_id(&t.task_id) {
                    return fail_all(e, out);
                }
                if tasks.contains_key(&t.task_id) || !ids.insert(t.task_id.clone()) {
                    return fail_all(format!("task id `{}` is already taken", t.task_id), out);
                }
                let command = match &t.command {
                    scheduling::TaskCommand::Shell(c) if !c.trim().is_empty() && !c.contains('\0') => {
                        TaskCommand::Shell(c.clone())
                    }
                    scheduling::TaskCommand::Shell(_) => {
                        return fail_all(format!("task `{}`: empty or malformed command", t.task_id), out);
                    }
                    scheduling::TaskCommand::Wasm(d) if d.len() == 64 && d.bytes().all(|b| b.is_ascii_hexdigit()) => {
                        TaskCommand::Wasm(d.to_ascii_lowercase())
                    }
                    scheduling::TaskCommand::Wasm(d) => {
                        return fail_all(format!("task `{}`: `{d}` is not a sha256 digest", t.task_id), out);
                    }
                };
                let resources = match Resources::from_wit(&t.resources).validate() {
                    Ok(r) if r.cpus > 0.0 || r.mem_mb > 0.0 => r,
                    Ok(_) => return fail_all(format!("task `{}` asks for no cpus and no memory", t.task_id), out),
                    Err(e) => return fail_all(format!("task `{}`: {e}", t.task_id), out),
                };
                let Some(rest) = left.minus(&resources) else {
                    return fail_all(
                        format!("task `{}` needs {resources}, more than is left of the offer: {left}", t.task_id),
                        out,
                    );
                };
                left = rest;
                if t.env.iter().any(|(k, _)| k.is_empty() || k.contains(['=', '\0'])) {
                    return fail_all(format!("task `{}`: malformed environment variable name", t.task_id), out);
                }
                let mut labels: BTreeMap<String, String> =
                    t.labels.iter().map(|a| (a.name.clone(), a.value.clone())).collect();
                labels.insert("shoal.framework".into(), framework.to_owned());
                infos.push(TaskInfo {
                    id: t.task_id.clone(),
                    framework: framework.to_owned(),
                    agent_id: offer.agent_id.clone(),
                    command,
                    resources,
                    env: t.env.iter().cloned().collect(),
                    labels,
                });
            }
        }
        if infos.is_empty() {
            return;
        }
        let now = now_ms();
        let mut tasks = self.tasks.lock();
        for info in &infos {
            let entry = TaskEntry {
                info: info.clone(),
                hostname: hostname.clone(),
                state: TaskState::Staging,
                healthy: None,
                message: "launched".into(),
                created_ms: now,
                updated_ms: now,
                confirmed: true,
            };
            self.journal_put(&entry);
            tasks.insert(info.id.clone(), entry);
        }
        drop(tasks);
        out.push(Outgoing::Launch(offer.agent_id.clone(), infos));
    }

    fn apply_kill(&self, framework: &str, task_id: &str, out: &mut Vec<Outgoing>) {
        let task = self.tasks.lock().get(task_id).cloned();
        match task {
            Some(t) if t.info.framework == framework && !t.state.is_terminal() => {
                out.push(Outgoing::Kill(t.info.agent_id.clone(), task_id.to_owned()));
            }
            Some(t) if t.info.framework == framework => {} // already over
            _ => out.push(Outgoing::Status(
                framework.to_owned(),
                shoal_abi::TaskStatus {
                    task_id: task_id.to_owned(),
                    agent_id: String::new(),
                    state: shoal_abi::TaskState::Lost,
                    healthy: None,
                    message: "no such task in the cluster".into(),
                    timestamp_ms: now_ms(),
                },
            )),
        }
    }

    async fn send_outgoing(self: &Arc<Self>, outgoing: Vec<Outgoing>) {
        for o in outgoing {
            match o {
                Outgoing::Launch(agent, tasks) => {
                    let me = self.clone();
                    tokio::spawn(async move { me.send_launch(agent, tasks).await });
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

    async fn send_launch(self: Arc<Self>, agent: String, tasks: Vec<TaskInfo>) {
        let ids: Vec<String> = tasks.iter().map(|t| t.id.clone()).collect();
        let body = serde_json::to_vec(&LaunchRequest { tasks }).expect("a launch serialises");
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

    async fn send_kill(self: Arc<Self>, agent: String, task: String) {
        let body = serde_json::to_vec(&KillRequest { task_id: task.clone(), grace_ms: None }).expect("serialises");
        match self.bus.request(&subject::agent_kill(&agent), body.into(), Duration::from_secs(5)).await {
            Ok(m) => {
                if let Ok(KillReply { known: false }) = serde_json::from_slice(&m.payload) {
                    self.internal_status(&task, &agent, TaskState::Lost, "its agent does not know it".into()).await;
                }
            }
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
            timestamp_ms: now_ms(),
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

    fn sync_discovery(&self, t: &TaskEntry) {
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
        let has_check = t.info.labels.contains_key("shoal.health");
        let health = match t.healthy {
            Some(true) => shoal_discovery::Health::Passing,
            Some(false) => shoal_discovery::Health::Critical,
            None if has_check => shoal_discovery::Health::Unknown,
            None => shoal_discovery::Health::Passing,
        };
        let registration = shoal_discovery::Registration {
            address: format!("{address}:{first}"),
            ports: ports.iter().enumerate().map(|(i, p)| (format!("port{i}"), *p)).collect(),
            weight: t.info.labels.get("shoal.weight").and_then(|w| w.parse().ok()).unwrap_or(1),
            // Labels the host consumed stay out; the rest (`shoal.route.*` included) describe the instance.
            labels: t
                .info
                .labels
                .iter()
                .filter(|(k, _)| !CONSUMED_LABELS.contains(&k.as_str()))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            version: t.info.labels.get("shoal.version").cloned().unwrap_or_default(),
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
                timestamp_ms: now_ms(),
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
        let cutoff = now_ms().saturating_sub(KEEP_TERMINAL.as_millis() as u64);
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

    // ---- journal -------------------------------------------------------------------------

    fn journal_put(&self, t: &TaskEntry) {
        if let Some(j) = &self.journal
            && let Err(e) = j.set(&format!("{JOURNAL_TASKS}{}", t.info.id), &serde_json::to_vec(t).expect("serialises"))
        {
            tracing::error!(task = %t.info.id, cause = %e, "could not journal a task");
        }
    }

    fn journal_delete(&self, id: &str) {
        if let Some(j) = &self.journal {
            let _ = j.delete(&format!("{JOURNAL_TASKS}{id}"));
        }
    }

    /// Load the journal of a previous run: its live tasks, unconfirmed until their agents register.
    pub(crate) fn load_journal(&self) -> usize {
        let Some(j) = &self.journal else { return 0 };
        let mut after: Option<String> = None;
        let mut loaded = 0;
        loop {
            let keys = match j.list(JOURNAL_TASKS, after.as_deref(), 1000) {
                Ok(keys) => keys,
                Err(e) => {
                    tracing::error!(cause = %e, "could not read the task journal");
                    return loaded;
                }
            };
            let Some(last) = keys.last().cloned() else { return loaded };
            let mut tasks = self.tasks.lock();
            for key in keys {
                let Ok(Some(bytes)) = j.get(&key) else { continue };
                match serde_json::from_slice::<TaskEntry>(&bytes) {
                    Ok(t) if !t.state.is_terminal() => {
                        tasks.insert(t.info.id.clone(), TaskEntry { confirmed: false, ..t });
                        loaded += 1;
                    }
                    Ok(_) => {}
                    Err(e) => tracing::error!(%key, cause = %e, "unreadable journal entry; skipped"),
                }
            }
            after = Some(last);
        }
    }
}

fn parse_offer_id(id: &str) -> Option<u64> {
    id.parse().ok()
}

fn failed_event(framework: &str, call: &str, error: &str) -> Outgoing {
    Outgoing::Event(
        subject::framework_event(framework, "failed"),
        "io.shoal.framework.failed",
        format!("frameworks/{framework}"),
        serde_json::json!({ "framework": framework, "call": call, "error": error }),
    )
}

fn offer_infos(master: &Master, offers: &[OfferView]) -> Vec<scheduling::OfferInfo> {
    let agents = master.agents.lock();
    offers
        .iter()
        .filter_map(|o| {
            let a = agents.get(&o.agent_id)?;
            let mut attributes: Vec<shoal_abi::Attribute> = a
                .reg
                .attributes
                .iter()
                .map(|(k, v)| shoal_abi::Attribute { name: k.clone(), value: v.clone() })
                .collect();
            attributes.sort_by(|x, y| x.name.cmp(&y.name));
            Some(scheduling::OfferInfo {
                id: o.id.to_string(),
                agent_id: o.agent_id.clone(),
                hostname: a.reg.hostname.clone(),
                attributes,
                resources: o.resources.to_wit(),
            })
        })
        .collect()
}

impl Master {
    /// Ask the agent of a live task to kill it; the end arrives as a `killed` status update.
    pub async fn kill_task(self: &Arc<Self>, id: &str) -> Result<(), String> {
        let task = self.task(id).ok_or_else(|| format!("no task `{id}`"))?;
        if task.state.is_terminal() {
            return Err(format!("task `{id}` is already {}", task.state));
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
    ) -> Result<crate::protocol::LogsReply, String> {
        let task = self.task(id).ok_or_else(|| format!("no task `{id}`"))?;
        let request = crate::protocol::LogsRequest { task_id: id.to_owned(), stream: stream.to_owned(), tail };
        let body = serde_json::to_vec(&request).expect("serialises");
        let reply = self
            .bus
            .request(&subject::agent_logs(&task.info.agent_id), body.into(), Duration::from_secs(5))
            .await
            .map_err(|e| format!("agent {} did not answer: {e}", task.info.agent_id))?;
        serde_json::from_slice(&reply.payload).map_err(|e| format!("agent {} answered {e}", task.info.agent_id))
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

impl Master {
    /// For simulations and benchmarks: one allocation cycle, then `framework`'s answer to the
    /// offers it got, applied — launches are checked and recorded (`staging`) but not sent to any
    /// agent. Returns the number of tasks launched. Call from a blocking thread.
    pub fn place_once(self: &Arc<Self>, framework: &str) -> Result<usize, String> {
        let report = self.allocate_once()?;
        let offers: Vec<OfferView> = report.offers.into_iter().filter(|o| o.framework == framework).collect();
        if offers.is_empty() {
            return Ok(0);
        }
        let revived = report.revived.get(framework).copied().unwrap_or_default();
        let out = self.run_batch(framework, vec![FwInput::Offers(OfferBatch { offers, revived, held_before: false })]);
        Ok(out.iter().map(|o| if let Outgoing::Launch(_, tasks) = o { tasks.len() } else { 0 }).sum())
    }
}
