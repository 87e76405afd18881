//! One master grows into several: the state a single master kept on its own disk joins the
//! replicated state.
//!
//! `shoal dev`, and `shoal master` before it could run as several, keep the master's state in
//! `<data-dir>/registry` (a local [`StateDb`]); a master of several keeps a cache of the
//! replicated one in `<data-dir>/state`. The first time a master of several leads a cluster whose
//! state is still empty and finds a local state in its data directory, it copies every table of
//! it — plugins and their blobs, activation history, plugins' data and the task journal, tokens,
//! the admin token, routes, the shard map, task artifacts — into the replicated state, then
//! renames the directory `registry.imported`. Nothing is imported into a state that holds data
//! already (that master joined a running cluster: its old directory is left where it is, with a
//! warning), and a copy is never made twice: the last batch records it, so a master that stopped
//! between that batch and the rename only renames.

use std::path::Path;

use anyhow::Context;
use shoal_state::{Batch, StateDb};

use crate::admin::CLUSTER_TABLE;

/// The key in [`CLUSTER_TABLE`] that records an import, with the directory it came from.
pub const IMPORTED_KEY: &[u8] = b"imported-local-state";

/// Tables whose values are blobs: replicated through the object store, named by their key (a
/// digest).
const BLOB_TABLES: [&str; 2] = ["blobs", shoal_task_io::artifacts::ARTIFACTS_TABLE];

/// Inline bytes per batch: well inside one log entry.
const BATCH_BYTES: usize = 256 * 1024;

/// Copy the local state in `<data_dir>/registry` into `state` (which this master leads), once,
/// when `state` is empty. Returns how many entries were copied.
pub async fn import_local_state(state: &StateDb, data_dir: &Path, tables: &[&str]) -> anyhow::Result<usize> {
    let dir = data_dir.join("registry");
    if !dir.join("CURRENT").exists() {
        return Ok(0);
    }
    let done = data_dir.join("registry.imported");
    if state.get(CLUSTER_TABLE, IMPORTED_KEY)?.is_some() {
        std::fs::rename(&dir, &done).with_context(|| format!("renaming {} after its import", dir.display()))?;
        return Ok(0);
    }
    if let Some(table) = first_non_empty(state, tables)? {
        tracing::warn!(
            dir = %dir.display(), table,
            "this data directory holds a single master's state, but the cluster's state is not empty: not imported \
             (move the directory away to silence this)"
        );
        return Ok(0);
    }
    let local = StateDb::open_local(&dir, tables).with_context(|| format!("opening {}", dir.display()))?;
    let mut copied = 0;
    let mut batch = Batch::new();
    let mut inline = 0;
    for table in tables {
        for (key, value) in local.scan(table, b"")? {
            copied += 1;
            if BLOB_TABLES.contains(table) {
                let name = String::from_utf8_lossy(&key).into_owned();
                batch.put_blob(table, key, &name, value);
            } else {
                inline += key.len() + value.len();
                batch.put(table, key, value);
            }
            if inline >= BATCH_BYTES || batch.writes.len() >= 256 {
                state.commit(std::mem::take(&mut batch)).await.context("importing the local state")?;
                inline = 0;
            }
        }
    }
    drop(local);
    batch.put(CLUSTER_TABLE, IMPORTED_KEY, dir.display().to_string());
    state.commit(batch).await.context("importing the local state")?;
    std::fs::rename(&dir, &done).with_context(|| format!("renaming {} after its import", dir.display()))?;
    tracing::info!(entries = copied, from = %dir.display(), "a single master's state imported into the cluster's");
    Ok(copied)
}

/// The first of `tables` with an entry in `state`.
fn first_non_empty<'a>(state: &StateDb, tables: &[&'a str]) -> anyhow::Result<Option<&'a str>> {
    for table in tables {
        if !state.is_empty(table)? {
            return Ok(Some(table));
        }
    }
    Ok(None)
}
