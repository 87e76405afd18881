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

/// Where compiled components are kept. Cheap to share; thread-safe.
pub struct ComponentCache {
    dir: Option<PathBuf>,
    engine_tag: String,
    memory: Mutex<HashMap<String, Component>>,
}

impl ComponentCache {
    /// A cache for `engine`, persisting artifacts in `dir` when given.
    pub fn new(engine: &Engine, dir: Option<PathBuf>) -> std::io::Result<Self> {
        if let Some(dir) = &dir {
            std::fs::create_dir_all(dir)?;
        }
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        Ok(ComponentCache { dir, engine_tag: format!("{:016x}", hasher.finish()), memory: Mutex::new(HashMap::new()) })
    }

    fn path(&self, digest: &str) -> Option<PathBuf> {
        self.dir.as_ref().map(|d| d.join(format!("{digest}-{}.cwasm", self.engine_tag)))
    }

    /// The compiled component for `bytes`: from memory, else from disk, else compiled now (and
    /// then written to disk). `compile` is only called on a miss.
    pub fn get_or_compile(
        &self,
        engine: &Engine,
        bytes: &[u8],
        compile: impl FnOnce() -> wasmtime::Result<Component>,
    ) -> wasmtime::Result<Compiled> {
        let digest = digest(bytes);
        if let Some(component) = self.memory.lock().get(&digest) {
            return Ok(Compiled { digest, component: component.clone() });
        }
        let component = match self.path(&digest).filter(|p| p.exists()) {
            Some(path) => match load_artifact(engine, &path) {
                Ok(component) => component,
                Err(err) => {
                    tracing::warn!(cause = %err, path = %path.display(), "discarding unreadable precompiled artifact");
                    let _ = std::fs::remove_file(&path);
                    self.compile_and_store(&digest, compile)?
                }
            },
            None => self.compile_and_store(&digest, compile)?,
        };
        self.memory.lock().insert(digest.clone(), component.clone());
        Ok(Compiled { digest, component })
    }

    fn compile_and_store(
        &self,
        digest: &str,
        compile: impl FnOnce() -> wasmtime::Result<Component>,
    ) -> wasmtime::Result<Component> {
        let component = compile()?;
        if let Some(path) = self.path(digest) {
            // Write to a temporary name first: a crash mid-write must never leave a truncated
            // artifact under the final name.
            let tmp = path.with_extension(format!("tmp{}", std::process::id()));
            let written = component
                .serialize()
                .and_then(|data| std::fs::write(&tmp, data).map_err(wasmtime::Error::from))
                .and_then(|()| std::fs::rename(&tmp, &path).map_err(wasmtime::Error::from));
            if let Err(err) = written {
                tracing::warn!(cause = %err, "could not persist precompiled artifact");
                let _ = std::fs::remove_file(&tmp);
            }
        }
        Ok(component)
    }

    /// Number of artifacts in memory.
    pub fn len(&self) -> usize {
        self.memory.lock().len()
    }

    /// Whether nothing is cached in memory.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The directory artifacts are persisted in, if any.
    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
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
