//! The storage engine of one store node: the shards it holds, one RocksDB each, addressed by shard
//! number, and the shard map it serves by.
//!
//! Every read and write names its shard and is checked against the node's map: the key must hash to
//! that shard and the shard must be this node's (else [`StoreError::NotOwner`], and the client
//! refreshes its map). While a shard exports keys to another shard (a move, see [`crate::node`]),
//! every write of a moving key is remembered, and once the shard is *frozen* the moving keys are
//! refused with [`StoreError::Moving`] (the client retries) until the new map arrives.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::{Mutex, MutexGuard, RwLock};
use rocksdb::{DB, Direction, IteratorMode, Options, ReadOptions, WriteBatch, WriteOptions};

use crate::{
    Durability, Entry, MAX_BATCH_OPS, MAX_KEY_LEN, MAX_LIST_LIMIT, MAX_SHARDS, MAX_VALUE_LEN, Op, Page, PutOptions,
    ShardMap, StoreConfig, StoreError, validate_key, validate_namespace, validate_ttl,
};

/// The shard-local key of the version counter; no namespace starts with a NUL byte.
const SEQ_KEY: &[u8] = b"\0seq";
/// The file that records a standalone store's shard count.
const SHARDS_FILE: &str = "SHARDS";
/// Bytes of an entry's header: version and expiry.
const HEADER_LEN: usize = 16;

/// A raw stored entry as it moves between shards: the RocksDB key (`ns/key`) and the stored bytes
/// (header and value), or `None` when the key was deleted.
pub type RawEntry = (Vec<u8>, Option<Vec<u8>>);

struct Export {
    /// The map the keys move to.
    target: Arc<ShardMap>,
    /// RocksDB keys of moving keys written since the export began (or since the last drain).
    dirty: HashSet<Vec<u8>>,
    /// Moving keys are refused until the export ends.
    frozen: bool,
}

struct Shard {
    id: u32,
    db: DB,
    path: PathBuf,
    /// The last version this shard handed out; its lock serializes the shard's writes.
    seq: Mutex<u64>,
    /// Fast check for [`Shard::export`].
    exporting: AtomicBool,
    export: Mutex<Option<Export>>,
    /// Single-shard batches waiting to be committed: whoever holds `seq` next commits them all in
    /// one RocksDB write (group commit), so concurrent writers share one WAL append and, with
    /// [`Durability::Sync`], one fsync.
    queue: Mutex<Vec<Pending>>,
    /// Whether a blocking task drains `queue` for asynchronous writers ([`Store::batch_async`]).
    draining: AtomicBool,
}

/// A single-shard batch in a shard's commit queue.
struct Pending {
    namespace: String,
    ops: Vec<Op>,
    done: Done,
}

type Outcome = Result<Vec<u64>, StoreError>;

/// Where the outcome of a queued batch goes: a thread waiting for it, or a task.
enum Done {
    Thread(std::sync::mpsc::SyncSender<Outcome>),
    Task(tokio::sync::oneshot::Sender<Outcome>),
}

impl Done {
    fn send(self, outcome: Outcome) {
        // A writer that stopped waiting (a dropped request) does not need its answer.
        let _ = match self {
            Done::Thread(tx) => tx.send(outcome).map_err(drop),
            Done::Task(tx) => tx.send(outcome).map_err(drop),
        };
    }
}

/// What a commit group has written so far, by RocksDB key: `Some(version)` for a put, `None` for a
/// delete. Later batches of the group check their conditions against it before the database.
type Overlay = std::collections::HashMap<Vec<u8>, Option<u64>>;

impl Shard {
    /// Remember the writes of `ops` whose keys move under the export in progress (nothing when
    /// the shard does not export). Called under the shard's lock, after the write.
    fn mark_dirty<'a>(&self, namespace: &str, ops: impl IntoIterator<Item = &'a Op>) {
        if !self.exporting.load(Ordering::Acquire) {
            return;
        }
        if let Some(export) = self.export.lock().as_mut() {
            for op in ops {
                if export.target.shard_of(namespace, op.key()) != self.id {
                    export.dirty.insert(db_key(namespace, op.key()));
                }
            }
        }
    }

    /// Whether `ns/key` is frozen here (exporting, frozen, and moving to another shard).
    fn frozen(&self, namespace: &str, key: &str) -> bool {
        if !self.exporting.load(Ordering::Acquire) {
            return false;
        }
        self.export.lock().as_ref().is_some_and(|e| e.frozen && e.target.shard_of(namespace, key) != self.id)
    }
}

/// One node's shards.
pub struct Store {
    dir: PathBuf,
    node: String,
    options: Options,
    write_options: WriteOptions,
    shards: RwLock<BTreeMap<u32, Arc<Shard>>>,
    map: RwLock<Arc<ShardMap>>,
}

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn db_key(namespace: &str, key: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(namespace.len() + 1 + key.len());
    k.extend_from_slice(namespace.as_bytes());
    k.push(b'/');
    k.extend_from_slice(key.as_bytes());
    k
}

/// Namespace and key of a RocksDB key; `None` for the counter (or anything that is not `ns/key`).
fn split_db_key(k: &[u8]) -> Option<(&str, &str)> {
    let slash = k.iter().position(|&b| b == b'/')?;
    let ns = std::str::from_utf8(&k[..slash]).ok()?;
    let key = std::str::from_utf8(&k[slash + 1..]).ok()?;
    (!ns.is_empty()).then_some((ns, key))
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

/// Check the operations of a batch: count, keys, sizes, ttls, no key twice.
pub(crate) fn validate_ops(namespace: &str, ops: &[Op]) -> Result<(), StoreError> {
    validate_namespace(namespace)?;
    if ops.is_empty() {
        return Err(StoreError::InvalidBatch("no operations".into()));
    }
    if ops.len() > MAX_BATCH_OPS {
        return Err(StoreError::BatchTooLarge { ops: ops.len(), limit: MAX_BATCH_OPS });
    }
    let mut seen = HashSet::with_capacity(ops.len());
    for op in ops {
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
    Ok(())
}

/// Check the arguments of a listing.
pub(crate) fn validate_listing(namespace: &str, prefix: &str, limit: usize) -> Result<(), StoreError> {
    validate_namespace(namespace)?;
    if prefix.len() > MAX_KEY_LEN {
        return Err(StoreError::InvalidKey(format!("prefix of {} bytes is over {MAX_KEY_LEN}", prefix.len())));
    }
    if limit == 0 || limit > MAX_LIST_LIMIT {
        return Err(StoreError::InvalidListing(format!("limit must be 1 to {MAX_LIST_LIMIT}, not {limit}")));
    }
    Ok(())
}

/// Merge per-shard listings (each in key order, each at most `limit + 1` long) into one page.
/// A key listed twice (two nodes that disagreed about the map for a moment, both holding the
/// same moved entry) is kept once, at its highest version.
pub(crate) fn merge_page(mut entries: Vec<Entry>, limit: usize) -> Page {
    entries.sort_unstable_by(|a, b| a.key.cmp(&b.key).then(b.version.cmp(&a.version)));
    entries.dedup_by(|later, earlier| later.key == earlier.key);
    let cursor = if entries.len() > limit {
        entries.truncate(limit);
        entries.last().map(|e| crate::cursor_after(&e.key))
    } else {
        None
    };
    Page { entries, cursor }
}

/// Decode a listing cursor (the hex of the last key of the previous page).
pub(crate) fn decode_cursor(cursor: &str) -> Result<String, StoreError> {
    hex::decode(cursor)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .ok_or_else(|| StoreError::InvalidListing("malformed cursor: pass the one the previous page returned".into()))
}

fn read_seq(db: &DB, n: u32) -> Result<u64, StoreError> {
    match db.get(SEQ_KEY)? {
        Some(bytes) => Ok(u64::from_be_bytes(
            bytes.as_slice().try_into().map_err(|_| StoreError::Corrupt(format!("shard {n} counter")))?,
        )),
        None => Ok(0),
    }
}

impl Store {
    fn rocks_options() -> Options {
        let mut options = Options::default();
        options.create_if_missing(true);
        options.set_compression_type(rocksdb::DBCompressionType::Lz4);
        options
    }

    fn open_shard(&self, n: u32) -> Result<Arc<Shard>, StoreError> {
        let path = self.dir.join(format!("shard-{n}"));
        let db = DB::open(&self.options, &path)?;
        let seq = read_seq(&db, n)?;
        Ok(Arc::new(Shard {
            id: n,
            db,
            path,
            seq: Mutex::new(seq),
            exporting: AtomicBool::new(false),
            export: Mutex::new(None),
            queue: Mutex::new(Vec::new()),
            draining: AtomicBool::new(false),
        }))
    }

    fn empty(dir: &Path, node: &str, durability: Durability) -> Result<Store, StoreError> {
        std::fs::create_dir_all(dir)?;
        let mut write_options = WriteOptions::default();
        write_options.set_sync(durability == Durability::Sync);
        Ok(Store {
            dir: dir.to_owned(),
            node: node.to_owned(),
            options: Self::rocks_options(),
            write_options,
            shards: RwLock::new(BTreeMap::new()),
            map: RwLock::new(Arc::new(ShardMap { epoch: 0, shards: Vec::new() })),
        })
    }

    /// Open (or create) a standalone store under `dir` that serves all of its `config.shards`
    /// shards itself, one RocksDB per shard in `dir/shard-<n>`.
    ///
    /// A standalone store remembers its shard count; opening it with another count is refused
    /// (that would hide keys: the shard count of a cluster changes through moves, see
    /// [`crate::node`]).
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
                        "the store in {} has {existing} shards, not {}; the shard count of a store changes by \
                         moving keys (`shoal store scale-out`), not by reopening it",
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
        let store = Store::empty(dir, "local", config.durability)?;
        {
            let mut shards = store.shards.write();
            for n in 0..config.shards {
                shards.insert(n, store.open_shard(n)?);
            }
        }
        *store.map.write() = Arc::new(ShardMap::local(config.shards, "local"));
        tracing::info!(dir = %dir.display(), shards = config.shards, durability = ?config.durability, "state store open");
        Ok(Arc::new(store))
    }

    /// Open the shards found under `dir` (`shard-<n>`) as store node `node`. The node serves
    /// nothing until it is given a map ([`Store::set_map`]).
    pub fn open_node(dir: &Path, node: &str, durability: Durability) -> Result<Arc<Store>, StoreError> {
        let store = Store::empty(dir, node, durability)?;
        {
            let mut shards = store.shards.write();
            for item in std::fs::read_dir(dir)? {
                let name = item?.file_name();
                let Some(n) = name.to_str().and_then(|n| n.strip_prefix("shard-")).and_then(|n| n.parse::<u32>().ok())
                else {
                    continue;
                };
                shards.insert(n, store.open_shard(n)?);
            }
        }
        tracing::info!(dir = %dir.display(), node, shards = ?store.held(), durability = ?durability, "store node open");
        Ok(Arc::new(store))
    }

    /// Where the store lives.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// This node's name in the shard map.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// The shards this node holds on disk (served or not).
    pub fn held(&self) -> Vec<u32> {
        self.shards.read().keys().copied().collect()
    }

    /// The shard map this node serves by.
    pub fn shard_map(&self) -> Arc<ShardMap> {
        self.map.read().clone()
    }

    /// Serve by `map` from now on, if it is newer than the current one; returns whether it was.
    pub fn set_map(&self, map: ShardMap) -> bool {
        let mut current = self.map.write();
        if map.epoch <= current.epoch {
            return false;
        }
        let epoch = map.epoch;
        *current = Arc::new(map);
        drop(current);
        // An export whose target map is now in force is over: its keys belong elsewhere (and are
        // refused as `NotOwner`), so the freeze has nothing left to protect.
        let shards: Vec<Arc<Shard>> = self.shards.read().values().cloned().collect();
        for shard in shards {
            let ended = shard.export.lock().as_ref().is_some_and(|e| e.target.epoch <= epoch);
            if ended {
                self.end_export(shard.id);
            }
        }
        true
    }

    /// The shard of `namespace/key` under this node's map.
    pub fn shard_of(&self, namespace: &str, key: &str) -> u32 {
        self.map.read().shard_of(namespace, key)
    }

    fn shard(&self, n: u32) -> Option<Arc<Shard>> {
        self.shards.read().get(&n).cloned()
    }

    /// The shard `namespace/key` belongs to under `map`, if `map` gives that shard to this node.
    fn owner_in(&self, map: &ShardMap, namespace: &str, key: &str) -> Result<u32, StoreError> {
        let n = map.shard_of(namespace, key);
        if map.node_of(n) == Some(self.node.as_str()) {
            Ok(n)
        } else {
            Err(StoreError::NotOwner { shard: n, epoch: map.epoch })
        }
    }

    /// The shard `namespace/key` belongs to, if this node serves it.
    fn owned(&self, namespace: &str, key: &str) -> Result<Arc<Shard>, StoreError> {
        let n = self.owner_in(&self.map.read(), namespace, key)?;
        self.shard(n).ok_or_else(|| StoreError::Config(format!("shard {n} is assigned here but not on disk")))
    }

    /// Whether shard `shard` of this node still serves `namespace/key` under `map`.
    ///
    /// Writes check it again under the shard's lock: a writer that found the shard its owner may
    /// have waited for the lock while the map switched and the export ended (which takes the same
    /// lock, after the switch), and a write it made then would be acknowledged on a copy that is no
    /// longer served.
    fn still_owns(&self, map: &ShardMap, shard: u32, namespace: &str, key: &str) -> Result<(), StoreError> {
        match self.owner_in(map, namespace, key)? {
            n if n == shard => Ok(()),
            n => Err(StoreError::NotOwner { shard: n, epoch: map.epoch }),
        }
    }

    /// The live entry under `namespace/key`, if any.
    pub fn get(&self, namespace: &str, key: &str) -> Result<Option<Entry>, StoreError> {
        validate_namespace(namespace)?;
        validate_key(key)?;
        let epoch = self.map.read().epoch;
        let shard = self.owned(namespace, key)?;
        if shard.frozen(namespace, key) {
            return Err(StoreError::Moving);
        }
        let entry = match shard.db.get_pinned(db_key(namespace, key))? {
            Some(stored) => decode(key.to_owned(), &stored, now_ms())?,
            None => None,
        };
        // The map may have switched while this read ran: the key may have moved (and been written
        // at its new shard, or cleaned up here), so what was read may be stale. Ask again.
        let map = self.map.read();
        if map.epoch != epoch {
            self.still_owns(&map, shard.id, namespace, key)?;
        }
        Ok(entry)
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

    /// Check the conditions of `ops` without writing anything (a cross-node batch checks every
    /// node first).
    pub fn check(&self, namespace: &str, ops: &[Op]) -> Result<(), StoreError> {
        validate_ops(namespace, ops)?;
        let now = now_ms();
        for op in ops {
            let shard = self.owned(namespace, op.key())?;
            if shard.frozen(namespace, op.key()) {
                return Err(StoreError::Moving);
            }
            check_condition(&shard, namespace, op, now)?;
        }
        Ok(())
    }

    /// Apply `ops` in `namespace`; returns the version each operation wrote, in order. Either
    /// every condition holds and everything is written, or nothing is (see the crate doc for what
    /// holds when the keys span shards).
    pub fn batch(&self, namespace: &str, ops: Vec<Op>) -> Result<Vec<u64>, StoreError> {
        validate_ops(namespace, &ops)?;
        let mut shard_of = Vec::with_capacity(ops.len());
        for op in &ops {
            shard_of.push(self.owned(namespace, op.key())?);
        }
        if shard_of.iter().all(|s| s.id == shard_of[0].id) {
            let shard = shard_of.swap_remove(0);
            return self.commit_grouped(&shard, namespace, ops);
        }
        let mut involved: Vec<Arc<Shard>> = shard_of.clone();
        involved.sort_unstable_by_key(|s| s.id);
        involved.dedup_by_key(|s| s.id);
        // Lock in ascending order so that two batches never wait for each other.
        let mut guards: Vec<(&Arc<Shard>, MutexGuard<'_, u64>)> = involved.iter().map(|s| (s, s.seq.lock())).collect();

        let now = now_ms();
        let map = self.map.read().clone();
        for (op, shard) in ops.iter().zip(&shard_of) {
            // Checked under the lock: a freeze and the end of an export take the same lock.
            self.still_owns(&map, shard.id, namespace, op.key())?;
            if shard.frozen(namespace, op.key()) {
                return Err(StoreError::Moving);
            }
            check_condition(shard, namespace, op, now)?;
        }

        let mut versions = vec![0u64; ops.len()];
        for (shard, guard) in &mut guards {
            let mut batch = WriteBatch::default();
            let mut seq = **guard;
            let mine: Vec<&Op> =
                ops.iter().enumerate().filter(|(i, _)| shard_of[*i].id == shard.id).map(|(_, op)| op).collect();
            for (i, op) in ops.iter().enumerate().filter(|(i, _)| shard_of[*i].id == shard.id) {
                seq += 1;
                versions[i] = seq;
                stage(&mut batch, db_key(namespace, op.key()), op, seq, now);
            }
            batch.put(SEQ_KEY, seq.to_be_bytes());
            shard.db.write_opt(batch, &self.write_options)?;
            **guard = seq;
            shard.mark_dirty(namespace, mine);
        }
        Ok(versions)
    }

    /// Commit a batch of one shard through the shard's queue: enqueue it, take the shard's lock,
    /// and commit whatever is queued by then (this batch, unless an earlier holder of the lock
    /// already did, and the batches queued behind it) as one RocksDB write.
    fn commit_grouped(&self, shard: &Arc<Shard>, namespace: &str, ops: Vec<Op>) -> Result<Vec<u64>, StoreError> {
        let (done, result) = std::sync::mpsc::sync_channel(1);
        shard.queue.lock().push(Pending { namespace: namespace.to_owned(), ops, done: Done::Thread(done) });
        {
            let mut guard = shard.seq.lock();
            let group = std::mem::take(&mut *shard.queue.lock());
            if !group.is_empty() {
                self.commit_group(shard, &mut guard, group);
            }
        }
        result.recv().map_err(|_| StoreError::Config("the commit of this write was abandoned".into()))?
    }

    /// [`Store::batch`] for async callers. A batch of one shard (the common case) waits in the
    /// shard's commit queue without holding a thread: one blocking task per shard drains the
    /// queue, a group per RocksDB write, for as long as writers keep it filled. A batch across
    /// shards runs [`Store::batch`] on the blocking pool.
    pub async fn batch_async(self: &Arc<Self>, namespace: &str, ops: Vec<Op>) -> Result<Vec<u64>, StoreError> {
        validate_ops(namespace, &ops)?;
        let mut shard = None;
        for op in &ops {
            let owner = self.owned(namespace, op.key())?;
            match &shard {
                Some(s) if !Arc::ptr_eq(s, &owner) => {
                    let store = self.clone();
                    let namespace = namespace.to_owned();
                    return tokio::task::spawn_blocking(move || store.batch(&namespace, ops))
                        .await
                        .map_err(|e| StoreError::Config(format!("the write was abandoned: {e}")))?;
                }
                Some(_) => {}
                None => shard = Some(owner),
            }
        }
        let Some(shard) = shard else { return Ok(Vec::new()) };
        let (done, result) = tokio::sync::oneshot::channel();
        shard.queue.lock().push(Pending { namespace: namespace.to_owned(), ops, done: Done::Task(done) });
        if !shard.draining.swap(true, Ordering::AcqRel) {
            let store = self.clone();
            tokio::task::spawn_blocking(move || store.drain(&shard));
        }
        result.await.map_err(|_| StoreError::Config("the commit of this write was abandoned".into()))?
    }

    /// Commit the shard's queue, group after group, until it stays empty; the shard's `draining`
    /// flag is set while this runs (a writer that sets it starts the next drain).
    fn drain(&self, shard: &Shard) {
        /// Should a commit panic, the next writer starts a new drain instead of waiting forever
        /// on a flag nobody clears.
        struct Reset<'a>(&'a AtomicBool);
        impl Drop for Reset<'_> {
            fn drop(&mut self) {
                if std::thread::panicking() {
                    self.0.store(false, Ordering::Release);
                }
            }
        }
        let _reset = Reset(&shard.draining);
        loop {
            {
                let mut guard = shard.seq.lock();
                let group = std::mem::take(&mut *shard.queue.lock());
                if !group.is_empty() {
                    self.commit_group(shard, &mut guard, group);
                    continue;
                }
            }
            shard.draining.store(false, Ordering::Release);
            // A writer that queued after the take but saw the flag still set left its batch to
            // this drain: take over again unless a new drain already has.
            if shard.queue.lock().is_empty() || shard.draining.swap(true, Ordering::AcqRel) {
                return;
            }
        }
    }

    /// Check, version and write a group of single-shard batches under the shard's lock; answers
    /// every member. A member whose condition fails gets its error and writes nothing; the others
    /// are written together.
    fn commit_group(&self, shard: &Shard, seq: &mut MutexGuard<'_, u64>, group: Vec<Pending>) {
        let now = now_ms();
        // Read under the lock: an export ends (under this lock) only after the map switched.
        let map = self.map.read().clone();
        let mut overlay = Overlay::new();
        let mut next = **seq;
        let mut batch = WriteBatch::default();
        let mut accepted: Vec<(Pending, Vec<u64>)> = Vec::with_capacity(group.len());
        'members: for pending in group {
            // Keys are unique within a batch (validated), so only earlier members can have
            // written a key this one checks.
            for op in &pending.ops {
                let k = db_key(&pending.namespace, op.key());
                // Checked under the lock: a freeze and the end of an export take the same lock.
                let checked = self.still_owns(&map, shard.id, &pending.namespace, op.key()).and_then(|()| {
                    if shard.frozen(&pending.namespace, op.key()) {
                        return Err(StoreError::Moving);
                    }
                    let current = match overlay.get(&k) {
                        Some(written) => written.unwrap_or(0),
                        None => current_version(shard, &k, now)?,
                    };
                    condition(&pending.namespace, op, current)
                });
                if let Err(e) = checked {
                    pending.done.send(Err(e));
                    continue 'members;
                }
            }
            let mut versions = Vec::with_capacity(pending.ops.len());
            for op in &pending.ops {
                next += 1;
                versions.push(next);
                let k = db_key(&pending.namespace, op.key());
                overlay.insert(k.clone(), matches!(op, Op::Put { .. }).then_some(next));
                stage(&mut batch, k, op, next, now);
            }
            accepted.push((pending, versions));
        }
        if accepted.is_empty() {
            return;
        }
        batch.put(SEQ_KEY, next.to_be_bytes());
        if let Err(e) = shard.db.write_opt(batch, &self.write_options) {
            for (pending, _) in accepted {
                pending.done.send(Err(StoreError::Config(format!("storage: {e}"))));
            }
            return;
        }
        **seq = next;
        for (pending, _) in &accepted {
            shard.mark_dirty(&pending.namespace, &pending.ops);
        }
        for (pending, versions) in accepted {
            pending.done.send(Ok(versions));
        }
    }

    /// Live entries of `namespace` whose keys start with `prefix`, after `after`, from the shards
    /// this node serves: at most `limit + 1` per shard (one more than a page tells whether another
    /// follows), unsorted across shards. Only keys each shard owns under the map are returned
    /// (copies left behind by a move are not).
    pub fn list_raw(
        &self,
        namespace: &str,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Entry>, StoreError> {
        validate_listing(namespace, prefix, limit)?;
        let map = self.map.read().clone();
        let full_prefix = db_key(namespace, prefix);
        let mut start = full_prefix.clone();
        if let Some(after) = after {
            let mut k = db_key(namespace, after);
            k.push(0);
            start = start.max(k);
        }
        let now = now_ms();
        let skip = namespace.len() + 1;
        let mut entries = Vec::new();
        let shards: Vec<Arc<Shard>> =
            self.shards.read().values().filter(|s| map.node_of(s.id) == Some(self.node.as_str())).cloned().collect();
        for shard in shards {
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
                if map.shard_of(namespace, &key) != shard.id {
                    continue;
                }
                if let Some(entry) = decode(key, &v, now)? {
                    entries.push(entry);
                    taken += 1;
                    if taken > limit {
                        break;
                    }
                }
            }
        }
        Ok(entries)
    }

    /// One page of the live entries of `namespace` whose keys start with `prefix`, in key order,
    /// after `cursor` (from the previous page), from every shard this node serves.
    pub fn list(&self, namespace: &str, prefix: &str, cursor: Option<&str>, limit: usize) -> Result<Page, StoreError> {
        let after = cursor.map(decode_cursor).transpose()?;
        let entries = self.list_raw(namespace, prefix, after.as_deref(), limit)?;
        Ok(merge_page(entries, limit))
    }

    /// Delete every expired entry; returns how many. Each shard is scanned; an entry is deleted
    /// under its shard's lock only if it is still the expired one that was seen.
    pub fn sweep_expired(&self) -> Result<usize, StoreError> {
        Ok(self.sweep_expired_entries()?.0)
    }

    /// [`Store::sweep_expired`]: how many were deleted, and `(namespace, key, version)` of each
    /// deleted entry this node owns under its map (copies a move left behind are deleted too,
    /// not listed).
    pub fn sweep_expired_entries(&self) -> Result<(usize, Vec<(String, String, u64)>), StoreError> {
        let mut count = 0;
        let mut deleted = Vec::new();
        let map = self.map.read().clone();
        let shards: Vec<Arc<Shard>> = self.shards.read().values().cloned().collect();
        for shard in shards {
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
            let mut gone = Vec::new();
            for (k, version) in expired {
                if let Some(v) = shard.db.get_pinned(&k)? {
                    let (current, expires_at) = header(&v)?;
                    if current == version && !live(expires_at, now) {
                        batch.delete(&k);
                        gone.push((k, version));
                    }
                }
            }
            shard.db.write_opt(batch, &self.write_options)?;
            drop(guard);
            count += gone.len();
            for (k, version) in gone {
                match split_db_key(&k) {
                    Some((ns, key))
                        if map.shard_of(ns, key) == shard.id && map.node_of(shard.id) == Some(self.node.as_str()) =>
                    {
                        deleted.push((ns.to_owned(), key.to_owned(), version));
                    }
                    _ => {}
                }
            }
        }
        Ok((count, deleted))
    }

    // ----- moves -----

    /// Create shard `n` empty (wiping what an aborted move may have left there).
    pub fn create_shard(&self, n: u32) -> Result<(), StoreError> {
        self.drop_shard(n)?;
        let shard = self.open_shard(n)?;
        self.shards.write().insert(n, shard);
        Ok(())
    }

    /// Close shard `n` and delete its files.
    pub fn drop_shard(&self, n: u32) -> Result<(), StoreError> {
        let shard = self.shards.write().remove(&n);
        let path = match shard {
            Some(shard) => {
                let path = shard.path.clone();
                // Wait for in-flight users to let go of the database before deleting its files.
                let mut shard = shard;
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
                loop {
                    match Arc::try_unwrap(shard) {
                        Ok(s) => {
                            drop(s);
                            break;
                        }
                        Err(s) if std::time::Instant::now() < deadline => {
                            shard = s;
                            std::thread::sleep(std::time::Duration::from_millis(5));
                        }
                        Err(_) => return Err(StoreError::Config(format!("shard {n} is still in use"))),
                    }
                }
                path
            }
            None => self.dir.join(format!("shard-{n}")),
        };
        match std::fs::remove_dir_all(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Start exporting shard `n` towards `target`: from now on, writes of keys that move are
    /// remembered for [`Store::take_dirty`].
    pub fn begin_export(&self, n: u32, target: Arc<ShardMap>) -> Result<(), StoreError> {
        let shard = self.shard(n).ok_or_else(|| StoreError::Config(format!("no shard {n} here")))?;
        let _guard = shard.seq.lock();
        *shard.export.lock() = Some(Export { target, dirty: HashSet::new(), frozen: false });
        shard.exporting.store(true, Ordering::Release);
        Ok(())
    }

    /// Every entry of shard `n` that moves under the export's target, in chunks of about
    /// `chunk_bytes`, passed to `sink` with the shard each chunk's entries go to. Reads a snapshot;
    /// writes made meanwhile are in the dirty set.
    pub fn export_scan(
        &self,
        n: u32,
        chunk_bytes: usize,
        mut sink: impl FnMut(u32, Vec<RawEntry>) -> Result<(), StoreError>,
    ) -> Result<u64, StoreError> {
        let shard = self.shard(n).ok_or_else(|| StoreError::Config(format!("no shard {n} here")))?;
        let target = shard
            .export
            .lock()
            .as_ref()
            .map(|e| e.target.clone())
            .ok_or_else(|| StoreError::Config(format!("shard {n} is not exporting")))?;
        let snapshot = shard.db.snapshot();
        let mut chunks: BTreeMap<u32, (Vec<RawEntry>, usize)> = BTreeMap::new();
        let mut moved = 0u64;
        for item in snapshot.iterator(IteratorMode::Start) {
            let (k, v) = item?;
            let Some((ns, key)) = split_db_key(&k) else { continue };
            let to = target.shard_of(ns, key);
            if to == n {
                continue;
            }
            moved += 1;
            let chunk = chunks.entry(to).or_default();
            chunk.1 += k.len() + v.len();
            chunk.0.push((k.to_vec(), Some(v.to_vec())));
            if chunk.1 >= chunk_bytes {
                let (entries, _) = std::mem::take(chunk);
                sink(to, entries)?;
            }
        }
        for (to, (entries, _)) in chunks {
            if !entries.is_empty() {
                sink(to, entries)?;
            }
        }
        Ok(moved)
    }

    /// The current state of every moving key written since the last call, grouped by the shard it
    /// goes to; `freeze` also freezes the moving keys (atomically with taking the last writes).
    pub fn take_dirty(&self, n: u32, freeze: bool) -> Result<BTreeMap<u32, Vec<RawEntry>>, StoreError> {
        let shard = self.shard(n).ok_or_else(|| StoreError::Config(format!("no shard {n} here")))?;
        let guard = shard.seq.lock();
        let (dirty, target) = {
            let mut export = shard.export.lock();
            let export = export.as_mut().ok_or_else(|| StoreError::Config(format!("shard {n} is not exporting")))?;
            if freeze {
                export.frozen = true;
            }
            (std::mem::take(&mut export.dirty), export.target.clone())
        };
        // Reading under the write lock: every write before it is in `dirty` and on disk.
        let mut out: BTreeMap<u32, Vec<RawEntry>> = BTreeMap::new();
        for k in dirty {
            let Some((ns, key)) = split_db_key(&k) else { continue };
            let to = target.shard_of(ns, key);
            let stored = shard.db.get(&k)?;
            out.entry(to).or_default().push((k, stored));
        }
        drop(guard);
        Ok(out)
    }

    /// The epoch of the map shard `n` exports towards, if it exports.
    pub fn exporting_towards(&self, n: u32) -> Option<u64> {
        self.export_target(n).map(|t| t.epoch)
    }

    /// The map shard `n` exports towards, if it exports.
    pub fn export_target(&self, n: u32) -> Option<Arc<ShardMap>> {
        self.shard(n).and_then(|s| s.export.lock().as_ref().map(|e| e.target.clone()))
    }

    /// Stop exporting shard `n` (the move finished or was given up); its keys are writable again.
    pub fn end_export(&self, n: u32) {
        if let Some(shard) = self.shard(n) {
            let _guard = shard.seq.lock();
            shard.exporting.store(false, Ordering::Release);
            *shard.export.lock() = None;
        }
    }

    /// Write entries moved in from another shard into shard `n`, keeping their versions; the
    /// shard's counter is raised past them so that versions stay monotonic per key.
    pub fn ingest(&self, n: u32, entries: Vec<RawEntry>) -> Result<usize, StoreError> {
        let shard = self.shard(n).ok_or_else(|| StoreError::Config(format!("no shard {n} here")))?;
        let mut guard = shard.seq.lock();
        let mut seq = *guard;
        let mut batch = WriteBatch::default();
        let count = entries.len();
        for (k, stored) in entries {
            match stored {
                Some(v) => {
                    let (version, _) = header(&v)?;
                    seq = seq.max(version);
                    batch.put(&k, v);
                }
                None => batch.delete(&k),
            }
        }
        batch.put(SEQ_KEY, seq.to_be_bytes());
        shard.db.write_opt(batch, &self.write_options)?;
        *guard = seq;
        Ok(count)
    }

    /// Delete from shard `n` every entry it does not own under the current map (what a finished
    /// move left behind, or an aborted one brought in); returns how many.
    pub fn cleanup(&self, n: u32) -> Result<usize, StoreError> {
        let Some(shard) = self.shard(n) else { return Ok(0) };
        let map = self.map.read().clone();
        if map.shard_count() == 0 {
            return Ok(0);
        }
        let mut strays = Vec::new();
        for item in shard.db.iterator(IteratorMode::Start) {
            let (k, _) = item?;
            if let Some((ns, key)) = split_db_key(&k)
                && map.shard_of(ns, key) != n
            {
                strays.push(k);
            }
        }
        let count = strays.len();
        for chunk in strays.chunks(1000) {
            let _guard = shard.seq.lock();
            let mut batch = WriteBatch::default();
            for k in chunk {
                batch.delete(k);
            }
            shard.db.write_opt(batch, &self.write_options)?;
        }
        Ok(count)
    }

    /// Number of keys in shard `n` (RocksDB's estimate).
    pub fn estimate_keys(&self, n: u32) -> u64 {
        self.shard(n).and_then(|s| s.db.property_int_value("rocksdb.estimate-num-keys").ok().flatten()).unwrap_or(0)
    }
}

/// Add `op` on RocksDB key `k` to `batch` at `version` (a put's TTL counts from `now`).
fn stage(batch: &mut WriteBatch, k: Vec<u8>, op: &Op, version: u64, now: u64) {
    match op {
        Op::Put { value, options, .. } => {
            let expires_at =
                options.ttl.map_or(0, |t| now.saturating_add(u64::try_from(t.as_millis()).unwrap_or(u64::MAX)).max(1));
            batch.put(k, encode(version, expires_at, value));
        }
        Op::Delete { .. } => batch.delete(k),
    }
}

/// The live version of RocksDB key `k` in `shard` (0: absent or expired).
fn current_version(shard: &Shard, k: &[u8], now: u64) -> Result<u64, StoreError> {
    Ok(match shard.db.get_pinned(k)? {
        Some(stored) => {
            let (version, expires_at) = header(&stored)?;
            if live(expires_at, now) { version } else { 0 }
        }
        None => 0,
    })
}

fn check_condition(shard: &Shard, namespace: &str, op: &Op, now: u64) -> Result<(), StoreError> {
    let current = current_version(shard, &db_key(namespace, op.key()), now)?;
    condition(namespace, op, current)
}

/// Whether `op`'s condition holds when the key's live version is `current` (0: absent).
fn condition(namespace: &str, op: &Op, current: u64) -> Result<(), StoreError> {
    let expected = match op {
        Op::Put { options, .. } => options.version,
        Op::Delete { version, .. } => *version,
    };
    match expected {
        Some(expected) if expected != current => {
            Err(StoreError::Conflict { key: op.key().to_owned(), expected, actual: current })
        }
        None if current == 0 && matches!(op, Op::Delete { .. }) => {
            Err(StoreError::NotFound { namespace: namespace.to_owned(), key: op.key().to_owned() })
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer that found its shard the owner of a key, then waited for the shard's lock while
    /// the key moved away (freeze, switch of the map, end of the export), must be refused: its
    /// write would be acknowledged on a copy nobody reads any more.
    #[test]
    fn a_write_that_waited_out_a_move_is_refused_and_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), StoreConfig { shards: 2, durability: Durability::Wal }).unwrap();
        let target =
            ShardMap { epoch: 2, shards: vec!["local".to_owned(), "local".to_owned(), "elsewhere".to_owned()] };
        let key = (0..10_000)
            .map(|i| format!("k{i}"))
            .find(|k| store.shard_of("app", k) == 0 && target.shard_of("app", k) == 2)
            .expect("a key that moves from shard 0 to shard 2");
        store.put("app", &key, b"before", PutOptions::default()).unwrap();

        // The writer checked ownership under the old map...
        let shard = store.owned("app", &key).unwrap();
        // ...then the move froze the key, switched the map and ended the export.
        store.begin_export(0, Arc::new(target.clone())).unwrap();
        store.take_dirty(0, true).unwrap();
        assert!(store.set_map(target));
        assert!(store.export_target(0).is_none(), "the new map ends the export");

        let op = Op::Put { key: key.clone(), value: b"after".to_vec(), options: PutOptions::default() };
        match store.commit_grouped(&shard, "app", vec![op]) {
            Err(StoreError::NotOwner { shard: 2, epoch: 2 }) => {}
            other => panic!("expected NotOwner for shard 2 at epoch 2, got {other:?}"),
        }
        let stored = shard.db.get(db_key("app", &key)).unwrap().expect("the old copy is still there");
        assert_eq!(&stored[HEADER_LEN..], b"before", "nothing was written");
        // And the node itself now sends the key's readers and writers elsewhere.
        assert!(matches!(store.get("app", &key), Err(StoreError::NotOwner { shard: 2, .. })));
    }
}
