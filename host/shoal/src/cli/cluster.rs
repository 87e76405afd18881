//! `shoal task …`, `shoal framework …`, `shoal app …` and `shoal job …`: the master's tasks and
//! frameworks, and the service and batch frameworks' APIs behind `/v1/apps` and `/v1/jobs`.

use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use serde_json::{Value, json};

use super::output::{Table, at};
use super::wait::{Wait, follow_logs, wait_for_app};
use super::{Client, Remote};

#[derive(Subcommand, Debug)]
pub(super) enum TaskCommand {
    /// Every task the master knows (live ones, finished ones for a few minutes).
    #[command(visible_alias = "ls")]
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
    /// One task.
    #[command(visible_alias = "get")]
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
    /// What a task wrote (the newest bytes its agent kept); `-f` follows until it ends.
    Logs {
        /// Task id.
        id: String,
        /// Read stderr instead of stdout.
        #[arg(long)]
        stderr: bool,
        /// At most this many bytes.
        #[arg(long)]
        tail: Option<usize>,
        /// Keep printing what the task writes until it ends (or Ctrl-C).
        #[arg(short, long)]
        follow: bool,
        #[command(flatten)]
        remote: Remote,
    },
}

#[derive(Subcommand, Debug)]
pub(super) enum FrameworkCommand {
    /// Every framework with its tasks, offers and allocation.
    #[command(visible_alias = "ls")]
    List {
        #[command(flatten)]
        remote: Remote,
    },
    /// One framework: role, weight, quota, plugin, offers, allocation.
    #[command(visible_alias = "get")]
    Show {
        /// Framework name.
        name: String,
        #[command(flatten)]
        remote: Remote,
    },
}

#[derive(Subcommand, Debug)]
pub(super) enum AppCommand {
    /// Create or update an app from a JSON definition (a changed definition rolls out as a new
    /// version).
    #[command(visible_aliases = ["create", "put"])]
    Deploy {
        /// The definition (`-` reads stdin); its `id` names the app.
        file: PathBuf,
        #[command(flatten)]
        wait: Wait,
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
        wait: Wait,
        #[command(flatten)]
        remote: Remote,
    },
    /// Every app with its counts.
    #[command(visible_alias = "ls")]
    List {
        #[command(flatten)]
        remote: Remote,
    },
    /// One app: definition, tasks, deployment, why it waits.
    #[command(visible_alias = "get")]
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
        wait: Wait,
        #[command(flatten)]
        remote: Remote,
    },
    /// Stop every instance and forget the app.
    #[command(visible_aliases = ["rm", "del"])]
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
    #[command(visible_alias = "create")]
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
    #[command(visible_alias = "ls")]
    List {
        #[command(flatten)]
        remote: Remote,
    },
    /// One job with its recent runs.
    #[command(visible_alias = "get")]
    Show {
        /// Job id.
        id: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// Forget a job.
    #[command(visible_aliases = ["rm", "del"])]
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

/// The ports of a task's resources, `31000,31002-31003`.
fn ports(t: &Value) -> String {
    let ports: Vec<String> = t["resources"]["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            let (b, e) = (r["begin"].as_u64().unwrap_or(0), r["end"].as_u64().unwrap_or(0));
            if b == e { b.to_string() } else { format!("{b}-{e}") }
        })
        .collect();
    ports.join(",")
}

/// The cells of a task (`task list`).
fn task_row(t: &Value) -> Vec<String> {
    let health = match t["healthy"].as_bool() {
        Some(true) => "healthy",
        Some(false) => "failing",
        None => "-",
    };
    vec![at(t, "id"), at(t, "framework"), at(t, "state"), health.into(), at(t, "agent_id"), ports(t), at(t, "message")]
}

pub(super) async fn task(cmd: TaskCommand) -> anyhow::Result<()> {
    match cmd {
        TaskCommand::List { framework, service, state, remote } => {
            let out = remote.out;
            let c = Client::new(remote)?;
            let mut query = Vec::new();
            for (k, v) in [("framework", framework), ("service", service), ("state", state)] {
                if let Some(v) = v {
                    query.push((k, v));
                }
            }
            let v = c.send(c.http.get(c.url("/v1/tasks")).query(&query)).await?;
            let header = ["ID", "FRAMEWORK", "STATE", "HEALTH", "AGENT", "PORTS", "MESSAGE"];
            out.emit(&v, Table::new(&header).rows(&v["tasks"], task_row));
        }
        TaskCommand::Show { id, remote } => {
            let out = remote.out;
            let c = Client::new(remote)?;
            let v = c.send(c.http.get(c.url(&format!("/v1/tasks/{id}")))).await?;
            out.emit_one(&v, &id, &[]);
        }
        TaskCommand::Kill { id, remote } => {
            let out = remote.out;
            let c = Client::new(remote)?;
            let v = c.send(c.http.post(c.url(&format!("/v1/tasks/{id}/kill")))).await?;
            out.emit_done(&v, &id, &format!("kill sent to task {id}"));
        }
        TaskCommand::Logs { id, stderr, tail, follow, remote } => {
            let c = Client::new(remote)?;
            let stream = if stderr { "stderr" } else { "stdout" };
            if follow {
                return follow_logs(&c, &id, stream, tail).await;
            }
            let mut query = vec![("stream", stream.to_owned())];
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

/// The cells of a framework (`framework list`).
fn framework_row(f: &Value) -> Vec<String> {
    let allocated: shoal_protocol::Resources = serde_json::from_value(f["allocated"].clone()).unwrap_or_default();
    let state = if f["suppressed"].as_bool().unwrap_or(false) { "suppressed" } else { "active" };
    vec![
        at(f, "name"),
        at(f, "role"),
        at(f, "weight"),
        at(f, "tasks"),
        at(f, "offers"),
        state.into(),
        allocated.to_string(),
    ]
}

pub(super) async fn framework(cmd: FrameworkCommand) -> anyhow::Result<()> {
    let header = ["NAME", "ROLE", "WEIGHT", "TASKS", "OFFERS", "STATE", "ALLOCATED"];
    match cmd {
        FrameworkCommand::List { remote } => {
            let out = remote.out;
            let c = Client::new(remote)?;
            let v = c.send(c.http.get(c.url("/v1/frameworks"))).await?;
            out.emit(&v, Table::new(&header).rows(&v["frameworks"], framework_row));
        }
        FrameworkCommand::Show { name, remote } => {
            let out = remote.out;
            let c = Client::new(remote)?;
            let f = c.find_in_list("/v1/frameworks", "frameworks", "name", &name, "framework").await?;
            out.emit_one(&f, &name, &[]);
        }
    }
    Ok(())
}

/// The cells of an app (`app list`).
fn app_row(a: &Value) -> Vec<String> {
    let cells = ["id", "status", "instances", "running", "healthy", "version", "waiting"];
    cells.iter().map(|f| at(a, f)).collect()
}

/// Send an app change and, with `--wait`, follow its deployment until it is done.
async fn change_app(
    c: &Client,
    id: &str,
    request: reqwest::RequestBuilder,
    wait: Wait,
    verb: &str,
) -> anyhow::Result<()> {
    let out = c.out;
    let v = c.send(request).await?;
    if wait.wait {
        return wait_for_app(c, id, &v, wait).await;
    }
    let version = at(&v, "version");
    out.emit_done(&v, id, &format!("app {id} {verb}: version {version}, status {}", at(&v, "status")));
    Ok(())
}

pub(super) async fn app(cmd: AppCommand) -> anyhow::Result<()> {
    match cmd {
        AppCommand::Deploy { file, wait, remote } => {
            let (id, body) = read_definition(&file)?;
            let c = Client::new(remote)?;
            let url = c.url(&format!("/v1/apps/{id}"));
            let request = c.http.put(url).header("content-type", "application/json").body(body);
            change_app(&c, &id, request, wait, "deployed").await?;
        }
        AppCommand::Scale { id, instances, wait, remote } => {
            let c = Client::new(remote)?;
            let request = c.http.post(c.url(&format!("/v1/apps/{id}/scale"))).json(&json!({ "instances": instances }));
            change_app(&c, &id, request, wait, &format!("scaled to {instances}")).await?;
        }
        AppCommand::Restart { id, wait, remote } => {
            let c = Client::new(remote)?;
            let request = c.http.post(c.url(&format!("/v1/apps/{id}/restart")));
            change_app(&c, &id, request, wait, "restarting").await?;
        }
        AppCommand::List { remote } => {
            let out = remote.out;
            let c = Client::new(remote)?;
            let v = c.send(c.http.get(c.url("/v1/apps"))).await?;
            let header = ["ID", "STATUS", "INSTANCES", "RUNNING", "HEALTHY", "VERSION", "WAITING"];
            out.emit(&v, Table::new(&header).rows(&v["apps"], app_row));
        }
        AppCommand::Show { id, remote } => {
            let out = remote.out;
            let c = Client::new(remote)?;
            let v = c.send(c.http.get(c.url(&format!("/v1/apps/{id}")))).await?;
            let tasks = Table::new(&["TASK", "VERSION", "STATE", "HEALTHY", "HOST", "PORTS", "MESSAGE"]).rows(
                &v["tasks"],
                |t| {
                    ["id", "version", "state", "healthy", "host", "ports", "message"].iter().map(|f| at(t, f)).collect()
                },
            );
            out.emit_one(&v, &id, &[("tasks", tasks)]);
        }
        AppCommand::Delete { id, remote } => {
            let out = remote.out;
            let c = Client::new(remote)?;
            let v = c.send(c.http.delete(c.url(&format!("/v1/apps/{id}")))).await?;
            out.emit_done(&v, &id, &format!("app {id} is being deleted"));
        }
    }
    Ok(())
}

pub(super) async fn job(cmd: JobCommand) -> anyhow::Result<()> {
    match cmd {
        JobCommand::Put { file, remote } => {
            let (id, body) = read_definition(&file)?;
            let out = remote.out;
            let c = Client::new(remote)?;
            let url = c.url(&format!("/v1/jobs/{id}"));
            let v = c.send(c.http.put(url).header("content-type", "application/json").body(body)).await?;
            out.emit_done(&v, &id, &format!("job {id} saved"));
        }
        JobCommand::Run { id, remote } => {
            let out = remote.out;
            let c = Client::new(remote)?;
            let v = c.send(c.http.post(c.url(&format!("/v1/jobs/{id}/run")))).await?;
            out.emit_done(&v, &id, &format!("job {id}: run started"));
        }
        JobCommand::List { remote } => {
            let out = remote.out;
            let c = Client::new(remote)?;
            let v = c.send(c.http.get(c.url("/v1/jobs"))).await?;
            let table = Table::new(&["ID", "SCHEDULE", "LAST RUN"]).rows(&v["jobs"], |j| {
                let last = &j["last_run"];
                let last = if last.is_object() {
                    format!("#{} {}", at(last, "run"), at(last, "state"))
                } else {
                    at(j, "last_run")
                };
                vec![at(j, "id"), at(j, "schedule"), last]
            });
            out.emit(&v, table);
        }
        JobCommand::Show { id, remote } => {
            let out = remote.out;
            let c = Client::new(remote)?;
            let v = c.send(c.http.get(c.url(&format!("/v1/jobs/{id}")))).await?;
            let runs = Table::new(&["RUN", "STATE", "ATTEMPTS", "TASK", "MESSAGE"]).rows(&v["runs"], |r| {
                ["run", "state", "attempts", "task_id", "message"].iter().map(|f| at(r, f)).collect()
            });
            out.emit_one(&v, &id, &[("runs", runs)]);
        }
        JobCommand::Delete { id, remote } => {
            let out = remote.out;
            let c = Client::new(remote)?;
            let v = c.send(c.http.delete(c.url(&format!("/v1/jobs/{id}")))).await?;
            out.emit_done(&v, &id, &format!("job {id} deleted"));
        }
    }
    Ok(())
}

#[derive(Subcommand, Debug)]
pub(super) enum ArtifactCommand {
    /// Upload a Wasm component; prints its digest (use it as `"wasm": "<digest>"` in apps and
    /// jobs).
    #[command(visible_alias = "create")]
    Push {
        /// The component (.wasm).
        file: PathBuf,
        #[command(flatten)]
        remote: Remote,
    },
    /// Every artifact.
    #[command(visible_alias = "ls")]
    List {
        #[command(flatten)]
        remote: Remote,
    },
    /// One artifact: digest and size.
    #[command(visible_alias = "get")]
    Show {
        /// Its digest.
        digest: String,
        #[command(flatten)]
        remote: Remote,
    },
}

pub(super) async fn artifact(cmd: ArtifactCommand) -> anyhow::Result<()> {
    match cmd {
        ArtifactCommand::Push { file, remote } => {
            let bytes = std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let out = remote.out;
            let c = Client::new(remote)?;
            let v = c
                .send(c.http.post(c.url("/v1/artifacts")).header("content-type", "application/wasm").body(bytes))
                .await?;
            let digest = at(&v, "digest");
            // The digest alone is what scripts put in a definition: printed bare for people too.
            out.emit_done(&v, &digest, &digest);
        }
        ArtifactCommand::List { remote } => {
            let out = remote.out;
            let c = Client::new(remote)?;
            let v = c.send(c.http.get(c.url("/v1/artifacts"))).await?;
            out.emit(
                &v,
                Table::new(&["DIGEST", "BYTES"]).rows(&v["artifacts"], |a| vec![at(a, "digest"), at(a, "size")]),
            );
        }
        ArtifactCommand::Show { digest, remote } => {
            let out = remote.out;
            let c = Client::new(remote)?;
            let a = c.find_in_list("/v1/artifacts", "artifacts", "digest", &digest, "artifact").await?;
            out.emit_one(&a, &digest, &[]);
        }
    }
    Ok(())
}

#[derive(Subcommand, Debug)]
pub(super) enum AllocatorCommand {
    /// The allocator plugin the master uses.
    #[command(visible_alias = "get")]
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
            let out = remote.out;
            let c = Client::new(remote)?;
            let v = c.send(c.http.get(c.url("/v1/allocator"))).await?;
            let plugin = at(&v, "plugin");
            // `allocator show` has always printed the bare name: scripts read it.
            out.emit_done(&v, &plugin, &plugin);
        }
        AllocatorCommand::Use { plugin, remote } => {
            let out = remote.out;
            let c = Client::new(remote)?;
            let v = c.send(c.http.put(c.url("/v1/allocator")).json(&json!({ "plugin": plugin }))).await?;
            out.emit_done(&v, &plugin, &format!("allocator: {} (was {})", plugin, at(&v, "previous")));
        }
    }
    Ok(())
}
