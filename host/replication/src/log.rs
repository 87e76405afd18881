//! A replicated, fenced log on one JetStream stream.
//!
//! JetStream stores every entry on R servers (Raft) before it acknowledges the append; Shoal
//! never orders entries itself. One writer appends at a time — the holder of a [`crate::Lease`] —
//! and every append names the sequence it expects to be the stream's last
//! (`Nats-Expected-Last-Sequence`): the server refuses an append from a writer whose view is
//! stale, so a deposed leader's entries never land once the next leader has written one
//! ([`LogError::Fenced`]). Everyone, writer included, applies the entries in sequence order
//! through a [`Reader`].

use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use futures::StreamExt;

/// Where a log lives.
#[derive(Clone, Debug)]
pub struct LogConfig {
    /// The stream (created when missing).
    pub stream: String,
    /// The one subject its entries are published on.
    pub subject: String,
    /// Replicas: 3 on a cluster of three NATS servers (at most the servers there are).
    pub replicas: usize,
}

/// Why an append or a read failed.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// The stream's last entry is not the one the writer expected: another writer appended
    /// since (this one is deposed, or its view is behind).
    #[error("log {stream}: the last entry is no longer {expected}; another writer appended")]
    Fenced {
        /// The stream.
        stream: String,
        /// The sequence this writer expected to be last.
        expected: u64,
    },
    /// The entry is larger than the server accepts in one message.
    #[error("log {stream}: an entry of {size} bytes exceeds the server's limit of {limit}")]
    TooLarge {
        /// The stream.
        stream: String,
        /// The entry's size.
        size: usize,
        /// The server's `max_payload`.
        limit: usize,
    },
    /// JetStream did not answer, or refused.
    #[error("log {stream}: {reason}")]
    Unavailable {
        /// The stream.
        stream: String,
        /// What JetStream said.
        reason: String,
    },
}

/// One entry as read back.
#[derive(Clone, Debug)]
pub struct Entry {
    /// Its sequence in the stream (from 1, only growing, no gaps unless truncated).
    pub sequence: u64,
    /// What was appended.
    pub payload: bytes::Bytes,
}

/// An entry on its way into the log ([`Log::submit`]).
pub struct Appending {
    ack: jetstream::context::PublishAckFuture,
    stream: String,
    expected_last: u64,
}

impl std::fmt::Debug for Appending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Appending").field("stream", &self.stream).field("expected_last", &self.expected_last).finish()
    }
}

impl Appending {
    /// Wait for JetStream's answer: the entry's sequence once it is stored on the stream's
    /// replicas, [`LogError::Fenced`] when the stream's last entry was not the one expected, or
    /// [`LogError::Unavailable`] when no answer came (the entry may or may not have landed).
    pub async fn landed(self) -> Result<u64, LogError> {
        let Appending { ack, stream, expected_last } = self;
        match ack.await {
            Ok(ack) => Ok(ack.sequence),
            Err(e) if e.kind() == jetstream::context::PublishErrorKind::WrongLastSequence => {
                Err(LogError::Fenced { stream, expected: expected_last })
            }
            Err(e) => Err(LogError::Unavailable { stream, reason: e.to_string() }),
        }
    }
}

/// A handle on one log: append (the leader) and read (everyone).
#[derive(Clone)]
pub struct Log {
    js: jetstream::Context,
    client: async_nats::Client,
    config: LogConfig,
}

impl std::fmt::Debug for Log {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Log").field("stream", &self.config.stream).finish()
    }
}

impl Log {
    /// The log of `config` (its stream made if missing: file storage, no limits).
    pub async fn open(client: async_nats::Client, config: &LogConfig) -> Result<Log, LogError> {
        let js = jetstream::new(client.clone());
        js.get_or_create_stream(stream::Config {
            name: config.stream.clone(),
            subjects: vec![config.subject.clone()],
            num_replicas: config.replicas.max(1),
            storage: stream::StorageType::File,
            allow_direct: true,
            ..stream::Config::default()
        })
        .await
        .map_err(|e| LogError::Unavailable { stream: config.stream.clone(), reason: e.to_string() })?;
        Ok(Log { js, client, config: config.clone() })
    }

    /// Delete the log of `config` with everything in it (nothing to do when there is none): its
    /// owner is gone for good. Readers of it stop with an error; nobody can append to it after.
    pub async fn destroy(client: async_nats::Client, config: &LogConfig) -> Result<(), LogError> {
        let js = jetstream::new(client);
        match js.delete_stream(&config.stream).await {
            Ok(_) => Ok(()),
            Err(e)
                if matches!(e.kind(), jetstream::context::DeleteStreamErrorKind::JetStream(ref js)
                    if js.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND) =>
            {
                Ok(())
            }
            Err(e) => Err(LogError::Unavailable { stream: config.stream.clone(), reason: e.to_string() }),
        }
    }

    fn unavailable(&self, reason: impl std::fmt::Display) -> LogError {
        LogError::Unavailable { stream: self.config.stream.clone(), reason: reason.to_string() }
    }

    /// The stream's first and last sequences (`first > last` when it holds nothing).
    pub async fn bounds(&self) -> Result<(u64, u64), LogError> {
        let mut stream = self.js.get_stream(&self.config.stream).await.map_err(|e| self.unavailable(e))?;
        let info = stream.info().await.map_err(|e| self.unavailable(e))?;
        Ok((info.state.first_sequence, info.state.last_sequence))
    }

    /// Append `payload` if the stream's last entry is still `expected_last` (0: the stream is
    /// empty); the new entry's sequence.
    pub async fn append(&self, payload: bytes::Bytes, expected_last: u64) -> Result<u64, LogError> {
        self.submit(payload, expected_last).await?.landed().await
    }

    /// Send `payload` to be appended if the stream's last entry is then `expected_last`, without
    /// waiting for JetStream's answer: when this returns, the entry is on its way behind every
    /// earlier one submitted through this client, so a writer may submit the next entry (fenced
    /// on `expected_last + 1`) before this one landed. If an entry does not land, every later one
    /// fenced on it does not either — unless another writer's entry took its place, which is why
    /// a log's readers must recognise a deposed writer's entries (the store does, by term).
    pub async fn submit(&self, payload: bytes::Bytes, expected_last: u64) -> Result<Appending, LogError> {
        let limit = usize::try_from(self.client.server_info().max_payload).unwrap_or(usize::MAX);
        // Headers and the subject ride in the same message: keep a little room for them.
        if payload.len() + 512 > limit {
            return Err(LogError::TooLarge { stream: self.config.stream.clone(), size: payload.len(), limit });
        }
        let publish =
            jetstream::message::PublishMessage::build().payload(payload).expected_last_sequence(expected_last);
        let ack = self.js.send_publish(self.config.subject.clone(), publish).await.map_err(|e| self.unavailable(e))?;
        Ok(Appending { ack, stream: self.config.stream.clone(), expected_last })
    }
    /// The entry at `sequence`, if the stream holds it.
    pub async fn get(&self, sequence: u64) -> Result<Option<Entry>, LogError> {
        let stream = self.js.get_stream(&self.config.stream).await.map_err(|e| self.unavailable(e))?;
        match stream.get_raw_message(sequence).await {
            Ok(message) => Ok(Some(Entry { sequence, payload: message.payload })),
            Err(e) if e.kind() == jetstream::stream::RawMessageErrorKind::NoMessageFound => Ok(None),
            Err(e) => Err(self.unavailable(e)),
        }
    }

    /// Delete the entries before `sequence` (they are in a snapshot): the log keeps `sequence`
    /// and what follows. Readers that still needed an entry before it find it gone.
    pub async fn purge_before(&self, sequence: u64) -> Result<(), LogError> {
        let stream = self.js.get_stream(&self.config.stream).await.map_err(|e| self.unavailable(e))?;
        stream.purge().sequence(sequence).await.map_err(|e| self.unavailable(e))?;
        Ok(())
    }

    /// Read the entries from `from` on, in order, including those appended later.
    pub async fn read(&self, from: u64) -> Result<Reader, LogError> {
        let messages = self.consumer(from).await?;
        Ok(Reader { log: self.clone(), messages, next: from.max(1) })
    }

    async fn consumer(&self, from: u64) -> Result<consumer::pull::Ordered, LogError> {
        let stream = self.js.get_stream(&self.config.stream).await.map_err(|e| self.unavailable(e))?;
        let consumer = stream
            .create_consumer(consumer::pull::OrderedConfig {
                deliver_policy: consumer::DeliverPolicy::ByStartSequence { start_sequence: from.max(1) },
                ..consumer::pull::OrderedConfig::default()
            })
            .await
            .map_err(|e| self.unavailable(e))?;
        consumer.messages().await.map_err(|e| self.unavailable(e))
    }
}

/// The entries of a log in order, as they come.
pub struct Reader {
    log: Log,
    messages: consumer::pull::Ordered,
    /// The sequence of the next entry this reader gives.
    next: u64,
}

/// How long a reader waits for an entry before it checks whether the log moved on without it
/// (its consumer lived on a server that died): then it reads again from where it was.
const STALL: Duration = Duration::from_secs(2);

impl Reader {
    /// The next entry, waiting for it. A reader whose consumer was lost with a server reads
    /// again from the entry it expects, so entries come once each, in order.
    pub async fn next(&mut self) -> Result<Entry, LogError> {
        loop {
            match tokio::time::timeout(STALL, self.messages.next()).await {
                Ok(Some(Ok(message))) => {
                    let sequence = message.info().map_err(|e| self.log.unavailable(e))?.stream_sequence;
                    if sequence < self.next {
                        continue;
                    }
                    self.next = sequence + 1;
                    return Ok(Entry { sequence, payload: message.message.payload.clone() });
                }
                Ok(Some(Err(e))) => {
                    tracing::debug!(stream = %self.log.config.stream, cause = %e, "log reader interrupted; resuming");
                    // A product retry: the ordered consumer re-creates itself.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Ok(None) => self.reopen().await,
                Err(_) => {
                    let moved_on = self.log.bounds().await.is_ok_and(|(_, last)| last >= self.next);
                    if moved_on {
                        tracing::info!(stream = %self.log.config.stream, next = self.next, "log reader stalled; reading again");
                        self.reopen().await;
                    }
                }
            }
        }
    }

    /// Read again from the next entry. While the stream elects a new leader (its old one died
    /// with a server) making the consumer times out: the reader keeps its place and tries again,
    /// as it would for an entry that has not come yet.
    async fn reopen(&mut self) {
        match self.log.consumer(self.next).await {
            Ok(messages) => self.messages = messages,
            Err(e) => {
                tracing::info!(stream = %self.log.config.stream, next = self.next, cause = %e, "log reader cannot read again yet; retrying");
                // A product retry: the stream's new leader answers within its election.
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}
