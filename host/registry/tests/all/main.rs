//! The registry against a real RocksDB in a temporary directory and real components.

use std::sync::Arc;

use shoal_abi::{AnyPlugin, Endpoint, PluginKind, RouteRequest, RouteTable};
use shoal_registry::{Registry, RegistryConfig, RegistryError, RegistryEvent};
use shoal_runtime::cache::CacheLimits;
use shoal_runtime::{CallError, LoadError, Runtime, RuntimeConfig};
use tokio::sync::mpsc::UnboundedReceiver;

fn runtime() -> Runtime {
    Runtime::new(RuntimeConfig { max_instances: 50, ..RuntimeConfig::default() }).expect("runtime")
}

fn open(dir: &std::path::Path) -> (Arc<Registry>, UnboundedReceiver<RegistryEvent>) {
    Registry::open(dir, runtime(), RegistryConfig::default()).expect("open registry")
}

fn drain(rx: &mut UnboundedReceiver<RegistryEvent>) -> Vec<(String, &'static str)> {
    let mut out = Vec::new();
    while let Ok(e) = rx.try_recv() {
        out.push((e.name, e.action));
    }
    out
}

fn route(registry: &Registry, name: &str, path: &str) -> Option<Result<Option<u32>, CallError>> {
    let table = RouteTable {
        generation: 1,
        endpoints: (0..2)
            .map(|i| Endpoint {
                id: format!("e{i}"),
                address: format!("127.0.0.1:{}", 9000 + i),
                weight: 1,
                labels: vec![],
                healthy: true,
            })
            .collect(),
    };
    registry.call(PluginKind::Router, name, |p| match p {
        AnyPlugin::Router(r) => {
            shoal_abi::route(r, &table, &mut RouteRequest { path: path.into(), ..RouteRequest::default() })
        }
        _ => unreachable!("a router"),
    })
}

#[tokio::test]
async fn push_stores_durably_and_survives_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (registry, mut events) = open(dir.path());
    let v = registry.push(PluginKind::Router, "rr", None, shoal_artifacts::ROUND_ROBIN, false).await.expect("push");
    assert_eq!((v.version.as_str(), v.seq), ("v1", 1));
    assert_eq!(v.digest, shoal_runtime::cache::digest(shoal_artifacts::ROUND_ROBIN));
    // The first version becomes active by itself.
    assert_eq!(registry.active(PluginKind::Router, "rr").expect("active").meta.version, "v1");
    assert_eq!(route(&registry, "rr", "/").expect("active").expect("call"), Some(0));
    assert_eq!(drain(&mut events), vec![("rr".into(), "uploaded"), ("rr".into(), "activated")]);
    registry.push(PluginKind::Router, "rr", Some("2.0.0"), shoal_artifacts::RANDOM, false).await.expect("push 2");
    assert_eq!(
        registry.active(PluginKind::Router, "rr").expect("active").meta.version,
        "v1",
        "push without activate keeps v1"
    );
    let before = registry.list().expect("list");
    drop(registry);

    let (reopened, _) = open(dir.path());
    // Everything but the in-memory call counters survives.
    let strip = |v: Vec<shoal_registry::PluginInfo>| {
        v.into_iter().map(|p| (p.kind, p.name, p.active, p.history, p.versions)).collect::<Vec<_>>()
    };
    assert_eq!(strip(reopened.list().expect("list")), strip(before));
    assert_eq!(reopened.active(PluginKind::Router, "rr").expect("active after restart").meta.version, "v1");
    assert_eq!(route(&reopened, "rr", "/").expect("active").expect("call"), Some(0));
    assert_eq!(reopened.bytes(PluginKind::Router, "rr", "2.0.0").expect("bytes"), shoal_artifacts::RANDOM);
}

#[tokio::test]
async fn every_bad_upload_is_refused_and_changes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let small =
        Runtime::new(RuntimeConfig { max_component_size: 1 << 20, max_instances: 20, ..RuntimeConfig::default() })
            .expect("runtime");
    let (registry, mut events) = Registry::open(dir.path(), small, RegistryConfig::default()).expect("open");
    registry.push(PluginKind::Router, "rr", Some("1"), shoal_artifacts::ROUND_ROBIN, false).await.expect("push");
    drain(&mut events);
    let before = registry.list().expect("list");

    let cases: Vec<(&str, Result<_, RegistryError>)> = vec![
        ("not wasm", registry.push(PluginKind::Router, "x", None, b"hello", false).await),
        ("core module", registry.push(PluginKind::Router, "x", None, b"\0asm\x01\0\0\0", false).await),
        ("wrong world", registry.push(PluginKind::Allocator, "x", None, shoal_artifacts::ROUND_ROBIN, false).await),
        ("incompatible", registry.push(PluginKind::Router, "x", None, shoal_artifacts::FUTURE_VERSION, false).await),
        ("too big", registry.push(PluginKind::Allocator, "x", None, &vec![0u8; (1 << 20) + 1], false).await),
        ("duplicate", registry.push(PluginKind::Router, "rr", Some("1"), shoal_artifacts::RANDOM, false).await),
        ("bad name", registry.push(PluginKind::Router, "Bad Name!", None, shoal_artifacts::ROUND_ROBIN, false).await),
        (
            "bad version",
            registry.push(PluginKind::Router, "rr", Some("../1"), shoal_artifacts::ROUND_ROBIN, false).await,
        ),
    ];
    for (what, result) in cases {
        let err = result.err().unwrap_or_else(|| panic!("{what} was accepted"));
        let expected = match what {
            "not wasm" => matches!(err, RegistryError::Load(LoadError::NotWasm)),
            "core module" => matches!(err, RegistryError::Load(LoadError::CoreModule)),
            "wrong world" => matches!(err, RegistryError::Load(LoadError::WrongWorld { .. })),
            "incompatible" => matches!(err, RegistryError::Load(LoadError::IncompatibleVersion { .. })),
            "too big" => matches!(err, RegistryError::Load(LoadError::TooLarge { .. })),
            "duplicate" => matches!(err, RegistryError::DuplicateVersion { .. }),
            "bad name" => matches!(err, RegistryError::InvalidName(_)),
            "bad version" => matches!(err, RegistryError::InvalidVersion(_)),
            _ => false,
        };
        assert!(expected, "{what}: unexpected error {err:?}");
        assert!(!err.to_string().is_empty());
    }
    assert_eq!(registry.list().expect("list"), before, "a refused upload changed the registry");
    assert!(drain(&mut events).is_empty(), "a refused upload emitted events");
    assert_eq!(route(&registry, "rr", "/").expect("still active").expect("call"), Some(0));
}

#[tokio::test]
async fn activation_is_atomic_and_rollback_returns() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (registry, mut events) = open(dir.path());
    registry.push(PluginKind::Router, "r", Some("a"), shoal_artifacts::ROUND_ROBIN, false).await.expect("push a");
    registry
        .push(PluginKind::Router, "r", Some("b"), shoal_artifacts::WEIGHTED_ROUND_ROBIN, false)
        .await
        .expect("push b");
    // A caller holding version a keeps it while b is activated.
    let held = registry.active(PluginKind::Router, "r").expect("active");
    registry.activate(PluginKind::Router, "r", "b").await.expect("activate b");
    assert_eq!(held.meta.version, "a");
    let AnyPlugin::Router(old) = &held.plugin else { unreachable!() };
    let table = RouteTable {
        generation: 1,
        endpoints: (0..3)
            .map(|i| Endpoint {
                id: format!("e{i}"),
                address: format!("127.0.0.1:{}", 9000 + i),
                weight: 1,
                labels: vec![],
                healthy: true,
            })
            .collect(),
    };
    let mut req = RouteRequest::default();
    assert_eq!(shoal_abi::route(old, &table, &mut req).expect("old version still serves"), Some(0));
    assert_eq!(registry.active(PluginKind::Router, "r").expect("active").meta.version, "b");
    let info = registry.show(PluginKind::Router, "r").expect("show");
    assert_eq!((info.active.as_deref(), info.history.clone()), (Some("b"), vec!["a".to_string()]));

    let back = registry.rollback(PluginKind::Router, "r").await.expect("rollback");
    assert_eq!(back.version, "a");
    assert_eq!(registry.active(PluginKind::Router, "r").expect("active").meta.version, "a");
    let err = registry.rollback(PluginKind::Router, "r").await.expect_err("nothing left to roll back to");
    assert!(matches!(err, RegistryError::NothingToRollBack { .. }), "{err}");
    let err = registry.activate(PluginKind::Router, "r", "zzz").await.expect_err("unknown version");
    assert!(matches!(err, RegistryError::VersionNotFound { .. }), "{err}");
    let actions: Vec<_> = drain(&mut events).into_iter().map(|(_, a)| a).collect();
    assert_eq!(actions, ["uploaded", "activated", "uploaded", "activated", "rolled-back"]);
}

#[tokio::test]
async fn a_new_version_that_keeps_failing_is_rolled_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (registry, mut events) = open(dir.path());
    registry.push(PluginKind::Router, "r", Some("good"), shoal_artifacts::ROUND_ROBIN, false).await.expect("push good");
    registry.push(PluginKind::Router, "r", Some("bad"), shoal_artifacts::HOSTILE_ROUTER, true).await.expect("push bad");
    drain(&mut events);
    assert_eq!(registry.active(PluginKind::Router, "r").expect("active").meta.version, "bad");
    for i in 0..5 {
        let result = route(&registry, "r", "/trap").expect("a plugin is active");
        // The guest panics at once; on a loaded machine (tests compiling components beside this
        // one) the call can still be descheduled past the router's 50 ms deadline. Either is a
        // failed call of the bad version, which is what the rollback counts.
        assert!(matches!(result, Err(CallError::Trap(_) | CallError::Timeout(_))), "call {i}: {result:?}");
    }
    // The rollback runs in a task of its own (the failing call may be on a hot path): wait for
    // its event.
    let mut actions = Vec::new();
    while actions.last().map(String::as_str) != Some("rolled-back") {
        let event = tokio::time::timeout(std::time::Duration::from_secs(10), events.recv())
            .await
            .unwrap_or_else(|_| panic!("no rollback after five failures; events: {actions:?}"))
            .expect("the registry is open");
        actions.push(event.action.to_owned());
    }
    assert_eq!(actions, ["failing", "rolled-back"]);
    assert_eq!(registry.active(PluginKind::Router, "r").expect("active").meta.version, "good");
    assert_eq!(route(&registry, "r", "/trap").expect("active").expect("the good version ignores the path"), Some(0));
    let info = registry.show(PluginKind::Router, "r").expect("show");
    assert_eq!(info.active.as_deref(), Some("good"));

    // The rollback is durable.
    drop(registry);
    let (reopened, _) = open(dir.path());
    assert_eq!(reopened.active(PluginKind::Router, "r").expect("active").meta.version, "good");
}

/// Waits for the registry's events until `last` and returns their actions.
async fn actions_until(events: &mut UnboundedReceiver<RegistryEvent>, last: &str) -> Vec<String> {
    let mut actions = Vec::new();
    while actions.last().map(String::as_str) != Some(last) {
        let event = tokio::time::timeout(std::time::Duration::from_secs(10), events.recv())
            .await
            .unwrap_or_else(|_| panic!("no `{last}` event; events: {actions:?}"))
            .expect("the registry is open");
        actions.push(event.action.to_owned());
    }
    actions
}

fn failed(result: Option<Result<Option<u32>, CallError>>) {
    let result = result.expect("a plugin is active");
    assert!(matches!(result, Err(CallError::Trap(_) | CallError::Timeout(_))), "{result:?}");
}

/// Issue 24: the rule holds whatever the version did before — 150 good calls, then five
/// failures in a row from eight threads at once while other pushes hold the registry's write
/// lock — and fires once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_version_that_served_long_is_rolled_back_once_it_fails_in_a_row_under_contention() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (registry, mut events) = open(dir.path());
    registry.push(PluginKind::Router, "r", Some("good"), shoal_artifacts::ROUND_ROBIN, false).await.expect("push good");
    registry.push(PluginKind::Router, "r", Some("flaky"), shoal_artifacts::HOSTILE_ROUTER, true).await.expect("push");
    for _ in 0..150 {
        assert_eq!(route(&registry, "r", "/").expect("active").expect("a good call"), Some(0));
    }
    drain(&mut events);
    // Other changes keep the write lock busy meanwhile.
    let busy = {
        let registry = registry.clone();
        tokio::spawn(async move {
            for i in 0..4 {
                let version = format!("v{i}");
                registry
                    .push(PluginKind::Router, "other", Some(&version), shoal_artifacts::ROUND_ROBIN, true)
                    .await
                    .expect("push");
            }
        })
    };
    let results: Vec<_> = std::thread::scope(|s| {
        let calls: Vec<_> = (0..8).map(|_| s.spawn(|| route(&registry, "r", "/trap").expect("active"))).collect();
        calls.into_iter().map(|c| c.join().expect("call")).collect()
    });
    // The calls after the fifth failure may already reach the good version.
    let failures = results.iter().filter(|r| r.is_err()).count();
    assert!(failures >= 5 && results.iter().all(|r| matches!(r, Err(_) | Ok(Some(0)))), "{results:?}");
    let actions = actions_until(&mut events, "rolled-back").await;
    assert_eq!(actions.iter().filter(|a| *a == "rolled-back").count(), 1, "{actions:?}");
    assert!(actions.contains(&"failing".to_owned()), "{actions:?}");
    busy.await.expect("the pushes");
    assert_eq!(registry.active(PluginKind::Router, "r").expect("active").meta.version, "good");
}

/// Issue 24: the failures must come within the window (on Tokio's clock, moved by the test): four,
/// then the window passes, then four more are a new streak; the fifth of that streak rolls back.
#[tokio::test(start_paused = true)]
async fn failures_further_apart_than_the_window_start_a_new_streak() {
    let dir = tempfile::tempdir().expect("tempdir");
    let window = std::time::Duration::from_secs(10);
    let config = RegistryConfig { rollback_after: 5, rollback_window: window, ..RegistryConfig::default() };
    let (registry, mut events) = Registry::open(dir.path(), runtime(), config).expect("open registry");
    registry.push(PluginKind::Router, "r", Some("good"), shoal_artifacts::ROUND_ROBIN, false).await.expect("push good");
    registry.push(PluginKind::Router, "r", Some("bad"), shoal_artifacts::HOSTILE_ROUTER, true).await.expect("push bad");
    drain(&mut events);
    for _ in 0..4 {
        failed(route(&registry, "r", "/trap"));
    }
    tokio::time::advance(window + std::time::Duration::from_secs(1)).await;
    for _ in 0..4 {
        failed(route(&registry, "r", "/trap"));
    }
    assert_eq!(drain(&mut events), vec![], "eight failures, but never five within 10 s");
    assert_eq!(registry.active(PluginKind::Router, "r").expect("active").meta.version, "bad");
    failed(route(&registry, "r", "/trap"));
    assert_eq!(actions_until(&mut events, "rolled-back").await, ["failing", "rolled-back"]);
    assert_eq!(registry.active(PluginKind::Router, "r").expect("active").meta.version, "good");
}

/// `component` with a custom section naming `n` appended: the same plugin, another digest.
fn variant(component: &[u8], n: usize) -> Vec<u8> {
    let name = b"shoal-test";
    let payload = n.to_string().into_bytes();
    let mut section = vec![name.len() as u8];
    section.extend_from_slice(name);
    section.extend_from_slice(&payload);
    let mut out = component.to_vec();
    out.push(0); // a custom section
    out.push(section.len() as u8); // its size (LEB128, under 128)
    out.extend_from_slice(&section);
    out
}

fn artifacts_on_disk(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|entries| entries.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default()
}

/// Issue 24: an upload the registry refuses leaves nothing in the compile cache (it was compiled
/// to be checked, and dropped), and the cache stays within its byte budgets, evicting the least
/// recently used, in memory and on disk: 40 distinct uploads, half of them refused, against
/// budgets of about one compiled router.
#[tokio::test]
async fn the_compile_cache_keeps_only_accepted_uploads_within_its_budgets() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = dir.path().join("cache");
    let roomy =
        Runtime::new(RuntimeConfig { cache_dir: Some(cache.clone()), max_instances: 50, ..RuntimeConfig::default() })
            .expect("runtime");
    let (registry, _events) =
        Registry::open(&dir.path().join("r1"), roomy.clone(), RegistryConfig::default()).expect("open");
    for n in 0..4 {
        // A router is not a framework: refused after it was compiled to be checked.
        let err = registry
            .push(PluginKind::Framework, "f", None, &variant(shoal_artifacts::ROUND_ROBIN, n), false)
            .await
            .expect_err("a router pushed as a framework");
        assert!(matches!(err, RegistryError::Load(_)), "{err}");
    }
    assert_eq!(roomy.cache().len(), 0, "refused uploads were kept in memory");
    assert_eq!(artifacts_on_disk(&cache), Vec::<String>::new(), "refused uploads were kept on disk");
    registry.push(PluginKind::Router, "r", None, &variant(shoal_artifacts::ROUND_ROBIN, 9), false).await.expect("push");
    assert_eq!((roomy.cache().len(), artifacts_on_disk(&cache).len()), (1, 1), "an accepted upload is kept");

    // Budgets of about one compiled router: each accepted upload evicts the one before.
    let cache = dir.path().join("cache-small");
    let one = roomy.cache().memory_bytes();
    let limits = CacheLimits { memory_bytes: one + one / 2, disk_bytes: 1 };
    let small = Runtime::new(RuntimeConfig {
        cache_dir: Some(cache.clone()),
        max_instances: 50,
        cache_limits: limits,
        ..RuntimeConfig::default()
    })
    .expect("runtime");
    let (registry, _events) =
        Registry::open(&dir.path().join("r2"), small.clone(), RegistryConfig::default()).expect("open");
    let mut newest = None;
    for n in 0..40 {
        let bytes = variant(shoal_artifacts::ROUND_ROBIN, 100 + n);
        // Every other upload is refused; the newest accepted one stays.
        if n % 2 == 1 {
            registry.push(PluginKind::Framework, "f", None, &bytes, false).await.expect_err("a router as a framework");
        } else {
            registry.push(PluginKind::Router, "r", None, &bytes, false).await.expect("push");
            newest = Some(shoal_runtime::cache::digest(&bytes));
        }
        assert!(
            small.cache().memory_bytes() <= limits.memory_bytes,
            "{} bytes in memory",
            small.cache().memory_bytes()
        );
        assert_eq!(small.cache().len(), 1);
        let on_disk = artifacts_on_disk(&cache);
        assert_eq!(on_disk.len(), 1, "{on_disk:?}");
        let digest = newest.as_deref().expect("one accepted");
        assert!(on_disk[0].starts_with(digest), "the newest accepted stays: {on_disk:?}");
    }
}

/// Issue 24: a plugin keeps at most `max_versions` versions (a push past it is a clear refusal
/// that changes nothing) and remembers at most `max_history` earlier ones to roll back to.
#[tokio::test]
async fn versions_and_history_are_capped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = RegistryConfig { max_versions: 4, max_history: 2, ..RegistryConfig::default() };
    let (registry, _events) = Registry::open(dir.path(), runtime(), config).expect("open registry");
    for v in ["a", "b", "c", "d"] {
        registry.push(PluginKind::Router, "r", Some(v), shoal_artifacts::ROUND_ROBIN, true).await.expect("push");
    }
    let info = registry.show(PluginKind::Router, "r").expect("show");
    assert_eq!(info.history, ["b", "c"], "the oldest target is forgotten: {info:?}");
    let err = registry
        .push(PluginKind::Router, "r", Some("e"), shoal_artifacts::ROUND_ROBIN, true)
        .await
        .expect_err("a fifth");
    assert!(matches!(err, RegistryError::TooManyVersions { limit: 4, .. }), "{err}");
    assert!(err.to_string().contains("delete old ones first"), "{err}");
    let info = registry.show(PluginKind::Router, "r").expect("show");
    assert_eq!((info.versions.len(), info.active.as_deref()), (4, Some("d")), "the refusal changed nothing");
    // Deleting one makes room.
    registry.delete(PluginKind::Router, "r", Some("a")).await.expect("delete a");
    registry.push(PluginKind::Router, "r", Some("e"), shoal_artifacts::ROUND_ROBIN, true).await.expect("push e");
    assert_eq!(registry.show(PluginKind::Router, "r").expect("show").history, ["c", "d"]);
}

#[tokio::test]
async fn delete_refuses_the_active_version_and_removes_the_rest() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (registry, _events) = open(dir.path());
    registry.push(PluginKind::Framework, "f", Some("1"), shoal_artifacts::KV_FRAMEWORK, false).await.expect("push");
    registry
        .push(PluginKind::Framework, "f", Some("2"), shoal_artifacts::HOSTILE_FRAMEWORK, false)
        .await
        .expect("push");
    let kv = registry.kv_for(PluginKind::Framework, "f");
    kv.set("count", b"41").expect("kv set");
    let err = registry.delete(PluginKind::Framework, "f", Some("1")).await.expect_err("active version");
    assert!(matches!(err, RegistryError::VersionActive { .. }), "{err}");
    registry.delete(PluginKind::Framework, "f", Some("2")).await.expect("delete inactive");
    assert_eq!(registry.show(PluginKind::Framework, "f").expect("show").versions.len(), 1);
    assert!(registry.bytes(PluginKind::Framework, "f", "2").is_err());
    registry.delete(PluginKind::Framework, "f", None).await.expect("delete plugin");
    assert!(matches!(registry.show(PluginKind::Framework, "f"), Err(RegistryError::NotFound { .. })));
    assert!(registry.active(PluginKind::Framework, "f").is_none());
    assert_eq!(kv.get("count").expect("kv get"), None, "the plugin's data goes with it");
    let err = registry.delete(PluginKind::Framework, "f", None).await.expect_err("gone");
    assert!(matches!(err, RegistryError::NotFound { .. }));
}

#[tokio::test]
async fn plugin_state_lives_in_rocksdb_across_restarts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let post = |registry: &Registry| {
        let req = shoal_abi::HttpRequest {
            method: "POST".into(),
            path: "/count".into(),
            query: String::new(),
            headers: vec![],
            body: vec![],
        };
        let resp = registry
            .call(PluginKind::Framework, "counter", |p| match p {
                AnyPlugin::Framework(f) => shoal_abi::handle_request(f, &req),
                _ => unreachable!(),
            })
            .expect("active")
            .expect("call");
        String::from_utf8(resp.body).expect("utf-8")
    };
    {
        let (registry, _) = open(dir.path());
        registry
            .push(PluginKind::Framework, "counter", None, shoal_artifacts::KV_FRAMEWORK, false)
            .await
            .expect("push");
        assert_eq!(post(&registry), "1");
        assert_eq!(post(&registry), "2");
    }
    let (registry, _) = open(dir.path());
    assert_eq!(post(&registry), "3");
    // Keys are scoped: another plugin's store does not see them.
    assert_eq!(registry.kv_for(PluginKind::Framework, "other").get("count").expect("get"), None);
    assert_eq!(
        registry.kv_for(PluginKind::Framework, "counter").list("", None, 10).expect("list"),
        vec!["count".to_string()]
    );
}
