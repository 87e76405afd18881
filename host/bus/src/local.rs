//! The in-process bus for `shoal dev` and tests: NATS semantics without a server.
//!
//! Subscribers live in a registry behind one short-held mutex. Publishing finds the matching
//! subscribers in an index of subject tokens (`index.rs`, a trie like NATS's sublist, so the cost
//! of a publish follows the subject's tokens and the wildcard filters that exist, not the number of
//! subscriptions) and hands each a clone of the message with `try_send` on a bounded channel, so a
//! publisher can never be blocked by a slow subscriber: when a subscriber's channel is full the
//! message is dropped *for that subscriber only* and counted, exactly like a NATS slow consumer.
//! Delivery happens while the registry lock is held, which is what keeps per-publisher order intact
//! for every subscriber.

mod index;
#[cfg(test)]
mod props;

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use parking_lot::Mutex;
use tokio::sync::mpsc;

use self::index::Index;
use crate::subject::{validate_filter, validate_queue_group, validate_subject};
use crate::{Bus, BusError, Message, Subscription, SubscriptionInner};

/// Messages a subscriber may have waiting before new ones are dropped for it. Large enough to absorb
/// bursts (a whole shard map or a storm of task updates) without loss, small enough that a stuck
/// subscriber cannot hold more than a few MB of queued clones.
pub const DEFAULT_CAPACITY: usize = 8192;

/// The in-process [`Bus`]. Clones share the same subscribers.
#[derive(Clone)]
pub struct LocalBus {
    shared: Arc<Shared>,
}

struct Shared {
    registry: Mutex<Registry>,
    capacity: usize,
    /// Messages dropped for slow subscribers since the bus was created, over all subscriptions.
    dropped: AtomicU64,
}

#[derive(Default)]
struct Registry {
    closed: bool,
    /// Handed out in increasing order, which is the order queue group members take turns in.
    next_id: u64,
    subscribers: HashMap<u64, Subscriber>,
    /// Which subscriptions each subject reaches, by id.
    index: Index,
    /// Queue groups by name. Like NATS, a group is identified by its name alone: members of
    /// `workers` on `a.*` and on `a.b` compete for a message on `a.b`.
    groups: HashMap<String, Group>,
}

/// A queue group's round-robin state, kept while it has members.
#[derive(Default)]
struct Group {
    /// Live subscriptions in the group, whatever their filter: the last one out removes the group.
    members: usize,
    /// Incremented by every message the group takes; the member it falls to is this modulo the
    /// number of members interested in that message.
    turn: usize,
}

struct Subscriber {
    filter: String,
    group: Option<String>,
    sender: mpsc::Sender<Message>,
    dropped: Arc<AtomicU64>,
}

/// Keeps a subscriber registered for as long as its [`Subscription`] lives.
pub(crate) struct Registration {
    shared: Weak<Shared>,
    id: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        // The bus may already be gone, in which case there is nothing to unregister from.
        if let Some(shared) = self.shared.upgrade() {
            let mut registry = shared.registry.lock();
            let Registry { subscribers, index, groups, .. } = &mut *registry;
            let Some(removed) = subscribers.remove(&self.id) else { return };
            index.remove(&removed.filter, self.id);
            if let Some(group) = removed.group
                && let Entry::Occupied(mut entry) = groups.entry(group)
            {
                entry.get_mut().members -= 1;
                if entry.get().members == 0 {
                    entry.remove();
                }
            }
        }
    }
}

impl LocalBus {
    /// A bus whose subscribers each buffer up to [`DEFAULT_CAPACITY`] messages.
    pub fn new() -> Self {
        Self::with_capacity(DEFAULT_CAPACITY)
    }

    /// A bus whose subscribers each buffer up to `capacity` messages (at least 1) before new
    /// messages are dropped for them.
    pub fn with_capacity(capacity: usize) -> Self {
        LocalBus {
            shared: Arc::new(Shared {
                registry: Mutex::new(Registry::default()),
                capacity: capacity.max(1),
                dropped: AtomicU64::new(0),
            }),
        }
    }

    /// How many messages were dropped for slow subscribers since the bus was created.
    pub fn dropped_messages(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// How many subscriptions are live (requests in flight count too, through their inboxes).
    pub fn subscription_count(&self) -> usize {
        self.shared.registry.lock().subscribers.len()
    }

    /// Closes the bus: every subscription stream ends, and every later call fails with
    /// [`BusError::Closed`].
    pub fn close(&self) {
        let mut registry = self.shared.registry.lock();
        registry.closed = true;
        // Dropping the senders is what ends the subscribers' streams.
        registry.subscribers.clear();
        registry.index = Index::default();
        registry.groups.clear();
    }

    fn register(&self, filter: &str, group: Option<&str>) -> Result<Subscription, BusError> {
        let (sender, receiver) = mpsc::channel(self.shared.capacity);
        let dropped = Arc::new(AtomicU64::new(0));
        let mut registry = self.shared.registry.lock();
        if registry.closed {
            return Err(BusError::Closed);
        }
        let id = registry.next_id;
        registry.next_id += 1;
        registry.index.insert(filter, id);
        if let Some(group) = group {
            registry.groups.entry(group.to_owned()).or_default().members += 1;
        }
        registry.subscribers.insert(
            id,
            Subscriber { filter: filter.to_owned(), group: group.map(str::to_owned), sender, dropped: dropped.clone() },
        );
        Ok(Subscription {
            filter: filter.to_owned(),
            inner: SubscriptionInner::Local {
                receiver,
                dropped,
                _guard: Registration { shared: Arc::downgrade(&self.shared), id },
            },
        })
    }

    /// Delivers a message and returns how many subscriptions were interested in it (the basis of
    /// no-responders detection).
    fn deliver(&self, subject: &str, reply: Option<&str>, payload: Bytes) -> Result<usize, BusError> {
        validate_subject(subject)?;
        if let Some(reply) = reply {
            validate_subject(reply)?;
        }
        let trace = shoal_trace::TraceContext::current();
        let message = Message { subject: subject.to_owned(), reply: reply.map(str::to_owned), payload, trace };

        let mut registry = self.shared.registry.lock();
        if registry.closed {
            return Err(BusError::Closed);
        }
        let Registry { subscribers, index, groups, .. } = &mut *registry;

        let mut interested = 0;
        // Matching members per queue group with their ids; usually empty or tiny.
        let mut queued: Vec<(&str, Vec<(u64, &Subscriber)>)> = Vec::new();
        index.for_each_match(subject, |id| {
            let Some(subscriber) = subscribers.get(&id) else { return };
            interested += 1;
            match &subscriber.group {
                None => {
                    self.offer(subscriber, message.clone());
                }
                Some(group) => match queued.iter_mut().find(|(name, _)| *name == group) {
                    Some((_, members)) => members.push((id, subscriber)),
                    None => queued.push((group, vec![(id, subscriber)])),
                },
            }
        });

        for (group, mut members) in queued {
            // The index finds members filter by filter; turns are taken in subscription order.
            members.sort_unstable_by_key(|(id, _)| *id);
            let turn = groups.get_mut(group).map_or(0, |group| {
                let turn = group.turn;
                group.turn = turn.wrapping_add(1);
                turn
            });
            let first = turn % members.len();
            // A member whose subscription is being dropped right now cannot take the message, so
            // it falls to the next one; a merely slow member keeps its turn and drops it (as NATS).
            for offset in 0..members.len() {
                let (_, member) = members[(first + offset) % members.len()];
                if self.offer(member, message.clone()) != Offer::Gone {
                    break;
                }
            }
        }
        Ok(interested)
    }

    fn offer(&self, subscriber: &Subscriber, message: Message) -> Offer {
        match subscriber.sender.try_send(message) {
            Ok(()) => Offer::Delivered,
            Err(mpsc::error::TrySendError::Full(message)) => {
                let for_subscriber = subscriber.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                self.shared.dropped.fetch_add(1, Ordering::Relaxed);
                // Warn on the first drop and then sparsely: a stuck subscriber would otherwise turn
                // every publish into a log line.
                if for_subscriber == 1 || for_subscriber.is_multiple_of(10_000) {
                    tracing::warn!(
                        filter = %subscriber.filter,
                        subject = %message.subject,
                        dropped = for_subscriber,
                        "slow consumer: message dropped"
                    );
                }
                Offer::Dropped
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Offer::Gone,
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Offer {
    Delivered,
    Dropped,
    Gone,
}

impl Default for LocalBus {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for LocalBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalBus")
            .field("subscriptions", &self.subscription_count())
            .field("capacity", &self.shared.capacity)
            .field("dropped", &self.dropped_messages())
            .finish()
    }
}

#[async_trait::async_trait]
impl Bus for LocalBus {
    async fn publish(&self, subject: &str, payload: Bytes) -> Result<(), BusError> {
        self.deliver(subject, None, payload).map(drop)
    }

    async fn publish_with_reply(&self, subject: &str, reply: &str, payload: Bytes) -> Result<(), BusError> {
        self.deliver(subject, Some(reply), payload).map(drop)
    }

    async fn subscribe(&self, filter: &str) -> Result<Subscription, BusError> {
        validate_filter(filter)?;
        self.register(filter, None)
    }

    async fn queue_subscribe(&self, filter: &str, group: &str) -> Result<Subscription, BusError> {
        validate_filter(filter)?;
        validate_queue_group(group)?;
        self.register(filter, Some(group))
    }

    async fn request(&self, subject: &str, payload: Bytes, timeout: Duration) -> Result<Message, BusError> {
        validate_subject(subject)?;
        let inbox = format!("_INBOX.{}", uuid::Uuid::new_v4().simple());
        // Subscribe before publishing, or a fast responder could answer into the void.
        let mut replies = self.register(&inbox, None)?;
        if self.deliver(subject, Some(&inbox), payload)? == 0 {
            return Err(BusError::NoResponders { subject: subject.to_owned() });
        }
        match tokio::time::timeout(timeout, replies.next()).await {
            Ok(Some(reply)) => Ok(reply),
            Ok(None) => Err(BusError::Closed),
            Err(_) => Err(BusError::Timeout { subject: subject.to_owned() }),
        }
    }

    async fn flush(&self) -> Result<(), BusError> {
        if self.shared.registry.lock().closed {
            return Err(BusError::Closed);
        }
        Ok(())
    }

    fn kind(&self) -> &'static str {
        "local"
    }
}

#[cfg(test)]
mod tests {
    use futures::FutureExt;

    use super::*;

    #[tokio::test]
    async fn slow_consumers_lose_messages_without_blocking_the_publisher() {
        let bus = LocalBus::with_capacity(4);
        let mut slow = bus.subscribe("s").await.expect("subscribe");
        for i in 0..10u8 {
            bus.publish("s", Bytes::from(vec![i])).await.expect("publish");
        }
        assert_eq!(slow.dropped(), 6);
        assert_eq!(bus.dropped_messages(), 6);
        // The first four made it, in order; the rest were dropped, not queued.
        for i in 0..4u8 {
            let message = slow.next().await.expect("message");
            assert_eq!(message.payload.as_ref(), [i]);
        }
        bus.publish("s", Bytes::from_static(b"later")).await.expect("publish");
        let message = slow.next().await.expect("message");
        assert_eq!(message.payload.as_ref(), b"later");
    }

    #[tokio::test]
    async fn dropping_subscriptions_unregisters_them_and_their_group_turns() {
        let bus = LocalBus::new();
        let a = bus.queue_subscribe("q", "g").await.expect("subscribe");
        let b = bus.subscribe("q").await.expect("subscribe");
        bus.publish("q", Bytes::new()).await.expect("publish");
        assert_eq!(bus.subscription_count(), 2);
        assert_eq!(bus.shared.registry.lock().groups.len(), 1);
        drop(a);
        assert_eq!(bus.subscription_count(), 1);
        assert!(bus.shared.registry.lock().groups.is_empty());
        drop(b);
        assert_eq!(bus.subscription_count(), 0);
        assert!(bus.shared.registry.lock().index.is_empty());
    }

    /// Ten thousand requests in flight, each with its own inbox, beside a few wildcard watchers: a
    /// reply reaches its own inbox and the watchers whose filters match it, and nobody else.
    #[tokio::test]
    async fn a_publish_among_ten_thousand_inboxes_reaches_exactly_its_subscribers() {
        let bus = LocalBus::new();
        let inboxes: Vec<String> = (0..10_000).map(|_| format!("_INBOX.{}", uuid::Uuid::new_v4().simple())).collect();
        let mut held = Vec::new();
        for inbox in &inboxes {
            held.push(bus.subscribe(inbox).await.expect("subscribe"));
        }
        let mut watchers = Vec::new();
        for filter in ["_INBOX.*", ">", "_INBOX.>", "shoal.evt.>", "*.x", "_INBOX.*.x"] {
            watchers.push(bus.subscribe(filter).await.expect("subscribe"));
        }
        let pending = |subscription: &mut Subscription| subscription.next().now_or_never().flatten();

        let target = 4321;
        assert_eq!(bus.deliver(&inboxes[target], None, Bytes::from_static(b"reply")), Ok(4));
        for (i, inbox) in held.iter_mut().enumerate() {
            let got = pending(inbox);
            assert_eq!(got.is_some(), i == target, "inbox {i} got {got:?}");
        }
        let reached: Vec<bool> = watchers.iter_mut().map(|w| pending(w).is_some()).collect();
        assert_eq!(reached, [true, true, true, false, false, false]);

        // One token deeper: no inbox, but the tail wildcards and `_INBOX.*.x`.
        assert_eq!(bus.deliver(&format!("{}.x", inboxes[target]), None, Bytes::new()), Ok(3));
        assert!(held.iter_mut().all(|inbox| pending(inbox).is_none()));
        let reached: Vec<bool> = watchers.iter_mut().map(|w| pending(w).is_some()).collect();
        assert_eq!(reached, [false, true, true, false, false, true]);

        drop(held);
        assert_eq!(bus.subscription_count(), watchers.len());
        drop(watchers);
        assert_eq!(bus.subscription_count(), 0);
        assert!(bus.shared.registry.lock().index.is_empty(), "every inbox's branch is gone");
    }

    #[tokio::test]
    async fn requests_leave_no_inbox_behind() {
        let bus = LocalBus::new();
        let mut responder = bus.subscribe("svc").await.expect("subscribe");
        let server = {
            let bus = bus.clone();
            tokio::spawn(async move {
                let request = responder.next().await.expect("request");
                request.respond(&bus, Bytes::from_static(b"pong")).await.expect("respond");
            })
        };
        let reply = bus.request("svc", Bytes::new(), Duration::from_secs(5)).await.expect("reply");
        assert_eq!(reply.payload.as_ref(), b"pong");
        server.await.expect("server task");
        assert_eq!(bus.subscription_count(), 0);
    }

    #[tokio::test]
    async fn closing_ends_streams_and_refuses_calls() {
        let bus = LocalBus::new();
        let mut subscription = bus.subscribe(">").await.expect("subscribe");
        bus.close();
        assert_eq!(subscription.next().await, None);
        assert_eq!(bus.publish("a", Bytes::new()).await, Err(BusError::Closed));
        assert!(matches!(bus.subscribe("a").await, Err(BusError::Closed)));
        assert_eq!(bus.flush().await, Err(BusError::Closed));
    }

    #[tokio::test]
    async fn streams_end_when_the_bus_is_dropped() {
        let bus = LocalBus::new();
        let mut subscription = bus.subscribe("a").await.expect("subscribe");
        drop(bus);
        assert_eq!(subscription.next().await, None);
    }

    #[tokio::test]
    async fn responding_to_a_plain_message_is_an_error() {
        let bus = LocalBus::new();
        let message = Message { subject: "a".into(), reply: None, payload: Bytes::new(), trace: None };
        assert_eq!(message.respond(&bus, Bytes::new()).await, Err(BusError::NoReplySubject { subject: "a".into() }));
    }
}
