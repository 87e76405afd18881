//! Writes: every write of a shard is group-committed. Writers queue their batch; whoever holds
//! the shard's lock next commits everything queued by then in one RocksDB write (one WAL append,
//! one fsync with `--sync`). Blocking callers commit the queue themselves; async callers wait on a
//! oneshot while one blocking task per shard drains the queue, so a waiting write holds no thread.
//! Ownership and the freeze are checked again under the shard's lock, against the map in force.
//! At a replicated shard's leader the drain keeps several groups' appends in flight
//! (`super::pipeline`).

use super::pipeline::{DEPTH, Pipeline, Written};
use super::*;

/// A single-shard batch in a shard's commit queue.
pub(super) struct Pending {
    pub(super) namespace: String,
    pub(super) ops: Vec<Op>,
    pub(super) done: Done,
}

pub(super) type Outcome = Result<Vec<u64>, StoreError>;

/// Where the outcome of a queued batch goes: a thread waiting for it, or a task.
pub(super) enum Done {
    Thread(std::sync::mpsc::SyncSender<Outcome>),
    Task(tokio::sync::oneshot::Sender<Outcome>),
}

impl Done {
    pub(super) fn send(self, outcome: Outcome) {
        // A writer that stopped waiting (a dropped request) does not need its answer.
        let _ = match self {
            Done::Thread(tx) => tx.send(outcome).map_err(drop),
            Done::Task(tx) => tx.send(outcome).map_err(drop),
        };
    }
}

/// What a commit group has written so far, by RocksDB key: `Some(version)` for a put, `None` for a
/// delete. Later batches of the group check their conditions against it before the database.
pub(super) type Overlay = std::collections::HashMap<Vec<u8>, Option<u64>>;

impl Store {
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
        let mut guards: Vec<(&Arc<Shard>, MutexGuard<'_, u64>)> = involved.iter().map(|s| (s, s.lock())).collect();

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
            shard.write(batch, &self.write_options)?;
            **guard = seq;
            shard.mark_dirty(namespace, mine);
        }
        Ok(versions)
    }

    /// Commit a batch of one shard through the shard's queue: enqueue it, take the shard's lock,
    /// and commit whatever is queued by then (this batch, unless an earlier holder of the lock
    /// already did, and the batches queued behind it) as one RocksDB write.
    pub(super) fn commit_grouped(
        &self,
        shard: &Arc<Shard>,
        namespace: &str,
        ops: Vec<Op>,
    ) -> Result<Vec<u64>, StoreError> {
        let (done, result) = std::sync::mpsc::sync_channel(1);
        shard.queue.lock().push(Pending { namespace: namespace.to_owned(), ops, done: Done::Thread(done) });
        {
            let mut guard = shard.lock();
            let group = std::mem::take(&mut *shard.queue.lock());
            if !group.is_empty() {
                self.commit_group(shard, &mut guard, group, None);
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
        shard.queued.notify_one();
        if !shard.draining.swap(true, Ordering::AcqRel) {
            let store = self.clone();
            tokio::task::spawn_blocking(move || store.drain(&shard));
        }
        result.await.map_err(|_| StoreError::Config("the commit of this write was abandoned".into()))?
    }

    /// Commit the shard's queue, group after group, until it stays empty and no append is in
    /// flight; the shard's `draining` flag is set while this runs (a writer that sets it starts
    /// the next drain). At a replicated shard's leader up to [`DEPTH`] groups are in flight: the
    /// next group is formed while earlier ones are on their way into the log.
    pub(super) fn drain(&self, shard: &Shard) {
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
        let mut pipe = Pipeline::default();
        loop {
            let room = pipe.len() < DEPTH;
            // With appends in flight, someone else holding the lock waits for them to settle:
            // answer them rather than wait for the lock.
            let guard = match (room, pipe.is_empty()) {
                (false, _) => None,
                (true, true) => Some(shard.lock()),
                (true, false) => shard.seq.try_lock(),
            };
            let locked = guard.is_some();
            if let Some(mut guard) = guard {
                if pipe.should_wait(shard) {
                    drop(guard);
                    if pipe.is_empty() {
                        pipe.linger(shard);
                    } else {
                        pipe.complete(shard, &self.write_options, true);
                    }
                    continue;
                }
                let group = std::mem::take(&mut *shard.queue.lock());
                if !group.is_empty() {
                    self.commit_group(shard, &mut guard, group, Some(&mut pipe));
                    continue;
                }
            }
            if !pipe.is_empty() {
                pipe.complete(shard, &self.write_options, room && locked);
                continue;
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
    /// are written together. Given a `pipe` at a replicated shard, the group is submitted to the
    /// log and answered when it lands ([`Pipeline::complete`]); its conditions see what the
    /// appends in flight wrote.
    pub(super) fn commit_group(
        &self,
        shard: &Shard,
        seq: &mut MutexGuard<'_, u64>,
        group: Vec<Pending>,
        pipe: Option<&mut Pipeline>,
    ) {
        let now = now_ms();
        // Read under the lock: an export ends (under this lock) only after the map switched.
        let map = self.map.read().clone();
        let mut overlay = Overlay::new();
        let mut next = **seq;
        let mut batch = WriteBatch::default();
        let mut accepted: Vec<(Pending, Vec<u64>)> = Vec::with_capacity(group.len());
        let mut written: Vec<(Vec<u8>, Written)> = Vec::new();
        let pipe = pipe.filter(|_| shard.replicated());
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
                        None => match pipe.as_ref().and_then(|p| p.version(&k, now)) {
                            Some(version) => version,
                            None => current_version(shard, &k, now)?,
                        },
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
                if pipe.is_some() {
                    written.push((k.clone(), matches!(op, Op::Put { .. }).then(|| (next, expires_at(op, now)))));
                }
                stage(&mut batch, k, op, next, now);
            }
            accepted.push((pending, versions));
        }
        if accepted.is_empty() {
            return;
        }
        batch.put(SEQ_KEY, next.to_be_bytes());
        if let Some(pipe) = pipe {
            for (pending, _) in &accepted {
                shard.mark_dirty(&pending.namespace, &pending.ops);
            }
            match pipe.launch(shard, batch, accepted, written) {
                Ok(()) => **seq = next,
                Err((e, members)) => super::pipeline::refuse(members, &e),
            }
            return;
        }
        if let Err(e) = shard.write(batch, &self.write_options) {
            // Every member gets the cause: a storage error, or, replicated, a leader that no
            // longer leads or a log that did not take the entry.
            for (pending, _) in accepted {
                pending.done.send(Err(e.for_another()));
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
}

/// Add `op` on RocksDB key `k` to `batch` at `version` (a put's TTL counts from `now`).
fn stage(batch: &mut WriteBatch, k: Vec<u8>, op: &Op, version: u64, now: u64) {
    match op {
        Op::Put { value, .. } => batch.put(k, encode(version, expires_at(op, now), value)),
        Op::Delete { .. } => batch.delete(k),
    }
}

/// When a put written at `now` expires (0: never; a delete has no expiry).
fn expires_at(op: &Op, now: u64) -> u64 {
    match op {
        Op::Put { options, .. } => {
            options.ttl.map_or(0, |t| now.saturating_add(u64::try_from(t.as_millis()).unwrap_or(u64::MAX)).max(1))
        }
        Op::Delete { .. } => 0,
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
