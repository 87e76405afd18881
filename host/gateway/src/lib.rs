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

pub mod edge;
mod proxy;
mod routers;
pub mod routes;
mod tables;
mod upstream;
mod workers;

use proxy::RequestIds;
use routers::KeptRouter;
use tables::{RouteState, Table};
use workers::{Balance, Local, Peer};

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
use hyper_util::rt::TokioIo;
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
    /// Header timeout and connection cap of the client side ([`edge`]).
    pub limits: edge::EdgeLimits,
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
            limits: edge::EdgeLimits::default(),
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
    /// The connection cap's permits, shared by the workers.
    permits: Arc<tokio::sync::Semaphore>,
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
            permits: config.limits.permits(),
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

    fn event(&self, route: &str, action: &'static str, data: serde_json::Value) {
        if let Some(events) = &self.events {
            let _ = events.send(GatewayEvent { route: route.into(), action, data });
        }
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
