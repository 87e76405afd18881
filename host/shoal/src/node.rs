//! A Shoal node in one process: the kernel (runtime, registry, bus, API) and the state store
//! wired together. This is what `shoal dev` runs; the distributed roles of later issues reuse the
//! same pieces.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use shoal_abi::PluginKind;
use shoal_api::{AppState, Auth};
use shoal_bus::event::CloudEvent;
use shoal_bus::{LocalBus, NatsBus, SharedBus, subject};
use shoal_registry::{Registry, RegistryConfig, RegistryEvent};
use shoal_runtime::{Runtime, RuntimeConfig};
use shoal_store::{Store, StoreConfig, Sweeper};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// How to run a node.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// Where everything durable lives (registry, compile cache, admin token).
    pub data_dir: PathBuf,
    /// Address of the HTTP API.
    pub listen: SocketAddr,
    /// A NATS server to use instead of the in-process bus.
    pub nats: Option<String>,
    /// Register the default plugins when they are missing.
    pub default_plugins: bool,
    /// The state store under `<data_dir>/store`: shard count and sync policy.
    pub store: StoreConfig,
}

/// What a started node tells its caller.
pub struct NodeInfo {
    /// The API's address (the real port when `listen` had port 0).
    pub api: SocketAddr,
    /// The admin token.
    pub admin_token: String,
    /// Where the admin token is stored.
    pub token_file: PathBuf,
    /// `local` or `nats`.
    pub bus: &'static str,
}

/// Read the admin token from `data_dir`, or make and store one (readable by the owner only).
pub fn admin_token(data_dir: &Path) -> anyhow::Result<(String, PathBuf)> {
    let path = data_dir.join("admin.token");
    if let Ok(token) = std::fs::read_to_string(&path) {
        let token = token.trim().to_owned();
        if !token.is_empty() {
            return Ok((token, path));
        }
    }
    let token = shoal_api::auth::generate_token();
    std::fs::write(&path, format!("{token}\n")).with_context(|| format!("writing {}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok((token, path))
}

/// Publish registry events on the bus as CloudEvents, `shoal.evt.plugin.<kind>.<name>.<action>`.
async fn forward_events(mut rx: mpsc::UnboundedReceiver<RegistryEvent>, bus: SharedBus, source: String) {
    while let Some(event) = rx.recv().await {
        let Some(action) = subject::PluginAction::ALL.into_iter().find(|a| a.as_str() == event.action) else {
            tracing::error!(action = event.action, "registry event without a subject; not published");
            continue;
        };
        let subject = subject::plugin_event(event.kind.as_str(), &event.name, action);
        let cloud = CloudEvent::new(
            source.as_str(),
            action.event_type(),
            format!("plugins/{}/{}", event.kind, event.name),
            event.data,
        );
        if let Err(err) = shoal_bus::event::publish_event(bus.as_ref(), &subject, &cloud).await {
            tracing::warn!(cause = %err, %subject, "could not publish event");
        }
    }
}

/// Start a node; it serves until `shutdown` completes. `ready` receives the node's info once
/// the API listens.
pub async fn run(
    config: NodeConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
    ready: impl FnOnce(&NodeInfo),
) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.data_dir).with_context(|| format!("creating {}", config.data_dir.display()))?;
    // Install the metrics recorder before anything records: handles taken earlier would be
    // no-ops and the default plugins' call counters would never show on /metrics.
    shoal_api::prometheus();
    let bus: SharedBus = match &config.nats {
        Some(url) => Arc::new(NatsBus::connect(url).await.with_context(|| format!("connecting to NATS at {url}"))?),
        None => Arc::new(LocalBus::new()),
    };
    let runtime =
        Runtime::new(RuntimeConfig { cache_dir: Some(config.data_dir.join("cache")), ..RuntimeConfig::default() })?;
    let max_upload = runtime.config().max_component_size;
    let (registry, events) = Registry::open(&config.data_dir.join("registry"), runtime, RegistryConfig::default())
        .context("opening the plugin registry")?;
    tokio::spawn(forward_events(events, bus.clone(), "/shoal/dev".to_owned()));

    if config.default_plugins {
        register_defaults(&registry).await?;
    }

    let store = Store::open(&config.data_dir.join("store"), config.store.clone()).context("opening the state store")?;
    let _sweeper = Sweeper::spawn(&store, shoal_store::DEFAULT_SWEEP_INTERVAL);

    let (token, token_file) = admin_token(&config.data_dir)?;
    let listener = TcpListener::bind(config.listen).await.with_context(|| format!("binding {}", config.listen))?;
    let info = NodeInfo { api: listener.local_addr()?, admin_token: token.clone(), token_file, bus: bus.kind() };
    let auth = Auth::persistent(&token, &config.data_dir.join("tokens")).context("reading issued tokens")?;
    let state = AppState { registry, bus, auth: Arc::new(auth), max_upload, store: Some(store) };
    ready(&info);
    shoal_api::serve(listener, state, shutdown).await?;
    Ok(())
}

/// Register each default plugin that is not there yet (an operator's own versions win).
async fn register_defaults(registry: &Registry) -> anyhow::Result<()> {
    for &(kind, name, bytes) in shoal_artifacts::DEFAULT_PLUGINS {
        let kind: PluginKind = kind.parse()?;
        if registry.show(kind, name).is_ok() {
            continue;
        }
        registry
            .push(kind, name, Some("builtin-0.1.0"), bytes, true)
            .await
            .with_context(|| format!("registering {kind} {name}"))?;
        tracing::info!(%kind, %name, "registered default plugin");
    }
    Ok(())
}
