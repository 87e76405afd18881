//! Replicated shards: a shard whose writes go through its log, a JetStream stream (R = 3 on three
//! NATS servers), before they reach its RocksDB.
//!
//! Every write of a shard already becomes one RocksDB `WriteBatch` under the shard's lock (a
//! commit group, a cross-shard batch's part, moved keys coming in, a cleanup, a sweep). Here that
//! batch's serialized bytes are the log entry: the leader of the shard appends it fenced on the
//! last entry it applied (`Nats-Expected-Last-Sequence`), and only once JetStream acknowledged
//! the append does it write the batch to its own RocksDB and answer the writer. Followers read
//! the same entries in order and write the same batches: versions, expiry times and the
//! version counter are in the batch, decided once by the leader, so every replica ends up with
//! the same bytes. Each batch also carries the sequence it is at (under [`APPLIED_KEY`]), so a
//! replica knows after a crash where to read on.
//!
//! One member appends at a time: the one that [`Store::lead_shard`] made leader with a term.
//! Taking the lead first applies the log to its end, then appends a term entry fenced on it: from
//! then on a deposed leader's appends fail ([`LogError::Fenced`]) and it steps down. What leads
//! to a leadership (a lease per shard) is the store node's business, not this module's.

use std::sync::atomic::AtomicU64;

use shoal_replication::{Log, LogError};

use super::*;

/// The shard-local key of the last log sequence applied to this RocksDB; no namespace starts
/// with a NUL byte.
pub(super) const APPLIED_KEY: &[u8] = b"\0applied";

/// The shard-local key of the map a frozen export moves the shard's keys to (JSON), while the
/// moving keys are frozen: written by the leader that freezes them through the log, so whichever
/// member leads next (or restarts) keeps them frozen until the map switches or the move is given
/// up ([`Store::thaw`]).
pub(super) const FROZEN_KEY: &[u8] = b"\0frozen";

/// An entry of a shard's log.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum ShardEntry {
    /// A leader took the shard with this term (the entry fences every earlier leader).
    Term(u64),
    /// The serialized `WriteBatch` of a write by the leader of `term`.
    Write { term: u64, batch: Vec<u8> },
    /// A write that changes the shard's move state ([`FROZEN_KEY`]): a replica applying it
    /// takes the new state into memory too.
    Control { term: u64, batch: Vec<u8> },
}

const TERM: u8 = 1;
const WRITE: u8 = 2;
const CONTROL: u8 = 3;

impl ShardEntry {
    pub(super) fn encode(&self) -> Vec<u8> {
        match self {
            ShardEntry::Term(term) => [&[TERM][..], &term.to_be_bytes()].concat(),
            ShardEntry::Write { term, batch } => [&[WRITE][..], &term.to_be_bytes(), batch].concat(),
            ShardEntry::Control { term, batch } => [&[CONTROL][..], &term.to_be_bytes(), batch].concat(),
        }
    }

    pub(super) fn decode(bytes: &[u8]) -> Result<ShardEntry, StoreError> {
        let term = bytes.get(1..9).and_then(|b| b.try_into().ok()).map(u64::from_be_bytes);
        match (bytes.first(), term) {
            (Some(&TERM), Some(term)) if bytes.len() == 9 => Ok(ShardEntry::Term(term)),
            (Some(&WRITE), Some(term)) => Ok(ShardEntry::Write { term, batch: bytes[9..].to_vec() }),
            (Some(&CONTROL), Some(term)) => Ok(ShardEntry::Control { term, batch: bytes[9..].to_vec() }),
            _ => Err(StoreError::Corrupt(format!("a shard log entry of {} bytes does not decode", bytes.len()))),
        }
    }
}

/// A shard's log and where this replica stands in it.
pub(super) struct Replica {
    log: Log,
    /// The runtime the log's client lives on: writes run on blocking threads and wait on it.
    runtime: tokio::runtime::Handle,
    /// The last sequence written to this RocksDB (changed under the shard's lock only).
    applied: AtomicU64,
    /// The term this member appends under while it leads the shard.
    leading: Mutex<Option<u64>>,
    /// The lease that made it leader, checked on every write ([`Store::gate_shard`]).
    gate: Mutex<Option<Arc<shoal_replication::Lease>>>,
}

impl Replica {
    /// The term this member may append under now: it leads, and its lease (if it has one) still
    /// counts on this member's clock. A lease that ran out steps it down here and now.
    pub(super) fn leading(&self) -> Option<u64> {
        let mut leading = self.leading.lock();
        let term = (*leading)?;
        let gate = self.gate.lock().clone();
        if gate.is_some_and(|lease| lease.leading() != Some(term)) {
            tracing::warn!(term, "the shard's lease no longer counts; stepping down");
            *leading = None;
            return None;
        }
        Some(term)
    }
}

fn read_applied(db: &DB) -> Result<u64, StoreError> {
    match db.get(APPLIED_KEY)? {
        Some(bytes) => Ok(u64::from_be_bytes(
            bytes.as_slice().try_into().map_err(|_| StoreError::Corrupt("the applied sequence".into()))?,
        )),
        None => Ok(0),
    }
}

fn unavailable(shard: u32, e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable { shard, node: String::new(), reason: format!("the shard's log: {e}") }
}

impl Shard {
    /// Whether this copy answers reads that must see every acknowledged write: it is the only
    /// copy, or it leads the shard with a lease that still counts.
    pub(super) fn serves_linearizable(&self) -> bool {
        self.replica.read().as_ref().is_none_or(|r| r.leading().is_some())
    }

    /// Write `batch` to this shard; the caller holds the shard's lock. Unreplicated, straight to
    /// RocksDB. Replicated, only the leader writes: through the log first (see the module doc).
    pub(super) fn write(&self, batch: WriteBatch, options: &WriteOptions) -> Result<(), StoreError> {
        self.write_entry(batch, options, false)
    }

    /// The term this copy leads the shard with (`None` unreplicated: the only copy).
    pub(super) fn lead_term(&self) -> Result<Option<u64>, StoreError> {
        match self.replica.read().as_ref() {
            None => Ok(None),
            Some(replica) => replica.leading().map(Some).ok_or(StoreError::NotLeader { shard: self.id }),
        }
    }

    /// Whether the shard's writes go through its log.
    pub(super) fn replicated(&self) -> bool {
        self.replica.read().is_some()
    }

    /// [`Shard::write`]; `control` marks a write of the shard's move state (a
    /// [`ShardEntry::Control`] entry, which followers take into memory as they apply it).
    pub(super) fn write_entry(
        &self,
        mut batch: WriteBatch,
        options: &WriteOptions,
        control: bool,
    ) -> Result<(), StoreError> {
        let replica = self.replica.read().clone();
        let Some(replica) = replica else { return Ok(self.db.write_opt(batch, options)?) };
        let term = replica.leading().ok_or(StoreError::NotLeader { shard: self.id })?;
        let last = replica.applied.load(Ordering::Acquire);
        batch.put(APPLIED_KEY, (last + 1).to_be_bytes());
        let data = batch.data().to_vec();
        let entry =
            if control { ShardEntry::Control { term, batch: data } } else { ShardEntry::Write { term, batch: data } };
        let entry = entry.encode();
        match replica.runtime.block_on(replica.log.append(entry.into(), last)) {
            Ok(sequence) => {
                debug_assert_eq!(sequence, last + 1, "an append fenced on {last} lands right after it");
                self.db.write_opt(batch, options)?;
                replica.applied.store(sequence, Ordering::Release);
                Ok(())
            }
            Err(LogError::Fenced { .. }) => {
                tracing::warn!(shard = self.id, term, "another leader appended to the shard's log; stepping down");
                replica.leading.lock().take_if(|t| *t == term);
                Err(StoreError::NotLeader { shard: self.id })
            }
            Err(LogError::TooLarge { size, limit, .. }) => Err(StoreError::ValueTooLarge { size, limit }),
            Err(e) => {
                // The append's outcome is unknown (it may have landed): this replica no longer
                // knows the log's last entry, so it stops appending until it leads again (after
                // applying the log to its end).
                tracing::warn!(shard = self.id, term, cause = %e, "an append to the shard's log failed; stepping down");
                replica.leading.lock().take_if(|t| *t == term);
                Err(unavailable(self.id, e))
            }
        }
    }

    /// Write the log's entry at `sequence` here if it is the next one; the caller holds the
    /// shard's lock and passes the counter it guards. Returns whether it was written. A control
    /// entry also sets the shard's move state in memory as it now is on disk (against `map`,
    /// the map this node serves).
    fn apply(
        &self,
        replica: &Replica,
        seq: &mut u64,
        sequence: u64,
        payload: &[u8],
        options: &WriteOptions,
        map: &ShardMap,
    ) -> Result<bool, StoreError> {
        let applied = replica.applied.load(Ordering::Acquire);
        if sequence <= applied {
            return Ok(false);
        }
        if sequence != applied + 1 {
            return Err(StoreError::Corrupt(format!(
                "shard {} applied its log to {applied} but was given entry {sequence}",
                self.id
            )));
        }
        let entry = ShardEntry::decode(payload)?;
        let term = match &entry {
            ShardEntry::Write { term, .. } | ShardEntry::Control { term, .. } | ShardEntry::Term(term) => *term,
        };
        let control = matches!(entry, ShardEntry::Control { .. });
        // Another leader's entry: whoever believed it led is deposed (its next append would be
        // fenced anyway; here it stops before trying).
        if replica.leading.lock().take_if(|t| *t != term).is_some() {
            tracing::warn!(shard = self.id, term, "another leader appended to the shard's log; stepping down");
        }
        let mut batch = match entry {
            ShardEntry::Write { batch, .. } | ShardEntry::Control { batch, .. } => WriteBatch::from_data(&batch),
            ShardEntry::Term(_) => WriteBatch::default(),
        };
        batch.put(APPLIED_KEY, sequence.to_be_bytes());
        self.db.write_opt(batch, options)?;
        replica.applied.store(sequence, Ordering::Release);
        *seq = read_seq(&self.db, self.id)?;
        if control {
            self.load_frozen(map)?;
        }
        Ok(true)
    }

    /// Take the freeze recorded on disk ([`FROZEN_KEY`]) into memory: the moving keys are
    /// refused while its target map is newer than `map` (the one served); none recorded, no
    /// export here. The caller holds the shard's lock.
    pub(super) fn load_frozen(&self, map: &ShardMap) -> Result<(), StoreError> {
        let target = match self.db.get(FROZEN_KEY)? {
            Some(json) => Some(
                serde_json::from_slice::<ShardMap>(&json)
                    .map_err(|e| StoreError::Corrupt(format!("shard {}: the frozen move's map: {e}", self.id)))?,
            ),
            None => None,
        };
        let mut export = self.export.lock();
        match target {
            Some(target) if target.newer_than(map) => {
                tracing::info!(
                    shard = self.id,
                    epoch = target.epoch,
                    "the shard's moving keys are frozen (from its log)"
                );
                let dirty = export.take().map(|e| e.dirty).unwrap_or_default();
                *export = Some(super::moves::Export { target: Arc::new(target), dirty, frozen: true, term: None });
                self.exporting.store(true, Ordering::Release);
            }
            _ => {
                *export = None;
                self.exporting.store(false, Ordering::Release);
            }
        }
        Ok(())
    }
}

impl Store {
    fn write_options_of(&self) -> WriteOptions {
        let mut options = WriteOptions::default();
        options.set_sync(self.durability == Durability::Sync);
        options
    }

    /// Replicate shard `n` through `log`: from now on it is written only through the log, by its
    /// leader. Returns the last sequence applied here before (0 for a new replica).
    pub fn replicate_shard(&self, n: u32, log: Log) -> Result<u64, StoreError> {
        let shard = self.shard(n).ok_or_else(|| StoreError::Config(format!("no shard {n} here")))?;
        let _guard = shard.seq.lock();
        let applied = read_applied(&shard.db)?;
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| StoreError::Config("a replicated shard needs a Tokio runtime".into()))?;
        *shard.replica.write() = Some(Arc::new(Replica {
            log,
            runtime,
            applied: AtomicU64::new(applied),
            leading: Mutex::new(None),
            gate: Mutex::new(None),
        }));
        // A freeze this copy applied before it stopped holds again (until the map switches).
        let map = self.map.read().clone();
        shard.load_frozen(&map)?;
        Ok(applied)
    }

    /// Take shard `n`'s log away again (it could not be used): the shard is served by no one
    /// here until it is replicated again.
    pub fn unreplicate_shard(&self, n: u32) {
        if let Some(shard) = self.shard(n) {
            let _guard = shard.seq.lock();
            *shard.replica.write() = None;
        }
    }

    fn replica(&self, n: u32) -> Result<(Arc<Shard>, Arc<Replica>), StoreError> {
        let shard = self.shard(n).ok_or_else(|| StoreError::Config(format!("no shard {n} here")))?;
        let replica =
            shard.replica.read().clone().ok_or_else(|| StoreError::Config(format!("shard {n} is not replicated")))?;
        Ok((shard, replica))
    }

    /// Check `lease` on every write of shard `n` from now on: this member appends only while the
    /// lease names it leader with the term it leads under.
    pub fn gate_shard(&self, n: u32, lease: Arc<shoal_replication::Lease>) -> Result<(), StoreError> {
        let (_, replica) = self.replica(n)?;
        *replica.gate.lock() = Some(lease);
        Ok(())
    }

    /// How far this copy of shard `n` is behind its log: what it applied, and the entries after
    /// that the log holds (asked of JetStream, within `patience`).
    pub async fn staleness(&self, n: u32, patience: std::time::Duration) -> crate::Staleness {
        let Ok((_, replica)) = self.replica(n) else { return crate::Staleness::default() };
        let applied = replica.applied.load(Ordering::Acquire);
        let last = tokio::time::timeout(patience, replica.log.bounds()).await.ok().and_then(Result::ok);
        crate::Staleness { applied, behind: last.map(|(_, last)| last.saturating_sub(applied)) }
    }

    /// The last log sequence the copy of shard `n` on this disk applied (0: none, or no shard
    /// `n` here), replicated yet or not.
    pub fn stored_applied(&self, n: u32) -> Result<u64, StoreError> {
        match self.shard(n) {
            Some(shard) => read_applied(&shard.db),
            None => Ok(0),
        }
    }

    /// The last log sequence shard `n` applied here (0 when it is not replicated).
    pub fn applied(&self, n: u32) -> u64 {
        self.replica(n).map_or(0, |(_, r)| r.applied.load(Ordering::Acquire))
    }

    /// The term this node leads shard `n` with, if it does.
    pub fn leads_shard(&self, n: u32) -> Option<u64> {
        self.replica(n).ok().and_then(|(_, r)| r.leading())
    }

    /// Apply the entries of shard `n`'s log that this replica has not, up to the log's end as it
    /// stands now; returns the sequence applied to.
    pub async fn catch_up(self: &Arc<Self>, n: u32) -> Result<u64, StoreError> {
        let (shard, replica) = self.replica(n)?;
        let (_, last) = replica.log.bounds().await.map_err(|e| unavailable(n, e))?;
        loop {
            let applied = replica.applied.load(Ordering::Acquire);
            if applied >= last {
                return Ok(applied);
            }
            let entry = replica.log.get(applied + 1).await.map_err(|e| unavailable(n, e))?.ok_or_else(|| {
                unavailable(n, format!("entry {} is gone from the log: the replica needs a snapshot", applied + 1))
            })?;
            let (shard, replica, options, store) =
                (shard.clone(), replica.clone(), self.write_options_of(), self.clone());
            blocking(move || {
                let mut seq = shard.seq.lock();
                let map = store.map.read().clone();
                shard.apply(&replica, &mut seq, entry.sequence, &entry.payload, &options, &map)
            })
            .await?;
        }
    }

    /// Lead shard `n` with `term`: apply the log to its end, then append the term's entry fenced
    /// on it (retrying after another leader's late append). Writes are taken from then on.
    pub async fn lead_shard(self: &Arc<Self>, n: u32, term: u64) -> Result<(), StoreError> {
        let (shard, replica) = self.replica(n)?;
        for _ in 0..5 {
            let last = self.catch_up(n).await?;
            let entry = ShardEntry::Term(term).encode();
            match replica.log.append(entry.clone().into(), last).await {
                Ok(sequence) => {
                    let (shard, replica, options, store) =
                        (shard.clone(), replica.clone(), self.write_options_of(), self.clone());
                    blocking(move || {
                        let mut seq = shard.seq.lock();
                        let map = store.map.read().clone();
                        shard.apply(&replica, &mut seq, sequence, &entry, &options, &map)?;
                        *replica.leading.lock() = Some(term);
                        Ok(())
                    })
                    .await?;
                    tracing::info!(shard = n, term, sequence, "leading the shard");
                    return Ok(());
                }
                Err(LogError::Fenced { .. }) => continue,
                Err(e) => return Err(unavailable(n, e)),
            }
        }
        Err(unavailable(n, "another leader kept appending"))
    }

    /// Stop leading shard `n` (the lease is gone): its writes are refused from now on.
    pub fn step_down_shard(&self, n: u32) {
        if let Ok((shard, replica)) = self.replica(n) {
            // Under the lock: no write of this term is between its append and its answer.
            let _guard = shard.seq.lock();
            if replica.leading.lock().take().is_some() {
                tracing::info!(shard = n, "no longer leading the shard");
            }
        }
    }

    /// Follow shard `n`'s log while the store holds it: every entry appended (by whichever
    /// leader) is written here in order; a leader's own entries are already here and are skipped.
    /// Ends when the shard (or the store) is let go, or when the log no longer holds the next
    /// entry this copy needs ([`Followed::Gap`]: it was compacted away; the copy must start
    /// again from a snapshot).
    pub async fn follow_shard(self: Arc<Self>, n: u32) -> Result<Followed, StoreError> {
        let (_, replica) = self.replica(n)?;
        let from = replica.applied.load(Ordering::Acquire) + 1;
        let mut reader = replica.log.read(from).await.map_err(|e| unavailable(n, e))?;
        let store = Arc::downgrade(&self);
        drop(self);
        loop {
            let entry = reader.next().await.map_err(|e| unavailable(n, e))?;
            // The shard dropped (or the store closed) ends the following.
            let Some((this, shard)) = store.upgrade().and_then(|s| s.shard(n).map(|sh| (s, sh))) else {
                return Ok(Followed::Ended);
            };
            let options = this.write_options_of();
            let gap = blocking(move || {
                let replica = shard.replica.read().clone().ok_or(StoreError::NotLeader { shard: n })?;
                let mut seq = shard.seq.lock();
                let applied = replica.applied.load(Ordering::Acquire);
                if entry.sequence > applied + 1 {
                    return Ok(Some(Followed::Gap { applied, next: entry.sequence }));
                }
                let map = this.map.read().clone();
                shard.apply(&replica, &mut seq, entry.sequence, &entry.payload, &options, &map)?;
                Ok(None)
            })
            .await?;
            if let Some(gap) = gap {
                return Ok(gap);
            }
        }
    }
}

/// How [`Store::follow_shard`] ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Followed {
    /// The shard or the store was let go.
    Ended,
    /// The log's next entry is `next`, but this copy applied only up to `applied`: the entries
    /// between were compacted into a snapshot.
    Gap {
        /// What this copy applied.
        applied: u64,
        /// The entry the log gave next.
        next: u64,
    },
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| StoreError::Config(format!("a blocking task failed: {e}")))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_and_garbage_is_refused() {
        for entry in [ShardEntry::Term(7), ShardEntry::Write { term: 9, batch: vec![1, 2, 3] }] {
            assert_eq!(ShardEntry::decode(&entry.encode()).unwrap(), entry);
        }
        assert!(ShardEntry::decode(&[]).is_err());
        assert!(ShardEntry::decode(&[TERM, 0, 0]).is_err());
        assert!(ShardEntry::decode(&[9; 12]).is_err());
    }
}
