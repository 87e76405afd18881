//! Loaded plugins and their instance pools: every call is bounded and a failed instance is never
//! reused.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use wasmtime::component::InstancePre;
use wasmtime::{Store, Trap};

use crate::engine::{CallLimits, Runtime};
use crate::error::CallError;
use crate::imports::Imports;
use crate::state::{HostState, PluginScope};

/// A WIT world the runtime can load components against. Implemented in `shoal-abi` for each
/// plugin kind over the types `wasmtime::component::bindgen!` generates.
pub trait World: Send + Sync + 'static {
    /// World name, e.g. `router`.
    const NAME: &'static str;
    /// The interface the world exports, e.g. `shoal:plugin/routing@0.1.0`, for error messages.
    const EXPORT: &'static str;
    /// Host interfaces the world links.
    const IMPORTS: Imports;
    /// Pre-instantiated, type-checked component (e.g. `RouterPre<HostState>`).
    type Pre: Send + Sync + 'static;
    /// Typed exports of one instance (e.g. `Router`).
    type Bindings: Send + 'static;
    /// Type-check the exports.
    fn pre(pre: InstancePre<HostState>) -> wasmtime::Result<Self::Pre>;
    /// Make a new instance in `store`.
    fn instantiate(pre: &Self::Pre, store: &mut Store<HostState>) -> wasmtime::Result<Self::Bindings>;
}

/// One live instance: its store and typed exports. `generation` is free for the typed layer to
/// remember what the instance has been told (e.g. the router's endpoint-set generation).
pub struct Instance<W: World> {
    /// The instance's store.
    pub store: Store<HostState>,
    /// Typed exports.
    pub bindings: W::Bindings,
    /// Caller-defined generation; 0 for a new instance.
    pub generation: u64,
    /// Linear memory right after instantiation, to tell a heap that keeps growing.
    start_memory: usize,
    /// Its place in the plugin's count of live instances, given back when it is dropped.
    _live: Live,
}

/// One live instance in its plugin's count ([`crate::CallLimits::max_live`]).
struct Live(Arc<std::sync::atomic::AtomicUsize>);

impl Drop for Live {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Counters of a loaded plugin.
#[derive(Default)]
pub struct PluginStats {
    /// Calls that returned.
    pub ok: AtomicU64,
    /// Calls that failed.
    pub failed: AtomicU64,
    /// Instances created.
    pub instantiated: AtomicU64,
    /// Instances retired after a successful call because their memory kept growing.
    pub retired: AtomicU64,
}

/// A loaded plugin: a type-checked component, its scope and limits, and a pool of idle
/// instances. Share it behind an `Arc`; calls may run concurrently from many threads.
pub struct Plugin<W: World> {
    runtime: Runtime,
    digest: String,
    pre: W::Pre,
    scope: Arc<PluginScope>,
    limits: CallLimits,
    ticks: u64,
    /// Whether calls stamp their deadline into the host state: when an import may wait.
    deadlined: bool,
    idle: Mutex<Vec<Instance<W>>>,
    stats: PluginStats,
    /// Instances alive now (idle or in a call).
    live: Arc<std::sync::atomic::AtomicUsize>,
}

impl<W: World> Plugin<W> {
    pub(crate) fn new(
        runtime: Runtime,
        digest: String,
        pre: W::Pre,
        scope: Arc<PluginScope>,
        limits: CallLimits,
    ) -> Self {
        let deadlined = W::IMPORTS.probe || scope.kv.as_ref().is_some_and(|kv| kv.waits());
        Plugin {
            runtime,
            digest,
            pre,
            scope,
            ticks: Runtime::ticks(limits.deadline),
            deadlined,
            limits,
            idle: Mutex::new(Vec::new()),
            stats: PluginStats::default(),
            live: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
        }
    }

    /// sha256 of the component bytes.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// Who the plugin is.
    pub fn scope(&self) -> &PluginScope {
        &self.scope
    }

    /// The plugin's call limits.
    pub fn limits(&self) -> CallLimits {
        self.limits
    }

    /// Call counters.
    pub fn stats(&self) -> &PluginStats {
        &self.stats
    }

    /// Idle instances in the pool right now.
    pub fn idle_instances(&self) -> usize {
        self.idle.lock().len()
    }

    /// Make a fresh instance (not from the pool).
    pub fn instantiate(&self) -> Result<Instance<W>, CallError> {
        let live = Live(self.live.clone());
        if self.live.fetch_add(1, Ordering::AcqRel) >= self.limits.max_live.max(1) {
            return Err(CallError::Busy(self.limits.max_live));
        }
        let mut state = HostState::new(self.scope.clone(), self.limits.memory, self.limits.deadline);
        if self.deadlined {
            state.call_deadline = Some(std::time::Instant::now() + self.limits.deadline);
        }
        let mut store = Store::new(self.runtime.engine(), state);
        store.limiter(|s| &mut s.limiter);
        // Start functions run under the same deadline as calls.
        store.set_epoch_deadline(self.ticks);
        store.epoch_deadline_trap();
        let bindings =
            W::instantiate(&self.pre, &mut store).map_err(|e| classify(&e, &store, self.limits.deadline, true))?;
        self.stats.instantiated.fetch_add(1, Ordering::Relaxed);
        let start_memory = store.data().limiter.size;
        Ok(Instance { store, bindings, generation: 0, start_memory, _live: live })
    }

    /// Run `f` on a pooled instance, bounded by the plugin's deadline and memory cap.
    ///
    /// On success the instance returns to the pool. On any failure — a trap, the deadline, the
    /// memory cap, or `f` itself returning an error — the instance is dropped, so no later call
    /// ever sees the state a failing call left behind.
    ///
    /// Calls are synchronous. Called from inside an async task, the call leaves the async
    /// context first (`block_in_place` on a multi-thread runtime, a scoped thread on a
    /// current-thread one), so that a call that legitimately runs long — a framework or an
    /// allocator working up to its deadline of seconds, a health check's probe waiting on the
    /// network — does not stall the other tasks of its worker. Short calls on a hot path (the
    /// gateway's routers) use [`Plugin::call_inline`] instead and skip that thread hand-off.
    pub fn call<R: Send>(&self, f: impl FnOnce(&mut Instance<W>) -> wasmtime::Result<R> + Send) -> Result<R, CallError>
    where
        W::Bindings: Send,
    {
        use tokio::runtime::{Handle, RuntimeFlavor};
        match Handle::try_current() {
            Err(_) => self.call_here(f),
            Ok(handle) if handle.runtime_flavor() == RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(|| self.call_here(f))
            }
            Ok(_) => std::thread::scope(|scope| match scope.spawn(|| self.call_here(f)).join() {
                Ok(result) => result,
                Err(_) => Err(CallError::Trap("the host thread running the call panicked".into())),
            }),
        }
    }

    /// [`Plugin::call`] on the current thread, even a Tokio worker (of a multi-thread or a
    /// current-thread runtime): no thread hand-off.
    ///
    /// This is safe because no import a plugin can reach blocks on Tokio: the WASI functions
    /// answer at once and refuse to wait ([`crate::wasi`]: a plugin that sleeps or waits on a
    /// pollable fails with [`CallError::Trap`]), and the store backend of the plugin leaves the
    /// worker itself if it has to wait on the network, and waits no later than the call's
    /// deadline ([`crate::KvBackend`]). What the caller accepts is that the
    /// worker is busy for as long as the call runs, up to the plugin's deadline: use it for
    /// plugins whose calls are short and whose world has no long imports (routers: deadline
    /// 50 ms, no `probe`).
    pub fn call_inline<R>(&self, f: impl FnOnce(&mut Instance<W>) -> wasmtime::Result<R>) -> Result<R, CallError> {
        self.call_here(f)
    }

    fn call_here<R>(&self, f: impl FnOnce(&mut Instance<W>) -> wasmtime::Result<R>) -> Result<R, CallError> {
        let mut kept = self.idle.lock().pop();
        let result = self.call_kept(&mut kept, f);
        if let Some(instance) = kept {
            let mut idle = self.idle.lock();
            if idle.len() < self.limits.max_idle {
                idle.push(instance);
            }
        }
        result
    }

    /// [`Plugin::call_inline`] on an instance the caller keeps in `kept` instead of the pool
    /// (one per thread on a hot path: no pool lock, the instance stays warm in that core's
    /// caches). An empty `kept` gets a fresh instance; after a failure, or once the instance's
    /// memory used up half of its headroom, `kept` is emptied, so the rule "a failed instance is
    /// never reused" holds here too.
    pub fn call_kept<R>(
        &self,
        kept: &mut Option<Instance<W>>,
        f: impl FnOnce(&mut Instance<W>) -> wasmtime::Result<R>,
    ) -> Result<R, CallError> {
        let instance = match kept {
            Some(instance) => instance,
            None => match self.instantiate() {
                Ok(instance) => kept.insert(instance),
                Err(err) => {
                    self.stats.failed.fetch_add(1, Ordering::Relaxed);
                    return Err(err);
                }
            },
        };
        instance.store.set_epoch_deadline(self.ticks);
        // The epoch interruption cannot stop a call while it waits in the host: imports that may
        // wait (a probe, a store on the network) bound their waiting by this. Every world
        // imports `keyvalue`, but only a store that waits needs it: a router whose store is in
        // memory or local skips the clock read (≈ 20 ns of a 0.3 µs call, BENCHMARKS.md).
        if self.deadlined {
            instance.store.data_mut().call_deadline = Some(std::time::Instant::now() + self.limits.deadline);
        }
        let span = self.call_span();
        let entered = span.enter();
        let result = f(instance);
        drop(entered);
        span.record("outcome", if result.is_ok() { "ok" } else { "failed" });
        match result {
            Ok(value) => {
                self.stats.ok.fetch_add(1, Ordering::Relaxed);
                // Retire an instance whose memory has used up half of its headroom: a garbage
                // collected guest (JavaScript's engine collects lazily) would otherwise grow
                // until a call fails on the memory cap. A fresh instance costs microseconds.
                let size = instance.store.data().limiter.size;
                let headroom = self.limits.memory.saturating_sub(instance.start_memory);
                if size > instance.start_memory + headroom / 2 {
                    self.stats.retired.fetch_add(1, Ordering::Relaxed);
                    *kept = None;
                }
                Ok(value)
            }
            Err(err) => {
                self.stats.failed.fetch_add(1, Ordering::Relaxed);
                let err = classify(&err, &instance.store, self.limits.deadline, false);
                *kept = None;
                tracing::debug!(
                    kind = %self.scope.kind, name = %self.scope.name, version = %self.scope.version,
                    cause = %err, "plugin call failed; instance discarded"
                );
                Err(err)
            }
        }
    }

    /// The span of one call, for the trace exporter: `plugin.call` with the plugin's kind, name
    /// and version (and the call's `outcome`, recorded after it), a child of the current span.
    /// Made only inside a span (a traced request, a launch): the master's periodic calls
    /// (allocation cycles, ticks) start no trace of their own. When nothing is exported the
    /// target (`shoal_trace::TARGET`) is disabled at the callsite and this costs a cached check.
    fn call_span(&self) -> tracing::Span {
        if !tracing::enabled!(target: "shoal::trace", tracing::Level::INFO) || tracing::Span::current().is_none() {
            return tracing::Span::none();
        }
        tracing::info_span!(
            target: "shoal::trace", "plugin.call",
            otel.kind = "internal",
            plugin.kind = %self.scope.kind, plugin.name = %self.scope.name, plugin.version = %self.scope.version,
            outcome = tracing::field::Empty,
        )
    }

    /// Drop every idle instance (e.g. after the plugin's store changed under it).
    pub fn clear_pool(&self) {
        self.idle.lock().clear();
    }
}

fn classify(err: &wasmtime::Error, store: &Store<HostState>, deadline: Duration, instantiating: bool) -> CallError {
    if let Some(call) = err.downcast_ref::<CallError>() {
        return call.clone();
    }
    if store.data().limiter.exceeded {
        return CallError::OutOfMemory { limit: store.data().limiter.limit };
    }
    match err.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => CallError::Timeout(deadline),
        _ if instantiating => CallError::Instantiate(format!("{err:#}")),
        Some(trap) => CallError::Trap(format!("{trap}: {}", root_message(err))),
        None => CallError::Trap(format!("{err:#}")),
    }
}

fn root_message(err: &wasmtime::Error) -> String {
    // wasmtime puts the guest backtrace in the context chain; keep the first line of each link
    // so messages stay one line in logs and JSON errors.
    err.chain().map(|e| e.to_string().lines().next().unwrap_or_default().to_owned()).collect::<Vec<_>>().join(": ")
}
