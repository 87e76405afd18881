//! Shoal's sharded state store: the key-value store apps keep their state in.
//!
//! - **Routing.** A key lives in namespace `ns`; its shard is the jump consistent hash (Lamping &
//!   Veach) of FNV-1a 64 of `ns/key` over the shard count ([`hash`]). A [`ShardMap`] (epoch +
//!   shard → node) says which node serves each shard; this slice serves every shard in-process.
//! - **Storage.** One RocksDB per shard, under `<dir>/shard-<n>`. Each entry is stored as
//!   `version (u64 BE) | expires_at in ms since the Unix epoch, 0 = never (u64 BE) | value`, under
//!   the RocksDB key `ns/key`. Each shard keeps a counter of the last version it handed out, stored
//!   under a key no namespace can produce (`\0seq`) in the same `WriteBatch` as the write that
//!   used it: versions are monotonic per key (all writes of a key go through its shard) and never
//!   reused, even after a delete or a crash.
//! - **Writes** hold their shard's lock while they check compare-and-set conditions and write,
//!   so a check and its write are atomic. A refused write (bad input, conflict, missing key)
//!   writes nothing.
//! - **Batches** ([`Store::batch`]) of keys in one shard are one `WriteBatch`: all or nothing,
//!   also across a crash. A batch that spans shards locks those shards in ascending order, checks
//!   every condition first (so a conflict anywhere writes nothing), then writes one `WriteBatch`
//!   per shard in ascending order. What does *not* hold across shards: a reader may see the
//!   lower shards' writes before the higher ones', and a crash (or a storage error) between two
//!   shard writes leaves the lower shards written and the others not.
//! - **TTL.** An entry past its expiry is invisible to every read and to compare-and-set (it
//!   counts as absent); a [`Sweeper`] thread deletes expired entries in the background (a full
//!   scan per round in this slice; an expiry index is future work).
//! - **Durability** is [`Durability`]: by default ([`Durability::Wal`]) every write is appended
//!   to RocksDB's write-ahead log before it is acknowledged but not fsynced, so an acknowledged
//!   write survives `kill -9` of the process (the log is in the kernel's page cache) but not
//!   necessarily a power loss; [`Durability::Sync`] fsyncs the log on every write.
//!
//! What this crate must never do: hash with anything but [`hash::key_hash`] and
//! [`hash::jump_hash`] (that would move keys between shards), or write anything on a refused
//! operation.

pub mod hash;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::{Mutex, MutexGuard};
use rocksdb::{DB, Direction, IteratorMode, Options, ReadOptions, WriteBatch, WriteOptions};
use serde::{Deserialize, Serialize};

/// Longest namespace. Namespaces are `[a-z0-9-]{1,63}`: they appear in token scopes
/// (`app:<ns>`), URLs and, later, bus subjects, where a DNS-label shape is safe everywhere.
pub const MAX_NAMESPACE_LEN: usize = 63;
/// Longest key, in bytes of UTF-8. Keys are copied into every index and listing; 1 KiB keeps a
/// page of 1,000 keys at most 1 MiB.
pub const MAX_KEY_LEN: usize = 1024;
/// Largest value, in bytes. The store is for state, not blobs: larger values would make one write
/// stall its whole shard (writes of a shard are serialized) and bloat the write-ahead log.
pub const MAX_VALUE_LEN: usize = 1 << 20;
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
pub const MAX_SHARDS: u32 = 256;
/// How often the [`Sweeper`] deletes expired entries by default.
pub const DEFAULT_SWEEP_INTERVAL: Duration = Duration::from_secs(30);

/// The shard-local key of the version counter; no namespace starts with a NUL byte.
const SEQ_KEY: &[u8] = b"\0seq";
/// The file that records a store's shard count.
const SHARDS_FILE: &str = "SHARDS";
/// Bytes of an entry's header: version and expiry.
const HEADER_LEN: usize = 16;

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

/// Which node serves each shard, at an epoch. The master will own and publish it; a client that
/// hears of a newer epoch refreshes its copy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardMap {
    /// Grows by one on every change of the map.
    pub epoch: u64,
    /// `shards[i]` is the node serving shard `i`; the length is the shard count.
    pub shards: Vec<String>,
}

impl ShardMap {
    /// A map of `shards` shards all served by `node`, at epoch 1.
    pub fn local(shards: u32, node: &str) -> ShardMap {
        ShardMap { epoch: 1, shards: vec![node.to_owned(); shards as usize] }
    }

    /// Number of shards.
    pub fn shard_count(&self) -> u32 {
        u32::try_from(self.shards.len()).unwrap_or(u32::MAX)
    }

    /// The shard of `namespace/key`.
    pub fn shard_of(&self, namespace: &str, key: &str) -> u32 {
        hash::shard_of(namespace, key, self.shard_count())
    }

    /// The node serving `shard`.
    pub fn node_of(&self, shard: u32) -> Option<&str> {
        self.shards.get(shard as usize).map(String::as_str)
    }
}

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
}

fn describe(version: u64) -> String {
    if version == 0 { "absent".to_owned() } else { format!("version {version}") }
}

/// A stored entry.
#[derive(Clone, Debug, PartialEq, Eq)]
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
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PutOptions {
    /// Compare-and-set: write only if the current version is this one; 0 = only if absent.
    pub version: Option<u64>,
    /// Expire the entry after this long.
    pub ttl: Option<Duration>,
}

/// One operation of a batch.
#[derive(Clone, Debug, PartialEq, Eq)]
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
    fn key(&self) -> &str {
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

struct Shard {
    db: DB,
    /// The last version this shard handed out; its lock serializes the shard's writes.
    seq: Mutex<u64>,
}

/// The store: every shard of this node.
pub struct Store {
    shards: Vec<Shard>,
    map: ShardMap,
    write_options: WriteOptions,
    dir: PathBuf,
}

/// Check a namespace: `[a-z0-9-]{1,63}`.
pub fn validate_namespace(namespace: &str) -> Result<(), StoreError> {
    let valid = !namespace.is_empty()
        && namespace.len() <= MAX_NAMESPACE_LEN
        && namespace.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if valid { Ok(()) } else { Err(StoreError::InvalidNamespace(namespace.chars().take(80).collect())) }
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

fn validate_ttl(ttl: Option<Duration>) -> Result<(), StoreError> {
    match ttl {
        Some(t) if t.is_zero() => Err(StoreError::InvalidTtl("zero".into())),
        Some(t) if t > MAX_TTL => Err(StoreError::InvalidTtl(format!("over the limit of {} s", MAX_TTL.as_secs()))),
        _ => Ok(()),
    }
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn db_key(namespace: &str, key: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(namespace.len() + 1 + key.len());
    k.extend_from_slice(namespace.as_bytes());
    k.push(b'/');
    k.extend_from_slice(key.as_bytes());
    k
}

fn encode(version: u64, expires_at: u64, value: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(HEADER_LEN + value.len());
    v.extend_from_slice(&version.to_be_bytes());
    v.extend_from_slice(&expires_at.to_be_bytes());
    v.extend_from_slice(value);
    v
}

/// Version and expiry (0 = never) of a stored value.
fn header(stored: &[u8]) -> Result<(u64, u64), StoreError> {
    let version = stored.get(..8).and_then(|b| b.try_into().ok()).map(u64::from_be_bytes);
    let expires = stored.get(8..16).and_then(|b| b.try_into().ok()).map(u64::from_be_bytes);
    match (version, expires) {
        (Some(v), Some(e)) => Ok((v, e)),
        _ => Err(StoreError::Corrupt(format!("entry of {} bytes has no header", stored.len()))),
    }
}

fn live(expires_at: u64, now: u64) -> bool {
    expires_at == 0 || expires_at > now
}

fn decode(key: String, stored: &[u8], now: u64) -> Result<Option<Entry>, StoreError> {
    let (version, expires_at) = header(stored)?;
    if !live(expires_at, now) {
        return Ok(None);
    }
    let expires_at = (expires_at != 0).then_some(expires_at);
    Ok(Some(Entry { key, value: stored[HEADER_LEN..].to_vec(), version, expires_at }))
}

/// The smallest byte string greater than every string starting with `prefix`, if any.
fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

impl Store {
    /// Open (or create) the store under `dir`, one RocksDB per shard in `dir/shard-<n>`.
    ///
    /// A store remembers its shard count; opening it with another count is refused (moving keys
    /// between shards is not built yet, and opening with the wrong count would hide them).
    pub fn open(dir: &Path, config: StoreConfig) -> Result<Arc<Store>, StoreError> {
        if config.shards == 0 || config.shards > MAX_SHARDS {
            return Err(StoreError::Config(format!("shard count must be 1 to {MAX_SHARDS}, not {}", config.shards)));
        }
        std::fs::create_dir_all(dir)?;
        let count_file = dir.join(SHARDS_FILE);
        match std::fs::read_to_string(&count_file) {
            Ok(text) => {
                let existing: u32 = text
                    .trim()
                    .parse()
                    .map_err(|_| StoreError::Config(format!("{} does not hold a number", count_file.display())))?;
                if existing != config.shards {
                    return Err(StoreError::Config(format!(
                        "the store in {} has {existing} shards, not {}; changing the shard count of an existing \
                         store is not supported yet",
                        dir.display(),
                        config.shards
                    )));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::write(&count_file, format!("{}\n", config.shards))?;
            }
            Err(e) => return Err(e.into()),
        }
        let mut options = Options::default();
        options.create_if_missing(true);
        options.set_compression_type(rocksdb::DBCompressionType::Lz4);
        let mut shards = Vec::with_capacity(config.shards as usize);
        for n in 0..config.shards {
            let db = DB::open(&options, dir.join(format!("shard-{n}")))?;
            let seq = match db.get(SEQ_KEY)? {
                Some(bytes) => u64::from_be_bytes(
                    bytes.as_slice().try_into().map_err(|_| StoreError::Corrupt(format!("shard {n} counter")))?,
                ),
                None => 0,
            };
            shards.push(Shard { db, seq: Mutex::new(seq) });
        }
        let mut write_options = WriteOptions::default();
        write_options.set_sync(config.durability == Durability::Sync);
        tracing::info!(dir = %dir.display(), shards = config.shards, durability = ?config.durability, "state store open");
        Ok(Arc::new(Store { shards, map: ShardMap::local(config.shards, "local"), write_options, dir: dir.to_owned() }))
    }

    /// The shard map this store serves.
    pub fn shard_map(&self) -> &ShardMap {
        &self.map
    }

    /// Where the store lives.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The shard of `namespace/key`.
    pub fn shard_of(&self, namespace: &str, key: &str) -> u32 {
        self.map.shard_of(namespace, key)
    }

    fn shard(&self, namespace: &str, key: &str) -> &Shard {
        &self.shards[self.shard_of(namespace, key) as usize]
    }

    /// The live entry under `namespace/key`, if any.
    pub fn get(&self, namespace: &str, key: &str) -> Result<Option<Entry>, StoreError> {
        validate_namespace(namespace)?;
        validate_key(key)?;
        match self.shard(namespace, key).db.get_pinned(db_key(namespace, key))? {
            Some(stored) => decode(key.to_owned(), &stored, now_ms()),
            None => Ok(None),
        }
    }

    /// Write `value` under `namespace/key`; returns the new version.
    pub fn put(&self, namespace: &str, key: &str, value: &[u8], options: PutOptions) -> Result<u64, StoreError> {
        let op = Op::Put { key: key.to_owned(), value: value.to_vec(), options };
        Ok(self.batch(namespace, vec![op])?[0])
    }

    /// Delete `namespace/key`, if its version is `version` when given; returns the version of the
    /// delete (a fresh one, higher than the deleted entry's). A missing key is
    /// [`StoreError::NotFound`], or a [`StoreError::Conflict`] when a version was expected.
    pub fn delete(&self, namespace: &str, key: &str, version: Option<u64>) -> Result<u64, StoreError> {
        Ok(self.batch(namespace, vec![Op::Delete { key: key.to_owned(), version }])?[0])
    }

    /// Apply `ops` in `namespace`; returns the version each operation wrote, in order. Either
    /// every condition holds and everything is written, or nothing is (see the module doc for what
    /// holds when the keys span shards).
    pub fn batch(&self, namespace: &str, ops: Vec<Op>) -> Result<Vec<u64>, StoreError> {
        validate_namespace(namespace)?;
        if ops.is_empty() {
            return Err(StoreError::InvalidBatch("no operations".into()));
        }
        if ops.len() > MAX_BATCH_OPS {
            return Err(StoreError::BatchTooLarge { ops: ops.len(), limit: MAX_BATCH_OPS });
        }
        let mut seen = HashSet::with_capacity(ops.len());
        for op in &ops {
            validate_key(op.key())?;
            if let Op::Put { value, options, .. } = op {
                if value.len() > MAX_VALUE_LEN {
                    return Err(StoreError::ValueTooLarge { size: value.len(), limit: MAX_VALUE_LEN });
                }
                validate_ttl(options.ttl)?;
            }
            if !seen.insert(op.key()) {
                return Err(StoreError::InvalidBatch(format!("key `{}` appears twice", op.key())));
            }
        }
        let shard_of: Vec<u32> = ops.iter().map(|op| self.shard_of(namespace, op.key())).collect();
        let mut involved: Vec<u32> = shard_of.clone();
        involved.sort_unstable();
        involved.dedup();
        // Lock in ascending order so that two batches never wait for each other.
        let mut guards: Vec<(u32, MutexGuard<'_, u64>)> =
            involved.iter().map(|&s| (s, self.shards[s as usize].seq.lock())).collect();

        let now = now_ms();
        for (op, &s) in ops.iter().zip(&shard_of) {
            let current = match self.shards[s as usize].db.get_pinned(db_key(namespace, op.key()))? {
                Some(stored) => {
                    let (version, expires_at) = header(&stored)?;
                    if live(expires_at, now) { version } else { 0 }
                }
                None => 0,
            };
            let expected = match op {
                Op::Put { options, .. } => options.version,
                Op::Delete { version, .. } => *version,
            };
            match expected {
                Some(expected) if expected != current => {
                    return Err(StoreError::Conflict { key: op.key().to_owned(), expected, actual: current });
                }
                None if current == 0 && matches!(op, Op::Delete { .. }) => {
                    return Err(StoreError::NotFound { namespace: namespace.to_owned(), key: op.key().to_owned() });
                }
                _ => {}
            }
        }

        let mut versions = vec![0u64; ops.len()];
        for (shard, guard) in &mut guards {
            let mut batch = WriteBatch::default();
            let mut seq = **guard;
            for (i, op) in ops.iter().enumerate().filter(|(i, _)| shard_of[*i] == *shard) {
                seq += 1;
                versions[i] = seq;
                match op {
                    Op::Put { key, value, options } => {
                        let expires_at = options
                            .ttl
                            .map_or(0, |t| now.saturating_add(u64::try_from(t.as_millis()).unwrap_or(u64::MAX)).max(1));
                        batch.put(db_key(namespace, key), encode(seq, expires_at, value));
                    }
                    Op::Delete { key, .. } => batch.delete(db_key(namespace, key)),
                }
            }
            batch.put(SEQ_KEY, seq.to_be_bytes());
            self.shards[*shard as usize].db.write_opt(batch, &self.write_options)?;
            **guard = seq;
        }
        Ok(versions)
    }

    /// One page of the live entries of `namespace` whose keys start with `prefix`, in key order,
    /// after `cursor` (from the previous page). Every shard is read (scatter-gather) and the
    /// results merged; each shard is read at its own moment, not at one snapshot across shards.
    pub fn list(&self, namespace: &str, prefix: &str, cursor: Option<&str>, limit: usize) -> Result<Page, StoreError> {
        validate_namespace(namespace)?;
        if prefix.len() > MAX_KEY_LEN {
            return Err(StoreError::InvalidKey(format!("prefix of {} bytes is over {MAX_KEY_LEN}", prefix.len())));
        }
        if limit == 0 || limit > MAX_LIST_LIMIT {
            return Err(StoreError::InvalidListing(format!("limit must be 1 to {MAX_LIST_LIMIT}, not {limit}")));
        }
        let after = cursor.map(decode_cursor).transpose()?;
        let full_prefix = db_key(namespace, prefix);
        let mut start = full_prefix.clone();
        if let Some(after) = &after {
            let mut k = db_key(namespace, after);
            k.push(0);
            start = start.max(k);
        }
        let now = now_ms();
        let skip = namespace.len() + 1;
        let mut entries = Vec::new();
        for shard in &self.shards {
            let mut read = ReadOptions::default();
            if let Some(end) = prefix_end(&full_prefix) {
                read.set_iterate_upper_bound(end);
            }
            let mut taken = 0;
            for item in shard.db.iterator_opt(IteratorMode::From(&start, Direction::Forward), read) {
                let (k, v) = item?;
                if !k.starts_with(&full_prefix) {
                    break;
                }
                let key = String::from_utf8(k[skip..].to_vec())
                    .map_err(|_| StoreError::Corrupt("a key is not UTF-8".into()))?;
                if let Some(entry) = decode(key, &v, now)? {
                    entries.push(entry);
                    taken += 1;
                    // One more than a page tells whether another page follows.
                    if taken > limit {
                        break;
                    }
                }
            }
        }
        entries.sort_unstable_by(|a, b| a.key.cmp(&b.key));
        let cursor = if entries.len() > limit {
            entries.truncate(limit);
            entries.last().map(|e| hex::encode(e.key.as_bytes()))
        } else {
            None
        };
        Ok(Page { entries, cursor })
    }

    /// Delete every expired entry; returns how many. Each shard is scanned; an entry is deleted
    /// under its shard's lock only if it is still the expired one that was seen.
    pub fn sweep_expired(&self) -> Result<usize, StoreError> {
        let mut deleted = 0;
        for shard in &self.shards {
            let now = now_ms();
            let mut expired = Vec::new();
            for item in shard.db.iterator(IteratorMode::Start) {
                let (k, v) = item?;
                if k.as_ref() == SEQ_KEY {
                    continue;
                }
                let (version, expires_at) = header(&v)?;
                if !live(expires_at, now) {
                    expired.push((k, version));
                }
            }
            if expired.is_empty() {
                continue;
            }
            let guard = shard.seq.lock();
            let mut batch = WriteBatch::default();
            let mut n = 0;
            for (k, version) in expired {
                if let Some(v) = shard.db.get_pinned(&k)? {
                    let (current, expires_at) = header(&v)?;
                    if current == version && !live(expires_at, now) {
                        batch.delete(&k);
                        n += 1;
                    }
                }
            }
            shard.db.write_opt(batch, &self.write_options)?;
            drop(guard);
            deleted += n;
        }
        Ok(deleted)
    }
}

fn decode_cursor(cursor: &str) -> Result<String, StoreError> {
    hex::decode(cursor)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .ok_or_else(|| StoreError::InvalidListing("malformed cursor: pass the one the previous page returned".into()))
}

/// A background thread that deletes expired entries every interval; stops when dropped.
pub struct Sweeper {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Sweeper {
    /// Sweep `store` every `interval`. The thread holds only a weak reference between rounds.
    pub fn spawn(store: &Arc<Store>, interval: Duration) -> Sweeper {
        let (stop, stopped) = mpsc::channel::<()>();
        let weak = Arc::downgrade(store);
        let thread = std::thread::Builder::new()
            .name("shoal-store-sweeper".into())
            .spawn(move || {
                while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(interval) {
                    let Some(store) = weak.upgrade() else { return };
                    match store.sweep_expired() {
                        Ok(0) => {}
                        Ok(n) => tracing::debug!(deleted = n, "expired entries swept"),
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
