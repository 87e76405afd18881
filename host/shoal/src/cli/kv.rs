//! `shoal kv`: read, write, list and watch the state store.

use anyhow::{Context, bail};
use clap::Subcommand;
use serde_json::Value;

use super::output::{Format, Table, at};
use super::*;

#[derive(Subcommand, Debug)]
pub(super) enum KvCommand {
    /// Print a value (raw bytes on stdout, its version on stderr; `-o json`: key, version and
    /// value as JSON).
    #[command(visible_alias = "show")]
    Get {
        /// Namespace.
        ns: String,
        /// Key.
        key: String,
        /// A stale read: any copy of a replicated shard answers with what it has applied (how
        /// far behind it was is printed with the version).
        #[arg(long)]
        stale: bool,
        #[command(flatten)]
        remote: Remote,
    },
    /// Write a value (from the argument, or stdin without one).
    #[command(visible_alias = "create")]
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
    #[command(visible_aliases = ["del", "rm"])]
    Delete {
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
    #[command(visible_alias = "ls")]
    List {
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

pub(super) async fn kv(cmd: KvCommand) -> anyhow::Result<()> {
    use std::io::{Read, Write};
    match cmd {
        KvCommand::Get { ns, key, stale, remote } => {
            let client = Client::new(remote)?;
            let mut url = client.kv_url(&ns, Some(&key))?;
            if stale {
                url.query_pairs_mut().append_pair("consistency", "stale");
            }
            let (body, headers) = client.send_raw(client.http.get(url)).await?;
            if client.out.quiet || client.out.format == Format::Json {
                let version: Option<u64> = headers.get("x-shoal-version").and_then(|v| v.to_str().ok()?.parse().ok());
                let text = String::from_utf8_lossy(&body);
                let answer = serde_json::json!({ "ns": ns, "key": key, "version": version, "value": text });
                client.out.emit_done(&answer, &key, "");
                return Ok(());
            }
            let mut stdout = std::io::stdout().lock();
            stdout.write_all(&body)?;
            stdout.flush()?;
            let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
            if let Some(version) = header("x-shoal-version") {
                eprintln!("version {version}");
            }
            if let Some(applied) = header("x-shoal-applied") {
                let behind = header("x-shoal-behind").map_or("an unknown number of".into(), |b| b);
                eprintln!("stale read: the copy had applied log entry {applied}, {behind} entries behind");
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
            client.out.emit_done(&v, &key, &format!("put {ns}/{key} version {}", v["version"]));
        }
        KvCommand::Delete { ns, key, version, remote } => {
            let client = Client::new(remote)?;
            let mut request = client.http.delete(client.kv_url(&ns, Some(&key))?);
            if let Some(v) = version {
                request = request.query(&[("version", v)]);
            }
            let (body, _) = client.send_raw(request).await?;
            let answer: Value = serde_json::from_slice(&body).unwrap_or(serde_json::json!({ "ns": ns, "key": key }));
            client.out.emit_done(&answer, &key, &format!("deleted {ns}/{key}"));
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
        KvCommand::List { ns, prefix, page, remote } => {
            let client = Client::new(remote)?;
            let mut cursor: Option<String> = None;
            let mut entries = Vec::new();
            loop {
                let mut query = vec![("limit", page.to_string())];
                if let Some(p) = &prefix {
                    query.push(("prefix", p.clone()));
                }
                if let Some(c) = &cursor {
                    query.push(("cursor", c.clone()));
                }
                let v = client.send(client.http.get(client.kv_url(&ns, None)?).query(&query)).await?;
                entries.extend(v["entries"].as_array().into_iter().flatten().cloned());
                match v["cursor"].as_str() {
                    Some(c) => cursor = Some(c.to_owned()),
                    None => break,
                }
            }
            // Every page's entries as one answer, `{"entries": [...]}` (no cursor: all were read).
            let answer = serde_json::json!({ "entries": entries });
            let table =
                Table::new(&["KEY", "VERSION"]).rows(&answer["entries"], |e| vec![at(e, "key"), at(e, "version")]);
            client.out.emit(&answer, table);
        }
    }
    Ok(())
}
