//! The `shoal` command line: roles (`dev`) and the operator CLI over the HTTP API.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use futures::StreamExt;
use serde_json::Value;
use shoal_abi::{AnyPlugin, PluginKind};
use shoal_runtime::{MemoryKv, PluginScope, Runtime, RuntimeConfig};

use crate::node::{NodeConfig, NodeInfo};

mod cluster;
mod plugin_sdk;
mod services;
mod store;

/// Shoal: a control plane for a pool of machines, where every policy is a WebAssembly component.
#[derive(Parser, Debug)]
#[command(name = "shoal", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run everything in one process with an in-process bus; data under ./.shoal.
    Dev(DevArgs),
    /// Run the master (agents, API, registry, store, service registry) on a NATS bus.
    Master(MasterArgs),
    /// Run an agent on a NATS bus (`shoal agent --nats URL`), or list the agents
    /// (`shoal agent list`).
    Agent(AgentCli),
    /// Run a gateway in its own process, mirroring the routes, instances and router plugins of
    /// the control plane at --api (and serving its last table while that is away).
    Gateway(GatewayArgs),
    /// Manage plugins.
    #[command(subcommand)]
    Plugin(PluginCommand),
    /// Watch the event stream.
    #[command(subcommand)]
    Events(EventsCommand),
    /// Read, write and watch the state store.
    #[command(subcommand)]
    Kv(KvCommand),
    /// Run a store node on a NATS bus (`shoal store --nats URL --id s1`), or show and resize the
    /// store (`shoal store status|scale-out|scale-in`).
    Store(store::StoreCli),
    /// Discover services and register external instances.
    #[command(subcommand)]
    Service(services::ServiceCommand),
    /// Manage the gateway's routes.
    #[command(subcommand)]
    Route(services::RouteCommand),
    /// List, inspect and kill tasks; read their output.
    #[command(subcommand)]
    Task(cluster::TaskCommand),
    /// List the frameworks.
    #[command(subcommand)]
    Framework(cluster::FrameworkCommand),
    /// Deploy and manage long-running apps (the `service` framework).
    #[command(subcommand)]
    App(cluster::AppCommand),
    /// One-shot and cron jobs (the `batch` framework).
    #[command(subcommand)]
    Job(cluster::JobCommand),
    /// Upload and list the Wasm components that Wasm tasks run.
    #[command(subcommand)]
    Artifact(cluster::ArtifactCommand),
    /// Show or switch (live) the master's allocator plugin.
    #[command(subcommand)]
    Allocator(cluster::AllocatorCommand),
}

#[derive(Args, Debug)]
struct DevArgs {
    /// Where data lives.
    #[arg(long, default_value = ".shoal")]
    data_dir: PathBuf,
    /// Address of the HTTP API.
    #[arg(long, default_value = "127.0.0.1:7070")]
    listen: SocketAddr,
    /// Use this NATS server (e.g. nats://127.0.0.1:4222) instead of the in-process bus.
    #[arg(long)]
    nats: Option<String>,
    /// Shards of a new state store (under <data-dir>/store); later, `shoal store scale-out`
    /// and `scale-in` change the count online.
    #[arg(long, default_value_t = shoal_store::DEFAULT_SHARDS)]
    shards: u32,
    /// fsync the state store's write-ahead log on every write (survives power loss); without it
    /// acknowledged writes survive a crash of the process (`kill -9`) but not of the machine.
    #[arg(long)]
    sync: bool,
    /// Address of the gateway (the reverse proxy in front of services).
    #[arg(long, default_value = "127.0.0.1:7080")]
    gateway: SocketAddr,
    /// Run no gateway.
    #[arg(long)]
    no_gateway: bool,
    /// Worker threads of the gateway, each with its own event loop and upstream connections
    /// (0 = one per core).
    #[arg(long, default_value_t = 0)]
    gateway_workers: usize,
    /// Milliseconds without a heartbeat after which an agent is lost.
    #[arg(long, default_value_t = 5000)]
    agent_timeout_ms: u64,
    /// Resources of the local agent (default: this machine's cores and memory, 10 GiB disk,
    /// ports 31000-32000), e.g. `cpus:2;mem:2048;ports:[34000-34099]`.
    #[arg(long)]
    agent_resources: Option<String>,
    /// Milliseconds between allocation cycles (launches, ended tasks, new agents and revives
    /// also start one).
    #[arg(long, default_value_t = 1000)]
    allocation_interval_ms: u64,
}

#[derive(Args, Debug)]
struct MasterArgs {
    /// The NATS server agents and the master talk through.
    #[arg(long)]
    nats: String,
    /// Where data lives.
    #[arg(long, default_value = ".shoal-master")]
    data_dir: PathBuf,
    /// Address of the HTTP API.
    #[arg(long, default_value = "127.0.0.1:7070")]
    listen: SocketAddr,
    /// Milliseconds without a heartbeat after which an agent is lost.
    #[arg(long, default_value_t = 5000)]
    agent_timeout_ms: u64,
    /// Also serve a gateway at this address.
    #[arg(long)]
    gateway: Option<SocketAddr>,
    /// Worker threads of the gateway, each with its own event loop and upstream connections
    /// (0 = one per core).
    #[arg(long, default_value_t = 0)]
    gateway_workers: usize,
    /// Milliseconds between allocation cycles (changes also start one).
    #[arg(long, default_value_t = 1000)]
    allocation_interval_ms: u64,
    /// Shards of a new state store (the master owns the shard map; nodes serve the shards).
    #[arg(long, default_value_t = shoal_store::DEFAULT_SHARDS)]
    shards: u32,
    /// Serve no shards in the master's process: only `shoal store` nodes do.
    #[arg(long)]
    no_store: bool,
    /// Id of the master's own store node.
    #[arg(long, default_value = "master")]
    store_id: String,
    /// fsync the master's store node's write-ahead log on every write.
    #[arg(long)]
    sync: bool,
}

#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
struct AgentCli {
    #[command(subcommand)]
    command: Option<AgentCommand>,
    #[command(flatten)]
    run: AgentRunArgs,
}

#[derive(Args, Debug)]
struct AgentRunArgs {
    /// The NATS server the master listens on.
    #[arg(long)]
    nats: Option<String>,
    /// Agent id (default: the host name, cleaned).
    #[arg(long)]
    id: Option<String>,
    /// Resources to offer, e.g. `cpus:4;mem:8192;disk:20000;ports:[31000-32000];gpus:1`
    /// (default: this machine's cores and memory, 10 GiB disk, ports 31000-32000).
    #[arg(long)]
    resources: Option<String>,
    /// Attributes, `name=value`, repeatable (e.g. `rack=r1`).
    #[arg(long = "attribute")]
    attributes: Vec<String>,
    /// Host name to register (the `@hostname` of constraints; default this machine's).
    #[arg(long)]
    hostname: Option<String>,
    /// Address tasks on this agent are reachable at (default the host name).
    #[arg(long)]
    address: Option<String>,
    /// Where task sandboxes live (default `.shoal-agent-<id>`).
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Milliseconds between SIGTERM and SIGKILL when a task is killed.
    #[arg(long, default_value_t = 5000)]
    grace_ms: u64,
}

#[derive(Subcommand, Debug)]
enum AgentCommand {
    /// Every agent the master knows.
    List {
        #[command(flatten)]
        remote: Remote,
    },
    /// One agent, as JSON.
    Show {
        /// Agent id.
        id: String,
        #[command(flatten)]
        remote: Remote,
    },
}

#[derive(Args, Debug)]
struct GatewayArgs {
    /// Address to serve on.
    #[arg(long, default_value = "127.0.0.1:7080")]
    listen: SocketAddr,
    /// Where the mirrored table and plugins live.
    #[arg(long, default_value = ".shoal-gateway")]
    data_dir: PathBuf,
    /// Worker threads, each with its own event loop and upstream connections (0 = one per core).
    #[arg(long, default_value_t = 0)]
    workers: usize,
    #[command(flatten)]
    remote: Remote,
}

/// How the CLI reaches the API.
#[derive(Args, Debug, Clone)]
struct Remote {
    /// URL of the Shoal API.
    #[arg(long, env = "SHOAL_API", default_value = "http://127.0.0.1:7070", global = true)]
    api: String,
    /// Bearer token; defaults to the admin token `shoal dev` wrote in ./.shoal/admin.token.
    #[arg(long, env = "SHOAL_TOKEN", global = true, hide_env_values = true)]
    token: Option<String>,
}

#[derive(Subcommand, Debug)]
enum PluginCommand {
    /// Upload a component as a new version of a plugin.
    Push {
        /// Plugin kind: allocator, router, health-check, framework.
        #[arg(long)]
        kind: String,
        /// Plugin name.
        #[arg(long)]
        name: String,
        /// Version label (default v<n>).
        #[arg(long)]
        version: Option<String>,
        /// Make it the active version now.
        #[arg(long)]
        activate: bool,
        /// The component (.wasm).
        file: PathBuf,
        #[command(flatten)]
        remote: Remote,
    },
    /// List plugins.
    List {
        #[command(flatten)]
        remote: Remote,
    },
    /// Show one plugin and its versions.
    Show {
        /// Plugin kind.
        kind: String,
        /// Plugin name.
        name: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// Make a version active.
    Activate {
        /// Plugin kind.
        kind: String,
        /// Plugin name.
        name: String,
        /// Version.
        version: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// Return to the previously active version.
    Rollback {
        /// Plugin kind.
        kind: String,
        /// Plugin name.
        name: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// Delete a version, or the whole plugin.
    Delete {
        /// Plugin kind.
        kind: String,
        /// Plugin name.
        name: String,
        /// Only this version.
        #[arg(long)]
        version: Option<String>,
        #[command(flatten)]
        remote: Remote,
    },
    /// Create a plugin project (template, WIT, build and test scripts) in Rust, Python, JS or C.
    New(plugin_sdk::NewArgs),
    /// Run conformance cases (fixture + expected answer) on a component (no server needed).
    Test(plugin_sdk::TestArgs),
    /// Measure a component: size, compile, instantiation and per-call time on a fixture.
    Bench(plugin_sdk::BenchArgs),
    /// Run a component locally against a JSON fixture and print its answer (no server needed).
    Check {
        /// Plugin kind.
        #[arg(long)]
        kind: String,
        /// The component (.wasm).
        file: PathBuf,
        /// The fixture (JSON); see the SDK docs for its shape per kind.
        #[arg(long)]
        input: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
enum EventsCommand {
    /// Print events as they happen, one CloudEvents JSON per line.
    Tail {
        /// Subject filter, e.g. `shoal.evt.plugin.>` (default: every event).
        subject: Option<String>,
        #[command(flatten)]
        remote: Remote,
    },
}

#[derive(Subcommand, Debug)]
enum KvCommand {
    /// Print a value (raw bytes on stdout; its version on stderr).
    Get {
        /// Namespace.
        ns: String,
        /// Key.
        key: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// Write a value (from the argument, or stdin without one).
    Put {
        /// Namespace.
        ns: String,
        /// Key.
        key: String,
        /// Value; read from stdin when absent.
        value: Option<String>,
        /// Compare-and-set: only if the current version is this one (0: only if absent).
        #[arg(long)]
        version: Option<u64>,
        /// Expire after this many seconds.
        #[arg(long)]
        ttl: Option<u64>,
        #[command(flatten)]
        remote: Remote,
    },
    /// Delete a key.
    Del {
        /// Namespace.
        ns: String,
        /// Key.
        key: String,
        /// Compare-and-set: only if the current version is this one.
        #[arg(long)]
        version: Option<u64>,
        #[command(flatten)]
        remote: Remote,
    },
    /// Print every write of a key, or of the keys under a prefix (`--prefix`), as it happens:
    /// one JSON line each (`{"op", "key", "version", "value"?}`).
    Watch {
        /// Namespace.
        ns: String,
        /// The key (or, with `--prefix`, the prefix; empty for the whole namespace).
        key: Option<String>,
        /// Watch every key starting with the argument.
        #[arg(long)]
        prefix: bool,
        #[command(flatten)]
        remote: Remote,
    },
    /// List keys (and versions) by prefix, in key order, following every page.
    Ls {
        /// Namespace.
        ns: String,
        /// Only keys starting with this.
        prefix: Option<String>,
        /// Keys per request.
        #[arg(long, default_value_t = 1000)]
        page: usize,
        #[command(flatten)]
        remote: Remote,
    },
}

/// Run the command line.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Dev(args) => dev(args).await,
        Command::Plugin(cmd) => plugin(cmd).await,
        Command::Events(EventsCommand::Tail { subject, remote }) => tail(subject, remote).await,
        Command::Kv(cmd) => kv(cmd).await,
        Command::Store(cli) => store::store(cli).await,
        Command::Service(cmd) => services::service(cmd).await,
        Command::Route(cmd) => services::route(cmd).await,
        Command::Gateway(args) => gateway(args).await,
        Command::Master(args) => master(args).await,
        Command::Agent(cli) => agent(cli).await,
        Command::Task(cmd) => cluster::task(cmd).await,
        Command::Framework(cmd) => cluster::framework(cmd).await,
        Command::App(cmd) => cluster::app(cmd).await,
        Command::Job(cmd) => cluster::job(cmd).await,
        Command::Artifact(cmd) => cluster::artifact(cmd).await,
        Command::Allocator(cmd) => cluster::allocator(cmd).await,
    }
}

async fn dev(args: DevArgs) -> anyhow::Result<()> {
    let durability = if args.sync { shoal_store::Durability::Sync } else { shoal_store::Durability::Wal };
    let config = NodeConfig {
        data_dir: args.data_dir,
        listen: args.listen,
        nats: args.nats,
        default_plugins: true,
        store: shoal_store::StoreConfig { shards: args.shards, durability },
        store_node: Some("local".into()),
        gateway: (!args.no_gateway).then_some(args.gateway),
        gateway_workers: args.gateway_workers,
        agent_timeout: std::time::Duration::from_millis(args.agent_timeout_ms),
        local_agent: Some(crate::node::local_agent(
            None,
            None,
            Some("127.0.0.1".into()),
            args.agent_resources.as_deref(),
            &[],
        )?),
        allocation_interval: std::time::Duration::from_millis(args.allocation_interval_ms),
    };
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
        eprintln!("shutting down");
    };
    let data_dir = config.data_dir.clone();
    crate::node::run(config, shutdown, |info: &NodeInfo| {
        println!("Shoal dev is running (bus: {}, data: {})", info.bus, data_dir.display());
        println!("  API:      http://{}/v1", info.api);
        println!("  OpenAPI:  http://{}/v1/openapi.json", info.api);
        println!("  metrics:  http://{}/metrics", info.api);
        if let Some(gateway) = info.gateway {
            println!("  gateway:  http://{gateway}/  (routes: shoal route put …)");
        }
        println!("  admin token: {}  (saved in {})", info.admin_token, info.token_file.display());
        println!("Try: shoal plugin list   ·   shoal kv put demo hello world   ·   Ctrl-C to stop");
    })
    .await
}

async fn master(args: MasterArgs) -> anyhow::Result<()> {
    let config = NodeConfig {
        data_dir: args.data_dir,
        listen: args.listen,
        nats: Some(args.nats),
        default_plugins: true,
        store: shoal_store::StoreConfig {
            shards: args.shards,
            durability: if args.sync { shoal_store::Durability::Sync } else { shoal_store::Durability::Wal },
        },
        store_node: (!args.no_store).then_some(args.store_id),
        gateway: args.gateway,
        gateway_workers: args.gateway_workers,
        agent_timeout: std::time::Duration::from_millis(args.agent_timeout_ms),
        local_agent: None,
        allocation_interval: std::time::Duration::from_millis(args.allocation_interval_ms),
    };
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
        eprintln!("shutting down");
    };
    crate::node::run(config, shutdown, |info: &NodeInfo| {
        println!("Shoal master is running (bus: {})", info.bus);
        println!("  API:      http://{}/v1", info.api);
        if let Some(gateway) = info.gateway {
            println!("  gateway:  http://{gateway}/");
        }
        println!("  admin token: {}  (saved in {})", info.admin_token, info.token_file.display());
    })
    .await
}

async fn agent(cli: AgentCli) -> anyhow::Result<()> {
    match cli.command {
        Some(AgentCommand::List { remote }) => {
            let c = Client::new(remote)?;
            let v = c.send(c.http.get(c.url("/v1/agents"))).await?;
            println!("{:<20} {:<20} {:<7} {:>5} {:<44} ATTRIBUTES", "ID", "HOSTNAME", "STATE", "TASKS", "RESOURCES");
            for a in v["agents"].as_array().into_iter().flatten() {
                let total: shoal_master::Resources = serde_json::from_value(a["total"].clone()).unwrap_or_default();
                println!(
                    "{:<20} {:<20} {:<7} {:>5} {:<44} {}",
                    a["id"].as_str().unwrap_or(""),
                    a["hostname"].as_str().unwrap_or(""),
                    a["state"].as_str().unwrap_or(""),
                    a["tasks"].as_array().map_or(0, Vec::len),
                    total.to_string(),
                    name_values(&a["attributes"])
                );
            }
            Ok(())
        }
        Some(AgentCommand::Show { id, remote }) => {
            let c = Client::new(remote)?;
            let v = c.send(c.http.get(c.url(&format!("/v1/agents/{id}")))).await?;
            print(&v);
            Ok(())
        }
        None => {
            let args = cli.run;
            let nats =
                args.nats.context("an agent needs --nats URL (the master's bus), or a command: shoal agent list")?;
            let registration = crate::node::local_agent(
                args.id,
                args.hostname,
                args.address,
                args.resources.as_deref(),
                &args.attributes,
            )?;
            let bus: shoal_bus::SharedBus = std::sync::Arc::new(
                shoal_bus::NatsBus::connect(&nats).await.with_context(|| format!("connecting to NATS at {nats}"))?,
            );
            let work_dir = args.work_dir.unwrap_or_else(|| PathBuf::from(format!(".shoal-agent-{}", registration.id)));
            println!(
                "Shoal agent {} is running (host {}, resources {}, bus {nats}, work dir {})",
                registration.id,
                registration.hostname,
                registration.resources,
                work_dir.display()
            );
            let mut config = shoal_agent::AgentConfig::new(registration, work_dir);
            config.grace = std::time::Duration::from_millis(args.grace_ms);
            let agent = shoal_agent::Agent::new(bus, config).context("preparing the agent's work dir")?;
            tokio::select! {
                result = agent.run() => {
                    result.map_err(|e| anyhow::anyhow!("the master refused this agent: {e}"))
                }
                _ = tokio::signal::ctrl_c() => {
                    eprintln!("shutting down");
                    Ok(())
                }
            }
        }
    }
}

async fn gateway(args: GatewayArgs) -> anyhow::Result<()> {
    let client = Client::new(args.remote.clone())?;
    let config = crate::edge::EdgeConfig {
        api: client.api.clone(),
        token: client.token.clone(),
        listen: args.listen,
        data_dir: args.data_dir,
        workers: args.workers,
    };
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
        eprintln!("shutting down");
    };
    crate::edge::run(config, shutdown, |info| {
        println!("Shoal gateway is running (control plane: {})", client.api);
        println!("  gateway:  http://{}/", info.listen);
        println!("  last table: {} routes, {} instances", info.routes, info.instances);
    })
    .await
}

/// A JSON object of strings as `k=v,k2=v2` (labels, attributes).
fn name_values(v: &Value) -> String {
    let pairs: Vec<String> =
        v.as_object().into_iter().flatten().map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or(""))).collect();
    pairs.join(",")
}

struct Client {
    http: reqwest::Client,
    api: String,
    token: String,
}

impl Client {
    fn new(remote: Remote) -> anyhow::Result<Self> {
        let token = match remote.token {
            Some(t) => t,
            None => std::fs::read_to_string(".shoal/admin.token").map(|t| t.trim().to_owned()).context(
                "no token: pass --token or set SHOAL_TOKEN (shoal dev prints one and saves it in ./.shoal/admin.token)",
            )?,
        };
        Ok(Client { http: reqwest::Client::new(), api: remote.api.trim_end_matches('/').to_owned(), token })
    }

    /// Follow a Server-Sent Events stream until it ends, handing `on_data` the `data:` of each
    /// event.
    async fn each_event(&self, request: reqwest::RequestBuilder, mut on_data: impl FnMut(&str)) -> anyhow::Result<()> {
        self.each_event_named(request, |_, data| on_data(data)).await
    }

    /// Like [`Client::each_event`], with each event's name (`event:`; empty when unnamed).
    async fn each_event_named(
        &self,
        request: reqwest::RequestBuilder,
        mut on_event: impl FnMut(&str, &str),
    ) -> anyhow::Result<()> {
        let response = request
            .bearer_auth(&self.token)
            .send()
            .await
            .with_context(|| format!("cannot reach the Shoal API at {}", self.api))?;
        if !response.status().is_success() {
            let status = response.status();
            let body: Value = response.json().await.unwrap_or(Value::Null);
            bail!("{status}: {}", error_message(&body).unwrap_or_else(|| "request failed".into()));
        }
        let mut stream = response.bytes_stream();
        let mut buffer = Vec::new();
        let mut name = String::new();
        while let Some(chunk) = stream.next().await {
            buffer.extend_from_slice(&chunk?);
            while let Some(pos) = buffer.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = buffer.drain(..=pos).collect();
                let line = String::from_utf8_lossy(&line);
                let line = line.trim_end();
                if let Some(event) = line.strip_prefix("event:") {
                    name = event.trim_start().to_owned();
                } else if let Some(data) = line.strip_prefix("data:") {
                    on_event(&name, data.trim_start());
                } else if line.is_empty() {
                    name.clear();
                }
            }
        }
        Ok(())
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.api)
    }

    /// The URL of `/v1/kv/{ns}` followed by the key's segments, each percent-encoded.
    fn kv_url(&self, ns: &str, key: Option<&str>) -> anyhow::Result<reqwest::Url> {
        let mut url = reqwest::Url::parse(&self.api).with_context(|| format!("invalid API URL {}", self.api))?;
        {
            let mut segments = url.path_segments_mut().map_err(|()| anyhow::anyhow!("invalid API URL {}", self.api))?;
            segments.pop_if_empty().extend(["v1", "kv", ns]);
            if let Some(key) = key {
                segments.extend(key.split('/'));
            }
        }
        Ok(url)
    }

    /// Send and return the raw body and headers of a successful answer.
    async fn send_raw(
        &self,
        request: reqwest::RequestBuilder,
    ) -> anyhow::Result<(Vec<u8>, reqwest::header::HeaderMap)> {
        let response = request
            .bearer_auth(&self.token)
            .send()
            .await
            .with_context(|| format!("cannot reach the Shoal API at {}", self.api))?;
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.bytes().await?.to_vec();
        if !status.is_success() {
            let message = serde_json::from_slice::<Value>(&body)
                .ok()
                .and_then(|v| error_message(&v))
                .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
            bail!("{status}: {message}");
        }
        Ok((body, headers))
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> anyhow::Result<Value> {
        let response = request
            .bearer_auth(&self.token)
            .send()
            .await
            .with_context(|| format!("cannot reach the Shoal API at {}", self.api))?;
        let status = response.status();
        let text = response.text().await?;
        if !status.is_success() {
            let message = serde_json::from_str::<Value>(&text).ok().and_then(|v| error_message(&v)).unwrap_or(text);
            bail!("{status}: {message}");
        }
        Ok(if text.is_empty() { Value::Null } else { serde_json::from_str(&text)? })
    }
}

/// The message of an error body: the API's `{"error": {"message": …}}` or a framework's
/// `{"error": "…"}`.
fn error_message(v: &Value) -> Option<String> {
    v["error"]["message"].as_str().or_else(|| v["error"].as_str()).map(str::to_owned)
}

fn print(value: &Value) {
    println!("{}", serde_json::to_string_pretty(value).unwrap_or_default());
}

fn kind_of(text: &str) -> anyhow::Result<PluginKind> {
    Ok(text.parse::<PluginKind>()?)
}

async fn plugin(cmd: PluginCommand) -> anyhow::Result<()> {
    match cmd {
        PluginCommand::Push { kind, name, version, activate, file, remote } => {
            let kind = kind_of(&kind)?;
            let bytes = std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let client = Client::new(remote)?;
            let mut query = vec![("activate", activate.to_string())];
            if let Some(v) = version {
                query.push(("version", v));
            }
            let request = client
                .http
                .post(client.url(&format!("/v1/plugins/{kind}/{name}")))
                .query(&query)
                .header("content-type", "application/wasm")
                .body(bytes);
            let v = client.send(request).await?;
            println!(
                "pushed {kind} {name} version {} (sha256 {})",
                v["version"].as_str().unwrap_or("?"),
                v["digest"].as_str().unwrap_or("?")
            );
        }
        PluginCommand::List { remote } => {
            let client = Client::new(remote)?;
            let v = client.send(client.http.get(client.url("/v1/plugins"))).await?;
            println!("{:<14} {:<24} {:<16} VERSIONS", "KIND", "NAME", "ACTIVE");
            for p in v["plugins"].as_array().into_iter().flatten() {
                println!(
                    "{:<14} {:<24} {:<16} {}",
                    p["kind"].as_str().unwrap_or(""),
                    p["name"].as_str().unwrap_or(""),
                    p["active"].as_str().unwrap_or("-"),
                    p["versions"].as_array().map_or(0, Vec::len)
                );
            }
        }
        PluginCommand::Show { kind, name, remote } => {
            let client = Client::new(remote)?;
            let kind = kind_of(&kind)?;
            print(&client.send(client.http.get(client.url(&format!("/v1/plugins/{kind}/{name}")))).await?);
        }
        PluginCommand::Activate { kind, name, version, remote } => {
            let client = Client::new(remote)?;
            let kind = kind_of(&kind)?;
            let request = client
                .http
                .post(client.url(&format!("/v1/plugins/{kind}/{name}/activate")))
                .json(&serde_json::json!({ "version": version }));
            let v = client.send(request).await?;
            println!("activated {kind} {name} version {}", v["version"].as_str().unwrap_or("?"));
        }
        PluginCommand::Rollback { kind, name, remote } => {
            let client = Client::new(remote)?;
            let kind = kind_of(&kind)?;
            let v = client.send(client.http.post(client.url(&format!("/v1/plugins/{kind}/{name}/rollback")))).await?;
            println!("rolled back {kind} {name} to version {}", v["version"].as_str().unwrap_or("?"));
        }
        PluginCommand::Delete { kind, name, version, remote } => {
            let client = Client::new(remote)?;
            let kind = kind_of(&kind)?;
            let mut request = client.http.delete(client.url(&format!("/v1/plugins/{kind}/{name}")));
            if let Some(v) = &version {
                request = request.query(&[("version", v)]);
            }
            client.send(request).await?;
            match version {
                Some(v) => println!("deleted version {v} of {kind} {name}"),
                None => println!("deleted {kind} {name}"),
            }
        }
        PluginCommand::New(args) => plugin_sdk::new(args)?,
        PluginCommand::Test(args) => plugin_sdk::test(args).await?,
        PluginCommand::Bench(args) => plugin_sdk::bench(args).await?,
        PluginCommand::Check { kind, file, input } => {
            let kind = kind_of(&kind)?;
            let bytes = std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let fixture: Value =
                serde_json::from_slice(&std::fs::read(&input).with_context(|| format!("reading {}", input.display()))?)
                    .with_context(|| format!("{} is not valid JSON", input.display()))?;
            let answer = tokio::task::spawn_blocking(move || -> anyhow::Result<Value> {
                let runtime = Runtime::new(RuntimeConfig { max_instances: 16, ..RuntimeConfig::default() })?;
                let scope = PluginScope {
                    kv: Some(std::sync::Arc::new(MemoryKv::default())),
                    ..PluginScope::detached(kind.as_str(), "check", "local")
                };
                let plugin = AnyPlugin::load(&runtime, kind, &bytes, scope, kind.default_limits())?;
                Ok(shoal_abi::check::run(&plugin, &fixture)?)
            })
            .await??;
            print(&answer);
        }
    }
    Ok(())
}

async fn kv(cmd: KvCommand) -> anyhow::Result<()> {
    use std::io::{Read, Write};
    match cmd {
        KvCommand::Get { ns, key, remote } => {
            let client = Client::new(remote)?;
            let (body, headers) = client.send_raw(client.http.get(client.kv_url(&ns, Some(&key))?)).await?;
            let mut stdout = std::io::stdout().lock();
            stdout.write_all(&body)?;
            stdout.flush()?;
            if let Some(version) = headers.get("x-shoal-version").and_then(|v| v.to_str().ok()) {
                eprintln!("version {version}");
            }
        }
        KvCommand::Put { ns, key, value, version, ttl, remote } => {
            let value = match value {
                Some(v) => v.into_bytes(),
                None => {
                    let mut buf = Vec::new();
                    std::io::stdin().read_to_end(&mut buf).context("reading the value from stdin")?;
                    buf
                }
            };
            let client = Client::new(remote)?;
            let mut query = Vec::new();
            if let Some(v) = version {
                query.push(("version", v));
            }
            if let Some(t) = ttl {
                query.push(("ttl", t));
            }
            let request = client.http.put(client.kv_url(&ns, Some(&key))?).query(&query).body(value);
            let v = client.send(request).await?;
            println!("put {ns}/{key} version {}", v["version"]);
        }
        KvCommand::Del { ns, key, version, remote } => {
            let client = Client::new(remote)?;
            let mut request = client.http.delete(client.kv_url(&ns, Some(&key))?);
            if let Some(v) = version {
                request = request.query(&[("version", v)]);
            }
            client.send_raw(request).await?;
            println!("deleted {ns}/{key}");
        }
        KvCommand::Watch { ns, key, prefix, remote } => {
            let client = Client::new(remote)?;
            let request = match (prefix, key) {
                (true, key) => client
                    .http
                    .get(client.kv_url(&ns, None)?)
                    .query(&[("watch", "true"), ("prefix", key.as_deref().unwrap_or(""))]),
                (false, Some(key)) => client.http.get(client.kv_url(&ns, Some(&key))?).query(&[("watch", "true")]),
                (false, None) => bail!("name a key, or pass --prefix (with an optional prefix)"),
            };
            let mut op = String::new();
            client
                .each_event_named(request, |event, data| {
                    op = event.to_owned();
                    let mut v: Value = serde_json::from_str(data).unwrap_or(Value::Null);
                    if let Some(o) = v.as_object_mut() {
                        o.insert("op".into(), Value::String(op.clone()));
                    }
                    println!("{v}");
                })
                .await?;
        }
        KvCommand::Ls { ns, prefix, page, remote } => {
            let client = Client::new(remote)?;
            let mut cursor: Option<String> = None;
            let mut stdout = std::io::stdout().lock();
            loop {
                let mut query = vec![("limit", page.to_string())];
                if let Some(p) = &prefix {
                    query.push(("prefix", p.clone()));
                }
                if let Some(c) = &cursor {
                    query.push(("cursor", c.clone()));
                }
                let v = client.send(client.http.get(client.kv_url(&ns, None)?).query(&query)).await?;
                for e in v["entries"].as_array().into_iter().flatten() {
                    writeln!(stdout, "{}\t{}", e["key"].as_str().unwrap_or(""), e["version"])?;
                }
                match v["cursor"].as_str() {
                    Some(c) => cursor = Some(c.to_owned()),
                    None => break,
                }
            }
        }
    }
    Ok(())
}

async fn tail(subject: Option<String>, remote: Remote) -> anyhow::Result<()> {
    let client = Client::new(remote)?;
    let mut request = client.http.get(client.url("/v1/events"));
    if let Some(s) = &subject {
        request = request.query(&[("subject", s)]);
    }
    client.each_event(request, |data| println!("{data}")).await
}
