//! One bounded ring of recent events ([`CAPACITY`] events, [`MAX_BYTES`] of payload) with its
//! live broadcast: what [`super::Journal`] is made of. Each entry's `seq` is its place — counted
//! by the ring itself when fed from the bus, the JetStream sequence when fed from a stream — and
//! the ring's `epoch` names where those numbers come from, so a position from elsewhere is never
//! taken for one of its own.
//!
//! A stream that starts after a position still in the ring gets every entry after it, then the
//! live ones, without a gap or a repeat; a position that is too old, or of another epoch, gets
//! an [`Item::Gap`] first; so does a stream that fell behind the live entries by more than the
//! ring.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use parking_lot::Mutex;
use shoal_bus::subject;
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
    /// Entries were missed (no longer kept, or the position was not this ring's); the next one
    /// sent is `resumed_at`.
    Gap {
        /// The seq of the next entry sent.
        resumed_at: u64,
    },
}

struct Inner {
    entries: VecDeque<Arc<Entry>>,
    bytes: usize,
    /// The seq after the last entry.
    next: u64,
}

/// A bounded ring of recent entries, and their live broadcast.
pub struct Ring {
    epoch: String,
    inner: Mutex<Inner>,
    live: broadcast::Sender<Arc<Entry>>,
}

impl Ring {
    /// An empty ring whose positions belong to `epoch` (hex digits only).
    pub fn new(epoch: String) -> Ring {
        let (live, _) = broadcast::channel(1024);
        Ring { epoch, inner: Mutex::new(Inner { entries: VecDeque::new(), bytes: 0, next: 1 }), live }
    }

    /// An epoch of its own: the time now, in microseconds, as hex.
    pub fn fresh_epoch() -> String {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        format!("{:x}", now.as_micros())
    }

    /// Where this ring's positions come from.
    pub fn epoch(&self) -> &str {
        &self.epoch
    }

    /// Record an entry numbered by the ring (the next seq) and hand it to the live streams.
    pub fn append(&self, subject: String, payload: Bytes) {
        let mut inner = self.inner.lock();
        let seq = inner.next;
        self.push(&mut inner, Entry { seq, subject, payload });
    }

    /// Record an entry numbered by its source (a JetStream sequence, above every earlier one;
    /// an older one is dropped) and hand it to the live streams.
    pub fn append_at(&self, seq: u64, subject: String, payload: Bytes) {
        let mut inner = self.inner.lock();
        if seq >= inner.next {
            self.push(&mut inner, Entry { seq, subject, payload });
        }
    }

    fn push(&self, inner: &mut Inner, entry: Entry) {
        let entry = Arc::new(entry);
        inner.next = entry.seq + 1;
        inner.bytes += entry.payload.len();
        inner.entries.push_back(entry.clone());
        while inner.entries.len() > CAPACITY || (inner.bytes > MAX_BYTES && inner.entries.len() > 1) {
            if let Some(old) = inner.entries.pop_front() {
                inner.bytes -= old.payload.len();
            }
        }
        // Sent under the lock, so a stream that subscribes under it sees each entry once.
        let _ = self.live.send(entry);
    }

    /// The entries whose subject `filter` matches, after position `after` (`<epoch>-<seq>`):
    /// those still kept (a gap first when some are no longer, or the position is not this
    /// ring's), then the live ones; with no position, the live ones only. Also the position the
    /// stream starts after.
    pub fn stream(
        self: &Arc<Self>,
        filter: String,
        after: Option<&str>,
    ) -> (u64, impl Stream<Item = Item> + Send + use<>) {
        let asked = after.map(|position| self.seq_of(position));
        let (replay, live, last_seq) = {
            let inner = self.inner.lock();
            let live = self.live.subscribe();
            let mut replay = Vec::new();
            let mut last_seq = inner.next - 1;
            if let Some(asked) = asked {
                let oldest = inner.entries.front().map_or(inner.next, |e| e.seq);
                match asked {
                    // Ahead of this ring (fed from a stream another node has read further):
                    // nothing to replay, and what comes up to there was sent already.
                    Some(seq) if seq >= inner.next => last_seq = seq,
                    Some(seq) if seq + 1 >= oldest => {
                        replay.extend(inner.entries.iter().filter(|e| e.seq > seq).cloned().map(Item::Event));
                    }
                    _ => {
                        replay.push(Item::Gap { resumed_at: oldest });
                        replay.extend(inner.entries.iter().cloned().map(Item::Event));
                    }
                }
            }
            (replay, live, last_seq)
        };
        let ring = self.clone();
        let state = (live, last_seq, VecDeque::<Item>::new(), ring);
        let live = futures::stream::unfold(state, |(mut live, mut last_seq, mut pending, ring)| async move {
            loop {
                if let Some(item) = pending.pop_front() {
                    return Some((item, (live, last_seq, pending, ring)));
                }
                match live.recv().await {
                    Ok(entry) if entry.seq <= last_seq => {}
                    Ok(entry) => {
                        last_seq = entry.seq;
                        return Some((Item::Event(entry), (live, last_seq, pending, ring)));
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        // Fell behind: take what the ring still has after the last one sent.
                        let inner = ring.inner.lock();
                        let oldest = inner.entries.front().map_or(inner.next, |e| e.seq);
                        if oldest > last_seq + 1 {
                            pending.push_back(Item::Gap { resumed_at: oldest });
                        }
                        pending.extend(inner.entries.iter().filter(|e| e.seq > last_seq).cloned().map(Item::Event));
                        last_seq = inner.next - 1;
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        });
        let stream = futures::stream::iter(replay).chain(live).filter(move |item| {
            let keep = match item {
                Item::Event(e) => subject::matches(&filter, &e.subject),
                Item::Gap { .. } => true,
            };
            std::future::ready(keep)
        });
        (last_seq, stream)
    }

    /// The seq of a position of this ring.
    fn seq_of(&self, position: &str) -> Option<u64> {
        let (epoch, seq) = position.trim().rsplit_once('-')?;
        (epoch == self.epoch).then(|| seq.parse().ok()).flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(items: &[Item]) -> Vec<String> {
        items
            .iter()
            .map(|i| match i {
                Item::Event(e) => e.seq.to_string(),
                Item::Gap { resumed_at } => format!("gap@{resumed_at}"),
            })
            .collect()
    }

    fn id(ring: &Ring, seq: u64) -> String {
        format!("{}-{seq}", ring.epoch())
    }

    async fn take(stream: impl Stream<Item = Item>, n: usize) -> Vec<Item> {
        tokio::time::timeout(std::time::Duration::from_secs(5), stream.take(n).collect()).await.expect("items in time")
    }

    #[tokio::test]
    async fn a_reconnect_gets_every_event_after_its_id_then_the_live_ones() {
        let journal = Arc::new(Ring::new(Ring::fresh_epoch()));
        for i in 0..5 {
            journal.append(format!("shoal.evt.kv.a.{}", i % 2), Bytes::from(vec![b'x'; 3]));
        }
        let (_, stream) = journal.stream("shoal.evt.>".into(), Some(&id(&journal, 2)));
        journal.append("shoal.evt.kv.a.0".into(), Bytes::new());
        assert_eq!(ids(&take(stream, 4).await), ["3", "4", "5", "6"]);
        // Filtered: only the matching ones, replayed and live.
        let (_, stream) = journal.stream("shoal.evt.kv.a.1".into(), Some(&id(&journal, 0)));
        journal.append("shoal.evt.kv.a.1".into(), Bytes::new());
        assert_eq!(ids(&take(stream, 3).await), ["2", "4", "7"]);
        // No id: only what comes next.
        let (_, stream) = journal.stream("shoal.evt.>".into(), None);
        journal.append("shoal.evt.x".into(), Bytes::new());
        assert_eq!(ids(&take(stream, 1).await), ["8"]);
    }

    #[tokio::test]
    async fn an_id_too_old_or_of_another_journal_is_told_as_a_gap() {
        let journal = Arc::new(Ring::new(Ring::fresh_epoch()));
        for _ in 0..CAPACITY + 10 {
            journal.append("shoal.evt.x".into(), Bytes::new());
        }
        let (_, stream) = journal.stream("shoal.evt.>".into(), Some(&id(&journal, 3)));
        assert_eq!(ids(&take(stream, 2).await), ["gap@11", "11"]);
        let (_, stream) = journal.stream("shoal.evt.>".into(), Some("0123abc-5"));
        assert_eq!(ids(&take(stream, 2).await), ["gap@11", "11"]);
        let (_, stream) = journal.stream("shoal.evt.>".into(), Some("garbage"));
        assert_eq!(ids(&take(stream, 1).await), ["gap@11"]);
        // The id of the last event: nothing to replay, no gap.
        let (_, stream) = journal.stream("shoal.evt.>".into(), Some(&id(&journal, (CAPACITY + 10) as u64)));
        journal.append("shoal.evt.x".into(), Bytes::new());
        assert_eq!(ids(&take(stream, 1).await), [(CAPACITY + 11).to_string()]);
    }

    #[tokio::test]
    async fn the_ring_keeps_at_most_its_bytes() {
        let journal = Ring::new(Ring::fresh_epoch());
        for _ in 0..40 {
            journal.append("shoal.evt.x".into(), Bytes::from(vec![0u8; 1 << 20]));
        }
        let ring = journal.inner.lock();
        assert!(ring.bytes <= MAX_BYTES && ring.entries.len() == MAX_BYTES >> 20, "{} entries", ring.entries.len());
    }
}
