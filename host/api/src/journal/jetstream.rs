//! The cluster events' ring of a master, fed from the JetStream stream `SHOAL_EVENTS`, which
//! captures every event family but the store's keys ([`subject::JOURNALED_EVENTS`]). Positions
//! are the stream's sequences and the ring's epoch is the stream's creation time, so every master
//! numbers an event alike; a stream deleted and made again is a new epoch (a client resuming
//! from the old one is told of a gap).

use std::sync::{Arc, Weak};
use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use futures::StreamExt;
use shoal_bus::subject;

use super::ring::{CAPACITY, Ring};

/// The stream of the cluster's events.
pub const STREAM: &str = "SHOAL_EVENTS";

/// Why the journal could not follow the events' stream.
#[derive(Debug, thiserror::Error)]
#[error("the event journal: {0}")]
pub struct JournalError(pub(super) String);

/// How long the follower waits for an event before it checks whether the stream moved on
/// without it (its consumer lived on a server that died): then it reads again from where it was.
const STALL: Duration = Duration::from_secs(2);

/// The ring of the stream's last [`CAPACITY`] events, kept up to date by a task that ends when
/// the ring is dropped.
pub(super) async fn follow(client: async_nats::Client, replicas: usize) -> Result<Arc<Ring>, JournalError> {
    let js = jetstream::new(client);
    let config = stream::Config {
        name: STREAM.into(),
        subjects: subject::JOURNALED_EVENTS.iter().map(|s| (*s).to_owned()).collect(),
        max_messages: 100_000,
        max_bytes: 256 << 20,
        max_age: Duration::from_secs(24 * 3600),
        storage: stream::StorageType::File,
        discard: stream::DiscardPolicy::Old,
        num_replicas: replicas.max(1),
        ..Default::default()
    };
    let error = |e: &dyn std::fmt::Display| JournalError(e.to_string());
    let mut events = js.get_or_create_stream(config.clone()).await.map_err(|e| error(&e))?;
    let info = events.info().await.map_err(|e| error(&e))?.clone();
    if info.config.subjects != config.subjects {
        // Made by an earlier version with other families: take this one's.
        js.update_stream(config).await.map_err(|e| error(&e))?;
    }
    let epoch = format!("{:x}", info.created.unix_timestamp_nanos() / 1000);
    let ring = Arc::new(Ring::new(epoch));
    let start = info.state.last_sequence.saturating_sub(CAPACITY as u64 - 1).max(info.state.first_sequence).max(1);
    tokio::spawn(feed(js, Arc::downgrade(&ring), start));
    Ok(ring)
}

/// Read the stream from `next` on into the ring, for as long as the ring lives.
async fn feed(js: jetstream::Context, ring: Weak<Ring>, mut next: u64) {
    loop {
        let messages = match open(&js, next).await {
            Ok(messages) => messages,
            Err(e) => {
                tracing::info!(stream = STREAM, next, cause = %e, "cannot read the events' stream yet; retrying");
                // A product retry: the stream answers again once its servers elected a leader.
                tokio::time::sleep(Duration::from_millis(500)).await;
                if ring.strong_count() == 0 {
                    return;
                }
                continue;
            }
        };
        let mut messages = messages;
        loop {
            match tokio::time::timeout(STALL, messages.next()).await {
                Ok(Some(Ok(message))) => {
                    let Ok(info) = message.info() else { continue };
                    let seq = info.stream_sequence;
                    if seq < next {
                        continue;
                    }
                    let Some(ring) = ring.upgrade() else { return };
                    ring.append_at(seq, message.subject.to_string(), message.payload.clone());
                    next = seq + 1;
                }
                // The ordered consumer makes itself again after a hiccup; a product retry, paced so
                // that an error that repeats cannot spin.
                Ok(Some(Err(e))) => {
                    tracing::debug!(stream = STREAM, cause = %e, "events' reader interrupted");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Ok(None) => break,
                Err(_) => {
                    if ring.strong_count() == 0 {
                        return;
                    }
                    let moved_on = match js.get_stream(STREAM).await {
                        Ok(mut s) => s.info().await.is_ok_and(|i| i.state.last_sequence >= next),
                        Err(_) => false,
                    };
                    if moved_on {
                        break;
                    }
                }
            }
        }
    }
}

async fn open(js: &jetstream::Context, from: u64) -> Result<consumer::pull::Ordered, JournalError> {
    let error = |e: &dyn std::fmt::Display| JournalError(e.to_string());
    let stream = js.get_stream(STREAM).await.map_err(|e| error(&e))?;
    let consumer = stream
        .create_consumer(consumer::pull::OrderedConfig {
            deliver_policy: consumer::DeliverPolicy::ByStartSequence { start_sequence: from.max(1) },
            ..consumer::pull::OrderedConfig::default()
        })
        .await
        .map_err(|e| error(&e))?;
    consumer.messages().await.map_err(|e| error(&e))
}
