//! A plugin's own key-value store, in the registry's RocksDB: the backend of the `keyvalue`
//! import. Each plugin (kind + name) sees only the keys under its own prefix; all versions and
//! instances of a plugin share them.
//!
//! Writes go to RocksDB's write-ahead log without an fsync per write: they survive a crash of
//! the process (`kill -9`), not necessarily a power loss. Plugin state is soft by contract; the
//! state store of apps (a later crate) has its own, stricter, policy.

use std::sync::Arc;

use rocksdb::{DB, Direction, IteratorMode};
use shoal_abi::PluginKind;
use shoal_runtime::{KvBackend, KvError};

use crate::store::CF_KV;

/// The store of one plugin.
pub struct RocksKv {
    db: Arc<DB>,
    prefix: String,
}

impl RocksKv {
    pub(crate) fn new(db: Arc<DB>, kind: PluginKind, name: &str) -> Self {
        RocksKv { db, prefix: format!("{kind}/{name}/") }
    }

    fn cf(&self) -> Result<&rocksdb::ColumnFamily, KvError> {
        self.db.cf_handle(CF_KV).ok_or(KvError::Unavailable("no plugin column family in the registry"))
    }

    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }
}

impl KvBackend for RocksKv {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        self.db.get_cf(self.cf()?, self.key(key)).map_err(KvError::backend)
    }

    fn set(&self, key: &str, value: &[u8]) -> Result<(), KvError> {
        self.db.put_cf(self.cf()?, self.key(key), value).map_err(KvError::backend)
    }

    fn delete(&self, key: &str) -> Result<(), KvError> {
        self.db.delete_cf(self.cf()?, self.key(key)).map_err(KvError::backend)
    }

    fn list(&self, prefix: &str, start_after: Option<&str>, limit: usize) -> Result<Vec<String>, KvError> {
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
        let mut keys = Vec::new();
        for item in self.db.iterator_cf(self.cf()?, IteratorMode::From(&start, Direction::Forward)) {
            let (k, _) = item.map_err(KvError::backend)?;
            if !k.starts_with(full_prefix.as_bytes()) || keys.len() >= limit {
                break;
            }
            keys.push(String::from_utf8_lossy(&k[self.prefix.len()..]).into_owned());
        }
        Ok(keys)
    }
}
