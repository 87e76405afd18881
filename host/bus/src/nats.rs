//! The distributed bus: [`Bus`] over async-nats against a real NATS server.
//!
//! A thin translation layer and nothing more: NATS already is the distributed engine (clustering,
//! JetStream), so this module must never re-implement routing, retries or buffering of its own. It
//! validates subjects with the same rules as [`crate::LocalBus`], so both buses reject the same input
//! with the same error, and maps async-nats errors onto [`BusError`].

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;

use crate::subject::{validate_filter, validate_queue_group, validate_subject};
use crate::{Bus, BusError, Message, Subscription, SubscriptionInner};

/// How long [`NatsBus::connect_with`] keeps trying when the server refuses the credentials.
pub const AUTH_PATIENCE: Duration = Duration::from_secs(3);

/// How long [`Bus::flush`] waits for its round trip; async-nats' default request timeout, since a
/// server that cannot echo one message in that time is as good as unreachable.
const FLUSH_PATIENCE: Duration = Duration::from_secs(10);

/// The [`Bus`] backed by a NATS connection. Clones share the connection.
#[derive(Clone, Debug)]
pub struct NatsBus {
    client: async_nats::Client,
}

/// How to prove who we are to the server, beyond its URL (whose user info, `nats://user:pass@…`,
/// and scheme, `tls://…`, async-nats honours by itself).
#[derive(Clone, Debug, Default)]
pub struct NatsOptions {
    /// An nkey credentials file (see [`crate::auth::read_seed`]); replies then arrive under the
    /// identity's own inbox prefix ([`crate::auth::inbox_prefix`]), the only one it may read.
    pub creds: Option<PathBuf>,
    /// A PEM file of certificate authorities to trust for `tls://` servers (besides the system's).
    pub ca: Option<PathBuf>,
    /// How long to keep trying while no server answers (a daemon started alongside its NATS
    /// servers, in any order); zero fails at once.
    pub wait: Duration,
}

impl NatsBus {
    /// Connects to the NATS server(s) at `url` (e.g. `nats://127.0.0.1:4222`, or a comma-separated
    /// list) with no credentials. Fails at once when no server answers.
    pub async fn connect(url: &str) -> Result<Self, BusError> {
        Self::connect_with(url, &NatsOptions::default()).await
    }

    /// Connects to `url` with `options`. When no server answers, tries again for `options.wait`
    /// (by default not at all); when the server refuses the credentials, tries again for
    /// [`AUTH_PATIENCE`] first, since a server re-reading its configuration (`shoal nats add`,
    /// SIGHUP) refuses connections for a moment.
    pub async fn connect_with(url: &str, options: &NatsOptions) -> Result<Self, BusError> {
        let mut connect = async_nats::ConnectOptions::new().name("shoal");
        if let Some(path) = &options.creds {
            let seed = crate::auth::read_seed(path)?;
            let inbox = crate::auth::inbox_prefix(&crate::auth::public_key_of(&seed)?);
            connect = connect.nkey(seed).custom_inbox_prefix(inbox);
        }
        if let Some(ca) = &options.ca {
            connect = connect.add_root_certificates(ca.clone());
        }
        // async-nats parses one URL per string: a comma-separated list is split here.
        let servers: Vec<&str> = url.split(',').map(str::trim).filter(|s| !s.is_empty()).collect();
        if servers.iter().any(|s| s.starts_with("tls://")) {
            connect = connect.require_tls(true);
        }
        let started = tokio::time::Instant::now();
        let mut waiting = false;
        loop {
            match connect.clone().connect(servers.clone()).await {
                Ok(client) => return Ok(NatsBus { client }),
                Err(err)
                    if err.kind() == async_nats::ConnectErrorKind::AuthorizationViolation
                        && started.elapsed() < AUTH_PATIENCE =>
                {
                    tracing::debug!(%url, "nats refused the credentials; trying again (the server may be reloading)");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(err)
                    if matches!(
                        err.kind(),
                        async_nats::ConnectErrorKind::Io | async_nats::ConnectErrorKind::TimedOut
                    ) && started.elapsed() < options.wait =>
                {
                    if !waiting {
                        tracing::info!(%url, wait = ?options.wait, "no NATS server answers yet; waiting for one");
                        waiting = true;
                    }
                    // Retrying a refused connection on loopback or a LAN; bounded by the wait.
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(err) => return Err(BusError::Nats(format!("cannot connect to {url}: {err}"))),
            }
        }
    }

    /// Wraps a client that was connected elsewhere (e.g. with credentials or TLS options).
    pub fn from_client(client: async_nats::Client) -> Self {
        NatsBus { client }
    }

    /// The underlying client, for what the [`Bus`] trait does not cover (JetStream, KV).
    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }
}

/// Converts an async-nats message; of its headers only the trace context is part of Shoal's bus
/// model, and its status is not.
pub(crate) fn convert_message(message: async_nats::Message) -> Message {
    let trace = message.headers.as_ref().and_then(|headers| {
        let get = |name| headers.get(name).map(async_nats::HeaderValue::as_str);
        shoal_trace::TraceContext::from_parts(get(shoal_trace::TRACEPARENT), get(shoal_trace::TRACESTATE))
    });
    Message {
        subject: message.subject.to_string(),
        reply: message.reply.map(|reply| reply.to_string()),
        payload: message.payload,
        trace,
    }
}

/// The headers that carry the current span's trace context, when spans are exported.
fn trace_headers() -> Option<async_nats::HeaderMap> {
    let trace = shoal_trace::TraceContext::current()?;
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(shoal_trace::TRACEPARENT, trace.traceparent);
    if !trace.tracestate.is_empty() {
        headers.insert(shoal_trace::TRACESTATE, trace.tracestate);
    }
    Some(headers)
}

fn publish_error(subject: &str, err: async_nats::PublishError) -> BusError {
    use async_nats::PublishErrorKind;
    match err.kind() {
        // The command channel is gone: the client was closed or dropped.
        PublishErrorKind::Send => BusError::Closed,
        PublishErrorKind::InvalidSubject => {
            BusError::InvalidSubject { subject: subject.to_owned(), reason: "rejected by the nats client" }
        }
        PublishErrorKind::MaxPayloadExceeded => BusError::Nats(format!("publish on {subject}: {err}")),
    }
}

fn subscribe_error(filter: &str, err: async_nats::SubscribeError) -> BusError {
    use async_nats::SubscribeErrorKind;
    match err.kind() {
        SubscribeErrorKind::InvalidSubject | SubscribeErrorKind::InvalidQueueName => {
            BusError::InvalidSubject { subject: filter.to_owned(), reason: "rejected by the nats client" }
        }
        SubscribeErrorKind::Other => BusError::Nats(format!("subscribe to {filter}: {err}")),
    }
}

#[async_trait::async_trait]
impl Bus for NatsBus {
    async fn publish(&self, subject: &str, payload: Bytes) -> Result<(), BusError> {
        validate_subject(subject)?;
        let sent = match trace_headers() {
            Some(headers) => self.client.publish_with_headers(subject.to_owned(), headers, payload).await,
            None => self.client.publish(subject.to_owned(), payload).await,
        };
        sent.map_err(|err| publish_error(subject, err))
    }

    async fn publish_with_reply(&self, subject: &str, reply: &str, payload: Bytes) -> Result<(), BusError> {
        validate_subject(subject)?;
        validate_subject(reply)?;
        let sent = match trace_headers() {
            Some(headers) => {
                self.client.publish_with_reply_and_headers(subject.to_owned(), reply.to_owned(), headers, payload).await
            }
            None => self.client.publish_with_reply(subject.to_owned(), reply.to_owned(), payload).await,
        };
        sent.map_err(|err| publish_error(subject, err))
    }

    async fn subscribe(&self, filter: &str) -> Result<Subscription, BusError> {
        validate_filter(filter)?;
        let subscriber = self.client.subscribe(filter.to_owned()).await.map_err(|err| subscribe_error(filter, err))?;
        Ok(Subscription { filter: filter.to_owned(), inner: SubscriptionInner::Nats(subscriber) })
    }

    async fn queue_subscribe(&self, filter: &str, group: &str) -> Result<Subscription, BusError> {
        validate_filter(filter)?;
        validate_queue_group(group)?;
        let subscriber = self
            .client
            .queue_subscribe(filter.to_owned(), group.to_owned())
            .await
            .map_err(|err| subscribe_error(filter, err))?;
        Ok(Subscription { filter: filter.to_owned(), inner: SubscriptionInner::Nats(subscriber) })
    }

    async fn request(&self, subject: &str, payload: Bytes, timeout: Duration) -> Result<Message, BusError> {
        use async_nats::RequestErrorKind;
        validate_subject(subject)?;
        let mut request = async_nats::Request::new().payload(payload).timeout(Some(timeout));
        if let Some(headers) = trace_headers() {
            request = request.headers(headers);
        }
        match self.client.send_request(subject.to_owned(), request).await {
            Ok(reply) => Ok(convert_message(reply)),
            Err(err) => Err(match err.kind() {
                RequestErrorKind::NoResponders => BusError::NoResponders { subject: subject.to_owned() },
                RequestErrorKind::TimedOut => BusError::Timeout { subject: subject.to_owned() },
                RequestErrorKind::InvalidSubject => {
                    BusError::InvalidSubject { subject: subject.to_owned(), reason: "rejected by the nats client" }
                }
                RequestErrorKind::MaxPayloadExceeded | RequestErrorKind::Other => {
                    BusError::Nats(format!("request on {subject}: {err}"))
                }
            }),
        }
    }

    async fn flush(&self) -> Result<(), BusError> {
        // async-nats' own flush only empties the socket buffer; the server may not have read it
        // yet, so another connection's publish could still overtake our SUB. The server handles
        // each connection's commands in order, so a message sent to ourselves coming back proves
        // everything before it was processed: the round trip the Go client's Flush does with PING.
        let flush_error = |err: &dyn std::fmt::Display| BusError::Nats(format!("flush: {err}"));
        let inbox = self.client.new_inbox();
        let mut echo = self.client.subscribe(inbox.clone()).await.map_err(|err| flush_error(&err))?;
        self.client.publish(inbox, Bytes::new()).await.map_err(|err| publish_error("flush", err))?;
        self.client.flush().await.map_err(|err| flush_error(&err))?;
        match tokio::time::timeout(FLUSH_PATIENCE, echo.next()).await {
            Ok(Some(_)) => Ok(()),
            Ok(None) => Err(BusError::Closed),
            Err(_) => Err(BusError::Nats(format!("flush: no round trip to the server within {FLUSH_PATIENCE:?}"))),
        }
    }

    fn kind(&self) -> &'static str {
        "nats"
    }
}
