//! The node's recent events, so that an SSE client that reconnects with `Last-Event-ID` misses
//! nothing. Two bounded rings ([`ring::Ring`]) feed every stream (`/v1/events`, KV watches):
//!
//! - **cluster events** (every family but the store's keys, [`subject::JOURNALED_EVENTS`]): on a
//!   master with JetStream they come from the stream `SHOAL_EVENTS` (R = the masters' state's
//!   replicas; 100,000 events, 256 MiB or 24 h), numbered by its sequence, so every master
//!   gives the same event the same position and a client resumes on any of them — after a
//!   failover too. Elsewhere (`shoal dev`) from the bus, numbered by this node.
//! - **KV events**, one per write: from the bus, numbered by this node (a replicated append per
//!   write is not worth resuming a watch on another node; a client that moves gets a gap).
//!
//! An SSE id holds a position in each, `<epoch>-<seq>.<epoch>-<seq>` (cluster, then KV): a
//! reconnect gets what came after both, then the live events; where a position is too old or
//! not this node's (a restart, another node's KV ring), an `event: gap` comes first
//! (`{"after": id, "missed": "cluster"|"kv"}`) so the client re-reads the state it follows.

mod jetstream;
pub mod ring;

use std::sync::Arc;

use futures::{Stream, StreamExt};
use shoal_bus::{SharedBus, subject};

pub use jetstream::JournalError;
pub use ring::{CAPACITY, Entry, Item, MAX_BYTES, Ring};

/// The two rings of a node.
pub struct Journal {
    cluster: Arc<Ring>,
    kv: Arc<Ring>,
}

/// Which ring an item of a stream came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Cluster events.
    Cluster,
    /// Key-value events.
    Kv,
}

/// What a stream of the journal hands on, with the SSE id to send with it (events) or the id the
/// client gave (gaps).
#[derive(Debug, Clone)]
pub struct Sent {
    /// The event, or a gap.
    pub item: Item,
    /// Which ring it came from.
    pub source: Source,
    /// The SSE id after this item.
    pub id: String,
}

impl Journal {
    /// A journal fed by `bus` from now on (the subscription is in place when this returns; the
    /// feeding tasks end with the bus); with `jetstream` (a master's NATS client and the
    /// replicas of its state), cluster events come from the stream `SHOAL_EVENTS` instead.
    pub async fn start(
        bus: SharedBus,
        jetstream: Option<(async_nats::Client, usize)>,
    ) -> Result<Arc<Journal>, JournalError> {
        let kv_only = jetstream.is_some();
        let cluster = match jetstream {
            Some((client, replicas)) => jetstream::follow(client, replicas).await?,
            None => Arc::new(Ring::new(Ring::fresh_epoch())),
        };
        let journal = Arc::new(Journal { cluster, kv: Arc::new(Ring::new(Ring::fresh_epoch())) });
        let filter = if kv_only { "shoal.evt.kv.>" } else { subject::EVENTS_ALL };
        let bus_error = |e: shoal_bus::BusError| JournalError(format!("subscribing to the events: {e}"));
        let mut events = bus.subscribe(filter).await.map_err(bus_error)?;
        bus.flush().await.map_err(bus_error)?;
        let feeding = Arc::downgrade(&journal);
        tokio::spawn(async move {
            while let Some(message) = events.next().await {
                let Some(journal) = feeding.upgrade() else { return };
                journal.record(message.subject, message.payload);
            }
        });
        Ok(journal)
    }

    /// A journal with rings of its own, fed by [`Journal::record`] only.
    pub fn new() -> Journal {
        Journal { cluster: Arc::new(Ring::new(Ring::fresh_epoch())), kv: Arc::new(Ring::new(Ring::fresh_epoch())) }
    }

    /// Record an event from the bus in its ring.
    pub fn record(&self, subject: String, payload: bytes::Bytes) {
        if subject::is_kv_event(&subject) {
            self.kv.append(subject, payload);
        } else {
            self.cluster.append(subject, payload);
        }
    }

    /// The events `filter` matches, after the SSE id `last_event_id` (see the module's doc).
    pub fn stream(&self, filter: String, last_event_id: Option<&str>) -> impl Stream<Item = Sent> + Send + use<> {
        let (cluster_after, kv_after) = match last_event_id {
            Some(id) => match id.split_once('.') {
                Some((c, k)) => (Some(c), Some(k)),
                None => (Some(id), Some(id)),
            },
            None => (None, None),
        };
        let (wants_cluster, wants_kv) = rings_of(&filter);
        let (c_start, cluster) = self.cluster.stream(filter.clone(), cluster_after);
        let (k_start, kv) = self.kv.stream(filter, kv_after);
        // A ring the filter cannot match is not followed at all (its stream, and its wake-ups,
        // dropped here); its position still goes into the ids.
        let cluster = if wants_cluster {
            cluster.map(|item| (Source::Cluster, item)).boxed()
        } else {
            futures::stream::empty().boxed()
        };
        let kv = if wants_kv { kv.map(|item| (Source::Kv, item)).boxed() } else { futures::stream::empty().boxed() };
        let (c_epoch, k_epoch) = (self.cluster.epoch().to_owned(), self.kv.epoch().to_owned());
        let given = last_event_id.unwrap_or_default().to_owned();
        let mut positions = (c_start, k_start);
        futures::stream::select(cluster, kv).map(move |(source, item)| {
            if let Item::Event(e) = &item {
                match source {
                    Source::Cluster => positions.0 = e.seq,
                    Source::Kv => positions.1 = e.seq,
                }
            }
            let id = match &item {
                Item::Event(_) => format!("{c_epoch}-{}.{k_epoch}-{}", positions.0, positions.1),
                Item::Gap { .. } => given.clone(),
            };
            Sent { item, source, id }
        })
    }
}

impl Default for Journal {
    fn default() -> Self {
        Self::new()
    }
}

/// Which rings a subject filter can match: (cluster, KV).
fn rings_of(filter: &str) -> (bool, bool) {
    match filter.split('.').nth(2) {
        Some("kv") => (false, true),
        Some("*" | ">") | None => (true, true),
        Some(_) => (true, false),
    }
}

/// The `Last-Event-ID` header of a request.
pub fn last_event_id(headers: &axum::http::HeaderMap) -> Option<&str> {
    headers.get("last-event-id").and_then(|v| v.to_str().ok()).map(str::trim).filter(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn take(stream: impl Stream<Item = Sent>, n: usize) -> Vec<Sent> {
        tokio::time::timeout(std::time::Duration::from_secs(5), stream.take(n).collect()).await.expect("items in time")
    }

    fn subjects(sent: &[Sent]) -> Vec<String> {
        sent.iter()
            .map(|s| match &s.item {
                Item::Event(e) => e.subject.clone(),
                Item::Gap { .. } => format!("gap:{:?}", s.source),
            })
            .collect()
    }

    #[tokio::test]
    async fn an_id_resumes_both_rings_where_it_left_them() {
        let journal = Journal::new();
        journal.record("shoal.evt.app.a.deployed".into(), bytes::Bytes::new());
        let first = take(journal.stream("shoal.evt.>".into(), Some("x")), 2).await;
        assert_eq!(subjects(&first)[..1], ["gap:Cluster".to_owned()], "a foreign id: a gap");
        let live = journal.stream("shoal.evt.>".into(), None);
        journal.record("shoal.evt.kv.ns.put".into(), bytes::Bytes::new());
        journal.record("shoal.evt.app.b.deployed".into(), bytes::Bytes::new());
        let got = take(live, 2).await;
        let mut names = subjects(&got);
        names.sort();
        assert_eq!(names, ["shoal.evt.app.b.deployed", "shoal.evt.kv.ns.put"]);
        // Resume from the first one received: the other one, then what comes later.
        let after = got[0].id.clone();
        let resumed = journal.stream("shoal.evt.>".into(), Some(&after));
        journal.record("shoal.evt.kv.ns.delete".into(), bytes::Bytes::new());
        let again = take(resumed, 2).await;
        assert_eq!(subjects(&again)[0], subjects(&got)[1], "the one missed");
        assert_eq!(subjects(&again)[1], "shoal.evt.kv.ns.delete");
        // A KV filter reads the KV ring only.
        assert_eq!(rings_of("shoal.evt.kv.ns.*"), (false, true));
        assert_eq!(rings_of("shoal.evt.task.>"), (true, false));
        assert_eq!(rings_of(">"), (true, true));
    }
}
