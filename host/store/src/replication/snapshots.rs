//! Snapshots and compaction of replicated shards' logs.
//!
//! The member leading a shard takes a snapshot of its copy ([`Store::snapshot_shard`]) every
//! `snapshot_every` entries and stores it in the JetStream Object Store bucket
//! `shoal-shard-snapshots`, as `shard-<n>-<sequence>`; then it deletes the log's entries up to
//! the *previous* snapshot and the snapshots before that one. So the log holds between one and
//! two rounds of entries, and a member up to a round behind still reads on from the log. A copy
//! that needs an entry the log no longer has (a node back after a long absence, a new member)
//! is replaced by the newest snapshot before it is replicated ([`restore_if_behind`]), then
//! reads on from the entry after it.

use std::sync::{Arc, Weak};
use std::time::Duration;

use shoal_replication::{Blobs, Log};

use super::ReplicationConfig;
use crate::{Store, StoreError};

/// The Object Store bucket of the shards' snapshots.
pub const SNAPSHOT_BUCKET: &str = shoal_bus::subject::SHARD_SNAPSHOT_BUCKET;

/// How often the leader checks whether a snapshot is due.
const CHECK_EVERY: Duration = Duration::from_secs(1);

fn unavailable(n: u32, e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable { shard: n, node: String::new(), reason: format!("the shard's snapshots: {e}") }
}

/// Object names sort by sequence: it is zero-padded.
fn name(n: u32, sequence: u64) -> String {
    format!("shard-{n}-{sequence:020}")
}

async fn open(config: &ReplicationConfig, n: u32) -> Result<Blobs, StoreError> {
    Blobs::open(config.client.clone(), &format!("{}{SNAPSHOT_BUCKET}", config.prefix), config.replicas)
        .await
        .map_err(|e| unavailable(n, e))
}

/// The sequences of shard `n`'s snapshots, oldest first.
async fn sequences(blobs: &Blobs, n: u32) -> Result<Vec<u64>, StoreError> {
    let prefix = format!("shard-{n}-");
    let mut found: Vec<u64> = blobs
        .names(&prefix)
        .await
        .map_err(|e| unavailable(n, e))?
        .iter()
        .filter_map(|name| name.strip_prefix(&prefix)?.parse().ok())
        .collect();
    found.sort_unstable();
    Ok(found)
}

/// Replace this node's copy of shard `n` by the newest snapshot when the log no longer holds
/// the entries after what the copy applied (`first` is the log's first entry, `last` its last).
/// A compacted log with no snapshot that covers the gap is refused: reading on would skip writes.
pub(super) async fn restore_if_behind(
    store: &Arc<Store>,
    n: u32,
    config: &ReplicationConfig,
    (first, last): (u64, u64),
) -> Result<(), StoreError> {
    let applied = store.stored_applied(n)?;
    if last <= applied || first <= applied + 1 {
        return Ok(());
    }
    let blobs = open(config, n).await?;
    let newest = sequences(&blobs, n).await?.last().copied();
    let covering = newest.filter(|&s| s + 1 >= first && s > applied);
    let Some(sequence) = covering else {
        return Err(StoreError::Corrupt(format!(
            "the log of shard {n} starts at entry {first}, this copy applied {applied}, and no snapshot covers the \
             entries between (newest: {newest:?}); not replicating the shard"
        )));
    };
    let bytes = blobs
        .get(&name(n, sequence))
        .await
        .map_err(|e| unavailable(n, e))?
        .ok_or_else(|| unavailable(n, format!("snapshot {sequence} vanished")))?;
    tracing::info!(
        shard = n,
        applied,
        first,
        sequence,
        bytes = bytes.len(),
        "the log was compacted past this copy; restoring a snapshot"
    );
    let restoring = store.clone();
    tokio::task::spawn_blocking(move || restoring.restore_shard(n, &bytes))
        .await
        .map_err(|e| StoreError::Config(format!("restoring shard {n}: {e}")))??;
    Ok(())
}

/// While this member leads shard `n`: a snapshot every `config.snapshot_every` entries, then
/// the log compacted up to the previous one. Ends when the store lets the shard go.
pub(super) async fn compact(store: Weak<Store>, n: u32, log: Log, config: ReplicationConfig) {
    if config.snapshot_every == 0 {
        return;
    }
    let mut previous: Option<u64> = None;
    let mut known = false;
    loop {
        tokio::time::sleep(CHECK_EVERY).await;
        let Some(strong) = store.upgrade() else { return };
        if strong.leads_shard(n).is_none() {
            known = false; // another leader may have taken snapshots meanwhile
            continue;
        }
        let blobs = match open(&config, n).await {
            Ok(blobs) => blobs,
            Err(e) => {
                tracing::warn!(shard = n, cause = %e, "cannot reach the shard's snapshots");
                continue;
            }
        };
        if !known {
            match sequences(&blobs, n).await {
                Ok(found) => (previous, known) = (found.last().copied(), true),
                Err(e) => {
                    tracing::warn!(shard = n, cause = %e, "cannot list the shard's snapshots");
                    continue;
                }
            }
        }
        if strong.applied(n) < previous.unwrap_or(0) + config.snapshot_every {
            continue;
        }
        match snapshot_and_compact(&strong, n, &log, &blobs, previous).await {
            Ok(sequence) => previous = Some(sequence),
            Err(e) => tracing::warn!(shard = n, cause = %e, "taking a snapshot of the shard failed"),
        }
    }
}

async fn snapshot_and_compact(
    store: &Arc<Store>,
    n: u32,
    log: &Log,
    blobs: &Blobs,
    previous: Option<u64>,
) -> Result<u64, StoreError> {
    let taking = store.clone();
    let (sequence, bytes) = tokio::task::spawn_blocking(move || taking.snapshot_shard(n))
        .await
        .map_err(|e| StoreError::Config(format!("a snapshot of shard {n}: {e}")))??;
    blobs.put(&name(n, sequence), &bytes).await.map_err(|e| unavailable(n, e))?;
    tracing::info!(shard = n, sequence, bytes = bytes.len(), "took a snapshot of the shard");
    if let Some(previous) = previous {
        log.purge_before(previous + 1).await.map_err(|e| unavailable(n, e))?;
        for old in sequences(blobs, n).await?.into_iter().filter(|&s| s < previous) {
            blobs.delete(&name(n, old)).await.map_err(|e| unavailable(n, e))?;
        }
        tracing::info!(shard = n, before = previous + 1, "compacted the shard's log");
    }
    Ok(sequence)
}

/// Delete every snapshot of shard `n` (the shard is gone).
pub(super) async fn destroy(n: u32, config: &ReplicationConfig) -> Result<(), StoreError> {
    let blobs = open(config, n).await?;
    for sequence in sequences(&blobs, n).await? {
        blobs.delete(&name(n, sequence)).await.map_err(|e| unavailable(n, e))?;
    }
    Ok(())
}
