//! Shoal's state store for Wasm tasks, through the standard `wasi:keyvalue@0.2.0-draft`
//! interfaces (`store`, `atomics`, `batch`; the WIT is in this crate's `wit/`).
//!
//! The executor does not know where the state lives: the embedder (the agent) implements
//! [`TaskKv`] over the real store and names, per task, the buckets the task may open
//! ([`TaskKvAccess`] in [`crate::TaskSpec`]). Every other identifier, and every identifier when a
//! task has no backend, is `error::access-denied`. [`MemoryTaskKv`] is a backend in memory, for
//! tests and for hosts without a store.
//!
//! Guest input is checked here before it reaches a backend: keys of 1 to [`MAX_KEY_BYTES`]
//! bytes, values up to [`MAX_VALUE_BYTES`], batches up to [`MAX_BATCH_KEYS`] keys and
//! [`MAX_BATCH_BYTES`]. A bad input is `error::other` with a message, never a trap: a task's
//! mistake must not look like a host failure. A backend call is bounded too ([`CALL_TIMEOUT`],
//! the request deadline of a service) and gives way at once when the task is killed.

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use wasmtime::component::{HasData, Linker, Resource, ResourceTable};

/// Generated host bindings of the `shoal:task/imports` world (`wasi:keyvalue/imports`).
#[allow(missing_docs)]
mod generated {
    wasmtime::component::bindgen!({
        path: "wit",
        world: "shoal:task/imports",
        // Every backend call may go over the bus; the executor's calls into tasks are async.
        imports: { default: async | trappable },
        with: { "wasi:keyvalue/store.bucket": super::Bucket },
        require_store_data_send: true,
    });
}

use generated::wasi::keyvalue::{atomics, batch, store};

/// Longest key a task may use and largest value, in bytes: the limits of every key-value surface
/// (the state store's too), owned by `shoal-keyspace`.
pub use shoal_keyspace::{MAX_KEY_BYTES, MAX_VALUE_BYTES};
/// Most keys in one `get-many`, `set-many` or `delete-many`.
pub const MAX_BATCH_KEYS: usize = 1000;
/// Most bytes of keys and values one `set-many` may write or one `get-many` may return.
pub const MAX_BATCH_BYTES: usize = 16 << 20;
/// Most buckets a task (or one request of a service) may hold open at once: each is an entry
/// in the task's resource table, which must not grow without bound.
pub const MAX_OPEN_BUCKETS: usize = 256;
/// How many `list-keys` cursors a bucket handle remembers (the oldest are forgotten).
pub const MAX_CURSORS: usize = 64;
/// Page size of [`MemoryTaskKv`]'s listings unless set otherwise.
pub const LIST_PAGE: usize = 1000;
/// Longest a backend call may take before the task gets `error::other`.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// The storage behind the `wasi:keyvalue` imports of tasks, implemented by the embedder.
///
/// `bucket` is the identifier the task opened, always one its [`TaskKvAccess`] lists; how it maps
/// onto the real store (a namespace, a prefix, …) is the implementation's business. Keys and
/// values arrive checked against [`MAX_KEY_BYTES`] and [`MAX_VALUE_BYTES`]. An `Err` reaches the
/// task as `error::other(message)`.
#[async_trait::async_trait]
pub trait TaskKv: Send + Sync + 'static {
    /// The value under `key`.
    async fn get(&self, bucket: &str, key: &str) -> Result<Option<Vec<u8>>, TaskKvError>;

    /// Store `value` under `key`.
    async fn set(&self, bucket: &str, key: &str, value: Vec<u8>) -> Result<(), TaskKvError>;

    /// Remove `key` (absent is no error).
    async fn delete(&self, bucket: &str, key: &str) -> Result<(), TaskKvError>;

    /// Whether `key` has a value. The default reads the value.
    async fn exists(&self, bucket: &str, key: &str) -> Result<bool, TaskKvError> {
        Ok(self.get(bucket, key).await?.is_some())
    }

    /// One page of keys after `cursor` (`None`: from the start), and the cursor of the next page
    /// (`None` on the last). The page size is the backend's choice.
    async fn list_keys(&self, bucket: &str, cursor: Option<&str>)
    -> Result<(Vec<String>, Option<String>), TaskKvError>;

    /// Atomically add `delta` to the counter under `key` and return the sum. Counters are stored
    /// as decimal text (what wasmtime's own `wasi:keyvalue` host does), so tasks and operators
    /// can read them; [`increment_value`] does the arithmetic. Atomic against every other writer
    /// of the key, e.g. a compare-and-set loop.
    async fn increment(&self, bucket: &str, key: &str, delta: u64) -> Result<u64, TaskKvError>;

    /// The values of `keys`, in order. The default reads them one by one.
    async fn get_many(&self, bucket: &str, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>, TaskKvError> {
        let mut values = Vec::with_capacity(keys.len());
        for key in keys {
            values.push(self.get(bucket, key).await?);
        }
        Ok(values)
    }

    /// Store every pair. Not atomic (`wasi:keyvalue/batch` promises no atomicity). The default
    /// writes them one by one.
    async fn set_many(&self, bucket: &str, pairs: Vec<(String, Vec<u8>)>) -> Result<(), TaskKvError> {
        for (key, value) in pairs {
            self.set(bucket, &key, value).await?;
        }
        Ok(())
    }

    /// Remove every key. Not atomic. The default removes them one by one.
    async fn delete_many(&self, bucket: &str, keys: &[String]) -> Result<(), TaskKvError> {
        for key in keys {
            self.delete(bucket, key).await?;
        }
        Ok(())
    }
}

/// What a task may do with the state store: the backend and the bucket identifiers it may open.
#[derive(Clone)]
pub struct TaskKvAccess {
    /// Where the buckets live.
    pub backend: Arc<dyn TaskKv>,
    /// Identifiers `open` accepts; any other is `error::access-denied`.
    pub buckets: Vec<String>,
}

/// `current + delta` for a counter stored as decimal text (`None`: no value yet, i.e. 0); the
/// arithmetic of [`TaskKv::increment`], shared so every backend encodes counters alike.
pub fn increment_value(current: Option<&[u8]>, delta: u64) -> Result<u64, TaskKvError> {
    let now = match current {
        None => 0,
        Some(bytes) => {
            std::str::from_utf8(bytes).ok().and_then(|text| text.parse::<u64>().ok()).ok_or(TaskKvError::NotACounter)?
        }
    };
    now.checked_add(delta).ok_or(TaskKvError::Overflow { now, delta })
}

/// A [`TaskKv`] in memory: buckets are created on first write and live as long as the value.
pub struct MemoryTaskKv {
    buckets: Mutex<BTreeMap<String, BTreeMap<String, Vec<u8>>>>,
    page: usize,
}

impl Default for MemoryTaskKv {
    fn default() -> Self {
        MemoryTaskKv::with_page_size(LIST_PAGE)
    }
}

impl MemoryTaskKv {
    /// An empty store whose listings return [`LIST_PAGE`] keys a page.
    pub fn new() -> Self {
        MemoryTaskKv::default()
    }

    /// An empty store whose listings return `page` keys a page (at least 1).
    pub fn with_page_size(page: usize) -> Self {
        MemoryTaskKv { buckets: Mutex::new(BTreeMap::new()), page: page.max(1) }
    }
}

#[async_trait::async_trait]
impl TaskKv for MemoryTaskKv {
    async fn get(&self, bucket: &str, key: &str) -> Result<Option<Vec<u8>>, TaskKvError> {
        Ok(self.buckets.lock().get(bucket).and_then(|b| b.get(key)).cloned())
    }

    async fn set(&self, bucket: &str, key: &str, value: Vec<u8>) -> Result<(), TaskKvError> {
        self.buckets.lock().entry(bucket.to_owned()).or_default().insert(key.to_owned(), value);
        Ok(())
    }

    async fn delete(&self, bucket: &str, key: &str) -> Result<(), TaskKvError> {
        if let Some(b) = self.buckets.lock().get_mut(bucket) {
            b.remove(key);
        }
        Ok(())
    }

    async fn list_keys(
        &self,
        bucket: &str,
        cursor: Option<&str>,
    ) -> Result<(Vec<String>, Option<String>), TaskKvError> {
        use std::ops::Bound;
        let buckets = self.buckets.lock();
        let Some(b) = buckets.get(bucket) else { return Ok((Vec::new(), None)) };
        // The cursor is the last key of the previous page: keys are ordered, so the next page
        // starts right after it even if it was deleted meanwhile.
        let start = cursor.map_or(Bound::Unbounded, |c| Bound::Excluded(c.to_owned()));
        let mut keys: Vec<String> =
            b.range((start, Bound::Unbounded)).map(|(k, _)| k.clone()).take(self.page + 1).collect();
        let next = if keys.len() > self.page {
            keys.truncate(self.page);
            keys.last().cloned()
        } else {
            None
        };
        Ok((keys, next))
    }

    async fn increment(&self, bucket: &str, key: &str, delta: u64) -> Result<u64, TaskKvError> {
        // Read and write under one lock: that is what makes it atomic.
        let mut buckets = self.buckets.lock();
        let b = buckets.entry(bucket.to_owned()).or_default();
        let sum = increment_value(b.get(key).map(Vec::as_slice), delta)?;
        b.insert(key.to_owned(), sum.to_string().into_bytes());
        Ok(sum)
    }
}

/// Why a task's key-value call failed. It reaches the task as `error::other(message)`, a value
/// the task can handle, never a trap.
#[derive(Debug, thiserror::Error)]
pub enum TaskKvError {
    /// The value under the key is not a counter (`increment`).
    #[error("the value is not a counter (a decimal number from 0 to 2^64-1)")]
    NotACounter,
    /// The counter would pass 2^64-1.
    #[error("incrementing {now} by {delta} overflows the counter")]
    Overflow {
        /// The counter now.
        now: u64,
        /// What was to be added.
        delta: u64,
    },
    /// Other writers changed the key every time (`increment` by compare-and-set).
    #[error("increment of `{key}` lost {attempts} races with other writers; try again")]
    Contended {
        /// The key.
        key: String,
        /// Rounds tried.
        attempts: usize,
    },
    /// The store failed the operation (its own error, kept as the source).
    #[error("{0}")]
    Backend(Box<dyn std::error::Error + Send + Sync>),
}

impl TaskKvError {
    /// The store's own error.
    pub fn backend(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> TaskKvError {
        TaskKvError::Backend(e.into())
    }
}

/// A bucket a task opened: an entry in the task's resource table.
pub struct Bucket {
    identifier: String,
    /// `list-keys` cursors handed out, as (token, backend cursor). The WIT's cursor is a `u64`,
    /// the store's an opaque string: the handle maps one to the other.
    cursors: VecDeque<(u64, String)>,
    next_token: u64,
}

/// The key-value part of a task's store data.
pub(crate) struct KvCtx {
    access: Option<TaskKvAccess>,
    killed: Arc<AtomicBool>,
    deadline: Option<Instant>,
    open: usize,
}

impl KvCtx {
    /// `access` as the spec names it; `killed` and `deadline` as the task's store has them.
    pub(crate) fn new(access: Option<TaskKvAccess>, killed: Arc<AtomicBool>, deadline: Option<Instant>) -> Self {
        KvCtx { access, killed, deadline, open: 0 }
    }

    /// Run one backend call, bounded: `error::other` past [`CALL_TIMEOUT`]; a trap once the task
    /// is killed or its request's deadline passes, as if the guest had been running — the
    /// executor's epoch callback cannot stop a task that waits in a host call.
    async fn call<T>(&self, call: impl Future<Output = Result<T, TaskKvError>> + Send) -> KvResult<T> {
        let killed = self.killed.clone();
        let deadline = self.deadline;
        let watch = async move {
            loop {
                if killed.load(Ordering::Relaxed) {
                    return wasmtime::format_err!("killed");
                }
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    return wasmtime::format_err!("request deadline exceeded");
                }
                tokio::time::sleep(crate::TICK).await;
            }
        };
        tokio::select! {
            // The backend first: a call that is ready at once never arms the timers.
            biased;
            result = call => Ok(result.map_err(|e| other(e.to_string()))),
            err = watch => Err(err),
            () = tokio::time::sleep(CALL_TIMEOUT) => {
                Ok(Err(other(format!("the state store did not answer within {}s", CALL_TIMEOUT.as_secs()))))
            }
        }
    }
}

/// What the `wasi:keyvalue` host functions work on: the context and the resource table.
pub(crate) struct KvView<'a> {
    ctx: &'a mut KvCtx,
    table: &'a mut ResourceTable,
}

impl<'a> KvView<'a> {
    pub(crate) fn new(ctx: &'a mut KvCtx, table: &'a mut ResourceTable) -> Self {
        KvView { ctx, table }
    }
}

struct Kv;

impl HasData for Kv {
    type Data<'a> = KvView<'a>;
}

/// Link `wasi:keyvalue/{store,atomics,batch}@0.2.0-draft` into `linker`. Every task links them;
/// what a task may open is decided per task, at `open`.
pub(crate) fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    view: fn(&mut T) -> KvView<'_>,
) -> wasmtime::Result<()> {
    store::add_to_linker::<T, Kv>(linker, view)?;
    atomics::add_to_linker::<T, Kv>(linker, view)?;
    batch::add_to_linker::<T, Kv>(linker, view)?;
    Ok(())
}

type KvResult<T> = wasmtime::Result<Result<T, store::Error>>;

fn other(message: impl Into<String>) -> store::Error {
    store::Error::Other(message.into())
}

fn check_key(key: &str) -> Result<(), store::Error> {
    if key.is_empty() {
        return Err(other("empty key"));
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(other(format!("key of {} bytes is over the limit of {MAX_KEY_BYTES} bytes", key.len())));
    }
    Ok(())
}

fn check_value(value: &[u8]) -> Result<(), store::Error> {
    if value.len() > MAX_VALUE_BYTES {
        return Err(other(format!("value of {} bytes is over the limit of {MAX_VALUE_BYTES} bytes", value.len())));
    }
    Ok(())
}

fn check_batch(keys: usize) -> Result<(), store::Error> {
    if keys > MAX_BATCH_KEYS {
        return Err(other(format!("batch of {keys} keys is over the limit of {MAX_BATCH_KEYS}")));
    }
    Ok(())
}

/// Evaluate a check; on failure, answer the guest with the error (not a trap).
macro_rules! check {
    ($e:expr) => {
        if let Err(err) = $e {
            return Ok(Err(err));
        }
    };
}

impl KvView<'_> {
    /// The backend and identifier behind `bucket`.
    fn target(&self, bucket: &Resource<Bucket>) -> wasmtime::Result<(Arc<dyn TaskKv>, String)> {
        let identifier = self.table.get(bucket)?.identifier.clone();
        // `open` hands out buckets only when there is a backend, so this is a host bug.
        let access = self.ctx.access.as_ref().ok_or_else(|| wasmtime::format_err!("a bucket without a backend"))?;
        Ok((access.backend.clone(), identifier))
    }
}

impl store::Host for KvView<'_> {
    async fn open(&mut self, identifier: String) -> KvResult<Resource<Bucket>> {
        let allowed = self.ctx.access.as_ref().is_some_and(|a| a.buckets.contains(&identifier));
        if !allowed {
            return Ok(Err(store::Error::AccessDenied));
        }
        if self.ctx.open >= MAX_OPEN_BUCKETS {
            return Ok(Err(other(format!(
                "{MAX_OPEN_BUCKETS} buckets are open already; drop some before opening more"
            ))));
        }
        let bucket = self.table.push(Bucket { identifier, cursors: VecDeque::new(), next_token: 1 })?;
        self.ctx.open += 1;
        Ok(Ok(bucket))
    }
}

impl store::HostBucket for KvView<'_> {
    async fn get(&mut self, bucket: Resource<Bucket>, key: String) -> KvResult<Option<Vec<u8>>> {
        check!(check_key(&key));
        let (backend, id) = self.target(&bucket)?;
        self.ctx.call(backend.get(&id, &key)).await
    }

    async fn set(&mut self, bucket: Resource<Bucket>, key: String, value: Vec<u8>) -> KvResult<()> {
        check!(check_key(&key));
        check!(check_value(&value));
        let (backend, id) = self.target(&bucket)?;
        self.ctx.call(backend.set(&id, &key, value)).await
    }

    async fn delete(&mut self, bucket: Resource<Bucket>, key: String) -> KvResult<()> {
        check!(check_key(&key));
        let (backend, id) = self.target(&bucket)?;
        self.ctx.call(backend.delete(&id, &key)).await
    }

    async fn exists(&mut self, bucket: Resource<Bucket>, key: String) -> KvResult<bool> {
        check!(check_key(&key));
        let (backend, id) = self.target(&bucket)?;
        self.ctx.call(backend.exists(&id, &key)).await
    }

    async fn list_keys(&mut self, bucket: Resource<Bucket>, cursor: Option<u64>) -> KvResult<store::KeyResponse> {
        let after = match cursor {
            None => None,
            Some(token) => match self.table.get(&bucket)?.cursors.iter().find(|(t, _)| *t == token) {
                Some((_, after)) => Some(after.clone()),
                None => {
                    return Ok(Err(other(format!(
                        "unknown cursor {token}: use one of the last {MAX_CURSORS} cursors list-keys returned for \
                         this bucket handle"
                    ))));
                }
            },
        };
        let (backend, id) = self.target(&bucket)?;
        let (keys, next) = match self.ctx.call(backend.list_keys(&id, after.as_deref())).await? {
            Ok(page) => page,
            Err(err) => return Ok(Err(err)),
        };
        let cursor = match next {
            None => None,
            Some(next) => {
                let handle = self.table.get_mut(&bucket)?;
                let token = handle.next_token;
                handle.next_token += 1;
                handle.cursors.push_back((token, next));
                if handle.cursors.len() > MAX_CURSORS {
                    handle.cursors.pop_front();
                }
                Some(token)
            }
        };
        Ok(Ok(store::KeyResponse { keys, cursor }))
    }

    async fn drop(&mut self, bucket: Resource<Bucket>) -> wasmtime::Result<()> {
        self.table.delete(bucket)?;
        self.ctx.open = self.ctx.open.saturating_sub(1);
        Ok(())
    }
}

impl atomics::Host for KvView<'_> {
    async fn increment(&mut self, bucket: Resource<Bucket>, key: String, delta: u64) -> KvResult<u64> {
        check!(check_key(&key));
        let (backend, id) = self.target(&bucket)?;
        self.ctx.call(backend.increment(&id, &key, delta)).await
    }
}

impl batch::Host for KvView<'_> {
    async fn get_many(
        &mut self,
        bucket: Resource<Bucket>,
        keys: Vec<String>,
    ) -> KvResult<Vec<Option<(String, Vec<u8>)>>> {
        check!(check_batch(keys.len()));
        for key in &keys {
            check!(check_key(key));
        }
        let (backend, id) = self.target(&bucket)?;
        let values = match self.ctx.call(backend.get_many(&id, &keys)).await? {
            Ok(values) if values.len() == keys.len() => values,
            Ok(values) => {
                // The backend's fault, not the task's: an error it can handle, not a trap.
                let message = format!("the state store answered {} values for {} keys", values.len(), keys.len());
                return Ok(Err(other(message)));
            }
            Err(err) => return Ok(Err(err)),
        };
        // What goes back is bounded like what comes in: the guest would have to hold it all.
        let bytes: usize = keys.iter().zip(&values).map(|(k, v)| v.as_ref().map_or(0, |v| k.len() + v.len())).sum();
        if bytes > MAX_BATCH_BYTES {
            return Ok(Err(other(format!(
                "the values of this get-many add up to {bytes} bytes, over the limit of {MAX_BATCH_BYTES}; ask for fewer keys"
            ))));
        }
        Ok(Ok(keys.into_iter().zip(values).map(|(k, v)| v.map(|v| (k, v))).collect()))
    }

    async fn set_many(&mut self, bucket: Resource<Bucket>, pairs: Vec<(String, Vec<u8>)>) -> KvResult<()> {
        // Checked whole before anything is written: a refused batch writes nothing.
        check!(check_batch(pairs.len()));
        for (key, value) in &pairs {
            check!(check_key(key));
            check!(check_value(value));
        }
        let bytes: usize = pairs.iter().map(|(k, v)| k.len() + v.len()).sum();
        if bytes > MAX_BATCH_BYTES {
            return Ok(Err(other(format!("set-many of {bytes} bytes is over the limit of {MAX_BATCH_BYTES} bytes"))));
        }
        let (backend, id) = self.target(&bucket)?;
        self.ctx.call(backend.set_many(&id, pairs)).await
    }

    async fn delete_many(&mut self, bucket: Resource<Bucket>, keys: Vec<String>) -> KvResult<()> {
        check!(check_batch(keys.len()));
        for key in &keys {
            check!(check_key(key));
        }
        let (backend, id) = self.target(&bucket)?;
        self.ctx.call(backend.delete_many(&id, &keys)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_decimal_text() {
        assert_eq!(increment_value(None, 5).unwrap(), 5);
        assert_eq!(increment_value(Some(b"41"), 1).unwrap(), 42);
        assert!(matches!(increment_value(Some(b"forty"), 1), Err(TaskKvError::NotACounter)));
        assert!(matches!(
            increment_value(Some(u64::MAX.to_string().as_bytes()), 1),
            Err(TaskKvError::Overflow { now: u64::MAX, delta: 1 })
        ));
    }

    #[tokio::test]
    async fn memory_listings_page_by_the_last_key() {
        let kv = MemoryTaskKv::with_page_size(2);
        for key in ["a", "b", "c"] {
            kv.set("bkt", key, b"x".to_vec()).await.expect("set");
        }
        let (first, cursor) = kv.list_keys("bkt", None).await.expect("list");
        assert_eq!((first, cursor.clone()), (vec!["a".to_owned(), "b".to_owned()], Some("b".to_owned())));
        let (second, cursor) = kv.list_keys("bkt", cursor.as_deref()).await.expect("list");
        assert_eq!((second, cursor), (vec!["c".to_owned()], None));
        assert_eq!(kv.list_keys("other", None).await.expect("list"), (vec![], None));
    }
}
