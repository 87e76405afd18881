//! The per-instance host state: an empty WASI context, the memory limiter, and the plugin's scope
//! (who it is, its key-value store, and for health checks the target it may probe).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU32;
use std::time::{Duration, Instant};

use parking_lot::RwLock;
use wasmtime::ResourceLimiter;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::KvError;

/// The storage behind a plugin's `keyvalue` import. Keys arrive already scoped: the host hands
/// each plugin a backend that sees only that plugin's keys.
///
/// Each operation takes `until`: the latest instant it may wait to, which the `keyvalue` import
/// derives from the plugin call's deadline ([`HostState::kv_deadline`]). The epoch interruption
/// that bounds a call cannot fire while the host blocks in an import, so a backend that waits on
/// anything (the network, another thread) must stop waiting by `until` and answer
/// [`KvError::Timeout`], or [`KvError::DeadlinePassed`] when `until` is already past. `None`: no
/// call is waiting (host code, migrations), the backend's own bound applies. A backend that never
/// waits (in memory, a local RocksDB read) may ignore it. Callers without a deadline use the
/// provided methods without `_until`.
pub trait KvBackend: Send + Sync + 'static {
    /// Value of `key`.
    fn get_until(&self, key: &str, until: Option<Instant>) -> Result<Option<Vec<u8>>, KvError>;
    /// Store `value` under `key`.
    fn set_until(&self, key: &str, value: &[u8], until: Option<Instant>) -> Result<(), KvError>;
    /// Remove `key`.
    fn delete_until(&self, key: &str, until: Option<Instant>) -> Result<(), KvError>;
    /// Up to `limit` keys starting with `prefix` and greater than `start_after`, in byte order.
    fn list_until(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
        until: Option<Instant>,
    ) -> Result<Vec<String>, KvError>;

    /// Whether an operation may wait on anything `until` must bound (true unless the backend
    /// says otherwise). Calls of a plugin whose store never waits and whose world has no
    /// `probe` skip reading the clock for their deadline: routers are called on every proxied
    /// request.
    fn waits(&self) -> bool {
        true
    }

    /// [`KvBackend::get_until`] without a deadline.
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        self.get_until(key, None)
    }
    /// [`KvBackend::set_until`] without a deadline.
    fn set(&self, key: &str, value: &[u8]) -> Result<(), KvError> {
        self.set_until(key, value, None)
    }
    /// [`KvBackend::delete_until`] without a deadline.
    fn delete(&self, key: &str) -> Result<(), KvError> {
        self.delete_until(key, None)
    }
    /// [`KvBackend::list_until`] without a deadline.
    fn list(&self, prefix: &str, start_after: Option<&str>, limit: usize) -> Result<Vec<String>, KvError> {
        self.list_until(prefix, start_after, limit, None)
    }
}

/// An in-memory [`KvBackend`], for `shoal plugin check` and for hosts without a data directory.
#[derive(Default)]
pub struct MemoryKv {
    map: RwLock<BTreeMap<String, Vec<u8>>>,
}

/// Never waits on anything a deadline could bound, so it ignores `until`.
impl KvBackend for MemoryKv {
    fn waits(&self) -> bool {
        false
    }

    fn get_until(&self, key: &str, _: Option<Instant>) -> Result<Option<Vec<u8>>, KvError> {
        Ok(self.map.read().get(key).cloned())
    }
    fn set_until(&self, key: &str, value: &[u8], _: Option<Instant>) -> Result<(), KvError> {
        self.map.write().insert(key.to_owned(), value.to_vec());
        Ok(())
    }
    fn delete_until(&self, key: &str, _: Option<Instant>) -> Result<(), KvError> {
        self.map.write().remove(key);
        Ok(())
    }
    fn list_until(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
        _: Option<Instant>,
    ) -> Result<Vec<String>, KvError> {
        let map = self.map.read();
        Ok(map
            .range(prefix.to_owned()..)
            .map(|(k, _)| k)
            .take_while(|k| k.starts_with(prefix))
            .filter(|k| start_after.is_none_or(|s| k.as_str() > s))
            .take(limit)
            .cloned()
            .collect())
    }
}

/// Who a plugin is, and what it may reach.
pub struct PluginScope {
    /// Kind of plugin (`router`, …), for logs and metrics.
    pub kind: String,
    /// Plugin name.
    pub name: String,
    /// Plugin version.
    pub version: String,
    /// Its key-value store; `None` makes every store call answer `access-denied`.
    pub kv: Option<Arc<dyn KvBackend>>,
}

impl PluginScope {
    /// A scope without a store, for tests and one-off checks.
    pub fn detached(kind: &str, name: &str, version: &str) -> Self {
        PluginScope { kind: kind.into(), name: name.into(), version: version.into(), kv: None }
    }
}

/// The one address a health-check plugin may probe during a call.
#[derive(Clone, Debug)]
pub struct ProbeTarget {
    /// IP address or host name of the task.
    pub address: String,
    /// Ports the probe may connect to.
    pub ports: Vec<u16>,
    /// When the check must be over (its timeout): probes end by then.
    pub deadline: Option<Instant>,
}

/// The request a router is routing: the host side of the WIT resource `route-request.request`.
///
/// The router reads it on demand during `routing.route` (see `shoal_abi::route`, which moves it
/// into the instance's state for the call and back out after, without copying). A rule pays only
/// for the parts it reads.
#[derive(Debug, Default)]
pub struct RouteRequest {
    /// HTTP method.
    pub method: http::Method,
    /// Host header (or `:authority`), lower-case, without the port.
    pub host: String,
    /// Path without the query string.
    pub path: String,
    /// The client's address, when known.
    pub client_ip: Option<IpAddr>,
    /// Request headers.
    pub headers: http::HeaderMap,
    /// Requests in flight to each endpoint of the route, in endpoint order. The gateway keeps
    /// these counters; an empty slice reads as all zeros.
    pub active: Arc<[AtomicU32]>,
}

/// The store data of every plugin instance.
pub struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub(crate) limiter: MemoryLimiter,
    pub(crate) scope: Arc<PluginScope>,
    /// The target of the current health-check call; `None` outside such a call.
    pub probe: Option<ProbeTarget>,
    /// The request of the current routing call; only meaningful while `routing` is true.
    pub request: RouteRequest,
    /// True while a `routing.route` call is running (the only time `request` can be read).
    pub routing: bool,
    /// What the router said through `route-request.completions` (true until it says no).
    pub completions: bool,
    /// When the current call must be over (its deadline), stamped at the start of every call
    /// whose imports may wait (a `probe`, a store that [`KvBackend::waits`]): they bound their
    /// waiting by it, since the epoch interruption cannot stop a call while it is in the host.
    /// `None` for the others, whose imports never wait.
    pub call_deadline: Option<Instant>,
    /// How long each call of this plugin may run ([`crate::CallLimits::deadline`]).
    call_budget: Duration,
}

/// The part of a call's time a `keyvalue` import may not wait into: a store that does not
/// answer is given up on with a tenth of the call left, so the plugin still has time to act on
/// the error (a router falls back, a framework answers) instead of being interrupted at its
/// deadline — an interrupted call is a failure that counts toward its version's rollback, a
/// store's error is a value the plugin handles.
const KV_RESERVE_DIVISOR: u32 = 10;

impl HostState {
    pub(crate) fn new(scope: Arc<PluginScope>, memory_limit: usize, call_budget: Duration) -> Self {
        // An empty WASI context: no preopened directories, no environment, no arguments, stdin
        // empty, stdout/stderr discarded, no sockets and no name lookups. Rust's standard library
        // imports these interfaces, so they are linked, but they grant nothing.
        let wasi = WasiCtx::builder().allow_tcp(false).allow_udp(false).allow_ip_name_lookup(false).build();
        HostState {
            wasi,
            table: ResourceTable::new(),
            limiter: MemoryLimiter { limit: memory_limit, exceeded: false, size: 0 },
            scope,
            probe: None,
            request: RouteRequest::default(),
            routing: false,
            completions: true,
            call_deadline: None,
            call_budget,
        }
    }

    /// The latest instant a `keyvalue` call of the current call may wait to: the call's
    /// deadline less a tenth of its budget (see [`KV_RESERVE_DIVISOR`]). `None` outside a call.
    pub fn kv_deadline(&self) -> Option<Instant> {
        let reserve = self.call_budget / KV_RESERVE_DIVISOR;
        self.call_deadline.map(|deadline| deadline.checked_sub(reserve).unwrap_or(deadline))
    }

    /// The plugin this state belongs to.
    pub fn scope(&self) -> &PluginScope {
        &self.scope
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

/// Caps each instance's memories (and tables) and remembers whether the cap was hit, so that the
/// trap that follows can be reported as out-of-memory rather than a generic trap.
pub(crate) struct MemoryLimiter {
    pub(crate) limit: usize,
    pub(crate) exceeded: bool,
    /// The largest linear memory this instance has had, in bytes.
    pub(crate) size: usize,
}

/// Table elements an instance may hold; generous for interpreters (CPython has large tables).
const MAX_TABLE_ELEMENTS: usize = 200_000;

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        if desired > self.limit {
            self.exceeded = true;
            // Refuse the growth: `memory.grow` returns -1 and the guest's allocator aborts with a
            // trap, which `Plugin::call` reports as `CallError::OutOfMemory`.
            return Ok(false);
        }
        self.size = self.size.max(desired);
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }
}
