//! What store nodes, their clients and the master say to each other on the bus.
//!
//! Requests to a node and their replies are [postcard]-encoded [`Request`] and [`Reply`] values
//! (values are bytes; JSON would inflate them). A node hears requests on three subjects, one per
//! [`Channel`] — reads and writes on `shoal.ctl.store.node.<id>`, keys moved in by other nodes on
//! `shoal.ctl.store.ingest.<id>`, the master's commands on `shoal.ctl.store.admin.<id>` — and
//! answers a request only on its own channel, so the bus's permissions decide who may send what.
//! The master's commands ([`Request::Admin`], an [`Admin`]) carry its leader term, and so do the
//! maps it serves: a node refuses both when their term is lower than the highest it has seen
//! (see `shoal_protocol::term`); reads and writes carry no term.
//! Registrations, the map and progress reports (`shoal.ctl.store.register.<id>`,
//! `shoal.ctl.store.map`, `shoal.ctl.store.progress.<id>`) are JSON: they are small and tools may
//! want to read them.

use serde::{Deserialize, Serialize};

use crate::engine::RawEntry;
use crate::{Entry, Op, ShardMap, StoreError};

/// A request to a store node. Data requests carry the epoch of the caller's map: a node whose map
/// is older fetches the current one before answering.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Request {
    /// Read one key.
    Get {
        /// The caller's map epoch.
        epoch: u64,
        /// Namespace.
        namespace: String,
        /// Key.
        key: String,
        /// A stale read: any copy answers with what it has applied ([`crate::Consistency::Stale`]).
        stale: bool,
    },
    /// Apply operations whose shards are all on this node, atomically.
    Batch {
        /// The caller's map epoch.
        epoch: u64,
        /// Namespace.
        namespace: String,
        /// Operations.
        ops: Vec<Op>,
    },
    /// Check the conditions of operations without writing.
    Check {
        /// The caller's map epoch.
        epoch: u64,
        /// Namespace.
        namespace: String,
        /// Operations.
        ops: Vec<Op>,
    },
    /// Entries of the shards this node serves (at most `limit + 1` per shard).
    List {
        /// The caller's map epoch.
        epoch: u64,
        /// Namespace.
        namespace: String,
        /// Key prefix.
        prefix: String,
        /// Only keys after this one.
        after: Option<String>,
        /// Page size.
        limit: u32,
        /// The shards to list (each must be served here: for a replicated one, led here); empty:
        /// every shard this node serves.
        shards: Vec<u32>,
    },
    /// A command of the master, at its leader term: refused by a node that has seen a higher
    /// term (see `shoal_protocol::term`), before anything is done.
    Admin {
        /// The sending master's leader term.
        term: u64,
        /// What to do.
        command: Admin,
    },
    /// Write moved entries into `shard` (from another node's export).
    Ingest {
        /// The destination shard.
        shard: u32,
        /// The entries (a `None` value deletes).
        entries: Vec<RawEntry>,
    },
}

/// What the master tells a store node to do (in a [`Request::Admin`], with its term).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Admin {
    /// Serve by this map from now on (if it is newer than the node's, by `(term, epoch)`).
    Map {
        /// The new map.
        map: ShardMap,
    },
    /// Create an empty shard that keys will move into.
    CreateShard {
        /// The shard.
        shard: u32,
    },
    /// Delete a shard's files (after a scale-in, or to undo a failed scale-out).
    DropShard {
        /// The shard.
        shard: u32,
    },
    /// Copy the keys of `shard` that move under `target` to their new shards, then catch up with
    /// the writes made meanwhile; answered when little is left to copy.
    Export {
        /// Names the move in progress reports.
        move_id: u64,
        /// The source shard.
        shard: u32,
        /// The map after the move.
        target: ShardMap,
    },
    /// Freeze the moving keys of `shard` and copy their last writes (the map switches next).
    Freeze {
        /// The source shard.
        shard: u32,
    },
    /// Stop exporting `shard`: the move was given up (its frozen keys thaw), or it committed (the
    /// export ends once this node serves by the new map; until then its moving keys stay frozen,
    /// since serving them by the old map would read stale).
    EndExport {
        /// The source shard.
        shard: u32,
        /// Whether the map switched.
        committed: bool,
    },
    /// Delete from `shard` the keys it does not own under the node's map.
    Cleanup {
        /// The shard.
        shard: u32,
    },
    /// RocksDB's estimate of the keys in `shard`.
    Count {
        /// The shard.
        shard: u32,
    },
    /// Hold a new, empty copy of replicated `shard` (a scale-out's new shard, sent to each of
    /// its members): follow its log, lead it when its lease says so. Keys move in through its
    /// leader.
    CreateReplica {
        /// The shard.
        shard: u32,
    },
    /// Stop holding a copy of replicated `shard`, delete its files and its log (a scale-in's
    /// last shard after the switch, a failed scale-out's new one, or what a failed move left
    /// before it is tried again).
    DropReplica {
        /// The shard.
        shard: u32,
    },
}

/// Who may send a [`Request`], by the subject it arrives on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Channel {
    /// Reads and writes, from any client of the store (`shoal.ctl.store.node.<id>`).
    Data,
    /// Moved keys, from another store node (`shoal.ctl.store.ingest.<id>`).
    Ingest,
    /// Shards, moves and maps, from the master (`shoal.ctl.store.admin.<id>`).
    Admin,
}

impl Channel {
    /// The subject of node `id` for this channel.
    pub fn subject(self, id: &str) -> String {
        match self {
            Channel::Data => shoal_bus::subject::store_node(id),
            Channel::Ingest => shoal_bus::subject::store_ingest(id),
            Channel::Admin => shoal_bus::subject::store_admin(id),
        }
    }
}

impl Request {
    /// The channel this request must arrive on.
    pub fn channel(&self) -> Channel {
        match self {
            Request::Get { .. } | Request::Batch { .. } | Request::Check { .. } | Request::List { .. } => Channel::Data,
            Request::Ingest { .. } => Channel::Ingest,
            Request::Admin { .. } => Channel::Admin,
        }
    }
}

/// A node's answer.
#[derive(Debug, Serialize, Deserialize)]
pub enum Reply {
    /// The entry of a `Get`.
    Entry(Option<Entry>),
    /// The versions written by a `Batch`.
    Versions(Vec<u64>),
    /// The entries of a `List`.
    Entries(Vec<Entry>),
    /// A count (keys copied, deleted, ingested).
    Count(u64),
    /// Done.
    Ok,
    /// Refused or failed.
    Error(WireError),
    /// The entry of a stale `Get`, with how far the copy that read it was behind.
    StaleEntry(Option<Entry>, crate::Staleness),
}

/// A [`StoreError`] as it crosses the bus.
#[derive(Debug, Serialize, Deserialize)]
pub enum WireError {
    /// See [`StoreError::InvalidNamespace`].
    InvalidNamespace(String),
    /// See [`StoreError::InvalidKey`].
    InvalidKey(String),
    /// See [`StoreError::ValueTooLarge`].
    ValueTooLarge(u64, u64),
    /// See [`StoreError::InvalidTtl`].
    InvalidTtl(String),
    /// See [`StoreError::BatchTooLarge`].
    BatchTooLarge(u64, u64),
    /// See [`StoreError::InvalidBatch`].
    InvalidBatch(String),
    /// See [`StoreError::InvalidListing`].
    InvalidListing(String),
    /// See [`StoreError::Conflict`].
    Conflict(String, u64, u64),
    /// See [`StoreError::NotFound`].
    NotFound(String, String),
    /// See [`StoreError::NotOwner`]; carries the node's map so the caller can take it.
    NotOwner(u32, ShardMap),
    /// See [`StoreError::Moving`].
    Moving,
    /// See [`StoreError::StaleTerm`]: the request's term and the highest the node has seen.
    StaleTerm(u64, u64),
    /// Anything else, as text.
    Internal(String),
    /// See [`StoreError::NotLeader`] (after `Internal`: an older peer still reads the others).
    NotLeader(u32),
}

impl WireError {
    /// The error to send for `err`; `map` is the node's map (sent along with `NotOwner`).
    pub fn from_error(err: StoreError, map: impl FnOnce() -> ShardMap) -> WireError {
        match err {
            StoreError::InvalidNamespace(s) => WireError::InvalidNamespace(s),
            StoreError::InvalidKey(s) => WireError::InvalidKey(s),
            StoreError::ValueTooLarge { size, limit } => WireError::ValueTooLarge(size as u64, limit as u64),
            StoreError::InvalidTtl(s) => WireError::InvalidTtl(s),
            StoreError::BatchTooLarge { ops, limit } => WireError::BatchTooLarge(ops as u64, limit as u64),
            StoreError::InvalidBatch(s) => WireError::InvalidBatch(s),
            StoreError::InvalidListing(s) => WireError::InvalidListing(s),
            StoreError::Conflict { key, expected, actual } => WireError::Conflict(key, expected, actual),
            StoreError::NotFound { namespace, key } => WireError::NotFound(namespace, key),
            StoreError::NotOwner { shard, .. } => WireError::NotOwner(shard, map()),
            StoreError::Moving => WireError::Moving,
            StoreError::StaleTerm(stale) => WireError::StaleTerm(stale.term, stale.highest),
            StoreError::NotLeader { shard } => WireError::NotLeader(shard),
            other => WireError::Internal(other.to_string()),
        }
    }

    /// Back to a [`StoreError`] (a `NotOwner`'s map is taken out by the client before this).
    pub fn into_error(self) -> StoreError {
        let size = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
        match self {
            WireError::InvalidNamespace(s) => StoreError::InvalidNamespace(s),
            WireError::InvalidKey(s) => StoreError::InvalidKey(s),
            WireError::ValueTooLarge(s, l) => StoreError::ValueTooLarge { size: size(s), limit: size(l) },
            WireError::InvalidTtl(s) => StoreError::InvalidTtl(s),
            WireError::BatchTooLarge(o, l) => StoreError::BatchTooLarge { ops: size(o), limit: size(l) },
            WireError::InvalidBatch(s) => StoreError::InvalidBatch(s),
            WireError::InvalidListing(s) => StoreError::InvalidListing(s),
            WireError::Conflict(key, expected, actual) => StoreError::Conflict { key, expected, actual },
            WireError::NotFound(namespace, key) => StoreError::NotFound { namespace, key },
            WireError::NotOwner(shard, map) => StoreError::NotOwner { shard, epoch: map.epoch },
            WireError::Moving => StoreError::Moving,
            WireError::StaleTerm(term, highest) => {
                StoreError::StaleTerm(shoal_protocol::StaleTerm { term, highest, holder: "store node" })
            }
            WireError::Internal(s) => StoreError::Protocol(s),
            WireError::NotLeader(shard) => StoreError::NotLeader { shard },
        }
    }
}

/// Encode a request or reply.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // postcard only fails on writers that run out of room; a Vec never does.
    postcard::to_stdvec(value).unwrap_or_default()
}

/// Decode a request or reply.
pub fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, StoreError> {
    postcard::from_bytes(bytes).map_err(|e| StoreError::Protocol(format!("undecodable message: {e}")))
}

/// The JSON messages between store nodes and the master (registration, move progress) and the
/// data of key-value events: `shoal-protocol`'s, re-exported where the store's own protocol is.
pub use shoal_protocol::store::{KvChange, Progress, Registration};

/// The map carried by a `shoal.evt.store.shardmap` event, if the payload is one.
pub fn shard_map_of_event(payload: &[u8]) -> Option<ShardMap> {
    let event: shoal_bus::CloudEvent = serde_json::from_slice(payload).ok()?;
    serde_json::from_value(event.data).ok()
}
