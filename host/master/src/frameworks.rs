//! Frameworks: the master's half of two-level scheduling.
//!
//! Every framework plugin (kind `framework`) with an active version is a framework. Each has a
//! **worker**: one async task that calls the plugin one call at a time (offers, status updates,
//! ticks, HTTP requests, batched), so a framework's key-value state is never raced, and applies
//! the operations it answers:
//!
//! - **Launch**: the tasks must fit in the offer they quote (ports included), with fresh,
//!   well-formed ids; then they are `staging`, journaled, and sent to the agent. An invalid launch
//!   returns the offer to the pool and fails its tasks with the reason.
//! - **Decline** becomes a filter for the refuse time; offers left unanswered are declined for
//!   5 s. **Revive** clears the filters and counts up: a batch of offers from a cycle whose
//!   snapshot predates the count is held back once and goes out with the next batch.
//! - A call that traps or times out is an event (`shoal.evt.framework.<name>.failed`) and its
//!   offers are declined; the master goes on.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde::Serialize;
use shoal_abi::{AnyPlugin, FrameworkInput, FrameworkOutput, PluginKind, scheduling};
use shoal_bus::subject;
use shoal_protocol::{Resources, TaskCommand, TaskInfo, TaskState, labels, validate_task_id};
use tokio::sync::{mpsc, oneshot};

use crate::allocation::ToWit;
use crate::tasks::{BATCH, DEFAULT_REFUSE, TaskEntry};
use crate::{AllocationReport, FrameworkSpec, Master, MasterError, OfferView};

/// What a framework worker is asked to do.
pub(crate) enum FwInput {
    Offers(OfferBatch),
    Status(shoal_abi::TaskStatus),
    Tick(u64),
    /// An API request, with the trace context of the API's span for it.
    Request(
        shoal_abi::HttpRequest,
        oneshot::Sender<Result<shoal_abi::HttpResponse, MasterError>>,
        Option<shoal_trace::TraceContext>,
    ),
}

/// Offers of one cycle for one framework.
pub(crate) struct OfferBatch {
    pub offers: Vec<OfferView>,
    /// The framework's revive count when the cycle took its snapshot.
    pub revived: u64,
    /// It includes offers held back once already (see [`Master::offers_to_use`]).
    pub held_before: bool,
}

/// The span of an API request handled by a framework's worker, parented on the API's span.
fn request_span(
    framework: &str,
    request: &shoal_abi::HttpRequest,
    trace: Option<shoal_trace::TraceContext>,
) -> tracing::Span {
    let Some(trace) = trace else { return tracing::Span::none() };
    let span = tracing::info_span!(
        target: shoal_trace::TARGET, "framework.request",
        framework, http.request.method = %request.method, url.path = %request.path,
    );
    trace.adopt(&span);
    span
}

/// Most API requests one framework may have waiting at once (beyond it: `FrameworkBusy`, 429).
pub const MAX_QUEUED_REQUESTS: usize = 256;

/// One request's place in a framework's queue count.
struct QueuePlace(Arc<std::sync::atomic::AtomicUsize>);

impl Drop for QueuePlace {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
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
    /// API requests waiting for the worker or being answered by it; at most
    /// [`MAX_QUEUED_REQUESTS`], so a flood of requests cannot grow the queue without bound.
    pub requests: Arc<std::sync::atomic::AtomicUsize>,
    /// Configuration handed to `init`.
    pub config: String,
    /// How many times the framework revived (asked for offers again, its filters cleared). A
    /// cycle whose snapshot saw an older count computed its offers against filters that no
    /// longer hold: they wait for the next cycle (see [`Master::offers_to_use`]).
    pub revived: u64,
    /// Offers of such a cycle, still outstanding, handed over with the next cycle's.
    pub held: Vec<OfferView>,
    /// The trace of the last request that revived the framework: the next offers call (and the
    /// launches it makes) continue it.
    pub cause: Option<shoal_trace::TraceContext>,
}

impl FwState {
    /// The framework wants offers again: its filters and suppression end.
    pub(crate) fn revive(&mut self) {
        self.filters.clear();
        self.suppressed = false;
        self.revived += 1;
    }
}

/// Something to send once the master's locks are released.
pub(crate) enum Outgoing {
    /// Tasks for an agent, with the trace context of the framework call that launched them.
    Launch(String, Vec<TaskInfo>, Option<shoal_trace::TraceContext>),
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
    ) -> Result<shoal_abi::HttpResponse, MasterError> {
        let found = self.fw_state.lock().get(name).and_then(|s| Some((s.worker.clone()?, s.requests.clone())));
        let Some((worker, requests)) = found else { return Err(MasterError::NoFramework(name.to_owned())) };
        // A place in the framework's queue, given back when the answer came or the caller left.
        let taken = requests.fetch_add(1, Ordering::AcqRel);
        let _place = QueuePlace(requests);
        if taken >= MAX_QUEUED_REQUESTS {
            return Err(MasterError::FrameworkBusy { name: name.to_owned(), limit: MAX_QUEUED_REQUESTS });
        }
        let (tx, rx) = oneshot::channel();
        let trace = shoal_trace::TraceContext::current();
        worker
            .send(FwInput::Request(request, tx, trace))
            .map_err(|_| MasterError::FrameworkStopped(name.to_owned()))?;
        rx.await.map_err(|_| MasterError::FrameworkStopped(name.to_owned()))?
    }

    /// Queue a tick for every framework worker that has none queued.
    pub(crate) fn tick_frameworks(&self) {
        let now = self.clock.now_ms();
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
    pub(crate) fn take_held(&self, st: &mut FwState) -> Vec<OfferView> {
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

    pub(crate) async fn framework_worker(self: Arc<Self>, name: String, mut rx: mpsc::UnboundedReceiver<FwInput>) {
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
    pub(crate) fn run_batch(self: &Arc<Self>, name: &str, batch: Vec<FwInput>) -> Vec<Outgoing> {
        let Some(registry) = self.registry.clone() else { return Vec::new() };
        let (config, tick_flag) = {
            let state = self.fw_state.lock();
            let st = state.get(name);
            (st.map(|s| s.config.clone()).unwrap_or_default(), st.map(|s| s.tick_queued.clone()))
        };
        let mut out = Vec::new();
        for input in batch {
            let (span, wit_input_offers, offers, status, tick, request) = match input {
                FwInput::Offers(batch) => {
                    let offers = self.offers_to_use(name, batch);
                    if offers.is_empty() {
                        continue;
                    }
                    (self.offers_span(name), Some(offer_infos(self, &offers)), offers, None, None, None)
                }
                FwInput::Status(s) => (tracing::Span::none(), None, Vec::new(), Some(s), None, None),
                FwInput::Tick(now) => {
                    if let Some(f) = &tick_flag {
                        f.store(false, Ordering::Relaxed);
                    }
                    (tracing::Span::none(), None, Vec::new(), None, Some(now), None)
                }
                FwInput::Request(r, tx, trace) => {
                    (request_span(name, &r, trace), None, Vec::new(), None, None, Some((r, tx)))
                }
            };
            // The framework call and the launches it makes happen in the input's span.
            let _entered = span.enter();
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
                None => Err(MasterError::NoFrameworkPlugin(name.to_owned())),
                Some(Err(e)) => Err(MasterError::FrameworkCall(e)),
                Some(Ok(a)) => Ok(a),
            };
            // A deploy or a scale wants offers now, not after its decline filters expire or at
            // the next interval: a request that may change what the framework wants counts as
            // `revive` (`handle-request` cannot answer operations itself), in the worker, so
            // that offers queued behind the request and computed before it are held back.
            if request.as_ref().is_some_and(|(r, _)| r.method != "GET" && r.method != "HEAD") {
                self.revive(name);
                if let Some(cause) = shoal_trace::TraceContext::of(&span) {
                    self.fw_state.lock().entry(name.to_owned()).or_default().cause = Some(cause);
                }
            }
            match (answer, request) {
                (Ok(FrameworkOutput::Response(r)), Some((_, tx))) => {
                    let _ = tx.send(Ok(r));
                }
                (Err(e), Some((_, tx))) => {
                    out.push(failed_event(name, "handle-request", &e.to_string()));
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
                    out.push(failed_event(name, call, &e.to_string()));
                    let offered: HashSet<u64> = offers.iter().map(|o| o.id).collect();
                    self.decline_remaining(name, &offered, DEFAULT_REFUSE);
                }
                (Ok(FrameworkOutput::Response(_)), None) => {}
            }
        }
        out
    }

    /// The span of an offers call that answers a request's revive (the request's trace goes on
    /// through it to the launches it makes), or none: offers no request asked for start no trace.
    fn offers_span(&self, framework: &str) -> tracing::Span {
        let Some(cause) = self.fw_state.lock().get_mut(framework).and_then(|st| st.cause.take()) else {
            return tracing::Span::none();
        };
        let span = tracing::info_span!(target: shoal_trace::TARGET, "framework.offers", framework);
        cause.adopt(&span);
        span
    }

    pub(crate) fn decline_remaining(&self, framework: &str, offered: &HashSet<u64>, refuse: Duration) {
        if offered.is_empty() {
            return;
        }
        let until = self.clock.now_ms() + refuse.as_millis() as u64;
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

    pub(crate) fn apply_operations(
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

    pub(crate) fn apply_launch(&self, framework: &str, launch: scheduling::Launch, out: &mut Vec<Outgoing>) {
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
                        timestamp_ms: self.clock.now_ms(),
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
                    return fail_all(e.to_string(), out);
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
                let resources = match crate::allocation::resources_from_wit(&t.resources).validate() {
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
                labels.insert(labels::FRAMEWORK.into(), framework.to_owned());
                if let Err(e) = labels::check_launch(&labels) {
                    return fail_all(format!("task `{}`: {e}", t.task_id), out);
                }
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
        let now = self.clock.now_ms();
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
        out.push(Outgoing::Launch(offer.agent_id.clone(), infos, shoal_trace::TraceContext::current()));
    }

    pub(crate) fn apply_kill(&self, framework: &str, task_id: &str, out: &mut Vec<Outgoing>) {
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
                    timestamp_ms: self.clock.now_ms(),
                },
            )),
        }
    }
}

pub(crate) fn parse_offer_id(id: &str) -> Option<u64> {
    id.parse().ok()
}

pub(crate) fn failed_event(framework: &str, call: &str, error: &str) -> Outgoing {
    Outgoing::Event(
        subject::framework_event(framework, "failed"),
        "io.shoal.framework.failed",
        format!("frameworks/{framework}"),
        serde_json::json!({ "framework": framework, "call": call, "error": error }),
    )
}

pub(crate) fn offer_infos(master: &Master, offers: &[OfferView]) -> Vec<scheduling::OfferInfo> {
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
    /// For simulations and benchmarks: one allocation cycle, then `framework`'s answer to the
    /// offers it got, applied — launches are checked and recorded (`staging`) but not sent to any
    /// agent. Returns the number of tasks launched. Call from a blocking thread.
    pub fn place_once(self: &Arc<Self>, framework: &str) -> Result<usize, MasterError> {
        let report = self.allocate_once()?;
        let offers: Vec<OfferView> = report.offers.into_iter().filter(|o| o.framework == framework).collect();
        if offers.is_empty() {
            return Ok(0);
        }
        let revived = report.revived.get(framework).copied().unwrap_or_default();
        let out = self.run_batch(framework, vec![FwInput::Offers(OfferBatch { offers, revived, held_before: false })]);
        Ok(out.iter().map(|o| if let Outgoing::Launch(_, tasks, _) = o { tasks.len() } else { 0 }).sum())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use shoal_bus::{LocalBus, SharedBus};
    use shoal_registry::Registry;

    use super::*;
    use crate::MasterConfig;
    use crate::agents::tests::reg;

    /// Issue 24: a framework's requests wait in a bounded queue. With the worker stuck (it never
    /// reads), `MAX_QUEUED_REQUESTS` requests wait and the next is refused at once with
    /// `FrameworkBusy`; a caller that gives up gives its place back.
    #[tokio::test]
    async fn a_frameworks_request_queue_is_bounded() {
        let bus: SharedBus = Arc::new(LocalBus::new());
        let master = Master::new(bus, MasterConfig::default(), None);
        let (stuck, _never_read) = mpsc::unbounded_channel();
        master.fw_state.lock().entry("f".into()).or_default().worker = Some(stuck);
        let request = || shoal_abi::HttpRequest {
            method: "GET".into(),
            path: "/".into(),
            query: String::new(),
            headers: Vec::new(),
            body: Vec::new(),
        };
        let waiting: Vec<_> = (0..MAX_QUEUED_REQUESTS)
            .map(|_| {
                let master = master.clone();
                tokio::spawn(async move { master.framework_request("f", request()).await })
            })
            .collect();
        let queued = || master.fw_state.lock().get("f").map(|s| s.requests.load(Ordering::Acquire));
        while queued() != Some(MAX_QUEUED_REQUESTS) {
            tokio::task::yield_now().await;
        }
        let err = master.framework_request("f", request()).await.expect_err("the queue is full");
        assert!(matches!(err, MasterError::FrameworkBusy { limit: MAX_QUEUED_REQUESTS, .. }), "{err}");
        assert_eq!(queued(), Some(MAX_QUEUED_REQUESTS), "a refused request takes no place");
        for task in &waiting[..10] {
            task.abort();
        }
        while queued() != Some(MAX_QUEUED_REQUESTS - 10) {
            tokio::task::yield_now().await;
        }
        let next = tokio::time::timeout(Duration::from_millis(50), master.framework_request("f", request())).await;
        assert!(next.is_err(), "with places free, a request waits for the worker instead of being refused");
    }

    /// A declined offer filters its agent out for the refuse time on the master's clock, which
    /// the test moves: the filter holds just before it ends and is gone just after.
    #[tokio::test(start_paused = true)]
    async fn decline_filters_expire_on_the_masters_clock() {
        let bus: SharedBus = Arc::new(LocalBus::new());
        let master = Master::new(bus, MasterConfig::default(), None);
        let offer = OfferView {
            id: 7,
            framework: "svc".into(),
            agent_id: "a1".into(),
            resources: Resources::parse("cpus:1;mem:64").unwrap(),
        };
        master.offers.lock().by_id.insert(offer.id, offer);
        master.decline_remaining("svc", &HashSet::from([7]), Duration::from_secs(5));
        assert!(master.offers().is_empty(), "a declined offer is taken back");
        let filtered =
            |m: &Master| m.filters_of("svc", m.clock.now_ms()).0.iter().map(|f| f.agent_id.clone()).collect::<Vec<_>>();
        assert_eq!(filtered(&master), ["a1"]);

        tokio::time::advance(Duration::from_millis(4_999)).await;
        assert_eq!(filtered(&master), ["a1"]);
        tokio::time::advance(Duration::from_millis(2)).await;
        assert!(filtered(&master).is_empty(), "the filter ended");
    }

    /// Offers held back by a worker (the framework revived after their cycle's snapshot) go
    /// out with the next cycle's even when that cycle makes none (the framework suppressed
    /// offers meanwhile), without those of an agent lost in between, and are never held twice.
    #[tokio::test(flavor = "multi_thread")]
    async fn held_offers_go_out_with_the_next_cycle() {
        let dir = tempfile::tempdir().unwrap();
        let runtime = shoal_runtime::Runtime::new(shoal_runtime::RuntimeConfig::default()).unwrap();
        let (registry, _events) =
            Registry::open(&dir.path().join("registry"), runtime, shoal_registry::RegistryConfig::default()).unwrap();
        registry.push(PluginKind::Allocator, "drf", Some("1"), shoal_artifacts::DRF, true).await.unwrap();
        let bus: SharedBus = Arc::new(LocalBus::new());
        let master = Master::new(bus, MasterConfig::default(), Some(registry));
        for id in ["a1", "a2"] {
            master.admit(reg(id, &format!("{id}.local"))).unwrap();
        }
        master
            .add_framework(FrameworkSpec { name: "svc".into(), role: "svc".into(), weight: 1.0, quota: None })
            .unwrap();
        // The test is the framework's worker.
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        master.fw_state.lock().entry("svc".into()).or_default().worker = Some(tx);
        let cycle = || {
            let m = master.clone();
            async move { tokio::task::spawn_blocking(move || m.allocate_once()).await.unwrap().unwrap() }
        };
        let next_batch = |rx: &mut tokio::sync::mpsc::UnboundedReceiver<FwInput>| match rx.try_recv() {
            Ok(FwInput::Offers(batch)) => batch,
            _ => panic!("expected offers"),
        };

        let before = cycle().await;
        assert_eq!(before.offers.len(), 2);
        master.dispatch_offers(&before);
        let batch = next_batch(&mut rx);
        // The framework revives before it gets to these offers: they are held back.
        master.revive("svc");
        assert!(master.offers_to_use("svc", batch).is_empty());
        assert_eq!(master.offers().len(), 2, "held offers stay outstanding");

        master.fw_state.lock().get_mut("svc").unwrap().suppressed = true;
        assert_eq!(master.rescind_agent("a2").len(), 1);
        let after = cycle().await;
        assert!(after.offers.is_empty(), "{:?}", after.offers);
        master.dispatch_offers(&after);
        let batch = next_batch(&mut rx);
        assert!(batch.held_before);
        // Another revive: held once already, these are used.
        master.revive("svc");
        let used = master.offers_to_use("svc", batch);
        assert_eq!(used.iter().map(|o| o.agent_id.as_str()).collect::<Vec<_>>(), ["a1"]);
        assert!(master.fw_state.lock()["svc"].held.is_empty());
        assert!(rx.try_recv().is_err());
    }
}
