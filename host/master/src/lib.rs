//! The resource master's agent registry, and the agent's side of it (first slice of issue 3).
//!
//! Agents and master talk only over the bus ([`shoal_bus::Bus`]), so the same code runs in one
//! process (`shoal dev`, in-process bus) and across machines (`shoal master` + `shoal agent` with
//! NATS):
//!
//! - **Register** — request on `shoal.ctl.agent.register` with an [`AgentRegistration`] (id,
//!   hostname, attributes, total resources, the ids of the tasks it still runs); the reply
//!   ([`RegisterReply`]) accepts it and says how often to heartbeat, or refuses it with a reason
//!   (bad resources, an id already held by a live agent on another host).
//! - **Heartbeat** — request on `shoal.ctl.agent.<id>.heartbeat`; the reply says whether the
//!   master knows the agent. An agent the master does not know (a restarted master, or one that
//!   declared it lost) registers again at once, with its tasks.
//! - **Lost** — an agent silent for longer than [`MasterConfig::agent_timeout`] is declared
//!   lost: `shoal.evt.agent.<id>.lost`; it stays listed as lost until it registers again
//!   (`shoal.evt.agent.<id>.reregistered`).
//!
//! Every change is an event (`registered`, `reregistered`, `lost`). What the master keeps is soft
//! state, rebuilt from agents registering again after a restart.

mod allocation;
pub mod artifacts;
pub mod protocol;
mod resources;
mod tasks;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use futures::StreamExt;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use shoal_bus::{EventPublisher, SharedBus, subject};

pub use allocation::{AllocationReport, FrameworkSpec, OfferView, Rejected, check_offers};
pub use protocol::{AgentTask, StatusUpdate, TaskCommand, TaskInfo, TaskState};
pub use resources::{PortRange, ResourceError, Resources};
use shoal_abi::{AnyPlugin, PluginKind};
use shoal_registry::Registry;
pub use shoal_runtime::KvBackend;
pub use tasks::{FrameworkView, TaskEntry};

/// Default time without a heartbeat after which an agent is lost.
pub const DEFAULT_AGENT_TIMEOUT: Duration = Duration::from_secs(5);

/// What an agent says when it registers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentRegistration {
    /// Stable agent id (`[a-z0-9-]{1,63}`).
    pub id: String,
    /// Host name (the `@hostname` attribute of constraints).
    pub hostname: String,
    /// Address tasks on this agent are reachable at (IP or name); default the host name.
    #[serde(default)]
    pub address: Option<String>,
    /// Operator-set attributes, e.g. `rack=r1`.
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
    /// Everything the agent offers to the cluster.
    pub resources: Resources,
    /// The tasks the agent runs now (empty on a first start).
    #[serde(default)]
    pub tasks: Vec<AgentTask>,
}

/// The master's answer to a registration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RegisterReply {
    /// Accepted.
    pub accepted: bool,
    /// Why not, when refused.
    #[serde(default)]
    pub error: Option<String>,
    /// How often to heartbeat, in milliseconds.
    pub heartbeat_ms: u64,
    /// Tasks the agent reported that the cluster gave up (declared lost and replaced, or never
    /// knew): the agent kills them.
    #[serde(default)]
    pub kill: Vec<String>,
}

/// The master's answer to a heartbeat.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HeartbeatReply {
    /// False when the master does not know the agent (or declared it lost): register again.
    pub known: bool,
}

/// State of an agent as the master sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AgentState {
    /// Registered and heartbeating.
    Active,
    /// Silent past the timeout.
    Lost,
}

/// An agent as the master lists it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AgentView {
    /// Agent id.
    pub id: String,
    /// Host name.
    pub hostname: String,
    /// Attributes.
    pub attributes: BTreeMap<String, String>,
    /// Total resources.
    pub total: Resources,
    /// `active` or `lost`.
    pub state: AgentState,
    /// Ids of the tasks the agent reported when it registered.
    pub tasks: Vec<String>,
    /// Registrations so far (1 on the first).
    pub registrations: u64,
    /// Milliseconds since the last heartbeat or registration.
    pub last_seen_ms_ago: u64,
    /// When it first registered, ms since the Unix epoch.
    pub registered_at_ms: u64,
}

struct AgentEntry {
    reg: AgentRegistration,
    state: AgentState,
    last_seen: Instant,
    registrations: u64,
    registered_at_ms: u64,
}

/// How the master runs.
#[derive(Clone, Debug)]
pub struct MasterConfig {
    /// Time without a heartbeat after which an agent is lost (default 5 s).
    pub agent_timeout: Duration,
    /// CloudEvents `source` of the master's events.
    pub source: String,
    /// Name of the allocator plugin (default `drf`).
    pub allocator: String,
    /// Time between allocation cycles; `None` runs a cycle only when asked
    /// ([`Master::allocate_once`]).
    pub allocation_interval: Option<Duration>,
}

impl Default for MasterConfig {
    fn default() -> Self {
        MasterConfig {
            agent_timeout: DEFAULT_AGENT_TIMEOUT,
            source: "/shoal/master".into(),
            allocator: "drf".into(),
            allocation_interval: None,
        }
    }
}

impl MasterConfig {
    /// Agents heartbeat five times per timeout, so one or two lost messages do not lose them.
    pub fn heartbeat_interval(&self) -> Duration {
        (self.agent_timeout / 5).max(Duration::from_millis(50))
    }
}

/// The resource master's agent registry. Share it behind an `Arc`; [`Master::run`] serves the bus.
pub struct Master {
    config: MasterConfig,
    bus: SharedBus,
    events: EventPublisher,
    agents: Mutex<BTreeMap<String, AgentEntry>>,
    registry: Option<Arc<Registry>>,
    frameworks: Mutex<BTreeMap<String, FrameworkSpec>>,
    offers: Mutex<Offers>,
    tasks: Mutex<BTreeMap<String, TaskEntry>>,
    fw_state: Mutex<BTreeMap<String, tasks::FwState>>,
    journal: Option<Arc<dyn KvBackend>>,
    discovery: Option<Arc<shoal_discovery::Discovery>>,
    kick: tokio::sync::Notify,
    allocator: Mutex<String>,
    started: Instant,
    next_uuid: AtomicU64,
}

/// What a master is wired to besides the bus.
#[derive(Default, Clone)]
pub struct MasterParts {
    /// Plugin registry: the allocator and the framework plugins.
    pub registry: Option<Arc<Registry>>,
    /// Where live tasks are journaled, so a restarted master knows them.
    pub journal: Option<Arc<dyn KvBackend>>,
    /// Service registry that running tasks with ports join.
    pub discovery: Option<Arc<shoal_discovery::Discovery>>,
}

#[derive(Default)]
struct Offers {
    next_id: u64,
    by_id: BTreeMap<u64, OfferView>,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// `[a-z0-9-]{1,63}`, not starting or ending with `-`.
pub fn validate_agent_id(id: &str) -> Result<(), String> {
    let ok = !id.is_empty()
        && id.len() <= 63
        && id.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !id.starts_with('-')
        && !id.ends_with('-');
    if ok { Ok(()) } else { Err(format!("agent id `{id}` must be 1-63 of [a-z0-9-], not starting or ending with `-`")) }
}

impl Master {
    /// A master on `bus`; allocation calls the allocator plugin of `registry`.
    pub fn new(bus: SharedBus, config: MasterConfig, registry: Option<Arc<Registry>>) -> Arc<Master> {
        Master::with_parts(bus, config, MasterParts { registry, ..MasterParts::default() })
    }

    /// A master with a journal and a service registry too; loads the journal of a previous run.
    pub fn with_parts(bus: SharedBus, config: MasterConfig, parts: MasterParts) -> Arc<Master> {
        let events = EventPublisher::new(bus.clone(), config.source.clone());
        let master = Arc::new(Master {
            config,
            bus,
            events,
            agents: Mutex::new(BTreeMap::new()),
            registry: parts.registry,
            frameworks: Mutex::new(BTreeMap::new()),
            offers: Mutex::new(Offers::default()),
            tasks: Mutex::new(BTreeMap::new()),
            fw_state: Mutex::new(BTreeMap::new()),
            journal: parts.journal,
            discovery: parts.discovery,
            kick: tokio::sync::Notify::new(),
            allocator: Mutex::new(String::new()),
            started: Instant::now(),
            next_uuid: AtomicU64::new(1),
        });
        if let Some(Ok(Some(name))) = master.journal.as_ref().map(|j| j.get("allocator")) {
            *master.allocator.lock() = String::from_utf8_lossy(&name).into_owned();
        }
        let recovered = master.load_journal();
        if recovered > 0 {
            tracing::info!(tasks = recovered, "tasks recovered from the journal; waiting for their agents");
        }
        master
    }

    /// The master's configuration.
    pub fn config(&self) -> &MasterConfig {
        &self.config
    }

    /// Name of the allocator plugin the cycles call.
    pub fn allocator(&self) -> String {
        let name = self.allocator.lock();
        if name.is_empty() { self.config.allocator.clone() } else { name.clone() }
    }

    /// Use another allocator plugin from the next cycle on (it must be active in the registry),
    /// and run a cycle soon. Returns the previous one.
    pub fn set_allocator(&self, name: &str) -> Result<String, String> {
        let registry = self.registry.as_ref().ok_or("this master has no plugin registry")?;
        if registry.active(PluginKind::Allocator, name).is_none() {
            return Err(format!("no active allocator plugin `{name}` (push one: shoal plugin push --kind allocator)"));
        }
        let previous = self.allocator();
        *self.allocator.lock() = name.to_owned();
        if let Some(j) = &self.journal
            && let Err(e) = j.set("allocator", name.as_bytes())
        {
            tracing::error!(cause = %e, "could not record the allocator choice; a restart returns to the configured one");
        }
        tracing::info!(allocator = name, %previous, "allocator switched");
        self.kick.notify_one();
        Ok(previous)
    }

    /// Register (or update) a framework.
    pub fn add_framework(&self, spec: FrameworkSpec) -> Result<(), String> {
        validate_agent_id(&spec.name)
            .map_err(|_| format!("framework name `{}` must be 1-63 of [a-z0-9-]", spec.name))?;
        if !spec.weight.is_finite() || spec.weight <= 0.0 {
            return Err(format!("weight {} must be a finite number > 0", spec.weight));
        }
        let quota = spec.quota.clone().map(Resources::validate).transpose().map_err(|e| e.to_string())?;
        self.frameworks.lock().insert(spec.name.clone(), FrameworkSpec { quota, ..spec });
        Ok(())
    }

    /// Registered frameworks.
    pub fn frameworks(&self) -> Vec<FrameworkSpec> {
        self.frameworks.lock().values().cloned().collect()
    }

    /// Outstanding offers.
    pub fn offers(&self) -> Vec<OfferView> {
        self.offers.lock().by_id.values().cloned().collect()
    }

    /// Register an agent without the bus (simulations and benchmarks); the same checks as a
    /// registration over the bus.
    pub fn admit(&self, reg: AgentRegistration) -> Result<&'static str, String> {
        self.admit_inner(reg).map(|(action, _)| action)
    }

    /// One allocation cycle: snapshot, allocator plugin, checked offers (see [`check_offers`]).
    /// Blocks on the plugin call: call it from a blocking thread.
    pub fn allocate_once(&self) -> Result<AllocationReport, String> {
        let registry = self.registry.as_ref().ok_or("this master has no plugin registry")?;
        let now = now_ms();
        let (task_agents, task_frameworks) = self.task_usage();
        let filters: BTreeMap<String, (Vec<shoal_abi::DeclineFilter>, bool, u64)> =
            self.frameworks.lock().keys().map(|f| (f.clone(), self.filters_of(f, now))).collect();
        let (snapshot, mut free, frameworks, mut allocated) = {
            let agents = self.agents.lock();
            let offers = self.offers.lock();
            let frameworks = self.frameworks.lock().clone();
            let mut offered: BTreeMap<&str, Resources> =
                task_agents.iter().map(|(a, r)| (a.as_str(), r.clone())).collect();
            let mut allocated: BTreeMap<String, Resources> = task_frameworks;
            for o in offers.by_id.values() {
                let held = offered.entry(o.agent_id.as_str()).or_default();
                *held = held.plus(&o.resources);
                let f = allocated.entry(o.framework.clone()).or_default();
                *f = f.plus(&o.resources);
            }
            let mut free = BTreeMap::new();
            let mut wit_agents = Vec::with_capacity(agents.len());
            for e in agents.values().filter(|e| e.state == AgentState::Active) {
                let taken = offered.get(e.reg.id.as_str()).cloned().unwrap_or_default();
                let left = e.reg.resources.minus(&taken).unwrap_or_default();
                wit_agents.push(shoal_abi::Agent {
                    id: e.reg.id.clone(),
                    hostname: e.reg.hostname.clone(),
                    attributes: e
                        .reg
                        .attributes
                        .iter()
                        .map(|(k, v)| shoal_abi::Attribute { name: k.clone(), value: v.clone() })
                        .collect(),
                    total: e.reg.resources.to_wit(),
                    free: left.to_wit(),
                });
                free.insert(e.reg.id.clone(), left);
            }
            let wit_frameworks = frameworks
                .values()
                .map(|f| shoal_abi::FrameworkInfo {
                    name: f.name.clone(),
                    role: f.role.clone(),
                    weight: f.weight,
                    quota: f.quota.as_ref().map(Resources::to_wit),
                    allocated: allocated.get(&f.name).cloned().unwrap_or_default().to_wit(),
                    filters: filters.get(&f.name).map(|x| x.0.clone()).unwrap_or_default(),
                    suppressed: filters.get(&f.name).is_some_and(|x| x.1),
                })
                .collect();
            let snapshot = shoal_abi::ClusterSnapshot { now_ms: now, agents: wit_agents, frameworks: wit_frameworks };
            (snapshot, free, frameworks, allocated)
        };
        let allocator = self.allocator();
        let answer = registry.call(PluginKind::Allocator, &allocator, |p| match p {
            AnyPlugin::Allocator(a) => shoal_abi::allocate(a, &snapshot),
            _ => unreachable!("the registry keys plugins by kind"),
        });
        let proposals = match answer {
            None => return Err(format!("no active allocator plugin `{allocator}`")),
            Some(Err(e)) => return Err(format!("allocator `{allocator}` failed: {e}")),
            Some(Ok(p)) => p,
        };
        // Decline filters and suppression are the frameworks' wishes: proposals against them are
        // dropped (and reported), whatever the allocator thinks.
        let (proposals, mut filtered): (Vec<_>, Vec<_>) = proposals.into_iter().partition(|p| {
            filters.get(&p.framework).is_none_or(|(f, suppressed, _)| {
                !*suppressed && !f.iter().any(|d| d.agent_id == p.agent_id && d.until_ms > now)
            })
        });
        let (accepted, mut rejected) = check_offers(proposals, &mut free, &frameworks, &mut allocated);
        rejected.extend(filtered.drain(..).map(|p| Rejected {
            framework: p.framework,
            agent_id: p.agent_id,
            reason: "the framework declined this agent or suppressed offers".into(),
        }));
        let mut offers = self.offers.lock();
        // Agents lost during the plugin call: their offers are not made.
        let agents = self.agents.lock();
        let mut made = Vec::with_capacity(accepted.len());
        for (framework, agent_id, resources) in accepted {
            if agents.get(&agent_id).is_none_or(|e| e.state != AgentState::Active) {
                continue;
            }
            offers.next_id += 1;
            let offer = OfferView { id: offers.next_id, framework, agent_id, resources };
            offers.by_id.insert(offer.id, offer.clone());
            made.push(offer);
        }
        let revived = filters.into_iter().map(|(f, (_, _, n))| (f, n)).collect();
        Ok(AllocationReport {
            offers: made,
            rejected,
            agents: snapshot.agents.len(),
            frameworks: frameworks.len(),
            revived,
        })
    }

    /// Take back every offer of `agent` (it was lost).
    fn rescind_agent(&self, agent: &str) -> Vec<OfferView> {
        let mut offers = self.offers.lock();
        let ids: Vec<u64> = offers.by_id.values().filter(|o| o.agent_id == agent).map(|o| o.id).collect();
        ids.into_iter().filter_map(|id| offers.by_id.remove(&id)).collect()
    }

    /// Every agent the master knows, active or lost.
    pub fn agents(&self) -> Vec<AgentView> {
        self.agents.lock().values().map(view).collect()
    }

    /// One agent.
    pub fn agent(&self, id: &str) -> Option<AgentView> {
        self.agents.lock().get(id).map(view)
    }

    /// Serve registrations, heartbeats and status updates, declare silent agents lost, run
    /// allocation cycles and drive the frameworks, until the bus closes.
    pub async fn run(self: Arc<Self>) -> Result<(), shoal_bus::BusError> {
        let mut registrations = self.bus.subscribe(subject::AGENT_REGISTER).await?;
        let mut heartbeats = self.bus.subscribe(subject::AGENT_HEARTBEATS_ALL).await?;
        let mut statuses = self.bus.subscribe(subject::TASK_STATUS).await?;
        let mut second = tokio::time::interval(Duration::from_secs(1));
        second.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        self.sync_framework_plugins();
        let mut sweep = tokio::time::interval((self.config.agent_timeout / 10).max(Duration::from_millis(20)));
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        if self.config.allocation_interval.is_some() {
            tokio::spawn(self.clone().allocation_loop());
        }
        loop {
            tokio::select! {
                msg = registrations.next() => {
                    let Some(msg) = msg else { return Ok(()) };
                    let reply = self.register(&msg.payload).await;
                    let body = serde_json::to_vec(&reply).expect("a reply serialises");
                    if let Err(e) = msg.respond(self.bus.as_ref(), body.into()).await {
                        tracing::warn!(cause = %e, "could not answer a registration");
                    }
                }
                msg = heartbeats.next() => {
                    let Some(msg) = msg else { return Ok(()) };
                    // shoal.ctl.agent.<id>.heartbeat
                    let id = msg.subject.split('.').nth(3).unwrap_or_default().to_owned();
                    let known = self.heartbeat(&id);
                    if msg.reply.is_some() {
                        let body = serde_json::to_vec(&HeartbeatReply { known }).expect("serialises");
                        let _ = msg.respond(self.bus.as_ref(), body.into()).await;
                    }
                }
                msg = statuses.next() => {
                    let Some(msg) = msg else { return Ok(()) };
                    match serde_json::from_slice::<StatusUpdate>(&msg.payload) {
                        Ok(update) => {
                            self.apply_status(&update, false).await;
                            let ack = serde_json::to_vec(&protocol::StatusAck { uuid: update.uuid }).expect("serialises");
                            let _ = msg.respond(self.bus.as_ref(), ack.into()).await;
                        }
                        Err(e) => tracing::warn!(cause = %e, "malformed status update dropped"),
                    }
                }
                _ = sweep.tick() => self.sweep().await,
                _ = second.tick() => {
                    self.sync_framework_plugins();
                    self.tick_frameworks();
                    self.tasks_housekeeping().await;
                    self.record_gauges();
                }

            }
        }
    }

    /// Allocation cycles, one at a time, apart from the loop that serves agents (a cycle over
    /// many agents must not delay their registrations and heartbeats): every interval, and soon
    /// after a change (launches, ended tasks, revives, new agents), gathering whatever else
    /// happens in the next few milliseconds.
    async fn allocation_loop(self: Arc<Self>) {
        let mut interval = tokio::time::interval(self.config.allocation_interval.unwrap_or(Duration::from_secs(1)));
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = interval.tick() => {}
                _ = self.kick.notified() => tokio::time::sleep(Duration::from_millis(2)).await,
            }
            // Nobody to offer to: no cycle (and no allocator call over every agent).
            let wanted = {
                let frameworks = self.frameworks.lock();
                let state = self.fw_state.lock();
                frameworks.keys().any(|f| !state.get(f).is_some_and(|s| s.suppressed))
                    || state.values().any(|s| !s.held.is_empty())
            };
            if wanted {
                self.cycle().await;
            }
        }
    }

    /// One allocation cycle, its events, and its offers handed to the frameworks.
    async fn cycle(self: &Arc<Self>) {
        let me = self.clone();
        let started = Instant::now();
        let result = tokio::task::spawn_blocking(move || me.allocate_once()).await;
        metrics::histogram!("shoal_allocation_cycle_seconds").record(started.elapsed().as_secs_f64());
        match result {
            Ok(Ok(report)) => {
                metrics::counter!("shoal_offers_made_total").increment(report.offers.len() as u64);
                metrics::counter!("shoal_offers_refused_total").increment(report.rejected.len() as u64);
                self.dispatch_offers(&report);
                self.publish_report(&report).await;
            }
            Ok(Err(e)) => tracing::warn!(cause = %e, "allocation cycle failed"),
            Err(e) => tracing::error!(cause = %e, "allocation cycle panicked"),
        }
    }

    async fn register(&self, payload: &[u8]) -> RegisterReply {
        let heartbeat_ms = self.config.heartbeat_interval().as_millis() as u64;
        let refuse =
            |error: String| RegisterReply { accepted: false, error: Some(error), heartbeat_ms, kill: Vec::new() };
        let reg: AgentRegistration = match serde_json::from_slice(payload) {
            Ok(reg) => reg,
            Err(e) => return refuse(format!("malformed registration: {e}")),
        };
        let (action, data) = match self.admit_inner(reg.clone()) {
            Ok(x) => x,
            Err(e) => return refuse(e),
        };
        tracing::info!(agent = %reg.id, hostname = %reg.hostname, resources = %reg.resources, action, "agent registered");
        self.events
            .emit(
                subject::agent_event(&reg.id, action),
                &format!("io.shoal.agent.{action}"),
                &format!("agents/{}", reg.id),
                data,
            )
            .await;
        let kill = self.reconcile_agent(&reg.id, &reg.tasks).await;
        if !kill.is_empty() {
            tracing::warn!(agent = %reg.id, tasks = ?kill, "the agent runs tasks the cluster gave up; it kills them");
        }
        self.kick.notify_one();
        RegisterReply { accepted: true, error: None, heartbeat_ms, kill }
    }

    fn admit_inner(&self, reg: AgentRegistration) -> Result<(&'static str, serde_json::Value), String> {
        validate_agent_id(&reg.id)?;
        if reg.hostname.is_empty() || reg.hostname.len() > 253 {
            return Err("hostname must be 1-253 bytes".into());
        }
        let resources = reg.resources.clone().validate().map_err(|e| e.to_string())?;
        let reg = AgentRegistration { resources, ..reg };
        {
            let mut agents = self.agents.lock();
            let existing = agents.get(&reg.id);
            if let Some(e) = existing
                && e.state == AgentState::Active
                && e.reg.hostname != reg.hostname
            {
                return Err(format!(
                    "agent id `{}` is held by a live agent on {}; pick another id",
                    reg.id, e.reg.hostname
                ));
            }
            let (action, registrations, registered_at_ms) = match existing {
                Some(e) => ("reregistered", e.registrations + 1, e.registered_at_ms),
                None => ("registered", 1, now_ms()),
            };
            let data = serde_json::json!({
                "id": reg.id, "hostname": reg.hostname, "attributes": reg.attributes,
                "resources": reg.resources, "tasks": reg.tasks.iter().map(|t| &t.info.id).collect::<Vec<_>>(),
            });
            agents.insert(
                reg.id.clone(),
                AgentEntry {
                    reg: reg.clone(),
                    state: AgentState::Active,
                    last_seen: Instant::now(),
                    registrations,
                    registered_at_ms,
                },
            );
            Ok((action, data))
        }
    }

    /// Events of one cycle: one per offer made, one per proposal refused.
    pub async fn publish_report(&self, report: &AllocationReport) {
        for offer in &report.offers {
            self.events
                .emit(
                    subject::offer_event(&offer.framework, "made"),
                    "io.shoal.offer.made",
                    &format!("offers/{}", offer.id),
                    serde_json::json!(offer),
                )
                .await;
        }
        for r in &report.rejected {
            tracing::warn!(framework = %r.framework, agent = %r.agent_id, reason = %r.reason, "allocator proposal refused");
            self.events
                .emit(
                    subject::offer_event(&r.framework, "refused"),
                    "io.shoal.offer.refused",
                    &format!("allocators/{}", self.allocator()),
                    serde_json::json!({ "allocator": self.allocator(), "proposal": r }),
                )
                .await;
        }
    }

    fn heartbeat(&self, id: &str) -> bool {
        let mut agents = self.agents.lock();
        match agents.get_mut(id) {
            Some(e) if e.state == AgentState::Active => {
                e.last_seen = Instant::now();
                true
            }
            _ => false,
        }
    }

    async fn sweep(&self) {
        let lost: Vec<(String, String, Vec<String>, u64)> = {
            let mut agents = self.agents.lock();
            let timeout = self.config.agent_timeout;
            agents
                .values_mut()
                .filter(|e| e.state == AgentState::Active && e.last_seen.elapsed() > timeout)
                .map(|e| {
                    e.state = AgentState::Lost;
                    (
                        e.reg.id.clone(),
                        e.reg.hostname.clone(),
                        e.reg.tasks.iter().map(|t| t.info.id.clone()).collect(),
                        e.last_seen.elapsed().as_millis() as u64,
                    )
                })
                .collect()
        };
        for (id, hostname, tasks, silent_ms) in lost {
            tracing::warn!(agent = %id, %hostname, silent_ms, "agent lost");
            for offer in self.rescind_agent(&id) {
                self.events
                    .emit(
                        subject::offer_event(&offer.framework, "rescinded"),
                        "io.shoal.offer.rescinded",
                        &format!("offers/{}", offer.id),
                        serde_json::json!({ "offer": offer, "reason": format!("agent {id} lost") }),
                    )
                    .await;
            }
            self.events
                .emit(
                    subject::agent_event(&id, "lost"),
                    "io.shoal.agent.lost",
                    &format!("agents/{id}"),
                    serde_json::json!({ "id": id, "hostname": hostname, "tasks": tasks, "silent_ms": silent_ms }),
                )
                .await;
            self.agent_lost(&id).await;
        }
    }
}

fn view(e: &AgentEntry) -> AgentView {
    AgentView {
        id: e.reg.id.clone(),
        hostname: e.reg.hostname.clone(),
        attributes: e.reg.attributes.clone(),
        total: e.reg.resources.clone(),
        state: e.state,
        tasks: e.reg.tasks.iter().map(|t| t.info.id.clone()).collect(),
        registrations: e.registrations,
        last_seen_ms_ago: e.last_seen.elapsed().as_millis() as u64,
        registered_at_ms: e.registered_at_ms,
    }
}

/// What the agent loop needs of the agent it registers.
pub trait AgentHooks: Send + Sync + 'static {
    /// The tasks the agent runs now, listed in each (re-)registration.
    fn tasks(&self) -> Vec<AgentTask>;
    /// The master answered that the cluster gave these tasks up: kill them.
    fn kill(&self, task_ids: Vec<String>);
    /// Registered (again): a moment to resend unacknowledged status updates.
    fn registered(&self) {}
}

/// An agent without tasks (simulations, tests of the registry).
struct NoTasks(Vec<AgentTask>);

impl AgentHooks for NoTasks {
    fn tasks(&self) -> Vec<AgentTask> {
        self.0.clone()
    }
    fn kill(&self, _: Vec<String>) {}
}

/// The agent's side: register (retrying until a master answers), then heartbeat; register again
/// whenever the master does not know the agent. Returns only on a refused registration.
pub async fn run_agent(bus: SharedBus, registration: AgentRegistration) -> Result<(), String> {
    let tasks = registration.tasks.clone();
    run_agent_with(bus, registration, Arc::new(NoTasks(tasks))).await
}

/// [`run_agent`] for an agent that runs tasks: each registration lists `hooks.tasks()`.
pub async fn run_agent_with(
    bus: SharedBus,
    mut registration: AgentRegistration,
    hooks: Arc<dyn AgentHooks>,
) -> Result<(), String> {
    let heartbeat_subject = subject::agent_heartbeat(&registration.id);
    let mut waiting_logged = false;
    loop {
        // Register.
        registration.tasks = hooks.tasks();
        let payload: Bytes = serde_json::to_vec(&registration).map_err(|e| e.to_string())?.into();
        let interval = match bus.request(subject::AGENT_REGISTER, payload.clone(), Duration::from_secs(2)).await {
            Ok(msg) => match serde_json::from_slice::<RegisterReply>(&msg.payload) {
                Ok(reply) if reply.accepted => {
                    tracing::info!(agent = %registration.id, tasks = registration.tasks.len(), "registered with the master");
                    waiting_logged = false;
                    if !reply.kill.is_empty() {
                        hooks.kill(reply.kill);
                    }
                    hooks.registered();
                    Duration::from_millis(reply.heartbeat_ms.max(10))
                }
                Ok(reply) => return Err(reply.error.unwrap_or_else(|| "refused".into())),
                Err(e) => return Err(format!("the master answered something else: {e}")),
            },
            Err(e) => {
                if !waiting_logged {
                    tracing::warn!(agent = %registration.id, cause = %e, "no master answers yet; retrying");
                    waiting_logged = true;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        // Heartbeat until the master forgets us.
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            match bus.request(&heartbeat_subject, Bytes::new(), interval.max(Duration::from_millis(500))).await {
                Ok(msg) => match serde_json::from_slice::<HeartbeatReply>(&msg.payload) {
                    Ok(HeartbeatReply { known: true }) => {}
                    _ => {
                        tracing::warn!(agent = %registration.id, "the master does not know this agent; registering again");
                        break;
                    }
                },
                Err(e) => tracing::debug!(agent = %registration.id, cause = %e, "heartbeat unanswered"),
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use shoal_bus::LocalBus;

    fn reg(id: &str, host: &str) -> AgentRegistration {
        AgentRegistration {
            id: id.into(),
            hostname: host.into(),
            address: None,
            attributes: BTreeMap::from([("rack".into(), "r1".into())]),
            resources: Resources::parse("cpus:2;mem:1024;ports:[31000-31010]").unwrap(),
            tasks: vec![],
        }
    }

    async fn eventually(what: &str, f: impl Fn() -> bool) {
        for _ in 0..200 {
            if f() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("{what} did not happen within 4 s");
    }

    #[tokio::test]
    async fn register_heartbeat_lose_and_come_back() {
        let bus: SharedBus = Arc::new(LocalBus::new());
        let mut events = bus.subscribe("shoal.evt.agent.>").await.unwrap();
        let master = Master::new(
            bus.clone(),
            MasterConfig { agent_timeout: Duration::from_millis(400), ..MasterConfig::default() },
            None,
        );
        tokio::spawn(master.clone().run());
        let agent = tokio::spawn(run_agent(bus.clone(), reg("a1", "host-1")));
        eventually("registration", || master.agent("a1").is_some_and(|a| a.state == AgentState::Active)).await;
        let e = events.next().await.unwrap();
        assert_eq!(e.subject, "shoal.evt.agent.a1.registered");

        // Heartbeats keep it active well past the timeout.
        tokio::time::sleep(Duration::from_millis(1000)).await;
        assert_eq!(master.agent("a1").unwrap().state, AgentState::Active);

        // Silence: lost, with an event.
        agent.abort();
        eventually("loss", || master.agent("a1").is_some_and(|a| a.state == AgentState::Lost)).await;
        let e = events.next().await.unwrap();
        assert_eq!(e.subject, "shoal.evt.agent.a1.lost");

        // It comes back with its tasks: re-registered.
        let mut back = reg("a1", "host-1");
        back.tasks = vec![AgentTask {
            info: TaskInfo {
                id: "web.1".into(),
                framework: "service".into(),
                agent_id: "a1".into(),
                command: TaskCommand::Shell("sleep 60".into()),
                resources: Resources::parse("cpus:0.1;mem:16").unwrap(),
                env: BTreeMap::new(),
                labels: BTreeMap::new(),
            },
            state: TaskState::Running,
            healthy: None,
            message: String::new(),
        }];
        tokio::spawn(run_agent(bus.clone(), back));
        eventually("re-registration", || master.agent("a1").is_some_and(|a| a.state == AgentState::Active)).await;
        let a = master.agent("a1").unwrap();
        assert_eq!((a.registrations, a.tasks.as_slice()), (2, ["web.1".to_owned()].as_slice()));
        assert_eq!(events.next().await.unwrap().subject, "shoal.evt.agent.a1.reregistered");
    }

    #[tokio::test]
    async fn bad_registrations_are_refused_and_change_nothing() {
        let bus: SharedBus = Arc::new(LocalBus::new());
        let master = Master::new(bus.clone(), MasterConfig::default(), None);
        tokio::spawn(master.clone().run());
        tokio::spawn(run_agent(bus.clone(), reg("a1", "host-1")));
        eventually("registration", || master.agent("a1").is_some()).await;

        let mut bad = reg("a2", "host-2");
        bad.resources.cpus = -1.0;
        let err = run_agent(bus.clone(), bad).await.unwrap_err();
        assert!(err.contains("cpus = -1"), "{err}");
        let err = run_agent(bus.clone(), reg("Bad_Id", "h")).await.unwrap_err();
        assert!(err.contains("agent id"), "{err}");
        let err = run_agent(bus.clone(), reg("a1", "host-9")).await.unwrap_err();
        assert!(err.contains("held by a live agent on host-1"), "{err}");
        let reply =
            bus.request(subject::AGENT_REGISTER, Bytes::from_static(b"{nope"), Duration::from_secs(2)).await.unwrap();
        let reply: RegisterReply = serde_json::from_slice(&reply.payload).unwrap();
        assert!(!reply.accepted && reply.error.unwrap().contains("malformed"));
        let agents = master.agents();
        assert_eq!(agents.len(), 1);
        assert_eq!(agents[0].hostname, "host-1");
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
        let next_batch = |rx: &mut tokio::sync::mpsc::UnboundedReceiver<tasks::FwInput>| match rx.try_recv() {
            Ok(tasks::FwInput::Offers(batch)) => batch,
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
