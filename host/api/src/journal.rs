//! The node's recent events, so that an SSE client that reconnects with `Last-Event-ID` misses
//! nothing: one subscription to `shoal.evt.>` for the whole node feeds a bounded ring
//! ([`CAPACITY`] events, [`MAX_BYTES`] of payload) and every stream (`/v1/events`, KV watches)
//! reads from it. Each event's SSE `id` is `<epoch>-<seq>`: `seq` counts the events this node
//! has seen, `epoch` names this journal (a restarted node, or another master, has another), so
//! an id from elsewhere is never taken for one of ours.
//!
//! A reconnect with an id of this journal still in the ring gets every event after it, then the
//! live ones, without a gap or a repeat. An id that is too old, or of another journal, gets an
//! `event: gap` first (`{"after": id, "resumed_at": first id sent}`) so the client knows it must
//! re-read the state it follows; so does a stream that fell behind the live events by more than
//! the ring.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use parking_lot::Mutex;
use shoal_bus::{SharedBus, subject};
use tokio::sync::broadcast;

/// Most events kept for replay.
pub const CAPACITY: usize = 10_000;
/// Most payload bytes kept for replay.
pub const MAX_BYTES: usize = 32 << 20;

/// One event as seen by this node.
#[derive(Debug)]
pub struct Entry {
    /// Its place in this journal, from 1.
    pub seq: u64,
    /// The bus subject.
    pub subject: String,
    /// The CloudEvent's JSON.
    pub payload: Bytes,
}

/// What a stream hands on: an event, or the news that some were missed before the next.
#[derive(Debug, Clone)]
pub enum Item {
    /// The next event.
    Event(Arc<Entry>),
    /// Events after `after` (an id, or empty) were missed; the next event is `resumed_at`'s.
    Gap {
        /// The id the client had (or the last one sent on this stream).
        after: String,
        /// The id of the next event sent.
        resumed_at: u64,
    },
}

struct Ring {
    entries: VecDeque<Arc<Entry>>,
    bytes: usize,
    next: u64,
}

/// The node's journal of recent events.
pub struct Journal {
    epoch: String,
    ring: Mutex<Ring>,
    live: broadcast::Sender<Arc<Entry>>,
}

impl Journal {
    /// A journal fed by `bus`'s `shoal.evt.>` from now on (the subscription is in place when this
    /// returns; the feeding task ends with the bus).
    pub async fn start(bus: SharedBus) -> Result<Arc<Journal>, shoal_bus::BusError> {
        let journal = Arc::new(Self::new());
        let mut events = bus.subscribe(subject::EVENTS_ALL).await?;
        bus.flush().await?;
        let feeding = Arc::downgrade(&journal);
        tokio::spawn(async move {
            while let Some(message) = events.next().await {
                let Some(journal) = feeding.upgrade() else { return };
                journal.append(message.subject, message.payload);
            }
        });
        Ok(journal)
    }

    /// An empty journal fed by [`Journal::append`] only.
    pub fn new() -> Journal {
        let epoch = format!(
            "{:x}",
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_micros()
        );
        let (live, _) = broadcast::channel(1024);
        Journal { epoch, ring: Mutex::new(Ring { entries: VecDeque::new(), bytes: 0, next: 1 }), live }
    }

    /// Record an event and hand it to the live streams.
    pub fn append(&self, subject: String, payload: Bytes) {
        let mut ring = self.ring.lock();
        let entry = Arc::new(Entry { seq: ring.next, subject, payload });
        ring.next += 1;
        ring.bytes += entry.payload.len();
        ring.entries.push_back(entry.clone());
        while ring.entries.len() > CAPACITY || (ring.bytes > MAX_BYTES && ring.entries.len() > 1) {
            if let Some(old) = ring.entries.pop_front() {
                ring.bytes -= old.payload.len();
            }
        }
        // Sent under the lock, so a stream that subscribes under it sees each entry once.
        let _ = self.live.send(entry);
    }

    /// The SSE id of `seq`.
    pub fn id(&self, seq: u64) -> String {
        format!("{}-{seq}", self.epoch)
    }

    /// The events whose subject `filter` matches: those after `last_event_id` still kept (with a
    /// gap first when some are no longer, or the id is not this journal's), then the live ones.
    pub fn stream(
        self: &Arc<Self>,
        filter: String,
        last_event_id: Option<&str>,
    ) -> impl Stream<Item = Item> + Send + use<> {
        let after = last_event_id.map(|id| (id.to_owned(), self.seq_of(id)));
        let (replay, live, last_seq) = {
            let ring = self.ring.lock();
            let live = self.live.subscribe();
            let mut replay = Vec::new();
            let mut last_seq = ring.next - 1;
            if let Some((id, seq)) = &after {
                let oldest = ring.entries.front().map_or(ring.next, |e| e.seq);
                let from = match seq {
                    Some(seq) if *seq + 1 >= oldest && *seq < ring.next => *seq + 1,
                    _ => {
                        replay.push(Item::Gap { after: id.clone(), resumed_at: oldest });
                        oldest
                    }
                };
                replay.extend(ring.entries.iter().filter(|e| e.seq >= from).cloned().map(Item::Event));
                last_seq = ring.next - 1;
            }
            (replay, live, last_seq)
        };
        let journal = self.clone();
        let replayed = futures::stream::iter(replay);
        let state = (live, last_seq, VecDeque::<Item>::new(), journal);
        let live = futures::stream::unfold(state, |(mut live, mut last_seq, mut pending, journal)| async move {
            loop {
                if let Some(item) = pending.pop_front() {
                    return Some((item, (live, last_seq, pending, journal)));
                }
                match live.recv().await {
                    Ok(entry) if entry.seq <= last_seq => {}
                    Ok(entry) => {
                        last_seq = entry.seq;
                        return Some((Item::Event(entry), (live, last_seq, pending, journal)));
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        // Fell behind: take what the ring still has after the last one sent.
                        let ring = journal.ring.lock();
                        let oldest = ring.entries.front().map_or(ring.next, |e| e.seq);
                        if oldest > last_seq + 1 {
                            pending.push_back(Item::Gap { after: journal.id(last_seq), resumed_at: oldest });
                        }
                        pending.extend(ring.entries.iter().filter(|e| e.seq > last_seq).cloned().map(Item::Event));
                        last_seq = ring.next - 1;
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        });
        replayed.chain(live).filter(move |item| {
            let keep = match item {
                Item::Event(e) => subject::matches(&filter, &e.subject),
                Item::Gap { .. } => true,
            };
            std::future::ready(keep)
        })
    }

    /// The seq of an id of this journal.
    fn seq_of(&self, id: &str) -> Option<u64> {
        let (epoch, seq) = id.trim().rsplit_once('-')?;
        (epoch == self.epoch).then(|| seq.parse().ok()).flatten()
    }
}

impl Default for Journal {
    fn default() -> Self {
        Self::new()
    }
}

/// The `Last-Event-ID` header of a request.
pub fn last_event_id(headers: &axum::http::HeaderMap) -> Option<&str> {
    headers.get("last-event-id").and_then(|v| v.to_str().ok()).map(str::trim).filter(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(items: &[Item]) -> Vec<String> {
        items
            .iter()
            .map(|i| match i {
                Item::Event(e) => e.seq.to_string(),
                Item::Gap { resumed_at, .. } => format!("gap@{resumed_at}"),
            })
            .collect()
    }

    async fn take(stream: impl Stream<Item = Item>, n: usize) -> Vec<Item> {
        tokio::time::timeout(std::time::Duration::from_secs(5), stream.take(n).collect()).await.expect("items in time")
    }

    #[tokio::test]
    async fn a_reconnect_gets_every_event_after_its_id_then_the_live_ones() {
        let journal = Arc::new(Journal::new());
        for i in 0..5 {
            journal.append(format!("shoal.evt.kv.a.{}", i % 2), Bytes::from(vec![b'x'; 3]));
        }
        let stream = journal.stream("shoal.evt.>".into(), Some(&journal.id(2)));
        journal.append("shoal.evt.kv.a.0".into(), Bytes::new());
        assert_eq!(ids(&take(stream, 4).await), ["3", "4", "5", "6"]);
        // Filtered: only the matching ones, replayed and live.
        let stream = journal.stream("shoal.evt.kv.a.1".into(), Some(&journal.id(0)));
        journal.append("shoal.evt.kv.a.1".into(), Bytes::new());
        assert_eq!(ids(&take(stream, 3).await), ["2", "4", "7"]);
        // No id: only what comes next.
        let stream = journal.stream("shoal.evt.>".into(), None);
        journal.append("shoal.evt.x".into(), Bytes::new());
        assert_eq!(ids(&take(stream, 1).await), ["8"]);
    }

    #[tokio::test]
    async fn an_id_too_old_or_of_another_journal_is_told_as_a_gap() {
        let journal = Arc::new(Journal::new());
        for _ in 0..CAPACITY + 10 {
            journal.append("shoal.evt.x".into(), Bytes::new());
        }
        let stream = journal.stream("shoal.evt.>".into(), Some(&journal.id(3)));
        assert_eq!(ids(&take(stream, 2).await), ["gap@11", "11"]);
        let stream = journal.stream("shoal.evt.>".into(), Some("0123abc-5"));
        assert_eq!(ids(&take(stream, 2).await), ["gap@11", "11"]);
        let stream = journal.stream("shoal.evt.>".into(), Some("garbage"));
        assert_eq!(ids(&take(stream, 1).await), ["gap@11"]);
        // The id of the last event: nothing to replay, no gap.
        let stream = journal.stream("shoal.evt.>".into(), Some(&journal.id((CAPACITY + 10) as u64)));
        journal.append("shoal.evt.x".into(), Bytes::new());
        assert_eq!(ids(&take(stream, 1).await), [(CAPACITY + 11).to_string()]);
    }

    #[tokio::test]
    async fn the_ring_keeps_at_most_its_bytes() {
        let journal = Journal::new();
        for _ in 0..40 {
            journal.append("shoal.evt.x".into(), Bytes::from(vec![0u8; 1 << 20]));
        }
        let ring = journal.ring.lock();
        assert!(ring.bytes <= MAX_BYTES && ring.entries.len() == MAX_BYTES >> 20, "{} entries", ring.entries.len());
    }
}
