//! Compile once per digest: an in-memory map and an on-disk directory of precompiled components.
//!
//! Compiling a component with Cranelift takes milliseconds to seconds; loading a precompiled
//! artifact takes microseconds. Artifacts are named `<sha256>-<engine>.cwasm`, where `<engine>`
//! hashes wasmtime's compatibility hash (version, target, settings), so a new host build never
//! loads an artifact of an old one.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use parking_lot::Mutex;
use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

/// The sha256 digest of component bytes, lower-case hex.
pub fn digest(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// A compiled component and the digest of the bytes it came from.
#[derive(Clone)]
pub struct Compiled {
    /// sha256 of the original bytes, hex.
    pub digest: String,
    /// The compiled component.
    pub component: Component,
}

/// Where compiled components are kept, within byte budgets: in memory (the size of each
/// component's compiled image) and on disk (the artifacts' file sizes), the least recently used
/// evicted first. Thread-safe.
///
/// A component enters only when it is **admitted** ([`ComponentCache::admit`]): a caller that
/// validates an upload compiles it with [`ComponentCache::lookup`] missing and admits it only once
/// the upload is accepted, so a refused upload leaves nothing behind.
pub struct ComponentCache {
    dir: Option<PathBuf>,
    engine_tag: String,
    limits: CacheLimits,
    memory: Mutex<Lru>,
}

/// The budgets of a [`ComponentCache`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CacheLimits {
    /// Bytes of compiled code kept in memory.
    pub memory_bytes: usize,
    /// Bytes of precompiled artifacts kept on disk.
    pub disk_bytes: u64,
}

impl Default for CacheLimits {
    fn default() -> Self {
        CacheLimits { memory_bytes: 256 << 20, disk_bytes: 1 << 30 }
    }
}

/// Components in memory with the turn each was last used.
#[derive(Default)]
struct Lru {
    entries: HashMap<String, (Component, usize, u64)>,
    bytes: usize,
    turn: u64,
}

impl Lru {
    fn get(&mut self, digest: &str) -> Option<Component> {
        self.turn += 1;
        let turn = self.turn;
        self.entries.get_mut(digest).map(|(component, _, used)| {
            *used = turn;
            component.clone()
        })
    }

    /// Keeps `component`, then evicts the least recently used others until within `limit`.
    fn insert(&mut self, digest: &str, component: Component, limit: usize) {
        let range = component.image_range();
        let size = (range.end as usize).saturating_sub(range.start as usize).max(1);
        self.turn += 1;
        if let Some((_, old, _)) = self.entries.insert(digest.to_owned(), (component, size, self.turn)) {
            self.bytes -= old;
        }
        self.bytes += size;
        while self.bytes > limit && self.entries.len() > 1 {
            let Some(oldest) =
                self.entries.iter().filter(|(d, _)| *d != digest).min_by_key(|(_, e)| e.2).map(|(d, _)| d.clone())
            else {
                break;
            };
            if let Some((_, size, _)) = self.entries.remove(&oldest) {
                self.bytes -= size;
            }
        }
    }
}

impl ComponentCache {
    /// A cache for `engine`, persisting artifacts in `dir` when given.
    pub fn new(engine: &Engine, dir: Option<PathBuf>, limits: CacheLimits) -> std::io::Result<Self> {
        if let Some(dir) = &dir {
            std::fs::create_dir_all(dir)?;
        }
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        Ok(ComponentCache {
            dir,
            engine_tag: format!("{:016x}", hasher.finish()),
            limits,
            memory: Mutex::new(Lru::default()),
        })
    }

    fn path(&self, digest: &str) -> Option<PathBuf> {
        self.dir.as_ref().map(|d| d.join(format!("{digest}-{}.cwasm", self.engine_tag)))
    }

    /// The compiled component for `bytes`: from memory, else from disk, else compiled now and
    /// admitted. `compile` is only called on a miss.
    pub fn get_or_compile(
        &self,
        engine: &Engine,
        bytes: &[u8],
        compile: impl FnOnce() -> wasmtime::Result<Component>,
    ) -> wasmtime::Result<Compiled> {
        let digest = digest(bytes);
        if let Some(component) = self.lookup(engine, &digest) {
            return Ok(Compiled { digest, component });
        }
        let compiled = Compiled { digest, component: compile()? };
        self.admit(&compiled);
        Ok(compiled)
    }

    /// The component compiled from the bytes of `digest`, if cached (in memory, or on disk: then
    /// it is kept in memory too, and the file marked as used).
    pub fn lookup(&self, engine: &Engine, digest: &str) -> Option<Component> {
        if let Some(component) = self.memory.lock().get(digest) {
            return Some(component);
        }
        let path = self.path(digest).filter(|p| p.exists())?;
        match load_artifact(engine, &path) {
            Ok(component) => {
                touch(&path);
                self.memory.lock().insert(digest, component.clone(), self.limits.memory_bytes);
                Some(component)
            }
            Err(err) => {
                tracing::warn!(cause = %err, path = %path.display(), "discarding unreadable precompiled artifact");
                let _ = std::fs::remove_file(&path);
                None
            }
        }
    }

    /// Keep `compiled` (an accepted component): in memory, and on disk when the cache has a
    /// directory; then evict the least recently used beyond the budgets.
    pub fn admit(&self, compiled: &Compiled) {
        self.memory.lock().insert(&compiled.digest, compiled.component.clone(), self.limits.memory_bytes);
        let Some(path) = self.path(&compiled.digest) else { return };
        if !path.exists() {
            // Write to a temporary name first: a crash mid-write must never leave a truncated
            // artifact under the final name.
            let tmp = path.with_extension(format!("tmp{}", std::process::id()));
            let written = compiled
                .component
                .serialize()
                .and_then(|data| std::fs::write(&tmp, data).map_err(wasmtime::Error::from))
                .and_then(|()| std::fs::rename(&tmp, &path).map_err(wasmtime::Error::from));
            if let Err(err) = written {
                tracing::warn!(cause = %err, "could not persist precompiled artifact");
                let _ = std::fs::remove_file(&tmp);
            }
        }
        self.evict_on_disk(&path);
    }

    /// Removes the least recently used artifacts (by modification time, which a hit renews)
    /// until the directory is within its budget; `keep` stays.
    fn evict_on_disk(&self, keep: &Path) {
        let Some(dir) = &self.dir else { return };
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        let mut files: Vec<(std::time::SystemTime, u64, PathBuf)> = entries
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "cwasm"))
            .filter_map(|e| {
                let meta = e.metadata().ok()?;
                Some((meta.modified().ok()?, meta.len(), e.path()))
            })
            .collect();
        let mut total: u64 = files.iter().map(|f| f.1).sum();
        files.sort();
        for (_, size, path) in files {
            if total <= self.limits.disk_bytes {
                break;
            }
            if path != keep && std::fs::remove_file(&path).is_ok() {
                total -= size;
            }
        }
    }

    /// Number of artifacts in memory.
    pub fn len(&self) -> usize {
        self.memory.lock().entries.len()
    }

    /// Whether nothing is cached in memory.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes of compiled code held in memory.
    pub fn memory_bytes(&self) -> usize {
        self.memory.lock().bytes
    }

    /// The directory artifacts are persisted in, if any.
    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }
}

/// Marks an artifact as just used (its modification time orders the disk's eviction).
fn touch(path: &Path) {
    if let Ok(file) = std::fs::File::options().append(true).open(path) {
        let _ = file.set_modified(std::time::SystemTime::now());
    }
}

#[allow(unsafe_code)]
fn load_artifact(engine: &Engine, path: &Path) -> wasmtime::Result<Component> {
    // SAFETY: `deserialize_file` trusts its input to be an artifact produced by `serialize` of a
    // compatible engine. Artifacts live in the host's private data directory, are written only
    // by `compile_and_store` (atomically, via rename) and are named by the engine's
    // compatibility hash, so the file is one this engine produced. wasmtime additionally checks
    // the header and the engine settings before using it.
    unsafe { Component::deserialize_file(engine, path) }
}
