//! Pipelined commits at a replicated shard's leader.
//!
//! A leader that appended one commit group at a time would wait a whole JetStream round (a route
//! hop, a Raft round and an fsync on each server) per group, and its writers one and a half. So
//! the drain of a shard's commit queue ([`Store::drain`]) keeps up to [`DEPTH`] groups' appends
//! in flight: it checks and versions a group under the shard's lock against RocksDB *and* what
//! the appends in flight wrote ([`Pipeline::written`]), submits it fenced on the sequence the
//! previous append will get, and lets go of the lock. As the answers come back, in order, it
//! writes each landed batch to RocksDB and only then answers its writers — so a reader never
//! sees a write its log has not stored, and a writer is answered only for what it will read.
//!
//! Every append costs the NATS servers about the same (a Raft round and an fsync on each)
//! whatever it carries, and on a busy machine that cost is what bounds the writes: a leader
//! that sent every small group at once measured 0.7× the puts of one append at a time. So a
//! group goes while others are in flight only when it is as large as a whole round's, and
//! with none in flight a group smaller than the last round waits up to [`LINGER`] for the
//! writers just answered ([`Pipeline::should_wait`]).
//!
//! When an append does not land, none behind it was applied by this member: it steps down and
//! answers them all with an error. `NotLeader` when the first was fenced (another leader's term
//! entry took its place, and the rest are skipped by every replica as a deposed leader's
//! entries, see `super::replica`), an unknown outcome otherwise (they may have landed, in order).
//!
//! Everything else that reads a shard's state before writing takes the shard's lock through
//! [`Shard::lock`], which waits for the appends in flight to be answered first.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;

use shoal_replication::LogError;

use super::commit::Pending;
use super::replica::{APPLIED_KEY, Lead, Replica, ShardEntry, unavailable};
use super::*;

/// How many commit groups' appends a shard's leader keeps in flight, at most.
pub(super) const DEPTH: usize = 4;

/// How long a leader waits, at most, for the writers it just answered to come back before it
/// appends a smaller group than the last (group commit's delay, as PostgreSQL's `commit_delay`).
pub(super) const LINGER: std::time::Duration = std::time::Duration::from_millis(2);

/// What a write does to a key: `Some((version, expires_at))` for a put, `None` for a delete.
pub(super) type Written = Option<(u64, u64)>;

type Landing = Pin<Box<dyn Future<Output = Result<u64, LogError>> + Send>>;

/// One commit group on its way into the log.
struct InFlight {
    sequence: u64,
    lead: Lead,
    batch: WriteBatch,
    landing: Landing,
    members: Vec<(Pending, Vec<u64>)>,
}

/// The appends in flight of one shard's leader, oldest first. Lives in the drain task.
#[derive(Default)]
pub(super) struct Pipeline {
    replica: Option<Arc<Replica>>,
    entries: VecDeque<InFlight>,
    /// By RocksDB key, what the appends in flight wrote and the sequence of the last one that
    /// did: a later group's conditions see it before RocksDB's.
    written: HashMap<Vec<u8>, (u64, Written)>,
    /// How many batches the next group is expected to hold: those answered last plus those
    /// queued then (`0`: no expectation).
    expect: usize,
    /// When the last group was answered.
    answered_at: Option<std::time::Instant>,
}

impl Pipeline {
    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether to wait before forming the next group from what is queued. Each append costs
    /// JetStream the same whatever it carries, so groups are kept large: while appends are in
    /// flight, the next goes only once the queue holds as many batches as the oldest of them and
    /// as the last round had (then the writers outpace one append at a time); with none in
    /// flight, a group smaller than expected (the writers just answered come back) waits up to
    /// [`LINGER`] for them.
    pub(super) fn should_wait(&self, shard: &Shard) -> bool {
        let queued = shard.queue.lock().len();
        if queued == 0 {
            return false;
        }
        match self.entries.front() {
            Some(oldest) => queued < oldest.members.len().max(self.expect),
            None => queued < self.expect && self.answered_at.is_some_and(|at| at.elapsed() < LINGER),
        }
    }

    /// With no append in flight: wait for a writer to queue, or for the linger to run out.
    pub(super) fn linger(&self, shard: &Shard) {
        let Some(replica) = self.replica.clone() else { return };
        let left = self.answered_at.map_or(std::time::Duration::ZERO, |at| LINGER.saturating_sub(at.elapsed()));
        replica.runtime().block_on(async {
            let _ = tokio::time::timeout(left, shard.queued.notified()).await;
        });
    }

    /// The version key `k` has while the appends in flight land (`Some(0)`: deleted or expired
    /// by then); `None` when none of them wrote it.
    pub(super) fn version(&self, k: &[u8], now: u64) -> Option<u64> {
        self.written.get(k).map(|(_, written)| match written {
            Some((version, expires_at)) if live(*expires_at, now) => *version,
            _ => 0,
        })
    }

    /// Submit `batch`, the checked and versioned writes of `members`, as the shard's next log
    /// entry; the caller holds the shard's (bare) lock. `written` is what it does to each key.
    /// On an error nothing was submitted (or its outcome is unknown and this member no longer
    /// leads): the caller answers the members with it.
    pub(super) fn launch(
        &mut self,
        shard: &Shard,
        mut batch: WriteBatch,
        members: Vec<(Pending, Vec<u64>)>,
        written: Vec<(Vec<u8>, Written)>,
    ) -> Result<(), (StoreError, Vec<(Pending, Vec<u64>)>)> {
        let Some((replica, lead)) = shard.leading_replica() else {
            return Err((StoreError::NotLeader { shard: shard.id }, members));
        };
        let last = self.entries.back().map_or_else(|| replica.applied(), |e| e.sequence);
        batch.put(APPLIED_KEY, (last + 1).to_be_bytes());
        let entry = ShardEntry::of_batch(lead.since, &batch, false);
        match replica.runtime().block_on(replica.log().submit(entry.into(), last)) {
            Ok(appending) => {
                replica.launched();
                let sequence = last + 1;
                for (k, w) in written {
                    self.written.insert(k, (sequence, w));
                }
                self.entries.push_back(InFlight {
                    sequence,
                    lead,
                    batch,
                    landing: Box::pin(appending.landed()),
                    members,
                });
                self.replica = Some(replica);
                Ok(())
            }
            Err(e) => Err((shard.append_failed(&replica, lead, e), members)),
        }
    }

    /// Wait for the oldest append's answer and take care of it (see the module doc) — or, when
    /// `or_queued`, until a writer queues a batch, whichever comes first.
    pub(super) fn complete(&mut self, shard: &Shard, options: &WriteOptions, or_queued: bool) {
        let (Some(replica), Some(front)) = (self.replica.clone(), self.entries.front_mut()) else { return };
        let landed = replica.runtime().block_on(async {
            if or_queued {
                tokio::select! {
                    landed = &mut front.landing => Some(landed),
                    () = shard.queued.notified() => None,
                }
            } else {
                Some((&mut front.landing).await)
            }
        });
        let Some(landed) = landed else { return };
        let Some(front) = self.entries.pop_front() else { return };
        let failure = match landed {
            Ok(sequence) if sequence == front.sequence => match shard.db.write_opt(front.batch, options) {
                Ok(()) => {
                    replica.set_applied(sequence);
                    self.written.retain(|_, (s, _)| *s != sequence);
                    self.expect = front.members.len() + shard.queue.lock().len();
                    self.answered_at = Some(std::time::Instant::now());
                    replica.answered(1);
                    for (pending, versions) in front.members {
                        pending.done.send(Ok(versions));
                    }
                    return;
                }
                Err(e) => StoreError::from(e),
            },
            Ok(sequence) => StoreError::Corrupt(format!(
                "shard {}: an append fenced on {} landed at {sequence}",
                shard.id,
                front.sequence - 1
            )),
            Err(e) => shard.append_failed(&replica, front.lead, e),
        };
        replica.depose(front.lead);
        let behind = match failure {
            StoreError::NotLeader { .. } => StoreError::NotLeader { shard: shard.id },
            _ => unavailable(
                shard.id,
                "an earlier append of the same leader failed; this one may or may not have landed",
            ),
        };
        for (pending, _) in front.members {
            pending.done.send(Err(failure.for_another()));
        }
        self.abandon(&replica, &behind);
        replica.answered(1);
    }

    /// Answer every append still in flight with `error` (this member applies none of them).
    fn abandon(&mut self, replica: &Replica, error: &StoreError) {
        let n = self.entries.len();
        for entry in self.entries.drain(..) {
            for (pending, _) in entry.members {
                pending.done.send(Err(error.for_another()));
            }
        }
        self.written.clear();
        replica.answered(n);
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        // Only a panic leaves appends in flight behind: their writers get an error, and whoever
        // waits for the shard to settle is let go.
        if let Some(replica) = self.replica.clone()
            && !self.entries.is_empty()
        {
            if let Some(front) = self.entries.front() {
                replica.depose(front.lead);
            }
            self.abandon(&replica, &StoreError::Config("the shard's commit task failed".into()));
        }
    }
}

/// Answer the writers of a group that never reached the log with `error`.
pub(super) fn refuse(members: Vec<(Pending, Vec<u64>)>, error: &StoreError) {
    for (pending, _) in members {
        pending.done.send(Err(error.for_another()));
    }
}
