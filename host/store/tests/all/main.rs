//! The state store against real RocksDB in temporary directories: CRUD, compare-and-set, TTL,
//! listings across shards, batches, refusals that change nothing, and reopening; as a cluster on
//! the in-process bus ([`cluster`]), and fencing off deposed masters ([`fencing`]).

mod cluster;
mod fencing;
mod replicated;
mod replicated_moves;
mod shard_log;

use std::sync::Arc;
use std::time::Duration;

use shoal_store::{
    Durability, Entry, MAX_BATCH_OPS, MAX_KEY_LEN, MAX_VALUE_LEN, Op, PutOptions, Store, StoreConfig, StoreError,
    Sweeper,
};
use shoal_testkit::eventually_sync;

/// A coordinator on `bus` of leader term `term`, keeping its map in `state`; a new store gets
/// `shards` shards of `replicas` copies each (no automatic scale-out). The caller runs it.
fn coordinator_of(
    bus: &shoal_bus::SharedBus,
    state: Arc<shoal_state::StateDb>,
    shards: u32,
    replicas: usize,
    term: u64,
) -> Arc<shoal_store::coordinator::Coordinator> {
    let config = shoal_store::coordinator::CoordinatorConfig {
        state,
        initial_shards: shards,
        auto_scale_out: false,
        source: "/test".into(),
        term,
        replicas,
    };
    shoal_store::coordinator::Coordinator::open(bus.clone(), config).expect("coordinator")
}

/// A local state database in `dir` with the store's table.
fn local_state(dir: &std::path::Path) -> Arc<shoal_state::StateDb> {
    shoal_state::StateDb::open_local(&dir.join("state"), &[shoal_store::coordinator::STORE_TABLE]).expect("state")
}

fn open(dir: &tempfile::TempDir, shards: u32) -> Arc<Store> {
    Store::open(&dir.path().join("store"), StoreConfig { shards, durability: Durability::Wal }).expect("open store")
}

fn put(store: &Store, ns: &str, key: &str, value: &str) -> u64 {
    store.put(ns, key, value.as_bytes(), PutOptions::default()).expect("put")
}

fn value(store: &Store, ns: &str, key: &str) -> Option<String> {
    store.get(ns, key).expect("get").map(|e| String::from_utf8(e.value).expect("utf-8"))
}

/// Every live entry of `ns`, through the listing.
fn dump(store: &Store, ns: &str) -> Vec<(String, Vec<u8>, u64)> {
    let mut all = Vec::new();
    let mut cursor = None;
    loop {
        let page = store.list(ns, "", cursor.as_deref(), 1000).expect("list");
        all.extend(page.entries.into_iter().map(|e| (e.key, e.value, e.version)));
        match page.cursor {
            Some(c) => cursor = Some(c),
            None => return all,
        }
    }
}

#[test]
fn get_put_delete_with_versions() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(&dir, 4);
    assert_eq!(store.get("app", "a").expect("get"), None);
    let v1 = put(&store, "app", "a", "one");
    assert!(v1 >= 1);
    let entry = store.get("app", "a").expect("get").expect("present");
    assert_eq!(entry, Entry { key: "a".into(), value: b"one".to_vec(), version: v1, expires_at: None });
    let v2 = put(&store, "app", "a", "two");
    assert!(v2 > v1, "versions grow per key: {v1} then {v2}");
    assert_eq!(value(&store, "app", "a").as_deref(), Some("two"));
    // Namespaces are separate.
    assert_eq!(store.get("other", "a").expect("get"), None);
    let deleted = store.delete("app", "a", None).expect("delete");
    assert!(deleted > v2);
    assert_eq!(store.get("app", "a").expect("get"), None);
    assert!(matches!(store.delete("app", "a", None), Err(StoreError::NotFound { .. })));
    // A key recreated after a delete still gets a higher version.
    assert!(put(&store, "app", "a", "three") > deleted);
    // Keys with slashes, spaces and non-ASCII are fine.
    put(&store, "app", "dir/sub dir/ключ", "x");
    assert_eq!(value(&store, "app", "dir/sub dir/ключ").as_deref(), Some("x"));
}

#[test]
fn compare_and_set_and_create_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(&dir, 4);
    let cas = |version| PutOptions { version: Some(version), ttl: None };
    let v1 = store.put("app", "k", b"1", cas(0)).expect("create");
    match store.put("app", "k", b"again", cas(0)) {
        Err(StoreError::Conflict { expected: 0, actual, .. }) => assert_eq!(actual, v1),
        other => panic!("create-only over an existing key: {other:?}"),
    }
    let v2 = store.put("app", "k", b"2", cas(v1)).expect("cas with the right version");
    assert!(matches!(store.put("app", "k", b"stale", cas(v1)), Err(StoreError::Conflict { .. })));
    assert!(matches!(store.put("app", "missing", b"x", cas(5)), Err(StoreError::Conflict { actual: 0, .. })));
    assert!(matches!(store.delete("app", "k", Some(v1)), Err(StoreError::Conflict { .. })));
    assert!(matches!(store.delete("app", "missing", Some(3)), Err(StoreError::Conflict { .. })));
    assert_eq!(value(&store, "app", "k").as_deref(), Some("2"));
    assert_eq!(store.get("app", "missing").expect("get"), None);
    store.delete("app", "k", Some(v2)).expect("cas delete");
    assert_eq!(store.get("app", "k").expect("get"), None);
}

#[test]
fn concurrent_increments_with_cas_lose_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(&dir, 4);
    store.put("app", "counter", b"0", PutOptions::default()).expect("put");
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let store = store.clone();
            std::thread::spawn(move || {
                let mut done = 0;
                while done < 50 {
                    let entry = store.get("app", "counter").expect("get").expect("present");
                    let n: u64 = String::from_utf8(entry.value).expect("utf-8").parse().expect("number");
                    let next = (n + 1).to_string();
                    let options = PutOptions { version: Some(entry.version), ttl: None };
                    match store.put("app", "counter", next.as_bytes(), options) {
                        Ok(_) => done += 1,
                        Err(StoreError::Conflict { .. }) => {}
                        Err(err) => panic!("{err}"),
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("thread");
    }
    assert_eq!(value(&store, "app", "counter").as_deref(), Some("200"));
}

/// With `--sync`, concurrent writers of one shard are committed in groups whose leader lingers
/// for more: every acknowledged write is there after a reopen, versions are unique and grow per
/// writer, a compare-and-set counter shared by all loses no increment, and a lone writer (which
/// never lingers) is still served.
#[test]
fn synced_group_commits_keep_every_write_and_condition() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("store");
    let store = Store::open(&path, StoreConfig { shards: 1, durability: Durability::Sync }).expect("open");
    store.put("app", "counter", b"0", PutOptions::default()).expect("put");
    let writers = 16;
    let each = 40;
    let threads: Vec<_> = (0..writers)
        .map(|w| {
            let store = store.clone();
            std::thread::spawn(move || {
                let mut versions = Vec::new();
                for i in 0..each {
                    versions.push(store.put("app", &format!("w{w}/{i}"), b"v", PutOptions::default()).expect("put"));
                    loop {
                        let entry = store.get("app", "counter").expect("get").expect("present");
                        let n: u64 = String::from_utf8(entry.value).expect("utf-8").parse().expect("number");
                        let options = PutOptions { version: Some(entry.version), ttl: None };
                        match store.put("app", "counter", (n + 1).to_string().as_bytes(), options) {
                            Ok(v) => {
                                versions.push(v);
                                break;
                            }
                            Err(StoreError::Conflict { .. }) => {}
                            Err(err) => panic!("{err}"),
                        }
                    }
                }
                versions
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in threads {
        let versions = t.join().expect("thread");
        assert!(versions.windows(2).all(|w| w[0] < w[1]), "one writer's versions must grow: {versions:?}");
        all.extend(versions);
    }
    let total = all.len();
    all.sort_unstable();
    all.dedup();
    assert_eq!(all.len(), total, "a version was handed out twice");
    assert_eq!(value(&store, "app", "counter"), Some((writers * each).to_string()));
    drop(store);
    let store = Store::open(&path, StoreConfig { shards: 1, durability: Durability::Sync }).expect("reopen");
    assert_eq!(dump(&store, "app").len(), writers * each + 1);
    assert_eq!(value(&store, "app", "counter"), Some((writers * each).to_string()));
    for i in 0..20 {
        put(&store, "app", &format!("alone/{i}"), "v");
    }
    assert_eq!(dump(&store, "app").len(), writers * each + 21);
}

/// Async writers (`batch_async`: they wait in the shard's queue without a thread, a blocking task
/// drains it) and blocking writers (`put`: each may commit the queue itself) share the same
/// synced group commits: every write is there after a reopen, versions are unique and grow per
/// writer, a compare-and-set counter loses no increment, and a batch across shards through
/// `batch_async` is all-or-nothing as with `batch`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_and_blocking_writers_share_group_commits() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("store");
    let store = Store::open(&path, StoreConfig { shards: 2, durability: Durability::Sync }).expect("open");
    store.put("app", "counter", b"0", PutOptions::default()).expect("put");
    let each = 30;

    async fn increment(store: &Arc<Store>) -> u64 {
        loop {
            let entry = store.get("app", "counter").expect("get").expect("present");
            let n: u64 = String::from_utf8(entry.value).expect("utf-8").parse().expect("number");
            let op = Op::Put {
                key: "counter".into(),
                value: (n + 1).to_string().into_bytes(),
                options: PutOptions { version: Some(entry.version), ttl: None },
            };
            match store.batch_async("app", vec![op]).await {
                Ok(v) => return v[0],
                Err(StoreError::Conflict { .. }) => tokio::task::yield_now().await,
                Err(err) => panic!("{err}"),
            }
        }
    }

    let tasks: Vec<_> = (0..24)
        .map(|w| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut versions = Vec::new();
                for i in 0..each {
                    let key = format!("a{w}/{i}");
                    let shard = store.shard_of("app", &key);
                    let op = Op::Put { key, value: b"v".to_vec(), options: PutOptions::default() };
                    versions.push((shard, store.batch_async("app", vec![op]).await.expect("async put")[0]));
                    if i % 3 == 0 {
                        increment(&store).await;
                    }
                }
                versions
            })
        })
        .collect();
    let threads: Vec<_> = (0..4)
        .map(|w| {
            let store = store.clone();
            std::thread::spawn(move || {
                (0..each)
                    .map(|i| {
                        let key = format!("b{w}/{i}");
                        (store.shard_of("app", &key), store.put("app", &key, b"v", PutOptions::default()).expect("put"))
                    })
                    .collect::<Vec<(u32, u64)>>()
            })
        })
        .collect();
    // Versions are per shard: one writer's versions must grow within each shard.
    let grows = |versions: &[(u32, u64)]| {
        for shard in 0..2 {
            let mine: Vec<u64> = versions.iter().filter(|(s, _)| *s == shard).map(|(_, v)| *v).collect();
            assert!(mine.windows(2).all(|w| w[0] < w[1]), "one writer's versions must grow in shard {shard}: {mine:?}");
        }
    };
    for t in tasks {
        grows(&t.await.expect("task"));
    }
    for t in threads {
        grows(&t.join().expect("thread"));
    }
    // The keys' versions must not repeat within a shard.
    let mut per_shard: std::collections::BTreeMap<u32, Vec<u64>> = Default::default();
    for (key, _, version) in dump(&store, "app") {
        per_shard.entry(store.shard_of("app", &key)).or_default().push(version);
    }
    for versions in per_shard.values_mut() {
        let n = versions.len();
        versions.sort_unstable();
        versions.dedup();
        assert_eq!(versions.len(), n, "a version was handed out twice in a shard");
    }
    let increments = 24 * (0..each).filter(|i| i % 3 == 0).count();
    assert_eq!(value(&store, "app", "counter"), Some(increments.to_string()));

    // A batch across both shards through the async path: one failed condition writes nothing.
    let (k0, k1) = {
        let mut keys = (0..100).map(|i| format!("x{i}"));
        let k0 = keys.clone().find(|k| store.shard_of("app", k) == 0).expect("a key of shard 0");
        let k1 = keys.find(|k| store.shard_of("app", k) == 1).expect("a key of shard 1");
        (k0, k1)
    };
    let both = |v: &str, version: Option<u64>| {
        vec![
            Op::Put { key: k0.clone(), value: v.as_bytes().to_vec(), options: PutOptions::default() },
            Op::Put { key: k1.clone(), value: v.as_bytes().to_vec(), options: PutOptions { version, ttl: None } },
        ]
    };
    let versions = store.batch_async("app", both("one", None)).await.expect("cross-shard batch");
    assert_eq!(versions.len(), 2);
    assert!(matches!(
        store.batch_async("app", both("two", Some(versions[1] + 1000))).await,
        Err(StoreError::Conflict { .. })
    ));
    assert_eq!(value(&store, "app", &k0).as_deref(), Some("one"), "a failed batch wrote nothing");
    // Bad input is refused before anything is queued.
    let oversized = Op::Put { key: "k".repeat(MAX_KEY_LEN + 1), value: Vec::new(), options: PutOptions::default() };
    assert!(matches!(store.batch_async("app", vec![oversized]).await, Err(StoreError::InvalidKey(_))));

    let written = dump(&store, "app").len();
    assert_eq!(written, 24 * each + 4 * each + 1 + 2);
    drop(store);
    let store = Store::open(&path, StoreConfig { shards: 2, durability: Durability::Sync }).expect("reopen");
    assert_eq!(dump(&store, "app").len(), written, "every acknowledged write survives a reopen");
    assert_eq!(value(&store, "app", "counter"), Some(increments.to_string()));
}

#[test]
fn expired_entries_are_invisible_and_swept() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(&dir, 2);
    let short = PutOptions { version: None, ttl: Some(Duration::from_millis(200)) };
    let v = store.put("app", "session", b"s", short).expect("put");
    store.put("app", "keep", b"k", PutOptions::default()).expect("put");
    let entry = store.get("app", "session").expect("get").expect("live before expiry");
    assert!(entry.expires_at.is_some());
    assert_eq!(store.sweep_expired().expect("sweep"), 0, "nothing has expired yet");
    eventually_sync("the entry to expire", Duration::from_secs(10), || {
        store.get("app", "session").expect("get").is_none().then_some(())
    });
    assert_eq!(dump(&store, "app").len(), 1, "an expired entry is not listed");
    assert!(matches!(store.delete("app", "session", None), Err(StoreError::NotFound { .. })));
    // An expired key counts as absent for create-only, and the new entry's version is higher.
    let again =
        store.put("app", "session", b"t", PutOptions { version: Some(0), ttl: Some(Duration::from_millis(50)) });
    assert!(again.expect("create over an expired key") > v);
    // The sweeper deletes expired entries from disk.
    let sweeper = Sweeper::spawn(&store, Duration::from_millis(20));
    eventually_sync("the sweeper to delete the expired entry", Duration::from_secs(10), || {
        (store.sweep_expired().expect("sweep") == 0 && store.get("app", "session").expect("get").is_none())
            .then_some(())
    });
    drop(sweeper);
    assert_eq!(value(&store, "app", "keep").as_deref(), Some("k"));
}

#[test]
fn listing_merges_shards_in_key_order_with_pages() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(&dir, 5);
    let keys: Vec<String> = (0..250).map(|i| format!("user/{i:04}")).collect();
    for k in &keys {
        put(&store, "app", k, k);
    }
    put(&store, "app", "zzz-other", "x");
    put(&store, "app", "user", "exactly the prefix without a slash");
    put(&store, "other", "user/0001", "another namespace");
    let shards: std::collections::HashSet<u32> = keys.iter().map(|k| store.shard_of("app", k)).collect();
    assert_eq!(shards.len(), 5, "the keys span every shard");

    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let page = store.list("app", "user/", cursor.as_deref(), 40).expect("list");
        assert!(page.entries.len() <= 40);
        pages += 1;
        seen.extend(page.entries.iter().map(|e| e.key.clone()));
        match page.cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    assert_eq!(pages, 7, "250 keys in pages of 40");
    assert_eq!(seen, keys, "every key once, in order");
    assert_eq!(dump(&store, "app").len(), 252);
    assert_eq!(dump(&store, "other").len(), 1);
    assert!(store.list("app", "nothing-here/", None, 10).expect("list").entries.is_empty());
    assert!(matches!(store.list("app", "", Some("not hex"), 10), Err(StoreError::InvalidListing(_))));
    assert!(matches!(store.list("app", "", None, 0), Err(StoreError::InvalidListing(_))));
    assert!(matches!(store.list("app", "", None, 100_000), Err(StoreError::InvalidListing(_))));
}

#[test]
fn batches_are_all_or_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(&dir, 4);
    let v = put(&store, "app", "existing", "old");
    let p = |key: &str, value: &str, version: Option<u64>| Op::Put {
        key: key.into(),
        value: value.as_bytes().to_vec(),
        options: PutOptions { version, ttl: None },
    };
    // Keys on several shards.
    let keys: Vec<String> = (0..16).map(|i| format!("b{i}")).collect();
    let shards: std::collections::HashSet<u32> = keys.iter().map(|k| store.shard_of("app", k)).collect();
    assert!(shards.len() > 1);
    let mut ops: Vec<Op> = keys.iter().map(|k| p(k, k, Some(0))).collect();
    ops.push(Op::Delete { key: "existing".into(), version: Some(v) });
    let versions = store.batch("app", ops).expect("batch");
    assert_eq!(versions.len(), 17);
    assert!(versions.iter().all(|&v| v > 0));
    for k in &keys {
        assert_eq!(value(&store, "app", k).as_deref(), Some(k.as_str()));
    }
    assert_eq!(store.get("app", "existing").expect("get"), None);

    // One failed condition anywhere: nothing is written on any shard.
    let before = dump(&store, "app");
    let mut ops: Vec<Op> = (0..16).map(|i| p(&format!("c{i}"), "new", None)).collect();
    ops.push(p("b3", "overwrite", Some(0)));
    assert!(matches!(store.batch("app", ops), Err(StoreError::Conflict { .. })));
    let ops = vec![p("c1", "new", None), Op::Delete { key: "nope".into(), version: None }];
    assert!(matches!(store.batch("app", ops), Err(StoreError::NotFound { .. })));
    assert_eq!(dump(&store, "app"), before);
}

#[test]
fn bad_input_is_refused_and_writes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(&dir, 3);
    put(&store, "app", "a", "1");
    let before = dump(&store, "app");
    let long_key = "k".repeat(MAX_KEY_LEN + 1);
    let big = vec![0u8; MAX_VALUE_LEN + 1];
    let ok = PutOptions::default();
    let cases: Vec<(&str, Result<u64, StoreError>)> = vec![
        ("empty namespace", store.put("", "a", b"x", ok)),
        ("upper-case namespace", store.put("App", "a", b"x", ok)),
        ("namespace with a slash", store.put("a/b", "a", b"x", ok)),
        ("long namespace", store.put(&"n".repeat(64), "a", b"x", ok)),
        ("empty key", store.put("app", "", b"x", ok)),
        ("long key", store.put("app", &long_key, b"x", ok)),
        ("big value", store.put("app", "a", &big, ok)),
        ("zero ttl", store.put("app", "a", b"x", PutOptions { version: None, ttl: Some(Duration::ZERO) })),
        (
            "huge ttl",
            store.put("app", "a", b"x", PutOptions { version: None, ttl: Some(Duration::from_secs(u64::MAX / 4)) }),
        ),
        ("empty batch", store.batch("app", vec![]).map(|_| 0)),
        (
            "batch too large",
            store
                .batch(
                    "app",
                    (0..=MAX_BATCH_OPS).map(|i| Op::Put { key: format!("x{i}"), value: vec![], options: ok }).collect(),
                )
                .map(|_| 0),
        ),
        (
            "key twice in a batch",
            store
                .batch(
                    "app",
                    vec![
                        Op::Put { key: "d".into(), value: vec![], options: ok },
                        Op::Delete { key: "d".into(), version: None },
                    ],
                )
                .map(|_| 0),
        ),
        (
            "bad op late in a batch",
            store
                .batch(
                    "app",
                    vec![
                        Op::Put { key: "fine".into(), value: vec![], options: ok },
                        Op::Put { key: "big".into(), value: big.clone(), options: ok },
                    ],
                )
                .map(|_| 0),
        ),
        ("delete with empty key", store.delete("app", "", None)),
    ];
    for (what, result) in cases {
        assert!(
            matches!(
                result,
                Err(StoreError::InvalidNamespace(_)
                    | StoreError::InvalidKey(_)
                    | StoreError::ValueTooLarge { .. }
                    | StoreError::InvalidTtl(_)
                    | StoreError::InvalidBatch(_)
                    | StoreError::BatchTooLarge { .. })
            ),
            "{what}: {result:?}"
        );
    }
    assert!(matches!(store.get("Bad", "a"), Err(StoreError::InvalidNamespace(_))));
    assert!(matches!(store.get("app", &long_key), Err(StoreError::InvalidKey(_))));
    assert_eq!(dump(&store, "app"), before, "a refused operation wrote something");
    // The version counter of the shard did not move either: the next write of the same key gets
    // the very next version.
    assert_eq!(put(&store, "app", "a", "2"), before[0].2 + 1);
}

#[test]
fn reopening_keeps_data_and_versions_and_the_shard_count() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut written, last) = {
        let store = open(&dir, 4);
        let mut written = Vec::new();
        let mut last = 0;
        for i in 0..100 {
            let key = format!("k{i}");
            last = put(&store, "app", &key, &format!("v{i}"));
            written.push((key, format!("v{i}").into_bytes(), last));
        }
        store.delete("app", "k0", None).expect("delete");
        written.remove(0);
        (written, last)
    };
    let store = open(&dir, 4);
    written.sort();
    assert_eq!(dump(&store, "app"), written);
    // Versions keep growing after a restart: no version is handed out twice.
    let next = put(&store, "app", "k0", "again");
    assert!(next > last, "{next} after {last}");
    drop(store);
    match Store::open(&dir.path().join("store"), StoreConfig { shards: 5, ..StoreConfig::default() }) {
        Err(StoreError::Config(message)) => assert!(message.contains("has 4 shards"), "{message}"),
        Err(other) => panic!("{other}"),
        Ok(_) => panic!("opened a 4-shard store with 5 shards"),
    }
    assert!(matches!(
        Store::open(&dir.path().join("zero"), StoreConfig { shards: 0, ..StoreConfig::default() }),
        Err(StoreError::Config(_))
    ));
    // The synced mode opens and writes the same data.
    let synced =
        Store::open(&dir.path().join("store"), StoreConfig { shards: 4, durability: Durability::Sync }).expect("open");
    assert_eq!(value(&synced, "app", "k0").as_deref(), Some("again"));
    put(&synced, "app", "synced", "yes");
}
