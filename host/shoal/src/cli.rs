//! The `shoal` command line: roles (`dev`) and the operator CLI over the HTTP API.

use clap::{Args, CommandFactory, Parser, Subcommand};

mod client;
mod cluster;
mod dns;
#[cfg(test)]
mod docs_check;
mod events;
mod kv;
mod nats;
mod nodes;
mod output;
mod plugin;
mod plugin_sdk;
mod roles;
mod services;
mod settings;
mod store;
mod tokens;
mod wait;

pub use client::exit_code;
pub(crate) use client::{Client, Failure, Kind, name_values, print};
use events::{EventsCommand, tail};
use kv::{KvCommand, kv};
pub use nats::NatsTarget;
pub(crate) use nats::{NatsArgs, NatsCommand};
use plugin::{PluginCommand, plugin};
use roles::{AgentCli, DevArgs, GatewayArgs, MasterCli, agent, dev, gateway, master};
pub use settings::{parse, parse_from};

/// Shoal: a control plane for a pool of machines, where every policy is a WebAssembly component.
#[derive(Parser, Debug)]
#[command(name = "shoal", version, about, after_help = client::EXIT_CODES)]
pub struct Cli {
    /// How log lines on stderr are written: `text`, or `json` (one JSON object per line).
    #[arg(long, value_enum, env = "SHOAL_LOG_FORMAT", default_value = "text", global = true)]
    pub log_format: crate::LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run everything in one process with an in-process bus; data under ./.shoal.
    Dev(DevArgs),
    /// Run a master (agents, API, registry, store, service registry) on a NATS cluster with
    /// JetStream, one of any number: a lease there chooses the leader, standbys forward to it;
    /// or show who leads (`shoal master status`).
    Master(MasterCli),
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
    /// Credentials of the roles and the `nats-server` configuration that enforces them.
    #[command(subcommand)]
    Nats(NatsCommand),
    /// Issue, list and revoke API tokens (admin only).
    #[command(subcommand)]
    Token(tokens::TokenCommand),
    /// Print a shell completion script: `source <(shoal completion bash)`, or save it where your
    /// shell loads completions from.
    Completion {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

/// How the CLI reaches the API.
#[derive(Args, Debug, Clone)]
pub(crate) struct Remote {
    /// URL of the Shoal API.
    #[arg(long, env = "SHOAL_API", default_value = "http://127.0.0.1:7070", global = true)]
    api: String,
    /// Bearer token; defaults to the admin token `shoal dev` wrote in ./.shoal/admin.token.
    #[arg(long, env = "SHOAL_TOKEN", global = true, hide_env_values = true)]
    token: Option<String>,
    #[command(flatten)]
    pub(crate) out: output::Output,
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
        Command::Nats(cmd) => nats::nats(cmd),
        Command::Token(cmd) => tokens::token(cmd).await,
        Command::Completion { shell } => {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "shoal", &mut script);
            std::io::Write::write_all(&mut std::io::stdout(), &script)?;
            Ok(())
        }
    }
}
