//! Large values, replicated: a JetStream Object Store bucket of content-addressed blobs.
//!
//! A log entry must fit in one NATS message (1 MiB by default); a plugin's component or a task's
//! artifact may not. Such bytes go here first, named by their sha256, and the log entry names
//! the digest: whoever applies the entry fetches the bytes. A blob is written once and never
//! changes, so a name always means the same bytes.

use async_nats::jetstream::{self, object_store};
use futures::StreamExt;
use tokio::io::AsyncReadExt;

/// Why a blob could not be stored or read.
#[derive(Debug, thiserror::Error)]
#[error("blob bucket {bucket}: {reason}")]
pub struct BlobError {
    /// The bucket.
    pub bucket: String,
    /// What JetStream said.
    pub reason: String,
}

/// A bucket of blobs.
#[derive(Clone)]
pub struct Blobs {
    store: object_store::ObjectStore,
    bucket: String,
}

impl std::fmt::Debug for Blobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Blobs").field("bucket", &self.bucket).finish()
    }
}

impl Blobs {
    /// The bucket `bucket` (made if missing, file storage, `replicas` copies).
    pub async fn open(client: async_nats::Client, bucket: &str, replicas: usize) -> Result<Blobs, BlobError> {
        let js = jetstream::new(client);
        let error = |e: &dyn std::fmt::Display| BlobError { bucket: bucket.to_owned(), reason: e.to_string() };
        let store = match js.get_object_store(bucket).await {
            Ok(store) => store,
            Err(_) => js
                .create_object_store(object_store::Config {
                    bucket: bucket.to_owned(),
                    num_replicas: replicas.max(1),
                    storage: jetstream::stream::StorageType::File,
                    ..object_store::Config::default()
                })
                .await
                .map_err(|e| error(&e))?,
        };
        Ok(Blobs { store, bucket: bucket.to_owned() })
    }

    fn error(&self, reason: impl std::fmt::Display) -> BlobError {
        BlobError { bucket: self.bucket.clone(), reason: reason.to_string() }
    }

    /// Store `bytes` as `name`, unless a blob of that name is already whole there.
    pub async fn put(&self, name: &str, bytes: &[u8]) -> Result<(), BlobError> {
        if let Ok(info) = self.store.info(name).await
            && !info.deleted
            && info.size == bytes.len()
        {
            return Ok(());
        }
        let mut reader = bytes;
        self.store.put(name, &mut reader).await.map_err(|e| self.error(e))?;
        Ok(())
    }

    /// The names of the blobs there are that start with `prefix`.
    pub async fn names(&self, prefix: &str) -> Result<Vec<String>, BlobError> {
        let mut list = self.store.list().await.map_err(|e| self.error(e))?;
        let mut names = Vec::new();
        while let Some(info) = list.next().await {
            let info = info.map_err(|e| self.error(e))?;
            if !info.deleted && info.name.starts_with(prefix) {
                names.push(info.name);
            }
        }
        Ok(names)
    }

    /// Delete blob `name` (nothing to do when there is none).
    pub async fn delete(&self, name: &str) -> Result<(), BlobError> {
        match self.store.delete(name).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == object_store::DeleteErrorKind::NotFound => Ok(()),
            Err(e) => Err(self.error(e)),
        }
    }

    /// The bytes of `name`, or `None` when there is no such blob.
    pub async fn get(&self, name: &str) -> Result<Option<Vec<u8>>, BlobError> {
        let mut object = match self.store.get(name).await {
            Ok(object) => object,
            Err(e) if e.kind() == object_store::GetErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.error(e)),
        };
        let mut bytes = Vec::with_capacity(object.info().size);
        // Chunk by chunk rather than `read_to_end`: the object's reader can hand over a chunk
        // and then fail (its digest, say, when the object was replaced while read), which
        // `read_to_end` asserts never happens; here the failure is returned as the error it is.
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            let n = object.read(&mut chunk).await.map_err(|e| self.error(e))?;
            if n == 0 {
                break;
            }
            bytes.extend_from_slice(&chunk[..n]);
        }
        Ok(Some(bytes))
    }
}
