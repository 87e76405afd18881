//! The registry's tables in the master's state ([`shoal_state::StateDb`]):
//!
//! | table | key | value |
//! | --- | --- | --- |
//! | `meta` | `v/<kind>/<name>/<version>` | [`PluginVersion`] JSON |
//! | `meta` | `s/<kind>/<name>` | [`ActivationState`] JSON |
//! | `blobs` | `<sha256>` | component bytes (shared by versions with the same digest; a blob of the state) |
//! | `plugin-kv` | `<kind>/<name>/<key>` | a plugin's own key-value data |
//!
//! Every change is one committed batch: synced to disk with the local backend, replicated by the
//! leader's log with the replicated one. An acknowledged upload or activation survives a crash of
//! the process and of the machine, and, replicated, of the master.

use std::sync::Arc;

use shoal_abi::PluginKind;
use shoal_state::{Batch, StateDb};

use crate::{ActivationState, PluginVersion, RegistryError};

pub(crate) const CF_META: &str = "meta";
pub(crate) const CF_BLOBS: &str = "blobs";
pub(crate) const CF_KV: &str = "plugin-kv";

/// The tables the registry needs in the state it is opened on.
pub const TABLES: [&str; 3] = [CF_META, CF_BLOBS, CF_KV];

pub(crate) struct Store {
    state: Arc<StateDb>,
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

pub(crate) fn state_key(kind: PluginKind, name: &str) -> String {
    format!("s/{kind}/{name}")
}

/// The plugin an activation-state key names (`s/<kind>/<name>`).
pub(crate) fn plugin_of_state_key(key: &[u8]) -> Option<(PluginKind, String)> {
    let key = std::str::from_utf8(key).ok()?.strip_prefix("s/")?;
    let (kind, name) = key.split_once('/')?;
    Some((kind.parse().ok()?, name.to_owned()))
}

impl Store {
    pub(crate) fn new(state: Arc<StateDb>) -> Self {
        Store { state }
    }

    pub(crate) fn state_db(&self) -> &Arc<StateDb> {
        &self.state
    }

    async fn commit(&self, batch: Batch) -> Result<(), RegistryError> {
        self.state.commit(batch).await.map(|_| ()).map_err(RegistryError::from)
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

    /// Remove every key of one plugin's data kept in this database, in one batch (submitted:
    /// in order with the state's other writes, without waiting).
    pub(crate) fn delete_local_kv(&self, kind: PluginKind, name: &str) -> Result<(), RegistryError> {
        let mut batch = Batch::new();
        for (key, _) in self.scan(CF_KV, &format!("{kind}/{name}/"))? {
            batch.delete(CF_KV, key);
        }
        self.state.submit(batch);
        Ok(())
    }

    fn scan(&self, table: &str, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, RegistryError> {
        Ok(self
            .state
            .scan(table, prefix.as_bytes())?
            .into_iter()
            .map(|(k, v)| (String::from_utf8_lossy(&k).into_owned(), v))
            .collect())
    }

    pub(crate) fn version(
        &self,
        kind: PluginKind,
        name: &str,
        version: &str,
    ) -> Result<Option<PluginVersion>, RegistryError> {
        self.state.get(CF_META, version_key(kind, name, version).as_bytes())?.map(|b| json(&b)).transpose()
    }

    /// How many versions plugin `kind`/`name` has.
    pub(crate) fn version_count(&self, kind: PluginKind, name: &str) -> Result<usize, RegistryError> {
        Ok(self.scan(CF_META, &format!("v/{kind}/{name}/"))?.len())
    }

    pub(crate) fn versions(&self) -> Result<Vec<PluginVersion>, RegistryError> {
        self.scan(CF_META, "v/")?.into_iter().map(|(_, v)| json(&v)).collect()
    }

    pub(crate) fn state(&self, kind: PluginKind, name: &str) -> Result<Option<ActivationState>, RegistryError> {
        self.state.get(CF_META, state_key(kind, name).as_bytes())?.map(|b| json(&b)).transpose()
    }

    pub(crate) fn states(&self) -> Result<Vec<(PluginKind, String, ActivationState)>, RegistryError> {
        let mut out = Vec::new();
        for (key, value) in self.scan(CF_META, "s/")? {
            let Some((kind, name)) = plugin_of_state_key(key.as_bytes()) else { continue };
            out.push((kind, name, json(&value)?));
        }
        Ok(out)
    }

    pub(crate) fn blob(&self, digest: &str) -> Result<Option<Vec<u8>>, RegistryError> {
        Ok(self.state.get(CF_BLOBS, digest.as_bytes())?)
    }

    pub(crate) async fn put_version(
        &self,
        meta: &PluginVersion,
        bytes: &[u8],
        state: &ActivationState,
    ) -> Result<(), RegistryError> {
        let mut batch = Batch::new();
        if self.blob(&meta.digest)?.is_none() {
            batch.put_blob(CF_BLOBS, meta.digest.as_bytes(), &meta.digest, bytes.to_vec());
        }
        batch.put(CF_META, version_key(meta.kind, &meta.name, &meta.version), to_json(meta)?);
        batch.put(CF_META, state_key(meta.kind, &meta.name), to_json(state)?);
        self.commit(batch).await
    }

    pub(crate) async fn put_state(
        &self,
        kind: PluginKind,
        name: &str,
        state: &ActivationState,
    ) -> Result<(), RegistryError> {
        let mut batch = Batch::new();
        batch.put(CF_META, state_key(kind, name), to_json(state)?);
        self.commit(batch).await
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

    pub(crate) async fn delete_version(
        &self,
        kind: PluginKind,
        name: &str,
        version: &str,
        state: &ActivationState,
    ) -> Result<(), RegistryError> {
        let key = version_key(kind, name, version);
        let meta = self.version(kind, name, version)?;
        let mut batch = Batch::new();
        batch.delete(CF_META, key.as_bytes());
        batch.put(CF_META, state_key(kind, name), to_json(state)?);
        if let Some(meta) = meta
            && !self.referenced(std::slice::from_ref(&key))?.contains(&meta.digest)
        {
            batch.delete(CF_BLOBS, meta.digest.as_bytes());
        }
        self.commit(batch).await
    }

    pub(crate) async fn delete_plugin(&self, kind: PluginKind, name: &str) -> Result<(), RegistryError> {
        let prefix = format!("v/{kind}/{name}/");
        let versions = self.scan(CF_META, &prefix)?;
        let keys: Vec<String> = versions.iter().map(|(k, _)| k.clone()).collect();
        let still = self.referenced(&keys)?;
        let mut batch = Batch::new();
        for (key, value) in &versions {
            batch.delete(CF_META, key.as_bytes());
            let meta: PluginVersion = json(value)?;
            if !still.contains(&meta.digest) {
                batch.delete(CF_BLOBS, meta.digest.as_bytes());
            }
        }
        batch.delete(CF_META, state_key(kind, name));
        // The plugin's own data goes with it.
        for (key, _) in self.scan(CF_KV, &format!("{kind}/{name}/"))? {
            batch.delete(CF_KV, key);
        }
        self.commit(batch).await
    }
}
