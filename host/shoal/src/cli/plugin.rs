//! `shoal plugin`: push, activate, roll back, list and delete plugins, and the commands that
//! need no server (`check`, `new`, `test`, `bench`).

use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use serde_json::Value;
use shoal_abi::{AnyPlugin, PluginKind};
use shoal_runtime::{MemoryKv, PluginScope, Runtime, RuntimeConfig};

use super::output::{Table, at};
use super::*;

/// A plugin, named by its kind and name (the same flags on every command).
#[derive(clap::Args, Debug)]
pub(super) struct PluginRef {
    /// Plugin kind.
    #[arg(long, value_enum)]
    kind: Kind,
    /// Plugin name.
    #[arg(long)]
    name: String,
}

#[derive(Subcommand, Debug)]
pub(super) enum PluginCommand {
    /// Upload a component as a new version of a plugin.
    #[command(visible_alias = "create")]
    Push {
        #[command(flatten)]
        plugin: PluginRef,
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
    /// List plugins (kind, name, active version, versions).
    #[command(visible_alias = "ls")]
    List {
        /// Only plugins of this kind.
        #[arg(long, value_enum)]
        kind: Option<Kind>,
        #[command(flatten)]
        remote: Remote,
    },
    /// Show one plugin and its versions.
    #[command(visible_alias = "get")]
    Show {
        #[command(flatten)]
        plugin: PluginRef,
        #[command(flatten)]
        remote: Remote,
    },
    /// Make a version active.
    Activate {
        #[command(flatten)]
        plugin: PluginRef,
        /// The version to activate (as `plugin show` lists them).
        version: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// Return to the previously active version.
    Rollback {
        #[command(flatten)]
        plugin: PluginRef,
        #[command(flatten)]
        remote: Remote,
    },
    /// Delete a version, or the whole plugin.
    #[command(visible_aliases = ["rm", "del"])]
    Delete {
        #[command(flatten)]
        plugin: PluginRef,
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
        #[arg(long, value_enum)]
        kind: Kind,
        /// The component (.wasm).
        file: PathBuf,
        /// The fixture (JSON); see the SDK docs for its shape per kind.
        #[arg(long)]
        input: PathBuf,
    },
}

pub(super) async fn plugin(cmd: PluginCommand) -> anyhow::Result<()> {
    match cmd {
        PluginCommand::New(args) => plugin_sdk::new(args)?,
        PluginCommand::Test(args) => plugin_sdk::test(args).await?,
        PluginCommand::Bench(args) => plugin_sdk::bench(args).await?,
        PluginCommand::Check { kind, file, input } => check(kind.into(), file, input).await?,
        remote_command => served(remote_command).await?,
    }
    Ok(())
}

/// The plugin commands answered by the API.
async fn served(cmd: PluginCommand) -> anyhow::Result<()> {
    match cmd {
        PluginCommand::Push { plugin, version, activate, file, remote } => {
            let (kind, name) = (PluginKind::from(plugin.kind), plugin.name);
            let bytes = std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let out = remote.out;
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
            let version = v["version"].as_str().unwrap_or("?");
            let digest = v["digest"].as_str().unwrap_or("?");
            out.emit_done(&v, version, &format!("pushed {kind} {name} version {version} (sha256 {digest})"));
        }
        PluginCommand::List { kind, remote } => {
            let out = remote.out;
            let client = Client::new(remote)?;
            let mut v = client.send(client.http.get(client.url("/v1/plugins"))).await?;
            if let (Some(kind), Some(list)) = (kind, v["plugins"].as_array_mut()) {
                list.retain(|p| p["kind"] == PluginKind::from(kind).as_str());
            }
            let table = Table::new(&["KIND/NAME", "ACTIVE", "VERSIONS"]).rows(&v["plugins"], |p| {
                vec![
                    format!("{}/{}", at(p, "kind"), at(p, "name")),
                    at(p, "active"),
                    p["versions"].as_array().map_or(0, Vec::len).to_string(),
                ]
            });
            out.emit(&v, table);
        }
        PluginCommand::Show { plugin, remote } => {
            let (kind, name) = (PluginKind::from(plugin.kind), plugin.name);
            let out = remote.out;
            let client = Client::new(remote)?;
            let v = client.send(client.http.get(client.url(&format!("/v1/plugins/{kind}/{name}")))).await?;
            let versions = Table::new(&["VERSION", "DIGEST", "BYTES"])
                .rows(&v["versions"], |x| vec![at(x, "version"), at(x, "digest"), at(x, "size")]);
            out.emit_one(&v, &format!("{kind}/{name}"), &[("versions", versions)]);
        }
        PluginCommand::Activate { plugin, version, remote } => {
            let (kind, name) = (PluginKind::from(plugin.kind), plugin.name);
            let out = remote.out;
            let client = Client::new(remote)?;
            let request = client
                .http
                .post(client.url(&format!("/v1/plugins/{kind}/{name}/activate")))
                .json(&serde_json::json!({ "version": version }));
            let v = client.send(request).await?;
            let version = v["version"].as_str().unwrap_or("?");
            out.emit_done(&v, version, &format!("activated {kind} {name} version {version}"));
        }
        PluginCommand::Rollback { plugin, remote } => {
            let (kind, name) = (PluginKind::from(plugin.kind), plugin.name);
            let out = remote.out;
            let client = Client::new(remote)?;
            let v = client.send(client.http.post(client.url(&format!("/v1/plugins/{kind}/{name}/rollback")))).await?;
            let version = v["version"].as_str().unwrap_or("?");
            out.emit_done(&v, version, &format!("rolled back {kind} {name} to version {version}"));
        }
        PluginCommand::Delete { plugin, version, remote } => {
            let (kind, name) = (PluginKind::from(plugin.kind), plugin.name);
            let out = remote.out;
            let client = Client::new(remote)?;
            let mut request = client.http.delete(client.url(&format!("/v1/plugins/{kind}/{name}")));
            if let Some(v) = &version {
                request = request.query(&[("version", v)]);
            }
            let v = client.send(request).await?;
            let id = format!("{kind}/{name}");
            match version {
                Some(version) => out.emit_done(&v, &id, &format!("deleted version {version} of {kind} {name}")),
                None => out.emit_done(&v, &id, &format!("deleted {kind} {name}")),
            }
        }
        PluginCommand::New(_) | PluginCommand::Test(_) | PluginCommand::Bench(_) | PluginCommand::Check { .. } => {
            unreachable!("answered locally")
        }
    }
    Ok(())
}

/// `shoal plugin check`: run a component on a fixture, locally.
async fn check(kind: PluginKind, file: PathBuf, input: PathBuf) -> anyhow::Result<()> {
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
    Ok(())
}
