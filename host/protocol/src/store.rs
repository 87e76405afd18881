//! What the master (the store's coordinator), store nodes and clients say to each other about
//! the store itself, as JSON: the [`ShardMap`] (`shoal.ctl.store.map`, pushed to nodes,
//! published as `shoal.evt.store.shardmap`), a node's [`Registration`] (`shoal.ctl.store.register`,
//! its heartbeat), a move's [`Progress`] (`shoal.ctl.store.progress`), and the data of key-value
//! events ([`KvChange`], `shoal.evt.kv.<namespace>.<put|delete>`).
//!
//! Every map carries the leader term of the master that made or served it, and maps are ordered
//! by `(term, epoch)` ([`ShardMap::newer_than`]): a new leader's map wins over a deposed leader's
//! even when its epoch is lower, and a store node refuses a map of a lower term than the highest
//! it has seen (see [`crate::term`]).
//!
//! The binary data-plane protocol of reads, writes and move steps sent to one node
//! (`shoal.ctl.store.node.<id>`, postcard) is `shoal_store::wire`'s: it carries the engine's own
//! types and only the store's parts speak it.

use serde::{Deserialize, Serialize};

/// Which node serves each shard, at an epoch. The master owns and publishes it; a store node
/// serves by the newest it got from the master, and a client that hears of a newer one
/// refreshes its copy.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardMap {
    /// The leader term of the master that serves this map. Absent in map files written before
    /// masters had terms (read as 0; a master stamps its own term on the map it loads).
    #[serde(default)]
    pub term: u64,
    /// Grows by one on every change of the map.
    pub epoch: u64,
    /// `shards[i]` is the node serving shard `i`; the length is the shard count. On a replicated
    /// shard, the member clients ask first (the one that leads, as far as the map's maker knew).
    pub shards: Vec<String>,
    /// `followers[i]`: the other members of shard `i`, which hold a copy and follow its log (the
    /// store's replication); empty (or shorter than `shards`) where a shard has one copy.
    #[serde(default)]
    pub followers: Vec<Vec<String>>,
}

impl ShardMap {
    /// A map of `shards` shards all served by `node`, at epoch 1 (term 0: no master made it).
    pub fn local(shards: u32, node: &str) -> ShardMap {
        ShardMap { term: 0, epoch: 1, shards: vec![node.to_owned(); shards as usize], followers: Vec::new() }
    }

    /// Whether this map replaces `other`: a higher term, or the same term and a higher epoch.
    /// Epochs count changes under one leader; a new leader's map wins whatever its epoch.
    pub fn newer_than(&self, other: &ShardMap) -> bool {
        (self.term, self.epoch) > (other.term, other.epoch)
    }

    /// Number of shards.
    pub fn shard_count(&self) -> u32 {
        u32::try_from(self.shards.len()).unwrap_or(u32::MAX)
    }

    /// The shard of `namespace/key`.
    pub fn shard_of(&self, namespace: &str, key: &str) -> u32 {
        shoal_keyspace::shard_of(namespace, key, self.shard_count())
    }

    /// The node serving `shard`.
    pub fn node_of(&self, shard: u32) -> Option<&str> {
        self.shards.get(shard as usize).map(String::as_str)
    }

    /// Every node holding a copy of `shard`: the one serving it first, then its followers.
    pub fn members(&self, shard: u32) -> impl Iterator<Item = &str> {
        let followers = self.followers.get(shard as usize).into_iter().flatten();
        self.node_of(shard).into_iter().chain(followers.map(String::as_str))
    }

    /// Whether `node` holds a copy of `shard`.
    pub fn holds(&self, shard: u32, node: &str) -> bool {
        self.members(shard).any(|m| m == node)
    }

    /// Whether `shard` has copies on several nodes (its writes go through its log).
    pub fn replicated(&self, shard: u32) -> bool {
        self.followers.get(shard as usize).is_some_and(|f| !f.is_empty())
    }
}

/// A store node's registration (JSON on `shoal.ctl.store.register`), sent at start and every
/// few seconds after.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Registration {
    /// The node's id.
    pub node: String,
    /// Changes on every start of the node process: a coordinator running a move with this node
    /// gives the move up when it restarted (its export state is gone).
    pub boot: String,
    /// The shards the node holds on disk.
    pub held: Vec<u32>,
    /// The replicated shards it leads now (their leases say so), for `shoal store status`.
    #[serde(default)]
    pub leads: Vec<u32>,
}

/// Progress of a move's copy (JSON on `shoal.ctl.store.progress`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Progress {
    /// The move.
    pub move_id: u64,
    /// The source shard.
    pub shard: u32,
    /// Keys of that shard copied so far.
    pub copied: u64,
}

/// The data of a `shoal.evt.kv.<namespace>.<put|delete>` event: a key was written. Watches
/// (`/v1/kv/...?index=`, SSE) wake on these and read the key again; the bus delivers them at most
/// once, so a watcher that misses one still sees the change when its wait times out.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvChange {
    /// The namespace.
    pub namespace: String,
    /// The key.
    pub key: String,
    /// The version the write got.
    pub version: u64,
    /// `put` or `delete`.
    pub op: String,
    /// A `delete` by expiry (the entry's TTL ran out; `version` is the entry's).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub expired: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_map_places_keys_by_the_keyspace_and_reads_as_json() {
        let map =
            ShardMap { term: 2, epoch: 3, shards: vec!["a".into(), "b".into(), "a".into()], followers: Vec::new() };
        assert_eq!(map.shard_count(), 3);
        assert_eq!(map.shard_of("app", "user-2"), shoal_keyspace::shard_of("app", "user-2", 3));
        assert_eq!(map.node_of(1), Some("b"));
        assert_eq!(map.node_of(3), None);
        let json = serde_json::to_string(&map).expect("serialises");
        assert_eq!(json, r#"{"term":2,"epoch":3,"shards":["a","b","a"],"followers":[]}"#);
        assert_eq!(serde_json::from_str::<ShardMap>(&json).expect("parses"), map);
        assert_eq!(
            ShardMap::local(2, "n"),
            ShardMap { term: 0, epoch: 1, shards: vec!["n".into(), "n".into()], ..ShardMap::default() }
        );
        // A map file written before terms reads as term 0.
        let old: ShardMap = serde_json::from_str(r#"{"epoch":9,"shards":["a"]}"#).expect("parses");
        assert_eq!((old.term, old.epoch), (0, 9));
    }

    #[test]
    fn a_replicated_shard_has_members_and_an_older_map_reads_unreplicated() {
        let map = ShardMap {
            term: 1,
            epoch: 2,
            shards: vec!["a".into(), "b".into()],
            followers: vec![vec!["b".into(), "c".into()]],
        };
        assert_eq!(map.members(0).collect::<Vec<_>>(), ["a", "b", "c"]);
        assert_eq!(map.members(1).collect::<Vec<_>>(), ["b"], "no followers listed: one copy");
        assert_eq!(map.members(2).count(), 0);
        assert!(map.holds(0, "c") && !map.holds(1, "c"));
        assert!(map.replicated(0) && !map.replicated(1));
        let old: ShardMap = serde_json::from_str(r#"{"term":1,"epoch":9,"shards":["a"]}"#).expect("parses");
        assert!(old.followers.is_empty() && !old.replicated(0));
    }

    #[test]
    fn maps_are_ordered_by_term_then_epoch() {
        let map = |term, epoch| ShardMap { term, epoch, shards: vec!["a".into()], ..ShardMap::default() };
        assert!(map(3, 5).newer_than(&map(3, 4)));
        assert!(!map(3, 4).newer_than(&map(3, 4)));
        assert!(map(4, 1).newer_than(&map(3, 9)), "a new leader's map wins with a lower epoch");
        assert!(!map(2, 9).newer_than(&map(3, 1)), "a deposed leader's map loses with a higher epoch");
    }
}
