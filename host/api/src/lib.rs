//! Shoal's HTTP API, under `/v1`, served by axum.
//!
//! - [`dto`] owns every request and response body (the wire format) and the OpenAPI document;
//! - [`error`] owns the one error shape, `{"error": {"code", "message"}}`, and its status codes;
//! - [`auth`] owns bearer tokens and scopes (admin for plugins and cluster, operator for apps,
//!   app for one KV namespace);
//! - [`kv`] serves the state store's key-value API under `/v1/kv` and its shard map under
//!   `/v1/store`;
//! - [`services`] serves the service registry (`/v1/services`) and the gateway's routes
//!   (`/v1/routes`);
//! - [`scoped`] narrows what `app:<namespace>` tokens read to what belongs to their namespace;
//! - [`traced`] gives every request its span for the trace exporter;
//! - handlers validate every input at the edge and change nothing when they answer 4xx.
//!
//! What this crate must never do: hold state of its own beyond tokens. Plugins live in the
//! registry, events on the bus.
//!
//! Entry point: [`serve`] takes a bound listener and a shutdown future (so tests bind
//! `127.0.0.1:0` and drive the real server).

mod agents;
pub mod auth;
pub mod body;
mod cluster;
pub mod dto;
pub mod error;
mod events;
pub mod journal;
pub mod kv;
pub mod leader;
pub mod openapi;
mod plugins;
pub mod scoped;
pub mod services;
pub mod streams;
mod traced;

use std::future::Future;
use std::sync::{Arc, OnceLock};

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::{any, get, post, put};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use shoal_bus::SharedBus;
use shoal_gateway::edge::{self, EdgeLimits};
use shoal_registry::Registry;
use tokio::net::TcpListener;

pub use auth::{Auth, Scope};
pub use error::ApiError;

/// Everything the handlers share.
#[derive(Clone)]
pub struct AppState {
    /// The plugin registry.
    pub registry: Arc<Registry>,
    /// The bus events are read from.
    pub bus: SharedBus,
    /// Tokens and scopes.
    pub auth: Arc<Auth>,
    /// Largest accepted plugin upload, in bytes.
    pub max_upload: usize,
    /// The state store's client, if this node serves `/v1/kv` (without one, it answers 503).
    pub store: Option<Arc<shoal_store::client::StoreClient>>,
    /// The store's shard map owner, while this node leads (without, `/v1/store` answers 503).
    pub store_coordinator: Leading<shoal_store::coordinator::Coordinator>,
    /// The service registry, if this node runs it (without one, `/v1/services` answers 503).
    pub discovery: Option<Arc<shoal_discovery::Discovery>>,
    /// The gateway's routes, if this node runs a gateway (without, `/v1/routes` answers 503).
    pub routes: Option<Arc<shoal_gateway::Routes>>,
    /// The resource master, while this node leads (without one, `/v1/agents` answers 503).
    pub master: Leading<shoal_master::Master>,
    /// Artifacts of Wasm tasks, if this node runs the master (without, `/v1/artifacts` answers 503).
    pub artifacts: Option<Arc<shoal_task_io::ArtifactStore>>,
    /// The leadership among several masters (`None`: this node is the only one, and leads).
    pub leadership: Option<Arc<leader::Leadership>>,
    /// The node's recent events, which `/v1/events` and KV watches stream and replay from.
    pub journal: Arc<journal::Journal>,
    /// Event streams and watches open per token, and their cap.
    pub streams: Arc<streams::Streams>,
    /// Longest wait of a blocking query (`?index=`): a longer `wait`, or the default one, is cut
    /// to it (Consul's `max_query_time`).
    pub max_query_time: std::time::Duration,
}

/// A part only the leader runs: swapped in when this node starts leading, out when it stops.
pub type Leading<T> = Arc<arc_swap::ArcSwapOption<T>>;

/// A [`Leading`] part that is there from the start (a single node) or not at all.
pub fn leading<T>(part: Option<Arc<T>>) -> Leading<T> {
    Arc::new(arc_swap::ArcSwapOption::new(part))
}

/// How often histogram samples are folded into their buckets when nobody scrapes /metrics.
const METRICS_UPKEEP: std::time::Duration = std::time::Duration::from_secs(5);

/// The process-wide Prometheus recorder (the `metrics` facade has one global recorder).
pub fn prometheus() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets(&[1e-6, 5e-6, 2e-5, 1e-4, 5e-4, 2e-3, 1e-2, 5e-2, 0.25, 1.0, 5.0])
            .map(|b| b.build_recorder())
            .unwrap_or_else(|_| PrometheusBuilder::new().build_recorder());
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("a metrics recorder was already installed; /metrics may be empty");
        }
        // Histograms keep every sample until they are folded into their buckets, which a scrape
        // of /metrics does; without a scraper they would grow by a few bytes per request for as
        // long as the process runs. Fold them on a timer as well.
        let upkeep = handle.clone();
        let spawned = std::thread::Builder::new().name("shoal-metrics".into()).spawn(move || {
            loop {
                std::thread::sleep(METRICS_UPKEEP);
                upkeep.run_upkeep();
            }
        });
        if let Err(err) = spawned {
            tracing::warn!(%err, "no metrics upkeep thread: histograms grow until /metrics is scraped");
        }
        handle
    })
}

/// The API's router.
pub fn router(state: AppState) -> Router {
    prometheus();
    // Handlers read their bodies themselves, after the caller's token and up to their route's
    // limit (`body::read`); this is only the ceiling of anything else that would read one.
    let limit = state.max_upload + 1024;
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/metrics", get(metrics_text))
        .route("/v1/openapi.json", get(openapi))
        .route("/v1/leader", get(leader::show))
        .route("/v1/plugins", get(plugins::list))
        .route("/v1/plugins/{kind}/{name}", get(plugins::show).post(plugins::push).delete(plugins::delete))
        .route("/v1/plugins/{kind}/{name}/activate", post(plugins::activate))
        .route("/v1/plugins/{kind}/{name}/rollback", post(plugins::rollback))
        .route("/v1/plugins/{kind}/{name}/versions/{version}/component", get(plugins::download))
        .route("/v1/events", get(events::stream))
        .route("/v1/tokens", get(auth::list).post(auth::issue))
        .route("/v1/tokens/{id}", axum::routing::delete(auth::revoke))
        .route("/v1/kv/{ns}", get(kv::list).post(kv::batch))
        .route("/v1/kv/{ns}/{*key}", get(kv::get).put(kv::put).delete(kv::delete))
        .route("/v1/store", get(kv::status))
        .route("/v1/store/scale-out", post(kv::scale_out))
        .route("/v1/store/scale-in", post(kv::scale_in))
        .route("/v1/agents", get(agents::list))
        .route("/v1/agents/{id}", get(agents::show))
        .route("/v1/allocator", get(cluster::get_allocator).put(cluster::put_allocator))
        .route("/v1/artifacts", get(cluster::list_artifacts).post(cluster::push_artifact))
        .route("/v1/artifacts/{digest}", get(cluster::get_artifact))
        .route("/v1/tasks", get(cluster::list_tasks))
        .route("/v1/tasks/{id}", get(cluster::show_task))
        .route("/v1/tasks/{id}/kill", post(cluster::kill_task))
        .route("/v1/tasks/{id}/logs", get(cluster::task_logs))
        .route("/v1/frameworks", get(cluster::list_frameworks))
        .route("/v1/frameworks/{name}/{*rest}", any(cluster::framework_request))
        .route("/v1/apps", any(cluster::apps))
        .route("/v1/apps/{*rest}", any(cluster::apps))
        .route("/v1/jobs", any(cluster::jobs))
        .route("/v1/jobs/{*rest}", any(cluster::jobs))
        .route("/v1/services", get(services::list))
        .route("/v1/services/{svc}", get(services::show))
        .route("/v1/services/{svc}/watch", get(services::watch))
        .route("/v1/services/{svc}/instances/{id}", put(services::register).delete(services::deregister))
        .route("/v1/services/{svc}/instances/{id}/heartbeat", put(services::heartbeat))
        .route("/v1/routes", get(services::list_routes))
        .route("/v1/routes/{name}", get(services::show_route).put(services::put_route).delete(services::delete_route))
        .route_layer(axum::middleware::from_fn(traced::route))
        .fallback(|| async { ApiError::not_found("no such endpoint") })
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::middleware::from_fn_with_state(state.clone(), leader::forward))
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .layer(axum::middleware::from_fn(traced::server_span))
        .with_state(state)
}

async fn metrics_text(State(_): State<AppState>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], prometheus().render())
}

/// The host's document with the routes of the frameworks this node runs.
async fn openapi(State(state): State<AppState>) -> impl IntoResponse {
    let mut doc = openapi::document();
    for (name, own) in cluster::framework_documents(&state).await {
        openapi::merge_framework(&mut doc, &name, &own);
    }
    axum::Json(doc)
}

/// Serve the API on `listener` until `shutdown` completes; in-flight requests finish first
/// (kept-alive connections close after their current one). Connections are bounded by `limits`
/// (`shoal_gateway::edge`): a header timeout and a cap on how many are served at once.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
    limits: EdgeLimits,
) -> std::io::Result<()> {
    let app = router(state);
    let permits = limits.permits();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut connections = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let slot = tokio::select! {
            slot = edge::slot(&permits) => slot,
            () = &mut shutdown => break,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(err) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(%err, "API accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let mut stopped = stopped.clone();
        connections.spawn(async move {
            let _slot = slot;
            if !edge::first_bytes(&stream, limits.header_timeout).await {
                return;
            }
            let builder = limits.builder();
            let connection = builder.serve_connection_with_upgrades(hyper_util::rt::TokioIo::new(stream), service);
            tokio::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => return,
                _ = stopped.wait_for(|stop| *stop) => {}
            }
            connection.as_mut().graceful_shutdown();
            let _ = connection.await;
        });
        while connections.try_join_next().is_some() {}
    }
    drop(listener);
    let _ = stop.send(true);
    while connections.join_next().await.is_some() {}
    Ok(())
}
