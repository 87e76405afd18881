//! The resource master: the master's half of two-level scheduling (Mesos's model).
//!
//! Agents and master talk only over the bus ([`shoal_bus::Bus`]), in the messages of
//! `shoal-protocol`, so the same code runs in one process (`shoal dev`, in-process bus) and across
//! machines (`shoal master` + `shoal agent` with NATS). [`Master::run`] serves the bus; the work
//! is split by concern:
//!
//! - `agents` — the agent registry: registrations, heartbeats, agents lost when silent past
//!   [`MasterConfig::agent_timeout`];
//! - `allocation` — allocation cycles through the allocator plugin, every offer checked;
//! - `frameworks` — one worker per framework plugin, the operations it answers (launch, decline,
//!   kill, suppress, revive);
//! - `tasks` — what the master knows of each task and the status updates agents send;
//! - `journal` — live tasks kept on disk so a restarted master knows them.
//!
//! Time comes from one [`Clock`] (Tokio's instants), so tests move it instead of waiting. What
//! the master keeps besides the journal is soft state, rebuilt from agents registering again.
//!
//! What this crate must never do: offer more than an agent has, launch a task outside an
//! outstanding offer of its framework, move a task's state backwards, or send an agent a command
//! or reply without its leader term ([`MasterConfig::term`]).

mod agents;
mod allocation;
mod error;
mod frameworks;
mod journal;
mod tasks;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, SystemTime};

use futures::StreamExt;
use parking_lot::Mutex;
use shoal_bus::{EventPublisher, SharedBus, subject};
use shoal_protocol::{HeartbeatReply, Resources, StatusAck, StatusUpdate, validate_agent_id};
use tokio::time::Instant;

use agents::AgentEntry;
pub use agents::{AgentState, AgentView};
pub use allocation::{AllocationReport, FrameworkSpec, OfferView, Rejected, check_offers};
pub use error::MasterError;
pub use frameworks::FrameworkView;
use shoal_registry::Registry;
pub use shoal_runtime::KvBackend;
pub use tasks::TaskEntry;

/// Default time without a heartbeat after which an agent is lost.
pub const DEFAULT_AGENT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default time a lost agent is remembered.
pub const DEFAULT_FORGET_LOST_AFTER: Duration = Duration::from_secs(24 * 3600);

/// How the master runs.
#[derive(Clone, Debug)]
pub struct MasterConfig {
    /// Time without a heartbeat after which an agent is lost (default 5 s).
    pub agent_timeout: Duration,
    /// Time an agent stays lost before the master forgets it (default a day): it leaves the
    /// agent list, and comes back as new if it registers again.
    pub forget_lost_after: Duration,
    /// CloudEvents `source` of the master's events.
    pub source: String,
    /// Name of the allocator plugin (default `drf`).
    pub allocator: String,
    /// Time between allocation cycles; `None` runs a cycle only when asked
    /// ([`Master::allocate_once`]).
    pub allocation_interval: Option<Duration>,
    /// The leader term this master acts under (default 1), carried by every launch and kill it
    /// sends and every registration and heartbeat reply, so agents refuse it once a newer leader
    /// has spoken to them (`shoal_protocol::term`). A `Master` lives for one leadership: the next
    /// leader builds a new one with its own, higher term.
    pub term: u64,
}

impl Default for MasterConfig {
    fn default() -> Self {
        MasterConfig {
            agent_timeout: DEFAULT_AGENT_TIMEOUT,
            forget_lost_after: DEFAULT_FORGET_LOST_AFTER,
            source: "/shoal/master".into(),
            allocator: "drf".into(),
            allocation_interval: None,
            term: 1,
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
    fw_state: Mutex<BTreeMap<String, frameworks::FwState>>,
    journal: Option<Arc<dyn KvBackend>>,
    journal_flush: Option<JournalFlush>,
    discovery: Option<Arc<shoal_discovery::Discovery>>,
    kick: tokio::sync::Notify,
    allocator: Mutex<String>,
    started: Instant,
    clock: Clock,
    next_uuid: AtomicU64,
    /// Turns true when this master stops acting (its leadership ended): see [`Master::stop`].
    stopped: tokio::sync::watch::Sender<bool>,
}

/// What a master is wired to besides the bus.
#[derive(Default, Clone)]
pub struct MasterParts {
    /// Plugin registry: the allocator and the framework plugins.
    pub registry: Option<Arc<Registry>>,
    /// Where live tasks are journaled, so a restarted master knows them.
    pub journal: Option<Arc<dyn KvBackend>>,
    /// Makes the journal's writes so far durable; called before a launch leaves (see
    /// [`JournalFlush`]). `None`: the journal's writes are durable when they return.
    pub journal_flush: Option<JournalFlush>,
    /// Service registry that running tasks with ports join.
    pub discovery: Option<Arc<shoal_discovery::Discovery>>,
}

/// Waits until every journal write made so far is durable (replicated, when the master's state
/// is): the master awaits it before a launch leaves, so a task any agent runs is in the journal
/// the next leader reads.
pub type JournalFlush =
    Arc<dyn Fn() -> futures::future::BoxFuture<'static, Result<(), shoal_runtime::KvError>> + Send + Sync>;

/// The task journal of `shoal master` — its table `framework/_master` in the registry's
/// `plugin-kv`, in the master's state — and its flush, for [`MasterParts`].
pub fn registry_journal(registry: &Registry) -> (Arc<dyn KvBackend>, JournalFlush) {
    let journal = registry.local_kv(shoal_abi::PluginKind::Framework, "_master");
    let flush: JournalFlush = {
        let journal = journal.clone();
        Arc::new(move || {
            let journal = journal.clone();
            Box::pin(async move { journal.flush().await })
        })
    };
    (journal, flush)
}

#[derive(Default)]
struct Offers {
    next_id: u64,
    by_id: BTreeMap<u64, OfferView>,
}

/// The master's one clock. Instants are Tokio's, so tests drive every timeout with paused time;
/// wall-clock milliseconds (timestamps, decline filters, what plugins see as `now-ms`) are the
/// wall time at start plus the monotonic time since, so a paused test moves both together and a
/// jump of the system clock moves no deadline.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    base_ms: u64,
    base: tokio::time::Instant,
}

impl Clock {
    /// A clock that starts now.
    pub fn new() -> Clock {
        let base_ms = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        Clock { base_ms, base: tokio::time::Instant::now() }
    }

    /// Now, on the monotonic clock.
    pub fn now(&self) -> tokio::time::Instant {
        tokio::time::Instant::now()
    }

    /// Now, in milliseconds since the Unix epoch.
    pub fn now_ms(&self) -> u64 {
        self.base_ms + self.base.elapsed().as_millis() as u64
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::new()
    }
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
            journal_flush: parts.journal_flush,
            discovery: parts.discovery,
            kick: tokio::sync::Notify::new(),
            allocator: Mutex::new(String::new()),
            started: Instant::now(),
            clock: Clock::new(),
            next_uuid: AtomicU64::new(1),
            stopped: tokio::sync::watch::channel(false).0,
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

    /// Register (or update) a framework.
    pub fn add_framework(&self, spec: FrameworkSpec) -> Result<(), MasterError> {
        validate_agent_id(&spec.name).map_err(|_| MasterError::InvalidFrameworkName(spec.name.clone()))?;
        if !spec.weight.is_finite() || spec.weight <= 0.0 {
            return Err(MasterError::InvalidWeight(spec.weight));
        }
        let quota = spec.quota.clone().map(Resources::validate).transpose()?;
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
    /// Stop acting, for good: [`Master::run`] returns and drops its subscriptions, allocation
    /// stops, framework workers end, and nothing more is sent to agents. A master whose
    /// leadership ended is stopped; the next leadership gets a new `Master`.
    pub fn stop(&self) {
        self.stopped.send_replace(true);
        self.fw_state.lock().clear();
    }

    /// Whether [`Master::stop`] was called.
    pub fn is_stopped(&self) -> bool {
        *self.stopped.borrow()
    }

    async fn until_stopped(&self) {
        let mut rx = self.stopped.subscribe();
        let _ = rx.wait_for(|s| *s).await;
    }

    /// Serve registrations, heartbeats and status updates, declare silent agents lost, run
    /// allocation cycles and drive the frameworks, until the bus closes or the master stops.
    pub async fn run(self: Arc<Self>) -> Result<(), shoal_bus::BusError> {
        let mut registrations = self.bus.subscribe(subject::AGENT_REGISTER_ALL).await?;
        let mut heartbeats = self.bus.subscribe(subject::AGENT_HEARTBEATS_ALL).await?;
        let mut statuses = self.bus.subscribe(subject::AGENT_STATUS_ALL).await?;
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
                () = self.until_stopped() => return Ok(()),
                msg = registrations.next() => {
                    let Some(msg) = msg else { return Ok(()) };
                    // The subject names the sender: with bus authorization on, only agent `<id>`
                    // may publish on `shoal.ctl.agent.<id>.register`.
                    let sender = subject::agent_of(&msg.subject, "register").unwrap_or_default();
                    let reply = self.register(sender, &msg.payload).await;
                    let body = serde_json::to_vec(&reply).expect("a reply serialises");
                    if let Err(e) = msg.respond(self.bus.as_ref(), body.into()).await {
                        tracing::warn!(cause = %e, "could not answer a registration");
                    }
                }
                msg = heartbeats.next() => {
                    let Some(msg) = msg else { return Ok(()) };
                    let known = subject::heartbeat_agent(&msg.subject).is_some_and(|id| self.heartbeat(id));
                    if msg.reply.is_some() {
                        let body = serde_json::to_vec(&HeartbeatReply { known, term: self.config.term }).expect("serialises");
                        let _ = msg.respond(self.bus.as_ref(), body.into()).await;
                    }
                }
                msg = statuses.next() => {
                    let Some(msg) = msg else { return Ok(()) };
                    let sender = subject::agent_of(&msg.subject, "status").unwrap_or_default();
                    match serde_json::from_slice::<StatusUpdate>(&msg.payload) {
                        Ok(update) if subject::token(&update.agent_id) != sender => {
                            tracing::warn!(agent = %sender, claimed = %update.agent_id, task = %update.task_id,
                                "status update for another agent's task refused");
                        }
                        Ok(update) => {
                            self.apply_status(&update, false).await;
                            let ack = serde_json::to_vec(&StatusAck { uuid: update.uuid }).expect("serialises");
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
}
