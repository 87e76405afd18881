//! Issue 24, hardened edges, on a real `shoal dev`: what a client can make the API hold. A body is
//! read only after its token is checked and only up to its route's limit: a request announcing
//! 32 MiB is answered 401 (no token) or 403 (a token without the scope) before a byte of it is
//! sent, a value announced over 1 MiB is answered 413 at once, a chunked one as soon as it passes
//! 1 MiB (and nothing is written), and eight clients streaming 32 MiB each without a token leave
//! the process's peak memory where it was.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use super::Dev;
use super::tasks::http;

/// The status of the answer to `head` (a request without its body), sent alone on a new
/// connection to `api`: the server must answer without waiting for the body.
fn answer_to_head(api: &str, head: &str) -> u16 {
    let mut stream = TcpStream::connect(api.trim_start_matches("http://")).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    stream.write_all(head.as_bytes()).expect("send the head");
    let mut answer = [0u8; 512];
    let n = stream.read(&mut answer).expect("an answer before the body (none within 10 s)");
    status_of(&answer[..n])
}

fn status_of(answer: &[u8]) -> u16 {
    let text = String::from_utf8_lossy(answer);
    text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("not an HTTP answer: {text}"))
}

/// `VmHWM`, the peak resident memory of process `pid`, in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmHWM")
}

/// Streams `size` bytes to `path` without a token, as fast as the server takes them; the status
/// it answered.
fn stream_without_token(api: &str, path: &str, size: usize) -> u16 {
    let mut stream = TcpStream::connect(api.trim_start_matches("http://")).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    stream.set_write_timeout(Some(Duration::from_secs(10))).expect("timeout");
    let head = format!("POST {path} HTTP/1.1\r\nHost: shoal\r\nContent-Length: {size}\r\n\r\n");
    stream.write_all(head.as_bytes()).expect("head");
    let chunk = vec![b'x'; 64 << 10];
    let mut sent = 0;
    // The server answers and closes without reading: writing then fails (reset) or blocks.
    while sent < size && stream.write_all(&chunk).is_ok() {
        sent += chunk.len();
    }
    let mut answer = [0u8; 512];
    let n = stream.read(&mut answer).unwrap_or(0);
    if n == 0 { 0 } else { status_of(&answer[..n]) }
}

#[test]
fn bodies_are_read_after_the_token_and_only_up_to_the_routes_limit() {
    let dev = Dev::start(None);
    let huge = 32 << 20;

    // No token: 401 before any body.
    let head = format!("POST /v1/tokens HTTP/1.1\r\nHost: shoal\r\nContent-Length: {huge}\r\n\r\n");
    assert_eq!(answer_to_head(&dev.api, &head), 401);

    // A token without the scope: 403 before any body.
    let (status, body) = http(&dev.api, &dev.token, "POST", "/v1/tokens", r#"{"scope": "app:orders", "ttl": "1h"}"#);
    assert_eq!(status, 201, "{body}");
    let app: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    let app = app["token"].as_str().expect("a token");
    let head = format!(
        "POST /v1/tokens HTTP/1.1\r\nHost: shoal\r\nAuthorization: Bearer {app}\r\nContent-Length: {huge}\r\n\r\n"
    );
    assert_eq!(answer_to_head(&dev.api, &head), 403);
    let head = format!(
        "PUT /v1/kv/other/k HTTP/1.1\r\nHost: shoal\r\nAuthorization: Bearer {app}\r\nContent-Length: {huge}\r\n\r\n"
    );
    assert_eq!(answer_to_head(&dev.api, &head), 403, "an app token writing another namespace");

    // The right token, a value announced over the store's 1 MiB: 413 before any body.
    let head = format!(
        "PUT /v1/kv/orders/big HTTP/1.1\r\nHost: shoal\r\nAuthorization: Bearer {app}\r\nContent-Length: {}\r\n\r\n",
        (1 << 20) + 1
    );
    assert_eq!(answer_to_head(&dev.api, &head), 413);

    // Chunked (no length up front): 413 once it passes 1 MiB, and nothing is written.
    let mut stream = TcpStream::connect(dev.api.trim_start_matches("http://")).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    let head = format!(
        "PUT /v1/kv/orders/big HTTP/1.1\r\nHost: shoal\r\nAuthorization: Bearer {app}\r\nTransfer-Encoding: chunked\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).expect("head");
    let chunk = vec![b'x'; 64 << 10];
    for _ in 0..24 {
        let framed = [format!("{:x}\r\n", chunk.len()).as_bytes(), &chunk, b"\r\n"].concat();
        if stream.write_all(&framed).is_err() {
            break;
        }
    }
    let mut answer = [0u8; 512];
    let n = stream.read(&mut answer).expect("an answer");
    assert_eq!(status_of(&answer[..n]), 413);
    let (status, body) = http(&dev.api, app, "GET", "/v1/kv/orders/big", "");
    assert_eq!(status, 404, "a refused value was written: {body}");
    // A value within the limit still goes in.
    let (status, body) = http(&dev.api, app, "PUT", "/v1/kv/orders/small", "v");
    assert_eq!(status, 200, "{body}");

    // Eight clients streaming 32 MiB each without a token: all refused, and the API's peak
    // memory stays where it was (it held 8 × 32 MiB before bodies were read after the token).
    let pid = dev.child.id();
    let before = peak_rss_kib(pid);
    let statuses: Vec<u16> = std::thread::scope(|s| {
        let clients: Vec<_> = (0..8).map(|_| s.spawn(|| stream_without_token(&dev.api, "/v1/tokens", huge))).collect();
        clients.into_iter().map(|c| c.join().expect("client")).collect()
    });
    assert!(statuses.iter().all(|&s| s == 401), "{statuses:?}");
    let grown = peak_rss_kib(pid).saturating_sub(before);
    assert!(grown < 16 << 10, "the API's peak memory grew by {grown} KiB while refusing 8 × 32 MiB bodies");
}

/// Connections to `base` that send a request head a byte every `every` and never finish it;
/// how long after its own connect each was closed by the server (`None`: still open when
/// `patience` ran out). Each connection's time counts from its own connect: on a busy machine
/// the connects themselves can take seconds (a full backlog drops SYNs, retried after 1 s).
/// `connected` hears once every connection is made.
fn slow_heads(
    base: &str,
    n: usize,
    every: Duration,
    patience: Duration,
    connected: Option<std::sync::mpsc::Sender<()>>,
) -> Vec<Option<Duration>> {
    let address = base.trim_start_matches("http://");
    let mut connections: Vec<(TcpStream, std::time::Instant)> = (0..n)
        .map(|_| {
            let stream = TcpStream::connect(address).expect("connect");
            stream.set_nonblocking(true).expect("nonblocking");
            (stream, std::time::Instant::now())
        })
        .collect();
    if let Some(connected) = connected {
        let _ = connected.send(());
    }
    let start = std::time::Instant::now();
    let head = b"GET /healthz HTTP/1.1\r\nHost: shoal\r\nX-Slow: ";
    let mut closed = vec![None; n];
    let mut sent = 0;
    let mut next_byte = start;
    while start.elapsed() < patience && closed.iter().any(Option::is_none) {
        let send = std::time::Instant::now() >= next_byte;
        if send {
            next_byte += every;
        }
        for (i, (stream, connected)) in connections.iter_mut().enumerate() {
            if closed[i].is_some() {
                continue;
            }
            let mut byte = [0u8; 1];
            let gone = match stream.read(&mut byte) {
                Ok(_) => true,
                Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
            };
            let gone = gone || (send && stream.write(&[head.get(sent).copied().unwrap_or(b'x')]).is_err());
            if gone {
                closed[i] = Some(connected.elapsed());
            }
        }
        if send {
            sent += 1;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    closed
}

/// The median time of `GET path` on `base` over 20 requests, each on a new connection, all of
/// which must be answered `status`.
fn median_answer(base: &str, path: &str, status: u16) -> Duration {
    let mut times: Vec<Duration> = (0..20)
        .map(|_| {
            let sent = std::time::Instant::now();
            let (got, body) = http(base, "", "GET", path, "");
            assert_eq!(got, status, "{base}{path}: {body}");
            sent.elapsed()
        })
        .collect();
    times.sort();
    times[times.len() / 2]
}

/// 500 clients that send a request head a byte every 300 ms, on the API and on the gateway
/// (`--http-header-timeout-ms 1500`): a normal client is answered meanwhile, and every slow one
/// is closed once its 1.5 s are up, not before. With `--http-max-connections 20` (and a 2 s
/// timeout), 40 clients that send nothing are served 20 at a time: the first 20 closed after 2 s,
/// the others only once they were accepted in their place, 2 s later.
#[test]
fn slow_clients_are_closed_after_the_header_timeout_and_connections_are_capped() {
    let dev = Dev::start_args(None, &["--http-header-timeout-ms", "1500"], &[]);
    for (what, base, path, status) in [("API", &dev.api, "/healthz", 200), ("gateway", &dev.gateway, "/none", 404)] {
        let (closed, median) = std::thread::scope(|s| {
            let (connected, all_connected) = std::sync::mpsc::channel();
            let every = Duration::from_millis(300);
            let slow = s.spawn(move || slow_heads(base, 500, every, Duration::from_secs(15), Some(connected)));
            all_connected.recv().expect("the slow clients connect");
            let median = median_answer(base, path, status);
            (slow.join().expect("slow clients"), median)
        });
        assert!(median < Duration::from_millis(100), "{what}: a normal request took {median:?} (median)");
        let open = closed.iter().filter(|c| c.is_none()).count();
        assert_eq!(open, 0, "{what}: {open} of 500 slow clients still open after 15 s");
        let earliest = closed.iter().flatten().min().expect("closed");
        assert!(*earliest >= Duration::from_millis(1300), "{what}: a slow client was closed after {earliest:?}");
    }
    drop(dev);

    let dev = Dev::start_args(None, &["--http-header-timeout-ms", "2000", "--http-max-connections", "20"], &[]);
    for (what, base) in [("API", &dev.api), ("gateway", &dev.gateway)] {
        // A byte every 10 s: nothing after the first, within the test.
        let mut closed: Vec<Duration> = slow_heads(base, 40, Duration::from_secs(10), Duration::from_secs(15), None)
            .into_iter()
            .map(|c| c.unwrap_or_else(|| panic!("{what}: a client still open after 15 s")))
            .collect();
        closed.sort();
        let (first, second) = closed.split_at(20);
        // The first 20 are closed 2 s after their accept; the others are accepted only then.
        assert!(first.iter().all(|t| *t < Duration::from_millis(3800)), "{what}: the first wave {first:?}");
        assert!(second.iter().all(|t| *t >= Duration::from_millis(3800)), "{what}: 20 at most at once, {second:?}");
    }
}

/// Opens `path` as `token` and returns the connection and the status of its answer's head (an
/// event stream's head comes at once; its body keeps coming).
fn open_stream(api: &str, token: &str, path: &str) -> (TcpStream, u16, String) {
    let mut stream = TcpStream::connect(api.trim_start_matches("http://")).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    let head = format!("GET {path} HTTP/1.1\r\nHost: shoal\r\nAuthorization: Bearer {token}\r\n\r\n");
    stream.write_all(head.as_bytes()).expect("send");
    let mut answer = [0u8; 2048];
    let n = stream.read(&mut answer).expect("an answer");
    let text = String::from_utf8_lossy(&answer[..n]).into_owned();
    (stream, status_of(&answer[..n]), text)
}

/// `--max-streams-per-token 3`: a token holds at most three event streams and watches open; the
/// fourth is refused with 429 and `Retry-After`, another token is not affected, and closing one
/// gives its place back.
#[test]
fn a_token_holds_at_most_its_share_of_streams() {
    let dev = Dev::start_args(None, &["--max-streams-per-token", "3"], &[]);
    let mut open: Vec<TcpStream> = ["/v1/events", "/v1/kv/orders?watch=true", "/v1/services/web/watch"]
        .iter()
        .map(|path| {
            let (stream, status, text) = open_stream(&dev.api, &dev.token, path);
            assert_eq!(status, 200, "{path}: {text}");
            stream
        })
        .collect();
    let (_, status, text) = open_stream(&dev.api, &dev.token, "/v1/events");
    assert_eq!(status, 429, "{text}");
    assert!(text.to_ascii_lowercase().contains("retry-after: 1"), "{text}");
    assert!(text.contains("too_many_streams"), "{text}");

    // Another token has places of its own.
    let (status, body) = http(&dev.api, &dev.token, "POST", "/v1/tokens", r#"{"scope": "app:orders", "ttl": "1h"}"#);
    assert_eq!(status, 201, "{body}");
    let app: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    let (_other, status, text) =
        open_stream(&dev.api, app["token"].as_str().expect("token"), "/v1/kv/orders?watch=true");
    assert_eq!(status, 200, "{text}");

    // Closing one gives its place back, once the server has seen it go.
    drop(open.pop());
    let reopened = shoal_testkit::eventually_sync("a place for the admin token again", Duration::from_secs(10), || {
        let (stream, status, _) = open_stream(&dev.api, &dev.token, "/v1/events");
        (status == 200).then_some(stream)
    });
    drop(reopened);
}

/// `--plugin-max-versions 2`: a third version of a plugin is refused with a clear 409 and
/// changes nothing; deleting one makes room.
#[test]
fn a_plugin_keeps_at_most_its_versions() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dev = Dev::start_args(None, &["--plugin-max-versions", "2"], &[]);
    let wasm = super::write(dir.path(), "rr.wasm", shoal_artifacts::ROUND_ROBIN);
    for version in ["1", "2"] {
        let (ok, _, err) =
            dev.cli(&["plugin", "push", "--kind", "router", "--name", "capped", "--version", version, &wasm]);
        assert!(ok, "{err}");
    }
    let (ok, _, err) = dev.cli(&["plugin", "push", "--kind", "router", "--name", "capped", "--version", "3", &wasm]);
    assert!(!ok && err.contains("409") && err.contains("delete old ones first"), "{err}");
    let (status, body) = http(&dev.api, &dev.token, "GET", "/v1/plugins/router/capped", "");
    assert_eq!(status, 200, "{body}");
    let shown: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(shown["versions"].as_array().map(Vec::len), Some(2), "{body}");
    let (ok, _, err) = dev.cli(&["plugin", "delete", "--kind", "router", "--name", "capped", "--version", "2"]);
    assert!(ok, "{err}");
    let (ok, _, err) = dev.cli(&["plugin", "push", "--kind", "router", "--name", "capped", "--version", "3", &wasm]);
    assert!(ok, "{err}");
}
