//! The state store as Wasm tasks see it: `wasi:keyvalue` buckets (see
//! `shoal_wasm_executor::kv`) backed by Shoal's sharded store, one bucket per store namespace.
//!
//! A task opens only the namespaces its launch names in the label `shoal.kv`
//! (comma-separated, e.g. `"shoal.kv": "orders,sessions"`); the bucket identifier is the
//! namespace. The agent reaches the store like any client: a `StoreClient` on its bus.

use std::sync::{Arc, OnceLock};

use shoal_bus::SharedBus;
use shoal_store::client::StoreClient;
use shoal_store::{MAX_BATCH_OPS, MAX_LIST_LIMIT, Op, PutOptions, StoreError};
use shoal_wasm_executor::kv::{TaskKvError, increment_value};
use shoal_wasm_executor::{TaskKv, TaskKvAccess};

/// The label that names the store namespaces a Wasm task may open.
pub use shoal_protocol::labels::KV as KV_LABEL;
/// Compare-and-set rounds an `increment` tries before giving up (each lost round means another
/// writer changed the counter in between).
const INCREMENT_ATTEMPTS: usize = 64;

/// `wasi:keyvalue` over the sharded store.
pub struct StoreTaskKv {
    bus: SharedBus,
    /// Made on first use: a client follows the shard map from a task of its own, which needs the
    /// runtime that tasks run on.
    client: OnceLock<Arc<StoreClient>>,
}

impl StoreTaskKv {
    /// A backend reaching the store over `bus`.
    pub fn new(bus: SharedBus) -> Arc<StoreTaskKv> {
        Arc::new(StoreTaskKv { bus, client: OnceLock::new() })
    }

    fn client(&self) -> &Arc<StoreClient> {
        self.client.get_or_init(|| StoreClient::new(self.bus.clone(), None))
    }
}

/// A `shoal.kv` label the agent refuses: it names something other than store namespaces, or a
/// system namespace (the master refuses those at launch already; this is the second line).
#[derive(Debug, thiserror::Error)]
pub enum KvLabelError {
    /// Not a namespace name.
    #[error("label {KV_LABEL}: {0}")]
    Invalid(StoreError),
    /// A system namespace (`_…`).
    #[error(transparent)]
    System(#[from] shoal_protocol::labels::LabelError),
}

/// The buckets a task may open, from its `shoal.kv` label: `Ok(None)` without the label, an
/// error naming the bad namespace otherwise.
pub fn access(
    labels: &std::collections::BTreeMap<String, String>,
    backend: Arc<StoreTaskKv>,
) -> Result<Option<TaskKvAccess>, KvLabelError> {
    let Some(text) = labels.get(KV_LABEL) else { return Ok(None) };
    shoal_protocol::labels::check_launch(labels)?;
    let mut buckets = Vec::new();
    for ns in shoal_protocol::labels::kv_namespaces(text) {
        shoal_store::validate_namespace(ns).map_err(KvLabelError::Invalid)?;
        buckets.push(ns.to_owned());
    }
    Ok(Some(TaskKvAccess { backend, buckets }))
}

fn text(e: StoreError) -> TaskKvError {
    TaskKvError::backend(e)
}

#[async_trait::async_trait]
impl TaskKv for StoreTaskKv {
    async fn get(&self, bucket: &str, key: &str) -> Result<Option<Vec<u8>>, TaskKvError> {
        Ok(self.client().get(bucket, key).await.map_err(text)?.map(|e| e.value))
    }

    async fn set(&self, bucket: &str, key: &str, value: Vec<u8>) -> Result<(), TaskKvError> {
        self.client().put(bucket, key, &value, PutOptions::default()).await.map(|_| ()).map_err(text)
    }

    async fn delete(&self, bucket: &str, key: &str) -> Result<(), TaskKvError> {
        // `wasi:keyvalue` deletes are idempotent: an absent key is not an error.
        match self.client().delete(bucket, key, None).await {
            Ok(_) | Err(StoreError::NotFound { .. }) => Ok(()),
            Err(e) => Err(text(e)),
        }
    }

    async fn list_keys(
        &self,
        bucket: &str,
        cursor: Option<&str>,
    ) -> Result<(Vec<String>, Option<String>), TaskKvError> {
        let page = self.client().list(bucket, "", cursor, MAX_LIST_LIMIT).await.map_err(text)?;
        Ok((page.entries.into_iter().map(|e| e.key).collect(), page.cursor))
    }

    async fn increment(&self, bucket: &str, key: &str, delta: u64) -> Result<u64, TaskKvError> {
        let client = self.client();
        for _ in 0..INCREMENT_ATTEMPTS {
            let entry = client.get(bucket, key).await.map_err(text)?;
            let next = increment_value(entry.as_ref().map(|e| e.value.as_slice()), delta)?;
            let options = PutOptions { version: Some(entry.map_or(0, |e| e.version)), ttl: None };
            match client.put(bucket, key, next.to_string().as_bytes(), options).await {
                Ok(_) => return Ok(next),
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(text(e)),
            }
        }
        Err(TaskKvError::Contended { key: key.to_owned(), attempts: INCREMENT_ATTEMPTS })
    }

    async fn set_many(&self, bucket: &str, pairs: Vec<(String, Vec<u8>)>) -> Result<(), TaskKvError> {
        let ops: Vec<Op> =
            pairs.into_iter().map(|(key, value)| Op::Put { key, value, options: PutOptions::default() }).collect();
        for chunk in ops.chunks(MAX_BATCH_OPS) {
            self.client().batch(bucket, chunk.to_vec()).await.map_err(text)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_agent_refuses_a_system_namespace_too() {
        let backend = StoreTaskKv::new(Arc::new(shoal_bus::LocalBus::new()));
        let labels = |kv: &str| std::collections::BTreeMap::from([(KV_LABEL.to_owned(), kv.to_owned())]);
        let err = access(&labels("orders,_plugin-framework-service"), backend.clone()).err().expect("refused");
        assert!(matches!(err, KvLabelError::System(_)), "{err}");
        assert!(err.to_string().contains("`_plugin-framework-service`, a system namespace"), "{err}");
        let granted = access(&labels("orders, sessions"), backend).expect("app namespaces").expect("a grant");
        assert_eq!(granted.buckets, ["orders", "sessions"]);
    }
}
