//! A store node: serves the shards the master's map gives it, on `shoal.ctl.store.node.<id>`.
//!
//! # Moves
//!
//! The master ([`crate::coordinator`]) drives a move from map `M` (N shards) to map `M'` (N ± 1):
//!
//! 1. the new shard is created empty on its node (scale-out), or the destinations drop strays
//!    an earlier, failed move may have left (scale-in);
//! 2. each source shard *exports* ([`Admin::Export`]): it starts remembering writes of moving
//!    keys, copies every moving key from a RocksDB snapshot to its new shard, then copies the keys
//!    written meanwhile, again and again until few are left. Reads and writes go on as usual;
//! 3. each source shard *freezes* ([`Admin::Freeze`]): under its write lock it marks the moving
//!    keys frozen (reads and writes of them get [`StoreError::Moving`], clients retry) and copies
//!    their last writes;
//! 4. the master stores `M'` (epoch + 1), sends it to every node, then publishes it. From then on
//!    the destination serves the moved keys and the source answers `NotOwner` for them;
//! 5. the sources stop exporting and delete the keys they gave away (scale-in: drop the shard).
//!
//! A failure before step 4 gives the move up: exports end, a new shard is dropped, nothing is lost
//! because the sources kept serving every key they did not freeze, and frozen keys thaw.
//! Copies keep each entry's version and raise the destination's counter past it, so versions stay
//! monotonic per key across the move.
//!
//! # Fencing
//!
//! The master's commands ([`wire::Admin`]) come with its leader term, and so does every map. The
//! node keeps the highest term it has seen in `<dir>/term`, next to its shards (see
//! `fence.rs`), and refuses an admin request or a map of a lower term: a deposed master can
//! neither create, drop, export, freeze or clean a shard nor switch the map. Maps are ordered by
//! `(term, epoch)`, so a new leader's map replaces a deposed leader's even at a lower epoch.
//! Reads and writes from clients carry no term and are not fenced.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use shoal_bus::{BusError, SharedBus, subject};
use tokio::sync::mpsc;

use crate::engine::RawEntry;
use crate::fence::Fence;
use crate::wire::{self, Admin, Channel, KvChange, Progress, Registration, Reply, Request, WireError};
use crate::{ShardMap, Store, StoreError};
use shoal_bus::event::CloudEvent;

/// How long a node waits for another node to take a chunk of moved keys.
const INGEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Size of a chunk of moved keys.
const CHUNK_BYTES: usize = 256 * 1024;
/// Catch-up rounds stop when fewer writes than this are left to copy.
const CATCH_UP_ENOUGH: usize = 64;
/// How often a node re-registers (its heartbeat).
pub const REGISTER_INTERVAL: Duration = Duration::from_secs(3);

/// A store node id that cannot be used (it becomes a subject token and a file name).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid store node id `{0}`: use 1 to 63 of a-z, 0-9 and -")]
pub struct InvalidNodeId(pub String);

/// Check a store node id: `[a-z0-9-]{1,63}`.
pub fn validate_node_id(id: &str) -> Result<(), InvalidNodeId> {
    let ok = !id.is_empty()
        && id.len() <= 63
        && id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok { Ok(()) } else { Err(InvalidNodeId(id.to_owned())) }
}

/// A store node.
pub struct StoreNode {
    store: Arc<Store>,
    bus: SharedBus,
    boot: String,
    /// `source` of the node's events.
    source: String,
    /// Held while a map is taken: two takers would both create a missing shard, and the second
    /// creation would wipe the first's (and what was written to it meanwhile).
    map_lock: tokio::sync::Mutex<()>,
    /// The highest leader term seen; admin requests and maps of lower terms are refused.
    fence: Fence,
    /// Where replicated shards' logs and leases live (`None`: this node takes no map that
    /// replicates a shard it holds).
    replication: Option<crate::replication::ReplicationConfig>,
    /// The replicated shards this node holds a copy of, following their logs.
    replicas: tokio::sync::Mutex<std::collections::BTreeMap<u32, crate::replication::ShardReplica>>,
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| StoreError::Protocol(format!("store call failed: {e}")))?
}

impl StoreNode {
    /// A node serving `store` (opened with [`Store::open_node`]) on `bus`; reads the highest
    /// leader term it has seen from the store's directory.
    pub fn new(store: Arc<Store>, bus: SharedBus) -> Result<Arc<StoreNode>, StoreError> {
        Self::build(store, bus, None)
    }

    /// [`StoreNode::new`], replicating the shards a map gives it with others through `replication`.
    pub fn replicated(
        store: Arc<Store>,
        bus: SharedBus,
        replication: crate::replication::ReplicationConfig,
    ) -> Result<Arc<StoreNode>, StoreError> {
        Self::build(store, bus, Some(replication))
    }

    fn build(
        store: Arc<Store>,
        bus: SharedBus,
        replication: Option<crate::replication::ReplicationConfig>,
    ) -> Result<Arc<StoreNode>, StoreError> {
        let source = format!("/shoal/store/{}", store.node());
        let fence = Fence::open(store.dir())?;
        Ok(Arc::new(StoreNode {
            store,
            bus,
            boot: uuid::Uuid::new_v4().to_string(),
            source,
            map_lock: tokio::sync::Mutex::new(()),
            fence,
            replication,
            replicas: tokio::sync::Mutex::new(std::collections::BTreeMap::new()),
        }))
    }

    /// The highest leader term this node has seen (0: none yet).
    pub fn highest_term(&self) -> u64 {
        self.fence.highest()
    }

    /// The node's id.
    pub fn id(&self) -> &str {
        self.store.node()
    }

    /// The engine.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// Serve requests and follow the map until the bus closes. Registers with the master at once
    /// and every [`REGISTER_INTERVAL`].
    pub async fn run(self: Arc<Self>) -> Result<(), BusError> {
        let mut data = self.bus.subscribe(&Channel::Data.subject(self.id())).await?;
        let mut ingest = self.bus.subscribe(&Channel::Ingest.subject(self.id())).await?;
        let mut admin = self.bus.subscribe(&Channel::Admin.subject(self.id())).await?;
        let mut maps = self.bus.subscribe(subject::STORE_SHARDMAP).await?;
        self.bus.flush().await?;
        // Registering ends with serving: dropping this future (an aborted task) aborts the loop.
        let mut registering = tokio::task::JoinSet::new();
        registering.spawn({
            let node = self.clone();
            async move { node.register_loop().await }
        });
        loop {
            let (channel, message) = tokio::select! {
                message = data.next() => (Channel::Data, message),
                message = ingest.next() => (Channel::Ingest, message),
                message = admin.next() => (Channel::Admin, message),
                event = maps.next() => {
                    let Some(event) = event else { return Ok(()) };
                    match wire::shard_map_of_event(&event.payload) {
                        // The event is a hint, whoever sent it: the map comes from the master.
                        Some(map) if map.newer_than(&self.store.shard_map()) => {
                            tokio::spawn(self.clone().fetch_map());
                        }
                        Some(_) => {}
                        None => tracing::warn!("unreadable shard map event"),
                    }
                    continue;
                }
            };
            let Some(message) = message else { return Ok(()) };
            let node = self.clone();
            tokio::spawn(async move {
                let reply = match wire::decode::<Request>(&message.payload) {
                    Ok(request) if request.channel() != channel => {
                        tracing::warn!(subject = %message.subject, channel = ?request.channel(), "store request on the wrong subject refused");
                        Reply::Error(WireError::Internal(format!(
                            "a {:?} request is not accepted on {} (it belongs on {})",
                            request.channel(),
                            message.subject,
                            request.channel().subject(node.id())
                        )))
                    }
                    Ok(request) => node.handle(request).await,
                    Err(e) => Reply::Error(WireError::Internal(e.to_string())),
                };
                if let Err(e) = message.respond(node.bus.as_ref(), Bytes::from(wire::encode(&reply))).await {
                    tracing::debug!(cause = %e, "could not answer a store request");
                }
            });
        }
    }

    async fn register_loop(self: Arc<Self>) {
        let mut registered = false;
        loop {
            match self.register_once().await {
                Ok(map) if !registered => {
                    tracing::info!(node = self.id(), epoch = map.epoch, "store node registered");
                    registered = true;
                }
                Ok(_) => {}
                Err(e) => tracing::debug!(cause = %e, "store node not registered"),
            }
            tokio::time::sleep(if registered { REGISTER_INTERVAL } else { Duration::from_millis(200) }).await;
        }
    }

    /// Take `map` if it is newer (by term, then epoch), creating first any shard it gives this node
    /// that is not on disk (a map is served only once its shards exist). A map of a term lower
    /// than the highest seen is refused; one of a higher term raises it.
    async fn apply_map(&self, map: ShardMap) -> Result<(), StoreError> {
        let _taking = self.map_lock.lock().await;
        self.admit(map.term)?;
        if !map.newer_than(&self.store.shard_map()) {
            return Ok(());
        }
        let held = self.store.held();
        let missing: Vec<u32> =
            (0..map.shard_count()).filter(|&s| map.holds(s, self.id()) && !held.contains(&s)).collect();
        for shard in missing {
            if !held.is_empty() {
                tracing::warn!(
                    node = self.id(),
                    shard,
                    "the map assigns a shard this node does not hold: starting it empty"
                );
            }
            let store = self.store.clone();
            if let Err(e) = blocking(move || store.create_shard(shard)).await {
                tracing::error!(shard, cause = %e, "cannot create a shard the map assigns here; not taking the map");
                return Err(e);
            }
        }
        self.replicate_held(&map).await?;
        let (term, epoch) = (map.term, map.epoch);
        // Off the runtime's threads: ending an export takes a shard's lock, which a replicated
        // shard's writer holds while it waits for JetStream (through this runtime).
        let store = self.store.clone();
        let taken = map.clone();
        if blocking(move || Ok(store.set_map(taken))).await? {
            tracing::info!(node = self.id(), term, epoch, "serving a new shard map");
        }
        // Copies the map no longer gives this node stop following their shards' logs.
        self.replicas.lock().await.retain(|&s, _| map.holds(s, self.id()) && map.replicated(s));
        Ok(())
    }

    /// Stop taking part in the replicated shards as a crashed process would: their leases are
    /// left to expire, nothing more is followed or appended here (a test's `kill -9` of one node
    /// among several in one process; the serving loop is the caller's to abort).
    pub async fn halt_replicas(&self) {
        for (_, replica) in std::mem::take(&mut *self.replicas.lock().await) {
            replica.abandon();
        }
    }

    /// Follow (and lead, when the lease says so) every shard `map` replicates with a copy here,
    /// before the map is served: a write must never reach one copy alone.
    async fn replicate_held(&self, map: &ShardMap) -> Result<(), StoreError> {
        let mut replicas = self.replicas.lock().await;
        for s in (0..map.shard_count()).filter(|&s| map.replicated(s) && map.holds(s, self.id())) {
            if replicas.contains_key(&s) {
                continue;
            }
            let Some(config) = &self.replication else {
                tracing::error!(
                    node = self.id(),
                    shard = s,
                    "the map replicates a shard held here, but this node runs without JetStream replication; not taking the map"
                );
                return Err(StoreError::Config(format!(
                    "the map replicates shard {s}, but store node {} was started without replication (NATS with JetStream)",
                    self.id()
                )));
            };
            let replica = crate::replication::replicate(&self.store, s, config).await?;
            replicas.insert(s, replica);
        }
        Ok(())
    }

    /// Whether to obey a command or map of leader term `term` (see `fence.rs`).
    fn admit(&self, term: u64) -> Result<(), StoreError> {
        self.fence.admit(term).inspect_err(|e| {
            tracing::warn!(node = self.id(), term, cause = %e, "a command of the master refused");
        })
    }

    /// A map the master pushed or published: taken only once this process has registered (its
    /// first map always comes from a registration), so a restarted node never serves before the
    /// coordinator has heard of its new boot. Returns whether the node has registered.
    async fn take_pushed_map(&self, map: ShardMap) -> Result<bool, StoreError> {
        if self.store.shard_map().epoch == 0 {
            return Ok(false);
        }
        self.apply_map(map).await?;
        Ok(true)
    }

    /// Ask the master for its map after a `shoal.evt.store.shardmap` event, and take it once this
    /// process has registered (see [`StoreNode::take_pushed_map`]). Only the master may answer
    /// `shoal.ctl.store.map`, so a forged event cannot hand this node a map.
    async fn fetch_map(self: Arc<Self>) {
        let map = match self.bus.request(subject::STORE_MAP, Bytes::new(), Duration::from_secs(2)).await {
            Ok(reply) => serde_json::from_slice::<ShardMap>(&reply.payload),
            Err(e) => {
                tracing::warn!(cause = %e, "cannot fetch the shard map after a change");
                return;
            }
        };
        match map {
            Ok(map) => {
                if let Err(e) = self.take_pushed_map(map).await {
                    tracing::warn!(cause = %e, "the master's shard map not taken");
                }
            }
            Err(e) => tracing::warn!(cause = %e, "unreadable shard map from the master"),
        }
    }

    /// Register once; the answer is the current map. Nodes get maps only this way (and from the
    /// master's own pushes), so the master always knows of a restarted node before it serves.
    async fn register_once(&self) -> Result<ShardMap, String> {
        let registration = Registration {
            node: self.id().to_owned(),
            boot: self.boot.clone(),
            held: self.store.held(),
            leads: self.store.held().into_iter().filter(|&s| self.store.leads_shard(s).is_some()).collect(),
        };
        let payload = Bytes::from(serde_json::to_vec(&registration).unwrap_or_default());
        let reply = self
            .bus
            .request(&subject::store_register(self.id()), payload, Duration::from_secs(2))
            .await
            .map_err(|e| format!("no master to register with: {e}"))?;
        let map = serde_json::from_slice::<ShardMap>(&reply.payload)
            .map_err(|_| format!("registration refused: {}", String::from_utf8_lossy(&reply.payload)))?;
        self.apply_map(map.clone()).await.map_err(|e| format!("the master's map not taken: {e}"))?;
        Ok(map)
    }

    async fn refresh_map(&self) {
        if let Err(e) = self.register_once().await {
            tracing::warn!(cause = %e, "cannot fetch the shard map");
        }
    }

    /// Answer one request (also called in-process by a [`crate::client::StoreClient`] on the
    /// same node).
    pub async fn handle(self: &Arc<Self>, request: Request) -> Reply {
        let result = self.dispatch(request).await;
        result.unwrap_or_else(|e| Reply::Error(WireError::from_error(e, || (*self.store.shard_map()).clone())))
    }

    /// A request made under a newer map than this node's: take the master's map first, but not
    /// for long (a map being taken may be opening shards' logs): after that the request is
    /// answered by the map served, and the client asks elsewhere.
    async fn catch_up(self: &Arc<Self>, epoch: u64) {
        if epoch <= self.store.shard_map().epoch {
            return;
        }
        // In a task of its own: taking a map is not cut off halfway when the wait ends.
        let node = self.clone();
        let taking = tokio::spawn(async move { node.refresh_map().await });
        if tokio::time::timeout(Duration::from_millis(500), taking).await.is_err() {
            tracing::debug!(node = self.id(), epoch, "still taking a newer map; answering by the one served");
        }
    }

    async fn dispatch(self: &Arc<Self>, request: Request) -> Result<Reply, StoreError> {
        let store = self.store.clone();
        match request {
            Request::Get { epoch, namespace, key, stale: false } => {
                self.catch_up(epoch).await;
                Ok(Reply::Entry(blocking(move || store.get(&namespace, &key)).await?))
            }
            Request::Get { epoch, namespace, key, stale: true } => {
                self.catch_up(epoch).await;
                let shard = store.shard_of(&namespace, &key);
                // Measured before the read: the copy is at most this far behind what it returns.
                let staleness = store.staleness(shard, Duration::from_millis(250)).await;
                let read = store.clone();
                let entry = blocking(move || read.get_at(&namespace, &key, crate::Consistency::Stale)).await?;
                Ok(Reply::StaleEntry(entry, staleness))
            }
            Request::Batch { epoch, namespace, ops } => {
                self.catch_up(epoch).await;
                let written: Vec<(String, bool)> =
                    ops.iter().map(|op| (op.key().to_owned(), matches!(op, crate::Op::Put { .. }))).collect();
                let versions = store.batch_async(&namespace, ops).await?;
                self.announce(&namespace, written, &versions).await;
                Ok(Reply::Versions(versions))
            }
            Request::Check { epoch, namespace, ops } => {
                self.catch_up(epoch).await;
                blocking(move || store.check(&namespace, &ops)).await?;
                Ok(Reply::Ok)
            }
            Request::List { epoch, namespace, prefix, after, limit, shards } => {
                self.catch_up(epoch).await;
                let entries =
                    blocking(move || store.list_raw_of(&namespace, &prefix, after.as_deref(), limit as usize, &shards))
                        .await?;
                Ok(Reply::Entries(entries))
            }
            Request::Admin { term, command } => {
                self.admit(term)?;
                self.admin(command).await
            }
            Request::Ingest { shard, entries } => {
                Ok(Reply::Count(blocking(move || store.ingest(shard, entries)).await? as u64))
            }
        }
    }

    /// Carry out a command of the master whose term was admitted.
    async fn admin(self: &Arc<Self>, command: Admin) -> Result<Reply, StoreError> {
        let store = self.store.clone();
        match command {
            Admin::Map { map } => {
                if !self.take_pushed_map(map).await? {
                    return Err(StoreError::Config("this node has not registered since it started".into()));
                }
                Ok(Reply::Ok)
            }
            Admin::CreateShard { shard } => {
                blocking(move || store.create_shard(shard)).await?;
                Ok(Reply::Ok)
            }
            Admin::DropShard { shard } => {
                blocking(move || store.drop_shard(shard)).await?;
                Ok(Reply::Ok)
            }
            Admin::Export { move_id, shard, target } => {
                // The coordinator moves from the map before `target`: serve by it first (a node
                // that has just registered may still be creating its shards).
                if target.epoch.saturating_sub(1) > self.store.shard_map().epoch {
                    self.refresh_map().await;
                }
                let result = self.export(move_id, shard, Arc::new(target)).await;
                if result.is_err() {
                    blocking(move || Ok(store.end_export(shard))).await?;
                }
                result.map(Reply::Count)
            }
            Admin::Freeze { shard } => {
                // A member that does not lead says so first (the master asks the next one).
                if self.store.shard_map().replicated(shard) && self.store.leads_shard(shard).is_none() {
                    return Err(StoreError::NotLeader { shard });
                }
                let target = self
                    .store
                    .export_target(shard)
                    .ok_or_else(|| StoreError::Config(format!("shard {shard} is not exporting")))?;
                let dirty = blocking(move || store.take_dirty(shard, true)).await?;
                let mut n = 0u64;
                for (to, entries) in dirty {
                    n += entries.len() as u64;
                    self.send(&target, to, entries).await?;
                }
                Ok(Reply::Count(n))
            }
            Admin::EndExport { shard, committed: false } => {
                let ending = store.clone();
                blocking(move || Ok(ending.end_export(shard))).await?;
                // A replicated shard's freeze is in its log: its leader clears it there (a
                // member that does not lead answers `NotLeader`, and the master asks the next).
                blocking(move || store.thaw(shard)).await?;
                Ok(Reply::Ok)
            }
            Admin::EndExport { shard, committed: true } => {
                if let Some(target) = self.store.exporting_towards(shard) {
                    if self.store.shard_map().epoch < target {
                        self.refresh_map().await;
                    }
                    // Taking the new map ends the export; an export still running means the map
                    // did not arrive, and the keys stay frozen until it does.
                    if self.store.exporting_towards(shard).is_some() {
                        return Err(StoreError::Config(format!(
                            "shard {shard} keeps its moving keys frozen until this node has the map of epoch {target}"
                        )));
                    }
                }
                blocking(move || store.thaw(shard)).await?;
                Ok(Reply::Ok)
            }
            Admin::Count { shard } => Ok(Reply::Count(self.store.estimate_keys(shard))),
            Admin::Cleanup { shard } => Ok(Reply::Count(blocking(move || store.cleanup(shard)).await? as u64)),
            Admin::CreateReplica { shard } => {
                if self.store.shard_map().holds(shard, self.id()) {
                    return Err(StoreError::Config(format!(
                        "shard {shard} is in the map this node serves; it is not made again"
                    )));
                }
                let config = self.replication_config(shard)?;
                let mut replicas = self.replicas.lock().await;
                replicas.remove(&shard);
                blocking(move || store.create_shard(shard)).await?;
                // The stream another member just made may take a moment to be seen everywhere.
                let deadline = std::time::Instant::now() + Duration::from_secs(5);
                let replica = loop {
                    match crate::replication::replicate(&self.store, shard, config).await {
                        Err(StoreError::Unavailable { reason, .. }) if std::time::Instant::now() < deadline => {
                            tracing::debug!(shard, cause = %reason, "the new shard's log is not there yet; retrying");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                        result => break result?,
                    }
                };
                replicas.insert(shard, replica);
                Ok(Reply::Ok)
            }
            Admin::DropReplica { shard } => {
                if self.store.shard_map().holds(shard, self.id()) {
                    return Err(StoreError::Config(format!(
                        "shard {shard} is in the map this node serves; it is not dropped"
                    )));
                }
                let config = self.replication_config(shard)?;
                // Dropping the replica gives its lease up and stops following first.
                self.replicas.lock().await.remove(&shard);
                blocking(move || store.drop_shard(shard)).await?;
                crate::replication::destroy_log(shard, config).await?;
                Ok(Reply::Ok)
            }
        }
    }

    fn replication_config(&self, shard: u32) -> Result<&crate::replication::ReplicationConfig, StoreError> {
        self.replication.as_ref().ok_or_else(|| {
            StoreError::Config(format!(
                "shard {shard} is replicated, but store node {} was started without replication (NATS with JetStream)",
                self.id()
            ))
        })
    }

    /// Send moved entries to shard `to` of `target` (a node of the map after the move; for a
    /// replicated shard, its leader: the members are asked in turn until one takes them).
    async fn send(&self, target: &ShardMap, to: u32, entries: Vec<RawEntry>) -> Result<(), StoreError> {
        let members: Vec<&str> = target.members(to).collect();
        if members.is_empty() {
            return Err(StoreError::Config(format!("no shard {to} in the target map")));
        }
        let deadline = std::time::Instant::now() + INGEST_TIMEOUT;
        let mut attempt = 0usize;
        loop {
            let node = members[attempt % members.len()];
            attempt += 1;
            let result = self.send_to(node, to, entries.clone()).await;
            match result {
                Err(e @ (StoreError::NotLeader { .. } | StoreError::Unavailable { .. }))
                    if target.replicated(to) && std::time::Instant::now() < deadline =>
                {
                    tracing::debug!(shard = to, node, cause = %e, "moved keys not taken; asking the next member");
                    if attempt % members.len() == 0 {
                        // A product retry: the new shard's members are electing a leader.
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
                result => return result,
            }
        }
    }

    async fn send_to(&self, node: &str, to: u32, entries: Vec<RawEntry>) -> Result<(), StoreError> {
        if node == self.id() {
            let store = self.store.clone();
            blocking(move || store.ingest(to, entries)).await?;
            return Ok(());
        }
        let payload = Bytes::from(wire::encode(&Request::Ingest { shard: to, entries }));
        let reply = self.bus.request(&Channel::Ingest.subject(node), payload, INGEST_TIMEOUT).await.map_err(|e| {
            StoreError::Unavailable { shard: to, node: node.to_owned(), reason: format!("taking moved keys: {e}") }
        })?;
        match wire::decode::<Reply>(&reply.payload)? {
            Reply::Count(_) => Ok(()),
            Reply::Error(e) => Err(e.into_error()),
            other => Err(StoreError::Protocol(format!("unexpected answer to an ingest: {other:?}"))),
        }
    }

    async fn export(&self, move_id: u64, shard: u32, target: Arc<ShardMap>) -> Result<u64, StoreError> {
        let (store, exported) = (self.store.clone(), target.clone());
        blocking(move || store.begin_export(shard, exported)).await?;
        let (tx, mut rx) = mpsc::channel::<(u32, Vec<RawEntry>)>(4);
        let store = self.store.clone();
        let scan = tokio::task::spawn_blocking(move || {
            store.export_scan(shard, CHUNK_BYTES, |to, entries| {
                tx.blocking_send((to, entries)).map_err(|_| StoreError::Config("the export was stopped".into()))
            })
        });
        // Reports at least every second while the export runs: the master gives a move up when
        // an exporter goes silent.
        let counted = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let heartbeat = {
            let (bus, node, counted) = (self.bus.clone(), self.id().to_owned(), counted.clone());
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    let copied = counted.load(std::sync::atomic::Ordering::Relaxed);
                    report(&bus, &node, Progress { move_id, shard, copied }).await;
                }
            })
        };
        let _heartbeat = AbortOnDrop(heartbeat);
        let mut copied = 0u64;
        while let Some((to, entries)) = rx.recv().await {
            copied += entries.len() as u64;
            self.send(&target, to, entries).await?;
            counted.store(copied, std::sync::atomic::Ordering::Relaxed);
        }
        scan.await.map_err(|e| StoreError::Protocol(format!("export scan failed: {e}")))??;
        // Catch up with the writes made during the copy until few are left.
        for _ in 0..50 {
            let store = self.store.clone();
            let dirty = blocking(move || store.take_dirty(shard, false)).await?;
            let n: usize = dirty.values().map(Vec::len).sum();
            for (to, entries) in dirty {
                self.send(&target, to, entries).await?;
            }
            copied += n as u64;
            counted.store(copied, std::sync::atomic::Ordering::Relaxed);
            if n < CATCH_UP_ENOUGH {
                break;
            }
        }
        self.report(move_id, shard, copied).await;
        Ok(copied)
    }

    /// Publish a `shoal.evt.kv.<ns>.<put|delete>` event per written key.
    async fn announce(&self, namespace: &str, written: Vec<(String, bool)>, versions: &[u64]) {
        for ((key, put), &version) in written.into_iter().zip(versions) {
            let op = if put { "put" } else { "delete" };
            let change = KvChange { namespace: namespace.to_owned(), key, version, op: op.to_owned(), expired: false };
            let event = CloudEvent::new(
                self.source.as_str(),
                format!("io.shoal.kv.{op}"),
                format!("kv/{namespace}"),
                serde_json::to_value(&change).unwrap_or_default(),
            );
            if let Err(e) =
                shoal_bus::event::publish_event(self.bus.as_ref(), &subject::kv_event(namespace, op), &event).await
            {
                tracing::debug!(cause = %e, "could not announce a write");
            }
        }
    }

    /// Publish a `shoal.evt.kv.<ns>.delete` event (with `expired: true`) per entry the expiry
    /// sweeper deleted.
    pub async fn announce_expired(&self, entries: Vec<(String, String, u64)>) {
        for (namespace, key, version) in entries {
            let subject = subject::kv_event(&namespace, "delete");
            let change = KvChange { namespace, key, version, op: "delete".into(), expired: true };
            let event = CloudEvent::new(
                self.source.as_str(),
                "io.shoal.kv.delete",
                format!("kv/{}", change.namespace),
                serde_json::to_value(&change).unwrap_or_default(),
            );
            if let Err(e) = shoal_bus::event::publish_event(self.bus.as_ref(), &subject, &event).await {
                tracing::debug!(cause = %e, "could not announce an expiry");
            }
        }
    }

    async fn report(&self, move_id: u64, shard: u32, copied: u64) {
        report(&self.bus, self.id(), Progress { move_id, shard, copied }).await;
    }
}

/// Tell the master how far an export got (`shoal.ctl.store.progress.<node>`).
async fn report(bus: &SharedBus, node: &str, progress: Progress) {
    let payload = Bytes::from(serde_json::to_vec(&progress).unwrap_or_default());
    if let Err(e) = bus.publish(&subject::store_progress(node), payload).await {
        tracing::debug!(cause = %e, "could not report a move's progress");
    }
}

/// A task that ends with its owner.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
