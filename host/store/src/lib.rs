//! Shoal's sharded state store: the key-value store apps keep their state in.
//!
//! - **Routing.** A key lives in namespace `ns`; its shard is the jump consistent hash (Lamping &
//!   Veach) of FNV-1a 64 of `ns/key` over the shard count ([`shoal_keyspace`]). A [`ShardMap`] (epoch +
//!   shard → node), owned by the master ([`coordinator`]) and published on the bus, says which store
//!   node serves each shard. Clients ([`client`]) route by the map they hold; a node that does not
//!   serve the key under its own map answers [`StoreError::NotOwner`] with its epoch, and the client
//!   refreshes its map.
//! - **Storage** ([`engine`]). One RocksDB per shard, under `<dir>/shard-<n>`. Each entry is stored
//!   as `version (u64 BE) | expires_at in ms since the Unix epoch, 0 = never (u64 BE) | value`,
//!   under the RocksDB key `ns/key`. Each shard keeps a counter of the last version it handed out,
//!   stored under a key no namespace can produce (`\0seq`) in the same `WriteBatch` as the write
//!   that used it: versions are monotonic per key and never reused, even after a delete, a crash or
//!   a move (a shard that takes keys in raises its counter past their versions).
//! - **Writes** hold their shard's lock while they check compare-and-set conditions and write,
//!   so a check and its write are atomic. A refused write (bad input, conflict, missing key)
//!   writes nothing.
//! - **Batches** of keys in one shard are one `WriteBatch`: all or nothing, also across a crash.
//!   A batch whose shards are on one node locks those shards in ascending order, checks every
//!   condition first (so a conflict anywhere writes nothing), then writes one `WriteBatch` per
//!   shard. A batch across nodes is checked on every node first, then applied node by node: a
//!   conflict found by the check writes nothing, but a concurrent write that slips in between the
//!   check and the apply can leave the earlier nodes written (the error says which keys were).
//! - **Moves** ([`node`], [`coordinator`]): scale-out N → N+1 and scale-in N → N−1 copy exactly the
//!   keys whose jump hash changes, online; the source freezes the moving keys only for the last
//!   catch-up and the switch of the map, so no acknowledged write is lost or read stale.
//! - **TTL.** An entry past its expiry is invisible to every read and to compare-and-set (it
//!   counts as absent); a [`Sweeper`] thread deletes expired entries in the background.
//! - **Durability** is [`Durability`]: by default ([`Durability::Wal`]) every write is appended
//!   to RocksDB's write-ahead log before it is acknowledged but not fsynced, so an acknowledged
//!   write survives `kill -9` of the process (the log is in the kernel's page cache) but not
//!   necessarily a power loss; [`Durability::Sync`] fsyncs the log on every write.
//!
//! What this crate must never do: hash with anything but [`shoal_keyspace::key_hash`] and
//! [`shoal_keyspace::jump_hash`] (that would move keys between shards), or write anything on a refused
//! operation.

pub mod client;
pub mod coordinator;
pub mod engine;
mod fence;
pub mod node;
pub mod replication;
pub mod service;
pub mod wire;

use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use engine::{Followed, Store};

/// Longest namespace. Namespaces are `[a-z0-9-]{1,63}`: they appear in token scopes
/// (`app:<ns>`), URLs and bus subjects, where a DNS-label shape is safe everywhere.
pub const MAX_NAMESPACE_LEN: usize = 63;
/// Longest system namespace: `_` and up to 127 of `[a-z0-9-]`, room for
/// `_plugin-<kind>-<name>` with a 63-character plugin name.
pub const MAX_SYSTEM_NAMESPACE_LEN: usize = 128;
/// Longest key, in bytes of UTF-8 (the one limit of every key-value surface, see
/// [`shoal_keyspace::MAX_KEY_BYTES`]). Keys are copied into every index and listing; 1 KiB keeps
/// a page of 1,000 keys at most 1 MiB.
pub const MAX_KEY_LEN: usize = shoal_keyspace::MAX_KEY_BYTES;
/// Largest value, in bytes ([`shoal_keyspace::MAX_VALUE_BYTES`]). The store is for state, not
/// blobs: larger values would make one write stall its whole shard (writes of a shard are
/// serialized) and bloat the write-ahead log.
pub const MAX_VALUE_LEN: usize = shoal_keyspace::MAX_VALUE_BYTES;
/// Most operations in one batch: bounds the time a batch holds its shards' locks.
pub const MAX_BATCH_OPS: usize = 128;
/// Longest time to live: ten years; longer is a mistake (or a unit error).
pub const MAX_TTL: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Page size of a listing when the caller gives none.
pub const DEFAULT_LIST_LIMIT: usize = 100;
/// Largest page of a listing: a scatter-gather reads up to this many entries from every shard.
pub const MAX_LIST_LIMIT: usize = 1000;
/// Shards of a new store when the caller gives no count.
pub const DEFAULT_SHARDS: u32 = 4;
/// Most shards one store opens (each is a RocksDB with its own files and memtables).
pub const MAX_SHARDS: u32 = shoal_bus::subject::STORE_MAX_SHARDS;
/// How often the [`Sweeper`] deletes expired entries by default.
pub const DEFAULT_SWEEP_INTERVAL: Duration = Duration::from_secs(30);

/// How hard an acknowledged write is kept.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Durability {
    /// Written to the write-ahead log, not fsynced: survives `kill -9`, not necessarily a power
    /// loss. The default.
    #[default]
    Wal,
    /// The write-ahead log is fsynced before the write is acknowledged: survives a power loss.
    Sync,
}

/// What a read of a replicated shard may see.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Consistency {
    /// Every write acknowledged before the read began: served by the shard's leader while its
    /// lease counts (no other member can have acknowledged anything since it applied the log
    /// to its end). The default.
    #[default]
    Linearizable,
    /// Whatever this copy has applied, possibly behind the leader ([`Store::applied`] says how
    /// far it got); any member serves it.
    Stale,
}

/// How far the copy that answered a stale read was behind its shard's log.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Staleness {
    /// The last log entry the copy had applied (0: the shard is not replicated).
    pub applied: u64,
    /// Entries of the log it had not applied yet when it read, if the log said in time.
    pub behind: Option<u64>,
}

/// How to open a store.
#[derive(Clone, Debug)]
pub struct StoreConfig {
    /// Number of shards; must match the count the store was created with.
    pub shards: u32,
    /// Sync policy of writes.
    pub durability: Durability,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig { shards: DEFAULT_SHARDS, durability: Durability::default() }
    }
}

/// Which node serves each shard, at an epoch: a message of the master to store nodes and
/// clients, owned by `shoal-protocol`.
pub use shoal_protocol::store::ShardMap;

/// Why the store refused or failed an operation. Every refusal happens before anything is written.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The namespace is not `[a-z0-9-]{1,63}`.
    #[error("invalid namespace `{0}`: use 1 to 63 of a-z, 0-9 and -")]
    InvalidNamespace(String),
    /// The key is empty or too long.
    #[error("invalid key: {0}")]
    InvalidKey(String),
    /// The value is over [`MAX_VALUE_LEN`].
    #[error("value of {size} bytes is over the limit of {limit} bytes")]
    ValueTooLarge {
        /// Size of the value.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The time to live is zero or over [`MAX_TTL`].
    #[error("invalid ttl: {0}")]
    InvalidTtl(String),
    /// The batch has more than [`MAX_BATCH_OPS`] operations.
    #[error("batch of {ops} operations is over the limit of {limit}")]
    BatchTooLarge {
        /// Operations in the batch.
        ops: usize,
        /// The limit.
        limit: usize,
    },
    /// The batch is empty or names a key twice.
    #[error("invalid batch: {0}")]
    InvalidBatch(String),
    /// A listing's cursor or limit is malformed.
    #[error("invalid listing: {0}")]
    InvalidListing(String),
    /// A compare-and-set condition failed.
    #[error("version conflict on `{key}`: expected {}, found {}", describe(*.expected), describe(*.actual))]
    Conflict {
        /// The key.
        key: String,
        /// The version the caller expected (0: absent).
        expected: u64,
        /// The version found (0: absent).
        actual: u64,
    },
    /// The key does not exist (or has expired).
    #[error("no key `{key}` in namespace `{namespace}`")]
    NotFound {
        /// The namespace.
        namespace: String,
        /// The key.
        key: String,
    },
    /// The store cannot open as configured.
    #[error("store configuration: {0}")]
    Config(String),
    /// RocksDB failed.
    #[error("storage: {0}")]
    Storage(#[from] rocksdb::Error),
    /// Stored bytes do not decode.
    #[error("corrupt entry: {0}")]
    Corrupt(String),
    /// Reading or writing a store file failed.
    #[error("store file: {0}")]
    Io(#[from] std::io::Error),
    /// This node does not serve the key's shard under its map (the caller's map is out of date,
    /// or this node's is: the caller refreshes its map and retries).
    #[error("shard {shard} is not served by this node at map epoch {epoch}")]
    NotOwner {
        /// The shard of the key under the node's map.
        shard: u32,
        /// The node's map epoch.
        epoch: u64,
    },
    /// The shard is replicated and this node does not lead it (any more): the caller asks the
    /// shard's leader.
    #[error("this node does not lead shard {shard}; ask its leader")]
    NotLeader {
        /// The shard.
        shard: u32,
    },
    /// The key is being moved to another shard; retry in a few milliseconds.
    #[error("the key is moving to another shard; retry")]
    Moving,
    /// The node serving the key's shard did not answer (or, with no node named, no store node
    /// serves anything yet).
    #[error("{}", unavailable(*.shard, .node, .reason))]
    Unavailable {
        /// The shard.
        shard: u32,
        /// Its node.
        node: String,
        /// What happened.
        reason: String,
    },
    /// A batch across nodes passed its check but a node then refused its part: the keys listed
    /// were written, the others not.
    #[error("batch partly applied: {cause}; written: {written:?}")]
    Partial {
        /// Why the rest was not written.
        cause: Box<StoreError>,
        /// The keys that were written.
        written: Vec<String>,
    },
    /// A store node answered something this client cannot read (a version mismatch).
    #[error("store protocol: {0}")]
    Protocol(String),
    /// A command or map of the master came with a term lower than one the node has seen: it is
    /// from a deposed master, and was not obeyed.
    #[error(transparent)]
    StaleTerm(#[from] shoal_protocol::StaleTerm),
    /// The master's state did not take or give the shard map ([`shoal_state::StateError::NotLeader`]
    /// on a master that does not lead).
    #[error("the shard map in the master's state: {0}")]
    State(#[from] shoal_state::StateError),
}

impl StoreError {
    /// The same error for another caller that shares its cause (the members of a commit group
    /// whose write failed): the variants a client acts on as they are, any other as its text.
    pub(crate) fn for_another(&self) -> StoreError {
        match self {
            StoreError::NotLeader { shard } => StoreError::NotLeader { shard: *shard },
            StoreError::Unavailable { shard, node, reason } => {
                StoreError::Unavailable { shard: *shard, node: node.clone(), reason: reason.clone() }
            }
            StoreError::ValueTooLarge { size, limit } => StoreError::ValueTooLarge { size: *size, limit: *limit },
            other => StoreError::Config(other.to_string()),
        }
    }
}

fn unavailable(shard: u32, node: &str, reason: &str) -> String {
    if node.is_empty() {
        format!("the state store is unavailable: {reason}")
    } else {
        format!("shard {shard} (store node `{node}`) is unavailable: {reason}")
    }
}

fn describe(version: u64) -> String {
    if version == 0 { "absent".to_owned() } else { format!("version {version}") }
}

/// A stored entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The key (without its namespace).
    pub key: String,
    /// The value.
    pub value: Vec<u8>,
    /// Its version: the shard's counter when it was written; never 0.
    pub version: u64,
    /// When it expires, in milliseconds since the Unix epoch.
    pub expires_at: Option<u64>,
}

/// Conditions and lifetime of a put.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PutOptions {
    /// Compare-and-set: write only if the current version is this one; 0 = only if absent.
    pub version: Option<u64>,
    /// Expire the entry after this long.
    pub ttl: Option<Duration>,
}

/// One operation of a batch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// Write `value` under `key`.
    Put {
        /// The key.
        key: String,
        /// The value.
        value: Vec<u8>,
        /// Condition and lifetime.
        options: PutOptions,
    },
    /// Delete `key`.
    Delete {
        /// The key.
        key: String,
        /// Compare-and-set: delete only if the current version is this one.
        version: Option<u64>,
    },
}

impl Op {
    /// The key the operation writes.
    pub fn key(&self) -> &str {
        match self {
            Op::Put { key, .. } | Op::Delete { key, .. } => key,
        }
    }
}

/// One page of a listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Page {
    /// Entries in key order.
    pub entries: Vec<Entry>,
    /// Pass this to get the next page; `None` on the last page.
    pub cursor: Option<String>,
}

/// A listing cursor that continues after `key` (what a page whose last key is `key` returns).
pub fn cursor_after(key: &str) -> String {
    hex::encode(key.as_bytes())
}

/// Check a namespace: `[a-z0-9-]{1,63}`.
///
/// A namespace starting with `_` is a *system* namespace (the host's own state, e.g. a plugin's
/// store, see [`plugin_namespace`]): up to [`MAX_SYSTEM_NAMESPACE_LEN`] bytes. No app token can
/// name one (token scopes take `[a-z0-9-]` only).
pub fn validate_namespace(namespace: &str) -> Result<(), StoreError> {
    let (body, max) = match namespace.strip_prefix('_') {
        Some(body) => (body, MAX_SYSTEM_NAMESPACE_LEN - 1),
        None => (namespace, MAX_NAMESPACE_LEN),
    };
    let valid = !body.is_empty()
        && body.len() <= max
        && body.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if valid { Ok(()) } else { Err(StoreError::InvalidNamespace(namespace.chars().take(80).collect())) }
}

/// True for a system namespace (`_…`), which only the host and admin tokens write.
pub fn is_system_namespace(namespace: &str) -> bool {
    namespace.starts_with('_')
}

/// The system namespace that holds the key-value store of plugin `name` of kind `kind`
/// (`framework`, `allocator`, `router`, `health-check`): `_plugin-<kind>-<name>`. Every version
/// and instance of the plugin share it.
pub fn plugin_namespace(kind: &str, name: &str) -> String {
    format!("_plugin-{kind}-{name}")
}

/// Check a key: non-empty, at most [`MAX_KEY_LEN`] bytes (UTF-8 by type).
pub fn validate_key(key: &str) -> Result<(), StoreError> {
    if key.is_empty() {
        return Err(StoreError::InvalidKey("empty key".into()));
    }
    if key.len() > MAX_KEY_LEN {
        return Err(StoreError::InvalidKey(format!("{} bytes is over the limit of {MAX_KEY_LEN}", key.len())));
    }
    Ok(())
}

pub(crate) fn validate_ttl(ttl: Option<Duration>) -> Result<(), StoreError> {
    match ttl {
        Some(t) if t.is_zero() => Err(StoreError::InvalidTtl("zero".into())),
        Some(t) if t > MAX_TTL => Err(StoreError::InvalidTtl(format!("over the limit of {} s", MAX_TTL.as_secs()))),
        _ => Ok(()),
    }
}

/// A background thread that deletes expired entries every interval; stops when dropped.
pub struct Sweeper {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// What the sweeper reports of each round: `(namespace, key, version)` of the entries it deleted.
pub type OnExpired = Box<dyn Fn(Vec<(String, String, u64)>) + Send>;

impl Sweeper {
    /// Sweep `store` every `interval`. The thread holds only a weak reference between rounds.
    pub fn spawn(store: &Arc<Store>, interval: Duration) -> Sweeper {
        Sweeper::spawn_reporting(store, interval, None)
    }

    /// [`Sweeper::spawn`], handing the entries each round deleted to `on_expired`.
    pub fn spawn_reporting(store: &Arc<Store>, interval: Duration, on_expired: Option<OnExpired>) -> Sweeper {
        let (stop, stopped) = mpsc::channel::<()>();
        let weak = Arc::downgrade(store);
        let thread = std::thread::Builder::new()
            .name("shoal-store-sweeper".into())
            .spawn(move || {
                while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(interval) {
                    let Some(store) = weak.upgrade() else { return };
                    match store.sweep_expired_entries() {
                        Ok((0, _)) => {}
                        Ok((n, entries)) => {
                            tracing::debug!(deleted = n, "expired entries swept");
                            if let Some(report) = &on_expired
                                && !entries.is_empty()
                            {
                                report(entries);
                            }
                        }
                        Err(err) => tracing::warn!(cause = %err, "sweeping expired entries failed"),
                    }
                }
            })
            .ok();
        if thread.is_none() {
            tracing::error!("could not start the expiry sweeper; expired entries stay on disk (still invisible)");
        }
        Sweeper { stop: Some(stop), thread }
    }
}

impl Drop for Sweeper {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
