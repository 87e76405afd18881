//! The client side of the store: routes each key to its shard's node by the map it holds, follows
//! the map the master publishes, and retries what a move or a newer map makes retriable.
//!
//! - A node that answers `NotOwner` sends its map along: a newer one is taken at once; otherwise
//!   the client asks the master for the current map. Either way the call is retried.
//! - A key frozen by a move (`Moving`) is retried with a short backoff (1 ms doubling to 20 ms);
//!   freezes last for the final catch-up and the switch of the map, milliseconds.
//! - A node that does not answer makes the call fail with [`StoreError::Unavailable`] naming its
//!   shard; other shards are not affected. A write whose node timed out may or may not have been
//!   applied, and the error says so.
//! - A replicated shard (several members in the map) is asked at its leader: the member that
//!   answered last, else the members in turn while they answer `NotLeader` or are gone (an
//!   election takes up to a shard lease's TTL). A member has [`MEMBER_PATIENCE`] to answer; one
//!   that did not is passed over for a while ([`SILENT_FOR`]): a leader cut off from NATS keeps
//!   its subscriptions on the server until the server's pings give up (minutes), and every
//!   request sent to it would wait out its timeout. A write that reached a member that then did
//!   not answer is not sent again: its outcome is unknown, and the error says so.
//! - Calls to the node in the same process (`shoal dev`, a master with its own store) skip the
//!   bus.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use parking_lot::RwLock;
use shoal_bus::{BusError, SharedBus, subject};

use crate::engine::{decode_cursor, merge_page, validate_listing, validate_ops};
use crate::node::StoreNode;
use crate::wire::{self, Reply, Request, WireError};
use crate::{
    Consistency, Entry, Op, Page, PutOptions, ShardMap, Staleness, StoreError, validate_key, validate_namespace,
};

/// How long a node has to answer one request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a call keeps retrying through moves and map changes.
const RETRY_FOR: Duration = Duration::from_secs(10);
/// How long a member of a replicated shard has to answer one request before the client takes it
/// for gone and asks the next member (a read is sent there; a write fails, its outcome unknown).
/// A dead or cut-off leader's successor leads about a lease's TTL after its last renewal (1.5 s
/// by default): waiting longer on the silent one only delays finding the successor. A healthy
/// member answers in milliseconds (one JetStream append); one that JetStream keeps waiting
/// longer than this (its stream electing a new leader) is passed over for a moment, no harm done.
pub const MEMBER_PATIENCE: Duration = Duration::from_secs(1);
/// How long a member that did not answer within [`MEMBER_PATIENCE`] is passed over (while
/// another member of its shard is not), so that calls do not wait on it again at every turn of
/// the members while a new leader is elected.
pub const SILENT_FOR: Duration = Duration::from_secs(3);

enum Attempt {
    /// Try again (after this long) with the map as it is now.
    Retry(Duration),
    /// Give up with this error.
    Fail(StoreError),
}

/// A client of the store cluster.
pub struct StoreClient {
    bus: SharedBus,
    map: RwLock<Arc<ShardMap>>,
    local: Option<Arc<StoreNode>>,
    /// Replicated shards: the member asked last (index into [`ShardMap::members`]), by shard, for
    /// the map epoch it was learned under. A member that does not lead (`NotLeader`) or does not
    /// answer moves it to the next member.
    asked: parking_lot::Mutex<BTreeMap<u32, (u64, usize)>>,
    /// Members of replicated shards that did not answer in time, passed over until then.
    silent: parking_lot::Mutex<BTreeMap<String, Instant>>,
}

impl StoreClient {
    /// A client on `bus`; `local` is a node in this process, called directly. Follows the map the
    /// master publishes from now on (fetching it from the master when an event says it changed).
    pub fn new(bus: SharedBus, local: Option<Arc<StoreNode>>) -> Arc<StoreClient> {
        let client = Arc::new(StoreClient {
            bus,
            map: RwLock::new(Arc::new(ShardMap::default())),
            local,
            asked: parking_lot::Mutex::new(BTreeMap::new()),
            silent: parking_lot::Mutex::new(BTreeMap::new()),
        });
        let weak = Arc::downgrade(&client);
        let bus = client.bus.clone();
        tokio::spawn(async move {
            let Ok(mut maps) = bus.subscribe(subject::STORE_SHARDMAP).await else { return };
            while let Some(event) = maps.next().await {
                let Some(client) = weak.upgrade() else { return };
                // The event is a hint, whoever sent it: the map comes from the master, the only
                // one who may answer `shoal.ctl.store.map`.
                if wire::shard_map_of_event(&event.payload).is_some_and(|map| map.newer_than(&client.map()))
                    && let Err(e) = client.refresh().await
                {
                    tracing::warn!(cause = %e, "cannot fetch the shard map after a change");
                }
            }
        });
        client
    }

    /// The map this client routes by.
    pub fn map(&self) -> Arc<ShardMap> {
        self.map.read().clone()
    }

    fn take(&self, map: ShardMap) -> bool {
        let mut current = self.map.write();
        if map.newer_than(&current) {
            *current = Arc::new(map);
            true
        } else {
            false
        }
    }

    /// Ask the master for the current map.
    pub async fn refresh(&self) -> Result<Arc<ShardMap>, StoreError> {
        let reply = self.bus.request(subject::STORE_MAP, Bytes::new(), Duration::from_secs(2)).await.map_err(|e| {
            StoreError::Unavailable { shard: 0, node: "master".into(), reason: format!("fetching the shard map: {e}") }
        })?;
        let map: ShardMap = serde_json::from_slice(&reply.payload)
            .map_err(|e| StoreError::Protocol(format!("unreadable shard map: {e}")))?;
        self.take(map);
        Ok(self.map())
    }

    async fn current(&self) -> Result<Arc<ShardMap>, StoreError> {
        let map = self.map();
        if map.shard_count() > 0 {
            return Ok(map);
        }
        let map = self.refresh().await?;
        if map.shard_count() == 0 {
            return Err(StoreError::Unavailable {
                shard: 0,
                node: String::new(),
                reason: "no store node has registered with the master yet".into(),
            });
        }
        Ok(map)
    }

    /// The member of `shard` to ask under `map`: its node, or for a replicated shard the member
    /// that answered as leader last, or the next one to try that has not gone silent (any, if
    /// all have).
    fn member_to_ask<'m>(&self, map: &'m ShardMap, shard: u32) -> Option<&'m str> {
        if !map.replicated(shard) {
            return map.node_of(shard);
        }
        let members: Vec<&str> = map.members(shard).collect();
        let mut asked = self.asked.lock();
        let start = asked.get(&shard).filter(|(epoch, _)| *epoch == map.epoch).map_or(0, |(_, i)| *i);
        let now = Instant::now();
        let silent = self.silent.lock();
        let index = (start..start + members.len())
            .find(|i| silent.get(members[i % members.len()]).is_none_or(|until| *until <= now))
            .unwrap_or(start);
        if index != start {
            asked.insert(shard, (map.epoch, index));
        }
        members.get(index % members.len().max(1)).copied()
    }

    /// `node`, asked for `shard`, did not lead it or did not answer: ask the next member, unless
    /// another call already moved on from it (its answer may have come from the leader).
    fn next_member(&self, map: &ShardMap, shard: u32, node: &str) {
        let members: Vec<&str> = map.members(shard).collect();
        let mut asked = self.asked.lock();
        let current = asked.get(&shard).filter(|(epoch, _)| *epoch == map.epoch).map_or(0, |(_, i)| *i);
        if members.get(current % members.len().max(1)) == Some(&node) {
            asked.insert(shard, (map.epoch, current + 1));
        }
    }

    /// Send `request` to the node serving `shard` under `map` (for a replicated shard, its
    /// leader: members are tried in turn until one leads).
    async fn send(&self, map: &ShardMap, shard: u32, request: Request) -> Result<Reply, Attempt> {
        let node = self.member_to_ask(map, shard).ok_or(Attempt::Retry(Duration::ZERO))?;
        let replicated = map.replicated(shard);
        let reply = match &self.local {
            Some(local) if local.id() == node => local.handle(request).await,
            _ => {
                let payload = Bytes::from(wire::encode(&request));
                let is_write = matches!(request, Request::Batch { .. });
                let timeout = if replicated { MEMBER_PATIENCE } else { REQUEST_TIMEOUT };
                match self.bus.request(&subject::store_node(node), payload, timeout).await {
                    Ok(message) => {
                        if replicated {
                            self.silent.lock().remove(node);
                        }
                        wire::decode::<Reply>(&message.payload).map_err(Attempt::Fail)?
                    }
                    Err(e) => {
                        // A replicated shard's member that is gone or silent: another one leads
                        // (soon). A write it may have received is not sent again (its outcome is
                        // unknown); later calls ask the next member.
                        let undelivered = matches!(e, BusError::NoResponders { .. });
                        if replicated {
                            if matches!(e, BusError::Timeout { .. }) {
                                self.silent.lock().insert(node.to_owned(), Instant::now() + SILENT_FOR);
                            }
                            self.next_member(map, shard, node);
                            if undelivered || !is_write {
                                return Err(Attempt::Retry(Duration::from_millis(50)));
                            }
                        }
                        let reason = match e {
                            BusError::NoResponders { .. } => "the store node does not answer (is it running?)".into(),
                            BusError::Timeout { .. } if is_write => format!(
                                "no answer within {} ms; the write may or may not have been applied",
                                timeout.as_millis()
                            ),
                            BusError::Timeout { .. } => format!("no answer within {} ms", timeout.as_millis()),
                            other => other.to_string(),
                        };
                        return Err(Attempt::Fail(StoreError::Unavailable { shard, node: node.to_owned(), reason }));
                    }
                }
            }
        };
        match reply {
            // A member of a replicated shard that serves an older map than this client's (it is
            // still taking the map, opening the shard's log): another member may lead already.
            Reply::Error(WireError::NotOwner(_, theirs)) if map.replicated(shard) && map.newer_than(&theirs) => {
                self.next_member(map, shard, node);
                Err(Attempt::Retry(Duration::from_millis(20)))
            }
            Reply::Error(WireError::NotOwner(_, theirs)) => {
                if !self.take(theirs)
                    && let Err(e) = self.refresh().await
                {
                    tracing::debug!(cause = %e, "refreshing the shard map failed");
                }
                Err(Attempt::Retry(Duration::from_millis(1)))
            }
            Reply::Error(WireError::Moving) => Err(Attempt::Retry(Duration::from_millis(2))),
            // Not the leader (any more, or not yet: an election takes up to a lease's TTL).
            Reply::Error(WireError::NotLeader(n)) if map.replicated(n) => {
                self.next_member(map, n, node);
                Err(Attempt::Retry(Duration::from_millis(20)))
            }
            // A shard this map does not replicate: the node serves a newer map (a move made the
            // shard, and the key is its now).
            Reply::Error(WireError::NotLeader(_)) => {
                if let Err(e) = self.refresh().await {
                    tracing::debug!(cause = %e, "refreshing the shard map failed");
                }
                Err(Attempt::Retry(Duration::from_millis(20)))
            }
            Reply::Error(e) => Err(Attempt::Fail(e.into_error())),
            other => Ok(other),
        }
    }

    /// Run `attempt` until it succeeds, fails for good, or [`RETRY_FOR`] passes.
    async fn retrying<T, F, Fut>(&self, mut attempt: F) -> Result<T, StoreError>
    where
        F: FnMut(Arc<ShardMap>) -> Fut,
        Fut: Future<Output = Result<T, Attempt>>,
    {
        let deadline = Instant::now() + RETRY_FOR;
        let mut backoff = Duration::from_millis(1);
        loop {
            let map = self.current().await?;
            match attempt(map).await {
                Ok(value) => return Ok(value),
                Err(Attempt::Fail(e)) => return Err(e),
                Err(Attempt::Retry(wait)) => {
                    if Instant::now() >= deadline {
                        return Err(StoreError::Unavailable {
                            shard: 0,
                            node: String::new(),
                            reason: format!("still moving or changing maps after {} s", RETRY_FOR.as_secs()),
                        });
                    }
                    tokio::time::sleep(wait.max(backoff)).await;
                    backoff = (backoff * 2).min(Duration::from_millis(20));
                }
            }
        }
    }

    /// The live entry under `namespace/key`, if any.
    pub async fn get(&self, namespace: &str, key: &str) -> Result<Option<Entry>, StoreError> {
        Ok(self.get_at(namespace, key, Consistency::Linearizable).await?.0)
    }

    /// [`StoreClient::get`] at `consistency`; a stale read also says how far behind the copy that
    /// answered was (`None` for a linearizable one).
    pub async fn get_at(
        &self,
        namespace: &str,
        key: &str,
        consistency: Consistency,
    ) -> Result<(Option<Entry>, Option<Staleness>), StoreError> {
        validate_namespace(namespace)?;
        validate_key(key)?;
        let stale = consistency == Consistency::Stale;
        self.retrying(|map| async move {
            let shard = map.shard_of(namespace, key);
            let request = Request::Get { epoch: map.epoch, namespace: namespace.into(), key: key.into(), stale };
            match self.send(&map, shard, request).await? {
                Reply::Entry(entry) => Ok((entry, None)),
                Reply::StaleEntry(entry, staleness) => Ok((entry, Some(staleness))),
                other => Err(Attempt::Fail(unexpected(&other))),
            }
        })
        .await
    }

    /// Write `value` under `namespace/key`; returns the new version.
    pub async fn put(&self, namespace: &str, key: &str, value: &[u8], options: PutOptions) -> Result<u64, StoreError> {
        let op = Op::Put { key: key.to_owned(), value: value.to_vec(), options };
        Ok(self.batch(namespace, vec![op]).await?[0])
    }

    /// Delete `namespace/key` (if its version is `version`, when given); returns the delete's
    /// version.
    pub async fn delete(&self, namespace: &str, key: &str, version: Option<u64>) -> Result<u64, StoreError> {
        Ok(self.batch(namespace, vec![Op::Delete { key: key.to_owned(), version }]).await?[0])
    }

    /// Apply `ops` in `namespace`; returns the version each wrote. Atomic when the keys' shards are
    /// on one node; across nodes, checked everywhere first, then applied node by node (see the
    /// crate doc).
    pub async fn batch(&self, namespace: &str, ops: Vec<Op>) -> Result<Vec<u64>, StoreError> {
        validate_ops(namespace, &ops)?;
        let mut versions = vec![0u64; ops.len()];
        let mut pending: Vec<usize> = (0..ops.len()).collect();
        let mut written: Vec<String> = Vec::new();
        let mut checked = false;
        let ops = &ops;
        let deadline = Instant::now() + RETRY_FOR;
        while !pending.is_empty() {
            let map = self.current().await?;
            let mut by_node: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
            for &i in &pending {
                let shard = map.shard_of(namespace, ops[i].key());
                by_node.entry(self.member_to_ask(&map, shard).unwrap_or_default()).or_default().push(i);
            }
            if by_node.len() > 1 && !checked {
                // Check every node's part first: a conflict anywhere writes nothing.
                let checks = by_node.values().map(|indices| {
                    let part: Vec<Op> = indices.iter().map(|&i| ops[i].clone()).collect();
                    let shard = map.shard_of(namespace, ops[indices[0]].key());
                    let map = map.clone();
                    async move {
                        let request = Request::Check { epoch: map.epoch, namespace: namespace.into(), ops: part };
                        self.send(&map, shard, request).await
                    }
                });
                let mut retry = None;
                for result in futures::future::join_all(checks).await {
                    match result {
                        Ok(_) => {}
                        Err(Attempt::Fail(e)) => return Err(e),
                        Err(Attempt::Retry(wait)) => retry = Some(wait),
                    }
                }
                if let Some(wait) = retry {
                    tokio::time::sleep(wait.max(Duration::from_millis(1))).await;
                    continue;
                }
                checked = true;
            }
            // Apply node by node (one node: the whole batch at once, atomically).
            let (_, indices) = by_node.into_iter().next().unwrap_or_default();
            let part: Vec<Op> = indices.iter().map(|&i| ops[i].clone()).collect();
            let shard = map.shard_of(namespace, ops[indices[0]].key());
            let request = Request::Batch { epoch: map.epoch, namespace: namespace.into(), ops: part };
            let result = match self.send(&map, shard, request).await {
                Err(Attempt::Retry(wait)) => {
                    if Instant::now() >= deadline {
                        return Err(partial(
                            StoreError::Unavailable {
                                shard,
                                node: map.node_of(shard).unwrap_or_default().to_owned(),
                                reason: format!("still moving after {} s", RETRY_FOR.as_secs()),
                            },
                            written,
                        ));
                    }
                    tokio::time::sleep(wait.max(Duration::from_millis(1))).await;
                    continue;
                }
                Err(Attempt::Fail(e)) => Err(e),
                Ok(reply) => Ok(reply),
            };
            match result {
                Ok(Reply::Versions(v)) if v.len() == indices.len() => {
                    for (&i, version) in indices.iter().zip(v) {
                        versions[i] = version;
                        written.push(ops[i].key().to_owned());
                    }
                    pending.retain(|i| !indices.contains(i));
                }
                Ok(other) => return Err(partial(unexpected(&other), written)),
                Err(e) => return Err(partial(e, written)),
            }
        }
        Ok(versions)
    }

    /// One page of the live entries of `namespace` whose keys start with `prefix`, in key order,
    /// after `cursor`, gathered from every node.
    pub async fn list(
        &self,
        namespace: &str,
        prefix: &str,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Page, StoreError> {
        validate_listing(namespace, prefix, limit)?;
        let after = cursor.map(decode_cursor).transpose()?;
        let after = after.as_deref();
        self.retrying(|map| async move {
            // One request per node, naming the shards it is asked for (the shards it serves;
            // of replicated ones, those this client believes it leads).
            let mut by_node: BTreeMap<&str, Vec<u32>> = BTreeMap::new();
            for s in 0..map.shard_count() {
                by_node.entry(self.member_to_ask(&map, s).unwrap_or_default()).or_default().push(s);
            }
            let calls = by_node.into_values().map(|shards| {
                let map = map.clone();
                async move {
                    let shard = shards[0];
                    let request = Request::List {
                        epoch: map.epoch,
                        namespace: namespace.into(),
                        prefix: prefix.into(),
                        after: after.map(str::to_owned),
                        limit: u32::try_from(limit).unwrap_or(u32::MAX),
                        // Unreplicated, a node answers for every shard it serves under its own map
                        // (which may be a move ahead of this client's).
                        shards: if map.followers.iter().any(|f| !f.is_empty()) { shards } else { Vec::new() },
                    };
                    self.send(&map, shard, request).await
                }
            });
            let mut entries = Vec::new();
            let mut retry = None;
            for result in futures::future::join_all(calls).await {
                match result {
                    Ok(Reply::Entries(mut e)) => entries.append(&mut e),
                    Ok(other) => return Err(Attempt::Fail(unexpected(&other))),
                    Err(Attempt::Fail(e)) => return Err(Attempt::Fail(e)),
                    Err(Attempt::Retry(wait)) => retry = Some(wait),
                }
            }
            if let Some(wait) = retry {
                return Err(Attempt::Retry(wait));
            }
            Ok(merge_page(entries, limit))
        })
        .await
    }
}

fn unexpected(reply: &Reply) -> StoreError {
    StoreError::Protocol(format!("unexpected answer from a store node: {reply:?}"))
}

fn partial(cause: StoreError, written: Vec<String>) -> StoreError {
    if written.is_empty() { cause } else { StoreError::Partial { cause: Box::new(cause), written } }
}
