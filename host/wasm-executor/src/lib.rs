//! The agent's Wasm executor: runs tasks that are WebAssembly components inside the agent
//! process, started in milliseconds, with the same accounting as process tasks.
//!
//! Two kinds of task, told apart by what the component exports:
//!
//! - a **command** (`wasi:cli/run`, what `cargo build --target wasm32-wasip2` makes of a `main`):
//!   runs once with its arguments and environment; its exit code is the task's;
//! - an **HTTP service** (`wasi:http/incoming-handler`, the `wasi:http/proxy` world): the executor
//!   listens on the task's assigned address and runs each request in a fresh instance, like
//!   `wasmtime serve`; one request that traps or runs past its deadline fails alone (500/504).
//!
//! What a task gets: its arguments and environment, its sandbox directory preopened as `/` (and
//! nothing else of the file system), outbound network only when the spec allows it, stdout and
//! stderr captured into [`TaskLogs`] (bounded: the tail is kept, what falls off is counted), a
//! memory cap, and cooperative scheduling: the task yields to the agent's other work every epoch
//! tick (10 ms), so a spinning task cannot starve the agent. [`RunningTask::kill`] stops a task at
//! its next tick. A task whose spec names a [`TaskKvAccess`] reads and writes the state store
//! through `wasi:keyvalue` (see [`kv`]); without one, every bucket it opens is denied.
//!
//! What this crate must never do: share a [`wasmtime::Store`] between tasks (or between two
//! requests of a service), or give a task a capability its spec did not name.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use shoal_runtime::cache::ComponentCache;
use tokio::sync::watch;
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{Config, Engine, ResourceLimiter, Store, UpdateDeadline};
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

pub mod kv;
mod logs;

pub use kv::{MemoryTaskKv, TaskKv, TaskKvAccess};
pub use shoal_task_io::{DEFAULT_LOG_LIMIT, LogTail, TaskLogs};

/// How often the executor's epoch advances: the granularity of yielding, killing and deadlines.
pub const TICK: Duration = Duration::from_millis(10);
/// Default deadline of one request to an HTTP service task.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Default memory cap of a task when its spec names none (it should: `mem` of the task).
pub const DEFAULT_MEMORY_LIMIT: usize = 256 << 20;

/// Why a component cannot run as a task.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// The bytes are not a component wasmtime can compile.
    #[error("not a valid WebAssembly component: {0}")]
    Invalid(String),
    /// The component is neither a command nor an HTTP service.
    #[error(
        "the component exports neither `wasi:cli/run` (a command) nor `wasi:http/incoming-handler` (an HTTP \
         service); it exports: {0}"
    )]
    NotATask(String),
    /// The component imports something the executor does not provide.
    #[error("the component imports something a task may not use: {0}")]
    Imports(String),
    /// The spec does not fit the component (e.g. an HTTP service without an address).
    #[error("invalid task spec: {0}")]
    Spec(String),
    /// The sandbox directory or the listening socket could not be set up.
    #[error("could not set up the task: {0}")]
    Setup(String),
}

/// How a task ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Exit {
    /// The command returned (0 for success, 1 for `Err` from `run`) or called `exit(code)`.
    Code(i32),
    /// The task trapped (a panic, an out-of-bounds access, …).
    Trap(String),
    /// The task hit its memory cap.
    OutOfMemory {
        /// The cap, in bytes.
        limit: usize,
    },
    /// The task was killed.
    Killed,
}

impl Exit {
    /// Whether this is a successful end (exit code 0).
    pub fn success(&self) -> bool {
        *self == Exit::Code(0)
    }
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Exit::Code(code) => write!(f, "exited with code {code}"),
            Exit::Trap(message) => write!(f, "trapped: {message}"),
            Exit::OutOfMemory { limit } => write!(f, "out of memory (cap {} MiB)", limit >> 20),
            Exit::Killed => f.write_str("killed"),
        }
    }
}

/// What kind of task a component is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TaskKind {
    /// Exports `wasi:cli/run`.
    Command,
    /// Exports `wasi:http/incoming-handler`.
    HttpService,
}

/// A compiled component, classified.
#[derive(Clone)]
pub struct Prepared {
    /// Command or HTTP service.
    pub kind: TaskKind,
    /// sha256 of the component's bytes.
    pub digest: String,
    component: Component,
}

/// One task to run.
pub struct TaskSpec {
    /// Task id (also `argv[0]` and the `TASK_ID` environment variable).
    pub task_id: String,
    /// Arguments after `argv[0]`.
    pub args: Vec<String>,
    /// Environment variables (the agent adds `PORT0`… for assigned ports).
    pub env: Vec<(String, String)>,
    /// Directory preopened as `/`; `None` gives the task no file system at all.
    pub sandbox: Option<PathBuf>,
    /// Memory cap in bytes (the task's `mem`).
    pub memory_limit: usize,
    /// Where an HTTP service listens (the agent's address and the task's first port).
    pub listen: Option<SocketAddr>,
    /// Whether the task may open outbound sockets and resolve names.
    pub network: bool,
    /// Where stdout and stderr go.
    pub logs: Arc<TaskLogs>,
    /// The state-store buckets the task may open through `wasi:keyvalue`; `None`: every `open`
    /// is `error::access-denied`.
    pub kv: Option<TaskKvAccess>,
}

/// Executor settings.
#[derive(Clone, Debug)]
pub struct ExecutorConfig {
    /// Directory of precompiled artifacts (shared format with the plugin runtime's cache).
    pub cache_dir: Option<PathBuf>,
    /// Deadline of one request to an HTTP service.
    pub request_timeout: Duration,
}

impl Default for ExecutorConfig {
    fn default() -> Self {
        ExecutorConfig { cache_dir: None, request_timeout: DEFAULT_REQUEST_TIMEOUT }
    }
}

/// Runs Wasm tasks. Cheap to clone.
#[derive(Clone)]
pub struct WasmExecutor {
    inner: Arc<Inner>,
}

struct Inner {
    engine: Engine,
    cache: ComponentCache,
    linker: Linker<TaskState>,
    config: ExecutorConfig,
}

/// Store data of one task (or one request of a service).
struct TaskState {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    table: ResourceTable,
    kv: kv::KvCtx,
    limiter: Limiter,
}

impl WasiView for TaskState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl WasiHttpView for TaskState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView { ctx: &mut self.http, table: &mut self.table, hooks: Default::default() }
    }
}

/// The memory cap, remembering whether it was hit so the trap that follows reads as
/// out-of-memory.
struct Limiter {
    limit: usize,
    exceeded: bool,
}

impl ResourceLimiter for Limiter {
    fn memory_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        if desired > self.limit {
            self.exceeded = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= 1_000_000)
    }
}

impl WasmExecutor {
    /// An executor with its own engine and epoch ticker thread.
    pub fn new(config: ExecutorConfig) -> Result<Self, ExecError> {
        let setup = |e: &dyn std::fmt::Display| ExecError::Setup(e.to_string());
        let mut wasm = Config::new();
        wasm.wasm_component_model(true).epoch_interruption(true);
        let engine = Engine::new(&wasm).map_err(|e| setup(&e))?;
        let cache =
            ComponentCache::new(&engine, config.cache_dir.clone(), shoal_runtime::cache::CacheLimits::default())
                .map_err(|e| setup(&e))?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(|e| setup(&e))?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker).map_err(|e| setup(&e))?;
        kv::add_to_linker(&mut linker, |s: &mut TaskState| kv::KvView::new(&mut s.kv, &mut s.table))
            .map_err(|e| setup(&e))?;
        let weak = engine.weak();
        std::thread::Builder::new()
            .name("shoal-wasm-epoch".into())
            .spawn(move || {
                while let Some(engine) = weak.upgrade() {
                    engine.increment_epoch();
                    drop(engine);
                    std::thread::sleep(TICK);
                }
            })
            .map_err(|e| setup(&e))?;
        Ok(WasmExecutor { inner: Arc::new(Inner { engine, cache, linker, config }) })
    }

    /// Compile `bytes` (once per digest) and tell what kind of task it is.
    pub fn prepare(&self, bytes: &[u8]) -> Result<Prepared, ExecError> {
        let engine = &self.inner.engine;
        let compiled = self
            .inner
            .cache
            .get_or_compile(engine, bytes, || Component::new(engine, bytes))
            .map_err(|e| ExecError::Invalid(format!("{e:#}")))?;
        let ty = compiled.component.component_type();
        let exports: Vec<String> = ty.exports(engine).map(|(name, _)| name.to_owned()).collect();
        let has = |prefix: &str| exports.iter().any(|e| e.starts_with(prefix));
        let kind = if has("wasi:http/incoming-handler@0.2") {
            TaskKind::HttpService
        } else if has("wasi:cli/run@0.2") {
            TaskKind::Command
        } else {
            return Err(ExecError::NotATask(if exports.is_empty() { "nothing".into() } else { exports.join(", ") }));
        };
        // Resolve the imports now, so a task that cannot link fails at submission, not at start.
        self.inner.linker.instantiate_pre(&compiled.component).map_err(|e| ExecError::Imports(format!("{e:#}")))?;
        Ok(Prepared { kind, digest: compiled.digest, component: compiled.component })
    }

    /// Start a task. A command starts running at once; an HTTP service is listening when this
    /// returns. Must be called inside a tokio runtime.
    pub async fn start(&self, prepared: &Prepared, spec: TaskSpec) -> Result<RunningTask, ExecError> {
        if let Some(dir) = &spec.sandbox {
            std::fs::create_dir_all(dir).map_err(|e| ExecError::Setup(format!("sandbox {}: {e}", dir.display())))?;
        }
        let killed = Arc::new(AtomicBool::new(false));
        let (exit_tx, exit_rx) = watch::channel(None);
        let spec = Arc::new(spec);
        match prepared.kind {
            TaskKind::Command => {
                let store = self.store(&spec, &killed, None)?;
                let pre = self
                    .inner
                    .linker
                    .instantiate_pre(&prepared.component)
                    .map_err(|e| ExecError::Imports(format!("{e:#}")))?;
                let pre = wasmtime_wasi::p2::bindings::CommandPre::new(pre)
                    .map_err(|e| ExecError::NotATask(format!("{e:#}")))?;
                let killed2 = killed.clone();
                let limit = spec.memory_limit;
                let task = tokio::spawn(async move {
                    let mut store = store;
                    let result = async {
                        let command = pre.instantiate_async(&mut store).await?;
                        command.wasi_cli_run().call_run(&mut store).await
                    }
                    .await;
                    let exit = match result {
                        Ok(Ok(())) => Exit::Code(0),
                        Ok(Err(())) => Exit::Code(1),
                        Err(err) => {
                            classify(&err, killed2.load(Ordering::Relaxed), store.data().limiter.exceeded, limit)
                        }
                    };
                    let _ = exit_tx.send(Some(exit));
                });
                Ok(RunningTask { kind: TaskKind::Command, killed, exit: exit_rx, local_addr: None, task })
            }
            TaskKind::HttpService => {
                let addr = spec
                    .listen
                    .ok_or_else(|| ExecError::Spec("an HTTP service needs an address to listen on".into()))?;
                let listener = tokio::net::TcpListener::bind(addr)
                    .await
                    .map_err(|e| ExecError::Setup(format!("listening on {addr}: {e}")))?;
                let local_addr = listener.local_addr().map_err(|e| ExecError::Setup(e.to_string()))?;
                let pre = self
                    .inner
                    .linker
                    .instantiate_pre(&prepared.component)
                    .map_err(|e| ExecError::Imports(format!("{e:#}")))?;
                let pre = wasmtime_wasi_http::p2::bindings::ProxyPre::new(pre)
                    .map_err(|e| ExecError::NotATask(format!("{e:#}")))?;
                let service =
                    Arc::new(Service { executor: self.clone(), pre, spec: spec.clone(), killed: killed.clone() });
                let task = tokio::spawn(async move {
                    loop {
                        let (stream, _) = match listener.accept().await {
                            Ok(conn) => conn,
                            Err(err) => {
                                tracing::warn!(task = %service.spec.task_id, %err, "accept failed");
                                tokio::time::sleep(Duration::from_millis(50)).await;
                                continue;
                            }
                        };
                        // Headers and body go out as separate writes; with Nagle on, the second
                        // waits for a delayed ACK (40 ms on Linux) on kept-alive connections.
                        let _ = stream.set_nodelay(true);
                        let service = service.clone();
                        tokio::spawn(async move {
                            let io = hyper_util::rt::TokioIo::new(stream);
                            let handler = hyper::service::service_fn(move |req| {
                                let service = service.clone();
                                async move { Ok::<_, std::convert::Infallible>(service.handle(req).await) }
                            });
                            let _ = hyper::server::conn::http1::Builder::new()
                                .keep_alive(true)
                                .serve_connection(io, handler)
                                .await;
                        });
                    }
                });
                // The service runs until killed; `kill` aborts the accept loop and reports Killed.
                let service_exit = exit_tx;
                let watcher_killed = killed.clone();
                tokio::spawn(async move {
                    while !watcher_killed.load(Ordering::Relaxed) {
                        tokio::time::sleep(TICK).await;
                    }
                    let _ = service_exit.send(Some(Exit::Killed));
                });
                Ok(RunningTask {
                    kind: TaskKind::HttpService,
                    killed,
                    exit: exit_rx,
                    local_addr: Some(local_addr),
                    task,
                })
            }
        }
    }

    /// A store for one run of `spec`: WASI context, memory cap, and an epoch callback that
    /// yields every tick, traps once `killed` is set, and (for requests) at `deadline`.
    fn store(
        &self,
        spec: &TaskSpec,
        killed: &Arc<AtomicBool>,
        deadline: Option<Instant>,
    ) -> Result<Store<TaskState>, ExecError> {
        let mut wasi = WasiCtx::builder();
        let mut args = vec![spec.task_id.clone()];
        args.extend(spec.args.iter().cloned());
        wasi.args(&args).envs(&spec.env).env("TASK_ID", &spec.task_id);
        wasi.stdout(logs::stdout_sink(&spec.logs)).stderr(logs::stderr_sink(&spec.logs));
        if let Some(dir) = &spec.sandbox {
            wasi.preopened_dir(dir, "/", FsPerms::ReadWrite)
                .map_err(|e| ExecError::Setup(format!("sandbox {}: {e:#}", dir.display())))?;
        }
        if spec.network {
            wasi.inherit_network().allow_ip_name_lookup(true);
        } else {
            wasi.allow_tcp(false).allow_udp(false).allow_ip_name_lookup(false);
        }
        let state = TaskState {
            wasi: wasi.build(),
            http: WasiHttpCtx::new(),
            table: ResourceTable::new(),
            kv: kv::KvCtx::new(spec.kv.clone(), killed.clone(), deadline),
            limiter: Limiter { limit: spec.memory_limit, exceeded: false },
        };
        let mut store = Store::new(&self.inner.engine, state);
        store.limiter(|s| &mut s.limiter);
        store.set_epoch_deadline(1);
        let killed = killed.clone();
        store.epoch_deadline_callback(move |_| {
            if killed.load(Ordering::Relaxed) {
                return Err(wasmtime::format_err!("killed"));
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(wasmtime::format_err!("request deadline exceeded"));
            }
            Ok(UpdateDeadline::Yield(1))
        });
        Ok(store)
    }
}

struct Service {
    executor: WasmExecutor,
    pre: wasmtime_wasi_http::p2::bindings::ProxyPre<TaskState>,
    spec: Arc<TaskSpec>,
    killed: Arc<AtomicBool>,
}

type Body = wasmtime_wasi_http::p2::body::HyperOutgoingBody;

impl Service {
    /// One request in a fresh instance. Errors become plain 5xx answers: a failing request must
    /// never take the service (or the agent) down.
    async fn handle(&self, req: hyper::Request<hyper::body::Incoming>) -> hyper::Response<Body> {
        use http_body_util::BodyExt;
        let plain = |status: u16, text: String| {
            let body =
                http_body_util::Full::new(bytes::Bytes::from(text)).map_err(|never| match never {}).boxed_unsync();
            hyper::Response::builder().status(status).body(body).expect("a valid response")
        };
        let timeout = self.executor.inner.config.request_timeout;
        let mut store = match self.executor.store(&self.spec, &self.killed, Some(Instant::now() + timeout)) {
            Ok(store) => store,
            Err(err) => return plain(500, format!("{err}\n")),
        };
        let (sender, receiver) = tokio::sync::oneshot::channel();
        let scheme = wasmtime_wasi_http::p2::bindings::http::types::Scheme::Http;
        let prepared = (|| -> wasmtime::Result<_> {
            let req = store.data_mut().http().new_incoming_request(scheme, req)?;
            let out = store.data_mut().http().new_response_outparam(sender)?;
            Ok((req, out))
        })();
        let (req, out) = match prepared {
            Ok(pair) => pair,
            Err(err) => return plain(500, format!("{err:#}\n")),
        };
        let pre = self.pre.clone();
        let limit = self.spec.memory_limit;
        let killed = self.killed.clone();
        let task = tokio::spawn(async move {
            let proxy = pre.instantiate_async(&mut store).await;
            let result = match proxy {
                Ok(proxy) => proxy.wasi_http_incoming_handler().call_handle(&mut store, req, out).await,
                Err(err) => Err(err),
            };
            result.map_err(|err| classify(&err, killed.load(Ordering::Relaxed), store.data().limiter.exceeded, limit))
        });
        match receiver.await {
            Ok(Ok(response)) => response,
            Ok(Err(code)) => plain(500, format!("the service failed: {code:?}\n")),
            Err(_) => match task.await {
                Ok(Ok(())) => plain(500, "the service did not answer\n".into()),
                Ok(Err(Exit::Trap(m))) if m.contains("deadline") => {
                    plain(504, format!("the service did not answer within {timeout:?}\n"))
                }
                Ok(Err(exit)) => plain(500, format!("the request failed: {exit}\n")),
                Err(err) => plain(500, format!("the request failed: {err}\n")),
            },
        }
    }
}

fn classify(err: &wasmtime::Error, killed: bool, out_of_memory: bool, limit: usize) -> Exit {
    if let Some(exit) = err.downcast_ref::<wasmtime_wasi::I32Exit>() {
        return Exit::Code(exit.0);
    }
    if killed {
        return Exit::Killed;
    }
    if out_of_memory {
        return Exit::OutOfMemory { limit };
    }
    let message: Vec<String> =
        err.chain().map(|e| e.to_string().lines().next().unwrap_or_default().to_owned()).collect();
    Exit::Trap(message.join(": "))
}

/// A task that was started.
pub struct RunningTask {
    kind: TaskKind,
    killed: Arc<AtomicBool>,
    exit: watch::Receiver<Option<Exit>>,
    local_addr: Option<SocketAddr>,
    task: tokio::task::JoinHandle<()>,
}

impl RunningTask {
    /// Command or HTTP service.
    pub fn kind(&self) -> TaskKind {
        self.kind
    }

    /// Where an HTTP service listens.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.local_addr
    }

    /// Stop the task: a command traps at its next epoch tick (within ~10 ms), a service stops
    /// accepting and its in-flight requests trap.
    pub fn kill(&self) {
        self.killed.store(true, Ordering::Relaxed);
        if self.kind == TaskKind::HttpService {
            self.task.abort();
        }
    }

    /// How the task ended, if it has.
    pub fn try_exit(&self) -> Option<Exit> {
        self.exit.borrow().clone()
    }

    /// Wait for the task to end.
    pub async fn wait(&mut self) -> Exit {
        loop {
            if let Some(exit) = self.exit.borrow_and_update().clone() {
                return exit;
            }
            if self.exit.changed().await.is_err() {
                return self.exit.borrow().clone().unwrap_or(Exit::Trap("the executor dropped the task".into()));
            }
        }
    }
}

impl Drop for RunningTask {
    fn drop(&mut self) {
        // A task nobody can wait for or kill any more must not keep running.
        self.kill();
    }
}
