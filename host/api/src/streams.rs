//! How many long-lived answers — the event stream, KV watches, service watches — one token may
//! hold open at once. A handler takes a [`StreamSlot`] before it answers ([`Streams::open`]) and
//! the stream keeps it for as long as it lives ([`holding`]): the slot returns when the client
//! goes away and the stream is dropped. Past the cap the answer is 429 with `Retry-After`, and
//! the token's other requests are not affected.

use std::collections::HashMap;
use std::sync::Arc;

use axum::http::{HeaderMap, StatusCode, header};
use futures::{Stream, StreamExt};
use parking_lot::Mutex;
use sha2::{Digest, Sha256};

use crate::error::ApiError;

/// Streams one token may hold open at once, by default.
pub const DEFAULT_PER_TOKEN: usize = 64;

/// The open streams of every token.
pub struct Streams {
    per_token: usize,
    /// Open streams by the digest of the `Authorization` header that opened them.
    open: Mutex<HashMap<String, usize>>,
}

/// One open stream's place in its token's count.
pub struct StreamSlot {
    streams: Arc<Streams>,
    key: String,
}

impl Streams {
    /// At most `per_token` streams per token.
    pub fn new(per_token: usize) -> Arc<Streams> {
        Arc::new(Streams { per_token: per_token.max(1), open: Mutex::new(HashMap::new()) })
    }

    /// A slot for one more stream of the token in `headers` (the caller has checked the token).
    pub fn open(self: &Arc<Self>, headers: &HeaderMap) -> Result<StreamSlot, ApiError> {
        let token = headers.get(header::AUTHORIZATION).map(|v| v.as_bytes()).unwrap_or_default();
        let key = hex::encode(Sha256::digest(token));
        let mut open = self.open.lock();
        let count = open.entry(key.clone()).or_insert(0);
        if *count >= self.per_token {
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_streams",
                format!(
                    "this token holds {} streams and watches open, as many as it may; close one first",
                    self.per_token
                ),
            ));
        }
        *count += 1;
        Ok(StreamSlot { streams: self.clone(), key })
    }

    /// Streams open now, over every token.
    pub fn open_now(&self) -> usize {
        self.open.lock().values().sum()
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut open = self.streams.open.lock();
        if let Some(count) = open.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.key);
            }
        }
    }
}

/// `stream`, holding `slot` until it is dropped.
pub fn holding<S: Stream>(stream: S, slot: StreamSlot) -> impl Stream<Item = S::Item> {
    stream.map(move |item| {
        let _held = &slot;
        item
    })
}
