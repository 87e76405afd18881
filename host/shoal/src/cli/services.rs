//! `shoal service …` (the service registry) and `shoal route …` (the gateway's routes).

use anyhow::Context;
use clap::Subcommand;
use serde_json::{Value, json};

use super::{Client, Remote, name_values, print};

#[derive(Subcommand, Debug)]
pub(super) enum ServiceCommand {
    /// Every service with its instance counts.
    List {
        #[command(flatten)]
        remote: Remote,
    },
    /// The instances of a service.
    Show {
        /// Service name.
        service: String,
        /// Only passing instances.
        #[arg(long)]
        healthy: bool,
        #[command(flatten)]
        remote: Remote,
    },
    /// Print the service's instances now and after every change (Ctrl-C to stop).
    Watch {
        /// Service name.
        service: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// Register an external instance (renew it with `heartbeat` before its TTL lapses).
    Register {
        /// Service name.
        service: String,
        /// Instance id.
        id: String,
        /// `host:port` of the instance.
        #[arg(long)]
        address: String,
        /// Relative weight for weighted routing rules.
        #[arg(long, default_value_t = 1)]
        weight: u32,
        /// Seconds until the registration lapses without a heartbeat.
        #[arg(long)]
        ttl: Option<u64>,
        /// Labels, `name=value`, repeatable.
        #[arg(long = "label")]
        labels: Vec<String>,
        /// A health check the node runs against the instance, as JSON, e.g.
        /// `{"type":"http","path":"/health","interval_ms":1000,"timeout_ms":500}`.
        #[arg(long)]
        check: Option<String>,
        #[command(flatten)]
        remote: Remote,
    },
    /// Renew an external instance's TTL.
    Heartbeat {
        /// Service name.
        service: String,
        /// Instance id.
        id: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// Remove an instance.
    Deregister {
        /// Service name.
        service: String,
        /// Instance id.
        id: String,
        #[command(flatten)]
        remote: Remote,
    },
}

#[derive(Subcommand, Debug)]
pub(super) enum RouteCommand {
    /// Every route.
    List {
        #[command(flatten)]
        remote: Remote,
    },
    /// Add or replace a route.
    Put {
        /// Route name.
        name: String,
        /// Service that serves it.
        #[arg(long)]
        service: String,
        /// Path prefix (longest wins).
        #[arg(long, default_value = "/")]
        prefix: String,
        /// Host to match (any host when absent).
        #[arg(long)]
        host: Option<String>,
        /// Router plugin that picks the instance.
        #[arg(long, default_value = "round-robin")]
        router: String,
        /// Remove the prefix before forwarding.
        #[arg(long)]
        strip_prefix: bool,
        /// Upstream timeout in milliseconds.
        #[arg(long, default_value_t = 30_000)]
        timeout_ms: u64,
        #[command(flatten)]
        remote: Remote,
    },
    /// Remove a route.
    Delete {
        /// Route name.
        name: String,
        #[command(flatten)]
        remote: Remote,
    },
}

pub(super) async fn service(cmd: ServiceCommand) -> anyhow::Result<()> {
    match cmd {
        ServiceCommand::List { remote } => {
            let c = Client::new(remote)?;
            let v = c.send(c.http.get(c.url("/v1/services"))).await?;
            if v["self_preservation"].as_bool() == Some(true) {
                eprintln!("warning: self-preservation holds (too many registrations lapsed at once; none expire)");
            }
            println!("{:<32} {:>9} {:>8}", "SERVICE", "INSTANCES", "PASSING");
            for s in v["services"].as_array().into_iter().flatten() {
                println!("{:<32} {:>9} {:>8}", s["name"].as_str().unwrap_or(""), s["instances"], s["passing"]);
            }
            Ok(())
        }
        ServiceCommand::Show { service, healthy, remote } => {
            let c = Client::new(remote)?;
            let v =
                c.send(c.http.get(c.url(&format!("/v1/services/{service}"))).query(&[("healthy", healthy)])).await?;
            print_instances(&v);
            Ok(())
        }
        ServiceCommand::Watch { service, remote } => watch(service, remote).await,
        ServiceCommand::Register { service, id, address, weight, ttl, labels, check, remote } => {
            let mut map = serde_json::Map::new();
            for label in labels {
                let (k, v) = label.split_once('=').with_context(|| format!("label `{label}` is not name=value"))?;
                map.insert(k.to_owned(), Value::String(v.to_owned()));
            }
            let check: Option<Value> = match check {
                Some(text) => Some(serde_json::from_str(&text).context("--check is not JSON")?),
                None => None,
            };
            let body =
                json!({ "address": address, "weight": weight, "ttl_seconds": ttl, "labels": map, "check": check });
            let c = Client::new(remote)?;
            let v = c.send(c.http.put(c.url(&format!("/v1/services/{service}/instances/{id}"))).json(&body)).await?;
            print(&v);
            Ok(())
        }
        ServiceCommand::Heartbeat { service, id, remote } => {
            let c = Client::new(remote)?;
            print(&c.send(c.http.put(c.url(&format!("/v1/services/{service}/instances/{id}/heartbeat")))).await?);
            Ok(())
        }
        ServiceCommand::Deregister { service, id, remote } => {
            let c = Client::new(remote)?;
            print(&c.send(c.http.delete(c.url(&format!("/v1/services/{service}/instances/{id}")))).await?);
            Ok(())
        }
    }
}

fn print_instances(v: &Value) {
    println!("{} (index {})", v["service"].as_str().unwrap_or(""), v["index"]);
    println!("{:<24} {:<24} {:<9} {:>6}  {:<24} CHECK", "ID", "ADDRESS", "HEALTH", "WEIGHT", "LABELS");
    for i in v["instances"].as_array().into_iter().flatten() {
        println!(
            "{:<24} {:<24} {:<9} {:>6}  {:<24} {}",
            i["id"].as_str().unwrap_or(""),
            i["address"].as_str().unwrap_or(""),
            i["health"].as_str().unwrap_or(""),
            i["weight"],
            name_values(&i["labels"]),
            i["health_output"].as_str().unwrap_or("")
        );
    }
}

async fn watch(service: String, remote: Remote) -> anyhow::Result<()> {
    let c = Client::new(remote)?;
    let request = c.http.get(c.url(&format!("/v1/services/{service}/watch")));
    c.each_event(request, |data| {
        if let Ok(v) = serde_json::from_str::<Value>(data) {
            print_instances(&v);
            println!();
        }
    })
    .await
}

pub(super) async fn route(cmd: RouteCommand) -> anyhow::Result<()> {
    match cmd {
        RouteCommand::List { remote } => {
            let c = Client::new(remote)?;
            let v = c.send(c.http.get(c.url("/v1/routes"))).await?;
            println!("{:<20} {:<24} {:<20} {:<16} {:<22}", "ROUTE", "HOST", "PREFIX", "SERVICE", "ROUTER");
            for r in v["routes"].as_array().into_iter().flatten() {
                println!(
                    "{:<20} {:<24} {:<20} {:<16} {:<22}",
                    r["name"].as_str().unwrap_or(""),
                    r["host"].as_str().unwrap_or("*"),
                    r["path_prefix"].as_str().unwrap_or(""),
                    r["service"].as_str().unwrap_or(""),
                    r["router"].as_str().unwrap_or("")
                );
            }
            Ok(())
        }
        RouteCommand::Put { name, service, prefix, host, router, strip_prefix, timeout_ms, remote } => {
            let body = json!({ "service": service, "path_prefix": prefix, "host": host, "router": router,
                "strip_prefix": strip_prefix, "timeout_ms": timeout_ms });
            let c = Client::new(remote)?;
            print(&c.send(c.http.put(c.url(&format!("/v1/routes/{name}"))).json(&body)).await?);
            Ok(())
        }
        RouteCommand::Delete { name, remote } => {
            let c = Client::new(remote)?;
            c.send(c.http.delete(c.url(&format!("/v1/routes/{name}")))).await?;
            println!("route {name} deleted");
            Ok(())
        }
    }
}
