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
use shoal_abi::PluginKind;
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
fn replicas_of(client: &async_nats::Client, wanted: Option<usize>) -> usize {
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
    // refuse at once a server that runs no JetStream at all.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let e = match js.query_account().await {
            Ok(_) => break,
            Err(e) => e.to_string(),
        };
        let absent = e.contains("no responders") || e.contains("not enabled");
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
            // The log or the blob bucket just made (by this master, or another started at the same
            // moment) may not answer yet while its replicas elect a leader ("no stream found for
            // given subject", a timed-out request): that passes, within the same 30 s.
            Err(shoal_state::StateError::Unavailable(e)) if tokio::time::Instant::now() < deadline => {
                tracing::info!(cause = %e, "the replicated state does not answer yet; retrying");
                // A product retry while JetStream's new streams elect their leaders.
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) => {
                return Err(e).with_context(|| format!("opening the replicated state in {}", dir.display()));
            }
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
}

impl Leader {
    /// Start what the leader runs, with `term`.
    pub(crate) async fn start(&self, term: u64) -> anyhow::Result<LeaderParts> {
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
        // A single node's coordinator runs from the start (`node::start_store`); with several
        // masters each leadership opens its own from the state.
        let coordinator = match crate::node::coordinator_config(&self.config, &self.state, term)
            .filter(|_| self.config.ha.is_some())
        {
            Some(config) => {
                let coordinator = Coordinator::open(self.bus.clone(), config).context("opening the shard map")?;
                tasks.push(tokio::spawn({
                    let coordinator = coordinator.clone();
                    async move {
                        if let Err(e) = coordinator.run().await {
                            tracing::error!(cause = %e, "the store coordinator stopped serving the bus");
                        }
                    }
                }));
                // With a store node in this process, answer nothing before the first map is made
                // (as a single node does), so the first request finds a store.
                if self.config.store_node.is_some() {
                    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
                    while coordinator.map().shard_count() == 0 && tokio::time::Instant::now() < deadline {
                        // Polling a map another task makes; bounded by the deadline.
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
                Some(coordinator)
            }
            None => None,
        };
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
        tracing::info!(term, "leading");
        Ok(LeaderParts { master, coordinator, tasks })
    }

    /// Stop everything `parts` runs, at once.
    pub(crate) fn stop(&self, parts: LeaderParts) {
        parts.master.stop();
        self.master.store(None);
        self.coordinator.store(None);
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
    let journal = registry.local_kv(PluginKind::Framework, "_master");
    let flush: shoal_master::JournalFlush = {
        let journal = journal.clone();
        Arc::new(move || {
            let journal = journal.clone();
            Box::pin(async move { journal.flush().await })
        })
    };
    let master = shoal_master::Master::with_parts(
        bus.clone(),
        shoal_master::MasterConfig {
            agent_timeout: config.agent_timeout,
            source: "/shoal/master".into(),
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
        // A bucket another master has just made may not answer yet (its stream's replicas are
        // still electing: "no responders"); that passes, as JetStream's own start does.
        let unready_deadline = tokio::time::Instant::now() + Duration::from_secs(30);
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
                Err(e) if tokio::time::Instant::now() < unready_deadline => {
                    tracing::info!(cause = %e, "the masters' bucket does not answer yet; retrying");
                    // A product retry while the bucket's replicas elect their leader.
                    tokio::time::sleep(ha.lease_ttl / 8).await;
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
}

async fn lease_bucket(client: &async_nats::Client) -> anyhow::Result<kv::Store> {
    // `Lease::open` makes the bucket (with the TTL as max_age) and checks the TTL; this handle
    // shares it.
    let js = async_nats::jetstream::new(client.clone());
    js.get_key_value(LEASE_BUCKET).await.context("opening the masters' bucket")
}

/// The lease of `me`.
pub(crate) async fn open_lease(client: &async_nats::Client, ha: &HaConfig, me: &Member) -> anyhow::Result<Arc<Lease>> {
    let config =
        LeaseConfig { bucket: LEASE_BUCKET.into(), ttl: ha.lease_ttl, replicas: replicas_of(client, ha.replicas) };
    Ok(Lease::open(client.clone(), &config, "master", &me.holder()).await?)
}

/// Lead while the lease says so: start the leader's parts on election, stop them when the lease
/// is lost or about to be (checked every TTL/16 on this master's clock), until the process ends.
pub(crate) async fn follow_lease(lease: Arc<Lease>, ttl: Duration, leader: Leader, id: String) {
    let mut role = lease.watch();
    let mut running: Option<(u64, LeaderParts)> = None;
    loop {
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
            changed = role.changed() => if changed.is_err() { return },
            () = tokio::time::sleep(ttl / 16) => {}
        }
    }
}

/// The lease's role, for the API.
pub(crate) fn role_of(lease: &Lease) -> tokio::sync::watch::Receiver<Role> {
    lease.watch()
}
