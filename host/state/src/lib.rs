//! The master's durable state: named tables in one RocksDB, changed only by [`Batch`]es committed
//! through a [`StateDb`].
//!
//! Two backends, one code path for everything above them:
//!
//! - **Local** (`shoal dev`, a single master with no JetStream): a commit is one synced RocksDB
//!   write. This member always leads.
//! - **Replicated** (`shoal master` on a NATS cluster): the log is the truth and RocksDB is a cache
//!   every master keeps. Only the leader commits: it appends the batch to a JetStream stream
//!   ([`shoal_replication::Log`], R=3), fenced with the last sequence it knows, and the commit
//!   returns once its own apply loop has written the entry to RocksDB. Every master, leader
//!   included, applies the log in order ([`apply`]); a standby is therefore a warm copy that can
//!   lead as soon as it has applied the last entry. Values too large for one log entry
//!   ([`Change::PutBlob`]) go to the Object Store first and the entry names them.
//!
//! The log's first entry names the cluster; a data directory applied from another cluster's log
//! is refused rather than mixed. A new leader appends a term entry before anything else, so a
//! deposed leader's next append is fenced; every entry carries the term of its writer.
//!
//! Subscribers ([`StateDb::subscribe`]) see every applied batch, in order, on every master: that
//! is how a standby's in-memory views (the active plugins, the routes, the tokens) follow the
//! leader's writes.

mod apply;
mod entry;
mod follow;
mod writer;

use std::path::Path;
use std::sync::Arc;

use rocksdb::{ColumnFamilyDescriptor, DB, Direction, IteratorMode, Options, WriteBatch, WriteOptions};
use shoal_replication::{Blobs, Log, LogConfig};
use tokio::sync::{broadcast, mpsc, oneshot, watch};

pub use entry::{Batch, Change, Write};
pub use follow::{TableChange, TableWatch};

/// The table this crate keeps its own bookkeeping in (applied sequence, cluster id, term).
const META: &str = "_state";
const APPLIED: &[u8] = b"applied";
const CLUSTER: &[u8] = b"cluster";

/// Why the state could not be read or changed.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// RocksDB failed.
    #[error("state database: {0}")]
    Storage(String),
    /// No such table was declared when the state was opened.
    #[error("state database: no table {0}")]
    NoTable(String),
    /// This member does not lead: only the leader changes the state.
    #[error("this master does not lead; the leader takes writes")]
    NotLeader,
    /// The log or the blob bucket did not answer.
    #[error("replicated state: {0}")]
    Unavailable(String),
    /// The data directory holds another cluster's state.
    #[error(
        "{dir} holds the state of cluster {local}, but the NATS cluster's log is {log}: start this master with an empty --data-dir, or point --nats at the cluster it belongs to"
    )]
    OtherCluster {
        /// The data directory.
        dir: String,
        /// The cluster the directory was applied from.
        local: String,
        /// What the log says.
        log: String,
    },
    /// The data directory has applied entries the log does not have (any more).
    #[error(
        "{dir} has applied the state's log up to entry {applied}, but the NATS cluster's log ends at entry {last}: the log lost entries (its JetStream restored from an older copy?); start this master with an empty --data-dir to take the log as it is, or point --nats at the servers whose log this directory followed"
    )]
    AheadOfLog {
        /// The data directory.
        dir: String,
        /// The last entry it applied.
        applied: u64,
        /// The log's last entry.
        last: u64,
    },
    /// A batch too large for one log entry (use [`Change::PutBlob`] for large values).
    #[error("a commit of {0} bytes is too large for one log entry; large values go in blobs")]
    TooLarge(usize),
}

impl From<rocksdb::Error> for StateError {
    fn from(e: rocksdb::Error) -> Self {
        StateError::Storage(e.to_string())
    }
}

/// Where the replicated state lives on NATS.
#[derive(Clone, Debug)]
pub struct ReplicaConfig {
    /// The log (stream, subject, replicas).
    pub log: LogConfig,
    /// The Object Store bucket for large values.
    pub blobs: String,
}

/// A commit waiting for the writer.
struct Pending {
    batch: Batch,
    done: Option<oneshot::Sender<Result<u64, StateError>>>,
}

/// The replicated half of a [`StateDb`].
struct Replica {
    log: Log,
    queue: mpsc::UnboundedSender<Pending>,
    /// The leadership the writer appends under, if any.
    writer: Arc<parking_lot::Mutex<Option<writer::Leadership>>>,
}

/// Named tables, changed only by committed batches. See the crate documentation.
pub struct StateDb {
    db: Arc<DB>,
    dir: String,
    tables: Vec<String>,
    changes: broadcast::Sender<Arc<Batch>>,
    applied: watch::Sender<u64>,
    replica: Option<Replica>,
}

impl std::fmt::Debug for StateDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateDb").field("dir", &self.dir).field("replicated", &self.replica.is_some()).finish()
    }
}

fn open_db(dir: &Path, tables: &[&str]) -> Result<DB, StateError> {
    std::fs::create_dir_all(dir).map_err(|e| StateError::Storage(format!("{}: {e}", dir.display())))?;
    let mut opts = Options::default();
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    let names = tables.iter().copied().chain([META]);
    let cfs: Vec<_> = names.map(|n| ColumnFamilyDescriptor::new(n, Options::default())).collect();
    Ok(DB::open_cf_descriptors(&opts, dir, cfs)?)
}

impl StateDb {
    /// The local backend: `tables` in the RocksDB at `dir` (made when missing; tables missing
    /// from an existing database are added). Every commit is one synced write.
    pub fn open_local(dir: &Path, tables: &[&str]) -> Result<Arc<StateDb>, StateError> {
        let db = Arc::new(open_db(dir, tables)?);
        Ok(Arc::new(StateDb::new(db, dir, tables, None, 0)))
    }

    /// The replicated backend: `tables` cached in the RocksDB at `dir`, the log and blobs on the
    /// NATS cluster behind `client`. Returns once this member has applied the log as it stood
    /// at the call, and keeps applying it in a task of its own.
    pub async fn open_replicated(
        dir: &Path,
        tables: &[&str],
        client: async_nats::Client,
        config: &ReplicaConfig,
    ) -> Result<Arc<StateDb>, StateError> {
        let unavailable = |e: &dyn std::fmt::Display| StateError::Unavailable(e.to_string());
        let log = Log::open(client.clone(), &config.log).await.map_err(|e| unavailable(&e))?;
        let blobs = Blobs::open(client, &config.blobs, config.log.replicas).await.map_err(|e| unavailable(&e))?;
        let db = Arc::new(open_db(dir, tables)?);
        let applied = read_u64(&db, APPLIED)?;
        let cluster = apply::cluster_of_log(&log).await?;
        let (first, last) = log.bounds().await.map_err(|e| unavailable(&e))?;
        let local = read_string(&db, CLUSTER)?;
        let dir_name = dir.display().to_string();
        match local {
            Some(local) if local != cluster => {
                return Err(StateError::OtherCluster { dir: dir_name, local, log: cluster });
            }
            Some(_) if applied > last => return Err(StateError::AheadOfLog { dir: dir_name, applied, last }),
            None if applied > 0 => {
                return Err(StateError::OtherCluster { dir: dir_name, local: "unknown".into(), log: cluster });
            }
            _ => {}
        }
        if first > applied + 1 {
            return Err(StateError::Unavailable(format!(
                "the log starts at entry {first} but {dir_name} has applied only {applied}: start with an empty --data-dir"
            )));
        }
        let (queue, pending) = mpsc::unbounded_channel();
        let writer = Arc::new(parking_lot::Mutex::new(None));
        let replica = Replica { log: log.clone(), queue, writer: writer.clone() };
        let state = Arc::new(StateDb::new(db, dir, tables, Some(replica), applied));
        tokio::spawn(apply::run(Arc::downgrade(&state), log.clone(), blobs.clone(), applied));
        tokio::spawn(writer::run(Arc::downgrade(&state), log, blobs, writer, pending));
        state.wait_applied(last).await;
        Ok(state)
    }

    fn new(db: Arc<DB>, dir: &Path, tables: &[&str], replica: Option<Replica>, applied: u64) -> StateDb {
        StateDb {
            db,
            dir: dir.display().to_string(),
            tables: tables.iter().map(|t| (*t).to_owned()).collect(),
            changes: broadcast::channel(1024).0,
            applied: watch::channel(applied).0,
            replica,
        }
    }

    /// Whether the state is replicated (a NATS cluster) rather than local.
    pub fn is_replicated(&self) -> bool {
        self.replica.is_some()
    }

    /// The database, for reads only: every change goes through [`StateDb::commit`].
    pub fn db(&self) -> &DB {
        &self.db
    }

    /// A table's column family.
    pub fn table(&self, name: &str) -> Result<&rocksdb::ColumnFamily, StateError> {
        if !self.tables.iter().any(|t| t == name) {
            return Err(StateError::NoTable(name.to_owned()));
        }
        self.db.cf_handle(name).ok_or_else(|| StateError::NoTable(name.to_owned()))
    }

    /// The value of `key` in `table`.
    pub fn get(&self, table: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StateError> {
        Ok(self.db.get_cf(self.table(table)?, key)?)
    }

    /// Every key of `table` starting with `prefix`, with its value, in key order.
    pub fn scan(&self, table: &str, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>, StateError> {
        let mut out = Vec::new();
        for item in self.db.iterator_cf(self.table(table)?, IteratorMode::From(prefix, Direction::Forward)) {
            let (k, v) = item?;
            if !k.starts_with(prefix) {
                break;
            }
            out.push((k.into_vec(), v.into_vec()));
        }
        Ok(out)
    }

    /// Whether `table` has no entry.
    pub fn is_empty(&self, table: &str) -> Result<bool, StateError> {
        Ok(self.db.iterator_cf(self.table(table)?, IteratorMode::Start).next().transpose()?.is_none())
    }

    /// The last log entry this member has applied (0 for the local backend).
    pub fn applied(&self) -> u64 {
        *self.applied.borrow()
    }

    /// Wait until this member has applied the log up to `sequence`.
    pub async fn wait_applied(&self, sequence: u64) {
        let mut rx = self.applied.subscribe();
        let _ = rx.wait_for(|a| *a >= sequence).await;
    }

    /// Every batch as it is applied here, in order (the leader's and, on a standby, those it
    /// follows). A receiver that lags loses batches and should reread what it keeps.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Batch>> {
        self.changes.subscribe()
    }

    /// Whether this member may commit now: always for the local backend; for the replicated one,
    /// between [`StateDb::lead`] and [`StateDb::follow`] while the writer is not fenced.
    pub fn is_writer(&self) -> bool {
        self.replica.as_ref().is_none_or(|r| r.writer.lock().is_some())
    }

    /// Commit `batch`: durable (replicated on the NATS cluster, or synced locally) and applied
    /// here when this returns. Refused with [`StateError::NotLeader`] on a member that does not
    /// lead.
    pub async fn commit(&self, batch: Batch) -> Result<u64, StateError> {
        match &self.replica {
            None => self.write_local(batch, true).map(|()| 0),
            Some(replica) => {
                let (done, result) = oneshot::channel();
                replica.queue.send(Pending { batch, done: Some(done) }).map_err(|_| StateError::NotLeader)?;
                result.await.map_err(|_| StateError::NotLeader)?
            }
        }
    }

    /// Commit `batch` without waiting: batches submitted by one caller land in the order they
    /// were submitted; a failure is logged. [`StateDb::flush`] waits for all of them to be
    /// durable (replicated; or, locally, fsynced: a submitted write survives a crash of the
    /// process at once, a crash of the machine once flushed).
    pub fn submit(&self, batch: Batch) {
        match &self.replica {
            // Written at once, fsynced by the next `flush` (many submits share one fsync).
            None => {
                if let Err(e) = self.write_local(batch, false) {
                    tracing::error!(cause = %e, "a state change could not be written");
                }
            }
            Some(replica) => {
                if replica.queue.send(Pending { batch, done: None }).is_err() {
                    tracing::error!("a state change was submitted after the writer stopped");
                }
            }
        }
    }

    /// Wait until every batch submitted before this call is committed (or failed).
    pub async fn flush(&self) -> Result<(), StateError> {
        match &self.replica {
            None => Ok(self.db.flush_wal(true)?),
            Some(_) => self.commit(Batch::default()).await.map(|_| ()),
        }
    }

    /// Start leading with `term` (the lease's): catch up with the log, then append a term entry
    /// fenced on the last one, after which this member's commits are accepted. `holder` names
    /// this member in the log. A no-op for the local backend.
    pub async fn lead(&self, term: u64, holder: &str) -> Result<(), StateError> {
        let Some(replica) = &self.replica else { return Ok(()) };
        writer::lead(self, replica, term, holder).await
    }

    /// Stop leading: commits are refused from now on, and those queued fail.
    pub fn follow(&self) {
        if let Some(replica) = &self.replica {
            replica.writer.lock().take();
        }
    }

    /// The cluster's identity (the log's first entry), or `local`.
    pub fn cluster(&self) -> String {
        read_string(&self.db, CLUSTER).ok().flatten().unwrap_or_else(|| "local".into())
    }

    /// Write `batch` to the local backend; `sync`: fsync its write-ahead log first (else the
    /// write survives a crash of the process, and the next `flush` makes it survive the machine's).
    fn write_local(&self, batch: Batch, sync: bool) -> Result<(), StateError> {
        let mut write = WriteBatch::default();
        for w in &batch.writes {
            let cf = self.table(&w.table)?;
            match &w.change {
                Change::Put(v) | Change::PutBlob { bytes: v, .. } => write.put_cf(cf, &w.key, v),
                Change::Delete => write.delete_cf(cf, &w.key),
            }
        }
        let mut opts = WriteOptions::default();
        opts.set_sync(sync);
        self.db.write_opt(write, &opts)?;
        let _ = self.changes.send(Arc::new(batch));
        Ok(())
    }
}

fn read_u64(db: &DB, key: &[u8]) -> Result<u64, StateError> {
    let cf = db.cf_handle(META).ok_or_else(|| StateError::NoTable(META.into()))?;
    Ok(db.get_cf(cf, key)?.and_then(|b| <[u8; 8]>::try_from(b.as_slice()).ok()).map_or(0, u64::from_be_bytes))
}

fn read_string(db: &DB, key: &[u8]) -> Result<Option<String>, StateError> {
    let cf = db.cf_handle(META).ok_or_else(|| StateError::NoTable(META.into()))?;
    Ok(db.get_cf(cf, key)?.map(|b| String::from_utf8_lossy(&b).into_owned()))
}
