//! Applying the log: every master, leader included, writes each entry to its RocksDB in order.

use std::sync::{Arc, Weak};
use std::time::Duration;

use rocksdb::WriteBatch;
use shoal_replication::{Blobs, Log, LogError};

use crate::entry::{Entry, WireChange};
use crate::{APPLIED, Batch, CLUSTER, Change, META, StateDb, StateError, Write};

/// The cluster the log belongs to, from its first entry; an empty log gets one (if two masters
/// race, the first append wins and the other is fenced, and both read the winner).
pub(crate) async fn cluster_of_log(log: &Log) -> Result<String, StateError> {
    let unavailable = |e: LogError| StateError::Unavailable(e.to_string());
    if log.bounds().await.map_err(unavailable)?.1 == 0 {
        let cluster = new_cluster_id();
        match log.append(Entry::Genesis { cluster }.encode().into(), 0).await {
            Ok(_) | Err(LogError::Fenced { .. }) => {}
            Err(e) => return Err(unavailable(e)),
        }
    }
    let first = log.get(1).await.map_err(unavailable)?;
    match first.map(|e| Entry::decode(&e.payload)) {
        Some(Ok(Entry::Genesis { cluster })) => Ok(cluster),
        _ => Err(StateError::Unavailable(
            "the log's first entry does not name a cluster: the stream holds something else".into(),
        )),
    }
}

fn new_cluster_id() -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    format!("{:x}-{:x}", nanos, std::process::id())
}

/// Apply the log from `applied + 1` on, for as long as the state is open.
pub(crate) async fn run(state: Weak<StateDb>, log: Log, blobs: Blobs, mut applied: u64) {
    loop {
        let mut reader = match log.read(applied + 1).await {
            Ok(reader) => reader,
            Err(e) => {
                tracing::warn!(cause = %e, "cannot read the state's log; retrying");
                // A product retry while NATS is away, not a wait for an event.
                tokio::time::sleep(Duration::from_millis(200)).await;
                if state.strong_count() == 0 {
                    return;
                }
                continue;
            }
        };
        loop {
            let entry = match reader.next().await {
                Ok(entry) => entry,
                Err(e) => {
                    tracing::warn!(cause = %e, "the state's log reader stopped; reopening");
                    break;
                }
            };
            if entry.sequence <= applied {
                continue;
            }
            let Some(state) = state.upgrade() else { return };
            match apply_one(&state, &blobs, entry.sequence, &entry.payload).await {
                Ok(()) => applied = entry.sequence,
                Err(e) => {
                    // Applying out of order would corrupt the cache: stop here, loudly.
                    tracing::error!(sequence = entry.sequence, cause = %e, "cannot apply the state's log; this master's state is frozen");
                    return;
                }
            }
        }
    }
}

async fn apply_one(state: &StateDb, blobs: &Blobs, sequence: u64, payload: &[u8]) -> Result<(), StateError> {
    let entry = Entry::decode(payload).map_err(StateError::Storage)?;
    let meta = state.db.cf_handle(META).ok_or_else(|| StateError::NoTable(META.into()))?;
    let mut write = WriteBatch::default();
    let mut batches = Vec::new();
    match entry {
        Entry::Genesis { cluster } => write.put_cf(meta, CLUSTER, cluster.as_bytes()),
        Entry::Term { term, holder } => tracing::info!(term, %holder, sequence, "a leader took over the state"),
        Entry::Batches { batches: wire, .. } => {
            for writes in wire {
                let mut batch = Batch::default();
                for w in writes {
                    let change = match w.change {
                        WireChange::Put(v) => Change::Put(v),
                        WireChange::Delete => Change::Delete,
                        WireChange::Blob(name) => Change::PutBlob { bytes: fetch(blobs, &name).await, name },
                    };
                    let cf = state.table(&w.table)?;
                    match &change {
                        Change::Put(v) | Change::PutBlob { bytes: v, .. } => write.put_cf(cf, &w.key, v),
                        Change::Delete => write.delete_cf(cf, &w.key),
                    }
                    batch.writes.push(Write { table: w.table, key: w.key, change });
                }
                batches.push(batch);
            }
        }
    }
    write.put_cf(meta, APPLIED, sequence.to_be_bytes());
    // Not synced: the log is the truth, and a crash replays what was lost.
    state.db.write(write)?;
    state.applied.send_replace(sequence);
    for batch in batches {
        let _ = state.changes.send(Arc::new(batch));
    }
    Ok(())
}

/// A blob named by an applied entry: the leader stored it before appending, so it is there;
/// while the Object Store does not answer, wait for it (the log cannot be applied past it).
async fn fetch(blobs: &Blobs, name: &str) -> Vec<u8> {
    let mut pause = Duration::from_millis(20);
    loop {
        match blobs.get(name).await {
            Ok(Some(bytes)) => return bytes,
            Ok(None) => tracing::error!(%name, "a blob named in the state's log is missing; waiting for it"),
            Err(e) => tracing::warn!(%name, cause = %e, "cannot fetch a blob of the state's log; retrying"),
        }
        // A product retry with back-off while the Object Store is unavailable.
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(2));
    }
}
