//! Who may say what on the bus: identities, their subject grants, nkey credentials, and the
//! `nats-server` configuration that enforces them.
//!
//! Shoal uses NATS's own authorization — users identified by an **nkey** (an Ed25519 key pair: the
//! server's configuration holds only public keys, each role keeps its seed in a file of its own)
//! with per-user `publish`/`subscribe` permissions — rather than the decentralized JWT model: one
//! static configuration file, no account resolver to run, nothing to sign beyond the key pairs, and
//! a reload of the server (`SIGHUP`) to add an agent. The cost is that adding an identity means
//! regenerating that file; the JWT model would let an operator mint agent credentials without
//! touching the server, which matters for fleets far larger than the ones Shoal manages today.
//!
//! The grants follow from the subject tree ([`crate::subject`]): a subject a role publishes on its
//! own behalf carries the role's id, and each identity may publish only under its own id, so the
//! receiver knows the sender from the subject. Replies go to each identity's private inbox prefix
//! ([`inbox_prefix`]); a non-master identity may publish a reply only to a request it received
//! (`allow_responses`), so nobody but the master can answer a request it was not asked.

use std::fmt;
use std::path::Path;

use crate::BusError;
use crate::subject::{self, CONTROL_PREFIX, EVENTS_PREFIX};

/// A party on the bus.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(tag = "role", content = "id", rename_all = "lowercase")]
pub enum Identity {
    /// The master: the cluster's root, may publish and subscribe to everything.
    Master,
    /// Agent `<id>`: its own registration, heartbeats and status updates, the commands sent to it.
    Agent(String),
    /// Store node `<id>`: its own registration and progress, the requests sent to it.
    Store(String),
}

impl Identity {
    /// A file-name-safe label: `master`, `agent-a1`, `store-s1`.
    pub fn label(&self) -> String {
        match self {
            Identity::Master => "master".to_owned(),
            Identity::Agent(id) => format!("agent-{id}"),
            Identity::Store(id) => format!("store-{id}"),
        }
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Identity::Master => f.write_str("master"),
            Identity::Agent(id) => write!(f, "agent {id}"),
            Identity::Store(id) => write!(f, "store node {id}"),
        }
    }
}

/// What one identity may do: subjects (filters) it may publish to and subscribe to, and whether
/// it may answer requests it received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grants {
    /// Filters of the subjects it may publish to.
    pub publish: Vec<String>,
    /// Filters it may subscribe to.
    pub subscribe: Vec<String>,
    /// Whether it may publish to the reply subject of a request it received.
    pub respond: bool,
}

/// The inbox prefix of the identity whose public nkey is `public_key`: replies to its requests
/// arrive under `<prefix>.>`, which only it may subscribe to.
pub fn inbox_prefix(public_key: &str) -> String {
    format!("_INBOX_{public_key}")
}

/// The grants of `identity`, whose inbox prefix is `inbox` (see [`inbox_prefix`]).
pub fn grants(identity: &Identity, inbox: &str) -> Grants {
    let own_inbox = format!("{inbox}.>");
    match identity {
        Identity::Master => Grants { publish: vec![">".into()], subscribe: vec![">".into()], respond: true },
        Identity::Agent(id) => Grants {
            publish: vec![
                subject::agent_register(id),
                subject::agent_heartbeat(id),
                subject::agent_status(id),
                subject::ARTIFACT_STAT.into(),
                subject::ARTIFACT_READ.into(),
                // The key-value store of its Wasm tasks: reads and writes, not the store's admin.
                subject::STORE_MAP.into(),
                format!("{CONTROL_PREFIX}.store.node.*"),
                own_inbox.clone(),
            ],
            subscribe: vec![
                subject::agent_launch(id),
                subject::agent_kill(id),
                subject::agent_logs(id),
                subject::STORE_SHARDMAP.into(),
                own_inbox,
            ],
            respond: true,
        },
        Identity::Store(id) => Grants {
            publish: vec![
                subject::store_register(id),
                subject::store_progress(id),
                subject::STORE_MAP.into(),
                // Copying moving keys into another node.
                format!("{CONTROL_PREFIX}.store.ingest.*"),
                format!("{EVENTS_PREFIX}.kv.>"),
                own_inbox.clone(),
            ]
            .into_iter()
            .chain(store_jetstream())
            .collect(),
            subscribe: vec![
                subject::store_node(id),
                subject::store_ingest(id),
                subject::store_admin(id),
                subject::STORE_SHARDMAP.into(),
                own_inbox,
            ],
            respond: true,
        },
    }
}

/// What a store node may do in JetStream: everything to the replicated store's own assets (its
/// shards' log streams, the leases' bucket, the snapshots' object store; see
/// [`subject::shard_log_stream`]) and nothing to anyone else's (the masters' lease and state log,
/// say). NATS matches whole tokens only, and a stream's name is one token of the API's subjects,
/// so each stream is named: every shard that can exist ([`subject::STORE_MAX_SHARDS`]).
/// Deliveries and replies come to the node's inbox, which it already subscribes to.
fn store_jetstream() -> Vec<String> {
    let streams = (0..subject::STORE_MAX_SHARDS)
        .map(|n| subject::shard_log_stream("", n))
        .chain([format!("KV_{}", subject::SHARD_LEASE_BUCKET), format!("OBJ_{}", subject::SHARD_SNAPSHOT_BUCKET)]);
    let mut out = vec![
        // Account limits: async-nats reads them before it creates a KV bucket.
        "$JS.API.INFO".to_owned(),
        subject::SHARD_LOGS_ALL.to_owned(),
        format!("$KV.{}.>", subject::SHARD_LEASE_BUCKET),
        format!("$O.{}.>", subject::SHARD_SNAPSHOT_BUCKET),
    ];
    for stream in streams {
        out.extend([
            // CREATE, INFO, UPDATE, DELETE, PURGE of the stream, and reading one message.
            format!("$JS.API.STREAM.*.{stream}"),
            format!("$JS.API.STREAM.MSG.*.{stream}"),
            format!("$JS.API.DIRECT.GET.{stream}"),
            format!("$JS.API.DIRECT.GET.{stream}.>"),
            // Consumers: created (with or without a name and filter), asked for messages, deleted.
            format!("$JS.API.CONSUMER.*.{stream}"),
            format!("$JS.API.CONSUMER.*.{stream}.>"),
            format!("$JS.API.CONSUMER.MSG.NEXT.{stream}.*"),
            // Flow control of a push consumer (a KV watch, an object's chunks).
            format!("$JS.FC.{stream}.>"),
        ]);
    }
    out
}

/// A new password for the routes of a cluster: 122 random bits, as 32 hex digits (safe in a
/// `nats-route://user:password@host` URL).
pub fn new_route_password() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// A new nkey user: `(seed, public key)`. The seed is the secret a role connects with.
pub fn new_user_key() -> (String, String) {
    let pair = nkeys::KeyPair::new_user();
    let seed = pair.seed().expect("a freshly generated key pair has a seed");
    (seed, pair.public_key())
}

/// The public key of a user seed, or why `seed` is not one.
pub fn public_key_of(seed: &str) -> Result<String, BusError> {
    let pair = nkeys::KeyPair::from_seed(seed).map_err(|e| BusError::Credentials(format!("not an nkey seed: {e}")))?;
    if pair.key_pair_type() != nkeys::KeyPairType::User {
        return Err(BusError::Credentials("the nkey seed is not a user's (it must start with SU)".into()));
    }
    Ok(pair.public_key())
}

/// Reads a credentials file as `shoal nats init` writes it (and as `nats --nkey` reads it): the
/// user's nkey seed on a line of its own; other lines (comments) are ignored.
pub fn read_seed(path: &Path) -> Result<String, BusError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| BusError::Credentials(format!("cannot read {}: {e}", path.display())))?;
    let seed = text.lines().map(str::trim).find(|line| line.starts_with("SU")).ok_or_else(|| {
        BusError::Credentials(format!("{} holds no nkey user seed (a line starting SU)", path.display()))
    })?;
    public_key_of(seed)?;
    Ok(seed.to_owned())
}

/// The text of a credentials file for `identity`.
pub fn credentials_file(identity: &Identity, seed: &str) -> String {
    format!(
        "# Shoal's NATS credentials of {identity}: an nkey seed. Keep it secret (mode 0600); pass it as\n\
         # --nats-creds to `shoal {}`.\n{seed}\n",
        match identity {
            Identity::Master => "master",
            Identity::Agent(_) => "agent",
            Identity::Store(_) => "store",
        }
    )
}

/// Settings of the server besides its users, for [`server_config`].
#[derive(Clone, Debug, Default)]
pub struct ServerSettings {
    /// `host:port` clients connect to.
    pub listen: String,
    /// JetStream's store directory; `None` runs no JetStream.
    pub jetstream: Option<std::path::PathBuf>,
    /// TLS certificate and key files: clients must then connect with `tls://`.
    pub tls: Option<(std::path::PathBuf, std::path::PathBuf)>,
    /// The server's name (a JetStream cluster needs one per server).
    pub name: Option<String>,
    /// Its place in a cluster of servers; `None`: it runs alone.
    pub cluster: Option<ClusterSettings>,
}

/// A server's routes to the others of its cluster.
#[derive(Clone, Debug, Default)]
pub struct ClusterSettings {
    /// The cluster's name (the same on every server).
    pub name: String,
    /// `host:port` this server accepts routes on.
    pub listen: String,
    /// `host:port` of every server's route listener (its own included: the server skips it).
    pub routes: Vec<String>,
    /// The user and password every route presents, and every server asks for: without them,
    /// whoever reached a route port would join as a server and see every message.
    pub user: String,
    /// See [`ClusterSettings::user`].
    pub password: String,
}

/// A `nats-server` configuration in which exactly `users` (identity, public nkey) may connect,
/// each with its [`grants`].
pub fn server_config(settings: &ServerSettings, users: &[(Identity, String)]) -> String {
    let quote = |s: &str| serde_json::to_string(s).expect("a string serialises");
    let list = |items: &[String]| items.iter().map(|s| quote(s)).collect::<Vec<_>>().join(", ");
    let mut out = String::from(
        "# Generated by `shoal nats init` / `shoal nats add`: regenerate rather than edit. Every user\n\
         # is a Shoal role identified by its nkey; see ARCHITECTURE.md, \"Security model\".\n",
    );
    if let Some(name) = &settings.name {
        out += &format!("server_name: {}\n", quote(name));
    }
    out += &format!("listen: {}\n", quote(&settings.listen));
    if let Some(cluster) = &settings.cluster {
        let routes = cluster
            .routes
            .iter()
            .map(|at| format!("nats-route://{}:{}@{at}", cluster.user, cluster.password))
            .collect::<Vec<_>>();
        out += &format!(
            "cluster {{\n  name: {}\n  listen: {}\n  authorization {{\n    user: {}\n    password: {}\n  }}\n  routes: [{}]\n}}\n",
            quote(&cluster.name),
            quote(&cluster.listen),
            quote(&cluster.user),
            quote(&cluster.password),
            list(&routes),
        );
    }
    if let Some(dir) = &settings.jetstream {
        out += &format!("jetstream {{\n  store_dir: {}\n}}\n", quote(&dir.to_string_lossy()));
    }
    if let Some((cert, key)) = &settings.tls {
        out += &format!(
            "tls {{\n  cert_file: {}\n  key_file: {}\n}}\n",
            quote(&cert.to_string_lossy()),
            quote(&key.to_string_lossy())
        );
    }
    out += "authorization {\n  users: [\n";
    for (identity, public_key) in users {
        let grants = grants(identity, &inbox_prefix(public_key));
        out += &format!(
            "    # {identity}\n    {{ nkey: {}, permissions: {{ publish: {{ allow: [{}] }}, subscribe: {{ allow: [{}] }}{} }} }}\n",
            quote(public_key),
            list(&grants.publish),
            list(&grants.subscribe),
            if grants.respond { ", allow_responses: true" } else { "" },
        );
    }
    out += "  ]\n}\n";
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::subject::matches;

    fn may_publish(grants: &Grants, subject: &str) -> bool {
        grants.publish.iter().any(|filter| matches(filter, subject))
    }

    fn may_subscribe(grants: &Grants, subject: &str) -> bool {
        grants.subscribe.iter().any(|filter| matches(filter, subject))
    }

    #[test]
    fn an_agent_speaks_only_for_itself() {
        let a1 = grants(&Identity::Agent("a1".into()), "_INBOX_UA1");
        assert!(may_publish(&a1, &subject::agent_status("a1")));
        assert!(may_publish(&a1, &subject::agent_register("a1")));
        assert!(may_subscribe(&a1, &subject::agent_launch("a1")));
        for forged in [
            subject::agent_status("a2"),
            subject::agent_register("a2"),
            subject::agent_heartbeat("a2"),
            subject::agent_launch("a2"),
            subject::agent_launch("a1"),
            subject::agent_kill("a1"),
            subject::STORE_SHARDMAP.to_owned(),
            subject::store_admin("s1"),
            subject::store_ingest("s1"),
            subject::store_register("s1"),
            "_INBOX_UA2.x".to_owned(),
        ] {
            assert!(!may_publish(&a1, &forged), "agent a1 may not publish {forged}");
        }
        for spied in [subject::agent_launch("a2"), "_INBOX_UA2.x".into(), subject::store_node("s1")] {
            assert!(!may_subscribe(&a1, &spied), "agent a1 may not subscribe to {spied}");
        }
    }

    #[test]
    fn a_store_node_takes_commands_only_for_itself_and_maps_only_from_the_master() {
        let s1 = grants(&Identity::Store("s1".into()), "_INBOX_US1");
        assert!(may_subscribe(&s1, &subject::store_admin("s1")));
        assert!(may_publish(&s1, &subject::store_ingest("s2")));
        for forged in [
            subject::STORE_SHARDMAP.to_owned(),
            subject::store_admin("s2"),
            subject::store_register("s2"),
            subject::agent_launch("a1"),
        ] {
            assert!(!may_publish(&s1, &forged), "store node s1 may not publish {forged}");
        }
        assert!(!may_subscribe(&s1, &subject::store_admin("s2")));
    }

    #[test]
    fn a_store_node_reaches_the_stores_jetstream_assets_and_no_others() {
        let s1 = grants(&Identity::Store("s1".into()), "_INBOX_US1");
        for own in [
            "$JS.API.INFO",
            "$JS.API.STREAM.CREATE.SHOAL_SHARD_0",
            "$JS.API.STREAM.INFO.SHOAL_SHARD_255",
            "$JS.API.STREAM.PURGE.SHOAL_SHARD_7",
            "$JS.API.STREAM.MSG.GET.SHOAL_SHARD_7",
            "$JS.API.CONSUMER.CREATE.SHOAL_SHARD_7",
            "$JS.API.CONSUMER.CREATE.SHOAL_SHARD_7.c1.shoal.store.shard.7.log",
            "$JS.API.CONSUMER.MSG.NEXT.SHOAL_SHARD_7.c1",
            "shoal.store.shard.7.log",
            "$KV.shoal-shard-leases.shard-7",
            "$JS.API.DIRECT.GET.KV_shoal-shard-leases.$KV.shoal-shard-leases.shard-7",
            "$O.shoal-shard-snapshots.C.abc",
            "$JS.API.STREAM.INFO.OBJ_shoal-shard-snapshots",
        ] {
            assert!(may_publish(&s1, own), "store node s1 may publish {own}");
        }
        for foreign in [
            "$JS.API.STREAM.DELETE.KV_shoal-masters",
            "$KV.shoal-masters.master",
            "$JS.API.STREAM.PURGE.SHOAL_STATE",
            "$JS.API.CONSUMER.CREATE.SHOAL_STATE.x",
            "$JS.API.CONSUMER.CREATE.SHOAL_STATE.SHOAL_SHARD_0.x",
            "$JS.API.CONSUMER.MSG.NEXT.SHOAL_STATE.SHOAL_SHARD_0",
            "$JS.API.STREAM.CREATE.SHOAL_SHARD_256",
            "$JS.API.STREAM.CREATE.EVIL",
            "$JS.API.STREAM.LIST",
            "$JS.API.META.LEADER.STEPDOWN",
        ] {
            assert!(!may_publish(&s1, foreign), "store node s1 may not publish {foreign}");
        }
        let a1 = grants(&Identity::Agent("a1".into()), "_INBOX_UA1");
        for store in ["$JS.API.STREAM.INFO.SHOAL_SHARD_0", "shoal.store.shard.0.log", "$JS.API.INFO"] {
            assert!(!may_publish(&a1, store), "agent a1 may not publish {store}");
        }
    }

    #[test]
    fn a_cluster_members_configuration_names_it_and_routes_with_the_password() {
        let settings = ServerSettings {
            listen: "10.0.0.1:4222".into(),
            name: Some("shoal-1".into()),
            cluster: Some(ClusterSettings {
                name: "shoal".into(),
                listen: "10.0.0.1:6222".into(),
                routes: vec!["10.0.0.1:6222".into(), "10.0.0.2:6222".into()],
                user: "shoal-route".into(),
                password: "p4ss".into(),
            }),
            ..ServerSettings::default()
        };
        let conf = server_config(&settings, &[(Identity::Master, "UMASTER".to_owned())]);
        assert!(conf.contains(r#"server_name: "shoal-1""#), "{conf}");
        assert!(conf.contains(r#"password: "p4ss""#), "{conf}");
        assert!(conf.contains(r#""nats-route://shoal-route:p4ss@10.0.0.2:6222""#), "{conf}");
        assert_eq!(new_route_password().len(), 32);
        assert_ne!(new_route_password(), new_route_password());
    }

    #[test]
    fn seeds_round_trip_through_credentials_files() {
        let (seed, public) = new_user_key();
        assert!(seed.starts_with("SU") && public.starts_with('U'), "{seed} {public}");
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("agent-a1.nk");
        std::fs::write(&path, credentials_file(&Identity::Agent("a1".into()), &seed)).expect("write");
        assert_eq!(read_seed(&path).expect("a seed"), seed);
        assert_eq!(public_key_of(&seed).expect("a user seed"), public);

        std::fs::write(&path, "# nothing here\n").expect("write");
        let err = read_seed(&path).expect_err("no seed");
        assert!(err.to_string().contains("no nkey user seed"), "{err}");
        std::fs::write(&path, "SUnot-a-seed\n").expect("write");
        assert!(read_seed(&path).is_err());
    }

    #[test]
    fn the_server_configuration_lists_each_user_with_its_grants() {
        let users = vec![(Identity::Master, "UMASTER".to_owned()), (Identity::Agent("a1".into()), "UAGENT".to_owned())];
        let settings = ServerSettings { listen: "127.0.0.1:4222".into(), ..ServerSettings::default() };
        let conf = server_config(&settings, &users);
        assert!(conf.contains(r#"listen: "127.0.0.1:4222""#), "{conf}");
        assert!(conf.contains(r#"nkey: "UAGENT""#), "{conf}");
        assert!(conf.contains(r#""shoal.ctl.agent.a1.status""#), "{conf}");
        assert!(conf.contains(r#""_INBOX_UAGENT.>""#), "{conf}");
        assert!(!conf.contains("jetstream"), "{conf}");
    }
}
