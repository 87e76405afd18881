//! A Shoal node in one process: the kernel (runtime, registry, bus, API), the state store, the
//! service registry and the gateway wired together. This is what `shoal dev` runs, and what
//! `shoal master` runs without the local agent and gateway; the other roles reuse the same
//! pieces.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use shoal_abi::PluginKind;
use shoal_api::{AppState, Auth};
use shoal_bus::event::CloudEvent;
use shoal_bus::{LocalBus, SharedBus, subject};
use shoal_discovery::Discovery;
use shoal_gateway::{Gateway, GatewayConfig, GatewayEvent, Routes};
use shoal_protocol::labels;
use shoal_registry::{Registry, RegistryConfig, RegistryEvent};
use shoal_runtime::{Runtime, RuntimeConfig};
use shoal_state::StateDb;
use shoal_store::StoreConfig;
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
    pub nats: Option<crate::cli::NatsTarget>,
    /// Register the default plugins when they are missing.
    pub default_plugins: bool,
    /// The state store: shard count of a new store and sync policy of this node's shards.
    pub store: StoreConfig,
    /// Serve shards of the state store in this process under this node id (data under
    /// `<data_dir>/store`); `None` leaves the shards to `shoal store` processes.
    pub store_node: Option<String>,
    /// Address of the gateway (reverse proxy); `None` runs no gateway.
    pub gateway: Option<SocketAddr>,
    /// The gateway's worker threads; 0 = one per core.
    pub gateway_workers: usize,
    /// Header timeout and connection cap of the API and the gateway.
    pub edge: shoal_gateway::edge::EdgeLimits,
    /// The DNS interface on the service registry (`--dns`); `None` runs none.
    pub dns: Option<shoal_dns::DnsConfig>,
    /// Event streams and watches one token may hold open at once.
    pub max_streams_per_token: usize,
    /// Longest wait of a blocking query.
    pub max_query_time: std::time::Duration,
    /// Most versions one plugin keeps (a push past it is refused).
    pub plugin_max_versions: usize,
    /// Most earlier versions of a plugin remembered to roll back to.
    pub plugin_max_history: usize,
    /// Time without a heartbeat after which the master declares an agent lost.
    pub agent_timeout: std::time::Duration,
    /// How long a lost agent stays listed.
    pub forget_lost_agents_after: std::time::Duration,
    /// An agent to run in this process too (`shoal dev`); `None` for a master alone.
    pub local_agent: Option<shoal_protocol::AgentRegistration>,
    /// The local agent's sandbox root (default `shoal_agent::isolation::default_sandbox_root`:
    /// outside `data_dir`, so no task path leads into it).
    pub sandbox_dir: Option<PathBuf>,
    /// The user the local agent's tasks run as when the node is root (default `nobody`).
    pub task_user: Option<String>,
    /// Time between allocation cycles (changes also trigger one).
    pub allocation_interval: std::time::Duration,
    /// One of several masters (`shoal master --id`): the replicated state and the lease on the
    /// NATS cluster's JetStream. `None`: a single member that always leads, its state local.
    pub ha: Option<crate::leadership::HaConfig>,
    /// Copies of every shard of a new state store and the shards' lease TTL (`shoal master
    /// --store-replicas`); `None`: one copy per shard (`shoal dev`).
    pub store_replication: Option<StoreReplication>,
}

/// How long a node waits for the NATS cluster to show as many servers as the store's replicas
/// need before it refuses to start.
const CLUSTER_FORMING: std::time::Duration = std::time::Duration::from_secs(5);

/// How the state store keeps copies of its shards (issue 23; see `shoal_store::replication`).
#[derive(Clone, Debug)]
pub struct StoreReplication {
    /// Store nodes holding a copy of each shard of a new store.
    pub replicas: usize,
    /// How long a shard's lease outlives its holder's last renewal.
    pub lease_ttl: std::time::Duration,
    /// Servers of the NATS cluster that keep each shard's log: `None`, as many as `replicas`
    /// (refused at start when the cluster has fewer servers); fewer only when the operator
    /// said so.
    pub log_replicas: Option<usize>,
}

impl StoreReplication {
    /// The servers each shard's log is kept on, on the NATS cluster behind `client`. Servers
    /// started together may not all be routed yet when this node connects: it waits for the
    /// server's updated INFO (up to [`CLUSTER_FORMING`]) before it refuses.
    async fn log_replicas(&self, client: &async_nats::Client, url: &str) -> anyhow::Result<usize> {
        let servers = || client.server_info().connect_urls.len().max(1);
        let deadline = tokio::time::Instant::now() + CLUSTER_FORMING;
        while servers() < self.replicas && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        let servers = servers();
        match self.log_replicas {
            Some(n) => Ok(n.clamp(1, servers)),
            None if servers < self.replicas => anyhow::bail!(
                "--store-replicas {n} keeps each shard's log on {n} NATS servers, but the NATS cluster at {url} has \
                 {servers}: run {n} servers with JetStream (see the README), or pass --store-log-replicas {servers} \
                 to keep the logs on fewer",
                n = self.replicas
            ),
            None => Ok(self.replicas),
        }
    }
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
    /// The gateway's address, when the node runs one.
    pub gateway: Option<SocketAddr>,
    /// The DNS interface's address (UDP and TCP), when the node runs one (`--dns`).
    pub dns: Option<SocketAddr>,
}

/// Every table of the master's state: one [`StateDb`] for every component of the node.
pub const TABLES: [&str; 8] = [
    // The plugin registry's (`shoal_registry`), which it still writes directly.
    "meta",
    "blobs",
    "plugin-kv",
    shoal_api::auth::TOKENS_TABLE,
    crate::admin::CLUSTER_TABLE,
    shoal_gateway::routes::ROUTES_TABLE,
    shoal_store::coordinator::STORE_TABLE,
    shoal_task_io::artifacts::ARTIFACTS_TABLE,
];

/// Open the master's state: the one place that decides its backend. Today the local one, in
/// `<data_dir>/registry` (where the plugin registry's RocksDB has always been, so an earlier
/// data directory opens as it is, with the other tables added), always leading.
async fn open_state(config: &NodeConfig, client: Option<&async_nats::Client>) -> anyhow::Result<Arc<StateDb>> {
    match (&config.ha, client) {
        (Some(ha), Some(client)) => {
            crate::leadership::open_state(client, &config.data_dir.join("state"), &TABLES, ha).await
        }
        (Some(_), None) => anyhow::bail!("several masters need a NATS cluster (--nats)"),
        (None, _) => {
            let dir = config.data_dir.join("registry");
            StateDb::open_local(&dir, &TABLES)
                .with_context(|| format!("opening the master's state in {}", dir.display()))
        }
    }
}

/// What a master does once it leads (with the local state: at start, before the components
/// open): make its admin token the cluster's if the state has none ([`crate::admin::claim`]),
/// and move what an earlier version kept in files of `data_dir` into the state — issued tokens
/// (`tokens`), routes (`routes.json`), the shard map (`store-map.json`) and task artifacts
/// (`artifacts/`). Each move happens once, into an empty table, and removes its file.
pub async fn on_leading(state: &StateDb, data_dir: &Path) -> anyhow::Result<()> {
    crate::admin::claim(state, data_dir).await?;
    let file = data_dir.join("tokens");
    let tokens =
        shoal_api::auth::migrate_token_file(state, &file).await.context("moving issued tokens into the state")?;
    let file = data_dir.join("routes.json");
    let routes =
        shoal_gateway::routes::migrate_routes_file(state, &file).await.context("moving routes into the state")?;
    let file = data_dir.join("store-map.json");
    let map = shoal_store::coordinator::migrate_map_file(state, &file)
        .await
        .context("moving the shard map into the state")?;
    let dir = data_dir.join("artifacts");
    let artifacts =
        shoal_task_io::artifacts::migrate_dir(state, &dir).await.context("moving task artifacts into the state")?;
    if tokens + routes + artifacts > 0 || map {
        tracing::info!(tokens, routes, artifacts, shard_map = map, "files of an earlier version moved into the state");
    }
    Ok(())
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

/// Publish service registry changes as `shoal.evt.service.<name>.changed`.
async fn forward_service_changes(discovery: Arc<Discovery>, bus: SharedBus, source: String) {
    let mut changes = discovery.subscribe();
    loop {
        let change = match changes.recv().await {
            Ok(change) => change,
            Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                tracing::warn!(missed = n, "service events lagged; some changes were not published");
                continue;
            }
            Err(_) => return,
        };
        // Self-preservation changes concern the whole registry: `shoal.evt.service.registry.changed`.
        let service = if change.service.is_empty() { "registry" } else { change.service.as_str() };
        let event = CloudEvent::new(
            source.as_str(),
            "io.shoal.service.changed",
            format!("services/{service}"),
            serde_json::json!({ "index": change.index, "instance": change.instance, "action": change.action }),
        );
        if let Err(err) =
            shoal_bus::event::publish_event(bus.as_ref(), &subject::service_changed(service), &event).await
        {
            tracing::warn!(cause = %err, "could not publish a service event");
        }
    }
}

/// Routes declared on apps: an instance of a task labelled `shoal.route.path` (and optionally
/// `shoal.route.host`, `shoal.route.router`, `shoal.route.strip_prefix=true`) makes the gateway
/// route named after its service point at that service. Routes put through the API with the same
/// name are replaced when the labels differ; a route stays when its instances go (the gateway
/// answers 503 until they are back).
async fn routes_from_labels(discovery: Arc<Discovery>, routes: Arc<Routes>) {
    let mut changes = discovery.subscribe();
    loop {
        let service = match changes.recv().await {
            Ok(change) if !change.service.is_empty() => change.service,
            Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
            Err(_) => return,
        };
        let (instances, _) = discovery.instances(&service, false);
        let Some(found) = instances.iter().rev().map(|i| &i.labels).find(|l| l.contains_key(labels::ROUTE_PATH)) else {
            continue;
        };
        let name: String = service
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' })
            .take(63)
            .collect();
        let mut route = shoal_gateway::Route {
            name: name.clone(),
            host: found.get(labels::ROUTE_HOST).map(|h| h.to_ascii_lowercase()),
            path_prefix: found[labels::ROUTE_PATH].clone(),
            service: service.clone(),
            router: found.get(labels::ROUTE_ROUTER).cloned().unwrap_or_else(|| shoal_gateway::DEFAULT_ROUTER.into()),
            strip_prefix: found.get(labels::ROUTE_STRIP_PREFIX).is_some_and(|v| v == "true"),
            timeout_ms: shoal_gateway::DEFAULT_TIMEOUT_MS,
        };
        if let Some(existing) = routes.get(&name) {
            route.timeout_ms = existing.timeout_ms;
            if *existing == route {
                continue;
            }
        }
        match routes.put(route).await {
            Ok(()) => tracing::info!(%service, route = %name, "route declared by the app's labels"),
            Err(e @ shoal_gateway::RouteError::Invalid(_)) => {
                tracing::warn!(%service, cause = %e, "the app's route labels do not make a valid route")
            }
            Err(e) => tracing::warn!(%service, cause = %e, "the route of the app's labels could not be stored"),
        }
    }
}

/// Publish gateway events as `shoal.evt.gateway.<route>.<action>`.
async fn forward_gateway_events(mut rx: mpsc::UnboundedReceiver<GatewayEvent>, bus: SharedBus, source: String) {
    while let Some(e) = rx.recv().await {
        let event = CloudEvent::new(
            source.as_str(),
            format!("io.shoal.gateway.{}", e.action),
            format!("routes/{}", e.route),
            e.data,
        );
        if let Err(err) =
            shoal_bus::event::publish_event(bus.as_ref(), &subject::gateway_event(&e.route, e.action), &event).await
        {
            tracing::warn!(cause = %err, "could not publish a gateway event");
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
    private_dir(&config.data_dir)?;
    name_the_origin(&config);
    // Install the metrics recorder before anything records: handles taken earlier would be
    // no-ops and the default plugins' call counters would never show on /metrics.
    shoal_api::prometheus();
    let (bus, client) = connect_bus(&config).await?;
    let runtime =
        Runtime::new(RuntimeConfig { cache_dir: Some(config.data_dir.join("cache")), ..RuntimeConfig::default() })?;
    let max_upload = runtime.config().max_component_size;
    let state = open_state(&config, client.as_ref()).await?;
    // A single node leads from the start; one of several masters does this when it leads.
    if state.is_writer() {
        on_leading(&state, &config.data_dir).await?;
    }
    let admin = crate::admin::AdminToken::start(&state, &config.data_dir).await?;
    let store = start_store(&bus, client.as_ref(), &config, &state).await?;

    // Plugins' key-value stores live in the state store (`crate::plugin_kv`).
    let (lease, gate) = leader_gate(&config);
    let (registry, events) = Registry::open_on(
        state.clone(),
        runtime,
        registry_config(&config),
        Some(crate::plugin_kv::provider(store.client.clone(), gate)),
    )
    .context("opening the plugin registry")?;
    tokio::spawn(registry.clone().follow());
    tokio::spawn(forward_events(events, bus.clone(), shoal_bus::event::source("registry")));
    if config.ha.is_none() {
        single_node_plugins(&config, &registry).await?;
    }

    let (discovery, routes) = start_services(&bus, &registry, &state)?;
    let (shutdown_tx, _) = tokio::sync::watch::channel(false);
    let (gateway_addr, gateway_task) = match config.gateway {
        Some(addr) => {
            let (local, task) =
                start_gateway(addr, &config, &bus, &routes, &discovery, &registry, shutdown_tx.subscribe()).await?;
            (Some(local), Some(task))
        }
        None => (None, None),
    };

    let artifacts = shoal_task_io::ArtifactStore::open(state.clone()).context("opening the artifact store")?;
    let leader = crate::leadership::Leader {
        config: config.clone(),
        bus: bus.clone(),
        state: state.clone(),
        registry: registry.clone(),
        discovery: discovery.clone(),
        artifacts: artifacts.clone(),
        master: shoal_api::leading(None),
        coordinator: shoal_api::leading(store.coordinator.clone()),
        started: Arc::new(tokio::sync::watch::channel(0).0),
    };
    let listener = TcpListener::bind(config.listen).await.with_context(|| format!("binding {}", config.listen))?;
    let api = listener.local_addr()?;
    let (leadership, departure, _parts) = match (&config.ha, &config.nats, &client) {
        (Some(ha), Some(nats), Some(client)) => {
            let (leadership, departure) = start_leadership(ha, nats, client, api, &leader, &lease).await?;
            (Some(leadership), Some(departure), None)
        }
        _ => (None, None, Some(leader.start(1).await?)),
    };
    let dns = start_dns(&config, &discovery, &leader.started).await?;
    let local_agent = match config.local_agent.clone() {
        Some(registration) => Some(start_local_agent(registration, &config, &bus, &registry)?),
        None => None,
    };

    let info = NodeInfo {
        api,
        admin_token: admin.token.clone(),
        token_file: admin.file.clone(),
        bus: bus.kind(),
        gateway: gateway_addr,
        dns: dns.as_ref().map(|server| server.addr),
    };
    let auth = Auth::new(&admin.token).backed_by(state.clone()).context("reading issued tokens")?;
    admin.follow(&state, &auth);
    let journal = start_journal(&config, &bus, client.as_ref()).await?;
    let state = AppState {
        registry,
        bus,
        journal,
        auth,
        max_upload,
        store: Some(store.client.clone()),
        store_coordinator: leader.coordinator.clone(),
        discovery: Some(discovery),
        routes: Some(routes),
        master: leader.master.clone(),
        artifacts: Some(artifacts),
        leadership,
        streams: shoal_api::streams::Streams::new(config.max_streams_per_token),
        max_query_time: config.max_query_time,
    };
    ready(&info);
    shoal_api::serve(listener, state, handing_over(shutdown, departure), config.edge).await?;
    let _ = shutdown_tx.send(true);
    // The gateway's worker threads hold the registry (RocksDB): wait for them to drain and end,
    // so that no database is still open, and used, while the process exits.
    if let Some(task) = gateway_task {
        let _ = task.await;
    }
    // One process is the whole cluster: stopping it stops its tasks (a real agent's tasks outlive
    // the agent's restarts instead).
    if let Some(agent) = local_agent {
        agent.stop_all().await;
    }
    Ok(())
}

/// Name this process in its events' `source`: `/shoal/master/<id>` or `/shoal/dev/<host>`.
fn name_the_origin(config: &NodeConfig) {
    match &config.ha {
        Some(ha) => shoal_bus::event::set_origin("master", &ha.id),
        None => shoal_bus::event::set_origin("dev", &clean_id(&host_name())),
    }
}

/// A single node's plugins: the default ones registered, and plugins' data of an earlier version
/// moved from the registry into the state store.
async fn single_node_plugins(config: &NodeConfig, registry: &Arc<Registry>) -> anyhow::Result<()> {
    if config.default_plugins {
        register_defaults(registry).await?;
    }
    let moved = crate::plugin_kv::migrate_registry_kv(registry.clone()).await?;
    if moved > 0 {
        tracing::info!(keys = moved, "plugins' data moved from the registry into the state store");
    }
    Ok(())
}

/// The node's journal of recent events (SSE resume): a master journals the cluster's events in
/// JetStream, so an event stream resumes on any master; `shoal dev` keeps them in memory.
async fn start_journal(
    config: &NodeConfig,
    bus: &SharedBus,
    client: Option<&async_nats::Client>,
) -> anyhow::Result<Arc<shoal_api::journal::Journal>> {
    let jetstream = match (&config.ha, client) {
        (Some(ha), Some(client)) => Some((client.clone(), crate::leadership::replicas_of(client, ha.replicas))),
        _ => None,
    };
    Ok(shoal_api::journal::Journal::start(bus.clone(), jetstream).await?)
}

/// `shutdown`, then the leadership handed over (on one of several masters): a clean stop hands
/// it over before the API stops, which meanwhile forwards to the next leader.
async fn handing_over(shutdown: impl Future<Output = ()>, departure: Option<crate::leadership::Departure>) {
    shutdown.await;
    if let Some(departure) = departure {
        departure.leave().await;
    }
}

/// The node's bus: NATS when the config names a server (with its client), else in-process.
async fn connect_bus(config: &NodeConfig) -> anyhow::Result<(SharedBus, Option<async_nats::Client>)> {
    Ok(match &config.nats {
        Some(target) => {
            let bus = shoal_bus::NatsBus::connect_with(&target.url, &target.options)
                .await
                .with_context(|| format!("connecting to NATS at {}", target.url))?;
            let client = bus.client().clone();
            (Arc::new(bus), Some(client))
        }
        None => (Arc::new(LocalBus::new()), None),
    })
}

/// The lease this master will hold (set once it is open) and the gate of the leader's plugins'
/// stores on it: with several masters they write only while the lease says this one leads
/// (`crate::plugin_kv::LeaderGate`); a single node's always may.
type LeaseCell = Arc<std::sync::OnceLock<Arc<shoal_replication::Lease>>>;
fn leader_gate(config: &NodeConfig) -> (LeaseCell, Option<crate::plugin_kv::LeaderGate>) {
    let lease = LeaseCell::default();
    let gate = config.ha.as_ref().map(|_| {
        let lease = lease.clone();
        Arc::new(move || lease.get().is_some_and(|l| l.leading().is_some())) as crate::plugin_kv::LeaderGate
    });
    (lease, gate)
}

/// Make `dir` (when missing) and private: only the node's own user may enter its data (the
/// admin token, issued tokens, the store); tasks run as another user and reach nothing in it, by
/// any path.
fn private_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("making {} private", dir.display()))
}

/// The service registry (its sweeper, events and health checks) and the gateway's routes, which
/// apps' labels declare too.
fn start_services(
    bus: &SharedBus,
    registry: &Arc<Registry>,
    state: &Arc<StateDb>,
) -> anyhow::Result<(Arc<Discovery>, Arc<Routes>)> {
    let discovery = Arc::new(Discovery::default());
    tokio::spawn(discovery.clone().run_sweeper(std::time::Duration::from_secs(1)));
    tokio::spawn(forward_service_changes(discovery.clone(), bus.clone(), shoal_bus::event::source("services")));
    tokio::spawn(crate::health::check_registered_instances(
        discovery.clone(),
        registry.clone(),
        bus.clone(),
        shoal_bus::event::source("health"),
    ));
    let routes = Routes::on_state(state.clone()).context("reading the gateway's routes")?;
    tokio::spawn(routes_from_labels(discovery.clone(), routes.clone()));
    Ok((discovery, routes))
}

/// The DNS interface (`--dns`) on this node's service registry. It answers while this node
/// leads (`started` names a term): a standby master's registry is not the cluster's (the
/// leader's master keeps the task instances, and registrations are forwarded to it), so a
/// standby answers SERVFAIL and resolvers ask the next server.
async fn start_dns(
    config: &NodeConfig,
    discovery: &Arc<Discovery>,
    started: &Arc<tokio::sync::watch::Sender<u64>>,
) -> anyhow::Result<Option<shoal_dns::DnsServer>> {
    let Some(dns) = &config.dns else { return Ok(None) };
    let started = started.clone();
    let server = shoal_dns::serve(dns, discovery.clone(), Arc::new(move || *started.borrow() > 0)).await?;
    tracing::info!(addr = %server.addr, ttl = dns.ttl, "DNS interface answering for the zone shoal.");
    Ok(Some(server))
}

/// Join the masters: announce this one, take part in the lease, and lead when it says so. The
/// [`crate::leadership::Departure`] hands the leadership over on a clean stop.
async fn start_leadership(
    ha: &crate::leadership::HaConfig,
    nats: &crate::cli::NatsTarget,
    client: &async_nats::Client,
    api: SocketAddr,
    leader: &crate::leadership::Leader,
    gate: &std::sync::OnceLock<Arc<shoal_replication::Lease>>,
) -> anyhow::Result<(Arc<shoal_api::leader::Leadership>, crate::leadership::Departure)> {
    let advertise = ha.advertise.clone().unwrap_or_else(|| format!("http://{api}"));
    let me = shoal_api::leader::Member { id: ha.id.clone(), api: advertise.clone() };
    let (resign, resigned) = tokio::sync::oneshot::channel::<()>();
    let (lease, lease_task) = crate::leadership::run_lease(nats, ha, &me, resigned).await?;
    let _ = gate.set(lease.clone());
    let presence = crate::leadership::Presence::announce(client, ha, me).await?;
    let announcing = tokio::spawn(presence.clone().run(ha.lease_ttl));
    let (stop_following, stop) = tokio::sync::watch::channel(false);
    let following =
        tokio::spawn(crate::leadership::follow_lease(lease.clone(), ha.lease_ttl, leader.clone(), ha.id.clone(), stop));
    let departure = crate::leadership::Departure {
        stop_following,
        following,
        resign,
        lease: lease_task,
        presence: presence.clone(),
        announcing,
    };
    // Serve once this master leads or knows who does (or after 10 s without a leader), so the
    // API's first answers are not "no master". A lease still held under this master's own id is a
    // previous run's, which will expire: wait for it.
    let mine = format!("{}@", ha.id);
    let (mut role, mut started) = (lease.watch(), leader.started.subscribe());
    let known = async {
        tokio::select! {
            _ = started.wait_for(|term| *term > 0) => {}
            _ = role.wait_for(|r| matches!(r, shoal_replication::Role::Follower { leader: Some(l), .. } if !l.starts_with(&mine))) => {}
        }
    };
    if tokio::time::timeout(std::time::Duration::from_secs(10), known).await.is_err() {
        tracing::warn!("no leader after 10 s; serving while the election goes on");
    }
    let members: Arc<dyn Fn() -> Vec<shoal_api::leader::Member> + Send + Sync> = Arc::new(move || presence.members());
    let leadership = Arc::new(shoal_api::leader::Leadership::new(
        &ha.id,
        &advertise,
        crate::leadership::role_of(&lease),
        members,
        leader.state.clone(),
    ));
    Ok((leadership, departure))
}

/// The plugin registry's settings from the node's.
fn registry_config(config: &NodeConfig) -> RegistryConfig {
    RegistryConfig {
        max_versions: config.plugin_max_versions,
        max_history: config.plugin_max_history,
        ..RegistryConfig::default()
    }
}

/// The state store's parts this node runs: a store node when the config names one, and, on a
/// single node (`shoal dev`, or a master alone), the coordinator (the shard map lives with the
/// master); with several masters the coordinator runs on the leader only. The node's shards
/// live under `store/`, where a store made by an earlier version (every shard in one process)
/// is found as it is.
async fn start_store(
    bus: &SharedBus,
    client: Option<&async_nats::Client>,
    config: &NodeConfig,
    state: &Arc<StateDb>,
) -> anyhow::Result<shoal_store::service::StoreService> {
    let replication = match (client, &config.store_replication, &config.nats) {
        (Some(client), Some(r), Some(nats)) => Some(shoal_store::replication::ReplicationConfig {
            client: client.clone(),
            replicas: r.log_replicas(client, &nats.url).await?,
            lease_ttl: r.lease_ttl,
            prefix: String::new(),
            snapshot_every: shoal_store::replication::SNAPSHOT_EVERY,
        }),
        _ => None,
    };
    let options = shoal_store::service::ServiceOptions {
        node: config.store_node.as_ref().map(|id| shoal_store::service::NodeOptions {
            id: id.clone(),
            dir: config.data_dir.join("store"),
            durability: config.store.durability,
            sweep_interval: shoal_store::DEFAULT_SWEEP_INTERVAL,
            replication: replication.clone(),
        }),
        coordinator: if config.ha.is_none() { coordinator_config(config, state, 1) } else { None },
    };
    shoal_store::service::start(bus.clone(), options).await.context("starting the state store")
}

/// The coordinator of the store's shard map.
pub(crate) fn coordinator_config(
    config: &NodeConfig,
    state: &Arc<StateDb>,
    term: u64,
) -> Option<shoal_store::coordinator::CoordinatorConfig> {
    Some(shoal_store::coordinator::CoordinatorConfig {
        term,
        replicas: config.store_replication.as_ref().map_or(1, |r| r.replicas),
        state: state.clone(),
        initial_shards: config.store.shards,
        auto_scale_out: true,
        source: shoal_bus::event::source("store"),
    })
}

/// Bind and start the gateway; it drains when `stop` turns true. Returns its address and the
/// task to wait for.
async fn start_gateway(
    addr: SocketAddr,
    config: &NodeConfig,
    bus: &SharedBus,
    routes: &Arc<Routes>,
    discovery: &Arc<Discovery>,
    registry: &Arc<Registry>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = TcpListener::bind(addr).await.with_context(|| format!("binding the gateway to {addr}"))?;
    let local = listener.local_addr()?;
    let (events_tx, events_rx) = mpsc::unbounded_channel();
    tokio::spawn(forward_gateway_events(events_rx, bus.clone(), shoal_bus::event::source("gateway")));
    let gateway = Gateway::new(
        routes.clone(),
        discovery.clone(),
        registry.clone(),
        GatewayConfig { workers: config.gateway_workers, limits: config.edge, ..GatewayConfig::default() },
        Some(events_tx),
    );
    let task = tokio::spawn(gateway.serve(listener, async move {
        let _ = stop.wait_for(|s| *s).await;
    }));
    Ok((local, task))
}

/// `shoal dev`'s own agent, running in its own task, with `wasm` health checks through the
/// registry.
fn start_local_agent(
    registration: shoal_protocol::AgentRegistration,
    config: &NodeConfig,
    bus: &SharedBus,
    registry: &Arc<Registry>,
) -> anyhow::Result<Arc<shoal_agent::Agent>> {
    let mut agent_config = shoal_agent::AgentConfig::new(registration, config.data_dir.join("agent"));
    agent_config.wasm_checks = Some(Arc::new(crate::health::RegistryChecks(registry.clone())));
    agent_config.grace = std::time::Duration::from_secs(2);
    agent_config.sandbox_root = config.sandbox_dir.clone();
    agent_config.task_user = config.task_user.clone();
    let agent = shoal_agent::Agent::new(bus.clone(), agent_config).context("starting the local agent")?;
    tokio::spawn({
        let agent = agent.clone();
        async move {
            if let Err(e) = agent.run().await {
                tracing::error!(cause = %e, "the local agent was refused");
            }
        }
    });
    Ok(agent)
}

/// Register each default plugin that is not there yet (an operator's own versions win).
pub(crate) async fn register_defaults(registry: &Registry) -> anyhow::Result<()> {
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

/// This machine as an agent registers it: host name, all cores, the memory the kernel reports
/// (`/proc/meminfo`), 10 GiB of disk and ports 31000-32000, unless the operator says otherwise.
pub fn local_agent(
    id: Option<String>,
    hostname: Option<String>,
    address: Option<String>,
    resources: Option<&str>,
    attributes: &[String],
) -> anyhow::Result<shoal_protocol::AgentRegistration> {
    let hostname = hostname.filter(|h| !h.is_empty()).unwrap_or_else(host_name);
    let resources = match resources {
        Some(text) => shoal_protocol::Resources::parse(text)?,
        None => {
            let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
            let mem_mb = std::fs::read_to_string("/proc/meminfo")
                .ok()
                .and_then(|m| {
                    m.lines()
                        .find(|l| l.starts_with("MemTotal:"))
                        .and_then(|l| l.split_whitespace().nth(1))
                        .and_then(|kb| kb.parse::<f64>().ok())
                })
                .map_or(1024.0, |kb| (kb / 1024.0).floor());
            shoal_protocol::Resources::parse(&format!("cpus:{cpus};mem:{mem_mb};disk:10240;ports:[31000-32000]"))?
        }
    };
    let mut attrs = std::collections::BTreeMap::new();
    for a in attributes {
        let (k, v) = a.split_once('=').with_context(|| format!("attribute `{a}` is not name=value"))?;
        attrs.insert(k.to_owned(), v.to_owned());
    }
    let id = id.unwrap_or_else(|| clean_id(&hostname));
    shoal_protocol::validate_agent_id(&id)?;
    Ok(shoal_protocol::AgentRegistration { id, hostname, address, attributes: attrs, resources, tasks: Vec::new() })
}

/// This machine's host name (`localhost` when the kernel does not say).
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// A host name as an id: lower case, `[a-z0-9-]`, at most 63 characters.
pub fn clean_id(name: &str) -> String {
    let cleaned: String =
        name.to_ascii_lowercase().chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '-' }).take(63).collect();
    cleaned.trim_matches('-').to_owned()
}
