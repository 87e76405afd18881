//! Shoal's gateway: an HTTP/1.1 and HTTP/2 (h2c) reverse proxy in front of the services of the
//! registry ([`shoal_discovery`]), where the choice of the instance for each request is made by
//! the route's **router plugin** — one of the six default rules or any uploaded one — through
//! the plugin registry, so activating a new version swaps the rule live with no dropped request
//! (in-flight calls finish on the version they started with).
//!
//! Per request: find the [`Route`] (host-specific routes first, then the longest path prefix),
//! take the route's endpoint table (rebuilt only when the registry's index or an ejection
//! changes; the router sees it through `routing.update`), lend the request to the router
//! (`routing.route`), forward to the chosen instance with the body streamed both ways, then tell
//! the router how it went (`routing.on-complete`).
//!
//! - **Fallback:** a router that is missing, traps, runs out of time or answers out of range or an
//!   unhealthy endpoint does not fail the request: a native round-robin over the healthy
//!   endpoints serves it, and a `fallback` event (at most one per route every 5 s) says why.
//! - **Retries and ejection:** a connect failure is retried on the next healthy endpoint (only
//!   for requests without a body, though a failed connect hands the request back untouched); an endpoint that fails
//!   `eject_after` times in a row (connect failures, timeouts) is ejected for `eject_for`, then
//!   tried again.
//! - **Errors:** no route → 404, no healthy endpoint → 503, every endpoint unreachable → 502,
//!   upstream timeout → 504, each with a JSON body `{"error": {"code", "message"}}`; malformed
//!   HTTP is answered 400 by hyper itself.
//! - **Headers:** `X-Forwarded-For` (appended), `X-Forwarded-Host`, `X-Forwarded-Proto`,
//!   `X-Request-Id` (kept or made, and returned); hop-by-hop headers are dropped both ways.
//! - **Observability:** an access log line per request (`shoal::access`), Prometheus counters and
//!   latency per route.
//!
//! The gateway keeps its last route table and endpoint tables in memory, so it keeps serving when
//! whatever feeds the registry (the master, the bus) is away.
//!
//! What this crate must never do: buffer a whole body, or let a plugin's failure become a failed
//! request when a healthy endpoint exists.

pub mod routes;
mod upstream;

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode, Uri};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo};
use parking_lot::Mutex;
use shoal_abi::{AnyPlugin, Endpoint, PluginKind, RouteRequest, RouteTable, RouterWorld};
use shoal_discovery::{Discovery, Health};
use shoal_registry::Registry;
use shoal_runtime::CallError;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use upstream::{Forwarded, UpstreamBody, UpstreamError, Upstreams, X_REQUEST_ID};

pub use routes::{DEFAULT_ROUTER, DEFAULT_TIMEOUT_MS, Route, RouteError, Routes};

/// How often a worker closes its upstream connections that were not used since the last time:
/// one idle for between 30 and 60 s is closed.
const UPSTREAM_IDLE_SWEEP: Duration = Duration::from_secs(30);

/// The body type the gateway answers with.
pub type GatewayBody = UnsyncBoxBody<Bytes, BoxError>;

/// The error of a body streamed through the gateway.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Gateway settings.
#[derive(Clone, Debug)]
pub struct GatewayConfig {
    /// Consecutive failures (connect errors, timeouts) after which an endpoint is ejected.
    pub eject_after: u32,
    /// How long an ejected endpoint is left out.
    pub eject_for: Duration,
    /// Connect timeout to an upstream.
    pub connect_timeout: Duration,
    /// Most attempts of one request (the first plus retries on connect failures).
    pub attempts: usize,
    /// Threads serving connections, each with its own event loop and its own pool of upstream
    /// connections, all accepting from the one listener (nginx's worker processes, as
    /// threads); 0 = one per core.
    pub workers: usize,
    /// After shutdown, how long connections in progress may take to finish.
    pub drain: Duration,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            eject_after: 3,
            eject_for: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(2),
            attempts: 3,
            workers: 0,
            drain: Duration::from_secs(5),
        }
    }
}

/// Something the gateway reports (the node publishes these on the bus).
#[derive(Clone, Debug)]
pub struct GatewayEvent {
    /// Route name.
    pub route: String,
    /// `fallback`, `ejected` or `restored`.
    pub action: &'static str,
    /// Details.
    pub data: serde_json::Value,
}

/// The reverse proxy. Share it in an `Arc`.
pub struct Gateway {
    routes: Arc<Routes>,
    discovery: Arc<Discovery>,
    plugins: Arc<Registry>,
    config: GatewayConfig,
    /// Route name → state; read on every request (lock-free), written when a route is new.
    states: ArcSwap<HashMap<String, Arc<RouteState>>>,
    states_write: Mutex<()>,
    events: Option<mpsc::UnboundedSender<GatewayEvent>>,
    generation: AtomicU64,
    origin: Instant,
}

/// What one worker thread keeps for itself: its upstream connections and its own instance of
/// each router it calls (so a routing decision takes no lock another thread takes and runs on
/// an instance that stays warm in this core's caches).
struct Local {
    upstreams: Arc<Upstreams>,
    routers: Mutex<Vec<KeptRouter>>,
    /// Each worker draws its own key, so its ids need no counter shared with the others.
    request_ids: RequestIds,
}

type KeptInstance = shoal_runtime::Instance<RouterWorld>;

/// A worker's instance of one router, of the version that was active at `generation` of the
/// registry.
struct KeptRouter {
    name: String,
    generation: u64,
    loaded: Arc<shoal_registry::LoadedVersion>,
    instance: Option<KeptInstance>,
}

/// How the workers share connections: open connections per worker, and each worker's inbox of
/// connections handed over by another.
struct Balance {
    open: Vec<AtomicUsize>,
    inboxes: Vec<mpsc::UnboundedSender<(std::net::TcpStream, SocketAddr)>>,
}

impl Balance {
    /// The worker with the fewest open connections; `me` when none has fewer than it.
    fn least_loaded(&self, me: usize) -> usize {
        let mut best = (self.open[me].load(Ordering::Relaxed), me);
        for (n, open) in self.open.iter().enumerate() {
            let open = open.load(Ordering::Relaxed);
            if open < best.0 {
                best = (open, n);
            }
        }
        best.1
    }

    /// Give a connection to worker `to`; hands it back when that worker is gone.
    fn hand_over(&self, to: usize, stream: std::net::TcpStream, peer: SocketAddr) -> Option<tokio::net::TcpStream> {
        self.open[to].fetch_add(1, Ordering::Relaxed);
        match self.inboxes[to].send((stream, peer)) {
            Ok(()) => None,
            Err(mpsc::error::SendError((stream, _))) => tokio::net::TcpStream::from_std(stream).ok(),
        }
    }
}

/// The client of a request: its address, and its IP as text (made once per connection).
#[derive(Clone, Copy)]
struct Peer<'a> {
    addr: SocketAddr,
    ip: &'a str,
}

/// Per-route state that outlives requests: the endpoint table, ejections, fallback counter,
/// metrics handles.
struct RouteState {
    table: ArcSwap<Table>,
    rebuild: Mutex<()>,
    ejections: Mutex<HashMap<String, Ejection>>,
    /// Whether `ejections` holds a failure streak or an ejection, written only under its lock.
    failing: std::sync::atomic::AtomicBool,
    ejection_epoch: AtomicU64,
    fallback_next: AtomicUsize,
    last_fallback_event_ms: AtomicU64,
    requests: [metrics::Counter; 5],
    fallbacks: metrics::Counter,
    latency: metrics::Histogram,
}

#[derive(Default)]
struct Ejection {
    failures: u32,
    until: Option<Instant>,
}

/// An endpoint table built from the registry at one index.
struct Table {
    service: String,
    index: u64,
    ejection_epoch: u64,
    /// When the earliest ejection ends (the table must be rebuilt then).
    valid_until: Option<Instant>,
    table: RouteTable,
    active: Arc<[AtomicU32]>,
    /// Each endpoint's address as a URI authority, parsed once per table (an address that is not
    /// one answers 502 when chosen).
    authorities: Vec<Result<http::uri::Authority, String>>,
}

impl Table {
    fn healthy(&self) -> impl Iterator<Item = usize> + '_ {
        self.table.endpoints.iter().enumerate().filter(|(_, e)| e.healthy).map(|(i, _)| i)
    }
}

fn json_error(status: StatusCode, code: &str, message: impl Into<String>) -> Response<GatewayBody> {
    let body = serde_json::json!({ "error": { "code": code, "message": message.into() } }).to_string();
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)).map_err(|never| match never {}).boxed_unsync())
        .expect("a valid response")
}

impl Gateway {
    /// A gateway over `routes`, `discovery` and the router plugins of `plugins`; events go to
    /// `events` when given.
    pub fn new(
        routes: Arc<Routes>,
        discovery: Arc<Discovery>,
        plugins: Arc<Registry>,
        config: GatewayConfig,
        events: Option<mpsc::UnboundedSender<GatewayEvent>>,
    ) -> Arc<Gateway> {
        Arc::new(Gateway {
            routes,
            discovery,
            plugins,
            config,
            states: ArcSwap::from_pointee(HashMap::new()),
            states_write: Mutex::new(()),
            events,
            generation: AtomicU64::new(1),
            origin: Instant::now(),
        })
    }

    /// The routes this gateway serves.
    pub fn routes(&self) -> &Arc<Routes> {
        &self.routes
    }

    /// Serve on `listener` until `shutdown` completes, then let the connections in progress
    /// finish (keep-alive connections are closed after their current request) for up to
    /// [`GatewayConfig::drain`]. Dropping the returned future stops the gateway at once, open
    /// connections and all.
    ///
    /// Connections are served by [`GatewayConfig::workers`] threads, each running its own
    /// single-threaded Tokio runtime with its own upstream connection pool and accepting from
    /// the shared listener; a worker that accepts a connection while another has fewer open
    /// ones hands it over. From then on each request is read, routed, forwarded and answered on
    /// that one thread, with no hand-off between threads and no lock shared with other requests.
    pub async fn serve(self: Arc<Self>, listener: TcpListener, shutdown: impl Future<Output = ()> + Send) {
        let listener = match listener.into_std().and_then(|l| l.set_nonblocking(true).map(|()| l)) {
            Ok(listener) => listener,
            Err(err) => {
                tracing::error!(%err, "the gateway's listener cannot be shared with its workers");
                return;
            }
        };
        let workers = match self.config.workers {
            0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
            n => n,
        };
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let mut finished = Vec::with_capacity(workers);
        let (inboxes, receivers): (Vec<_>, Vec<_>) = (0..workers).map(|_| mpsc::unbounded_channel()).unzip();
        let balance = Arc::new(Balance { open: (0..workers).map(|_| AtomicUsize::new(0)).collect(), inboxes });
        for (n, inbox) in receivers.into_iter().enumerate() {
            let listener = match listener.try_clone() {
                Ok(listener) => listener,
                Err(err) => {
                    tracing::error!(%err, worker = n, "could not share the gateway's listener");
                    continue;
                }
            };
            let (done, finish) = tokio::sync::oneshot::channel::<()>();
            let gateway = self.clone();
            let stopped = stopped.clone();
            let balance = balance.clone();
            let spawned = std::thread::Builder::new().name(format!("shoal-gateway-{n}")).spawn(move || {
                match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(runtime) => runtime.block_on(gateway.worker(n, listener, balance, inbox, stopped)),
                    Err(err) => tracing::error!(%err, worker = n, "could not start a gateway worker"),
                }
                let _ = done.send(());
            });
            match spawned {
                Ok(_) => finished.push(finish),
                Err(err) => tracing::error!(%err, worker = n, "could not start a gateway worker thread"),
            }
        }
        drop(listener);
        shutdown.await;
        let _ = stop.send(true);
        for finish in finished {
            let _ = finish.await;
        }
    }

    /// One worker: accept, serve each connection on this thread (or hand it to a worker with
    /// fewer open connections), drain on stop.
    async fn worker(
        self: Arc<Self>,
        n: usize,
        listener: std::net::TcpListener,
        balance: Arc<Balance>,
        mut inbox: mpsc::UnboundedReceiver<(std::net::TcpStream, SocketAddr)>,
        mut stopped: tokio::sync::watch::Receiver<bool>,
    ) {
        let listener = match TcpListener::from_std(listener) {
            Ok(listener) => listener,
            Err(err) => {
                tracing::error!(%err, "gateway worker: listener");
                return;
            }
        };
        // Upstream connections are made, pooled and driven on this thread.
        let local = Arc::new(Local {
            upstreams: Arc::new(Upstreams::new(self.config.connect_timeout, 1024)),
            routers: Mutex::new(Vec::new()),
            request_ids: RequestIds::new(),
        });
        let mut sweep = tokio::time::interval(UPSTREAM_IDLE_SWEEP);
        let mut connections = tokio::task::JoinSet::new();
        let for_connections = stopped.clone();
        loop {
            let arrived = tokio::select! {
                _ = sweep.tick() => {
                    local.upstreams.sweep();
                    None
                }
                accepted = listener.accept() => match accepted {
                    // Whoever wakes first accepts; keep-alive connections then stay where they
                    // landed, so even them out at accept time.
                    Ok((stream, peer)) => match balance.least_loaded(n) {
                        target if target == n => Some((stream, peer)),
                        target => match stream.into_std() {
                            Ok(stream) => balance.hand_over(target, stream, peer).map(|stream| (stream, peer)),
                            Err(err) => {
                                tracing::warn!(%err, "gateway: could not hand a connection over");
                                None
                            }
                        },
                    },
                    Err(err) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!(%err, "gateway accept failed");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        None
                    }
                },
                Some((stream, peer)) = inbox.recv() => match tokio::net::TcpStream::from_std(stream) {
                    Ok(stream) => Some((stream, peer)),
                    Err(err) => {
                        tracing::warn!(%err, "gateway: could not take a connection over");
                        None
                    }
                },
                Some(_) = connections.join_next(), if !connections.is_empty() => None,
                stop = stopped.wait_for(|stop| *stop) => match stop {
                    Ok(_) => break,
                    // The serving future was dropped: stop now, connections and all.
                    Err(_) => return,
                },
            };
            if let Some((stream, peer)) = arrived {
                connections.spawn(self.clone().connection(stream, peer, local.clone(), for_connections.clone()));
            }
            balance.open[n].store(connections.len(), Ordering::Relaxed);
        }
        drop(listener);
        let drained =
            tokio::time::timeout(self.config.drain, async { while connections.join_next().await.is_some() {} }).await;
        if drained.is_err() {
            tracing::warn!(
                open = connections.len(),
                "gateway connections still open after the drain period; closing them"
            );
        }
    }

    /// Serve one client connection (HTTP/1.1 or h2c) until it closes or the gateway stops.
    async fn connection(
        self: Arc<Self>,
        stream: tokio::net::TcpStream,
        peer: SocketAddr,
        local: Arc<Local>,
        mut stopped: tokio::sync::watch::Receiver<bool>,
    ) {
        let _ = stream.set_nodelay(true);
        // Formatted once per connection, not per request.
        let peer_ip: Arc<str> = peer.ip().to_string().into();
        let gateway = self.clone();
        let service = hyper::service::service_fn(move |req| {
            let gateway = gateway.clone();
            let local = local.clone();
            let peer_ip = peer_ip.clone();
            async move {
                let client = Peer { addr: peer, ip: &peer_ip };
                Ok::<_, Infallible>(gateway.handle(req, client, &local).await)
            }
        });
        let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        let connection = builder.serve_connection(TokioIo::new(stream), service);
        tokio::pin!(connection);
        tokio::select! {
            _ = connection.as_mut() => return,
            stop = stopped.wait_for(|stop| *stop) => if stop.is_err() {
                return;
            },
        }
        connection.as_mut().graceful_shutdown();
        let _ = connection.await;
    }

    fn state(&self, route: &Route) -> Arc<RouteState> {
        let current = |states: &HashMap<String, Arc<RouteState>>| {
            states.get(&route.name).filter(|state| state.table.load().service == route.service).cloned()
        };
        if let Some(state) = current(&self.states.load()) {
            return state;
        }
        let _guard = self.states_write.lock();
        if let Some(state) = current(&self.states.load()) {
            return state;
        }
        let labels = |class: &'static str| metrics::counter!("shoal_gateway_requests_total", "route" => route.name.clone(), "code" => class);
        let state = Arc::new(RouteState {
            table: ArcSwap::from_pointee(Table {
                service: route.service.clone(),
                index: u64::MAX,
                ejection_epoch: 0,
                valid_until: None,
                table: RouteTable::default(),
                active: Arc::from([]),
                authorities: Vec::new(),
            }),
            rebuild: Mutex::new(()),
            ejections: Mutex::new(HashMap::new()),
            failing: std::sync::atomic::AtomicBool::new(false),
            ejection_epoch: AtomicU64::new(0),
            fallback_next: AtomicUsize::new(0),
            last_fallback_event_ms: AtomicU64::new(0),
            requests: [labels("1xx"), labels("2xx"), labels("3xx"), labels("4xx"), labels("5xx")],
            fallbacks: metrics::counter!("shoal_gateway_router_fallbacks_total", "route" => route.name.clone()),
            latency: metrics::histogram!("shoal_gateway_request_seconds", "route" => route.name.clone()),
        });
        let mut states = HashMap::clone(&self.states.load());
        states.insert(route.name.clone(), state.clone());
        self.states.store(Arc::new(states));
        state
    }

    /// The route's endpoint table, rebuilt if the registry or an ejection changed.
    fn table(&self, state: &RouteState) -> Arc<Table> {
        let fresh = |t: &Table| {
            t.index == self.discovery.index()
                && t.ejection_epoch == state.ejection_epoch.load(Ordering::Acquire)
                && t.valid_until.is_none_or(|u| Instant::now() < u)
        };
        let current = state.table.load_full();
        if fresh(&current) {
            return current;
        }
        let _guard = state.rebuild.lock();
        let current = state.table.load_full();
        if fresh(&current) {
            return current;
        }
        let epoch = state.ejection_epoch.load(Ordering::Acquire);
        let (instances, index) = self.discovery.instances(&current.service, false);
        let now = Instant::now();
        let mut valid_until: Option<Instant> = None;
        let mut ejections = state.ejections.lock();
        let endpoints = instances
            .into_iter()
            .map(|i| {
                let ejected = match ejections.get_mut(&i.id).and_then(|e| e.until) {
                    Some(until) if until > now => {
                        valid_until = Some(valid_until.map_or(until, |v| v.min(until)));
                        true
                    }
                    Some(_) => {
                        // The ejection is over: try the endpoint again (one more failure ejects it).
                        if let Some(e) = ejections.get_mut(&i.id) {
                            e.until = None;
                            e.failures = self.config.eject_after.saturating_sub(1);
                        }
                        false
                    }
                    None => false,
                };
                Endpoint {
                    healthy: i.health == Health::Passing && !ejected,
                    id: i.id,
                    address: i.address,
                    weight: i.weight,
                    labels: i.labels.into_iter().map(|(name, value)| shoal_abi::Attribute { name, value }).collect(),
                }
            })
            .collect::<Vec<_>>();
        drop(ejections);
        let active: Arc<[AtomicU32]> = endpoints.iter().map(|_| AtomicU32::new(0)).collect();
        let authorities = endpoints
            .iter()
            .map(|e| e.address.parse::<http::uri::Authority>().map_err(|err| format!("`{}`: {err}", e.address)))
            .collect();
        let generation = self.generation.fetch_add(1, Ordering::Relaxed);
        let table = Arc::new(Table {
            service: current.service.clone(),
            index,
            ejection_epoch: epoch,
            valid_until,
            table: RouteTable { generation, endpoints },
            active,
            authorities,
        });
        state.table.store(table.clone());
        table
    }

    fn event(&self, route: &str, action: &'static str, data: serde_json::Value) {
        if let Some(events) = &self.events {
            let _ = events.send(GatewayEvent { route: route.into(), action, data });
        }
    }

    /// Call the active version of router `name` on this worker's own instance of it (made on
    /// first use, replaced when the registry's active version changed or a call failed), and
    /// account the call in the registry like [`Registry::call`] does. `None`: no such router.
    fn call_router<R>(
        &self,
        local: &Local,
        name: &str,
        f: impl FnOnce(&shoal_runtime::Plugin<RouterWorld>, &mut Option<KeptInstance>) -> Result<R, CallError>,
    ) -> Option<Result<R, CallError>> {
        let generation = self.plugins.generation();
        let mut routers = local.routers.lock();
        let at = match routers.iter().position(|r| r.name == name && r.generation == generation) {
            Some(at) => at,
            None => self.keep_router(&mut routers, name, generation)?,
        };
        let KeptRouter { loaded, instance, .. } = &mut routers[at];
        let AnyPlugin::Router(router) = &loaded.plugin else {
            return Some(Err(shoal_runtime_error("the plugin is not a router")));
        };
        let started = Instant::now();
        let result = f(router, instance);
        self.plugins.record_call(loaded, started.elapsed(), result.as_ref().err());
        Some(result)
    }

    /// Bring this worker's entry for router `name` up to the registry's `generation` (first use,
    /// or some plugin's active version changed): a new active version gets a fresh instance; a
    /// router no longer active is forgotten (`None`).
    fn keep_router(&self, routers: &mut Vec<KeptRouter>, name: &str, generation: u64) -> Option<usize> {
        let found = routers.iter().position(|r| r.name == name);
        let Some(loaded) = self.plugins.active(PluginKind::Router, name) else {
            if let Some(at) = found {
                routers.swap_remove(at);
            }
            return None;
        };
        let Some(at) = found else {
            routers.push(KeptRouter { name: name.to_owned(), generation, loaded, instance: None });
            return Some(routers.len() - 1);
        };
        let kept = &mut routers[at];
        if !Arc::ptr_eq(&kept.loaded, &loaded) {
            kept.loaded = loaded;
            kept.instance = None;
        }
        kept.generation = generation;
        Some(at)
    }

    /// Ask the route's router; fall back to round-robin over the healthy endpoints.
    ///
    /// Answers the endpoint and whether the router wants its `on-complete` call.
    fn pick(
        &self,
        local: &Local,
        route: &Route,
        state: &RouteState,
        table: &Table,
        request: &mut RouteRequest,
    ) -> Result<(usize, bool), ()> {
        let answer = self.call_router(local, &route.router, |router, kept| {
            shoal_abi::route_kept(router, kept, &table.table, request)
        });
        let why = match answer {
            Some(Ok(shoal_abi::Routed { pick: Some(index), wants_complete })) => {
                return Ok((index as usize, wants_complete));
            }
            Some(Ok(shoal_abi::Routed { pick: None, .. })) => return Err(()),
            Some(Err(err)) => err.to_string(),
            None => format!("no active router plugin named `{}`", route.router),
        };
        state.fallbacks.increment(1);
        let now_ms = self.origin.elapsed().as_millis() as u64;
        let last = state.last_fallback_event_ms.load(Ordering::Relaxed);
        if (last == 0 || now_ms.saturating_sub(last) >= 5000)
            && state
                .last_fallback_event_ms
                .compare_exchange(last, now_ms.max(1), Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(route = %route.name, router = %route.router, cause = %why, "router failed; request served by round-robin");
            self.event(&route.name, "fallback", serde_json::json!({ "router": route.router, "cause": why }));
        }
        let healthy: Vec<usize> = table.healthy().collect();
        if healthy.is_empty() {
            return Err(());
        }
        Ok((healthy[state.fallback_next.fetch_add(1, Ordering::Relaxed) % healthy.len()], true))
    }

    fn failed(&self, route: &Route, state: &RouteState, endpoint: &Endpoint, cause: &str) {
        let mut ejections = state.ejections.lock();
        state.failing.store(true, Ordering::Relaxed);
        let e = ejections.entry(endpoint.id.clone()).or_default();
        e.failures += 1;
        if e.failures >= self.config.eject_after && e.until.is_none() {
            e.until = Some(Instant::now() + self.config.eject_for);
            drop(ejections);
            state.ejection_epoch.fetch_add(1, Ordering::AcqRel);
            tracing::warn!(route = %route.name, endpoint = %endpoint.address, %cause, "endpoint ejected");
            self.event(
                &route.name,
                "ejected",
                serde_json::json!({ "instance": endpoint.id, "address": endpoint.address, "cause": cause,
                    "for_seconds": self.config.eject_for.as_secs_f64() }),
            );
        }
    }

    fn succeeded(&self, state: &RouteState, endpoint: &Endpoint) {
        // Free while nothing failed: one read of a flag no request writes.
        if !state.failing.load(Ordering::Relaxed) {
            return;
        }
        let mut ejections = state.ejections.lock();
        if let Some(e) = ejections.get_mut(&endpoint.id)
            && e.until.is_none()
        {
            e.failures = 0;
        }
        if ejections.values().all(|e| e.failures == 0 && e.until.is_none()) {
            state.failing.store(false, Ordering::Relaxed);
        }
    }

    /// Serve one request.
    async fn handle(&self, req: Request<Incoming>, client: Peer<'_>, local: &Local) -> Response<GatewayBody> {
        let started = Instant::now();
        let request_id = req
            .headers()
            .get(&X_REQUEST_ID)
            .filter(|v| !v.is_empty() && v.len() <= 128)
            .cloned()
            .unwrap_or_else(|| local.request_ids.next());
        let mut host = req
            .uri()
            .authority()
            .map(|a| a.host())
            .or_else(|| req.headers().get(header::HOST).and_then(|h| h.to_str().ok()).map(host_only))
            .unwrap_or_default()
            .to_ascii_lowercase();
        let mut path = req.uri().path().to_owned();
        let method = req.method().clone();
        let (route, upstream, mut response) =
            self.forward(req, client, local, &mut host, &mut path, &request_id, started).await;
        response.headers_mut().insert(X_REQUEST_ID, request_id.clone());
        let status = response.status();
        tracing::info!(
            target: "shoal::access",
            route = route.as_ref().map_or("-", |r| r.name.as_str()), %method, %host, %path, status = status.as_u16(),
            upstream = upstream.as_ref().map_or("-", |(table, at)| table.table.endpoints[*at].address.as_str()),
            ms = started.elapsed().as_secs_f64() * 1e3,
            request_id = request_id.to_str().unwrap_or("-"), client = client.ip,
        );
        response
    }

    async fn forward(
        &self,
        req: Request<Incoming>,
        client: Peer<'_>,
        local: &Local,
        host: &mut String,
        path: &mut String,
        request_id: &HeaderValue,
        started: Instant,
    ) -> (Option<Arc<Route>>, Option<(Arc<Table>, usize)>, Response<GatewayBody>) {
        let Some(route) = self.routes.find(host, path) else {
            return (None, None, json_error(StatusCode::NOT_FOUND, "no_route", format!("no route for {host}{path}")));
        };
        let state = self.state(&route);
        let finish = |status: StatusCode| {
            state.requests[(status.as_u16() / 100).clamp(1, 5) as usize - 1].increment(1);
            state.latency.record(started.elapsed().as_secs_f64());
        };
        let table = self.table(&state);
        if table.healthy().next().is_none() {
            finish(StatusCode::SERVICE_UNAVAILABLE);
            let message = if table.table.endpoints.is_empty() {
                format!("service `{}` has no instances", route.service)
            } else {
                format!("none of the {} instances of `{}` is healthy", table.table.endpoints.len(), route.service)
            };
            return (Some(route), None, json_error(StatusCode::SERVICE_UNAVAILABLE, "no_healthy_endpoint", message));
        }

        let (mut parts, body) = req.into_parts();
        let mut lent = RouteRequest {
            method: parts.method.clone(),
            host: std::mem::take(host),
            path: std::mem::take(path),
            client_ip: Some(client.addr.ip()),
            headers: std::mem::take(&mut parts.headers),
            active: table.active.clone(),
        };
        let pick = self.pick(local, &route, &state, &table, &mut lent);
        parts.headers = std::mem::take(&mut lent.headers);
        *host = std::mem::take(&mut lent.host);
        *path = std::mem::take(&mut lent.path);
        let Ok((mut index, wants_complete)) = pick else {
            finish(StatusCode::SERVICE_UNAVAILABLE);
            return (
                Some(route),
                None,
                json_error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "no_endpoint_chosen",
                    "the route's router chose no endpoint",
                ),
            );
        };

        // Upstream request head, reused for retries.
        let upstream_path = match (route.strip_prefix, parts.uri.path_and_query()) {
            (false, Some(pq)) => Ok(pq.clone()),
            (false, None) => Ok(http::uri::PathAndQuery::from_static("/")),
            (true, pq) => {
                let pq = pq.map_or("/", |pq| pq.as_str());
                let prefix = route.path_prefix.trim_end_matches('/');
                let rest = pq.strip_prefix(prefix).unwrap_or(pq);
                if rest.starts_with('/') { rest.parse() } else { format!("/{rest}").parse() }
            }
        };
        let Ok(upstream_path) = upstream_path else {
            finish(StatusCode::BAD_REQUEST);
            return (
                Some(route),
                None,
                json_error(StatusCode::BAD_REQUEST, "bad_path", "the path cannot be forwarded"),
            );
        };
        // Hop-by-hop headers are dropped, and the `X-Forwarded-*` and `X-Request-Id` headers
        // added, as the head is written. An HTTP/1.1 request needs a `Host`; an HTTP/2 client's
        // is its `:authority`, which goes in `X-Forwarded-Host`: a request without one gets the
        // upstream's address, as a client of it would send.
        let forwarded = Forwarded { client_ip: client.ip, host, proto: "http", request_id };
        let replayable = body.is_end_stream();
        // The route's timeout counts from the request's start, over all attempts.
        let deadline = tokio::time::Instant::from_std(started) + Duration::from_millis(route.timeout_ms);
        // Endpoints that refused a connection (filled only on a retry).
        let mut tried = Vec::new();
        let mut last_error = String::new();
        // One request for every attempt: a connect failure hands it back unsent.
        let mut upstream = Request::new(body.map_err(BoxError::from).boxed_unsync());
        *upstream.method_mut() = parts.method;
        *upstream.uri_mut() = Uri::from(upstream_path);
        *upstream.headers_mut() = parts.headers;
        for attempt in 0..self.config.attempts {
            let endpoint = &table.table.endpoints[index];
            let authority = match &table.authorities[index] {
                Ok(authority) => authority,
                Err(err) => {
                    finish(StatusCode::BAD_GATEWAY);
                    return (
                        Some(route.clone()),
                        Some((table.clone(), index)),
                        json_error(StatusCode::BAD_GATEWAY, "bad_upstream", format!("upstream address: {err}")),
                    );
                }
            };
            let guard = ActiveGuard::new(table.active.clone(), index);
            let sent = wants_complete.then(Instant::now);
            match tokio::time::timeout_at(deadline, local.upstreams.send(authority, upstream, &forwarded)).await {
                Ok(Ok(response)) => {
                    self.succeeded(&state, endpoint);
                    let status = response.status();
                    let latency = sent.map_or(0, |sent| sent.elapsed().as_micros() as u64);
                    if wants_complete {
                        let _ = self.call_router(local, &route.router, |router, kept| {
                            shoal_abi::route_complete_kept(
                                router,
                                kept,
                                &table.table,
                                index as u32,
                                status.as_u16(),
                                latency,
                            )
                        });
                    }
                    let (head, body) = response.into_parts();
                    let body = Tracked { inner: body, _guard: guard }.boxed_unsync();
                    finish(status);
                    return (Some(route), Some((table, index)), Response::from_parts(head, body));
                }
                Ok(Err(UpstreamError::Connect { message, unsent })) => {
                    last_error = format!("connect failed: {message}");
                    upstream = *unsent;
                    self.failed(&route, &state, endpoint, "connect failed");
                    let next = (1..table.table.endpoints.len())
                        .map(|k| (index + k) % table.table.endpoints.len())
                        .find(|i| table.table.endpoints[*i].healthy && !tried.contains(i));
                    tried.push(index);
                    match next {
                        Some(next) if replayable && attempt + 1 < self.config.attempts => index = next,
                        _ => break,
                    }
                }
                Ok(Err(err)) => {
                    finish(StatusCode::BAD_GATEWAY);
                    return (
                        Some(route.clone()),
                        Some((table.clone(), index)),
                        json_error(StatusCode::BAD_GATEWAY, "upstream_error", format!("{}: {err}", endpoint.address)),
                    );
                }
                Err(_) => {
                    self.failed(&route, &state, endpoint, "timeout");
                    finish(StatusCode::GATEWAY_TIMEOUT);
                    return (
                        Some(route.clone()),
                        Some((table.clone(), index)),
                        json_error(
                            StatusCode::GATEWAY_TIMEOUT,
                            "upstream_timeout",
                            format!("{} did not answer within {} ms", endpoint.address, route.timeout_ms),
                        ),
                    );
                }
            }
        }
        finish(StatusCode::BAD_GATEWAY);
        (
            Some(route),
            None,
            json_error(
                StatusCode::BAD_GATEWAY,
                "upstream_unreachable",
                format!("no endpoint could be reached ({last_error})"),
            ),
        )
    }
}

fn shoal_runtime_error(message: &str) -> shoal_runtime::CallError {
    shoal_runtime::CallError::InvalidOutput(message.into())
}

fn host_only(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        // [v6]:port
        return rest.split(']').next().unwrap_or(rest);
    }
    host.rsplit_once(':').filter(|(_, port)| port.bytes().all(|b| b.is_ascii_digit())).map_or(host, |(h, _)| h)
}

/// Request ids for requests that come without one: 32 hex digits, unique within the process and,
/// through a random key drawn at start, across processes and restarts. Made without a system
/// call (a v4 UUID per request cost a `getrandom` each): a counter run through SplitMix64's
/// finaliser, a bijection, so ids never repeat yet do not reveal how many requests were served.
struct RequestIds {
    key: u64,
    next: AtomicU64,
}

impl RequestIds {
    fn new() -> Self {
        let key = uuid::Uuid::new_v4().as_u64_pair();
        RequestIds { key: key.0, next: AtomicU64::new(key.1) }
    }

    fn next(&self) -> HeaderValue {
        let mut z = self.next.fetch_add(1, Ordering::Relaxed).wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        let mut id = [0u8; 32];
        hex_into(&mut id[..16], self.key);
        hex_into(&mut id[16..], z);
        HeaderValue::from_bytes(&id).expect("hex digits are a valid header value")
    }
}

fn hex_into(out: &mut [u8], mut value: u64) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for byte in out.iter_mut().rev() {
        *byte = DIGITS[(value & 0xf) as usize];
        value >>= 4;
    }
}

/// Counts a request as in flight to an endpoint until its response body is done (or dropped).
struct ActiveGuard {
    active: Arc<[AtomicU32]>,
    index: usize,
}

impl ActiveGuard {
    fn new(active: Arc<[AtomicU32]>, index: usize) -> Self {
        if let Some(a) = active.get(index) {
            a.fetch_add(1, Ordering::Relaxed);
        }
        ActiveGuard { active, index }
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        if let Some(a) = self.active.get(self.index) {
            a.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// The upstream's response body, streamed through, holding the in-flight count until it ends
/// or is dropped.
struct Tracked {
    inner: UpstreamBody,
    _guard: ActiveGuard,
}

impl Body for Tracked {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_32_hex_digits_and_never_repeat() {
        let ids = RequestIds::new();
        let mut seen = std::collections::HashSet::new();
        for _ in 0..100_000 {
            let id = ids.next();
            let text = id.to_str().expect("ascii");
            assert_eq!(text.len(), 32, "{text}");
            assert!(text.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()), "{text}");
            assert!(seen.insert(text.to_owned()), "repeated id {text}");
        }
        // Another process (another key) makes other ids.
        let other = RequestIds::new();
        assert_ne!(ids.next().to_str().unwrap()[..16], other.next().to_str().unwrap()[..16]);
    }

    #[tokio::test]
    async fn accepted_connections_go_to_the_worker_with_the_fewest_open() {
        let (to_0, inbox_0) = mpsc::unbounded_channel();
        let (to_1, mut inbox_1) = mpsc::unbounded_channel();
        let balance = Balance { open: vec![AtomicUsize::new(3), AtomicUsize::new(1)], inboxes: vec![to_0, to_1] };
        assert_eq!(balance.least_loaded(0), 1);
        assert_eq!(balance.least_loaded(1), 1);
        balance.open[1].store(3, Ordering::Relaxed);
        assert_eq!(balance.least_loaded(0), 0, "a tie stays with the worker that accepted");

        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let connect = || std::net::TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let peer: SocketAddr = "127.0.0.1:9".parse().expect("addr");
        let (a, b) = (connect(), connect());
        a.set_nonblocking(true).expect("nonblocking");
        b.set_nonblocking(true).expect("nonblocking");
        assert!(balance.hand_over(1, a, peer).is_none(), "handed over");
        assert_eq!(balance.open[1].load(Ordering::Relaxed), 4, "counted at once, before worker 1 runs");
        assert!(inbox_1.try_recv().is_ok(), "worker 1 got it");
        // A worker that is gone gives the connection back to the one that accepted it.
        drop(inbox_0);
        assert!(balance.hand_over(0, b, peer).is_some(), "given back");
    }
}
