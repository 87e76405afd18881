//! The shard map in the master's state: table [`STORE_TABLE`].
//!
//! | key | value |
//! | --- | --- |
//! | `map` | `{"map": ShardMap, "pending": [id, from, to] or null, "last_move_id": n}` (JSON) |
//!
//! One value, so the map and the move in progress change together. Earlier versions kept the
//! same JSON in `<data_dir>/store-map.json`; [`migrate_map_file`] moves it in.

use std::path::Path;
use std::sync::Weak;

use shoal_state::{Batch, StateDb, TableWatch};

use super::{Coordinator, Persisted};
use crate::StoreError;

/// The state's table of the store's control plane.
pub const STORE_TABLE: &str = "store";
/// The key of the map (with the move in progress).
const MAP_KEY: &[u8] = b"map";

fn decode(bytes: &[u8]) -> Result<Persisted, StoreError> {
    serde_json::from_slice(bytes)
        .map_err(|e| StoreError::Config(format!("the shard map in the state is unreadable: {e}")))
}

/// The map in the state (an empty one when there is none yet).
pub(super) fn load(state: &StateDb) -> Result<Persisted, StoreError> {
    match state.get(STORE_TABLE, MAP_KEY)? {
        Some(bytes) => decode(&bytes),
        None => Ok(Persisted::default()),
    }
}

/// Commit `persisted`.
pub(super) async fn save(state: &StateDb, persisted: &Persisted) -> Result<(), StoreError> {
    let bytes = serde_json::to_vec_pretty(persisted).map_err(|e| StoreError::Protocol(e.to_string()))?;
    let mut batch = Batch::new();
    batch.put(STORE_TABLE, MAP_KEY, bytes);
    state.commit(batch).await?;
    Ok(())
}

/// Take every change of the map into `coordinator`, for as long as it exists.
pub(super) async fn follow(coordinator: Weak<Coordinator>, mut watch: TableWatch) {
    while watch.next().await.is_some() {
        let Some(coordinator) = coordinator.upgrade() else { return };
        coordinator.reread();
    }
}

/// Move `store-map.json` of an earlier master into the state when the state has no map yet,
/// then remove the file (a map in the state wins). Returns whether it moved. A file that does
/// not parse is an error and changes nothing; so is a commit the state refuses.
pub async fn migrate_map_file(state: &StateDb, file: &Path) -> Result<bool, StoreError> {
    let bytes = match std::fs::read(file) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(StoreError::Config(format!("{}: {e}", file.display()))),
    };
    let persisted: Persisted = serde_json::from_slice(&bytes)
        .map_err(|e| StoreError::Config(format!("{} is unreadable: {e}", file.display())))?;
    let moved = state.get(STORE_TABLE, MAP_KEY)?.is_none();
    if moved {
        save(state, &persisted).await?;
    }
    std::fs::remove_file(file)
        .map_err(|e| StoreError::Config(format!("{}: moved into the state, but not removed: {e}", file.display())))?;
    Ok(moved)
}
