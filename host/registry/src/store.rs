//! The registry's RocksDB layout. One database with three column families:
//!
//! | column family | key | value |
//! | --- | --- | --- |
//! | `meta` | `v/<kind>/<name>/<version>` | [`PluginVersion`] JSON |
//! | `meta` | `s/<kind>/<name>` | [`ActivationState`] JSON |
//! | `blobs` | `<sha256>` | component bytes (shared by versions with the same digest) |
//! | `plugin-kv` | `<kind>/<name>/<key>` | a plugin's own key-value data |
//!
//! Registry writes go through one `WriteBatch` with `sync = true`: an acknowledged upload or
//! activation survives a crash of the process and of the machine.

use std::path::Path;
use std::sync::Arc;

use rocksdb::{ColumnFamilyDescriptor, DB, Direction, IteratorMode, Options, WriteBatch, WriteOptions};
use shoal_abi::PluginKind;

use crate::{ActivationState, PluginVersion, RegistryError};

pub(crate) const CF_META: &str = "meta";
pub(crate) const CF_BLOBS: &str = "blobs";
pub(crate) const CF_KV: &str = "plugin-kv";

pub(crate) struct Store {
    db: Arc<DB>,
}

fn cf<'a>(db: &'a DB, name: &str) -> Result<&'a rocksdb::ColumnFamily, RegistryError> {
    db.cf_handle(name).ok_or_else(|| RegistryError::Storage(format!("column family {name} missing")))
}

fn json<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, RegistryError> {
    serde_json::from_slice(bytes).map_err(|e| RegistryError::Storage(format!("corrupt record: {e}")))
}

fn to_json<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, RegistryError> {
    serde_json::to_vec(value).map_err(|e| RegistryError::Storage(e.to_string()))
}

fn version_key(kind: PluginKind, name: &str, version: &str) -> String {
    format!("v/{kind}/{name}/{version}")
}

fn state_key(kind: PluginKind, name: &str) -> String {
    format!("s/{kind}/{name}")
}

fn synced() -> WriteOptions {
    let mut opts = WriteOptions::default();
    opts.set_sync(true);
    opts
}

impl Store {
    pub(crate) fn open(dir: &Path) -> Result<Self, RegistryError> {
        std::fs::create_dir_all(dir).map_err(|e| RegistryError::Storage(format!("{}: {e}", dir.display())))?;
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        let cfs = [CF_META, CF_BLOBS, CF_KV].map(|n| ColumnFamilyDescriptor::new(n, Options::default()));
        let db = DB::open_cf_descriptors(&opts, dir, cfs)?;
        Ok(Store { db: Arc::new(db) })
    }

    /// The registry's tables in a database opened by someone else (the node's state, whose
    /// tables include these three).
    pub(crate) fn shared(db: Arc<DB>) -> Result<Self, RegistryError> {
        for name in [CF_META, CF_BLOBS, CF_KV] {
            cf(&db, name)?;
        }
        Ok(Store { db })
    }

    pub(crate) fn db(&self) -> Arc<DB> {
        self.db.clone()
    }

    /// Every plugin's key-value data kept in this database: `(kind, name, key, value)`, in key
    /// order. Keys whose plugin part is not a valid plugin (the master's `_master` journal) are
    /// left out.
    pub(crate) fn local_kv_entries(&self) -> Result<Vec<(PluginKind, String, String, Vec<u8>)>, RegistryError> {
        let mut out = Vec::new();
        for (key, value) in self.scan(CF_KV, "")? {
            let mut parts = key.splitn(3, '/');
            let (Some(kind), Some(name), Some(key)) = (parts.next(), parts.next(), parts.next()) else { continue };
            let Ok(kind) = kind.parse::<PluginKind>() else { continue };
            if crate::validate_name(name).is_err() || key.is_empty() {
                continue;
            }
            out.push((kind, name.to_owned(), key.to_owned(), value));
        }
        Ok(out)
    }

    /// Remove every key of one plugin's data kept in this database, in one write.
    pub(crate) fn delete_local_kv(&self, kind: PluginKind, name: &str) -> Result<(), RegistryError> {
        let db = &self.db;
        let mut batch = WriteBatch::default();
        for (key, _) in self.scan(CF_KV, &format!("{kind}/{name}/"))? {
            batch.delete_cf(cf(db, CF_KV)?, key);
        }
        Ok(db.write_opt(batch, &synced())?)
    }

    fn scan(&self, cf_name: &str, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, RegistryError> {
        let db = &self.db;
        let mut out = Vec::new();
        for item in db.iterator_cf(cf(db, cf_name)?, IteratorMode::From(prefix.as_bytes(), Direction::Forward)) {
            let (k, v) = item?;
            if !k.starts_with(prefix.as_bytes()) {
                break;
            }
            out.push((String::from_utf8_lossy(&k).into_owned(), v.into_vec()));
        }
        Ok(out)
    }

    pub(crate) fn version(
        &self,
        kind: PluginKind,
        name: &str,
        version: &str,
    ) -> Result<Option<PluginVersion>, RegistryError> {
        let db = &self.db;
        db.get_cf(cf(db, CF_META)?, version_key(kind, name, version))?.map(|b| json(&b)).transpose()
    }

    pub(crate) fn versions(&self) -> Result<Vec<PluginVersion>, RegistryError> {
        self.scan(CF_META, "v/")?.into_iter().map(|(_, v)| json(&v)).collect()
    }

    pub(crate) fn state(&self, kind: PluginKind, name: &str) -> Result<Option<ActivationState>, RegistryError> {
        let db = &self.db;
        db.get_cf(cf(db, CF_META)?, state_key(kind, name))?.map(|b| json(&b)).transpose()
    }

    pub(crate) fn states(&self) -> Result<Vec<(PluginKind, String, ActivationState)>, RegistryError> {
        let mut out = Vec::new();
        for (key, value) in self.scan(CF_META, "s/")? {
            let mut parts = key.splitn(3, '/').skip(1);
            let (Some(kind), Some(name)) = (parts.next(), parts.next()) else { continue };
            let Ok(kind) = kind.parse::<PluginKind>() else { continue };
            out.push((kind, name.to_owned(), json(&value)?));
        }
        Ok(out)
    }

    pub(crate) fn blob(&self, digest: &str) -> Result<Option<Vec<u8>>, RegistryError> {
        let db = &self.db;
        Ok(db.get_cf(cf(db, CF_BLOBS)?, digest)?)
    }

    pub(crate) fn put_version(
        &self,
        meta: &PluginVersion,
        bytes: &[u8],
        state: &ActivationState,
    ) -> Result<(), RegistryError> {
        let db = &self.db;
        let mut batch = WriteBatch::default();
        batch.put_cf(cf(db, CF_BLOBS)?, &meta.digest, bytes);
        batch.put_cf(cf(db, CF_META)?, version_key(meta.kind, &meta.name, &meta.version), to_json(meta)?);
        batch.put_cf(cf(db, CF_META)?, state_key(meta.kind, &meta.name), to_json(state)?);
        Ok(db.write_opt(batch, &synced())?)
    }

    pub(crate) fn put_state(&self, kind: PluginKind, name: &str, state: &ActivationState) -> Result<(), RegistryError> {
        let db = &self.db;
        Ok(db.put_cf_opt(cf(db, CF_META)?, state_key(kind, name), to_json(state)?, &synced())?)
    }

    /// Digests still referenced by some version other than the ones being removed.
    fn referenced(&self, except: &[String]) -> Result<Vec<String>, RegistryError> {
        Ok(self
            .versions()?
            .into_iter()
            .filter(|v| !except.contains(&version_key(v.kind, &v.name, &v.version)))
            .map(|v| v.digest)
            .collect())
    }

    pub(crate) fn delete_version(
        &self,
        kind: PluginKind,
        name: &str,
        version: &str,
        state: &ActivationState,
    ) -> Result<(), RegistryError> {
        let db = &self.db;
        let key = version_key(kind, name, version);
        let meta = self.version(kind, name, version)?;
        let mut batch = WriteBatch::default();
        batch.delete_cf(cf(db, CF_META)?, &key);
        batch.put_cf(cf(db, CF_META)?, state_key(kind, name), to_json(state)?);
        if let Some(meta) = meta
            && !self.referenced(std::slice::from_ref(&key))?.contains(&meta.digest)
        {
            batch.delete_cf(cf(db, CF_BLOBS)?, &meta.digest);
        }
        Ok(db.write_opt(batch, &synced())?)
    }

    pub(crate) fn delete_plugin(&self, kind: PluginKind, name: &str) -> Result<(), RegistryError> {
        let db = &self.db;
        let prefix = format!("v/{kind}/{name}/");
        let versions = self.scan(CF_META, &prefix)?;
        let keys: Vec<String> = versions.iter().map(|(k, _)| k.clone()).collect();
        let still = self.referenced(&keys)?;
        let mut batch = WriteBatch::default();
        for (key, value) in &versions {
            batch.delete_cf(cf(db, CF_META)?, key);
            let meta: PluginVersion = json(value)?;
            if !still.contains(&meta.digest) {
                batch.delete_cf(cf(db, CF_BLOBS)?, &meta.digest);
            }
        }
        batch.delete_cf(cf(db, CF_META)?, state_key(kind, name));
        // The plugin's own data goes with it.
        for (key, _) in self.scan(CF_KV, &format!("{kind}/{name}/"))? {
            batch.delete_cf(cf(db, CF_KV)?, key);
        }
        Ok(db.write_opt(batch, &synced())?)
    }
}
