//! `shoal task …`, `shoal framework …`, `shoal app …` and `shoal job …`: the master's tasks and
//! frameworks, and the service and batch frameworks' APIs behind `/v1/apps` and `/v1/jobs`.

use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use serde_json::{Value, json};

use super::{Client, Remote, print};

#[derive(Subcommand, Debug)]
pub(super) enum TaskCommand {
    /// Every task the master knows (live ones, finished ones for a few minutes).
    List {
        /// Only tasks of this framework.
        #[arg(long)]
        framework: Option<String>,
        /// Only instances of this service (app).
        #[arg(long)]
        service: Option<String>,
        /// Only tasks in this state (`running`, `failed`, …).
        #[arg(long)]
        state: Option<String>,
        #[command(flatten)]
        remote: Remote,
    },
    /// One task, as JSON.
    Show {
        /// Task id.
        id: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// Kill a task (SIGTERM, then SIGKILL after the agent's grace period).
    Kill {
        /// Task id.
        id: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// What a task wrote (the newest bytes its agent kept).
    Logs {
        /// Task id.
        id: String,
        /// Read stderr instead of stdout.
        #[arg(long)]
        stderr: bool,
        /// At most this many bytes.
        #[arg(long)]
        tail: Option<usize>,
        #[command(flatten)]
        remote: Remote,
    },
}

#[derive(Subcommand, Debug)]
pub(super) enum FrameworkCommand {
    /// Every framework with its tasks, offers and allocation.
    List {
        #[command(flatten)]
        remote: Remote,
    },
}

#[derive(Subcommand, Debug)]
pub(super) enum AppCommand {
    /// Create or update an app from a JSON definition (a changed definition rolls out as a new
    /// version).
    Deploy {
        /// The definition (`-` reads stdin); its `id` names the app.
        file: PathBuf,
        #[command(flatten)]
        remote: Remote,
    },
    /// Change the number of instances.
    Scale {
        /// App id.
        id: String,
        /// Instances wanted.
        instances: u32,
        #[command(flatten)]
        remote: Remote,
    },
    /// Every app with its counts.
    List {
        #[command(flatten)]
        remote: Remote,
    },
    /// One app: definition, tasks, deployment, why it waits.
    Show {
        /// App id.
        id: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// Restart every instance (a rolling deploy of the same definition).
    Restart {
        /// App id.
        id: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// Stop every instance and forget the app.
    Delete {
        /// App id.
        id: String,
        #[command(flatten)]
        remote: Remote,
    },
}

#[derive(Subcommand, Debug)]
pub(super) enum JobCommand {
    /// Create or update a job from a JSON definition.
    Put {
        /// The definition (`-` reads stdin); its `id` names the job.
        file: PathBuf,
        #[command(flatten)]
        remote: Remote,
    },
    /// Start a run now.
    Run {
        /// Job id.
        id: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// Every job.
    List {
        #[command(flatten)]
        remote: Remote,
    },
    /// One job with its recent runs.
    Show {
        /// Job id.
        id: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// Forget a job.
    Delete {
        /// Job id.
        id: String,
        #[command(flatten)]
        remote: Remote,
    },
}

fn read_definition(file: &PathBuf) -> anyhow::Result<(String, Vec<u8>)> {
    let bytes = if file.as_os_str() == "-" {
        let mut buf = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf)?;
        buf
    } else {
        std::fs::read(file).with_context(|| format!("reading {}", file.display()))?
    };
    let v: Value = serde_json::from_slice(&bytes).context("the definition is not JSON")?;
    let id = v["id"].as_str().context("the definition has no \"id\"")?.to_owned();
    Ok((id, bytes))
}

pub(super) async fn task(cmd: TaskCommand) -> anyhow::Result<()> {
    match cmd {
        TaskCommand::List { framework, service, state, remote } => {
            let c = Client::new(remote)?;
            let mut query = Vec::new();
            for (k, v) in [("framework", framework), ("service", service), ("state", state)] {
                if let Some(v) = v {
                    query.push((k, v));
                }
            }
            let v = c.send(c.http.get(c.url("/v1/tasks")).query(&query)).await?;
            println!(
                "{:<28} {:<10} {:<9} {:<8} {:<12} {:<18} MESSAGE",
                "ID", "FRAMEWORK", "STATE", "HEALTH", "AGENT", "PORTS"
            );
            for t in v["tasks"].as_array().into_iter().flatten() {
                let health = match t["healthy"].as_bool() {
                    Some(true) => "healthy",
                    Some(false) => "failing",
                    None => "-",
                };
                let ports: Vec<String> = t["resources"]["ports"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|r| {
                        let (b, e) = (r["begin"].as_u64().unwrap_or(0), r["end"].as_u64().unwrap_or(0));
                        if b == e { b.to_string() } else { format!("{b}-{e}") }
                    })
                    .collect();
                println!(
                    "{:<28} {:<10} {:<9} {:<8} {:<12} {:<18} {}",
                    t["id"].as_str().unwrap_or(""),
                    t["framework"].as_str().unwrap_or(""),
                    t["state"].as_str().unwrap_or(""),
                    health,
                    t["agent_id"].as_str().unwrap_or(""),
                    ports.join(","),
                    t["message"].as_str().unwrap_or("")
                );
            }
        }
        TaskCommand::Show { id, remote } => {
            let c = Client::new(remote)?;
            print(&c.send(c.http.get(c.url(&format!("/v1/tasks/{id}")))).await?);
        }
        TaskCommand::Kill { id, remote } => {
            let c = Client::new(remote)?;
            c.send(c.http.post(c.url(&format!("/v1/tasks/{id}/kill")))).await?;
            println!("kill sent to task {id}");
        }
        TaskCommand::Logs { id, stderr, tail, remote } => {
            let c = Client::new(remote)?;
            let mut query = vec![("stream", if stderr { "stderr".to_owned() } else { "stdout".to_owned() })];
            if let Some(n) = tail {
                query.push(("tail", n.to_string()));
            }
            let (body, headers) = c.send_raw(c.http.get(c.url(&format!("/v1/tasks/{id}/logs"))).query(&query)).await?;
            if let Some(dropped) = headers.get("x-shoal-dropped").and_then(|v| v.to_str().ok()).filter(|d| *d != "0") {
                eprintln!("({dropped} older bytes not kept)");
            }
            use std::io::Write;
            std::io::stdout().write_all(&body)?;
        }
    }
    Ok(())
}

pub(super) async fn framework(cmd: FrameworkCommand) -> anyhow::Result<()> {
    match cmd {
        FrameworkCommand::List { remote } => {
            let c = Client::new(remote)?;
            let v = c.send(c.http.get(c.url("/v1/frameworks"))).await?;
            println!(
                "{:<16} {:<12} {:>6} {:>6} {:>7} {:<10} ALLOCATED",
                "NAME", "ROLE", "WEIGHT", "TASKS", "OFFERS", "STATE"
            );
            for f in v["frameworks"].as_array().into_iter().flatten() {
                let allocated: shoal_protocol::Resources =
                    serde_json::from_value(f["allocated"].clone()).unwrap_or_default();
                println!(
                    "{:<16} {:<12} {:>6} {:>6} {:>7} {:<10} {}",
                    f["name"].as_str().unwrap_or(""),
                    f["role"].as_str().unwrap_or(""),
                    f["weight"].as_f64().unwrap_or(0.0),
                    f["tasks"].as_u64().unwrap_or(0),
                    f["offers"].as_u64().unwrap_or(0),
                    if f["suppressed"].as_bool().unwrap_or(false) { "suppressed" } else { "active" },
                    allocated
                );
            }
        }
    }
    Ok(())
}

pub(super) async fn app(cmd: AppCommand) -> anyhow::Result<()> {
    match cmd {
        AppCommand::Deploy { file, remote } => {
            let (id, body) = read_definition(&file)?;
            let c = Client::new(remote)?;
            let v = c
                .send(
                    c.http.put(c.url(&format!("/v1/apps/{id}"))).header("content-type", "application/json").body(body),
                )
                .await?;
            print(&v);
        }
        AppCommand::Scale { id, instances, remote } => {
            let c = Client::new(remote)?;
            print(
                &c.send(c.http.post(c.url(&format!("/v1/apps/{id}/scale"))).json(&json!({ "instances": instances })))
                    .await?,
            );
        }
        AppCommand::List { remote } => {
            let c = Client::new(remote)?;
            let v = c.send(c.http.get(c.url("/v1/apps"))).await?;
            let apps = v["apps"].as_array().cloned().or_else(|| v.as_array().cloned()).unwrap_or_default();
            println!("{:<24} {:>9} {:>8} {:>8} {:<24} WAITING", "ID", "INSTANCES", "RUNNING", "HEALTHY", "VERSION");
            for a in apps {
                println!(
                    "{:<24} {:>9} {:>8} {:>8} {:<24} {}",
                    a["id"].as_str().unwrap_or(""),
                    a["instances"].as_u64().unwrap_or(0),
                    a["running"].as_u64().unwrap_or(0),
                    a["healthy"].as_u64().unwrap_or(0),
                    a["version"].as_str().unwrap_or(""),
                    a["waiting"].as_str().unwrap_or("")
                );
            }
        }
        AppCommand::Show { id, remote } => {
            let c = Client::new(remote)?;
            print(&c.send(c.http.get(c.url(&format!("/v1/apps/{id}")))).await?);
        }
        AppCommand::Restart { id, remote } => {
            let c = Client::new(remote)?;
            print(&c.send(c.http.post(c.url(&format!("/v1/apps/{id}/restart")))).await?);
        }
        AppCommand::Delete { id, remote } => {
            let c = Client::new(remote)?;
            print(&c.send(c.http.delete(c.url(&format!("/v1/apps/{id}")))).await?);
        }
    }
    Ok(())
}

pub(super) async fn job(cmd: JobCommand) -> anyhow::Result<()> {
    match cmd {
        JobCommand::Put { file, remote } => {
            let (id, body) = read_definition(&file)?;
            let c = Client::new(remote)?;
            print(
                &c.send(
                    c.http.put(c.url(&format!("/v1/jobs/{id}"))).header("content-type", "application/json").body(body),
                )
                .await?,
            );
        }
        JobCommand::Run { id, remote } => {
            let c = Client::new(remote)?;
            print(&c.send(c.http.post(c.url(&format!("/v1/jobs/{id}/run")))).await?);
        }
        JobCommand::List { remote } => {
            let c = Client::new(remote)?;
            print(&c.send(c.http.get(c.url("/v1/jobs"))).await?);
        }
        JobCommand::Show { id, remote } => {
            let c = Client::new(remote)?;
            print(&c.send(c.http.get(c.url(&format!("/v1/jobs/{id}")))).await?);
        }
        JobCommand::Delete { id, remote } => {
            let c = Client::new(remote)?;
            print(&c.send(c.http.delete(c.url(&format!("/v1/jobs/{id}")))).await?);
        }
    }
    Ok(())
}

#[derive(Subcommand, Debug)]
pub(super) enum ArtifactCommand {
    /// Upload a Wasm component; prints its digest (use it as `"wasm": "<digest>"` in apps and
    /// jobs).
    Push {
        /// The component (.wasm).
        file: PathBuf,
        #[command(flatten)]
        remote: Remote,
    },
    /// Every artifact.
    List {
        #[command(flatten)]
        remote: Remote,
    },
}

pub(super) async fn artifact(cmd: ArtifactCommand) -> anyhow::Result<()> {
    match cmd {
        ArtifactCommand::Push { file, remote } => {
            let bytes = std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let c = Client::new(remote)?;
            let v = c
                .send(c.http.post(c.url("/v1/artifacts")).header("content-type", "application/wasm").body(bytes))
                .await?;
            println!("{}", v["digest"].as_str().unwrap_or_default());
        }
        ArtifactCommand::List { remote } => {
            let c = Client::new(remote)?;
            let v = c.send(c.http.get(c.url("/v1/artifacts"))).await?;
            println!("{:<64} {:>10}", "DIGEST", "BYTES");
            for a in v["artifacts"].as_array().into_iter().flatten() {
                println!("{:<64} {:>10}", a["digest"].as_str().unwrap_or(""), a["size"].as_u64().unwrap_or(0));
            }
        }
    }
    Ok(())
}

#[derive(Subcommand, Debug)]
pub(super) enum AllocatorCommand {
    /// The allocator plugin the master uses.
    Show {
        #[command(flatten)]
        remote: Remote,
    },
    /// Switch to another (active) allocator plugin, live.
    Use {
        /// Plugin name, e.g. `binpack` or `drf`.
        plugin: String,
        #[command(flatten)]
        remote: Remote,
    },
}

pub(super) async fn allocator(cmd: AllocatorCommand) -> anyhow::Result<()> {
    match cmd {
        AllocatorCommand::Show { remote } => {
            let c = Client::new(remote)?;
            println!("{}", c.send(c.http.get(c.url("/v1/allocator"))).await?["plugin"].as_str().unwrap_or(""));
        }
        AllocatorCommand::Use { plugin, remote } => {
            let c = Client::new(remote)?;
            let v = c.send(c.http.put(c.url("/v1/allocator")).json(&json!({ "plugin": plugin }))).await?;
            println!("allocator: {} (was {})", plugin, v["previous"].as_str().unwrap_or(""));
        }
    }
    Ok(())
}
