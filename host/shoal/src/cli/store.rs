//! `shoal store`: run a store node on a NATS bus, or (with a subcommand) look at the store's shard
//! map and grow or shrink it through the API.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use serde_json::Value;

use super::{Client, Remote, print};

#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct StoreCli {
    #[command(subcommand)]
    command: Option<StoreCommand>,
    #[command(flatten)]
    run: StoreRunArgs,
}

#[derive(Args, Debug)]
struct StoreRunArgs {
    /// The NATS server the master listens on.
    #[command(flatten)]
    nats: super::NatsArgs,
    /// This node's id in the shard map, `[a-z0-9-]{1,63}` (default: the host name, cleaned).
    #[arg(long)]
    id: Option<String>,
    /// Where its shards live (default `.shoal-store-<id>`).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// fsync the write-ahead log on every write (survives power loss); without it acknowledged
    /// writes survive a crash of the process (`kill -9`) but not of the machine.
    #[arg(long)]
    sync: bool,
    /// Milliseconds a replicated shard's lease outlives its leader's last renewal (the same on
    /// every store node and the master's `--store-lease-ttl-ms`): a dead leader's shards take
    /// writes again within about this plus half a second.
    #[arg(long, default_value_t = 1000)]
    lease_ttl_ms: u64,
    /// A replicated shard's leader snapshots it every this many log entries and deletes the
    /// entries before the previous snapshot (0: never; the log then grows without bound).
    #[arg(long, default_value_t = shoal_store::replication::SNAPSHOT_EVERY)]
    snapshot_every: u64,
}

#[derive(Subcommand, Debug)]
enum StoreCommand {
    /// The shard map, the store nodes and the moves.
    Status {
        /// Print the JSON the API answers.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        remote: Remote,
    },
    /// Add a shard (on `--node`, default the live node with the fewest) and move its keys there,
    /// online; shows the move's progress until it ends.
    ScaleOut {
        /// The store node that gets the new shard.
        #[arg(long)]
        node: Option<String>,
        /// Return once the move has started.
        #[arg(long)]
        no_wait: bool,
        #[command(flatten)]
        remote: Remote,
    },
    /// Remove the last shard, moving its keys to the others, online.
    ScaleIn {
        /// Return once the move has started.
        #[arg(long)]
        no_wait: bool,
        #[command(flatten)]
        remote: Remote,
    },
}

/// Run the `store` command.
pub async fn store(cli: StoreCli) -> anyhow::Result<()> {
    match cli.command {
        Some(StoreCommand::Status { json, remote }) => {
            let client = Client::new(remote)?;
            let v = client.send(client.http.get(client.url("/v1/store"))).await?;
            if json {
                print(&v);
            } else {
                print_status(&v);
            }
            Ok(())
        }
        Some(StoreCommand::ScaleOut { node, no_wait, remote }) => {
            let client = Client::new(remote)?;
            let body = serde_json::json!({ "node": node });
            let started = client.send(client.http.post(client.url("/v1/store/scale-out")).json(&body)).await?;
            follow(&client, &started, no_wait).await
        }
        Some(StoreCommand::ScaleIn { no_wait, remote }) => {
            let client = Client::new(remote)?;
            let started = client.send(client.http.post(client.url("/v1/store/scale-in"))).await?;
            follow(&client, &started, no_wait).await
        }
        None => run_node(cli.run).await,
    }
}

async fn run_node(args: StoreRunArgs) -> anyhow::Result<()> {
    let Some(nats) = args.nats.target("store", false)? else {
        bail!("`shoal store` runs a store node: pass --nats URL (or use `shoal store status|scale-out|scale-in`)");
    };
    let id = match args.id {
        Some(id) => id,
        None => crate::node::clean_id(&crate::node::host_name()),
    };
    shoal_store::node::validate_node_id(&id)?;
    let dir = args.data_dir.unwrap_or_else(|| PathBuf::from(format!(".shoal-store-{id}")));
    let nats_bus = shoal_bus::NatsBus::connect_with(&nats.url, &nats.options)
        .await
        .with_context(|| format!("connecting to NATS at {}", nats.url))?;
    // Shards the map replicates keep their logs and leases on this NATS cluster (on as many
    // servers as it has, at most 3; the master refuses --store-replicas above its size).
    let client = nats_bus.client().clone();
    let replication = shoal_store::replication::ReplicationConfig {
        replicas: client.server_info().connect_urls.len().clamp(1, 3),
        client,
        lease_ttl: Duration::from_millis(args.lease_ttl_ms.max(200)),
        prefix: String::new(),
        snapshot_every: args.snapshot_every,
    };
    let bus: shoal_bus::SharedBus = std::sync::Arc::new(nats_bus);
    let durability = if args.sync { shoal_store::Durability::Sync } else { shoal_store::Durability::Wal };
    let service = shoal_store::service::start(
        bus,
        shoal_store::service::ServiceOptions {
            node: Some(shoal_store::service::NodeOptions {
                id: id.clone(),
                dir: dir.clone(),
                durability,
                sweep_interval: shoal_store::DEFAULT_SWEEP_INTERVAL,
                replication: Some(replication),
            }),
            coordinator: None,
        },
    )
    .await
    .context("starting the store node")?;
    let held = service.node.as_ref().map(|n| n.store().held()).unwrap_or_default();
    println!("Shoal store node `{id}` is running (bus: nats, data: {}, shards on disk: {held:?})", dir.display());
    let _ = tokio::signal::ctrl_c().await;
    tracing::info!("shutting down");
    Ok(())
}

fn print_status(v: &Value) {
    let map = &v["map"];
    let shards = map["shards"].as_array().map_or(0, Vec::len);
    let copies = map["followers"].as_array().and_then(|f| f.first()).and_then(|f| f.as_array()).map_or(0, Vec::len) + 1;
    let replicated = if copies > 1 { format!(", {copies} copies each") } else { String::new() };
    println!("shard map epoch {} (leader term {}), {shards} shards{replicated}", map["epoch"], map["term"]);
    println!("{:<24} {:<6} {:>10} {:<20} {:<12} HELD", "NODE", "ALIVE", "LAST SEEN", "SHARDS", "LEADS");
    for n in v["nodes"].as_array().into_iter().flatten() {
        let list = |field: &str| {
            n[field].as_array().into_iter().flatten().map(|s| s.to_string()).collect::<Vec<_>>().join(",")
        };
        println!(
            "{:<24} {:<6} {:>8}ms {:<20} {:<12} {}",
            n["node"].as_str().unwrap_or(""),
            n["alive"].as_bool().unwrap_or(false),
            n["last_seen_ms"],
            list("shards"),
            list("leads"),
            list("held")
        );
    }
    for (label, m) in [("moving", &v["moving"]), ("last move", &v["last_move"])] {
        if m.is_object() {
            println!("{label}: {}", describe(m));
        }
    }
}

fn describe(m: &Value) -> String {
    let mut text = format!(
        "#{} {} {} → {} shards on `{}`: {}, {} of ~{} keys copied",
        m["id"],
        m["kind"].as_str().unwrap_or(""),
        m["from_shards"],
        m["to_shards"],
        m["node"].as_str().unwrap_or(""),
        m["phase"].as_str().unwrap_or(""),
        m["keys_copied"],
        m["keys_estimated"],
    );
    if let Some(ms) = m["freeze_ms"].as_u64() {
        text.push_str(&format!(", moving keys frozen {ms} ms"));
    }
    if let Some(e) = m["error"].as_str() {
        text.push_str(&format!(", error: {e}"));
    }
    text
}

/// Show a move's progress (a bar on a terminal, a line per second otherwise) until it ends.
async fn follow(client: &Client, started: &Value, no_wait: bool) -> anyhow::Result<()> {
    println!("started: {}", describe(started));
    if no_wait {
        return Ok(());
    }
    let id = started["id"].as_u64().unwrap_or(0);
    let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
    loop {
        tokio::time::sleep(Duration::from_millis(if tty { 200 } else { 1000 })).await;
        let v = client.send(client.http.get(client.url("/v1/store"))).await?;
        let ended = v["last_move"].as_object().is_some() && v["last_move"]["id"].as_u64() == Some(id);
        if ended {
            if tty {
                eprintln!();
            }
            let m = &v["last_move"];
            println!("{}", describe(m));
            if m["phase"] == "failed" {
                bail!("the move failed: {}", m["error"].as_str().unwrap_or("unknown"));
            }
            return Ok(());
        }
        let m = &v["moving"];
        let copied = m["keys_copied"].as_u64().unwrap_or(0);
        let estimated = m["keys_estimated"].as_u64().unwrap_or(0).max(1);
        let share = (copied as f64 / estimated as f64).min(1.0);
        if tty {
            let width = 30;
            let filled = (share * width as f64) as usize;
            eprint!(
                "\r[{}{}] {:>3.0}% {copied}/{estimated} keys, {}   ",
                "#".repeat(filled),
                "-".repeat(width - filled),
                share * 100.0,
                m["phase"].as_str().unwrap_or("")
            );
        } else {
            println!("{}", describe(m));
        }
    }
}
