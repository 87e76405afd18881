//! A store node's replicated shards: for each, its log (a JetStream stream, R = the shard's
//! replicas), a lease (a key of a JetStream KV bucket with the TTL as `max_age`) that says which
//! member leads it, and the tasks that follow the log and lead when the lease says so.
//!
//! The lease is `shoal_replication::Lease`, the masters' own: whoever creates the key leads, its
//! revision is the term, and a holder stops counting itself leader a quarter of a TTL before the
//! key can expire. The engine checks the lease on every write ([`Store::gate_shard`]), so a
//! member whose lease ran out appends nothing even before the driver below hears of it; what it
//! had on its way is fenced by the log.

mod snapshots;

use std::sync::Arc;
use std::time::Duration;

use shoal_replication::{Lease, LeaseConfig, Log, LogConfig, Role};
use tokio::task::JoinHandle;

use crate::{Store, StoreError};

/// The KV bucket of the shards' leases (key `shard-<n>`).
pub const LEASE_BUCKET: &str = shoal_bus::subject::SHARD_LEASE_BUCKET;

/// How a store node replicates the shards it holds.
#[derive(Clone, Debug)]
pub struct ReplicationConfig {
    /// The NATS cluster (with JetStream) the logs and leases live on.
    pub client: async_nats::Client,
    /// Copies of every entry JetStream keeps (at most the servers there are).
    pub replicas: usize,
    /// How long a shard's lease outlives its holder's last renewal: a dead leader's shard takes
    /// writes again within about this long.
    pub lease_ttl: Duration,
    /// Prefix of the streams' and buckets' names, so several clusters (or tests) can share one
    /// NATS cluster; empty in production.
    pub prefix: String,
    /// The leader of a shard takes a snapshot every this many log entries and compacts the log
    /// to the previous one (see [`snapshots`]); 0: never.
    pub snapshot_every: u64,
}

/// Entries between two snapshots of a shard, by default.
pub const SNAPSHOT_EVERY: u64 = 10_000;

impl ReplicationConfig {
    /// The log of shard `n`.
    pub fn log(&self, n: u32) -> LogConfig {
        LogConfig {
            stream: shoal_bus::subject::shard_log_stream(&self.prefix, n),
            subject: shoal_bus::subject::shard_log_subject(&self.prefix, n),
            replicas: self.replicas,
        }
    }

    fn lease(&self) -> LeaseConfig {
        LeaseConfig { bucket: format!("{}{LEASE_BUCKET}", self.prefix), ttl: self.lease_ttl, replicas: self.replicas }
    }
}

/// What keeps one replicated shard going on this node; dropping it stops following and leading
/// (the lease is given up, so another member leads at once).
pub struct ShardReplica {
    lease: Arc<Lease>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    tasks: Vec<JoinHandle<()>>,
}

impl ShardReplica {
    /// The shard's lease as this member sees it.
    pub fn lease(&self) -> &Arc<Lease> {
        &self.lease
    }

    /// Stop as a crashed member would: the lease is not given up (it expires), nothing more is
    /// applied or appended here.
    pub fn abandon(mut self) {
        for task in self.tasks.drain(..) {
            task.abort();
        }
        self.stop.take();
    }
}

impl Drop for ShardReplica {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        // The lease task gives the lease up on its own; the others end now.
        for task in self.tasks.iter().skip(1) {
            task.abort();
        }
    }
}

/// Delete the log of shard `n` (the shard is gone from every member, or a failed move left it).
pub async fn destroy_log(n: u32, config: &ReplicationConfig) -> Result<(), StoreError> {
    Log::destroy(config.client.clone(), &config.log(n)).await.map_err(|e| StoreError::Unavailable {
        shard: n,
        node: String::new(),
        reason: e.to_string(),
    })?;
    snapshots::destroy(n, config).await
}

/// Replicate shard `n` of `store` as `config` says: open its log and lease, follow the log, and
/// lead the shard while the lease says so.
pub async fn replicate(store: &Arc<Store>, n: u32, config: &ReplicationConfig) -> Result<ShardReplica, StoreError> {
    let unavailable =
        |e: &dyn std::fmt::Display| StoreError::Unavailable { shard: n, node: String::new(), reason: e.to_string() };
    let log = Log::open(config.client.clone(), &config.log(n)).await.map_err(|e| unavailable(&e))?;
    let (first, last) = log.bounds().await.map_err(|e| unavailable(&e))?;
    // A copy the compacted log went past starts from the newest snapshot.
    snapshots::restore_if_behind(store, n, config, (first, last)).await?;
    let compacting = log.clone();
    let applied = {
        let store = store.clone();
        tokio::task::spawn_blocking(move || store.replicate_shard(n, log))
            .await
            .map_err(|e| StoreError::Config(format!("replicating shard {n}: {e}")))??
    };
    if applied > last {
        // The stream holds less than this copy applied: it was deleted (and made again, empty,
        // by the open above) or purged behind Shoal's back. Taking it as it is would lose what
        // it held; an operator decides.
        let unreplicating = store.clone();
        let _ = tokio::task::spawn_blocking(move || unreplicating.unreplicate_shard(n)).await;
        tracing::error!(shard = n, applied, last, stream = %config.log(n).stream, "the shard's log holds less than this copy applied");
        return Err(StoreError::Corrupt(format!(
            "the log of shard {n} (stream {}) ends at entry {last}, but this copy applied {applied}: the stream was \
             deleted or purged behind Shoal's back; not replicating the shard",
            config.log(n).stream
        )));
    }
    let lease = Lease::open(config.client.clone(), &config.lease(), &format!("shard-{n}"), store.node())
        .await
        .map_err(|e| unavailable(&e))?;
    store.gate_shard(n, lease.clone())?;
    tracing::info!(shard = n, applied, "replicating the shard");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(lease.clone().run(async move {
        let _ = stopped.await;
    }));
    let following = tokio::spawn(follow(Arc::downgrade(store), n, config.clone(), lease.clone()));
    let driving = tokio::spawn(drive(Arc::downgrade(store), n, lease.clone(), config.lease_ttl / 4));
    let compacting = tokio::spawn(snapshots::compact(Arc::downgrade(store), n, compacting, config.clone()));
    Ok(ShardReplica { lease, stop: Some(stop), tasks: vec![running, following, driving, compacting] })
}

/// Follow shard `n`'s log; a copy that fell so far behind that the log was compacted past it
/// starts again from the newest snapshot (not served meanwhile) and follows on.
async fn follow(store: std::sync::Weak<Store>, n: u32, config: ReplicationConfig, lease: Arc<Lease>) {
    loop {
        let Some(strong) = store.upgrade() else { return };
        match strong.clone().follow_shard(n).await {
            Ok(crate::Followed::Ended) => return,
            Ok(crate::Followed::Gap { applied, next }) => {
                tracing::warn!(
                    shard = n,
                    applied,
                    next,
                    "the log was compacted past this copy while it followed; restoring a snapshot"
                );
                if let Err(e) = resync(&strong, n, &config, &lease).await {
                    tracing::error!(shard = n, cause = %e, "the copy could not start again from a snapshot; it is not served");
                    return;
                }
            }
            // The log could not be read (its stream was electing a leader, say): follow again.
            Err(e @ StoreError::Unavailable { .. }) => {
                tracing::warn!(shard = n, cause = %e, "the shard's log is not readable yet; following again");
                drop(strong);
                // A product retry, while the stream's replicas elect a leader.
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => {
                tracing::error!(shard = n, cause = %e, "following the shard's log stopped");
                return;
            }
        }
    }
}

/// Take shard `n` out of replication, restore it from the newest snapshot, replicate it again.
async fn resync(store: &Arc<Store>, n: u32, config: &ReplicationConfig, lease: &Arc<Lease>) -> Result<(), StoreError> {
    let unavailable =
        |e: &dyn std::fmt::Display| StoreError::Unavailable { shard: n, node: String::new(), reason: e.to_string() };
    let unreplicating = store.clone();
    let _ = tokio::task::spawn_blocking(move || unreplicating.unreplicate_shard(n)).await;
    let log = Log::open(config.client.clone(), &config.log(n)).await.map_err(|e| unavailable(&e))?;
    let bounds = log.bounds().await.map_err(|e| unavailable(&e))?;
    snapshots::restore_if_behind(store, n, config, bounds).await?;
    let replicating = store.clone();
    tokio::task::spawn_blocking(move || replicating.replicate_shard(n, log))
        .await
        .map_err(|e| StoreError::Config(format!("replicating shard {n}: {e}")))??;
    store.gate_shard(n, lease.clone())
}

/// Lead shard `n` while the lease says this member may, step down as soon as it says not. Also
/// every `recheck`: a leader whose append had an unknown outcome stopped appending, and takes
/// the log again (after applying it to its end) while it still holds the lease.
async fn drive(store: std::sync::Weak<Store>, n: u32, lease: Arc<Lease>, recheck: Duration) {
    let mut role = lease.watch();
    loop {
        let current = role.borrow_and_update().clone();
        let Some(store) = store.upgrade() else { return };
        match current {
            Role::Leader { term } if store.leads_shard(n) != Some(term) => {
                if let Err(e) = store.lead_shard(n, term).await {
                    // Still holding the lease: try again shortly (the log may be electing).
                    tracing::warn!(shard = n, term, cause = %e, "could not take the shard's log; retrying");
                    drop(store);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            }
            Role::Leader { .. } => {}
            Role::Follower { .. } => {
                // Off the runtime's threads: stepping down waits for the shard's lock, which a
                // write holds while it waits for JetStream (through this runtime).
                let stepping = store.clone();
                let _ = tokio::task::spawn_blocking(move || stepping.step_down_shard(n)).await;
            }
        }
        drop(store);
        tokio::select! {
            changed = role.changed() => if changed.is_err() { return },
            () = tokio::time::sleep(recheck) => {}
        }
    }
}
