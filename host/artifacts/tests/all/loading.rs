//! Loading: what is refused and why, the on-disk compile cache, concurrency.

use std::sync::Arc;

use shoal_abi::{AnyPlugin, Endpoint, PluginKind, RouteRequest, RouteTable};
use shoal_runtime::{LoadError, PluginScope, Runtime, RuntimeConfig};

use crate::runtime;

fn load(kind: PluginKind, bytes: &[u8]) -> Result<AnyPlugin, LoadError> {
    AnyPlugin::load(runtime(), kind, bytes, PluginScope::detached(kind.as_str(), "t", "1"), kind.default_limits())
}

#[test]
fn refuses_what_is_not_a_plugin_of_its_kind() {
    let err = load(PluginKind::Router, b"#!/bin/sh\necho hi\n").err().expect("not wasm");
    assert!(matches!(err, LoadError::NotWasm), "{err}");

    // The smallest core module: magic and version 1.
    let err = load(PluginKind::Router, b"\0asm\x01\0\0\0").err().expect("core module");
    assert!(matches!(err, LoadError::CoreModule), "{err}");
    assert!(err.to_string().contains("not a component"));

    let mut truncated = shoal_artifacts::ROUND_ROBIN.to_vec();
    truncated.truncate(truncated.len() / 2);
    let err = load(PluginKind::Router, &truncated).err().expect("truncated");
    assert!(matches!(err, LoadError::Invalid(_)), "{err}");

    // A router is not an allocator, and a health check may not be a router.
    let err = load(PluginKind::Allocator, shoal_artifacts::ROUND_ROBIN).err().expect("wrong world");
    assert!(matches!(err, LoadError::WrongWorld { world: "allocator", .. }), "{err}");
    assert!(err.to_string().contains("shoal:plugin/allocation@0.1.0"), "{err}");
    let err = load(PluginKind::Router, shoal_artifacts::HTTP_CHECK).err().expect("a health check is no router");
    assert!(matches!(err, LoadError::WrongWorld { world: "router", .. }), "{err}");
    assert!(err.to_string().contains("it exports: shoal:plugin/health@0.1.0"), "{err}");

    let small = Runtime::new(RuntimeConfig { max_component_size: 1024, max_instances: 10, ..RuntimeConfig::default() })
        .expect("runtime");
    let err = AnyPlugin::load(
        &small,
        PluginKind::Router,
        shoal_artifacts::ROUND_ROBIN,
        PluginScope::detached("router", "t", "1"),
        PluginKind::Router.default_limits(),
    )
    .err()
    .expect("too large");
    assert!(matches!(err, LoadError::TooLarge { limit: 1024, .. }), "{err}");
}

#[test]
fn compiles_once_per_digest_and_persists_artifacts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config =
        RuntimeConfig { cache_dir: Some(dir.path().to_owned()), max_instances: 10, ..RuntimeConfig::default() };
    let first = Runtime::new(config.clone()).expect("runtime");
    let a = first.compile(shoal_artifacts::RANDOM).expect("compile");
    let b = first.compile(shoal_artifacts::RANDOM).expect("compile again");
    assert_eq!(a.digest, b.digest);
    assert_eq!(a.digest, shoal_runtime::cache::digest(shoal_artifacts::RANDOM));
    assert_eq!(first.cache().len(), 1);
    let files: Vec<_> =
        std::fs::read_dir(dir.path()).expect("read dir").map(|e| e.expect("entry").file_name()).collect();
    assert_eq!(files.len(), 1, "{files:?}");
    assert!(files[0].to_string_lossy().starts_with(&a.digest));

    // A second runtime (a restarted host) loads the artifact instead of compiling, and it works.
    let second = Runtime::new(config).expect("runtime");
    let started = std::time::Instant::now();
    let plugin = AnyPlugin::load(
        &second,
        PluginKind::Router,
        shoal_artifacts::RANDOM,
        PluginScope::detached("router", "r", "1"),
        PluginKind::Router.default_limits(),
    )
    .expect("load from cache");
    let loaded_in = started.elapsed();
    let AnyPlugin::Router(p) = plugin else { unreachable!() };
    let table = RouteTable {
        generation: 1,
        endpoints: (0..1)
            .map(|i| Endpoint {
                id: format!("e{i}"),
                address: format!("127.0.0.1:{}", 9000 + i),
                weight: 1,
                labels: vec![],
                healthy: true,
            })
            .collect(),
    };
    assert_eq!(shoal_abi::route(&p, &table, &mut RouteRequest::default()).expect("route"), Some(0));
    // A corrupt artifact is discarded and recompiled, not trusted. (Drop the users of the mapped
    // artifact first and replace the file rather than truncate it: truncating a file another
    // process has mapped is a SIGBUS, which is why the cache itself only ever renames.)
    drop(p);
    drop(second);
    let path = dir.path().join(&files[0]);
    std::fs::remove_file(&path).expect("remove");
    std::fs::write(&path, b"garbage").expect("corrupt");
    let third = Runtime::new(RuntimeConfig {
        cache_dir: Some(dir.path().to_owned()),
        max_instances: 10,
        ..RuntimeConfig::default()
    })
    .expect("runtime");
    third.compile(shoal_artifacts::RANDOM).expect("recompile over a corrupt artifact");
    assert!(std::fs::read(&path).expect("artifact").len() > 1000, "artifact rewritten");
    eprintln!("load from on-disk cache took {loaded_in:?}");
}

#[test]
fn many_callers_in_parallel() {
    let AnyPlugin::Router(p) = load(PluginKind::Router, shoal_artifacts::ROUND_ROBIN).expect("load") else {
        unreachable!()
    };
    let table = Arc::new(RouteTable {
        generation: 1,
        endpoints: (0..4)
            .map(|i| Endpoint {
                id: format!("e{i}"),
                address: format!("127.0.0.1:{}", 9000 + i),
                weight: 1,
                labels: vec![],
                healthy: true,
            })
            .collect(),
    });
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let (p, table) = (p.clone(), table.clone());
            std::thread::spawn(move || {
                let mut req = RouteRequest::default();
                (0..2000).map(|_| shoal_abi::route(&p, &table, &mut req).expect("route").expect("pick")).max()
            })
        })
        .collect();
    for t in threads {
        assert!(t.join().expect("thread").expect("picks") < 4);
    }
    let stats = p.stats();
    assert_eq!(stats.ok.load(std::sync::atomic::Ordering::Relaxed), 8000);
    let made = stats.instantiated.load(std::sync::atomic::Ordering::Relaxed);
    assert!((1..=4).contains(&made), "{made} instances for 4 callers");
}
