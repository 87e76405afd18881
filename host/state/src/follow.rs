//! Following one table: which keys the applied batches changed, for an in-memory view that
//! rereads them (the tokens, the routes, the shard map, the artifacts of a standby).
//!
//! A view that rereads a changed key from the database, under the same lock it updates itself
//! with, never goes back in time: the database only moves forward, and a batch is announced
//! after it is written. So a view may apply its own commits at once and also follow the
//! announcements without the two racing each other.

use std::sync::Arc;

use tokio::sync::broadcast;

use crate::{Batch, StateDb};

/// What changed in a watched table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TableChange {
    /// These keys changed (in order; a key may repeat): reread them.
    Keys(Vec<Vec<u8>>),
    /// Announcements were lost (the watcher lagged): reread the whole table.
    Lost,
}

/// The changes of one table as this member applies them. See [`StateDb::watch`].
#[derive(Debug)]
pub struct TableWatch {
    table: String,
    changes: broadcast::Receiver<Arc<Batch>>,
}

impl TableWatch {
    /// The next change of the table; `None` once the state is closed.
    pub async fn next(&mut self) -> Option<TableChange> {
        loop {
            match self.changes.recv().await {
                Ok(batch) => {
                    let keys: Vec<Vec<u8>> =
                        batch.writes.iter().filter(|w| w.table == self.table).map(|w| w.key.clone()).collect();
                    if !keys.is_empty() {
                        return Some(TableChange::Keys(keys));
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => return Some(TableChange::Lost),
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}

impl StateDb {
    /// Follow `table`: take the watch *before* reading the table, then apply every change it
    /// reports by rereading the keys it names.
    pub fn watch(&self, table: &str) -> TableWatch {
        TableWatch { table: table.to_owned(), changes: self.subscribe() }
    }
}
