//! The plugin registry: every uploaded plugin version, stored durably in RocksDB with its digest;
//! which version of each plugin is active; atomic activation, rollback and deletion; and the
//! automatic rollback of an activated version that fails several calls in a row.
//!
//! Invariants:
//! - nothing is stored unless the bytes loaded as a component of the plugin's world (validation
//!   happens before the first write), and a failed operation changes nothing;
//! - activation swaps an `Arc` atomically: calls that already hold the old version finish on it;
//! - the registry never interprets what a plugin answers; callers report outcomes with
//!   [`Registry::record`].
//!
//! The registry does not publish events itself: it emits [`RegistryEvent`]s on a channel, and the
//! node forwards them to the bus (which owns subjects and the CloudEvents format).

mod error;
mod follow;
mod kv;
mod store;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use shoal_abi::{AnyPlugin, PluginKind};
use shoal_runtime::{CallError, KvBackend, KvError, LoadError, PluginScope, Runtime};
use tokio::sync::mpsc;

pub use error::RegistryError;
pub use kv::RocksKv;
use shoal_state::StateDb;
use store::Store;
pub use store::TABLES;

/// Settings of the registry.
#[derive(Clone, Debug)]
pub struct RegistryConfig {
    /// Failed calls in a row (within [`RegistryConfig::rollback_window`]) after which an
    /// activated version is rolled back to the one before it, however many calls it served
    /// before.
    pub rollback_after: u32,
    /// How close together those failures must come: a streak whose first failure is older than
    /// this starts again at the next failure.
    pub rollback_window: Duration,
    /// Most versions one plugin keeps: a push past it is refused (delete old versions first).
    pub max_versions: usize,
    /// Most earlier versions remembered to roll back to; the oldest are forgotten first.
    pub max_history: usize,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            rollback_after: 5,
            rollback_window: Duration::from_secs(60),
            max_versions: 100,
            max_history: 20,
        }
    }
}

/// Gives each plugin (kind, name) its key-value store: the node passes one that puts plugins'
/// data in the sharded state store; without one, the registry's own RocksDB holds it.
pub type KvProvider = Arc<dyn Fn(PluginKind, &str) -> Arc<dyn KvBackend> + Send + Sync>;

/// One stored version of a plugin.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct PluginVersion {
    /// Plugin kind.
    pub kind: PluginKind,
    /// Plugin name.
    pub name: String,
    /// Version label.
    pub version: String,
    /// sha256 of the component, hex.
    pub digest: String,
    /// Size of the component in bytes.
    pub size: u64,
    /// Upload time, RFC 3339.
    pub uploaded_at: String,
    /// Upload order among the plugin's versions, from 1.
    pub seq: u64,
}

/// Which version of a plugin is active, and what was active before (most recent last).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct ActivationState {
    /// The active version, if any.
    pub active: Option<String>,
    /// Previously active versions, oldest first; `rollback` pops the last.
    pub history: Vec<String>,
    /// Last `seq` handed out.
    pub last_seq: u64,
}

/// A plugin and all its versions, as `list`/`show` report it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct PluginInfo {
    /// Plugin kind.
    pub kind: PluginKind,
    /// Plugin name.
    pub name: String,
    /// Active version, if any.
    pub active: Option<String>,
    /// Versions that `rollback` would return to, most recent last.
    pub history: Vec<String>,
    /// Every stored version, in upload order.
    pub versions: Vec<PluginVersion>,
    /// Calls of the active version that succeeded since it was loaded.
    pub calls_ok: u64,
    /// Calls of the active version that failed since it was loaded.
    pub calls_failed: u64,
}

/// Something that happened in the registry, for the event stream.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct RegistryEvent {
    /// Plugin kind.
    pub kind: PluginKind,
    /// Plugin name.
    pub name: String,
    /// What happened: `uploaded`, `activated`, `rolled-back`, `deleted`, `failing`.
    pub action: &'static str,
    /// Details (version, digest, reason…).
    pub data: serde_json::Value,
}

/// A loaded, callable version, with its call accounting.
pub struct LoadedVersion {
    /// What is stored about it.
    pub meta: PluginVersion,
    /// The loaded plugin.
    pub plugin: AnyPlugin,
    /// Whether it was activated (not returned to by a rollback) with a previous version to
    /// return to: only such a version is rolled back automatically, so two bad versions never
    /// take turns.
    probation: AtomicBool,
    /// Failed calls since the last success (0 after one).
    consecutive_failures: AtomicU32,
    /// When the current streak of failures began (on Tokio's clock, so tests can move it).
    streak_since: parking_lot::Mutex<Option<tokio::time::Instant>>,
    /// Whether an automatic rollback of this version is under way (or found nothing to return
    /// to): at most one at a time, and another after one that failed.
    rolling_back: AtomicBool,
    ok: AtomicU64,
    failed: AtomicU64,
    metrics: CallMetrics,
}

struct CallMetrics {
    ok: metrics::Counter,
    failed: metrics::Counter,
    latency: metrics::Histogram,
}

impl CallMetrics {
    fn new(meta: &PluginVersion) -> Self {
        let labels =
            [("kind", meta.kind.as_str().to_owned()), ("name", meta.name.clone()), ("version", meta.version.clone())];
        let with = |outcome: &'static str| {
            let mut l = labels.to_vec();
            l.push(("outcome", outcome.to_owned()));
            metrics::counter!("shoal_plugin_calls_total", &l)
        };
        CallMetrics {
            ok: with("ok"),
            failed: with("error"),
            latency: metrics::histogram!("shoal_plugin_call_duration_seconds", &labels),
        }
    }
}

impl LoadedVersion {
    /// Successful calls since load.
    pub fn calls_ok(&self) -> u64 {
        self.ok.load(Ordering::Relaxed)
    }
    /// Failed calls since load.
    pub fn calls_failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }
}

type Key = (PluginKind, String);

/// The active version of one plugin, swapped atomically.
#[derive(Default)]
struct Slot {
    current: ArcSwapOption<LoadedVersion>,
}

/// The plugin registry. Share it behind an `Arc`.
pub struct Registry {
    /// Itself, for the tasks it starts (automatic rollbacks, following the leader).
    me: std::sync::Weak<Registry>,
    store: Store,
    runtime: Runtime,
    config: RegistryConfig,
    /// Plugin kind → name → slot; read on every plugin call (a read lock, no allocation).
    slots: RwLock<HashMap<PluginKind, HashMap<String, Arc<Slot>>>>,
    /// Serialises mutations so that validation-then-write is atomic per registry.
    write: tokio::sync::Mutex<()>,
    events: mpsc::UnboundedSender<RegistryEvent>,
    /// Where plugins' key-value stores live; `None`: in `store`.
    kv: Option<KvProvider>,
    /// Moves on every change of any active version (see [`Registry::generation`]).
    generation: AtomicU64,
    /// The Tokio runtime the registry was opened in: automatic rollbacks run there when the
    /// failing call came from a thread of no runtime.
    tasks: Option<tokio::runtime::Handle>,
}

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

/// Delete every key of `kv`; returns how many.
fn purge(kv: &dyn KvBackend) -> Result<usize, KvError> {
    let mut n = 0;
    loop {
        let keys = kv.list("", None, 500)?;
        if keys.is_empty() {
            return Ok(n);
        }
        for key in &keys {
            kv.delete(key)?;
        }
        n += keys.len();
    }
}

/// Check a plugin name: a lower-case DNS label, so it is safe in URLs, subjects and keys.
pub fn validate_name(name: &str) -> Result<(), RegistryError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-');
    if ok { Ok(()) } else { Err(RegistryError::InvalidName(name.to_owned())) }
}

/// Check a version label.
pub fn validate_version(version: &str) -> Result<(), RegistryError> {
    let ok = !version.is_empty()
        && version.len() <= 64
        && version.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        && version.as_bytes()[0].is_ascii_alphanumeric();
    if ok { Ok(()) } else { Err(RegistryError::InvalidVersion(version.to_owned())) }
}

impl Registry {
    /// Open (or create) the registry under `dir` and load every active plugin. Returns the
    /// registry and the receiving end of its event channel.
    pub fn open(
        dir: &Path,
        runtime: Runtime,
        config: RegistryConfig,
    ) -> Result<(Arc<Registry>, mpsc::UnboundedReceiver<RegistryEvent>), RegistryError> {
        Registry::open_with_kv(dir, runtime, config, None)
    }

    /// [`Registry::open`], with plugins' key-value stores from `kv` (the registry's own RocksDB
    /// when `None`).
    pub fn open_with_kv(
        dir: &Path,
        runtime: Runtime,
        config: RegistryConfig,
        kv: Option<KvProvider>,
    ) -> Result<(Arc<Registry>, mpsc::UnboundedReceiver<RegistryEvent>), RegistryError> {
        let state = StateDb::open_local(dir, &TABLES)?;
        Registry::open_on(state, runtime, config, kv)
    }

    /// The registry in the tables ([`TABLES`]) of `state`, which the node shares with the rest
    /// of the master's state; plugins' key-value stores from `kv` (the `plugin-kv` table when
    /// `None`). Replicated, the active versions follow what the leader commits (see
    /// [`Registry::follow`]).
    pub fn open_on(
        state: Arc<StateDb>,
        runtime: Runtime,
        config: RegistryConfig,
        kv: Option<KvProvider>,
    ) -> Result<(Arc<Registry>, mpsc::UnboundedReceiver<RegistryEvent>), RegistryError> {
        let store = Store::new(state);
        let (events, rx) = mpsc::unbounded_channel();
        let registry = Arc::new_cyclic(|me| Registry {
            me: me.clone(),
            tasks: tokio::runtime::Handle::try_current().ok(),
            store,
            runtime,
            config,
            slots: RwLock::new(HashMap::new()),
            write: tokio::sync::Mutex::new(()),
            events,
            kv,
            generation: AtomicU64::new(0),
        });
        for (kind, name, state) in registry.store.states()? {
            let Some(version) = state.active else { continue };
            let key = (kind, name.clone());
            match registry.load_version(kind, &name, &version) {
                Ok(loaded) => registry.set_current(&registry.slot(&key), Some(Arc::new(loaded))),
                Err(err) => tracing::error!(cause = %err, %kind, %name, %version, "could not load the active version"),
            }
        }
        Ok((registry, rx))
    }

    /// The key-value store of plugin `name` of `kind`: the one its scope gets.
    pub fn kv_for(&self, kind: PluginKind, name: &str) -> Arc<dyn KvBackend> {
        match &self.kv {
            Some(provider) => provider(kind, name),
            None => self.local_kv(kind, name),
        }
    }

    /// A store under `kind/name/` in the registry's own RocksDB, whatever the plugins use: for
    /// the node's own state that must not depend on the state store being up (the master's task
    /// journal).
    pub fn local_kv(&self, kind: PluginKind, name: &str) -> Arc<RocksKv> {
        Arc::new(RocksKv::new(self.store.state_db().clone(), kind, name))
    }

    /// Move plugins' data kept in the registry's RocksDB (where every plugin's store was before
    /// the node gave a [`KvProvider`]) into the provider's stores, plugin by plugin: copy every
    /// key, then delete the local copies in one write. Idempotent: an interrupted run is finished
    /// by the next one. Returns the number of keys moved; 0 without a provider. Synchronous (the
    /// provider's stores may block): call it from a blocking thread, before plugins run.
    pub fn migrate_local_kv(&self) -> Result<usize, RegistryError> {
        if self.kv.is_none() {
            return Ok(0);
        }
        let entries = self.store.local_kv_entries()?;
        let mut moved = 0;
        let mut i = 0;
        while i < entries.len() {
            let (kind, name) = (entries[i].0, entries[i].1.clone());
            let target = self.kv_for(kind, &name);
            let mut n = 0;
            while let Some((k, nm, key, value)) = entries.get(i)
                && *k == kind
                && *nm == name
            {
                target.set(key, value).map_err(|source| RegistryError::PluginKv {
                    kind,
                    name: name.clone(),
                    source,
                })?;
                i += 1;
                n += 1;
            }
            self.store.delete_local_kv(kind, &name)?;
            tracing::info!(%kind, %name, keys = n, "plugin data moved into the state store");
            moved += n;
        }
        Ok(moved)
    }

    fn set_current(&self, slot: &Slot, loaded: Option<Arc<LoadedVersion>>) {
        slot.current.store(loaded);
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// A number that moves whenever the active version of any plugin changes (activation,
    /// rollback, deletion). A hot caller that keeps what [`Registry::active`] answered (the
    /// gateway's workers keep their routers) checks this on each call, one shared read, and asks
    /// again only when it moved.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    fn slot(&self, key: &Key) -> Arc<Slot> {
        if let Some(slot) = self.slots.read().get(&key.0).and_then(|names| names.get(&key.1)) {
            return slot.clone();
        }
        self.slots.write().entry(key.0).or_default().entry(key.1.clone()).or_default().clone()
    }

    fn scope(&self, kind: PluginKind, name: &str, version: &str) -> PluginScope {
        PluginScope {
            kind: kind.as_str().into(),
            name: name.into(),
            version: version.into(),
            kv: Some(self.kv_for(kind, name)),
        }
    }

    fn loaded(&self, meta: PluginVersion, plugin: AnyPlugin) -> LoadedVersion {
        LoadedVersion {
            metrics: CallMetrics::new(&meta),
            meta,
            plugin,
            probation: AtomicBool::new(false),
            consecutive_failures: AtomicU32::new(0),
            streak_since: parking_lot::Mutex::new(None),
            rolling_back: AtomicBool::new(false),
            ok: AtomicU64::new(0),
            failed: AtomicU64::new(0),
        }
    }

    fn load_version(&self, kind: PluginKind, name: &str, version: &str) -> Result<LoadedVersion, RegistryError> {
        let meta = self.store.version(kind, name, version)?.ok_or_else(|| RegistryError::VersionNotFound {
            kind,
            name: name.into(),
            version: version.into(),
        })?;
        let bytes = self
            .store
            .blob(&meta.digest)?
            .ok_or_else(|| RegistryError::Storage(format!("blob {} missing", meta.digest)))?;
        let plugin =
            AnyPlugin::load(&self.runtime, kind, &bytes, self.scope(kind, name, version), kind.default_limits())?;
        Ok(self.loaded(meta, plugin))
    }

    fn emit(&self, kind: PluginKind, name: &str, action: &'static str, data: serde_json::Value) {
        // The receiver may be gone at shutdown; events are best effort by design.
        let _ = self.events.send(RegistryEvent { kind, name: name.into(), action, data });
    }

    /// Validate and store a new version. It becomes active if `activate` is set or if the plugin
    /// has no active version yet. `version` defaults to `v<seq>`.
    #[tracing::instrument(skip(self, bytes), fields(size = bytes.len()))]
    pub async fn push(
        &self,
        kind: PluginKind,
        name: &str,
        version: Option<&str>,
        bytes: &[u8],
        activate: bool,
    ) -> Result<PluginVersion, RegistryError> {
        validate_name(name)?;
        if let Some(v) = version {
            validate_version(v)?;
        }
        // Validate by type before anything is stored (compiling may take a while: off the
        // async threads).
        let runtime = self.runtime.clone();
        let owned = bytes.to_vec();
        let probe_scope = PluginScope::detached(kind.as_str(), name, version.unwrap_or("new"));
        // Compiled, not yet admitted to the compile cache: a refused upload leaves nothing there.
        let compiled = tokio::task::spawn_blocking(move || {
            let compiled = runtime.compile_unadmitted(&owned)?;
            AnyPlugin::load_compiled(&runtime, kind, &compiled, probe_scope, kind.default_limits())?;
            Ok::<_, LoadError>(compiled)
        })
        .await
        .map_err(|e| RegistryError::Storage(format!("validation task failed: {e}")))??;

        let _guard = self.write.lock().await;
        let mut state = self.store.state(kind, name)?.unwrap_or_default();
        let seq = state.last_seq + 1;
        let version = version.map(str::to_owned).unwrap_or_else(|| format!("v{seq}"));
        if self.store.version(kind, name, &version)?.is_some() {
            return Err(RegistryError::DuplicateVersion { kind, name: name.into(), version });
        }
        if self.store.version_count(kind, name)? >= self.config.max_versions {
            return Err(RegistryError::TooManyVersions { kind, name: name.into(), limit: self.config.max_versions });
        }
        let meta = PluginVersion {
            kind,
            name: name.into(),
            version: version.clone(),
            digest: compiled.digest.clone(),
            size: bytes.len() as u64,
            uploaded_at: now_rfc3339(),
            seq,
        };
        state.last_seq = seq;
        let make_active = activate || state.active.is_none();
        let loaded = if make_active {
            let scope = self.scope(kind, name, &version);
            let plugin = AnyPlugin::load_compiled(&self.runtime, kind, &compiled, scope, kind.default_limits())?;
            Some(self.loaded(meta.clone(), plugin))
        } else {
            None
        };
        if make_active && let Some(previous) = state.active.replace(version.clone()) {
            state.history.push(previous);
            self.trim_history(&mut state);
        }
        self.store.put_version(&meta, bytes, &state).await?;
        // Accepted: now the compiled component may be kept.
        self.runtime.cache().admit(&compiled);
        self.emit(
            kind,
            name,
            "uploaded",
            serde_json::json!({ "version": meta.version, "digest": meta.digest, "size": meta.size }),
        );
        if let Some(loaded) = loaded {
            let probation = !state.history.is_empty();
            self.swap_in(kind, name, loaded, probation);
            self.emit(
                kind,
                name,
                "activated",
                serde_json::json!({ "version": meta.version, "digest": meta.digest, "previous": state.history.last() }),
            );
        }
        Ok(meta)
    }

    /// Forgets the oldest rollback targets beyond `max_history`.
    fn trim_history(&self, state: &mut ActivationState) {
        let over = state.history.len().saturating_sub(self.config.max_history);
        state.history.drain(..over);
    }

    fn swap_in(&self, kind: PluginKind, name: &str, loaded: LoadedVersion, probation: bool) {
        loaded.probation.store(probation, Ordering::Relaxed);
        self.set_current(&self.slot(&(kind, name.to_owned())), Some(Arc::new(loaded)));
    }

    /// Make `version` the active version.
    #[tracing::instrument(skip(self))]
    pub async fn activate(&self, kind: PluginKind, name: &str, version: &str) -> Result<PluginVersion, RegistryError> {
        let _guard = self.write.lock().await;
        let mut state =
            self.store.state(kind, name)?.ok_or_else(|| RegistryError::NotFound { kind, name: name.into() })?;
        let loaded = self.load_version(kind, name, version)?;
        let meta = loaded.meta.clone();
        if state.active.as_deref() == Some(version) {
            return Ok(meta);
        }
        if let Some(previous) = state.active.take() {
            state.history.push(previous);
        }
        state.history.retain(|v| v != version);
        self.trim_history(&mut state);
        state.active = Some(version.to_owned());
        self.store.put_state(kind, name, &state).await?;
        let probation = !state.history.is_empty();
        self.swap_in(kind, name, loaded, probation);
        self.emit(
            kind,
            name,
            "activated",
            serde_json::json!({ "version": version, "digest": meta.digest, "previous": state.history.last() }),
        );
        Ok(meta)
    }

    /// Return to the previously active version.
    #[tracing::instrument(skip(self))]
    pub async fn rollback(&self, kind: PluginKind, name: &str) -> Result<PluginVersion, RegistryError> {
        let _guard = self.write.lock().await;
        self.rollback_locked(kind, name, "requested").await
    }

    async fn rollback_locked(
        &self,
        kind: PluginKind,
        name: &str,
        reason: &str,
    ) -> Result<PluginVersion, RegistryError> {
        let mut state =
            self.store.state(kind, name)?.ok_or_else(|| RegistryError::NotFound { kind, name: name.into() })?;
        let Some(target) = state.history.pop() else {
            return Err(RegistryError::NothingToRollBack { kind, name: name.into() });
        };
        let loaded = self.load_version(kind, name, &target)?;
        let meta = loaded.meta.clone();
        let from = state.active.replace(target.clone());
        self.store.put_state(kind, name, &state).await?;
        // The version we return to has proved itself before: no probation.
        self.swap_in(kind, name, loaded, false);
        self.emit(kind, name, "rolled-back", serde_json::json!({ "from": from, "to": target, "reason": reason }));
        Ok(meta)
    }

    /// Delete one version (not the active one), or with `version == None` the whole plugin.
    #[tracing::instrument(skip(self))]
    pub async fn delete(&self, kind: PluginKind, name: &str, version: Option<&str>) -> Result<(), RegistryError> {
        let _guard = self.write.lock().await;
        let mut state =
            self.store.state(kind, name)?.ok_or_else(|| RegistryError::NotFound { kind, name: name.into() })?;
        match version {
            Some(version) => {
                if self.store.version(kind, name, version)?.is_none() {
                    return Err(RegistryError::VersionNotFound { kind, name: name.into(), version: version.into() });
                }
                if state.active.as_deref() == Some(version) {
                    return Err(RegistryError::VersionActive { kind, name: name.into(), version: version.into() });
                }
                state.history.retain(|v| v != version);
                self.store.delete_version(kind, name, version, &state).await?;
                self.emit(kind, name, "deleted", serde_json::json!({ "version": version }));
            }
            None => {
                self.store.delete_plugin(kind, name).await?;
                let removed = self.slots.write().get_mut(&kind).and_then(|names| names.remove(name));
                if let Some(slot) = removed {
                    self.set_current(&slot, None);
                }
                // The plugin's own data goes with it (the local copy went with `delete_plugin`).
                if self.kv.is_some() {
                    let kv = self.kv_for(kind, name);
                    match tokio::task::spawn_blocking(move || purge(kv.as_ref())).await {
                        Ok(Ok(n)) => tracing::info!(%kind, %name, keys = n, "deleted plugin's data removed"),
                        Ok(Err(e)) => {
                            tracing::warn!(%kind, %name, cause = %e, "could not remove the deleted plugin's data")
                        }
                        Err(e) => {
                            tracing::warn!(%kind, %name, cause = %e, "could not remove the deleted plugin's data")
                        }
                    }
                }
                self.emit(kind, name, "deleted", serde_json::json!({ "version": null }));
            }
        }
        Ok(())
    }

    /// The active version of a plugin. Hold the `Arc` for the duration of a call: a concurrent
    /// activation does not affect it.
    pub fn active(&self, kind: PluginKind, name: &str) -> Option<Arc<LoadedVersion>> {
        self.slots.read().get(&kind).and_then(|names| names.get(name)).and_then(|s| s.current.load_full())
    }

    /// Run `f` on the active version of a plugin and record the outcome.
    pub fn call<R>(
        &self,
        kind: PluginKind,
        name: &str,
        f: impl FnOnce(&AnyPlugin) -> Result<R, CallError>,
    ) -> Option<Result<R, CallError>> {
        // See `Plugin::call` for how calls from async tasks are handled.
        let loaded = self.active(kind, name)?;
        let started = Instant::now();
        let result = f(&loaded.plugin);
        self.record_call(&loaded, started.elapsed(), result.as_ref().err());
        Some(result)
    }

    /// Account one call of `loaded` that took `elapsed`: its latency, then [`Registry::record`].
    /// For callers that call a version they keep instead of going through [`Registry::call`].
    pub fn record_call(&self, loaded: &Arc<LoadedVersion>, elapsed: Duration, error: Option<&CallError>) {
        loaded.metrics.latency.record(elapsed.as_secs_f64());
        self.record(loaded, error);
    }

    /// Account one call of `loaded`: metrics, and the automatic rollback of an activated version
    /// that failed `rollback_after` calls in a row within `rollback_window`.
    pub fn record(&self, loaded: &Arc<LoadedVersion>, error: Option<&CallError>) {
        let Some(error) = error else {
            loaded.metrics.ok.increment(1);
            loaded.ok.fetch_add(1, Ordering::Relaxed);
            // Written only when it changes: on a hot path two threads would otherwise keep
            // taking this cache line from each other.
            if loaded.consecutive_failures.load(Ordering::Relaxed) != 0 {
                loaded.consecutive_failures.store(0, Ordering::Relaxed);
            }
            return;
        };
        loaded.metrics.failed.increment(1);
        loaded.failed.fetch_add(1, Ordering::Relaxed);
        if matches!(error, CallError::Busy(_)) {
            // At its instance quota: the call did not run, which says nothing about the version.
            return;
        }
        let streak = {
            let now = tokio::time::Instant::now();
            let mut since = loaded.streak_since.lock();
            let stale = since.is_none_or(|at| now.duration_since(at) > self.config.rollback_window);
            if loaded.consecutive_failures.load(Ordering::Relaxed) == 0 || stale {
                *since = Some(now);
                loaded.consecutive_failures.store(1, Ordering::Relaxed);
                1
            } else {
                loaded.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1
            }
        };
        if streak < self.config.rollback_after {
            return;
        }
        let (kind, name, version) = (loaded.meta.kind, loaded.meta.name.clone(), loaded.meta.version.clone());
        if streak == self.config.rollback_after {
            self.emit(
                kind,
                &name,
                "failing",
                serde_json::json!({
                    "version": version, "consecutive_failures": streak, "last_error": error.to_string(),
                }),
            );
        }
        if !loaded.probation.load(Ordering::Relaxed) || loaded.rolling_back.swap(true, Ordering::AcqRel) {
            return;
        }
        // Roll back in a task of its own: this path may be hot and synchronous, and the change
        // waits for the write lock (held by whatever change is under way) and a commit. It
        // happens only if this version is still the active one by then. A rollback that failed
        // (a commit refused, say) is tried again at the next failure.
        let runtime = tokio::runtime::Handle::try_current().ok().or_else(|| self.tasks.clone());
        let (Some(me), Some(runtime)) = (self.me.upgrade(), runtime) else {
            tracing::warn!(%kind, %name, %version, "automatic rollback postponed: no runtime to run it on");
            loaded.rolling_back.store(false, Ordering::Release);
            return;
        };
        let loaded = loaded.clone();
        let reason = format!("{streak} consecutive failures; last: {error}");
        runtime.spawn(async move {
            let _guard = me.write.lock().await;
            let still_active = me.active(kind, &name).is_some_and(|a| Arc::ptr_eq(&a, &loaded));
            if !still_active {
                return;
            }
            match me.rollback_locked(kind, &name, &reason).await {
                Ok(to) => tracing::warn!(%kind, %name, from = %version, to = %to.version, "rolled back automatically"),
                // Nothing to return to: this version stays, and nothing is tried again for it.
                Err(err @ RegistryError::NothingToRollBack { .. }) => tracing::warn!(cause = %err, %kind, %name, "no automatic rollback"),
                Err(err) => {
                    tracing::error!(cause = %err, %kind, %name, "automatic rollback failed; trying again at the next failure");
                    loaded.rolling_back.store(false, Ordering::Release);
                }
            }
        });
    }

    /// Every plugin, sorted by kind and name.
    pub fn list(&self) -> Result<Vec<PluginInfo>, RegistryError> {
        let mut by_key: BTreeMap<Key, Vec<PluginVersion>> = BTreeMap::new();
        for v in self.store.versions()? {
            by_key.entry((v.kind, v.name.clone())).or_default().push(v);
        }
        let states: HashMap<Key, ActivationState> =
            self.store.states()?.into_iter().map(|(k, n, s)| ((k, n), s)).collect();
        Ok(by_key
            .into_iter()
            .map(|((kind, name), mut versions)| {
                versions.sort_by_key(|v| v.seq);
                let state = states.get(&(kind, name.clone())).cloned().unwrap_or_default();
                let active = self.active(kind, &name);
                PluginInfo {
                    kind,
                    calls_ok: active.as_ref().map_or(0, |a| a.calls_ok()),
                    calls_failed: active.as_ref().map_or(0, |a| a.calls_failed()),
                    name,
                    active: state.active,
                    history: state.history,
                    versions,
                }
            })
            .collect())
    }

    /// One plugin.
    pub fn show(&self, kind: PluginKind, name: &str) -> Result<PluginInfo, RegistryError> {
        self.list()?
            .into_iter()
            .find(|p| p.kind == kind && p.name == name)
            .ok_or_else(|| RegistryError::NotFound { kind, name: name.into() })
    }

    /// The component bytes of a version.
    pub fn bytes(&self, kind: PluginKind, name: &str, version: &str) -> Result<Vec<u8>, RegistryError> {
        let meta = self.store.version(kind, name, version)?.ok_or_else(|| RegistryError::VersionNotFound {
            kind,
            name: name.into(),
            version: version.into(),
        })?;
        self.store.blob(&meta.digest)?.ok_or_else(|| RegistryError::Storage(format!("blob {} missing", meta.digest)))
    }

    /// The runtime plugins are loaded into.
    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }
}
