//! `shoal gateway`: the gateway as its own process, in front of a control plane it mirrors.
//!
//! It keeps local copies of what it needs to route — the services' instances and health, the
//! routes, and the router plugins they name — and refreshes them from the control plane's API
//! (a blocking read of `/v1/services?index=` that returns on any change, or every two seconds for
//! routes and plugins). Every copy is durable under its data directory (`instances.json`,
//! `routes.json`, the plugin registry), so the gateway keeps serving its last table while the
//! control plane is away, and after its own restart without it.
//!
//! With several masters any of them answers (standbys forward to the leader). The gateway asks
//! the one that answered last; when it does not answer (or has no leader to forward to) it asks
//! the others in turn: those it was given (`--api` takes a comma-separated list) and those
//! `GET /v1/leader` names as members, learned after every round. A failover needs no operator.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use serde::{Deserialize, Serialize};
use shoal_abi::PluginKind;
use shoal_discovery::{Discovery, Health, Registration};
use shoal_gateway::{Gateway, GatewayConfig, Route, Routes};
use shoal_registry::{Registry, RegistryConfig};
use shoal_runtime::{Runtime, RuntimeConfig};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// How to run a standalone gateway.
#[derive(Clone, Debug)]
pub struct EdgeConfig {
    /// The control plane's API (`http://host:port`), or several masters' (comma-separated).
    pub api: String,
    /// A token of the control plane (reading is enough).
    pub token: String,
    /// Address to serve on.
    pub listen: SocketAddr,
    /// Where the mirrored table and plugins live.
    pub data_dir: PathBuf,
    /// Worker threads of the proxy; 0 = one per core.
    pub workers: usize,
    /// Header timeout and connection cap of the proxy's client side.
    pub limits: shoal_gateway::edge::EdgeLimits,
}

/// What a started gateway tells its caller.
#[derive(Clone, Debug)]
pub struct EdgeInfo {
    /// Bound address.
    pub listen: SocketAddr,
    /// Instances known at start (from the last mirror).
    pub instances: usize,
    /// Routes known at start.
    pub routes: usize,
}

/// An instance as mirrored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Mirrored {
    service: String,
    id: String,
    address: String,
    #[serde(default)]
    ports: BTreeMap<String, u16>,
    #[serde(default = "one")]
    weight: u32,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    version: String,
    health: Health,
}

fn one() -> u32 {
    1
}

/// Serve until `shutdown`.
pub async fn run(
    config: EdgeConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ready: impl FnOnce(&EdgeInfo),
) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.data_dir).with_context(|| format!("creating {}", config.data_dir.display()))?;
    let runtime =
        Runtime::new(RuntimeConfig { cache_dir: Some(config.data_dir.join("cache")), ..RuntimeConfig::default() })?;
    let (registry, mut registry_events) =
        Registry::open(&config.data_dir.join("registry"), runtime, RegistryConfig::default())
            .context("opening the gateway's plugin registry")?;
    tokio::spawn(async move { while registry_events.recv().await.is_some() {} });
    crate::node::register_defaults(&registry).await?;

    let routes = Arc::new(Routes::open(&config.data_dir.join("routes.json")).context("reading the last routes")?);
    let discovery = Arc::new(Discovery::default());
    let snapshot = config.data_dir.join("instances.json");
    let known = load_snapshot(&snapshot, &discovery)?;

    let (events_tx, mut events_rx) = mpsc::unbounded_channel::<shoal_gateway::GatewayEvent>();
    tokio::spawn(async move {
        while let Some(e) = events_rx.recv().await {
            tracing::warn!(route = %e.route, action = e.action, data = %e.data, "gateway event");
        }
    });
    let gateway = Gateway::new(
        routes.clone(),
        discovery.clone(),
        registry.clone(),
        GatewayConfig { workers: config.workers, limits: config.limits, ..GatewayConfig::default() },
        Some(events_tx),
    );
    let listener =
        TcpListener::bind(config.listen).await.with_context(|| format!("binding the gateway to {}", config.listen))?;
    ready(&EdgeInfo { listen: listener.local_addr()?, instances: known, routes: routes.list().len() });

    let apis: Vec<String> =
        config.api.split(',').map(|a| a.trim().trim_end_matches('/').to_owned()).filter(|a| !a.is_empty()).collect();
    anyhow::ensure!(!apis.is_empty(), "no control plane API given");
    let mirror = Mirror {
        // A master that is gone (or cut off) must not hold a round for long: the next is asked.
        http: reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(30))
            .build()?,
        apis: parking_lot::Mutex::new(apis),
        current: std::sync::atomic::AtomicUsize::new(0),
        token: config.token,
        discovery,
        routes,
        registry,
        snapshot,
    };
    tokio::spawn(mirror.run());
    gateway.serve(listener, shutdown).await;
    Ok(())
}

fn load_snapshot(file: &Path, discovery: &Discovery) -> anyhow::Result<usize> {
    let text = match std::fs::read(file) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e).with_context(|| format!("reading {}", file.display())),
    };
    let instances: Vec<Mirrored> =
        serde_json::from_slice(&text).with_context(|| format!("{} is not a mirror of instances", file.display()))?;
    for i in &instances {
        apply(discovery, i);
    }
    Ok(instances.len())
}

fn apply(discovery: &Discovery, i: &Mirrored) {
    let registration = Registration {
        address: i.address.clone(),
        ports: i.ports.clone(),
        weight: i.weight,
        labels: i.labels.clone(),
        version: i.version.clone(),
        health: Some(i.health),
        ttl_seconds: None,
        check: None,
    };
    if let Err(e) = discovery.upsert_task(&i.service, &i.id, registration) {
        tracing::warn!(service = %i.service, instance = %i.id, cause = %e, "skipping a mirrored instance");
    }
}

struct Mirror {
    http: reqwest::Client,
    /// The masters known: those given first, then those learned from `/v1/leader`.
    apis: parking_lot::Mutex<Vec<String>>,
    /// Which of them answered last.
    current: std::sync::atomic::AtomicUsize,
    token: String,
    discovery: Arc<Discovery>,
    routes: Arc<Routes>,
    registry: Arc<Registry>,
    snapshot: PathBuf,
}

impl Mirror {
    async fn run(self) {
        let (mut index, mut away) = (0u64, false);
        let mut last: Vec<Mirrored> = Vec::new();
        loop {
            match self.sync(index, &mut last).await {
                Ok(next) => {
                    if away {
                        tracing::info!(api = %self.api(), "control plane reachable again; table refreshed");
                    }
                    self.learn_members().await;
                    away = false;
                    index = next;
                }
                Err(e) => {
                    if !away {
                        tracing::warn!(cause = format!("{e:#}"), "control plane unreachable; serving the last table");
                    }
                    away = true;
                    index = 0;
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    /// The master asked last.
    fn api(&self) -> String {
        let apis = self.apis.lock();
        apis[self.current.load(std::sync::atomic::Ordering::Relaxed) % apis.len()].clone()
    }

    /// `GET path` from the control plane: the master that answered last, else each other known
    /// one in turn; a 503 (no leader to forward to) counts as no answer.
    async fn send(&self, path: &str) -> anyhow::Result<reqwest::Response> {
        let apis = self.apis.lock().clone();
        let first = self.current.load(std::sync::atomic::Ordering::Relaxed) % apis.len();
        let mut failures = Vec::new();
        for k in 0..apis.len() {
            let i = (first + k) % apis.len();
            match self.http.get(format!("{}{path}", apis[i])).bearer_auth(&self.token).send().await {
                Ok(r) if r.status() != reqwest::StatusCode::SERVICE_UNAVAILABLE => {
                    if i != first {
                        tracing::info!(api = %apis[i], "asking another master of the control plane");
                        self.current.store(i, std::sync::atomic::Ordering::Relaxed);
                    }
                    return Ok(r);
                }
                Ok(r) => failures.push(format!("{}: {}", apis[i], r.status())),
                Err(e) => failures.push(format!("{}: {e}", apis[i])),
            }
        }
        anyhow::bail!("no master answered: {}", failures.join("; "))
    }

    /// Add the masters `GET /v1/leader` names to those known (a single node names none).
    async fn learn_members(&self) {
        let Ok(v) = self.get("/v1/leader").await else { return };
        let mut apis = self.apis.lock();
        for m in v["members"].as_array().into_iter().flatten() {
            if let Some(api) = m["api"].as_str().map(|a| a.trim_end_matches('/').to_owned())
                && !apis.contains(&api)
            {
                tracing::info!(%api, "learned a master of the control plane");
                apis.push(api);
            }
        }
    }

    async fn get(&self, path: &str) -> anyhow::Result<serde_json::Value> {
        let response = self.send(path).await?;
        let status = response.status();
        if !status.is_success() {
            anyhow::bail!("GET {path}: {status}: {}", response.text().await.unwrap_or_default());
        }
        Ok(response.json().await?)
    }

    /// One round: wait for a change (or two seconds), then copy instances, routes and plugins.
    async fn sync(&self, index: u64, last: &mut Vec<Mirrored>) -> anyhow::Result<u64> {
        let list = self.get(&format!("/v1/services?index={index}&wait=2s")).await?;
        let next = list["index"].as_u64().context("no index in /v1/services")?;

        let mut remote: Vec<Mirrored> = Vec::new();
        for service in list["services"].as_array().into_iter().flatten() {
            let name = service["name"].as_str().context("service without a name")?;
            let v = self.get(&format!("/v1/services/{name}")).await?;
            for i in v["instances"].as_array().into_iter().flatten() {
                // An instance carries its service; fields the mirror does not need are ignored.
                remote.push(serde_json::from_value(i.clone()).context("an instance in an unexpected shape")?);
            }
        }
        if remote != *last {
            let keep: BTreeSet<(&str, &str)> = remote.iter().map(|m| (m.service.as_str(), m.id.as_str())).collect();
            for m in &remote {
                apply(&self.discovery, m);
            }
            for (service, _, _) in self.discovery.services() {
                for i in self.discovery.instances(&service, false).0 {
                    if !keep.contains(&(service.as_str(), i.id.as_str())) {
                        let _ = self.discovery.deregister(&service, &i.id);
                    }
                }
            }
            save(&self.snapshot, &remote)?;
            *last = remote;
        }

        let v = self.get("/v1/routes").await?;
        let wanted: Vec<Route> =
            serde_json::from_value(v["routes"].clone()).context("routes in an unexpected shape")?;
        let names: BTreeSet<&str> = wanted.iter().map(|r| r.name.as_str()).collect();
        for route in &wanted {
            if self.routes.get(&route.name).as_deref() != Some(route) {
                self.routes.put(route.clone()).await?;
            }
        }
        for route in self.routes.list().iter() {
            if !names.contains(route.name.as_str()) {
                self.routes.delete(&route.name).await?;
            }
        }
        let routers: BTreeSet<&str> = wanted.iter().map(|r| r.router.as_str()).collect();
        for router in routers {
            if let Err(e) = self.sync_router(router).await {
                tracing::warn!(router, cause = format!("{e:#}"), "could not mirror a router plugin");
            }
        }
        Ok(next)
    }

    /// Make the local active version of router `name` the control plane's.
    async fn sync_router(&self, name: &str) -> anyhow::Result<()> {
        let v = self.get(&format!("/v1/plugins/router/{name}")).await?;
        let Some(active) = v["active"].as_str() else { return Ok(()) };
        let digest = v["versions"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|x| x["version"] == active)
            .and_then(|x| x["digest"].as_str())
            .context("the active version is not listed")?;
        let local = self.registry.show(PluginKind::Router, name).ok();
        let local_version = local.as_ref().and_then(|l| l.versions.iter().find(|x| x.version == active));
        match local_version {
            Some(lv) if lv.digest == digest => {
                if local.as_ref().and_then(|l| l.active.as_deref()) != Some(active) {
                    self.registry.activate(PluginKind::Router, name, active).await?;
                }
            }
            Some(_) => anyhow::bail!("version {active} differs here from the control plane's"),
            None => {
                let path = format!("/v1/plugins/router/{name}/versions/{active}/component");
                let response = self.send(&path).await?.error_for_status()?;
                let bytes = response.bytes().await?;
                self.registry.push(PluginKind::Router, name, Some(active), &bytes, true).await?;
                tracing::info!(router = name, version = active, "mirrored a router plugin");
            }
        }
        Ok(())
    }
}

/// Write the mirror atomically: a temporary file, fsynced, renamed over the old one.
fn save(file: &Path, instances: &[Mirrored]) -> anyhow::Result<()> {
    let tmp = file.with_extension("json.tmp");
    let bytes = serde_json::to_vec_pretty(instances)?;
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, file)?;
    Ok(())
}
