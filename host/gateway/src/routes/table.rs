//! Routes in the master's state: table [`ROUTES_TABLE`], one key per route.
//!
//! | key | value |
//! | --- | --- |
//! | `<route name>` | the [`Route`] as JSON, as `PUT /v1/routes/{name}` takes it |
//!
//! Earlier versions of the master kept the whole table in `<data_dir>/routes.json` (a JSON
//! array of routes, as the standalone gateway still does); [`migrate_routes_file`] moves it in.

use std::path::Path;
use std::sync::Weak;

use shoal_state::{Batch, StateDb, StateError, TableChange, TableWatch};

use super::{Route, RouteError, Routes, read_file};

/// The state's table of routes.
pub const ROUTES_TABLE: &str = "routes";

impl From<StateError> for RouteError {
    fn from(e: StateError) -> Self {
        match e {
            StateError::NotLeader => RouteError::NotLeader,
            e => RouteError::Storage(e.to_string()),
        }
    }
}

pub(super) fn encode(route: &Route) -> Result<Vec<u8>, RouteError> {
    serde_json::to_vec(route).map_err(|e| RouteError::Storage(e.to_string()))
}

fn decode(key: &[u8], value: &[u8]) -> Result<Route, RouteError> {
    let name = String::from_utf8_lossy(key);
    let route: Route = serde_json::from_slice(value)
        .map_err(|e| RouteError::Storage(format!("route `{name}` in the state is unreadable: {e}")))?;
    if route.name != name {
        return Err(RouteError::Storage(format!("route `{name}` in the state is named `{}`", route.name)));
    }
    Ok(route)
}

/// Every route of the table, by name.
pub(super) fn load(state: &StateDb) -> Result<Vec<Route>, RouteError> {
    state.scan(ROUTES_TABLE, b"")?.iter().map(|(k, v)| decode(k, v)).collect()
}

/// The route under `key`, if any.
pub(super) fn read(state: &StateDb, key: &[u8]) -> Result<Option<Route>, RouteError> {
    state.get(ROUTES_TABLE, key)?.map(|v| decode(key, &v)).transpose()
}

pub(super) async fn commit(state: &StateDb, batch: Batch) -> Result<(), RouteError> {
    state.commit(batch).await.map(|_| ()).map_err(RouteError::from)
}

/// Apply every change of the table to `routes`, for as long as it exists.
pub(super) async fn follow(routes: Weak<Routes>, mut watch: TableWatch) {
    while let Some(change) = watch.next().await {
        let Some(routes) = routes.upgrade() else { return };
        let super::Backing::State(state) = &routes.backing else { return };
        match change {
            TableChange::Keys(keys) => routes.reread(state, &keys),
            TableChange::Lost => routes.reload(state),
        }
    }
}

/// Move `routes.json` of an earlier master into the table, in one commit, when the table is
/// empty; then remove the file (a table that already has routes wins). Returns the number of
/// routes moved. A file that does not parse, or a route that is not valid, is an error and
/// changes nothing; so is a commit the state refuses.
pub async fn migrate_routes_file(state: &StateDb, file: &Path) -> Result<usize, RouteError> {
    if !file.exists() {
        return Ok(0);
    }
    let routes = read_file(file)?;
    for route in &routes {
        route.validate()?;
    }
    let mut moved = 0;
    if state.scan(ROUTES_TABLE, b"")?.is_empty() && !routes.is_empty() {
        let mut batch = Batch::new();
        for route in &routes {
            batch.put(ROUTES_TABLE, route.name.as_bytes(), encode(route)?);
        }
        commit(state, batch).await?;
        moved = routes.len();
    }
    std::fs::remove_file(file)
        .map_err(|e| RouteError::Storage(format!("{}: moved into the state, but not removed: {e}", file.display())))?;
    Ok(moved)
}
