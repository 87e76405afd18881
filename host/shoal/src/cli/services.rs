//! `shoal service …` (the service registry) and `shoal route …` (the gateway's routes).

use anyhow::Context;
use clap::Subcommand;
use serde_json::{Value, json};

use super::output::{Format, Table, at};
use super::{Client, Remote, name_values};

#[derive(Subcommand, Debug)]
pub(super) enum ServiceCommand {
    /// Every service with its instance counts.
    #[command(visible_alias = "ls")]
    List {
        #[command(flatten)]
        remote: Remote,
    },
    /// The instances of a service.
    #[command(visible_alias = "get")]
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
    #[command(visible_aliases = ["create", "put"])]
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
    #[command(visible_aliases = ["delete", "rm", "del"])]
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
    #[command(visible_alias = "ls")]
    List {
        #[command(flatten)]
        remote: Remote,
    },
    /// One route.
    #[command(visible_alias = "get")]
    Show {
        /// Route name.
        name: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// Add or replace a route.
    #[command(visible_alias = "create")]
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
    #[command(visible_aliases = ["rm", "del"])]
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
            let out = remote.out;
            let c = Client::new(remote)?;
            let v = c.send(c.http.get(c.url("/v1/services"))).await?;
            if v["self_preservation"].as_bool() == Some(true) {
                eprintln!("warning: self-preservation holds (too many registrations lapsed at once; none expire)");
            }
            let table = Table::new(&["SERVICE", "INSTANCES", "PASSING"])
                .rows(&v["services"], |s| vec![at(s, "name"), at(s, "instances"), at(s, "passing")]);
            out.emit(&v, table);
        }
        ServiceCommand::Show { service, healthy, remote } => {
            let out = remote.out;
            let c = Client::new(remote)?;
            let v =
                c.send(c.http.get(c.url(&format!("/v1/services/{service}"))).query(&[("healthy", healthy)])).await?;
            if out.quiet {
                instances(&v).ids().iter().for_each(|id| println!("{id}"));
            } else {
                out.emit_one(&v, &service, &[("instances", instances(&v))]);
            }
        }
        ServiceCommand::Watch { service, remote } => watch(service, remote).await?,
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
            let out = remote.out;
            let c = Client::new(remote)?;
            let v = c.send(c.http.put(c.url(&format!("/v1/services/{service}/instances/{id}"))).json(&body)).await?;
            out.emit_done(&v, &id, &format!("registered {service}/{id} at {address}"));
        }
        ServiceCommand::Heartbeat { service, id, remote } => {
            let out = remote.out;
            let c = Client::new(remote)?;
            let v = c.send(c.http.put(c.url(&format!("/v1/services/{service}/instances/{id}/heartbeat")))).await?;
            out.emit_done(&v, &id, &format!("renewed {service}/{id}"));
        }
        ServiceCommand::Deregister { service, id, remote } => {
            let out = remote.out;
            let c = Client::new(remote)?;
            let v = c.send(c.http.delete(c.url(&format!("/v1/services/{service}/instances/{id}")))).await?;
            out.emit_done(&v, &id, &format!("deregistered {service}/{id}"));
        }
    }
    Ok(())
}

/// A service's instances as a table.
fn instances(v: &Value) -> Table {
    Table::new(&["ID", "ADDRESS", "HEALTH", "WEIGHT", "LABELS", "CHECK"]).rows(&v["instances"], |i| {
        vec![
            at(i, "id"),
            at(i, "address"),
            at(i, "health"),
            at(i, "weight"),
            name_values(&i["labels"]),
            at(i, "health_output"),
        ]
    })
}

async fn watch(service: String, remote: Remote) -> anyhow::Result<()> {
    let out = remote.out;
    let c = Client::new(remote)?;
    let request = c.http.get(c.url(&format!("/v1/services/{service}/watch")));
    c.each_event(request, |data| {
        if let Ok(v) = serde_json::from_str::<Value>(data) {
            match out.format {
                // One JSON document per line: a stream a script reads line by line.
                Format::Json if !out.quiet => println!("{v}"),
                _ => {
                    if out.for_people() {
                        println!("{} (index {})", at(&v, "service"), v["index"]);
                    }
                    out.emit(&v, instances(&v));
                    if out.for_people() {
                        println!();
                    }
                }
            }
        }
    })
    .await
}

pub(super) async fn route(cmd: RouteCommand) -> anyhow::Result<()> {
    match cmd {
        RouteCommand::List { remote } => {
            let out = remote.out;
            let c = Client::new(remote)?;
            let v = c.send(c.http.get(c.url("/v1/routes"))).await?;
            let table = Table::new(&["ROUTE", "HOST", "PREFIX", "SERVICE", "ROUTER"]).rows(&v["routes"], |r| {
                let host = r["host"].as_str().unwrap_or("*").to_owned();
                vec![at(r, "name"), host, at(r, "path_prefix"), at(r, "service"), at(r, "router")]
            });
            out.emit(&v, table);
        }
        RouteCommand::Show { name, remote } => {
            let out = remote.out;
            let c = Client::new(remote)?;
            let v = c.send(c.http.get(c.url(&format!("/v1/routes/{name}")))).await?;
            out.emit_one(&v, &name, &[]);
        }
        RouteCommand::Put { name, service, prefix, host, router, strip_prefix, timeout_ms, remote } => {
            let body = json!({ "service": service, "path_prefix": prefix, "host": host, "router": router,
                "strip_prefix": strip_prefix, "timeout_ms": timeout_ms });
            let out = remote.out;
            let c = Client::new(remote)?;
            let v = c.send(c.http.put(c.url(&format!("/v1/routes/{name}"))).json(&body)).await?;
            out.emit_done(&v, &name, &format!("route {name}: {prefix} → {service} ({router})"));
        }
        RouteCommand::Delete { name, remote } => {
            let out = remote.out;
            let c = Client::new(remote)?;
            let v = c.send(c.http.delete(c.url(&format!("/v1/routes/{name}")))).await?;
            out.emit_done(&v, &name, &format!("route {name} deleted"));
        }
    }
    Ok(())
}
