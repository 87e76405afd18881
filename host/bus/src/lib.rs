//! Shoal's one bus: subjects, `*`/`>` wildcards, request/reply and queue groups with NATS semantics.
//!
//! Every role talks to every other role through [`Bus`], and the same code runs on both
//! implementations: [`NatsBus`] (async-nats against a real NATS server, any number of machines) and
//! [`LocalBus`] (in-process, for `shoal dev` and tests). The [`subject`] module owns the subject tree,
//! the [`event`] module owns the CloudEvents envelope of everything published under `shoal.evt.>`.
//!
//! This crate must never learn what the messages *mean*: payloads are opaque bytes, and the roles own
//! their control protocols. Publishing never blocks on a slow subscriber (see [`LocalBus`]).
//! Every message carries the trace context of the span that published it ([`Message::trace`]),
//! and every event the CloudEvents distributed-tracing extension ([`CloudEvent::traceparent`]).

pub mod auth;
pub mod event;
mod local;
mod nats;
pub mod subject;

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

pub use bytes::Bytes;
use futures::Stream;

pub use event::{CloudEvent, EventPublisher, publish_event};
pub use local::LocalBus;
pub use nats::{NatsBus, NatsOptions};

/// A message as delivered to a subscriber.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The subject it was published to (never a wildcard).
    pub subject: String,
    /// Where the publisher waits for an answer, for requests.
    pub reply: Option<String>,
    /// The opaque body.
    pub payload: Bytes,
    /// The W3C trace context of the span that sent it, when spans are exported: a NATS message
    /// carries it as `traceparent`/`tracestate` headers, a local one as this field. A handler
    /// makes it the parent of its span with [`shoal_trace::TraceContext::adopt`].
    pub trace: Option<shoal_trace::TraceContext>,
}

impl Message {
    /// Answers a request by publishing `payload` to this message's reply subject.
    pub async fn respond(&self, bus: &dyn Bus, payload: Bytes) -> Result<(), BusError> {
        match &self.reply {
            Some(reply) => bus.publish(reply, payload).await,
            None => Err(BusError::NoReplySubject { subject: self.subject.clone() }),
        }
    }
}

/// Everything that can go wrong on the bus.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BusError {
    /// A subject, filter or queue group does not follow the NATS syntax (see [`subject`]).
    #[error("invalid subject {subject:?}: {reason}")]
    InvalidSubject {
        /// The offending subject, filter or queue group.
        subject: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A request found nobody subscribed to its subject.
    #[error("no responders on {subject}")]
    NoResponders {
        /// The request's subject.
        subject: String,
    },
    /// A request got no answer within its timeout.
    #[error("request on {subject} timed out")]
    Timeout {
        /// The request's subject.
        subject: String,
    },
    /// The bus was closed (or the connection to the server is gone for good).
    #[error("bus is closed")]
    Closed,
    /// [`Message::respond`] on a message that was not a request.
    #[error("message on {subject} has no reply subject")]
    NoReplySubject {
        /// The subject of the message that cannot be answered.
        subject: String,
    },
    /// An event could not be encoded as JSON.
    #[error("cannot encode event: {0}")]
    Encode(String),
    /// Credentials that cannot be read or used.
    #[error("nats credentials: {0}")]
    Credentials(String),
    /// Any other error reported by the NATS client.
    #[error("nats: {0}")]
    Nats(String),
}

/// The bus with NATS semantics that every role uses.
///
/// Subjects are validated by every method ([`subject::validate_subject`] for publishing,
/// [`subject::validate_filter`] for subscribing), so both implementations reject the same input.
#[async_trait::async_trait]
pub trait Bus: Send + Sync + 'static {
    /// Publishes `payload` to `subject`; never blocks on slow subscribers.
    async fn publish(&self, subject: &str, payload: Bytes) -> Result<(), BusError>;
    /// Publishes with a reply subject, so the receivers can answer with [`Message::respond`].
    async fn publish_with_reply(&self, subject: &str, reply: &str, payload: Bytes) -> Result<(), BusError>;
    /// Receives every message whose subject matches `filter`.
    async fn subscribe(&self, filter: &str) -> Result<Subscription, BusError>;
    /// Joins queue group `group` on `filter`: each matching message goes to exactly one member of
    /// the group (and to every plain subscriber).
    async fn queue_subscribe(&self, filter: &str, group: &str) -> Result<Subscription, BusError>;
    /// Publishes `payload` with a unique reply subject and waits for the first answer.
    /// Fails with [`BusError::NoResponders`] at once when nobody is subscribed to `subject`, and with
    /// [`BusError::Timeout`] when nobody answers within `timeout`.
    async fn request(&self, subject: &str, payload: Bytes, timeout: Duration) -> Result<Message, BusError>;
    /// Waits until the server has processed everything this handle sent so far: publishes,
    /// subscriptions and unsubscriptions (a round trip, like the Go client's `Flush`). After it, a
    /// subscription made through this handle sees what any other connection publishes. A no-op on
    /// the local bus, where every call takes effect immediately.
    async fn flush(&self) -> Result<(), BusError>;
    /// `"local"` or `"nats"`, for logs and `shoal status`.
    fn kind(&self) -> &'static str;
}

/// The bus as the roles hold it.
pub type SharedBus = Arc<dyn Bus>;

/// A stream of the messages matching a filter. Dropping it unsubscribes.
///
/// The stream ends when the bus is closed (local) or the client is gone for good (NATS).
pub struct Subscription {
    filter: String,
    inner: SubscriptionInner,
}

enum SubscriptionInner {
    Local {
        receiver: tokio::sync::mpsc::Receiver<Message>,
        dropped: Arc<AtomicU64>,
        // Removes the subscription from the local registry when the subscription is dropped.
        _guard: local::Registration,
    },
    Nats(async_nats::Subscriber),
}

impl Subscription {
    /// The filter this subscription was made with.
    pub fn subject_filter(&self) -> &str {
        &self.filter
    }

    /// How many messages were dropped because this subscriber fell behind (slow-consumer semantics:
    /// publishing never waits). Always 0 on NATS, where the client reports slow consumers as events.
    pub fn dropped(&self) -> u64 {
        match &self.inner {
            SubscriptionInner::Local { dropped, .. } => dropped.load(Ordering::Relaxed),
            SubscriptionInner::Nats(_) => 0,
        }
    }
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.inner {
            SubscriptionInner::Local { .. } => "local",
            SubscriptionInner::Nats(_) => "nats",
        };
        f.debug_struct("Subscription").field("filter", &self.filter).field("kind", &kind).finish()
    }
}

impl Stream for Subscription {
    type Item = Message;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Message>> {
        match &mut self.get_mut().inner {
            SubscriptionInner::Local { receiver, .. } => receiver.poll_recv(cx),
            SubscriptionInner::Nats(subscriber) => {
                Pin::new(subscriber).poll_next(cx).map(|message| message.map(nats::convert_message))
            }
        }
    }
}
