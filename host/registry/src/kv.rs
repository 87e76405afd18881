//! A plugin's own key-value store in the registry's `plugin-kv` table: the backend of the
//! `keyvalue` import where the node gives no other (a standalone gateway's routers), and the
//! master's task journal (`framework/_master/…`). Each plugin (kind + name) sees only the keys
//! under its own prefix; all versions and instances of a plugin share them.
//!
//! Writes are submitted to the state without waiting ([`StateDb::submit`]): in order, durable
//! once [`RocksKv::flush`] returns. With the local backend they are written at once; with the
//! replicated one a read sees a write once the leader's log entry is applied here, and only the
//! leader writes.

use std::sync::Arc;
use std::time::Instant;

use rocksdb::{Direction, IteratorMode};
use shoal_abi::PluginKind;
use shoal_runtime::{KvBackend, KvError};
use shoal_state::{Batch, StateDb};

use crate::store::CF_KV;

/// The store of one plugin.
pub struct RocksKv {
    state: Arc<StateDb>,
    prefix: String,
}

impl RocksKv {
    pub(crate) fn new(state: Arc<StateDb>, kind: PluginKind, name: &str) -> Self {
        RocksKv { state, prefix: format!("{kind}/{name}/") }
    }

    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    /// Wait until every write submitted so far is durable (replicated, with the replicated
    /// state).
    pub async fn flush(&self) -> Result<(), KvError> {
        self.state.flush().await.map_err(KvError::backend)
    }
}

/// Reads are local RocksDB reads and writes are submitted without waiting: nothing here waits on
/// anything a call's deadline could bound, so `until` is ignored.
impl KvBackend for RocksKv {
    fn waits(&self) -> bool {
        false
    }

    fn get_until(&self, key: &str, _: Option<Instant>) -> Result<Option<Vec<u8>>, KvError> {
        self.state.get(CF_KV, self.key(key).as_bytes()).map_err(KvError::backend)
    }

    fn set_until(&self, key: &str, value: &[u8], _: Option<Instant>) -> Result<(), KvError> {
        self.state.submit(Batch::new().put(CF_KV, self.key(key), value).clone());
        Ok(())
    }

    fn delete_until(&self, key: &str, _: Option<Instant>) -> Result<(), KvError> {
        self.state.submit(Batch::new().delete(CF_KV, self.key(key)).clone());
        Ok(())
    }

    fn list_until(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
        _: Option<Instant>,
    ) -> Result<Vec<String>, KvError> {
        let full_prefix = self.key(prefix);
        // Seek to just after `start_after` (appending a 0 byte gives the next key in order).
        let start = match start_after {
            Some(after) if after.as_bytes() >= prefix.as_bytes() => {
                let mut k = self.key(after).into_bytes();
                k.push(0);
                k
            }
            _ => full_prefix.clone().into_bytes(),
        };
        let db = self.state.db();
        let cf = self.state.table(CF_KV).map_err(KvError::backend)?;
        let mut keys = Vec::new();
        for item in db.iterator_cf(cf, IteratorMode::From(&start, Direction::Forward)) {
            let (k, _) = item.map_err(KvError::backend)?;
            if !k.starts_with(full_prefix.as_bytes()) || keys.len() >= limit {
                break;
            }
            keys.push(String::from_utf8_lossy(&k[self.prefix.len()..]).into_owned());
        }
        Ok(keys)
    }
}
