//! The upstream connections of one gateway worker: HTTP/1.1 connections to each endpoint, made
//! on demand, kept alive, and reused only by the worker thread that made them.
//!
//! Why not hyper-util's pooling client: for every request it hashes a pool key, builds a lazy
//! connect future and races it against the checkout, and spawns a task that waits for the
//! connection to be idle again before putting it back. Here a connection goes back to its
//! worker's idle list the moment the response body it carried ends (the gateway's response body
//! hands its [`Lease`] back), with no task and no lookup but the endpoint's authority.
//!
//! A request is never sent twice: a connection that closed while idle hands the request back
//! unsent (hyper's `try_send_request`), and only then is it tried on another connection.
//!
//! What this module must never do: put back a connection whose response was not read to its end
//! (the next request would wait behind it or read its leftovers), or share a connection between
//! threads.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use http::uri::Authority;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;

use crate::GatewayBody;

/// Why a request did not get a response head.
#[derive(Debug, thiserror::Error)]
pub(crate) enum UpstreamError {
    /// No connection could be made: nothing was sent, and the request comes back for another
    /// endpoint.
    #[error("connect failed: {message}")]
    Connect { message: String, unsent: Box<Request<GatewayBody>> },
    /// The connection failed after the request went out (or while it was going out).
    #[error("{0}")]
    Request(hyper::Error),
}

struct Idle {
    sender: SendRequest<GatewayBody>,
    /// Put back since the last sweep (so no clock is read per request).
    fresh: bool,
}

/// The connections of one worker, by endpoint. Share it in an `Arc` among that worker's tasks.
pub(crate) struct Upstreams {
    idle: Mutex<HashMap<Authority, Vec<Idle>>>,
    connect_timeout: Duration,
    /// Idle connections kept per endpoint; more are closed when they come back.
    max_idle: usize,
}

/// A connection lent to one request: give it back with [`Lease::release`] once the response was
/// read to its end; dropping it closes the connection instead.
pub(crate) struct Lease {
    upstreams: Arc<Upstreams>,
    authority: Authority,
    sender: SendRequest<GatewayBody>,
}

impl Lease {
    /// The response was read to its end: the connection can carry the next request.
    pub(crate) fn release(self) {
        if self.sender.is_closed() {
            return;
        }
        let mut idle = self.upstreams.idle.lock();
        let list = idle.entry(self.authority).or_default();
        if list.len() < self.upstreams.max_idle {
            list.push(Idle { sender: self.sender, fresh: true });
        }
    }
}

impl Upstreams {
    pub(crate) fn new(connect_timeout: Duration, max_idle: usize) -> Self {
        Upstreams { idle: Mutex::new(HashMap::new()), connect_timeout, max_idle }
    }

    /// Send `request` (origin-form URI, `Host` set) to `authority` on an idle connection or a
    /// new one; answers the response head and the lease of its connection.
    pub(crate) async fn send(
        self: &Arc<Self>,
        authority: &Authority,
        mut request: Request<GatewayBody>,
    ) -> Result<(Response<Incoming>, Lease), UpstreamError> {
        while let Some(mut sender) = self.take_idle(authority) {
            match sender.try_send_request(request).await {
                Ok(response) => return Ok((response, self.lease(authority, sender))),
                Err(mut err) => match err.take_message() {
                    // Not sent (the connection closed while idle, or is still busy): another.
                    Some(unsent) => request = unsent,
                    None => return Err(UpstreamError::Request(err.into_error())),
                },
            }
        }
        let mut sender = match self.connect(authority).await {
            Ok(sender) => sender,
            Err(message) => return Err(UpstreamError::Connect { message, unsent: Box::new(request) }),
        };
        match sender.try_send_request(request).await {
            Ok(response) => Ok((response, self.lease(authority, sender))),
            Err(err) => Err(UpstreamError::Request(err.into_error())),
        }
    }

    fn lease(self: &Arc<Self>, authority: &Authority, sender: SendRequest<GatewayBody>) -> Lease {
        Lease { upstreams: self.clone(), authority: authority.clone(), sender }
    }

    /// The most recently used idle connection to `authority` that is still open.
    fn take_idle(&self, authority: &Authority) -> Option<SendRequest<GatewayBody>> {
        let mut idle = self.idle.lock();
        let list = idle.get_mut(authority)?;
        while let Some(Idle { sender, .. }) = list.pop() {
            if !sender.is_closed() {
                return Some(sender);
            }
        }
        None
    }

    /// Close the connections that closed on their own or were not used since the last sweep;
    /// forget endpoints with none left. The worker calls this every `T`, so a connection idle
    /// for between `T` and `2T` is closed (upstreams close idle connections too, nginx after
    /// 75 s: closing ours first avoids racing their close).
    pub(crate) fn sweep(&self) {
        let mut idle = self.idle.lock();
        idle.retain(|_, list| {
            list.retain_mut(|i| !i.sender.is_closed() && std::mem::replace(&mut i.fresh, false));
            !list.is_empty()
        });
    }

    /// Idle connections right now, over all endpoints.
    #[cfg(test)]
    pub(crate) fn idle_count(&self) -> usize {
        self.idle.lock().values().map(Vec::len).sum()
    }

    async fn connect(&self, authority: &Authority) -> Result<SendRequest<GatewayBody>, String> {
        let port = authority.port_u16().unwrap_or(80);
        let host = authority.host();
        let connecting = async {
            // An address connects at once; a name is resolved first (on the blocking pool).
            match host.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>() {
                Ok(ip) => tokio::net::TcpStream::connect((ip, port)).await,
                Err(_) => tokio::net::TcpStream::connect((host, port)).await,
            }
        };
        let stream = match tokio::time::timeout(self.connect_timeout, connecting).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(err)) => return Err(format!("{authority}: {err}")),
            Err(_) => {
                return Err(format!("{authority}: no connection within {} ms", self.connect_timeout.as_millis()));
            }
        };
        // Heads and small bodies go out at once instead of waiting for the peer's delayed ACK.
        let _ = stream.set_nodelay(true);
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|err| format!("{authority}: {err}"))?;
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!(%err, "upstream connection ended");
            }
        });
        Ok(sender)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Empty};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn get(path: &str, host: &str) -> Request<GatewayBody> {
        let mut request = Request::new(Empty::new().map_err(|never| match never {}).boxed_unsync());
        *request.uri_mut() = path.parse().expect("a path");
        request.headers_mut().insert(http::header::HOST, host.parse().expect("a host"));
        request
    }

    /// One request whose response is read to its end, its connection released; answers the body.
    async fn round_trip(upstreams: &Arc<Upstreams>, authority: &Authority) -> bytes::Bytes {
        let (response, lease) = upstreams.send(authority, get("/", "app")).await.expect("sent");
        let body = response.into_body().collect().await.expect("body").to_bytes();
        lease.release();
        body
    }

    /// A server that answers every request on a connection with `hello` (and with `close`, closes
    /// the connection after the first answer, without saying so), counting connections.
    async fn server(close: bool) -> (Authority, Arc<std::sync::atomic::AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let authority: Authority = listener.local_addr().expect("addr").to_string().parse().expect("authority");
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = accepted.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else { return };
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let mut seen = Vec::new();
                    loop {
                        let Ok(n) = stream.read(&mut buf).await else { return };
                        if n == 0 {
                            return;
                        }
                        seen.extend_from_slice(&buf[..n]);
                        while let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                            seen.drain(..end + 4);
                            let reply = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello";
                            if stream.write_all(reply).await.is_err() || close {
                                return;
                            }
                        }
                    }
                });
            }
        });
        (authority, accepted)
    }

    #[tokio::test]
    async fn a_released_connection_carries_the_next_request_and_an_unreleased_one_does_not() {
        let (authority, accepted) = server(false).await;
        let upstreams = Arc::new(Upstreams::new(Duration::from_secs(1), 8));
        for _ in 0..3 {
            assert_eq!(&round_trip(&upstreams, &authority).await[..], b"hello");
        }
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1, "one connection for three requests");
        assert_eq!(upstreams.idle_count(), 1);

        // A lease dropped (the response was not read to its end) is not reused.
        let (_response, lease) = upstreams.send(&authority, get("/", "app")).await.expect("sent");
        drop(lease);
        assert_eq!(upstreams.idle_count(), 0);
        round_trip(&upstreams, &authority).await;
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 2, "a new connection");
    }

    #[tokio::test]
    async fn a_connection_the_upstream_closed_while_idle_is_replaced_without_failing_the_request() {
        let (authority, accepted) = server(true).await;
        let upstreams = Arc::new(Upstreams::new(Duration::from_secs(1), 8));
        for n in 1..=5 {
            assert_eq!(&round_trip(&upstreams, &authority).await[..], b"hello");
            assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), n, "a new connection for request {n}");
        }
    }

    #[tokio::test]
    async fn connections_unused_for_a_whole_sweep_period_are_closed() {
        let (authority, accepted) = server(false).await;
        let upstreams = Arc::new(Upstreams::new(Duration::from_secs(1), 8));
        round_trip(&upstreams, &authority).await;
        upstreams.sweep();
        assert_eq!(upstreams.idle_count(), 1, "used since the last sweep: kept");
        upstreams.sweep();
        assert_eq!(upstreams.idle_count(), 0, "unused for a whole period: closed");
        round_trip(&upstreams, &authority).await;
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 2, "a new connection after the sweep");
    }

    #[tokio::test]
    async fn nothing_listening_is_a_connect_error() {
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            listener.local_addr().expect("addr").port()
        };
        let upstreams = Arc::new(Upstreams::new(Duration::from_secs(1), 8));
        let authority: Authority = format!("127.0.0.1:{port}").parse().expect("authority");
        match upstreams.send(&authority, get("/", "app")).await {
            Err(UpstreamError::Connect { message, unsent }) => {
                assert!(message.contains(&authority.to_string()), "{message}");
                assert_eq!(unsent.uri(), "/", "the request comes back unsent");
            }
            Err(other) => panic!("expected a connect error, got {other}"),
            Ok(_) => panic!("expected a connect error, got a response"),
        }
    }
}
