//! The engine: wasmtime configuration, the epoch ticker that enforces deadlines, loading.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use wasmtime::component::{Component, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use crate::cache::{Compiled, ComponentCache};
use crate::error::LoadError;
use crate::imports::{self, Imports};
use crate::pool::{Plugin, World};
use crate::state::{HostState, PluginScope};
use crate::{PACKAGE_NAME, PACKAGE_VERSION};

/// How often the epoch advances. Deadlines are counted in these ticks, so a call may overrun its
/// deadline by up to one tick.
pub const EPOCH_TICK: Duration = Duration::from_millis(1);

/// How the runtime is set up.
#[derive(Clone, Debug)]
pub struct RuntimeConfig {
    /// Where precompiled artifacts are kept; `None` keeps them in memory only.
    pub cache_dir: Option<PathBuf>,
    /// Most component instances alive at once, across all plugins (pooling allocator slots).
    pub max_instances: u32,
    /// Largest linear memory any instance may have; per-plugin caps must not exceed it.
    pub max_memory: usize,
    /// Largest component accepted, in bytes.
    pub max_component_size: usize,
    /// Budgets of the compile cache, in memory and on disk.
    pub cache_limits: crate::cache::CacheLimits,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            cache_dir: None,
            max_instances: 1000,
            max_memory: 256 << 20,
            max_component_size: 32 << 20,
            cache_limits: crate::cache::CacheLimits::default(),
        }
    }
}

/// The runtime could not be set up (engine configuration, cache directory, ticker thread).
#[derive(Debug, thiserror::Error)]
#[error("cannot set up the Wasm runtime: {0}")]
pub struct SetupError(pub String);

/// The bounds of every call of one plugin.
#[derive(Clone, Copy, Debug)]
pub struct CallLimits {
    /// Wall-clock deadline of one call.
    pub deadline: Duration,
    /// Memory cap of one instance, in bytes.
    pub memory: usize,
    /// Idle instances kept for reuse.
    pub max_idle: usize,
    /// Most instances of the plugin alive at once (idle or in a call), its share of the runtime's
    /// pool: a plugin at its quota gets [`crate::CallError::Busy`] rather than taking the slots of
    /// the others.
    pub max_live: usize,
}

impl Default for CallLimits {
    fn default() -> Self {
        CallLimits { deadline: Duration::from_secs(1), memory: 64 << 20, max_idle: 16, max_live: 64 }
    }
}

/// The plugin runtime. Cheap to clone.
#[derive(Clone)]
pub struct Runtime {
    inner: Arc<Inner>,
}

struct Inner {
    engine: Engine,
    cache: ComponentCache,
    config: RuntimeConfig,
    linker_plain: Linker<HostState>,
    linker_probe: Linker<HostState>,
    linker_router: Linker<HostState>,
}

impl Runtime {
    /// A runtime with its own engine and epoch ticker thread.
    pub fn new(config: RuntimeConfig) -> Result<Self, SetupError> {
        Self::setup(config).map_err(|e| SetupError(format!("{e:#}")))
    }

    fn setup(config: RuntimeConfig) -> wasmtime::Result<Self> {
        let mut pooling = PoolingAllocationConfig::new();
        let max = config.max_instances;
        pooling
            .total_component_instances(max)
            // Rust components have 1–4 core instances; interpreters bundled by componentize-py
            // or componentize-js have a dozen.
            .total_core_instances(max.saturating_mul(8))
            .total_memories(max.saturating_mul(2))
            .total_tables(max.saturating_mul(8))
            .max_core_instances_per_component(64)
            .max_memories_per_component(8)
            .max_tables_per_component(16)
            .max_memory_size(config.max_memory)
            .table_elements(200_000)
            .max_core_instance_size(16 << 20)
            .max_component_instance_size(4 << 20);
        let mut wasm = Config::new();
        wasm.wasm_component_model(true)
            .epoch_interruption(true)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pooling));
        let engine = Engine::new(&wasm)?;
        let cache = ComponentCache::new(&engine, config.cache_dir.clone(), config.cache_limits)?;

        let mut linker_plain = Linker::new(&engine);
        imports::add_to_linker(&mut linker_plain, Imports { probe: false, route_request: false })?;
        let mut linker_probe = Linker::new(&engine);
        imports::add_to_linker(&mut linker_probe, Imports { probe: true, route_request: false })?;
        let mut linker_router = Linker::new(&engine);
        imports::add_to_linker(&mut linker_router, Imports { probe: false, route_request: true })?;

        // The ticker holds only a weak handle so that it ends with the last runtime clone.
        let weak = engine.weak();
        std::thread::Builder::new().name("shoal-epoch".into()).spawn(move || {
            while let Some(engine) = weak.upgrade() {
                engine.increment_epoch();
                drop(engine);
                std::thread::sleep(EPOCH_TICK);
            }
        })?;

        Ok(Runtime { inner: Arc::new(Inner { engine, cache, config, linker_plain, linker_probe, linker_router }) })
    }

    /// The wasmtime engine.
    pub fn engine(&self) -> &Engine {
        &self.inner.engine
    }

    /// The configuration the runtime was built with.
    pub fn config(&self) -> &RuntimeConfig {
        &self.inner.config
    }

    /// The compile cache.
    pub fn cache(&self) -> &ComponentCache {
        &self.inner.cache
    }

    /// Check the bytes are a component under the size limit that speaks a compatible version of
    /// the WIT package, and compile it (once per digest: it is kept in the cache).
    pub fn compile(&self, bytes: &[u8]) -> Result<Compiled, LoadError> {
        let compiled = self.compile_unadmitted(bytes)?;
        self.inner.cache.admit(&compiled);
        Ok(compiled)
    }

    /// [`Runtime::compile`] without keeping the result in the cache (a cached one is used):
    /// for uploads that may still be refused; admit it (`cache().admit`) once accepted.
    pub fn compile_unadmitted(&self, bytes: &[u8]) -> Result<Compiled, LoadError> {
        let limit = self.inner.config.max_component_size;
        if bytes.len() > limit {
            return Err(LoadError::TooLarge { size: bytes.len(), limit });
        }
        match classify(bytes) {
            Binary::NotWasm => return Err(LoadError::NotWasm),
            Binary::Core => return Err(LoadError::CoreModule),
            Binary::Component => {}
        }
        let engine = &self.inner.engine;
        let digest = crate::cache::digest(bytes);
        let component = match self.inner.cache.lookup(engine, &digest) {
            Some(component) => component,
            None => Component::new(engine, bytes).map_err(|e| LoadError::Invalid(format!("{e:#}")))?,
        };
        let compiled = Compiled { digest, component };
        check_package_version(engine, &compiled.component)?;
        Ok(compiled)
    }

    /// Type-check `compiled` against world `W` and make it callable.
    pub fn load<W: World>(
        &self,
        compiled: &Compiled,
        scope: PluginScope,
        limits: CallLimits,
    ) -> Result<Plugin<W>, LoadError> {
        let linker = match W::IMPORTS {
            Imports { probe: true, .. } => &self.inner.linker_probe,
            Imports { route_request: true, .. } => &self.inner.linker_router,
            _ => &self.inner.linker_plain,
        };
        let wrong = |reason: String| LoadError::WrongWorld { world: W::NAME, reason };
        // Exports first: "this is a router, not an allocator" says more than the import that
        // a router's signature drags along.
        let ty = compiled.component.component_type();
        let exports: Vec<String> = ty.exports(self.engine()).map(|(name, _)| name.to_owned()).collect();
        if !exports.iter().any(|name| name == W::EXPORT) {
            return Err(wrong(format!(
                "it does not export `{}` as the world requires (it exports: {})",
                W::EXPORT,
                if exports.is_empty() { "nothing".to_owned() } else { exports.join(", ") }
            )));
        }
        let instance_pre = linker.instantiate_pre(&compiled.component).map_err(|e| wrong(import_reason(&e)))?;
        let pre = W::pre(instance_pre).map_err(|e| wrong(export_reason::<W>(&e)))?;
        let limits = CallLimits { memory: limits.memory.min(self.inner.config.max_memory), ..limits };
        Ok(Plugin::new(self.clone(), compiled.digest.clone(), pre, Arc::new(scope), limits))
    }

    /// Compile and load in one step.
    pub fn load_bytes<W: World>(
        &self,
        bytes: &[u8],
        scope: PluginScope,
        limits: CallLimits,
    ) -> Result<Plugin<W>, LoadError> {
        let compiled = self.compile(bytes)?;
        self.load(&compiled, scope, limits)
    }

    /// Deadline in epoch ticks for `deadline`, at least one.
    pub(crate) fn ticks(deadline: Duration) -> u64 {
        (deadline.as_micros() / EPOCH_TICK.as_micros()).max(1) as u64
    }
}

fn import_reason(err: &wasmtime::Error) -> String {
    let text = format!("{err:#}");
    if text.contains("shoal:plugin/probe") {
        format!("it imports shoal:plugin/probe, which only health checks may use ({text})")
    } else if text.contains("shoal:plugin/route-request") {
        format!("it imports shoal:plugin/route-request, which only routers may use ({text})")
    } else {
        format!("it imports something this world does not grant ({text})")
    }
}

fn export_reason<W: World>(err: &wasmtime::Error) -> String {
    format!("it does not export `{}` as the world requires ({err:#})", W::EXPORT)
}

enum Binary {
    NotWasm,
    Core,
    Component,
}

/// Tell core modules from components by the preamble: `\0asm`, then a version/layer word that is
/// `01 00 00 00` for core modules and `0d 00 01 00` for components.
fn classify(bytes: &[u8]) -> Binary {
    match bytes {
        [0, b'a', b's', b'm', 1, 0, 0, 0, ..] => Binary::Core,
        [0, b'a', b's', b'm', _, _, 1, 0, ..] => Binary::Component,
        [0, b'a', b's', b'm', ..] => Binary::Core,
        _ => Binary::NotWasm,
    }
}

/// Refuse components that name `shoal:plugin` at a version this host does not speak. Before 1.0,
/// `0.x.*` versions are compatible with each other; from 1.0, `x.*.*`.
fn check_package_version(engine: &Engine, component: &Component) -> Result<(), LoadError> {
    let ty = component.component_type();
    let names = ty.imports(engine).map(|(n, _)| n.to_owned()).chain(ty.exports(engine).map(|(n, _)| n.to_owned()));
    let prefix = format!("{PACKAGE_NAME}/");
    for name in names {
        let Some(rest) = name.strip_prefix(&prefix) else { continue };
        let version = rest.split_once('@').map(|(_, v)| v).unwrap_or("");
        if !compatible(version, PACKAGE_VERSION) {
            let found = if version.is_empty() {
                format!("{PACKAGE_NAME} (unversioned)")
            } else {
                format!("{PACKAGE_NAME}@{version}")
            };
            return Err(LoadError::IncompatibleVersion {
                found,
                expected: PACKAGE_VERSION.into(),
                compatible: compatible_range(PACKAGE_VERSION),
            });
        }
    }
    Ok(())
}

fn parse(version: &str) -> Option<(u64, u64, u64)> {
    let core = version.split(['-', '+']).next()?;
    let mut parts = core.split('.').map(|p| p.parse::<u64>().ok());
    Some((parts.next()??, parts.next()??, parts.next()??))
}

fn compatible(found: &str, ours: &str) -> bool {
    match (parse(found), parse(ours)) {
        (Some((0, fm, _)), Some((0, om, _))) => fm == om,
        (Some((fmaj, _, _)), Some((omaj, _, _))) => fmaj == omaj && fmaj != 0,
        _ => false,
    }
}

fn compatible_range(ours: &str) -> String {
    match parse(ours) {
        Some((0, minor, _)) => format!("0.{minor}.x"),
        Some((major, _, _)) => format!("{major}.x.x"),
        None => ours.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_compatibility() {
        assert!(compatible("0.1.0", "0.1.0"));
        assert!(compatible("0.1.7", "0.1.0"));
        assert!(!compatible("0.2.0", "0.1.0"));
        assert!(!compatible("1.0.0", "0.1.0"));
        assert!(!compatible("", "0.1.0"));
        assert!(compatible("1.4.0", "1.0.0"));
        assert!(!compatible("2.0.0", "1.0.0"));
        assert_eq!(compatible_range("0.1.0"), "0.1.x");
    }

    #[test]
    fn classifies_preambles() {
        assert!(matches!(classify(b"hello"), Binary::NotWasm));
        assert!(matches!(classify(&[0, b'a', b's', b'm', 1, 0, 0, 0]), Binary::Core));
        assert!(matches!(classify(&[0, b'a', b's', b'm', 0x0d, 0, 1, 0]), Binary::Component));
    }
}
