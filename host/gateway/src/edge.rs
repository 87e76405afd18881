//! What a client connection may hold on Shoal's HTTP edge — the API and the gateway — before it
//! sends a request: nginx's `client_header_timeout`, `keepalive_timeout` and
//! `worker_connections`, here [`EdgeLimits`].
//!
//! - **Header timeout.** A connection has [`EdgeLimits::header_timeout`] to send a request's
//!   whole head, counted from when it is ready for one: on a new connection from the accept, on a
//!   keep-alive one from the end of the previous response (so it is also the idle timeout). A
//!   client that sends nothing, or a head a byte at a time, is closed when it runs out. The first
//!   bytes are awaited here ([`first_bytes`]: hyper's version sniffing has no deadline of its
//!   own), the rest of an HTTP/1 head by hyper's `header_read_timeout`; an HTTP/2 connection is
//!   pinged at that interval and closed when a ping goes unanswered.
//! - **Connection cap.** At most [`EdgeLimits::max_connections`] connections are served at once;
//!   past it the server stops accepting, so new connections wait in the kernel's backlog (and are
//!   refused by the kernel when that is full) instead of taking memory or file descriptors.

use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The HTTP/2 connection preface, which a client of prior-knowledge h2c sends first.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Bounds on the connections of one HTTP server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EdgeLimits {
    /// How long a connection has to send a request's head (from accept, or from the previous
    /// response on a kept-alive connection).
    pub header_timeout: Duration,
    /// Most connections served at once.
    pub max_connections: usize,
}

/// Default of [`EdgeLimits::header_timeout`].
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Default of [`EdgeLimits::max_connections`].
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;

impl Default for EdgeLimits {
    fn default() -> Self {
        EdgeLimits { header_timeout: DEFAULT_HEADER_TIMEOUT, max_connections: DEFAULT_MAX_CONNECTIONS }
    }
}

impl EdgeLimits {
    /// A connection builder (HTTP/1.1 and h2c) that applies the header timeout.
    pub fn builder(&self) -> auto::Builder<TokioExecutor> {
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder.http1().timer(TokioTimer::new()).header_read_timeout(self.header_timeout);
        builder
            .http2()
            .timer(TokioTimer::new())
            .keep_alive_interval(self.header_timeout)
            .keep_alive_timeout(self.header_timeout);
        builder
    }

    /// The permits of the connection cap, one per connection served.
    pub fn permits(&self) -> Arc<Semaphore> {
        Arc::new(Semaphore::new(self.max_connections.max(1)))
    }
}

/// Waits for a connection slot: the caller accepts only once it has one.
pub async fn slot(permits: &Arc<Semaphore>) -> OwnedSemaphorePermit {
    permits.clone().acquire_owned().await.expect("the connection cap's semaphore is never closed")
}

/// A connection's slot that may be taken on one thread and given back on another: the acceptor
/// [`OwnedSemaphorePermit::forget`]s the permit it waited for, and whoever serves the connection
/// holds this, which returns it when dropped.
pub struct Slot(Arc<Semaphore>);

impl Slot {
    /// The slot of a connection whose permit its acceptor forgot.
    pub fn adopt(permits: &Arc<Semaphore>) -> Slot {
        Slot(permits.clone())
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.add_permits(1);
    }
}

/// Whether `stream` sends enough to tell its protocol within `timeout`: a first byte, and the
/// whole HTTP/2 preface if it starts like one. A client that sends nothing is then closed by the
/// caller instead of being held by the version sniffing.
pub async fn first_bytes(stream: &TcpStream, timeout: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut seen = [0u8; H2_PREFACE.len()];
    loop {
        let peeked = tokio::time::timeout_at(deadline, stream.peek(&mut seen)).await;
        let n = match peeked {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return false,
            Ok(Ok(n)) => n,
        };
        if n == H2_PREFACE.len() || !H2_PREFACE.starts_with(&seen[..n]) {
            return true;
        }
        // A preface still coming: `peek` would answer at once with the same bytes, so look again
        // a little later.
        if tokio::time::Instant::now() + Duration::from_millis(10) >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
