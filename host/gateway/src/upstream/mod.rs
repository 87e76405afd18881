//! The upstream side of one gateway worker: an HTTP/1.1 client made for a reverse proxy. Each
//! worker keeps its own connections to each endpoint, made on demand and kept alive.
//!
//! The client runs inside the task of the request it serves. The request's own task writes the
//! request head and body to the upstream socket and reads the response head. The response body
//! reads the socket when the client's connection asks it for data. hyper's client instead needs
//! a task per connection, fed through channels. On a 2-core box that task was more than a
//! quarter of the gateway's user-space CPU per request (see BENCHMARKS.md). Parsing is `httparse`'s, as in
//! hyper.
//!
//! - **Reuse:** a connection goes back to its worker's idle list when its response body was read
//!   to its end. A small body that came with the head puts it back at once. A connection is not
//!   reused when the upstream said `Connection: close`, spoke HTTP/1.0 without keep-alive, framed
//!   its body by closing, or sent bytes after its response.
//! - **Closed while idle:** a connection whose peer closed it while idle is dropped when taken,
//!   if the event loop already saw the close. The request then goes out on another connection.
//!   The close may also race the request. If a reused connection closes before any byte of
//!   answer, the request is sent again on a new connection, but only when it has no body and an
//!   idempotent method (as browsers and Go's client do). Any other request gets the error.
//! - **Framing out:** the client's `Content-Length` is kept, written once (a request whose
//!   `Content-Length` values disagree is refused). A body of known size gets one.
//!   Any other body is sent chunked. Trailers go out only with chunked bodies.
//! - **Framing in:** RFC 9112 §6.3 decides. No body for `HEAD`, 204 and 304. Otherwise
//!   `Transfer-Encoding: chunked` (trailers are passed on), then `Content-Length`, then the body
//!   runs until the upstream closes. Interim 1xx answers are skipped. A 101 is refused: the
//!   gateway does not proxy upgrades. Where hyper's client refuses a framing (a transfer coding
//!   in HTTP/1.0, a chunk size without digits, a bare LF in a chunk-size line or the trailers),
//!   so does this one, so the two never end a body at different places (`props.rs` checks it).
//! - **Limits:** a response head larger than 64 KiB or with more than 100 headers, or a
//!   malformed one, is an error (the gateway answers 502).
//!
//! What this module must never do: put back a connection whose response was not read to its end
//! (the next request would read its leftovers), send a request with a body twice, or share a
//! connection between threads.
mod body;
mod codec;
#[cfg(test)]
mod props;

use std::collections::HashMap;
use std::future::poll_fn;
use std::io::{self, Write as _};
use std::mem::MaybeUninit;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker, ready};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::Authority;
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, SizeHint};
use parking_lot::Mutex;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use self::body::State;
use self::codec::*;
use crate::{BoxError, GatewayBody};

pub(crate) use self::body::UpstreamBody;
pub(crate) use self::codec::{Forwarded, X_REQUEST_ID};

/// Room made in a connection's buffer before each read.
const READ_SIZE: usize = 16 * 1024;
/// Request body frames up to this size are copied next to their framing and written with it.
const COPY_BELOW: usize = 16 * 1024;

/// Why a request did not get a response head.
#[derive(Debug, thiserror::Error)]
pub(crate) enum UpstreamError {
    /// No connection could be made: nothing was sent, and the request comes back for another
    /// endpoint.
    #[error("connect failed: {message}")]
    Connect { message: String, unsent: Box<Request<GatewayBody>> },
    /// The exchange failed after a connection was made (the request may have been received).
    #[error("{0}")]
    Request(String),
}

/// A connection to an upstream and what was read from it but not yet used.
struct Conn {
    stream: TcpStream,
    buf: BytesMut,
    /// Carried a request before: a close before any answer may be a close of an idle connection.
    reused: bool,
}

impl Conn {
    /// Whether a connection taken from the idle list can carry a request: the event loop saw
    /// nothing arrive (no close, no stray bytes) while it was idle. No system call unless it did.
    fn still_open(&self) -> bool {
        match self.stream.poll_read_ready(&mut Context::from_waker(Waker::noop())) {
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            // Readable: a close, stray bytes, or readiness left from the last read; only the
            // last is fine, and a read that would block tells it apart.
            Poll::Ready(Ok(())) => {
                matches!(self.stream.try_read(&mut [0u8; 1]), Err(err) if err.kind() == io::ErrorKind::WouldBlock)
            }
        }
    }

    /// Read more into the buffer; 0 at the end of the stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.buf.capacity() - self.buf.len() < READ_SIZE / 4 {
            self.buf.reserve(READ_SIZE);
        }
        tokio_util::io::poll_read_buf(Pin::new(&mut self.stream), cx, &mut self.buf)
    }

    /// Write the request head, then its body framed as `framing` says.
    async fn write_request(&mut self, head: &[u8], framing: Framing, body: &mut GatewayBody) -> Result<(), String> {
        let io = |err: io::Error| format!("writing the request: {err}");
        if framing == Framing::Empty {
            return self.stream.write_all(head).await.map_err(io);
        }
        // The head waits in `out` for the first frame when that one is ready at once.
        let mut out = Vec::with_capacity(head.len() + 512);
        out.extend_from_slice(head);
        let mut sent = 0u64;
        let mut trailers = None;
        loop {
            let next = match poll_fn(|cx| Poll::Ready(Pin::new(&mut *body).poll_frame(cx))).await {
                Poll::Ready(next) => next,
                Poll::Pending => {
                    self.stream.write_all(&out).await.map_err(io)?;
                    out.clear();
                    body.frame().await
                }
            };
            let frame = match next {
                None => break,
                Some(Err(err)) => return Err(format!("reading the request body: {err}")),
                Some(Ok(frame)) => frame,
            };
            let frame = match frame.into_data() {
                Ok(data) => {
                    if data.is_empty() {
                        continue;
                    }
                    sent += data.len() as u64;
                    if let Framing::Length(length) = framing
                        && sent > length
                    {
                        return Err(format!("the request body is longer than its length, {length}"));
                    }
                    if framing == Framing::Chunked {
                        let _ = write!(out, "{:x}\r\n", data.len());
                    }
                    if data.len() < COPY_BELOW {
                        out.extend_from_slice(&data);
                    } else {
                        self.stream.write_all(&out).await.map_err(io)?;
                        out.clear();
                        self.stream.write_all(&data).await.map_err(io)?;
                    }
                    if framing == Framing::Chunked {
                        out.extend_from_slice(b"\r\n");
                    }
                    continue;
                }
                Err(frame) => frame,
            };
            // Trailers end the body.
            trailers = frame.into_trailers().ok();
            break;
        }
        match framing {
            Framing::Chunked => {
                // The last chunk, then the trailers (a body of fixed length has no place for them).
                out.extend_from_slice(b"0\r\n");
                for (name, value) in trailers.iter().flatten() {
                    push_field(&mut out, name.as_str().as_bytes(), value.as_bytes());
                }
                out.extend_from_slice(b"\r\n");
            }
            Framing::Length(length) if sent != length => {
                return Err(format!("the request body ended after {sent} of its {length} bytes"));
            }
            _ => {}
        }
        self.stream.write_all(&out).await.map_err(io)
    }

    /// Read the final response head (interim 1xx answers are skipped).
    async fn read_head(&mut self, head_request: bool) -> Result<Head, HeadError> {
        let mut answered = false;
        loop {
            if !self.buf.is_empty() {
                answered = true;
                match parse_head(&mut self.buf, head_request) {
                    Ok(Some(head)) if head.status.is_informational() => {
                        if head.status == StatusCode::SWITCHING_PROTOCOLS {
                            return Err(HeadError::fatal("the upstream switched protocols; upgrades are not proxied"));
                        }
                        continue;
                    }
                    Ok(Some(head)) => return Ok(head),
                    Ok(None) if self.buf.len() >= MAX_HEAD => {
                        return Err(HeadError::fatal(format!("response head larger than {MAX_HEAD} bytes")));
                    }
                    Ok(None) => {}
                    Err(message) => return Err(HeadError::fatal(message)),
                }
            }
            let read = poll_fn(|cx| self.poll_fill(cx)).await;
            match read {
                Ok(0) if self.buf.is_empty() => {
                    return Err(HeadError {
                        message: "the upstream closed the connection without answering".into(),
                        answered,
                    });
                }
                Ok(0) => return Err(HeadError::fatal("the upstream closed the connection within its response head")),
                Ok(_) => {}
                Err(err) => return Err(HeadError { message: format!("reading the response: {err}"), answered }),
            }
        }
    }
}

struct Idle {
    conn: Conn,
    /// Put back since the last sweep (so no clock is read per request).
    fresh: bool,
}

/// The connections of one worker, by endpoint. Share it in an `Arc` among that worker's tasks.
pub(crate) struct Upstreams {
    /// Keyed with a fast hash: two lookups per request (SipHash was 1% of the CPU per request).
    idle: Mutex<HashMap<Authority, Vec<Idle>, foldhash::fast::RandomState>>,
    connect_timeout: Duration,
    /// Idle connections kept per endpoint; more are closed when they come back.
    max_idle: usize,
}

impl Upstreams {
    pub(crate) fn new(connect_timeout: Duration, max_idle: usize) -> Self {
        Upstreams { idle: Mutex::new(HashMap::default()), connect_timeout, max_idle }
    }

    /// Send `request` (origin-form URI) to `authority`, with `forwarded`'s headers, on an idle connection or a
    /// new one; answers the response, whose body holds the connection until its end.
    pub(crate) async fn send(
        self: &Arc<Self>,
        authority: &Authority,
        request: Request<GatewayBody>,
        forwarded: &Forwarded<'_>,
    ) -> Result<Response<UpstreamBody>, UpstreamError> {
        if request.method() == Method::CONNECT {
            return Err(UpstreamError::Request("CONNECT is not proxied".into()));
        }
        let (head, framing) = encode_head(&request, authority, forwarded).map_err(UpstreamError::Request)?;
        let head_request = request.method() == Method::HEAD;
        let replayable = framing == Framing::Empty && request.method().is_idempotent();
        let mut conn = match self.take_idle(authority) {
            Some(conn) => conn,
            None => match self.connect(authority).await {
                Ok(conn) => conn,
                Err(message) => return Err(UpstreamError::Connect { message, unsent: Box::new(request) }),
            },
        };
        let mut body = request.into_body();
        loop {
            let exchanged = match conn.write_request(&head, framing, &mut body).await {
                Ok(()) => conn.read_head(head_request).await,
                Err(message) => Err(HeadError { message, answered: false }),
            };
            match exchanged {
                Ok(head) => return Ok(self.response(authority, conn, head)),
                // Closed while idle, or as the request went out: a request that can be sent
                // again goes out on another connection.
                Err(HeadError { answered: false, .. }) if conn.reused && replayable => {
                    conn = match self.take_idle(authority) {
                        Some(conn) => conn,
                        None => self.connect(authority).await.map_err(UpstreamError::Request)?,
                    };
                }
                Err(err) => return Err(UpstreamError::Request(err.message)),
            }
        }
    }

    /// The response of `head`: a body that came whole with the head frees the connection now.
    fn response(self: &Arc<Self>, authority: &Authority, mut conn: Conn, head: Head) -> Response<UpstreamBody> {
        let Head { status, headers, body, keep_alive } = head;
        let body = match body {
            Decoder::Length(length) if length <= conn.buf.len() as u64 => {
                let data = conn.buf.split_to(length as usize).freeze();
                if keep_alive && conn.buf.is_empty() {
                    self.release(authority, conn);
                }
                UpstreamBody { state: State::Whole((!data.is_empty()).then_some(data)) }
            }
            decoder => UpstreamBody {
                state: State::Streaming { conn, decoder, keep_alive, home: (self.clone(), authority.clone()) },
            },
        };
        let mut response = Response::new(body);
        *response.status_mut() = status;
        *response.headers_mut() = headers;
        response
    }

    /// Put a connection whose response was read to its end on the idle list.
    fn release(&self, authority: &Authority, mut conn: Conn) {
        conn.reused = true;
        let mut idle = self.idle.lock();
        let list = idle.entry(authority.clone()).or_default();
        if list.len() < self.max_idle {
            list.push(Idle { conn, fresh: true });
        }
    }

    /// The most recently used idle connection to `authority` that is still open.
    fn take_idle(&self, authority: &Authority) -> Option<Conn> {
        let mut idle = self.idle.lock();
        let list = idle.get_mut(authority)?;
        while let Some(Idle { conn, .. }) = list.pop() {
            if conn.still_open() {
                return Some(conn);
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
            list.retain_mut(|i| std::mem::replace(&mut i.fresh, false) && i.conn.still_open());
            !list.is_empty()
        });
    }

    /// Idle connections right now, over all endpoints.
    #[cfg(test)]
    pub(crate) fn idle_count(&self) -> usize {
        self.idle.lock().values().map(Vec::len).sum()
    }

    async fn connect(&self, authority: &Authority) -> Result<Conn, String> {
        let port = authority.port_u16().unwrap_or(80);
        let host = authority.host();
        let connecting = async {
            // An address connects at once; a name is resolved first (on the blocking pool).
            match host.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>() {
                Ok(ip) => TcpStream::connect((ip, port)).await,
                Err(_) => TcpStream::connect((host, port)).await,
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
        Ok(Conn { stream, buf: BytesMut::new(), reused: false })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};

    use http_body_util::{Empty, Full};
    use tokio::io::AsyncReadExt;

    use super::*;

    fn forwarded() -> Forwarded<'static> {
        static REQUEST_ID: HeaderValue = HeaderValue::from_static("rid-1");
        Forwarded { client_ip: "10.0.0.9", host: "app.example", proto: "http", request_id: &REQUEST_ID }
    }

    fn request(method: Method, body: GatewayBody) -> Request<GatewayBody> {
        let mut request = Request::new(body);
        *request.method_mut() = method;
        *request.uri_mut() = "/a?b=c".parse().expect("a path");
        request.headers_mut().insert(header::HOST, HeaderValue::from_static("app"));
        request
    }

    fn get() -> Request<GatewayBody> {
        request(Method::GET, Empty::new().map_err(|never| match never {}).boxed_unsync())
    }

    /// A body of these frames, of unknown length.
    struct Frames(VecDeque<Frame<Bytes>>);

    impl Body for Frames {
        type Data = Bytes;
        type Error = BoxError;
        fn poll_frame(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            Poll::Ready(self.0.pop_front().map(Ok))
        }
    }

    fn authority_of(listener: &tokio::net::TcpListener) -> Authority {
        listener.local_addr().expect("addr").to_string().parse().expect("authority")
    }

    /// The end of the request at the start of `seen`, if all of it is there (a test server's
    /// framing: `Content-Length` or chunked without trailers).
    fn request_end(seen: &[u8]) -> Option<usize> {
        let head = seen.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
        let text = String::from_utf8_lossy(&seen[..head]).to_ascii_lowercase();
        if let Some(line) = text.lines().find(|l| l.starts_with("content-length:")) {
            let length: usize = line["content-length:".len()..].trim().parse().ok()?;
            return (seen.len() >= head + length).then_some(head + length);
        }
        if text.contains("transfer-encoding: chunked") {
            // The last chunk, then the trailer section up to an empty line.
            let body = &seen[head..];
            let last = match body.starts_with(b"0\r\n") {
                true => 0,
                false => body.windows(5).position(|w| w == b"\r\n0\r\n")? + 2,
            };
            let rest = &body[last + 3..];
            let end = match rest.starts_with(b"\r\n") {
                true => 2,
                false => rest.windows(4).position(|w| w == b"\r\n\r\n")? + 4,
            };
            return Some(head + last + 3 + end);
        }
        Some(head)
    }

    /// A server whose answer to the `n`th request on its `c`th connection is `answer(c, n)`
    /// (`None`: close the connection without answering; an answer whose head says `HTTP/1.0`
    /// is followed by a close). Records each request's bytes.
    async fn scripted(
        answer: impl Fn(usize, usize) -> Option<Vec<u8>> + Send + Sync + 'static,
    ) -> (Authority, Arc<AtomicUsize>, Arc<std::sync::Mutex<Vec<Vec<u8>>>>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let authority = authority_of(&listener);
        let accepted = Arc::new(AtomicUsize::new(0));
        let seen_requests = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (counter, requests, answer) = (accepted.clone(), seen_requests.clone(), Arc::new(answer));
        tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else { return };
                let c = counter.fetch_add(1, SeqCst);
                let (requests, answer) = (requests.clone(), answer.clone());
                tokio::spawn(async move {
                    let (mut seen, mut buf, mut n) = (Vec::new(), vec![0u8; 4096], 0);
                    loop {
                        while let Some(end) = request_end(&seen) {
                            requests.lock().expect("lock").push(seen.drain(..end).collect());
                            let Some(reply) = answer(c, n) else { return };
                            n += 1;
                            if stream.write_all(&reply).await.is_err() || reply.starts_with(b"HTTP/1.0") {
                                return;
                            }
                        }
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(read) => seen.extend_from_slice(&buf[..read]),
                        }
                    }
                });
            }
        });
        (authority, accepted, seen_requests)
    }

    fn hello() -> Option<Vec<u8>> {
        Some(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello".to_vec())
    }

    /// Send, read the body to its end; the body's data and trailers.
    async fn round_trip(
        upstreams: &Arc<Upstreams>,
        authority: &Authority,
        request: Request<GatewayBody>,
    ) -> Result<(Response<()>, Bytes, Option<HeaderMap>), String> {
        let response = upstreams.send(authority, request, &forwarded()).await.map_err(|err| err.to_string())?;
        let (head, body) = response.into_parts();
        let collected = body.collect().await.map_err(|err| err.to_string())?;
        let trailers = collected.trailers().cloned();
        Ok((Response::from_parts(head, ()), collected.to_bytes(), trailers))
    }

    fn upstreams() -> Arc<Upstreams> {
        Arc::new(Upstreams::new(Duration::from_secs(1), 8))
    }

    #[tokio::test]
    async fn a_connection_read_to_its_end_carries_the_next_request_and_one_dropped_early_is_closed() {
        let (authority, accepted, _) = scripted(|_, _| hello()).await;
        let upstreams = upstreams();
        for _ in 0..3 {
            assert_eq!(&round_trip(&upstreams, &authority, get()).await.expect("answered").1[..], b"hello");
        }
        assert_eq!(accepted.load(SeqCst), 1, "one connection for three requests");
        assert_eq!(upstreams.idle_count(), 1);

        // A body that streams (here: chunked), dropped before its end: the connection is closed.
        let (authority, accepted, _) = scripted(|_, _| {
            Some(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n".to_vec())
        })
        .await;
        let response = upstreams.send(&authority, get(), &forwarded()).await.expect("sent");
        drop(response);
        assert_eq!(upstreams.idle_count(), 1, "only the first server's connection is idle");
        round_trip(&upstreams, &authority, get()).await.expect("answered");
        assert_eq!(accepted.load(SeqCst), 2, "a new connection after the dropped body");
        assert_eq!(upstreams.idle_count(), 2);
    }

    #[tokio::test]
    async fn a_connection_the_upstream_closed_is_replaced_without_failing_the_request() {
        // The upstream closes each connection after one answer, without saying so.
        let (authority, accepted, _) = scripted(|_, n| if n == 0 { hello() } else { None }).await;
        let upstreams = upstreams();
        for n in 1..=5 {
            let (_, body, _) = round_trip(&upstreams, &authority, get()).await.expect("answered");
            assert_eq!(&body[..], b"hello");
            assert!(accepted.load(SeqCst) >= n, "a new connection for request {n}");
        }
    }

    #[tokio::test]
    async fn a_request_with_a_body_or_an_unsafe_method_is_never_sent_twice() {
        // The first request on each connection is answered; the second gets a close.
        let (authority, accepted, requests) = scripted(|_, n| if n == 0 { hello() } else { None }).await;
        let upstreams = upstreams();
        let post =
            || request(Method::POST, Full::new(Bytes::from_static(b"data")).map_err(|n| match n {}).boxed_unsync());
        round_trip(&upstreams, &authority, post()).await.expect("answered");
        let err = round_trip(&upstreams, &authority, post()).await.expect_err("the close is the answer");
        assert!(err.contains("closed the connection without answering"), "{err}");
        let empty_post = request(Method::POST, Empty::new().map_err(|n| match n {}).boxed_unsync());
        round_trip(&upstreams, &authority, empty_post).await.expect("a new connection");
        let empty_post = request(Method::POST, Empty::new().map_err(|n| match n {}).boxed_unsync());
        round_trip(&upstreams, &authority, empty_post).await.expect_err("a POST is not idempotent");
        assert_eq!(accepted.load(SeqCst), 2);
        assert_eq!(requests.lock().expect("lock").len(), 4, "each request went out once");
    }

    #[tokio::test]
    async fn connections_unused_for_a_whole_sweep_period_are_closed() {
        let (authority, accepted, _) = scripted(|_, _| hello()).await;
        let upstreams = upstreams();
        round_trip(&upstreams, &authority, get()).await.expect("answered");
        upstreams.sweep();
        assert_eq!(upstreams.idle_count(), 1, "used since the last sweep: kept");
        upstreams.sweep();
        assert_eq!(upstreams.idle_count(), 0, "unused for a whole period: closed");
        round_trip(&upstreams, &authority, get()).await.expect("answered");
        assert_eq!(accepted.load(SeqCst), 2, "a new connection after the sweep");
    }

    #[tokio::test]
    async fn nothing_listening_is_a_connect_error_that_hands_the_request_back() {
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            listener.local_addr().expect("addr").port()
        };
        let authority: Authority = format!("127.0.0.1:{port}").parse().expect("authority");
        match upstreams().send(&authority, get(), &forwarded()).await {
            Err(UpstreamError::Connect { message, unsent }) => {
                assert!(message.contains(&authority.to_string()), "{message}");
                assert_eq!(unsent.uri(), "/a?b=c", "the request comes back unsent");
            }
            Err(other) => panic!("expected a connect error, got {other}"),
            Ok(_) => panic!("expected a connect error, got a response"),
        }
    }

    #[tokio::test]
    async fn response_bodies_are_framed_by_length_chunks_or_close_and_interim_answers_are_skipped() {
        let answers: Vec<&'static [u8]> = vec![
            // Chunked, with an extension, a trailer, and hop-by-hop headers to drop.
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\nX-Kept: 2\r\n\r\n\
              3;ext=1\r\nabc\r\n4\r\ndefg\r\n0\r\nX-Sum: 7\r\n\r\n",
            // An interim answer, then the final one.
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok",
            // No body for 204 and 304.
            b"HTTP/1.1 204 No Content\r\n\r\n",
            b"HTTP/1.1 304 Not Modified\r\nContent-Length: 99\r\n\r\n",
            // Until the close (and the connection is not reused).
            b"HTTP/1.0 200 OK\r\n\r\nuntil the end",
        ];
        let (authority, accepted, _) = scripted(move |c, n| answers.get(c + n).map(|a| a.to_vec())).await;
        let upstreams = upstreams();
        let (head, body, trailers) = round_trip(&upstreams, &authority, get()).await.expect("chunked");
        assert_eq!(&body[..], b"abcdefg");
        assert_eq!(trailers.expect("trailers")["x-sum"], "7");
        let names: Vec<&str> = head.headers().keys().map(HeaderName::as_str).collect();
        assert_eq!(names, ["x-kept"], "hop-by-hop headers and those Connection names are dropped");
        let (head, body, _) = round_trip(&upstreams, &authority, get()).await.expect("interim");
        assert_eq!((head.status(), &body[..]), (StatusCode::CREATED, &b"ok"[..]));
        let (head, body, _) = round_trip(&upstreams, &authority, get()).await.expect("204");
        assert_eq!((head.status(), body.len()), (StatusCode::NO_CONTENT, 0));
        let (head, body, _) = round_trip(&upstreams, &authority, get()).await.expect("304");
        assert_eq!((head.status(), body.len()), (StatusCode::NOT_MODIFIED, 0));
        assert_eq!(accepted.load(SeqCst), 1, "all on one connection so far");
        let (head, body, _) = round_trip(&upstreams, &authority, get()).await.expect("close-delimited");
        assert_eq!(&body[..], b"until the end");
        assert_eq!(head.version(), http::Version::HTTP_11, "answered in the gateway's own version");
        assert_eq!(upstreams.idle_count(), 0, "a body that ends with the connection leaves nothing to reuse");
    }

    #[tokio::test]
    async fn a_head_request_reads_no_body_and_a_close_header_ends_the_connection() {
        let (authority, accepted, _) = scripted(|c, n| match (c, n) {
            (0, 0) => Some(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n".to_vec()),
            _ => Some(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello".to_vec()),
        })
        .await;
        let upstreams = upstreams();
        let head = request(Method::HEAD, Empty::new().map_err(|n| match n {}).boxed_unsync());
        let (response, body, _) = round_trip(&upstreams, &authority, head).await.expect("HEAD");
        assert_eq!((response.headers()["content-length"].as_bytes(), body.len()), (&b"5"[..], 0));
        assert_eq!(upstreams.idle_count(), 1, "reused after a HEAD");
        round_trip(&upstreams, &authority, get()).await.expect("GET");
        assert_eq!(upstreams.idle_count(), 0, "`Connection: close` is not reused");
        round_trip(&upstreams, &authority, get()).await.expect("GET");
        assert_eq!(accepted.load(SeqCst), 2);
    }

    #[tokio::test]
    async fn malformed_or_unsupported_answers_are_errors() {
        let cases: Vec<(&'static [u8], &'static str)> = vec![
            (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello", "content-length"),
            (b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", "content-length"),
            (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n", "upgrades are not proxied"),
            (b"NOT HTTP\r\n\r\n", "malformed response head"),
            (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "invalid chunk size"),
        ];
        for (answer, expected) in cases {
            let (authority, _, _) = scripted(move |_, _| Some(answer.to_vec())).await;
            let err = round_trip(&upstreams(), &authority, get()).await.expect_err("an error");
            assert!(err.contains(expected), "{err} (expected {expected})");
        }
        // A head that never ends is cut off.
        let huge = format!("HTTP/1.1 200 OK\r\nX-Big: {}\r\n", "a".repeat(MAX_HEAD));
        let (authority, _, _) = scripted(move |_, _| Some(huge.clone().into_bytes())).await;
        let err = round_trip(&upstreams(), &authority, get()).await.expect_err("too large");
        assert!(err.contains("larger than"), "{err}");
    }

    #[tokio::test]
    async fn request_bodies_go_out_with_their_length_or_chunked_with_trailers() {
        let (authority, _, requests) = scripted(|_, _| hello()).await;
        let upstreams = upstreams();
        let known =
            request(Method::PUT, Full::new(Bytes::from_static(b"12345")).map_err(|n| match n {}).boxed_unsync());
        round_trip(&upstreams, &authority, known).await.expect("known length");
        let mut trailers = HeaderMap::new();
        trailers.insert("x-digest", HeaderValue::from_static("d1"));
        let frames = Frames(VecDeque::from([
            Frame::data(Bytes::from_static(b"abc")),
            Frame::data(Bytes::new()),
            Frame::data(Bytes::from(vec![b'z'; 20_000])),
            Frame::trailers(trailers),
        ]));
        round_trip(&upstreams, &authority, request(Method::POST, frames.boxed_unsync())).await.expect("chunked");
        let requests = requests.lock().expect("lock");
        let first = String::from_utf8_lossy(&requests[0]);
        assert!(first.starts_with("PUT /a?b=c HTTP/1.1\r\n"), "{first}");
        assert!(first.contains("\r\ncontent-length: 5\r\n") && first.ends_with("\r\n\r\n12345"), "{first}");
        let second = &requests[1];
        let head_end = second.windows(4).position(|w| w == b"\r\n\r\n").expect("a head") + 4;
        assert!(String::from_utf8_lossy(&second[..head_end]).contains("\r\ntransfer-encoding: chunked\r\n"));
        let mut expected = b"3\r\nabc\r\n4e20\r\n".to_vec();
        expected.extend_from_slice(&[b'z'; 20_000]);
        expected.extend_from_slice(b"\r\n0\r\nx-digest: d1\r\n\r\n");
        assert_eq!(&second[head_end..], &expected[..]);
    }

    #[test]
    fn the_forwarded_head_drops_hop_by_hop_headers_and_says_who_asked() {
        let mut request = get();
        for (name, value) in [
            ("connection", "close, X-Secret"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("te", "trailers"),
            ("upgrade", "websocket"),
            ("x-forwarded-for", "192.0.2.1"),
            ("x-forwarded-host", "spoofed"),
            ("x-request-id", "spoofed"),
            ("content-type", "text/plain"),
        ] {
            request.headers_mut().append(HeaderName::from_static(name), HeaderValue::from_static(value));
        }
        let authority: Authority = "10.1.1.1:8080".parse().expect("authority");
        let (head, framing) = encode_head(&request, &authority, &forwarded()).expect("encoded");
        assert_eq!(framing, Framing::Empty);
        let head = String::from_utf8(head).expect("text");
        let mut lines: Vec<&str> = head.split("\r\n").collect();
        assert_eq!(lines.remove(0), "GET /a?b=c HTTP/1.1");
        lines.sort_unstable();
        assert_eq!(
            lines,
            [
                "",
                "",
                "content-type: text/plain",
                "host: app",
                "x-forwarded-for: 192.0.2.1, 10.0.0.9",
                "x-forwarded-host: app.example",
                "x-forwarded-proto: http",
                "x-request-id: rid-1",
            ]
        );

        // Without a `Host` (an HTTP/2 client), the upstream's address is the host.
        request.headers_mut().remove(header::HOST);
        let (head, _) = encode_head(&request, &authority, &forwarded()).expect("encoded");
        assert!(String::from_utf8_lossy(&head).contains("\r\nhost: 10.1.1.1:8080\r\n"));
    }
}
