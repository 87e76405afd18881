//! Plugins' key-value stores in the sharded state store: the backend of the `keyvalue` import
//! on a node that serves the store.
//!
//! Each plugin (kind + name) gets the system namespace `_plugin-<kind>-<name>`
//! ([`shoal_store::plugin_namespace`]); every version and instance of the plugin share it, and
//! admin tokens can inspect it through `/v1/kv` (operators read it). Writes have the store's
//! durability (the node's sync policy), survive the master's restart and follow online
//! scale-outs like any app's keys.
//!
//! The import is synchronous (plugin calls are), the store client is async: a call leaves the
//! Tokio worker with `block_in_place` and waits on the runtime the client lives on. That needs a
//! multi-thread runtime for the client (the `shoal` binary's); on a current-thread one the calls
//! fail with an error instead of deadlocking. A caller on a current-thread runtime of its own
//! (the gateway's workers run their routers there) waits on a helper thread instead.
//!
//! Each call waits at most [`CALL_TIMEOUT`], and no later than the plugin call's deadline the
//! `keyvalue` import passes in (`until`, see [`shoal_runtime::KvBackend`]): the epoch
//! interruption that bounds a plugin call cannot fire while the call waits here, so without it a
//! few store calls of a frozen store would hold a router (deadline 50 ms) or a framework for
//! 800 ms each. A call whose deadline has passed fails at once, without asking the store.
//!
//! Before this store existed, plugins' data lived in the registry's own RocksDB;
//! [`migrate_registry_kv`] moves it over once at start.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use shoal_abi::PluginKind;
use shoal_registry::{KvProvider, Registry};
use shoal_runtime::{KvBackend, KvError};
use shoal_store::client::StoreClient;
use shoal_store::{PutOptions, StoreError};
use tokio::runtime::{Handle, RuntimeFlavor};

/// Longest a single store call of a plugin may take, whatever its deadline leaves (host code
/// without a deadline, such as the migration, gets this bound too).
pub const CALL_TIMEOUT: Duration = Duration::from_millis(800);
/// Keys per listing request (values come along, so pages stay small).
const LIST_BATCH: usize = 200;

/// Whether this node may write the stores of the plugins only a leader runs (frameworks and
/// allocators), asked at every write. On one of several masters: while its lease says it leads,
/// on its own clock. The store does not fence plugins' writes by term, so without this a deposed
/// leader's plugin — a process frozen in the middle of a call, resuming after another master took
/// over — would write the state it held before the freeze over the new leader's (seen: an app
/// scaled by the new leader scaled back, an instance killed).
pub type LeaderGate = Arc<dyn Fn() -> bool + Send + Sync>;

/// One plugin's store: a namespace of the state store.
pub struct StoreKv {
    client: Arc<StoreClient>,
    handle: Handle,
    namespace: String,
    /// Writes only while this says yes (`None`: always).
    gate: Option<LeaderGate>,
}

impl StoreKv {
    /// The store of plugin `name` of `kind`. Call inside the Tokio runtime the client runs on.
    pub fn new(client: Arc<StoreClient>, kind: PluginKind, name: &str) -> StoreKv {
        StoreKv {
            client,
            handle: Handle::current(),
            namespace: shoal_store::plugin_namespace(kind.as_str(), name),
            gate: None,
        }
    }

    /// Refuse a write when the gate says this node no longer leads.
    fn may_write(&self) -> Result<(), KvError> {
        match &self.gate {
            Some(leads) if !leads() => {
                Err(KvError::Unavailable("this master no longer leads: a deposed leader's plugins write nothing"))
            }
            _ => Ok(()),
        }
    }

    /// The namespace this store writes.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// Run `call` on the client's runtime, waiting at most [`CALL_TIMEOUT`] and no later than
    /// `until`.
    fn run<T: Send>(
        &self,
        call: impl Future<Output = Result<T, StoreError>> + Send,
        until: Option<Instant>,
    ) -> Result<T, KvError> {
        let wait = wait_for(until)?;
        if self.handle.runtime_flavor() != RuntimeFlavor::MultiThread {
            return Err(KvError::Unavailable(
                "the state store is reachable from plugins only on a multi-thread runtime",
            ));
        }
        let bounded = async { tokio::time::timeout(wait, call).await };
        let answer = match Handle::try_current().ok().map(|h| h.runtime_flavor()) {
            // On a worker (or a blocking thread) of a multi-thread runtime: leave it first.
            Some(RuntimeFlavor::MultiThread) => tokio::task::block_in_place(|| self.handle.block_on(bounded)),
            // On a current-thread runtime (a gateway worker calling its router): that thread
            // cannot leave its runtime, so the call waits on a helper thread of its own.
            Some(_) => match std::thread::scope(|scope| scope.spawn(|| self.handle.block_on(bounded)).join()) {
                Ok(answer) => answer,
                Err(_) => return Err(KvError::Unavailable("the thread waiting on the state store panicked")),
            },
            None => self.handle.block_on(bounded),
        };
        match answer {
            Ok(result) => result.map_err(KvError::backend),
            Err(_) => Err(KvError::Timeout(wait)),
        }
    }
}

/// How long a store call may wait: [`CALL_TIMEOUT`], or less when `until` comes sooner; an error
/// when `until` has passed.
fn wait_for(until: Option<Instant>) -> Result<Duration, KvError> {
    let Some(until) = until else { return Ok(CALL_TIMEOUT) };
    match until.checked_duration_since(Instant::now()) {
        Some(left) if !left.is_zero() => Ok(left.min(CALL_TIMEOUT)),
        _ => Err(KvError::DeadlinePassed),
    }
}

impl KvBackend for StoreKv {
    fn get_until(&self, key: &str, until: Option<Instant>) -> Result<Option<Vec<u8>>, KvError> {
        self.run(self.client.get(&self.namespace, key), until).map(|e| e.map(|e| e.value))
    }

    fn set_until(&self, key: &str, value: &[u8], until: Option<Instant>) -> Result<(), KvError> {
        self.may_write()?;
        self.run(self.client.put(&self.namespace, key, value, PutOptions::default()), until).map(drop)
    }

    fn delete_until(&self, key: &str, until: Option<Instant>) -> Result<(), KvError> {
        self.may_write()?;
        self.run(self.client.delete(&self.namespace, key, None), until).map(drop)
    }

    /// Every page under the same `until`: a listing of many pages ends by the deadline too.
    fn list_until(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
        until: Option<Instant>,
    ) -> Result<Vec<String>, KvError> {
        let mut keys = Vec::new();
        let mut cursor = start_after.map(shoal_store::cursor_after);
        while keys.len() < limit {
            let want = (limit - keys.len()).min(LIST_BATCH);
            let page = self.run(self.client.list(&self.namespace, prefix, cursor.as_deref(), want), until)?;
            keys.extend(page.entries.into_iter().map(|e| e.key));
            match page.cursor {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
        Ok(keys)
    }
}

/// The registry's source of plugin stores on a node with a state store; frameworks' and
/// allocators' stores write only while `gate` says yes.
pub fn provider(client: Arc<StoreClient>, gate: Option<LeaderGate>) -> KvProvider {
    Arc::new(move |kind, name| {
        let mut kv = StoreKv::new(client.clone(), kind, name);
        if matches!(kind, PluginKind::Framework | PluginKind::Allocator) {
            kv.gate = gate.clone();
        }
        Arc::new(kv) as Arc<dyn KvBackend>
    })
}

/// Move plugins' data that an earlier version kept in the registry's RocksDB into the state
/// store, retrying while the store is not reachable yet (a master whose store nodes start after
/// it). Returns the number of keys moved. Runs before any plugin is called, so no plugin sees
/// its state half moved.
pub async fn migrate_registry_kv(registry: Arc<Registry>) -> anyhow::Result<usize> {
    let mut waited = Duration::ZERO;
    loop {
        let attempt = {
            let registry = registry.clone();
            tokio::task::spawn_blocking(move || registry.migrate_local_kv()).await?
        };
        match attempt {
            Ok(moved) => return Ok(moved),
            Err(e) => {
                if waited.as_secs().is_multiple_of(10) {
                    tracing::warn!(cause = %e, "waiting for the state store to move plugins' data into it");
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
                waited += Duration::from_secs(1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use shoal_abi::PluginKind;
    use shoal_bus::{LocalBus, SharedBus};
    use shoal_registry::{Registry, RegistryConfig};
    use shoal_runtime::{KvBackend, Runtime, RuntimeConfig};
    use shoal_store::service::{NodeOptions, ServiceOptions, StoreService};

    use super::*;

    /// A store as `shoal dev` runs it: one node of 4 shards and the coordinator, in process.
    async fn store(dir: &std::path::Path) -> StoreService {
        let bus: SharedBus = Arc::new(LocalBus::new());
        shoal_store::service::start(
            bus,
            ServiceOptions {
                node: Some(NodeOptions {
                    id: "local".into(),
                    dir: dir.join("store"),
                    durability: shoal_store::Durability::Wal,
                    sweep_interval: shoal_store::DEFAULT_SWEEP_INTERVAL,
                    replication: None,
                }),
                coordinator: Some(shoal_store::coordinator::CoordinatorConfig {
                    state: shoal_state::StateDb::open_local(
                        &dir.join("state"),
                        &[shoal_store::coordinator::STORE_TABLE],
                    )
                    .expect("state"),
                    initial_shards: 4,
                    auto_scale_out: false,
                    source: "/test".into(),
                    term: 1,
                    replicas: 1,
                }),
            },
        )
        .await
        .expect("store")
    }

    fn runtime() -> Runtime {
        Runtime::new(RuntimeConfig::default()).expect("runtime")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_plugin_store_is_a_system_namespace_of_the_state_store() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = store(dir.path()).await;
        let kv = StoreKv::new(store.client.clone(), PluginKind::Framework, "service");
        assert_eq!(kv.namespace(), "_plugin-framework-service");
        // 450 keys under `app/`, more than one listing batch, and one outside the prefix.
        for i in 0..450 {
            kv.set(&format!("app/{i:04}"), format!("v{i}").as_bytes()).expect("set");
        }
        kv.set("gen", b"7").expect("set");
        assert_eq!(kv.get("app/0042").expect("get").as_deref(), Some(&b"v42"[..]));
        assert_eq!(kv.get("missing").expect("get"), None);

        let all = kv.list("app/", None, 1001).expect("list");
        assert_eq!(all.len(), 450);
        assert!(all.windows(2).all(|w| w[0] < w[1]), "in key order");
        let page = kv.list("app/", Some("app/0099"), 3).expect("list");
        assert_eq!(page, ["app/0100", "app/0101", "app/0102"]);
        kv.delete("app/0100").expect("delete");
        assert_eq!(kv.list("app/", Some("app/0099"), 1).expect("list"), ["app/0101"]);

        // The same entries through the store's own client, as the KV API sees them.
        let entry = store.client.get("_plugin-framework-service", "gen").await.expect("get").expect("present");
        assert_eq!(entry.value, b"7");
        // Another plugin's namespace sees none of them.
        let other = StoreKv::new(store.client.clone(), PluginKind::Framework, "batch");
        assert_eq!(other.get("gen").expect("get"), None);
        assert!(other.list("", None, 10).expect("list").is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_call_waits_no_later_than_its_deadline() {
        // The wait is the shorter of the call's bound and what its deadline leaves.
        assert_eq!(wait_for(None).expect("no deadline"), CALL_TIMEOUT);
        assert_eq!(wait_for(Some(Instant::now() + Duration::from_secs(60))).expect("far"), CALL_TIMEOUT);
        let soon = wait_for(Some(Instant::now() + Duration::from_millis(100))).expect("soon");
        assert!(soon > Duration::ZERO && soon <= Duration::from_millis(100), "{soon:?}");

        let dir = tempfile::tempdir().expect("tempdir");
        let store = store(dir.path()).await;
        let kv = StoreKv::new(store.client.clone(), PluginKind::Router, "r");
        kv.set("k", b"v").expect("set");
        let later = Some(Instant::now() + Duration::from_secs(5));
        assert_eq!(kv.get_until("k", later).expect("get").as_deref(), Some(&b"v"[..]));
        // A deadline already past fails every operation at once, with the store never asked:
        // the write below is not made.
        let past = Some(Instant::now());
        let refused = [
            kv.get_until("k", past).map(drop),
            kv.set_until("k", b"w", past),
            kv.delete_until("k", past),
            kv.list_until("", None, 10, past).map(drop),
        ];
        for err in refused {
            assert!(matches!(err, Err(KvError::DeadlinePassed)), "{err:?}");
        }
        assert_eq!(kv.get("k").expect("get").as_deref(), Some(&b"v"[..]));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn plugin_data_in_the_registry_moves_into_the_store_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let registry_dir = dir.path().join("registry");
        // An earlier version's node: plugins' data in the registry's RocksDB, with the master's
        // journal next to it.
        {
            let (registry, _events) =
                Registry::open(&registry_dir, runtime(), RegistryConfig::default()).expect("registry");
            let service = registry.kv_for(PluginKind::Framework, "service");
            service.set("app/web", b"{\"id\":\"web\"}").expect("set");
            service.set("gen", b"3").expect("set");
            registry.kv_for(PluginKind::Router, "sticky").set("seen", b"1").expect("set");
            registry.local_kv(PluginKind::Framework, "_master").set("task/t1", b"journal").expect("set");
        }

        let store = store(dir.path()).await;
        let (registry, _events) = Registry::open_with_kv(
            &registry_dir,
            runtime(),
            RegistryConfig::default(),
            Some(provider(store.client.clone(), None)),
        )
        .expect("registry");
        assert_eq!(migrate_registry_kv(registry.clone()).await.expect("migrate"), 3);

        let get = |ns: &str, key: &str| {
            let client = store.client.clone();
            let (ns, key) = (ns.to_owned(), key.to_owned());
            async move { client.get(&ns, &key).await.expect("get").map(|e| e.value) }
        };
        assert_eq!(get("_plugin-framework-service", "app/web").await.as_deref(), Some(&b"{\"id\":\"web\"}"[..]));
        assert_eq!(get("_plugin-framework-service", "gen").await.as_deref(), Some(&b"3"[..]));
        assert_eq!(get("_plugin-router-sticky", "seen").await.as_deref(), Some(&b"1"[..]));
        // The plugin sees it through its scope's store; the local copies are gone; the journal
        // stays where the master reads it, and nothing of it went to the store.
        assert_eq!(
            registry.kv_for(PluginKind::Framework, "service").get("gen").expect("get").as_deref(),
            Some(&b"3"[..])
        );
        assert_eq!(registry.local_kv(PluginKind::Framework, "service").get("gen").expect("get"), None);
        assert_eq!(
            registry.local_kv(PluginKind::Framework, "_master").get("task/t1").expect("get").as_deref(),
            Some(&b"journal"[..])
        );
        let page = store.client.list("_plugin-framework-service", "", None, 100).await.expect("list");
        let keys: Vec<&str> = page.entries.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, ["app/web", "gen"]);

        // A second start moves nothing and overwrites nothing the plugin wrote since.
        registry.kv_for(PluginKind::Framework, "service").set("gen", b"4").expect("set");
        assert_eq!(migrate_registry_kv(registry.clone()).await.expect("migrate"), 0);
        assert_eq!(get("_plugin-framework-service", "gen").await.as_deref(), Some(&b"4"[..]));
    }

    #[test]
    fn on_a_current_thread_runtime_calls_fail_instead_of_deadlocking() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let dir = tempfile::tempdir().expect("tempdir");
        let store = rt.block_on(store(dir.path()));
        let kv = rt.block_on(async { StoreKv::new(store.client.clone(), PluginKind::Router, "r") });
        let err = rt.block_on(async { kv.get("k") }).expect_err("refused");
        assert!(matches!(err, KvError::Unavailable(m) if m.contains("multi-thread")), "{err}");
        let err = kv.set("k", b"v").expect_err("refused outside the runtime too");
        assert!(matches!(err, KvError::Unavailable(m) if m.contains("multi-thread")), "{err}");
    }

    #[test]
    fn a_caller_on_a_current_thread_runtime_reaches_a_store_on_a_multi_thread_one() {
        // The gateway's workers: each its own current-thread runtime, calling routers whose
        // keyvalue import is this store, whose client lives on the node's multi-thread runtime.
        let node = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
        let dir = tempfile::tempdir().expect("tempdir");
        let store = node.block_on(store(dir.path()));
        let kv = node.block_on(async { StoreKv::new(store.client.clone(), PluginKind::Router, "r") });
        let worker = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        worker.block_on(async {
            kv.set("hits", b"1").expect("set from a current-thread worker");
            assert_eq!(kv.get("hits").expect("get").as_deref(), Some(&b"1"[..]));
        });
        let entry = node.block_on(store.client.get("_plugin-router-r", "hits")).expect("get").expect("written");
        assert_eq!(entry.value, b"1");
    }
}
