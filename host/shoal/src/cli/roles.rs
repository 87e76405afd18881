//! The roles a `shoal` process runs: `dev` (everything in one process), `master`, `agent` and
//! `gateway`, each a thin layer of flags over a library function.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};

use super::*;
use crate::node::{NodeConfig, NodeInfo};

#[derive(Args, Debug)]
pub(super) struct DevArgs {
    /// Where data lives.
    #[arg(long, default_value = ".shoal")]
    data_dir: PathBuf,
    /// Address of the HTTP API.
    #[arg(long, default_value = "127.0.0.1:7070")]
    listen: SocketAddr,
    /// A NATS server instead of the in-process bus (with the master's credentials, if any).
    #[command(flatten)]
    nats: super::NatsArgs,
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
    #[command(flatten)]
    edge: EdgeArgs,
    #[command(flatten)]
    dns: super::dns::DnsArgs,
    #[command(flatten)]
    bounds: BoundsArgs,
    /// Milliseconds without a heartbeat after which an agent is lost.
    #[arg(long, default_value_t = 5000)]
    agent_timeout_ms: u64,
    /// Seconds a lost agent stays listed before the master forgets it.
    #[arg(long, default_value_t = shoal_master::DEFAULT_FORGET_LOST_AFTER.as_secs())]
    forget_lost_agents_after_s: u64,
    /// Resources of the local agent (default: this machine's cores and memory, 10 GiB disk,
    /// ports 31000-32000), e.g. `cpus:2;mem:2048;ports:[34000-34099]`.
    #[arg(long)]
    agent_resources: Option<String>,
    /// Milliseconds between allocation cycles (launches, ended tasks, new agents and revives
    /// also start one).
    #[arg(long, default_value_t = 1000)]
    allocation_interval_ms: u64,
    /// Where task sandboxes live, one directory per task; never inside a data directory
    /// (default `/var/lib/shoal/sandboxes/<agent id>` as root, else
    /// `$TMPDIR/shoal-sandboxes-<uid>/<agent id>`).
    #[arg(long)]
    sandbox_dir: Option<PathBuf>,
    /// The unprivileged user process tasks run as when the agent runs as root (like Mesos's
    /// `--switch_user`; default `nobody`). An agent that is not root runs tasks as itself.
    #[arg(long)]
    task_user: Option<String>,
}

#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub(super) struct MasterCli {
    #[command(subcommand)]
    command: Option<MasterCommand>,
    #[command(flatten)]
    run: MasterArgs,
}

#[derive(clap::Subcommand, Debug)]
pub(super) enum MasterCommand {
    /// Who leads, with which term, and the masters seen (`GET /v1/leader`).
    Status {
        #[command(flatten)]
        remote: Remote,
    },
}

#[derive(Args, Debug)]
pub(super) struct MasterArgs {
    /// The NATS server agents and the master talk through (required).
    #[command(flatten)]
    nats: super::NatsArgs,
    /// Where data lives (default `/var/lib/shoal/master` as root, else
    /// `$XDG_STATE_HOME/shoal/master`, i.e. `~/.local/state/shoal/master`).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Address of the HTTP API.
    #[arg(long, default_value = "127.0.0.1:7070")]
    listen: SocketAddr,
    /// Milliseconds without a heartbeat after which an agent is lost.
    #[arg(long, default_value_t = 5000)]
    agent_timeout_ms: u64,
    /// Seconds a lost agent stays listed before the master forgets it.
    #[arg(long, default_value_t = shoal_master::DEFAULT_FORGET_LOST_AFTER.as_secs())]
    forget_lost_agents_after_s: u64,
    /// Also serve a gateway at this address.
    #[arg(long)]
    gateway: Option<SocketAddr>,
    /// Worker threads of the gateway, each with its own event loop and upstream connections
    /// (0 = one per core).
    #[arg(long, default_value_t = 0)]
    gateway_workers: usize,
    #[command(flatten)]
    edge: EdgeArgs,
    #[command(flatten)]
    dns: super::dns::DnsArgs,
    #[command(flatten)]
    bounds: BoundsArgs,
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
    /// Store nodes holding a copy of every shard of a new state store; above 1, each shard's
    /// writes go through its log on the NATS cluster (as many servers) and one copy leads it.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=7))]
    store_replicas: u16,
    /// Milliseconds a shard's lease outlives its leader's last renewal: a dead leader's shards
    /// take writes again about this long after (plus up to half a second: the key's expiry and a
    /// follower's next look).
    #[arg(long, default_value_t = 1000)]
    store_lease_ttl_ms: u64,
    /// Keep each shard's log on this many NATS servers, fewer than --store-replicas (say so
    /// explicitly on a NATS cluster smaller than --store-replicas).
    #[arg(long)]
    store_log_replicas: Option<usize>,
    /// This master's id among the masters (default: the host name, cleaned).
    #[arg(long)]
    id: Option<String>,
    /// Milliseconds a leader's lease outlives its last renewal: a crashed leader is replaced
    /// about this long after it died.
    #[arg(long, default_value_t = 1500)]
    lease_ttl_ms: u64,
    /// Replicas of the masters' state in JetStream (default: the NATS cluster's servers, at
    /// most 3).
    #[arg(long)]
    replicas: Option<usize>,
    /// The URL other masters forward requests to (default: http://<--listen>).
    #[arg(long)]
    advertise: Option<String>,
}

#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub(super) struct AgentCli {
    #[command(subcommand)]
    command: Option<AgentCommand>,
    #[command(flatten)]
    run: AgentRunArgs,
}

#[derive(Args, Debug)]
pub(super) struct AgentRunArgs {
    /// The NATS server the master listens on.
    #[command(flatten)]
    nats: super::NatsArgs,
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
    /// The agent's own state: records of running tasks, caches (default
    /// `/var/lib/shoal/agent-<id>` as root, else `$XDG_STATE_HOME/shoal/agent-<id>`; private to
    /// the agent's user).
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Where task sandboxes live, one directory per task; never inside a data directory
    /// (default `/var/lib/shoal/sandboxes/<agent id>` as root, else
    /// `$TMPDIR/shoal-sandboxes-<uid>/<agent id>`).
    #[arg(long)]
    sandbox_dir: Option<PathBuf>,
    /// The unprivileged user process tasks run as when the agent runs as root (like Mesos's
    /// `--switch_user`; default `nobody`). An agent that is not root runs tasks as itself.
    #[arg(long)]
    task_user: Option<String>,
    /// Milliseconds between SIGTERM and SIGKILL when a task is killed.
    #[arg(long, default_value_t = 5000)]
    grace_ms: u64,
}

#[derive(Subcommand, Debug)]
pub(super) enum AgentCommand {
    /// Every agent the master knows.
    #[command(visible_alias = "ls")]
    List {
        #[command(flatten)]
        remote: Remote,
    },
    /// One agent.
    #[command(visible_alias = "get")]
    Show {
        /// Agent id.
        id: String,
        #[command(flatten)]
        remote: Remote,
    },
}

/// What the API and the plugin registry of a master (or `shoal dev`) keep at most.
#[derive(Args, Debug, Clone, Copy)]
pub(super) struct BoundsArgs {
    /// Event streams and watches (`/v1/events`, `?watch=true`, service watches) one token may
    /// hold open at once on the API; more are refused with 429.
    #[arg(long, default_value_t = shoal_api::streams::DEFAULT_PER_TOKEN)]
    max_streams_per_token: usize,
    /// Most versions one plugin keeps; a push past it is refused (409) until old ones are deleted.
    #[arg(long, default_value_t = shoal_registry::RegistryConfig::default().max_versions)]
    plugin_max_versions: usize,
    /// Most earlier versions of a plugin remembered to roll back to (the oldest are forgotten).
    #[arg(long, default_value_t = shoal_registry::RegistryConfig::default().max_history)]
    plugin_max_history: usize,
    /// Longest a blocking query (`?index=`) waits, in seconds; a longer `wait` is cut to it (as
    /// Consul's `max_query_time`). At most 300.
    #[arg(long, default_value_t = 300)]
    max_query_time_s: u64,
}

/// How long a client connection may take to send a request's head, and how many are served at
/// once, on the API and the gateway (`shoal_gateway::edge`).
#[derive(Args, Debug, Clone, Copy)]
pub(super) struct EdgeArgs {
    /// Milliseconds a connection has to send a request's head (counted from the accept, or from
    /// the previous response on a kept-alive connection; so also the idle timeout).
    #[arg(long, default_value_t = shoal_gateway::edge::DEFAULT_HEADER_TIMEOUT.as_millis() as u64)]
    http_header_timeout_ms: u64,
    /// Most client connections served at once by the API and by the gateway, each; more wait
    /// to be accepted.
    #[arg(long, default_value_t = shoal_gateway::edge::DEFAULT_MAX_CONNECTIONS)]
    http_max_connections: usize,
}

impl EdgeArgs {
    fn limits(self) -> shoal_gateway::edge::EdgeLimits {
        shoal_gateway::edge::EdgeLimits {
            header_timeout: std::time::Duration::from_millis(self.http_header_timeout_ms.max(1)),
            max_connections: self.http_max_connections.max(1),
        }
    }
}

#[derive(Args, Debug)]
pub(super) struct GatewayArgs {
    /// Address to serve on.
    #[arg(long, default_value = "127.0.0.1:7080")]
    listen: SocketAddr,
    /// Where the mirrored table and plugins live (default `/var/lib/shoal/gateway` as root, else
    /// `$XDG_STATE_HOME/shoal/gateway`, i.e. `~/.local/state/shoal/gateway`).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Worker threads, each with its own event loop and upstream connections (0 = one per core).
    #[arg(long, default_value_t = 0)]
    workers: usize,
    #[command(flatten)]
    edge: EdgeArgs,
    #[command(flatten)]
    remote: Remote,
}

pub(super) async fn dev(args: DevArgs) -> anyhow::Result<()> {
    let durability = if args.sync { shoal_store::Durability::Sync } else { shoal_store::Durability::Wal };
    let config = NodeConfig {
        data_dir: args.data_dir,
        listen: args.listen,
        nats: args.nats.target("dev", true)?,
        default_plugins: true,
        store: shoal_store::StoreConfig { shards: args.shards, durability },
        store_node: Some("local".into()),
        gateway: (!args.no_gateway).then_some(args.gateway),
        gateway_workers: args.gateway_workers,
        edge: args.edge.limits(),
        dns: args.dns.config(),
        max_streams_per_token: args.bounds.max_streams_per_token,
        plugin_max_versions: args.bounds.plugin_max_versions.max(1),
        plugin_max_history: args.bounds.plugin_max_history,
        max_query_time: std::time::Duration::from_secs(args.bounds.max_query_time_s.clamp(1, 300)),
        agent_timeout: std::time::Duration::from_millis(args.agent_timeout_ms),
        forget_lost_agents_after: std::time::Duration::from_secs(args.forget_lost_agents_after_s),
        local_agent: Some(crate::node::local_agent(
            None,
            None,
            Some("127.0.0.1".into()),
            args.agent_resources.as_deref(),
            &[],
        )?),
        allocation_interval: std::time::Duration::from_millis(args.allocation_interval_ms),
        sandbox_dir: args.sandbox_dir,
        task_user: args.task_user,
        ha: None,
        store_replication: None,
    };
    let shutdown = stop_signal()?;
    let data_dir = config.data_dir.clone();
    crate::node::run(config, shutdown, |info: &NodeInfo| {
        println!("Shoal dev is running (bus: {}, data: {})", info.bus, data_dir.display());
        println!("  API:      http://{}/v1", info.api);
        println!("  OpenAPI:  http://{}/v1/openapi.json", info.api);
        println!("  metrics:  http://{}/metrics", info.api);
        if let Some(dns) = info.dns {
            println!("  DNS:      {dns}  (dig @{} -p {} web.service.shoal SRV)", dns.ip(), dns.port());
        }
        if let Some(gateway) = info.gateway {
            println!("  gateway:  http://{gateway}/  (routes: shoal route put …)");
        }
        println!("  admin token: in {}", info.token_file.display());
        println!("Try: shoal plugin list   ·   shoal kv put demo hello world   ·   Ctrl-C to stop");
    })
    .await
}

/// SIGINT (Ctrl-C) or SIGTERM (a service manager's stop, `kill`, a container runtime): either
/// stops a role gracefully. Listening starts here, before the role starts, so a SIGTERM that
/// comes early is not the default one that ends the process at once.
pub(super) fn stop_signal() -> anyhow::Result<impl std::future::Future<Output = ()> + Send + 'static> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate()).context("listening for SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("listening for SIGINT")?;
    Ok(async move {
        let name = tokio::select! {
            _ = interrupt.recv() => "SIGINT",
            _ = terminate.recv() => "SIGTERM",
        };
        tracing::info!(signal = name, "shutting down");
    })
}

/// Run an agent until `stop`; then stop its tasks (SIGTERM, SIGKILL after `--grace-ms`: a
/// restarted agent could not watch them and would kill them anyway) while it still talks to the
/// master, so their ends are reported as kills rather than found lost later, and wait (at most
/// two seconds) for the master to acknowledge those reports.
async fn run_agent_until(
    agent: std::sync::Arc<shoal_agent::Agent>,
    stop: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let mut running = tokio::spawn(agent.clone().run());
    tokio::select! {
        result = &mut running => {
            return match result {
                Ok(result) => result.map_err(|e| anyhow::anyhow!("the master refused this agent: {e}")),
                Err(e) => Err(anyhow::anyhow!("the agent stopped: {e}")),
            };
        }
        () = stop => {}
    }
    agent.stop_all().await;
    if tokio::time::timeout(std::time::Duration::from_secs(2), agent.all_acknowledged()).await.is_err() {
        tracing::warn!(unacknowledged = agent.unacknowledged(), "task updates not acknowledged by the master");
    }
    running.abort();
    Ok(())
}

/// A master's id: the one given, or the host name cleaned; a DNS label either way.
fn master_id(id: Option<String>) -> anyhow::Result<String> {
    let id = id.unwrap_or_else(|| crate::node::clean_id(&crate::node::host_name()));
    shoal_protocol::validate_agent_id(&id).map_err(|e| anyhow::anyhow!("--id: {e}"))?;
    Ok(id)
}

pub(super) async fn master(cli: MasterCli) -> anyhow::Result<()> {
    match cli.command {
        Some(MasterCommand::Status { remote }) => super::nodes::master_status(remote).await,
        None => run_master(cli.run).await,
    }
}

async fn run_master(args: MasterArgs) -> anyhow::Result<()> {
    let config = NodeConfig {
        data_dir: match args.data_dir {
            Some(dir) => dir,
            None => super::settings::default_data_dir("master")?,
        },
        listen: args.listen,
        nats: Some(args.nats.target("master", false)?.context("`shoal master` needs --nats URL")?),
        default_plugins: true,
        store: shoal_store::StoreConfig {
            shards: args.shards,
            durability: if args.sync { shoal_store::Durability::Sync } else { shoal_store::Durability::Wal },
        },
        store_node: (!args.no_store).then_some(args.store_id),
        gateway: args.gateway,
        gateway_workers: args.gateway_workers,
        edge: args.edge.limits(),
        dns: args.dns.config(),
        max_streams_per_token: args.bounds.max_streams_per_token,
        plugin_max_versions: args.bounds.plugin_max_versions.max(1),
        plugin_max_history: args.bounds.plugin_max_history,
        max_query_time: std::time::Duration::from_secs(args.bounds.max_query_time_s.clamp(1, 300)),
        agent_timeout: std::time::Duration::from_millis(args.agent_timeout_ms),
        forget_lost_agents_after: std::time::Duration::from_secs(args.forget_lost_agents_after_s),
        local_agent: None,
        allocation_interval: std::time::Duration::from_millis(args.allocation_interval_ms),
        sandbox_dir: None,
        task_user: None,
        ha: Some(crate::leadership::HaConfig {
            id: master_id(args.id)?,
            lease_ttl: std::time::Duration::from_millis(args.lease_ttl_ms.max(200)),
            replicas: args.replicas,
            advertise: args.advertise,
        }),
        store_replication: (args.store_replicas > 1).then(|| crate::node::StoreReplication {
            replicas: usize::from(args.store_replicas),
            lease_ttl: std::time::Duration::from_millis(args.store_lease_ttl_ms.max(200)),
            log_replicas: args.store_log_replicas,
        }),
    };
    // Either signal hands the leadership over before the process exits (`node::run`), where the
    // default SIGTERM would end it at once and leave the others to wait out the lease.
    let shutdown = stop_signal()?;
    crate::node::run(config, shutdown, |info: &NodeInfo| {
        println!("Shoal master is running (bus: {})", info.bus);
        println!("  API:      http://{}/v1", info.api);
        if let Some(gateway) = info.gateway {
            println!("  gateway:  http://{gateway}/");
        }
        if let Some(dns) = info.dns {
            println!("  DNS:      {dns}");
        }
        println!("  admin token: in {}", info.token_file.display());
    })
    .await
}

pub(super) async fn agent(cli: AgentCli) -> anyhow::Result<()> {
    match cli.command {
        Some(AgentCommand::List { remote }) => super::nodes::agent_list(remote).await,
        Some(AgentCommand::Show { id, remote }) => super::nodes::agent_show(id, remote).await,
        None => {
            let args = cli.run;
            let nats = args
                .nats
                .target("agent", false)?
                .context("an agent needs --nats URL (the master's bus), or a command: shoal agent list")?;
            let registration = crate::node::local_agent(
                args.id,
                args.hostname,
                args.address,
                args.resources.as_deref(),
                &args.attributes,
            )?;
            let bus = nats.connect().await?;
            let work_dir = match args.work_dir {
                Some(dir) => dir,
                None => super::settings::default_data_dir(&format!("agent-{}", registration.id))?,
            };
            println!(
                "Shoal agent {} is running (host {}, resources {}, bus {}, work dir {})",
                registration.id,
                registration.hostname,
                registration.resources,
                nats.url,
                work_dir.display()
            );
            let mut config = shoal_agent::AgentConfig::new(registration, work_dir);
            config.grace = std::time::Duration::from_millis(args.grace_ms);
            config.sandbox_root = args.sandbox_dir;
            config.task_user = args.task_user;
            let agent = shoal_agent::Agent::new(bus, config).context("preparing the agent's work dir")?;
            let stop = stop_signal()?;
            run_agent_until(agent, stop).await
        }
    }
}

pub(super) async fn gateway(args: GatewayArgs) -> anyhow::Result<()> {
    let client = Client::new(args.remote.clone())?;
    let config = crate::edge::EdgeConfig {
        api: client.apis.join(","),
        token: client.token.clone(),
        listen: args.listen,
        data_dir: match args.data_dir {
            Some(dir) => dir,
            None => super::settings::default_data_dir("gateway")?,
        },
        workers: args.workers,
        limits: args.edge.limits(),
    };
    let shutdown = stop_signal()?;
    crate::edge::run(config, shutdown, |info| {
        println!("Shoal gateway is running (control plane: {})", client.api);
        println!("  gateway:  http://{}/", info.listen);
        println!("  last table: {} routes, {} instances", info.routes, info.instances);
    })
    .await
}
