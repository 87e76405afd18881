//! What only the NATS bus has: connecting, the raw client, and riding out a server restart.

use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use shoal_bus::{Bus, BusError, NatsBus};
use shoal_testkit::{NatsServer, eventually, free_port, init_tracing};

#[tokio::test]
async fn connecting_to_nothing_fails_with_a_nats_error() {
    init_tracing();
    let url = format!("nats://127.0.0.1:{}", free_port());
    match NatsBus::connect(&url).await {
        Err(BusError::Nats(message)) => {
            assert!(message.starts_with("cannot connect to"), "{message}");
        }
        other => panic!("expected a nats error, got {other:?}"),
    }
}

#[tokio::test]
async fn the_raw_client_shares_the_connection() {
    init_tracing();
    let server = NatsServer::start().expect("nats-server starts");
    let bus = NatsBus::connect(&server.url()).await.expect("connect");
    let mut subscription = bus.subscribe("raw.client").await.expect("subscribe");
    bus.flush().await.expect("flush");
    bus.client().publish("raw.client", Bytes::from_static(b"hi")).await.expect("raw publish");
    let message =
        tokio::time::timeout(Duration::from_secs(10), subscription.next()).await.expect("in time").expect("a message");
    assert_eq!(message.payload.as_ref(), b"hi");
    assert_eq!(subscription.dropped(), 0);
    // JetStream is on in the test server, so roles can build on it through the client.
    let jetstream = async_nats::jetstream::new(bus.client().clone());
    jetstream.query_account().await.expect("jetstream answers");
}

#[tokio::test]
async fn subscriptions_survive_a_server_restart() {
    init_tracing();
    let mut server = NatsServer::start().expect("nats-server starts");
    let bus = NatsBus::connect(&server.url()).await.expect("connect");
    let subscription = bus.subscribe("survive.>").await.expect("subscribe");
    bus.flush().await.expect("flush");

    server.restart().expect("restart");
    // The client reconnects and re-subscribes on its own; keep publishing until a message makes
    // the round trip, since publishes made while disconnected may be lost.
    let subscription = tokio::sync::Mutex::new(subscription);
    let message = eventually("a message to make the round trip after the restart", Duration::from_secs(20), || async {
        let _ = bus.publish("survive.it", Bytes::from_static(b"back")).await;
        let mut subscription = subscription.lock().await;
        tokio::time::timeout(Duration::from_millis(100), subscription.next()).await.ok().flatten()
    })
    .await;
    assert_eq!(message.subject, "survive.it");
}
