//! `shoal plugin`: push, activate, roll back, list and delete plugins, and the commands that
//! need no server (`check`, `new`, `test`, `bench`).

use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use serde_json::Value;
use shoal_abi::AnyPlugin;
use shoal_runtime::{MemoryKv, PluginScope, Runtime, RuntimeConfig};

use super::*;

#[derive(Subcommand, Debug)]
pub(super) enum PluginCommand {
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

pub(super) async fn plugin(cmd: PluginCommand) -> anyhow::Result<()> {
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
