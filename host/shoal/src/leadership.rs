//! Several `shoal master` processes, one leader.
//!
//! Every master keeps the whole replicated state warm ([`shoal_state::StateDb`] on the NATS
//! cluster's JetStream) and serves its API; one leads, by a lease in the JetStream KV bucket
//! [`LEASE_BUCKET`] ([`shoal_replication::Lease`]). Only the leader runs what acts on the
//! cluster — the resource master (agents, offers, frameworks, launches), the store's
//! coordinator (the shard map), the artifact service — each started with the lease's term when
//! this master starts leading and stopped the moment it stops ([`LeaderParts`]). A leader checks
//! its lease on its own clock every sixteenth of the TTL and stops acting as soon as the lease
//! says it may no longer lead, which is a quarter of a TTL before anyone else can take it; what
//! was already on its way is fenced by the term (agents and store nodes refuse a lower term than
//! one they have seen; the state's log refuses a deposed writer's append).
//!
//! `shoal dev` runs the same parts with the local state and no lease: a single member that
//! always leads, with term 1.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use async_nats::jetstream::kv;
use futures::StreamExt;
use parking_lot::Mutex;
use shoal_api::Leading;
use shoal_api::leader::Member;
use shoal_bus::SharedBus;
use shoal_discovery::Discovery;
use shoal_registry::Registry;
use shoal_replication::{Lease, LeaseConfig, LogConfig, Role};
use shoal_state::{ReplicaConfig, StateDb};
use shoal_store::coordinator::Coordinator;
use shoal_task_io::ArtifactStore;
use tokio::task::JoinHandle;

use crate::node::NodeConfig;

/// The KV bucket of the masters' lease (key `master`) and presence (keys `member.<id>`).
pub const LEASE_BUCKET: &str = "shoal-masters";
/// The stream of the masters' replicated state.
pub const STATE_STREAM: &str = "SHOAL_MASTER_STATE";
/// Its subject (only masters may publish there: agents' and store nodes' grants do not name it).
pub const STATE_SUBJECT: &str = "shoal.state.master";
/// The Object Store bucket of the state's large values (plugin components, task artifacts).
pub const BLOB_BUCKET: &str = "shoal-master-blobs";

/// How a master takes part in the leadership.
#[derive(Clone, Debug)]
pub struct HaConfig {
    /// This master's id, unique among the masters.
    pub id: String,
    /// How long a lease outlives its holder's last renewal.
    pub lease_ttl: Duration,
    /// Replicas of the state, the lease and the blobs (`None`: as many servers as the NATS
    /// cluster has, at most 3).
    pub replicas: Option<usize>,
    /// The URL other masters forward requests to (default `http://<listen address>`).
    pub advertise: Option<String>,
}

/// How many replicas a NATS cluster can hold: its servers, at most 3.
pub(crate) fn replicas_of(client: &async_nats::Client, wanted: Option<usize>) -> usize {
    wanted.unwrap_or_else(|| client.server_info().connect_urls.len().clamp(1, 3))
}

/// Open the masters' replicated state on the NATS cluster behind `client`, after checking it
/// runs JetStream.
pub async fn open_state(
    client: &async_nats::Client,
    dir: &std::path::Path,
    tables: &[&str],
    ha: &HaConfig,
) -> anyhow::Result<Arc<StateDb>> {
    let js = async_nats::jetstream::new(client.clone());
    // A NATS cluster that has just started elects its JetStream leader first: wait for it, but
    // refuse at once a server that runs no JetStream at all. Such a server has nothing listening
    // on the JetStream API (async-nats's `JetStreamUnavailable`, "no responders") and says so in
    // its INFO, whereas a JetStream server still electing announces JetStream; an account
    // without JetStream on a JetStream server is told "not enabled".
    let deadline = tokio::time::Instant::now() + JETSTREAM_PATIENCE;
    loop {
        let (kind, e) = match js.query_account().await {
            Ok(_) => break,
            Err(e) => (e.kind(), e.to_string()),
        };
        let unanswered = matches!(kind, async_nats::jetstream::context::AccountErrorKind::JetStreamUnavailable);
        let absent = (unanswered && !client.server_info().jetstream) || e.contains("not enabled");
        if absent || tokio::time::Instant::now() >= deadline {
            anyhow::bail!(
                "the NATS server has no JetStream ({e}): `shoal master` keeps the cluster's state replicated in \
                 JetStream; start nats-server with JetStream (`-js --store_dir DIR`, or the `jetstream {{}}` block \
                 `shoal nats init` writes unless --no-jetstream)"
            );
        }
        tracing::info!(cause = %e, "waiting for the NATS cluster's JetStream");
        // A product retry while JetStream elects its leader.
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let replicas = replicas_of(client, ha.replicas);
    let config = ReplicaConfig {
        log: LogConfig { stream: STATE_STREAM.into(), subject: STATE_SUBJECT.into(), replicas },
        blobs: BLOB_BUCKET.into(),
    };
    let state = loop {
        match StateDb::open_replicated(dir, tables, client.clone(), &config).await {
            Ok(state) => break state,
            // The state's stream was just made, or its leader is being elected.
            Err(e) if tokio::time::Instant::now() < deadline && transient(&e.to_string()) => {
                tracing::info!(cause = %e, "waiting for the state's stream");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) => return Err(e).with_context(|| format!("opening the replicated state in {}", dir.display())),
        }
    };
    tracing::info!(cluster = %state.cluster(), applied = state.applied(), replicas, "replicated state open");
    Ok(state)
}

/// What a leader runs, for one term.
pub(crate) struct LeaderParts {
    master: Arc<shoal_master::Master>,
    coordinator: Option<Arc<Coordinator>>,
    tasks: Vec<JoinHandle<()>>,
}

/// Everything a master needs to start leading.
#[derive(Clone)]
pub(crate) struct Leader {
    pub config: NodeConfig,
    pub bus: SharedBus,
    pub state: Arc<StateDb>,
    pub registry: Arc<Registry>,
    pub discovery: Arc<Discovery>,
    pub artifacts: Arc<ArtifactStore>,
    pub master: Leading<shoal_master::Master>,
    pub coordinator: Leading<Coordinator>,
    /// The term this master leads with once its parts run, 0 while it does not lead.
    pub started: Arc<tokio::sync::watch::Sender<u64>>,
}

impl Leader {
    /// Start what the leader runs, with `term`.
    pub(crate) async fn start(&self, term: u64) -> anyhow::Result<LeaderParts> {
        if self.config.ha.is_some() {
            // A single master's state in this data directory, into a cluster that has none yet.
            crate::import::import_local_state(&self.state, &self.config.data_dir, &crate::node::TABLES).await?;
        }
        // Active versions committed by the previous leader are loaded before anything calls them.
        let registry = self.registry.clone();
        tokio::task::spawn_blocking(move || registry.reload_all()).await?;
        if self.config.ha.is_some() {
            // The admin token and the files of an earlier version, once this master may write.
            crate::node::on_leading(&self.state, &self.config.data_dir).await?;
        }
        if self.config.default_plugins {
            crate::node::register_defaults(&self.registry).await?;
        }
        let mut tasks = Vec::new();
        let coordinator = self.start_coordinator(term, &mut tasks).await?;
        let master = start_master(&self.config, &self.bus, &self.registry, &self.discovery, term);
        tasks.push(tokio::spawn({
            let (artifacts, bus) = (self.artifacts.clone(), self.bus.clone());
            async move {
                if let Err(e) = artifacts.serve(bus).await {
                    tracing::error!(cause = %e, "the artifact store stopped serving the bus");
                }
            }
        }));
        self.master.store(Some(master.clone()));
        if coordinator.is_some() {
            self.coordinator.store(coordinator.clone());
        }
        self.started.send_replace(term);
        tracing::info!(term, "leading");
        Ok(LeaderParts { master, coordinator, tasks })
    }

    /// With several masters, the shard map's coordinator of this leadership, opened from the
    /// state (a single node's runs from the start: `node::start_store`); its task joins `tasks`.
    async fn start_coordinator(
        &self,
        term: u64,
        tasks: &mut Vec<JoinHandle<()>>,
    ) -> anyhow::Result<Option<Arc<Coordinator>>> {
        let Some(config) =
            crate::node::coordinator_config(&self.config, &self.state, term).filter(|_| self.config.ha.is_some())
        else {
            return Ok(None);
        };
        // Watched before the coordinator runs, so its first map cannot slip by.
        let mut map_changes = self.state.watch(shoal_store::coordinator::STORE_TABLE);
        let coordinator = Coordinator::open(self.bus.clone(), config).context("opening the shard map")?;
        tasks.push(tokio::spawn({
            let coordinator = coordinator.clone();
            async move {
                if let Err(e) = coordinator.run().await {
                    tracing::error!(cause = %e, "the store coordinator stopped serving the bus");
                }
            }
        }));
        // With a store node in this process, answer nothing before the first map is made (as a
        // single node does), so the first request finds a store.
        if self.config.store_node.is_some() {
            let first_map = async {
                while coordinator.map().shard_count() == 0 {
                    if map_changes.next().await.is_none() {
                        break;
                    }
                }
            };
            if tokio::time::timeout(Duration::from_secs(10), first_map).await.is_err() {
                tracing::warn!("no shard map after 10 s: serving without a store");
            }
        }
        Ok(Some(coordinator))
    }

    /// Stop everything `parts` runs, at once.
    pub(crate) fn stop(&self, parts: LeaderParts) {
        parts.master.stop();
        self.master.store(None);
        self.coordinator.store(None);
        self.started.send_replace(0);
        for task in parts.tasks {
            task.abort();
        }
        drop(parts.coordinator);
        self.state.follow();
        tracing::warn!("no longer leading: the resource master, the shard map and the artifacts stopped here");
    }
}

/// The resource master for one term, serving the bus in its own task: allocator and frameworks
/// from the registry, its journal in the registry's `plugin-kv` table (flushed before launches),
/// running tasks joining discovery.
fn start_master(
    config: &NodeConfig,
    bus: &SharedBus,
    registry: &Arc<Registry>,
    discovery: &Arc<Discovery>,
    term: u64,
) -> Arc<shoal_master::Master> {
    let (journal, flush) = shoal_master::registry_journal(registry);
    let master = shoal_master::Master::with_parts(
        bus.clone(),
        shoal_master::MasterConfig {
            agent_timeout: config.agent_timeout,
            forget_lost_after: config.forget_lost_agents_after,
            source: shoal_bus::event::source("master"),
            allocation_interval: Some(config.allocation_interval),
            term,
            ..shoal_master::MasterConfig::default()
        },
        shoal_master::MasterParts {
            registry: Some(registry.clone()),
            journal: Some(journal),
            journal_flush: Some(flush),
            discovery: Some(discovery.clone()),
        },
    );
    tokio::spawn({
        let master = master.clone();
        async move {
            if let Err(e) = master.run().await {
                tracing::error!(cause = %e, "the master stopped serving the bus");
            }
        }
    });
    master
}

/// This master's presence and the others': `member.<id>` keys in the lease bucket, which expire
/// a TTL after their last write.
pub(crate) struct Presence {
    kv: kv::Store,
    me: Member,
    key: String,
    seen: Mutex<Vec<Member>>,
}

impl Presence {
    /// Announce `me`, refusing when another master runs with the same id (its key keeps being
    /// renewed for two TTLs).
    pub(crate) async fn announce(
        client: &async_nats::Client,
        ha: &HaConfig,
        me: Member,
    ) -> anyhow::Result<Arc<Presence>> {
        let kv = lease_bucket(client).await?;
        let key = format!("member.{}", me.id);
        let value = serde_json::to_vec(&me)?;
        let deadline = tokio::time::Instant::now() + ha.lease_ttl * 2;
        let settle = tokio::time::Instant::now() + JETSTREAM_PATIENCE;
        loop {
            match kv.create(&key, value.clone().into()).await {
                Ok(_) => break,
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
                    if tokio::time::Instant::now() >= deadline {
                        anyhow::bail!(
                            "another master is running with --id {}: every master needs an id of its own",
                            me.id
                        );
                    }
                    // Waiting out a TTL: the key of a crashed master with this id expires by then.
                    tokio::time::sleep(ha.lease_ttl / 8).await;
                }
                // A bucket just made (masters starting together on a new cluster) answers "no
                // responders" until JetStream has elected its stream's leader.
                Err(e) if tokio::time::Instant::now() < settle && transient(&e.to_string()) => {
                    tracing::info!(cause = %e, "waiting for the masters' bucket");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(e) => return Err(e).context("announcing this master"),
            }
        }
        Ok(Arc::new(Presence { kv, me, key, seen: Mutex::new(Vec::new()) }))
    }

    /// Keep announcing, and keep the list of members current, every half TTL.
    pub(crate) async fn run(self: Arc<Self>, ttl: Duration) {
        let value = serde_json::to_vec(&self.me).expect("serialises");
        loop {
            if let Err(e) = self.kv.put(&self.key, value.clone().into()).await {
                tracing::warn!(cause = %e, "could not renew this master's presence");
            }
            let mut members = Vec::new();
            if let Ok(mut keys) = self.kv.keys().await {
                while let Some(Ok(key)) = keys.next().await {
                    if !key.starts_with("member.") {
                        continue;
                    }
                    if let Ok(Some(bytes)) = self.kv.get(&key).await
                        && let Ok(member) = serde_json::from_slice::<Member>(&bytes)
                    {
                        members.push(member);
                    }
                }
            }
            members.sort_by(|a, b| a.id.cmp(&b.id));
            *self.seen.lock() = members;
            tokio::time::sleep(ttl / 2).await;
        }
    }

    /// The members seen at the last look.
    pub(crate) fn members(&self) -> Vec<Member> {
        self.seen.lock().clone()
    }

    /// Withdraw this master's presence (a clean stop; call once [`Presence::run`] has stopped).
    pub(crate) async fn leave(&self) {
        if let Err(e) = self.kv.delete(&self.key).await {
            tracing::debug!(cause = %e, "could not withdraw this master's presence; it expires instead");
        }
    }
}

/// How long a master waits for JetStream to elect the leaders of what it needs (a NATS cluster
/// that has just started, a stream just made).
const JETSTREAM_PATIENCE: Duration = Duration::from_secs(30);

/// JetStream's answers while a stream just made (by this master, or another started at the same
/// moment) elects its leader: they pass within `JETSTREAM_PATIENCE`.
fn transient(error: &str) -> bool {
    ["no responders", "timed out", "timeout", "no stream found"].iter().any(|m| error.contains(m))
}

async fn lease_bucket(client: &async_nats::Client) -> anyhow::Result<kv::Store> {
    // `Lease::open` makes the bucket (with the TTL as max_age) and checks the TTL; this handle
    // shares it.
    let js = async_nats::jetstream::new(client.clone());
    js.get_key_value(LEASE_BUCKET).await.context("opening the masters' bucket")
}

/// The lease of `me`, campaigned for and renewed until `resigned` fires (or its sender goes), on
/// a thread of its own with a NATS connection of its own: a leader whose runtime and connection
/// are busy with thousands of agents' heartbeats and its plugins' calls still renews on time (on
/// the shared ones, bench/master-failover.sh saw a loaded leader's renewal come later than 3/4 of
/// the TTL and the leadership move with no fault at all). Returns once the lease is open.
pub(crate) async fn run_lease(
    nats: &crate::cli::NatsTarget,
    ha: &HaConfig,
    me: &Member,
    resigned: tokio::sync::oneshot::Receiver<()>,
) -> anyhow::Result<(Arc<Lease>, JoinHandle<()>)> {
    let (opened_tx, opened) = tokio::sync::oneshot::channel::<anyhow::Result<Arc<Lease>>>();
    let (nats, ha, holder) = (nats.clone(), ha.clone(), me.holder());
    let task = tokio::task::spawn_blocking(move || {
        let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(runtime) => runtime,
            Err(e) => {
                let _ = opened_tx.send(Err(anyhow::Error::new(e).context("starting the lease's runtime")));
                return;
            }
        };
        runtime.block_on(async move {
            let open = async {
                let bus = shoal_bus::NatsBus::connect_with(&nats.url, &nats.options)
                    .await
                    .with_context(|| format!("connecting the lease to NATS at {}", nats.url))?;
                let client = bus.client().clone();
                let replicas = replicas_of(&client, ha.replicas);
                let config = LeaseConfig { bucket: LEASE_BUCKET.into(), ttl: ha.lease_ttl, replicas };
                anyhow::Ok(Lease::open(client, &config, "master", &holder).await?)
            };
            match open.await {
                Ok(lease) => {
                    let _ = opened_tx.send(Ok(lease.clone()));
                    lease
                        .run(async move {
                            let _ = resigned.await;
                        })
                        .await;
                }
                Err(e) => {
                    let _ = opened_tx.send(Err(e));
                }
            }
        });
    });
    let lease = opened.await.context("the lease's thread stopped before the lease was open")??;
    Ok((lease, task))
}

/// Lead while the lease says so: start the leader's parts on election, stop them when the lease
/// is lost or about to be (checked every TTL/16 on this master's clock), until `stop` turns true
/// (or its sender goes): then stop them for good.
pub(crate) async fn follow_lease(
    lease: Arc<Lease>,
    ttl: Duration,
    leader: Leader,
    id: String,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut role = lease.watch();
    let mut running: Option<(u64, LeaderParts)> = None;
    while !*stop.borrow() {
        let leading = lease.leading();
        match (leading, running.as_ref().map(|(t, _)| *t)) {
            (Some(term), None) => match leader.state.lead(term, &id).await {
                Ok(()) if lease.leading() == Some(term) => match leader.start(term).await {
                    Ok(parts) => running = Some((term, parts)),
                    Err(e) => {
                        tracing::error!(cause = %e, term, "could not start leading");
                        leader.state.follow();
                    }
                },
                Ok(()) => leader.state.follow(),
                Err(e) => tracing::warn!(cause = %e, term, "could not take the state's log; retrying"),
            },
            (Some(term), Some(held)) if term == held => {}
            (_, Some(_)) => {
                if let Some((_, parts)) = running.take() {
                    leader.stop(parts);
                }
                continue;
            }
            (None, None) => {}
        }
        tokio::select! {
            changed = role.changed() => if changed.is_err() { break },
            stopped = stop.changed() => if stopped.is_err() { break },
            () = tokio::time::sleep(ttl / 16) => {}
        }
    }
    if let Some((_, parts)) = running.take() {
        leader.stop(parts);
    }
}

/// What a master that takes part in the leadership runs, so that a clean stop ([`Departure::leave`])
/// hands the leadership over at once instead of leaving the others to wait out the lease.
pub(crate) struct Departure {
    pub stop_following: tokio::sync::watch::Sender<bool>,
    pub following: JoinHandle<()>,
    pub resign: tokio::sync::oneshot::Sender<()>,
    pub lease: JoinHandle<()>,
    pub presence: Arc<Presence>,
    pub announcing: JoinHandle<()>,
}

impl Departure {
    /// Stop acting as leader (the resource master, the shard map, the artifacts stop here), then
    /// give the lease up (its key deleted: a standby takes over at its next read, within an
    /// eighth of the TTL), then leave the members (so a restart with this id is accepted at
    /// once). In this order: nothing acts under this master's term once the lease is free.
    pub(crate) async fn leave(self) {
        let _ = self.stop_following.send(true);
        let _ = self.following.await;
        let _ = self.resign.send(());
        let _ = self.lease.await;
        self.announcing.abort();
        let _ = self.announcing.await;
        self.presence.leave().await;
        tracing::info!("left the masters: the leadership, if this master held it, is handed over");
    }
}

/// The lease's role, for the API.
pub(crate) fn role_of(lease: &Lease) -> tokio::sync::watch::Receiver<Role> {
    lease.watch()
}
