//! A leader lease on a JetStream KV key.
//!
//! The bucket's `max_age` is the lease's TTL: a key not written for that long disappears. A
//! candidate leads when it *creates* the key (compare-and-set on "no key"); the revision of that
//! write is its term, and revisions of a bucket only grow, so terms do too. The leader renews by
//! updating the key with the revision it last wrote (compare-and-set) every quarter of the TTL.
//!
//! **Safety.** The leader counts itself leader until `sent + 3/4 TTL`, where `sent` is when it
//! *sent* its last successful renewal, on the monotonic clock. The server stored that write after
//! it was sent, so the key cannot expire before `sent + TTL`, and nobody else can create it
//! before then: the leader has stepped down a quarter of a TTL before anyone can take over, a
//! margin for clock-rate differences and scheduling delays. What a leader does with its term
//! after checking [`Lease::leading`] is fenced elsewhere: commands carry the term and receivers
//! refuse a lower one than they have seen.
//!
//! **Liveness.** Followers read the key every eighth of the TTL; after a leader dies the key
//! expires within one TTL of its last renewal and the first follower to create it leads. A leader
//! that stops cleanly ([`Lease::run`]'s `stop`) deletes the key, so a follower takes over at its
//! next read instead of waiting out the TTL.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::kv;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::time::Instant;

/// Where a lease lives and how long it lasts.
#[derive(Clone, Debug)]
pub struct LeaseConfig {
    /// The KV bucket (created when missing, with `max_age` = `ttl`).
    pub bucket: String,
    /// How long a lease survives its holder's last renewal.
    pub ttl: Duration,
    /// Replicas of the bucket: 3 on a cluster of three NATS servers (at most the servers there are).
    pub replicas: usize,
}

/// What this holder is, as far as it knows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Role {
    /// It leads with `term`, until a renewal fails for long enough.
    Leader {
        /// The term, the revision of the write that made it leader.
        term: u64,
    },
    /// Another holder leads (`leader`), or nobody does (`None`) right now.
    Follower {
        /// The leader, if one holds the lease.
        leader: Option<String>,
        /// The leader's term, 0 when there is none.
        term: u64,
    },
}

/// Why a lease cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// JetStream did not answer, or refused the bucket.
    #[error("lease bucket {bucket}: {reason}")]
    Bucket {
        /// The bucket.
        bucket: String,
        /// What JetStream said.
        reason: String,
    },
    /// The bucket exists with another TTL, so this holder's arithmetic would not hold.
    #[error("lease bucket {bucket} expires keys after {found:?}, not {wanted:?}: every holder must use one TTL")]
    TtlMismatch {
        /// The bucket.
        bucket: String,
        /// Its `max_age`.
        found: Duration,
        /// This holder's TTL.
        wanted: Duration,
    },
}

/// The value of a lease key.
#[derive(Serialize, Deserialize, Debug)]
struct Holding {
    holder: String,
    /// The holder's term, written with every renewal (the creation, which makes the term, cannot
    /// name its own revision: until the first renewal the entry's revision is the term).
    #[serde(default)]
    term: Option<u64>,
}

/// Until when this holder leads, and with which term and revision.
#[derive(Clone, Copy, Debug)]
struct Held {
    term: u64,
    revision: u64,
    until: Instant,
}

/// One holder's view of one lease: campaign and renew with [`Lease::run`], ask
/// [`Lease::leading`] before acting as leader, follow changes with [`Lease::watch`].
pub struct Lease {
    kv: kv::Store,
    key: String,
    holder: String,
    ttl: Duration,
    held: Mutex<Option<Held>>,
    role: watch::Sender<Role>,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease").field("key", &self.key).field("holder", &self.holder).finish()
    }
}

impl Lease {
    /// The lease `key` in `config`'s bucket (made if missing), for `holder`.
    pub async fn open(
        client: async_nats::Client,
        config: &LeaseConfig,
        key: &str,
        holder: &str,
    ) -> Result<Arc<Lease>, LeaseError> {
        let bucket_error = |reason: String| LeaseError::Bucket { bucket: config.bucket.clone(), reason };
        let js = async_nats::jetstream::new(client);
        let kv = match js.get_key_value(config.bucket.as_str()).await {
            Ok(kv) => kv,
            Err(_) => js
                .create_key_value(kv::Config {
                    bucket: config.bucket.clone(),
                    history: 1,
                    max_age: config.ttl,
                    num_replicas: config.replicas.max(1),
                    storage: async_nats::jetstream::stream::StorageType::File,
                    ..kv::Config::default()
                })
                .await
                .map_err(|e| bucket_error(e.to_string()))?,
        };
        let found = kv.status().await.map_err(|e| bucket_error(e.to_string()))?.max_age();
        if found != config.ttl {
            return Err(LeaseError::TtlMismatch { bucket: config.bucket.clone(), found, wanted: config.ttl });
        }
        let (role, _) = watch::channel(Role::Follower { leader: None, term: 0 });
        Ok(Arc::new(Lease {
            kv,
            key: key.to_owned(),
            holder: holder.to_owned(),
            ttl: config.ttl,
            held: Mutex::new(None),
            role,
        }))
    }

    /// The term this holder leads with, if it may act as leader now: it holds the lease and its
    /// last successful renewal is recent enough (see the module's safety argument).
    pub fn leading(&self) -> Option<u64> {
        let held = *self.held.lock().expect("lease lock");
        held.filter(|h| Instant::now() < h.until).map(|h| h.term)
    }

    /// This holder's role as it changes.
    pub fn watch(&self) -> watch::Receiver<Role> {
        self.role.subscribe()
    }

    /// Campaign for the lease and renew it while held, until `stop` completes; then give it up.
    pub async fn run(self: Arc<Self>, stop: impl Future<Output = ()>) {
        tokio::pin!(stop);
        let renew_every = self.ttl / 4;
        let read_every = self.ttl / 8;
        loop {
            let pause = if self.leading().is_some() {
                self.renew().await;
                renew_every
            } else {
                self.campaign().await;
                if self.leading().is_some() { renew_every } else { read_every }
            };
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                () = &mut stop => break,
            }
        }
        self.resign().await;
    }

    /// Try to take the lease, or learn who holds it.
    async fn campaign(&self) {
        self.step_down_if_expired();
        let value = serde_json::to_vec(&Holding { holder: self.holder.clone(), term: None }).expect("serialises");
        let sent = Instant::now();
        match self.kv.create(&self.key, value.into()).await {
            Ok(revision) => {
                *self.held.lock().expect("lease lock") =
                    Some(Held { term: revision, revision, until: sent + self.ttl * 3 / 4 });
                tracing::info!(key = %self.key, holder = %self.holder, term = revision, "lease taken");
                self.role.send_replace(Role::Leader { term: revision });
            }
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
                let (leader, term) = match self.kv.entry(&self.key).await {
                    Ok(Some(entry)) if entry.operation == kv::Operation::Put => {
                        let holding = serde_json::from_slice::<Holding>(&entry.value).ok();
                        let term = holding.as_ref().and_then(|h| h.term).unwrap_or(entry.revision);
                        (holding.map(|h| h.holder), term)
                    }
                    _ => (None, 0),
                };
                let role = Role::Follower { leader, term };
                self.role.send_if_modified(|current| {
                    // The same holder with the same term is not news.
                    let changed = *current != role;
                    if changed {
                        *current = role.clone();
                    }
                    changed
                });
            }
            Err(e) => tracing::debug!(key = %self.key, cause = %e, "lease campaign failed; retrying"),
        }
    }

    /// Renew the lease held, or step down when it is gone or too old.
    async fn renew(&self) {
        let Some(held) = *self.held.lock().expect("lease lock") else { return };
        let holding = Holding { holder: self.holder.clone(), term: Some(held.term) };
        let value = serde_json::to_vec(&holding).expect("serialises");
        let sent = Instant::now();
        // A renewal that has not answered when the lease runs out (the server is cut off, or
        // slow) ends the leadership then, not when the request times out: whoever watches the
        // role learns it at the moment the lease stops counting.
        let Ok(renewed) =
            tokio::time::timeout_at(held.until, self.kv.update(&self.key, value.into(), held.revision)).await
        else {
            tracing::warn!(key = %self.key, holder = %self.holder, term = held.term, "lease renewal unanswered until the lease ran out; stepping down");
            self.step_down();
            return;
        };
        match renewed {
            Ok(revision) => {
                let mut guard = self.held.lock().expect("lease lock");
                if let Some(h) = guard.as_mut().filter(|h| h.term == held.term) {
                    h.revision = revision;
                    h.until = sent + self.ttl * 3 / 4;
                }
            }
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                tracing::warn!(key = %self.key, holder = %self.holder, term = held.term, "lease lost to another holder");
                self.step_down();
            }
            Err(e) => {
                tracing::warn!(key = %self.key, cause = %e, "lease renewal failed");
                self.step_down_if_expired();
            }
        }
    }

    fn step_down_if_expired(&self) {
        let expired = self.held.lock().expect("lease lock").is_some_and(|h| Instant::now() >= h.until);
        if expired {
            tracing::warn!(key = %self.key, holder = %self.holder, "lease not renewed in time; stepping down");
            self.step_down();
        }
    }

    fn step_down(&self) {
        if self.held.lock().expect("lease lock").take().is_some() {
            self.role.send_replace(Role::Follower { leader: None, term: 0 });
        }
    }

    /// Give the lease up at once (a clean stop), so a follower need not wait out the TTL.
    async fn resign(&self) {
        let held = self.held.lock().expect("lease lock").take();
        if let Some(held) = held {
            self.role.send_replace(Role::Follower { leader: None, term: 0 });
            match self.kv.delete_expect_revision(&self.key, Some(held.revision)).await {
                Ok(()) => tracing::info!(key = %self.key, holder = %self.holder, term = held.term, "lease given up"),
                Err(e) => {
                    tracing::warn!(key = %self.key, cause = %e, "could not give the lease up; it expires instead")
                }
            }
        }
    }
}
