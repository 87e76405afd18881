//! How roles reach NATS (`--nats`, `--nats-creds`, `--nats-ca`, `--nats-insecure`), and
//! `shoal nats init|add|remove`: the credentials of every role and the `nats-server`
//! configuration that grants each only its own subjects (see `shoal_bus::auth`).

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use serde::{Deserialize, Serialize};
use shoal_bus::auth::{self, Identity, ServerSettings};
use shoal_bus::{NatsBus, NatsOptions, SharedBus};

/// How a role reaches the NATS bus.
#[derive(Args, Debug, Clone, Default)]
pub(crate) struct NatsArgs {
    /// The NATS server(s) to use, e.g. `nats://127.0.0.1:4222` (`tls://…` for TLS; user info
    /// `nats://user:password@host` is honoured).
    #[arg(long)]
    pub nats: Option<String>,
    /// This role's NATS credentials: the nkey seed file `shoal nats init` wrote for it.
    #[arg(long, env = "SHOAL_NATS_CREDS")]
    pub nats_creds: Option<PathBuf>,
    /// PEM file of the certificate authorities that signed the NATS server's TLS certificate.
    #[arg(long)]
    pub nats_ca: Option<PathBuf>,
    /// Connect without credentials, to a server without authorization (anyone who reaches it can
    /// then act as any role).
    #[arg(long)]
    pub nats_insecure: bool,
    /// How long a role waits at start for a NATS server to answer (they may start in any order).
    #[arg(long, default_value_t = 30_000)]
    pub nats_wait_ms: u64,
}

/// Where a node's bus is, and how it proves who it is.
#[derive(Clone, Debug)]
pub struct NatsTarget {
    /// The server URL(s).
    pub url: String,
    /// Credentials and trust.
    pub options: NatsOptions,
}

impl NatsTarget {
    /// Connects.
    pub async fn connect(&self) -> anyhow::Result<SharedBus> {
        let bus = NatsBus::connect_with(&self.url, &self.options)
            .await
            .with_context(|| format!("connecting to NATS at {}", self.url))?;
        Ok(std::sync::Arc::new(bus))
    }
}

impl NatsArgs {
    /// The bus of `shoal <role>`, `None` without `--nats`. Unless `open` (`shoal dev`), a role
    /// must prove who it is: with `--nats-creds`, user info in the URL, or, knowingly,
    /// `--nats-insecure`.
    pub fn target(&self, role: &str, open: bool) -> anyhow::Result<Option<NatsTarget>> {
        let Some(url) = &self.nats else { return Ok(None) };
        let user_info = url.split(',').any(|one| one.split_once("://").is_some_and(|(_, rest)| rest.contains('@')));
        if !open && self.nats_creds.is_none() && !user_info && !self.nats_insecure {
            bail!(
                "`shoal {role}` proves who it is to NATS: pass --nats-creds FILE (from `shoal nats init`), user \
                 info in the URL (nats://user:password@host:4222), or --nats-insecure for a server without \
                 authorization"
            );
        }
        let options = NatsOptions {
            creds: self.nats_creds.clone(),
            ca: self.nats_ca.clone(),
            wait: std::time::Duration::from_millis(self.nats_wait_ms),
        };
        Ok(Some(NatsTarget { url: url.clone(), options }))
    }
}

/// `shoal nats`: credentials and server configuration.
#[derive(Subcommand, Debug)]
pub(crate) enum NatsCommand {
    /// Make a directory with a `nats-server` configuration and credentials for the master and the
    /// given agents and store nodes: run the server with `nats-server -c DIR/nats-server.conf`.
    Init {
        /// Where to write (created with mode 0700; must not hold a configuration yet).
        #[arg(long, default_value = ".shoal-nats")]
        dir: PathBuf,
        /// Address the server listens on for clients. Repeat it, with as many --cluster, for a
        /// cluster of servers: one configuration each (`nats-server-<i>.conf`).
        #[arg(long = "listen", default_value = "127.0.0.1:4222")]
        listen: Vec<String>,
        /// Address a server of a cluster listens on for routes from the others, in the order of
        /// --listen (repeatable). The routes authenticate with a password made here.
        #[arg(long = "cluster")]
        cluster: Vec<String>,
        /// An agent to make credentials for (repeatable).
        #[arg(long = "agent")]
        agents: Vec<String>,
        /// A store node to make credentials for (repeatable).
        #[arg(long = "store")]
        stores: Vec<String>,
        /// Run no JetStream (by default it keeps its data in DIR/jetstream).
        #[arg(long)]
        no_jetstream: bool,
        /// TLS certificate of the server (with --tls-key): clients then connect with tls://.
        #[arg(long, requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// TLS key of the server.
        #[arg(long, requires = "tls_cert")]
        tls_key: Option<PathBuf>,
    },
    /// Make credentials for more agents or store nodes and rewrite the configuration; then reload
    /// the server (`nats-server --signal reload`, or SIGHUP).
    Add(Members),
    /// Revoke the credentials of agents or store nodes (e.g. a lost machine's) and rewrite the
    /// configuration; then reload the server.
    Remove(Members),
}

/// The agents and store nodes `shoal nats add|remove` is about, in a `shoal nats init` directory.
#[derive(Args, Debug)]
pub(crate) struct Members {
    /// The directory `shoal nats init` made.
    #[arg(long, default_value = ".shoal-nats")]
    dir: PathBuf,
    /// An agent (repeatable).
    #[arg(long = "agent")]
    agents: Vec<String>,
    /// A store node (repeatable).
    #[arg(long = "store")]
    stores: Vec<String>,
}

/// What `shoal nats` keeps in `DIR/shoal-nats.json`: the settings and every user's public key,
/// from which the configuration is regenerated.
#[derive(Serialize, Deserialize, Debug, Default)]
struct Registry {
    /// The client address of the (first) server.
    listen: String,
    jetstream: Option<PathBuf>,
    tls: Option<(PathBuf, PathBuf)>,
    /// The servers of a cluster; `None`: one server.
    #[serde(default)]
    cluster: Option<Cluster>,
    users: Vec<User>,
}

/// Servers routed to each other in one cluster.
#[derive(Serialize, Deserialize, Debug, Clone)]
struct Cluster {
    /// Each server's client and route addresses.
    servers: Vec<ClusterServer>,
    /// What every route presents (user [`ROUTE_USER`]).
    password: String,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
struct ClusterServer {
    listen: String,
    route: String,
}

/// The user name routes between the servers of a cluster present.
const ROUTE_USER: &str = "shoal-route";

#[derive(Serialize, Deserialize, Debug, Clone)]
struct User {
    identity: Identity,
    public_key: String,
}

const REGISTRY: &str = "shoal-nats.json";
const CONFIG: &str = "nats-server.conf";

/// Run `shoal nats …`.
pub(crate) fn nats(command: NatsCommand) -> anyhow::Result<()> {
    match command {
        NatsCommand::Init { dir, listen, cluster, agents, stores, no_jetstream, tls_cert, tls_key } => {
            if dir.join(REGISTRY).exists() {
                bail!("{} already holds a configuration: use `shoal nats add`", dir.display());
            }
            let cluster = cluster_of(&listen, &cluster)?;
            create_private_dir(&dir)?;
            create_private_dir(&dir.join("creds"))?;
            let absolute = std::path::absolute(&dir).with_context(|| format!("resolving {}", dir.display()))?;
            let mut registry = Registry {
                listen: listen[0].clone(),
                cluster,
                // nats-server keeps its streams in `<store_dir>/jetstream`.
                jetstream: (!no_jetstream).then_some(absolute),
                tls: match tls_cert.zip(tls_key) {
                    Some((cert, key)) => Some((std::path::absolute(cert)?, std::path::absolute(key)?)),
                    None => None,
                },
                users: Vec::new(),
            };
            let wanted = identities(&agents, &stores)?;
            add_users(&dir, &mut registry, std::iter::once(Identity::Master).chain(wanted))?;
            save(&dir, &registry)?;
            println!("NATS configuration for Shoal in {}:", dir.display());
            match &registry.cluster {
                None => println!("  run the server:  nats-server -c {}", dir.join(CONFIG).display()),
                Some(cluster) => {
                    println!("  run the servers, each on its machine:");
                    for i in 1..=cluster.servers.len() {
                        println!("    nats-server -c {}", dir.join(server_config_name(i)).display());
                    }
                    let urls: Vec<String> = cluster.servers.iter().map(|s| format!("nats://{}", s.listen)).collect();
                    println!("  roles connect with --nats {}", urls.join(","));
                }
            }
            println!("  credentials:     {}/<role>.nk, one per role (mode 0600):", dir.join("creds").display());
            for user in &registry.users {
                println!(
                    "    {:<16} --nats-creds {}",
                    user.identity.to_string(),
                    creds_path(&dir, &user.identity).display()
                );
            }
            Ok(())
        }
        NatsCommand::Add(Members { dir, agents, stores }) => {
            let mut registry = load(&dir)?;
            let added = add_users(&dir, &mut registry, identities(&agents, &stores)?)?;
            save(&dir, &registry)?;
            for identity in added {
                println!("{identity}: --nats-creds {}", creds_path(&dir, &identity).display());
            }
            println!("reload the server(s) to let them in: nats-server --signal reload (or kill -HUP its pid)");
            Ok(())
        }
        NatsCommand::Remove(Members { dir, agents, stores }) => {
            let mut registry = load(&dir)?;
            for identity in identities(&agents, &stores)? {
                let before = registry.users.len();
                registry.users.retain(|u| u.identity != identity);
                if registry.users.len() == before {
                    bail!("{identity} has no credentials in {}", dir.display());
                }
                let _ = std::fs::remove_file(creds_path(&dir, &identity));
                println!("{identity}: credentials revoked");
            }
            save(&dir, &registry)?;
            println!("reload the server(s) to shut them out: nats-server --signal reload (or kill -HUP its pid)");
            Ok(())
        }
    }
}

fn identities(agents: &[String], stores: &[String]) -> anyhow::Result<Vec<Identity>> {
    let mut out = Vec::new();
    for id in agents {
        shoal_protocol::validate_agent_id(id)?;
        out.push(Identity::Agent(id.clone()));
    }
    for id in stores {
        shoal_store::node::validate_node_id(id)?;
        out.push(Identity::Store(id.clone()));
    }
    Ok(out)
}

/// Makes a key pair and a credentials file for each identity not yet in `registry`.
fn add_users(
    dir: &Path,
    registry: &mut Registry,
    identities: impl IntoIterator<Item = Identity>,
) -> anyhow::Result<Vec<Identity>> {
    let mut added = Vec::new();
    for identity in identities {
        if registry.users.iter().any(|u| u.identity == identity) {
            println!("{identity} already has credentials: {}", creds_path(dir, &identity).display());
            continue;
        }
        let (seed, public_key) = auth::new_user_key();
        write_private(&creds_path(dir, &identity), auth::credentials_file(&identity, &seed).as_bytes())?;
        registry.users.push(User { identity: identity.clone(), public_key });
        added.push(identity);
    }
    Ok(added)
}

fn creds_path(dir: &Path, identity: &Identity) -> PathBuf {
    dir.join("creds").join(format!("{}.nk", identity.label()))
}

fn load(dir: &Path) -> anyhow::Result<Registry> {
    let path = dir.join(REGISTRY);
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("reading {} (made by `shoal nats init --dir {}`)", path.display(), dir.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not Shoal's NATS registry", path.display()))
}

/// The servers `--listen` and `--cluster` describe: one alone, or a cluster of two or more, each
/// with a client and a route address.
fn cluster_of(listen: &[String], routes: &[String]) -> anyhow::Result<Option<Cluster>> {
    for address in listen.iter().chain(routes) {
        if address.rsplit_once(':').is_none_or(|(host, port)| host.is_empty() || port.parse::<u16>().is_err()) {
            bail!("`{address}` is not a host:port address");
        }
    }
    match (listen.len(), routes.len()) {
        (1, 0) => Ok(None),
        (_, 0) => bail!(
            "{} --listen addresses make a cluster: give each server's route address with --cluster, in the same order",
            listen.len()
        ),
        (1, _) => {
            bail!("a cluster needs two servers or more (three for replicated JetStream): repeat --listen and --cluster")
        }
        (l, r) if l != r => bail!("{l} --listen addresses but {r} --cluster addresses: give one of each per server"),
        _ => {
            let mut seen = std::collections::BTreeSet::new();
            if let Some(twice) = listen.iter().chain(routes).find(|a| !seen.insert(a.as_str())) {
                bail!("`{twice}` is given twice: every server needs addresses of its own");
            }
            Ok(Some(Cluster {
                servers: listen
                    .iter()
                    .zip(routes)
                    .map(|(listen, route)| ClusterServer { listen: listen.clone(), route: route.clone() })
                    .collect(),
                password: auth::new_route_password(),
            }))
        }
    }
}

/// `nats-server-<i>.conf`: the configuration of server `i` (from 1) of a cluster.
fn server_config_name(i: usize) -> String {
    format!("nats-server-{i}.conf")
}

/// Writes the registry and the configuration(s) generated from it.
fn save(dir: &Path, registry: &Registry) -> anyhow::Result<()> {
    let users: Vec<(Identity, String)> =
        registry.users.iter().map(|u| (u.identity.clone(), u.public_key.clone())).collect();
    match &registry.cluster {
        None => {
            let settings = ServerSettings {
                listen: registry.listen.clone(),
                jetstream: registry.jetstream.clone(),
                tls: registry.tls.clone(),
                ..ServerSettings::default()
            };
            write_private(&dir.join(CONFIG), auth::server_config(&settings, &users).as_bytes())?;
        }
        Some(cluster) => {
            let routes: Vec<String> = cluster.servers.iter().map(|s| s.route.clone()).collect();
            for (i, server) in (1..).zip(&cluster.servers) {
                let settings = ServerSettings {
                    listen: server.listen.clone(),
                    // Each server its own directory, so that all may share one machine (a test's).
                    jetstream: registry.jetstream.as_ref().map(|dir| dir.join(format!("server-{i}"))),
                    tls: registry.tls.clone(),
                    name: Some(format!("shoal-{i}")),
                    cluster: Some(auth::ClusterSettings {
                        name: "shoal".into(),
                        listen: server.route.clone(),
                        routes: routes.clone(),
                        user: ROUTE_USER.into(),
                        password: cluster.password.clone(),
                    }),
                };
                write_private(&dir.join(server_config_name(i)), auth::server_config(&settings, &users).as_bytes())?;
            }
        }
    }
    write_private(&dir.join(REGISTRY), serde_json::to_string_pretty(registry)?.as_bytes())?;
    Ok(())
}

fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("restricting {}", dir.display()))
}

/// Writes `contents` to `path` atomically, readable by this user only from the first byte.
fn write_private(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let temp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&temp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&temp)
        .with_context(|| format!("creating {}", temp.display()))?;
    file.write_all(contents).and_then(|()| file.sync_all()).with_context(|| format!("writing {}", temp.display()))?;
    std::fs::rename(&temp, path).with_context(|| format!("replacing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn one_listen_address_is_one_server_and_several_need_a_route_address_each() {
        assert!(cluster_of(&strings(&["127.0.0.1:4222"]), &[]).expect("one server").is_none());
        let cluster = cluster_of(&strings(&["a:4222", "b:4222", "c:4222"]), &strings(&["a:6222", "b:6222", "c:6222"]))
            .expect("a cluster")
            .expect("of three");
        assert_eq!(cluster.servers.len(), 3);
        assert_eq!((cluster.servers[1].listen.as_str(), cluster.servers[1].route.as_str()), ("b:4222", "b:6222"));
        for (listen, routes, said) in [
            (&["a:1", "b:1"][..], &[][..], "give each server's route address"),
            (&["a:1"][..], &["a:2"][..], "two servers or more"),
            (&["a:1", "b:1"][..], &["a:2"][..], "2 --listen addresses but 1 --cluster"),
            (&["a:1", "a:1"][..], &["a:2", "b:2"][..], "given twice"),
            (&["a:1", "b:1"][..], &["a:2", "b:x"][..], "not a host:port"),
            (&["nohost"][..], &[][..], "not a host:port"),
        ] {
            let err = cluster_of(&strings(listen), &strings(routes)).expect_err("refused").to_string();
            assert!(err.contains(said), "{listen:?} {routes:?}: {err}");
        }
    }
}
