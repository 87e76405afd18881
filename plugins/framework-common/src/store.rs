//! The plugin's key-value store behind a trait (so the rules run natively against a map), and a
//! cache of decoded state that stays valid while the store's generation counter (`gen`) is
//! unchanged.
//!
//! The host may discard an instance and start another at any time, and calls are serialised, so
//! the KV store is the truth: every call reads `gen`; when it equals the generation the cached
//! state was loaded or last written at, the cache is used, otherwise the state is reloaded. Every
//! call that changes anything writes only the changed keys and then bumps `gen`.

use std::cell::RefCell;
use std::collections::BTreeMap;

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Key of the generation counter.
pub const GEN_KEY: &str = "gen";

/// What a framework needs of a key-value store.
pub trait Store {
    /// Value of `key`.
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, String>;
    /// Sets `key`.
    fn set(&mut self, key: &str, value: &[u8]) -> Result<(), String>;
    /// Removes `key` (absent is fine).
    fn delete(&mut self, key: &str) -> Result<(), String>;
    /// Every key starting with `prefix`, in byte order.
    fn list(&self, prefix: &str) -> Result<Vec<String>, String>;
}

/// The host's store (`shoal_sdk::kv`); callable only inside Wasm.
pub struct HostStore;

fn kv_err(op: &str, key: &str, e: shoal_sdk::kv::Error) -> String {
    format!("kv {op} {key:?}: {e:?}")
}

impl Store for HostStore {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, String> {
        shoal_sdk::kv::get(key).map_err(|e| kv_err("get", key, e))
    }
    fn set(&mut self, key: &str, value: &[u8]) -> Result<(), String> {
        shoal_sdk::kv::set(key, value).map_err(|e| kv_err("set", key, e))
    }
    fn delete(&mut self, key: &str) -> Result<(), String> {
        shoal_sdk::kv::delete(key).map_err(|e| kv_err("delete", key, e))
    }
    fn list(&self, prefix: &str) -> Result<Vec<String>, String> {
        let mut keys = Vec::new();
        let mut cursor = None;
        loop {
            let page = shoal_sdk::kv::list_keys(prefix, cursor.as_deref()).map_err(|e| kv_err("list", prefix, e))?;
            keys.extend(page.keys);
            match page.cursor {
                Some(c) => cursor = Some(c),
                None => return Ok(keys),
            }
        }
    }
}

/// An in-memory store for tests.
#[derive(Clone, Debug, Default)]
pub struct MemStore {
    /// Every key and value.
    pub map: BTreeMap<String, Vec<u8>>,
    /// Number of `set` and `delete` calls so far.
    pub writes: usize,
}

impl Store for MemStore {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, String> {
        Ok(self.map.get(key).cloned())
    }
    fn set(&mut self, key: &str, value: &[u8]) -> Result<(), String> {
        self.writes += 1;
        self.map.insert(key.to_string(), value.to_vec());
        Ok(())
    }
    fn delete(&mut self, key: &str) -> Result<(), String> {
        self.writes += 1;
        self.map.remove(key);
        Ok(())
    }
    fn list(&self, prefix: &str) -> Result<Vec<String>, String> {
        Ok(self
            .map
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, _)| k.clone())
            .collect())
    }
}

/// Decodes the JSON value of `key`.
pub fn get_json<T: DeserializeOwned>(store: &dyn Store, key: &str) -> Result<Option<T>, String> {
    match store.get(key)? {
        None => Ok(None),
        Some(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| format!("corrupt value of {key:?}: {e}")),
    }
}

/// Stores `value` as JSON under `key`.
pub fn set_json<T: Serialize>(store: &mut dyn Store, key: &str, value: &T) -> Result<(), String> {
    let bytes = serde_json::to_vec(value).map_err(|e| format!("cannot encode {key:?}: {e}"))?;
    store.set(key, &bytes)
}

/// A decimal counter (absent = 0).
pub fn get_u64(store: &dyn Store, key: &str) -> Result<u64, String> {
    match store.get(key)? {
        None => Ok(0),
        Some(b) => String::from_utf8_lossy(&b).trim().parse().map_err(|_| format!("corrupt counter {key:?}")),
    }
}

/// State that lives in the store: loaded whole, written back as the keys that changed.
pub trait Persistent: Sized {
    /// Reads everything from the store.
    fn load(store: &dyn Store) -> Result<Self, String>;
    /// Writes what changed since the last load or flush; returns whether anything was written.
    fn flush(&mut self, store: &mut dyn Store) -> Result<bool, String>;
}

/// A decoded state and the store generation it matches.
pub struct Cache<S> {
    generation: u64,
    state: Option<S>,
}

impl<S> Cache<S> {
    /// An empty cache (the first call loads).
    pub const fn new() -> Self {
        Cache { generation: 0, state: None }
    }
}

impl<S> Default for Cache<S> {
    fn default() -> Self {
        Self::new()
    }
}

/// Runs `f` on the state: the cached one when the store's generation is unchanged, else a fresh
/// load; then writes back what `f` changed and bumps the generation. On any store error the cache
/// is dropped (the next call reloads) and the error returned.
pub fn with_state<S: Persistent, R>(
    cache: &RefCell<Cache<S>>,
    store: &mut dyn Store,
    f: impl FnOnce(&mut S) -> R,
) -> Result<R, String> {
    let mut cache = cache.borrow_mut();
    let result = (|| {
        let generation = get_u64(store, GEN_KEY)?;
        if cache.state.is_none() || cache.generation != generation {
            cache.state = Some(S::load(store)?);
            cache.generation = generation;
        }
        let state = cache.state.as_mut().ok_or("no state")?;
        let r = f(state);
        if state.flush(store)? {
            let next = cache.generation + 1;
            store.set(GEN_KEY, next.to_string().as_bytes())?;
            cache.generation = next;
        }
        Ok(r)
    })();
    if result.is_err() {
        cache.state = None;
    }
    result
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A counter stored under `n`.
    struct Counter {
        n: u64,
        dirty: bool,
    }
    impl Persistent for Counter {
        fn load(store: &dyn Store) -> Result<Self, String> {
            Ok(Counter { n: get_u64(store, "n")?, dirty: false })
        }
        fn flush(&mut self, store: &mut dyn Store) -> Result<bool, String> {
            if !std::mem::take(&mut self.dirty) {
                return Ok(false);
            }
            store.set("n", self.n.to_string().as_bytes())?;
            Ok(true)
        }
    }

    #[test]
    fn two_instances_see_each_others_writes() {
        let mut store = MemStore::default();
        let a = RefCell::new(Cache::<Counter>::new());
        let b = RefCell::new(Cache::<Counter>::new());
        let bump = |c: &mut Counter| {
            c.n += 1;
            c.dirty = true;
            c.n
        };
        assert_eq!(with_state(&a, &mut store, bump).unwrap(), 1);
        assert_eq!(with_state(&b, &mut store, bump).unwrap(), 2);
        assert_eq!(with_state(&a, &mut store, bump).unwrap(), 3);
        // A read-only call writes nothing.
        let writes = store.writes;
        assert_eq!(with_state(&a, &mut store, |c| c.n).unwrap(), 3);
        assert_eq!(store.writes, writes);
        assert_eq!(get_u64(&store, GEN_KEY).unwrap(), 3);
        assert_eq!(store.list("g").unwrap(), vec!["gen"]);
    }
}
