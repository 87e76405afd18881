//! The move primitives of one node: create and drop shards, export the keys that move under a
//! target map (a snapshot copy, then the writes made meanwhile, remembered as a dirty set),
//! freeze the moving keys, ingest what another shard exports, and clean up what moved away.

use super::replica::FROZEN_KEY;
use super::*;

pub(super) struct Export {
    /// The map the keys move to.
    pub(super) target: Arc<ShardMap>,
    /// RocksDB keys of moving keys written since the export began (or since the last drain).
    pub(super) dirty: HashSet<Vec<u8>>,
    /// Moving keys are refused until the export ends.
    pub(super) frozen: bool,
    /// The leadership this copy held of the (replicated) shard when the export began
    /// ([`Shard::leadership`]): only that leader saw every write since, so only it may freeze.
    /// `None`: unreplicated, or a freeze taken from the log ([`Shard::load_frozen`]).
    pub(super) lead: Option<u64>,
}

impl Shard {
    /// Remember the writes of `ops` whose keys move under the export in progress (nothing when
    /// the shard does not export). Called under the shard's lock, after the write.
    pub(super) fn mark_dirty<'a>(&self, namespace: &str, ops: impl IntoIterator<Item = &'a Op>) {
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
    pub(super) fn frozen(&self, namespace: &str, key: &str) -> bool {
        if !self.exporting.load(Ordering::Acquire) {
            return false;
        }
        self.export.lock().as_ref().is_some_and(|e| e.frozen && e.target.shard_of(namespace, key) != self.id)
    }
}

impl Store {
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
    ///
    /// A replicated shard exports at its leader, which must keep leading it (without a break) until
    /// the freeze: the writes it remembers are the ones it made.
    pub fn begin_export(&self, n: u32, target: Arc<ShardMap>) -> Result<(), StoreError> {
        let shard = self.shard(n).ok_or_else(|| StoreError::Config(format!("no shard {n} here")))?;
        let _guard = shard.lock();
        let lead = shard.leadership()?;
        *shard.export.lock() = Some(Export { target, dirty: HashSet::new(), frozen: false, lead });
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
    ///
    /// On a replicated shard only the leader that began the export, still leading without a
    /// break, may do this (another leader's writes would be missing from the dirty set: refused as
    /// [`StoreError::NotLeader`]), and the freeze goes through the log first ([`FROZEN_KEY`]), so
    /// a member that leads after it keeps the moving keys frozen.
    pub fn take_dirty(&self, n: u32, freeze: bool) -> Result<BTreeMap<u32, Vec<RawEntry>>, StoreError> {
        let shard = self.shard(n).ok_or_else(|| StoreError::Config(format!("no shard {n} here")))?;
        let guard = shard.lock();
        // A member that does not lead says so first (the master asks the next one).
        let leading = shard.leadership()?;
        let (began, target) = {
            let export = shard.export.lock();
            let export = export.as_ref().ok_or_else(|| StoreError::Config(format!("shard {n} is not exporting")))?;
            (export.lead, export.target.clone())
        };
        if shard.replicated() && (began.is_none() || leading != began) {
            return Err(StoreError::NotLeader { shard: n });
        }
        if freeze && shard.replicated() {
            let json = serde_json::to_vec(&*target).map_err(|e| StoreError::Protocol(e.to_string()))?;
            let mut batch = WriteBatch::default();
            batch.put(FROZEN_KEY, json);
            shard.write_entry(batch, &self.write_options, true)?;
        }
        let dirty = {
            let mut export = shard.export.lock();
            let export = export.as_mut().ok_or_else(|| StoreError::Config(format!("shard {n} is not exporting")))?;
            if freeze {
                export.frozen = true;
            }
            std::mem::take(&mut export.dirty)
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

    /// Clear the freeze shard `n`'s log recorded ([`FROZEN_KEY`]), if it recorded one: the move
    /// was given up, or its map is served now. Done by the shard's leader (others get
    /// [`StoreError::NotLeader`]); nothing to do on an unreplicated shard.
    pub fn thaw(&self, n: u32) -> Result<(), StoreError> {
        let Some(shard) = self.shard(n) else { return Ok(()) };
        let _guard = shard.lock();
        if !shard.replicated() {
            return Ok(());
        }
        shard.leadership()?;
        if shard.db.get(FROZEN_KEY)?.is_some() {
            let mut batch = WriteBatch::default();
            batch.delete(FROZEN_KEY);
            shard.write_entry(batch, &self.write_options, true)?;
        }
        let map = self.map.read().clone();
        shard.load_frozen(&map)
    }

    /// Stop exporting shard `n` (the move finished or was given up); its keys are writable again.
    pub fn end_export(&self, n: u32) {
        if let Some(shard) = self.shard(n) {
            let _guard = shard.lock();
            shard.exporting.store(false, Ordering::Release);
            *shard.export.lock() = None;
        }
    }

    /// Write entries moved in from another shard into shard `n`, keeping their versions; the
    /// shard's counter is raised past them so that versions stay monotonic per key.
    pub fn ingest(&self, n: u32, entries: Vec<RawEntry>) -> Result<usize, StoreError> {
        let shard = self.shard(n).ok_or_else(|| StoreError::Config(format!("no shard {n} here")))?;
        let mut guard = shard.lock();
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
        shard.write(batch, &self.write_options)?;
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
            let _guard = shard.lock();
            let mut batch = WriteBatch::default();
            for k in chunk {
                batch.delete(k);
            }
            shard.write(batch, &self.write_options)?;
        }
        Ok(count)
    }

    /// Number of keys in shard `n` (RocksDB's estimate).
    pub fn estimate_keys(&self, n: u32) -> u64 {
        self.shard(n).and_then(|s| s.db.property_int_value("rocksdb.estimate-num-keys").ok().flatten()).unwrap_or(0)
    }
}
