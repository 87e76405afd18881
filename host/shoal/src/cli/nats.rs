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
        /// Address the server listens on.
        #[arg(long, default_value = "127.0.0.1:4222")]
        listen: String,
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
    listen: String,
    jetstream: Option<PathBuf>,
    tls: Option<(PathBuf, PathBuf)>,
    users: Vec<User>,
}

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
        NatsCommand::Init { dir, listen, agents, stores, no_jetstream, tls_cert, tls_key } => {
            if dir.join(REGISTRY).exists() {
                bail!("{} already holds a configuration: use `shoal nats add`", dir.display());
            }
            create_private_dir(&dir)?;
            create_private_dir(&dir.join("creds"))?;
            let absolute = std::path::absolute(&dir).with_context(|| format!("resolving {}", dir.display()))?;
            let mut registry = Registry {
                listen,
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
            println!("  run the server:  nats-server -c {}", dir.join(CONFIG).display());
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
            println!("reload the server to let them in: nats-server --signal reload (or kill -HUP its pid)");
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
            println!("reload the server to shut them out: nats-server --signal reload (or kill -HUP its pid)");
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

/// Writes the registry and the configuration generated from it.
fn save(dir: &Path, registry: &Registry) -> anyhow::Result<()> {
    let settings = ServerSettings {
        listen: registry.listen.clone(),
        jetstream: registry.jetstream.clone(),
        tls: registry.tls.clone(),
    };
    let users: Vec<(Identity, String)> =
        registry.users.iter().map(|u| (u.identity.clone(), u.public_key.clone())).collect();
    write_private(&dir.join(CONFIG), auth::server_config(&settings, &users).as_bytes())?;
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
