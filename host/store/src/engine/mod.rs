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

mod codec;
mod commit;
mod moves;
mod pipeline;
mod replica;
mod snapshot;

pub use self::replica::Followed;

use self::codec::*;
pub(crate) use self::codec::{decode_cursor, merge_page, validate_listing, validate_ops};
use self::commit::Pending;
use self::moves::Export;
use crate::{
    Consistency, Durability, Entry, MAX_BATCH_OPS, MAX_KEY_LEN, MAX_LIST_LIMIT, MAX_SHARDS, MAX_VALUE_LEN, Op, Page,
    PutOptions, ShardMap, StoreConfig, StoreError, validate_key, validate_namespace, validate_ttl,
};

/// The shard-local key of the version counter; no namespace starts with a NUL byte.
const SEQ_KEY: &[u8] = b"\0seq";
/// The file that records a standalone store's shard count.
const SHARDS_FILE: &str = "SHARDS";

/// A raw stored entry as it moves between shards: the RocksDB key (`ns/key`) and the stored bytes
/// (header and value), or `None` when the key was deleted.
pub type RawEntry = (Vec<u8>, Option<Vec<u8>>);

struct Shard {
    id: u32,
    db: DB,
    path: PathBuf,
    /// The last version this shard handed out; its lock serializes the shard's writes. Taken
    /// through [`Shard::lock`], which also waits for the leader's appends in flight.
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
    /// Signalled when a batch is queued: a drain waiting on appends in flight forms the next
    /// group right away.
    queued: tokio::sync::Notify,
    /// The shard's log when it is replicated ([`Store::replicate_shard`]): then every write goes
    /// through it ([`Shard::write`]).
    replica: RwLock<Option<Arc<replica::Replica>>>,
}

/// One node's shards.
pub struct Store {
    dir: PathBuf,
    node: String,
    options: Options,
    durability: Durability,
    write_options: WriteOptions,
    shards: RwLock<BTreeMap<u32, Arc<Shard>>>,
    map: RwLock<Arc<ShardMap>>,
}

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
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
            queued: tokio::sync::Notify::new(),
            replica: RwLock::new(None),
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
            durability,
            write_options,
            shards: RwLock::new(BTreeMap::new()),
            map: RwLock::new(Arc::new(ShardMap::default())),
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

    /// Serve by `map` from now on, if it is newer than the current one (by term, then epoch:
    /// [`ShardMap::newer_than`]); returns whether it was.
    pub fn set_map(&self, map: ShardMap) -> bool {
        let mut current = self.map.write();
        if !map.newer_than(&current) {
            return false;
        }
        let map = Arc::new(map);
        *current = map.clone();
        drop(current);
        // An export whose target map is now in force is over: its keys belong elsewhere (and are
        // refused as `NotOwner`), so the freeze has nothing left to protect. So is one whose
        // target is a deposed leader's, once a newer leader's map is served: that move will never
        // switch, and the keys are served by the new map.
        let shards: Vec<Arc<Shard>> = self.shards.read().values().cloned().collect();
        for shard in shards {
            let ended = shard.export.lock().as_ref().is_some_and(|e| !e.target.newer_than(&map));
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

    /// The shard `namespace/key` belongs to under `map`, if `map` gives that shard to this node
    /// (as its only copy, or as a member of its replicas).
    fn owner_in(&self, map: &ShardMap, namespace: &str, key: &str) -> Result<u32, StoreError> {
        let n = map.shard_of(namespace, key);
        if map.holds(n, &self.node) { Ok(n) } else { Err(StoreError::NotOwner { shard: n, epoch: map.epoch }) }
    }

    /// The shard `namespace/key` belongs to, if this node serves it. A shard the map replicates
    /// is served only once it is replicated here ([`Store::replicate_shard`]): before, a write
    /// would reach this copy alone.
    fn owned(&self, namespace: &str, key: &str) -> Result<Arc<Shard>, StoreError> {
        let map = self.map.read().clone();
        let n = self.owner_in(&map, namespace, key)?;
        let shard =
            self.shard(n).ok_or_else(|| StoreError::Config(format!("shard {n} is assigned here but not on disk")))?;
        if map.replicated(n) && shard.replica.read().is_none() {
            return Err(StoreError::NotLeader { shard: n });
        }
        Ok(shard)
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
        self.get_at(namespace, key, Consistency::Linearizable)
    }

    /// [`Store::get`] at `consistency`: a replicated shard's copy here answers a linearizable
    /// read only while this node leads it.
    pub fn get_at(&self, namespace: &str, key: &str, consistency: Consistency) -> Result<Option<Entry>, StoreError> {
        validate_namespace(namespace)?;
        validate_key(key)?;
        let before = self.map.read().clone();
        let shard = self.owned(namespace, key)?;
        if consistency == Consistency::Linearizable && !shard.serves_linearizable() {
            return Err(StoreError::NotLeader { shard: shard.id });
        }
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
        if !Arc::ptr_eq(&map, &before) {
            self.still_owns(&map, shard.id, namespace, key)?;
        }
        Ok(entry)
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
        self.list_raw_of(namespace, prefix, after, limit, &[])
    }

    /// [`Store::list_raw`] of the shards `only` names (every one served here, else `NotOwner`, or
    /// `NotLeader` for a replicated one this node does not lead); empty: every shard served here.
    pub fn list_raw_of(
        &self,
        namespace: &str,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
        only: &[u32],
    ) -> Result<Vec<Entry>, StoreError> {
        validate_listing(namespace, prefix, limit)?;
        let map = self.map.read().clone();
        for &n in only {
            let shard = self.shard(n).filter(|_| map.holds(n, &self.node));
            match shard {
                None => return Err(StoreError::NotOwner { shard: n, epoch: map.epoch }),
                Some(s) if !s.serves_linearizable() => return Err(StoreError::NotLeader { shard: n }),
                Some(_) => {}
            }
        }
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
            self.shards.read().values().filter(|s| map.holds(s.id, &self.node)).cloned().collect();
        // A replicated shard is listed by its leader (clients list every shard at its leader).
        let shards: Vec<Arc<Shard>> = shards
            .into_iter()
            .filter(|s| s.serves_linearizable() && (only.is_empty() || only.contains(&s.id)))
            .collect();
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
            // A replicated shard's expired entries are deleted by its leader, through its log.
            if shard.replica.read().as_ref().is_some_and(|r| r.leading().is_none()) {
                continue;
            }
            let now = now_ms();
            let mut expired = Vec::new();
            for item in shard.db.iterator(IteratorMode::Start) {
                let (k, v) = item?;
                // The shard's own keys (`\0seq`, `\0applied`) are not entries.
                if k.first() == Some(&0) {
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
            let guard = shard.lock();
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
            match shard.write(batch, &self.write_options) {
                Ok(()) => {}
                // It stopped leading meanwhile: the next leader sweeps.
                Err(StoreError::NotLeader { .. }) => continue,
                Err(e) => return Err(e),
            }
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
        let target = ShardMap {
            term: 0,
            epoch: 2,
            shards: vec!["local".to_owned(), "local".to_owned(), "elsewhere".to_owned()],
            followers: Vec::new(),
        };
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
