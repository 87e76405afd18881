//! Property tests of the upstream client's HTTP/1.1 codec against hyper's, over loopback
//! sockets: the same bytes from an upstream are read by [`Upstreams`] and by hyper's HTTP/1
//! client, and the request heads the gateway writes are read back by hyper's HTTP/1 server.
//!
//! The rule checked is one-sided: whenever the gateway accepts a response, hyper accepts it too,
//! with the same status, body and trailers. So the two never end a body at different places,
//! which is what response splitting and desynchronised connections need. Where the gateway is
//! stricter than hyper (it refuses more), [`cases_where_the_two_differ_are_named`] lists the
//! case and why it is harmless. Well-formed responses must be read the same by both.
//!
//! What these tests must never do: sleep, or depend on timing (each peer gets a generous
//! deadline only so that a hang fails instead of blocking the suite).

use std::net::SocketAddr;
use std::sync::OnceLock;

use http_body_util::{Empty, Full};
use hyper_util::rt::TokioIo;
use proptest::prelude::*;
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;
use tokio::runtime::Runtime;

use super::*;

/// How long a peer may take to read one response before the test fails (a hang, not a timing).
const PATIENCE: Duration = Duration::from_secs(20);

/// How a peer read one response.
#[derive(Debug, PartialEq)]
enum Read {
    /// Refused: the head or the body was malformed or incomplete.
    Refused,
    Body {
        status: u16,
        body: Vec<u8>,
        trailers: Option<Vec<(String, Vec<u8>)>>,
    },
}

fn body(status: u16, body: &[u8]) -> Read {
    Read::Body { status, body: body.to_vec(), trailers: None }
}

fn runtime() -> &'static Runtime {
    static RUNTIME: OnceLock<Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime"))
}

fn pairs(map: &HeaderMap) -> Vec<(String, Vec<u8>)> {
    map.iter().map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec())).collect()
}

/// A loopback server whose answer to the first request of each of its two connections is
/// `bytes`, after which it closes its side.
async fn serve(bytes: Vec<u8>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        for _ in 0..2 {
            let Ok((mut stream, _)) = listener.accept().await else { return };
            let bytes = bytes.clone();
            tokio::spawn(async move {
                let (mut seen, mut buf) = (Vec::new(), [0u8; 4096]);
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = stream.write_all(&bytes).await;
                let _ = stream.shutdown().await;
                // Read on until the client closes, so that no unread byte turns the close into a reset.
                while matches!(stream.read(&mut buf).await, Ok(n) if n > 0) {}
            });
        }
    });
    addr
}

/// The gateway's reading of the response at `addr`.
async fn ours(addr: SocketAddr, method: Method) -> Read {
    static REQUEST_ID: HeaderValue = HeaderValue::from_static("rid");
    let forwarded = Forwarded { client_ip: "127.0.0.1", host: "x", proto: "http", request_id: &REQUEST_ID };
    let upstreams = Arc::new(Upstreams::new(PATIENCE, 1));
    let authority: Authority = addr.to_string().parse().expect("an authority");
    let mut request = Request::new(Empty::new().map_err(|never| match never {}).boxed_unsync());
    *request.method_mut() = method;
    let Ok(response) = upstreams.send(&authority, request, &forwarded).await else { return Read::Refused };
    read(response).await
}

/// What a client reads of `response`: its status, whole body and trailers, or a refusal.
async fn read<B: hyper::body::Body>(response: hyper::Response<B>) -> Read {
    let status = response.status().as_u16();
    match response.into_body().collect().await {
        Ok(collected) => {
            let trailers = collected.trailers().map(pairs);
            Read::Body { status, body: collected.to_bytes().to_vec(), trailers }
        }
        Err(_) => Read::Refused,
    }
}

/// hyper's client's reading of the response at `addr`.
async fn hypers(addr: SocketAddr, method: Method) -> Read {
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let Ok((mut sender, conn)) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await else {
        return Read::Refused;
    };
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let request = Request::builder().method(method).uri("/").header(header::HOST, "x").body(Empty::<Bytes>::new());
    let Ok(response) = sender.send_request(request.expect("a request")).await else { return Read::Refused };
    read(response).await
}

/// The gateway's reading and hyper's of `bytes`, sent as the answer to a `method` request.
fn both(bytes: &[u8], method: &Method) -> (Read, Read) {
    runtime().block_on(async {
        let addr = serve(bytes.to_vec()).await;
        let ours = tokio::time::timeout(PATIENCE, ours(addr, method.clone())).await.expect("the gateway hung");
        let hypers = tokio::time::timeout(PATIENCE, hypers(addr, method.clone())).await.expect("hyper hung");
        (ours, hypers)
    })
}

/// Response bytes that try what desynchronises HTTP/1.1 peers: both framings, repeated or
/// malformed lengths, transfer codings in odd places, obs-fold, spaces before the colon, bare
/// LFs, bad chunk sizes and trailers.
fn hostile_response() -> impl Strategy<Value = Vec<u8>> {
    let version = prop::sample::select(vec!["HTTP/1.1", "HTTP/1.1", "HTTP/1.1", "HTTP/1.0", "HTTP/1.2", "HTTP/2"]);
    let status = prop::sample::select(vec![200u16, 200, 200, 201, 204, 304, 100, 103, 101, 404, 99]);
    let eol = prop::sample::select(vec!["\r\n", "\r\n", "\r\n", "\n"]);
    let name = prop_oneof![
        8 => prop::sample::select(vec!["Content-Length", "content-length", "Transfer-Encoding", "transfer-encoding", "Connection", "X-Other"]),
        1 => prop::sample::select(vec!["Content-Length ", " Transfer-Encoding", "Transfer-Encoding\t"]),
    ];
    let value = prop_oneof![
        prop::sample::select(vec![
            "0",
            "5",
            "12",
            "5, 5",
            "5,6",
            "+5",
            "-1",
            " 5 ",
            "0x5",
            "",
            "99999999999999999999",
            "chunked",
            "Chunked",
            "chunked, identity",
            "identity",
            "gzip, chunked",
            "chunked , ",
            "close",
            "keep-alive",
            "chunked\t",
            "chunked\r\n identity",
            "5\r\n 6",
        ])
        .prop_map(|v| v.as_bytes().to_vec()),
        prop::collection::vec(prop::sample::select(b"05c, \t\xff\x80hunked".to_vec()), 0..8),
    ];
    let field = (name, value).prop_map(|(n, v)| [n.as_bytes(), b": ", &v].concat());
    let piece = prop_oneof![
        // A chunk whose size line may lie about its data, with extensions and odd line ends.
        (
            0usize..12,
            -1i64..=1,
            prop::sample::select(vec!["", "", ";ext", ";a=b", " ", "\t;x", ";a\nb", ";\r"]),
            prop::sample::select(vec!["\r\n", "\r\n", "\n", "\r", ""]),
        )
            .prop_map(|(n, lie, ext, eol)| {
                let size = (n as i64 + lie).max(0);
                [format!("{size:x}{ext}{eol}").as_bytes(), &b"abcdefghijkl"[..n], b"\r\n"].concat()
            }),
        prop::sample::select(vec![
            "0\r\n\r\n",
            "0\r\nX-T: 1\r\n\r\n",
            "0\r\nX-T: 1\n\n",
            "0\r\nX-T: 1\nX-U: 2\r\n\r\n",
            "0\n\n",
            "\r\n",
            "0\r\n",
            "00000000000000000005\r\nhello\r\n",
            "fffffffffffffffff\r\n",
            "-1\r\n",
            "0x5\r\nhello\r\n",
            " 5\r\nhello\r\n",
            "5 \r\nhello\r\n",
            "5\r\nhelloXX",
            "hello",
            "0\r\nX: a\r\n b\r\n\r\n",
            ";x\r\n",
        ])
        .prop_map(|p| p.as_bytes().to_vec()),
        prop::collection::vec(any::<u8>(), 0..8),
    ];
    // Half the heads say chunked plainly first, so that the chunked decoder gets hostile bodies.
    let fields = (any::<bool>(), prop::collection::vec(field, 0..5)).prop_map(|(chunked, mut fields)| {
        if chunked {
            fields.insert(0, b"Transfer-Encoding: chunked".to_vec());
        }
        fields
    });
    (version, status, eol, fields, prop::collection::vec(piece, 0..5)).prop_map(
        |(version, status, eol, fields, pieces)| {
            let mut out = format!("{version} {status} X{eol}").into_bytes();
            for field in fields {
                out.extend_from_slice(&field);
                out.extend_from_slice(eol.as_bytes());
            }
            out.extend_from_slice(eol.as_bytes());
            out.extend(pieces.into_iter().flatten());
            out
        },
    )
}

/// How a well-formed response frames its body.
#[derive(Clone, Debug)]
enum Framed {
    Length,
    /// Chunks of these sizes (the rest of the body is the last), with extensions and trailers.
    Chunked {
        sizes: Vec<usize>,
        extension: bool,
        trailers: Vec<(String, String)>,
    },
    /// HTTP/1.1 without a length: until the close.
    Close,
    /// HTTP/1.0, until the close.
    Http10,
}

/// A well-formed response and what it holds: status, body, trailers.
fn well_formed_response() -> impl Strategy<Value = (Vec<u8>, Read)> {
    let framed = prop_oneof![
        Just(Framed::Length),
        (
            prop::collection::vec(1usize..20, 0..4),
            any::<bool>(),
            prop::collection::vec(("x-[a-z]{1,6}", "[!-~]{1,8}"), 0..3)
        )
            .prop_map(|(sizes, extension, trailers)| Framed::Chunked { sizes, extension, trailers }),
        Just(Framed::Close),
        Just(Framed::Http10),
    ];
    let status = prop::sample::select(vec![200u16, 201, 404, 500, 503]);
    (status, framed, prop::collection::vec(any::<u8>(), 0..64)).prop_map(|(status, framed, data)| {
        let version = if matches!(framed, Framed::Http10) { "HTTP/1.0" } else { "HTTP/1.1" };
        let mut out = format!("{version} {status} Whatever\r\nx-kept: 1\r\n").into_bytes();
        let mut trailers_read = None;
        match &framed {
            Framed::Length => out.extend_from_slice(format!("content-length: {}\r\n\r\n", data.len()).as_bytes()),
            Framed::Close | Framed::Http10 => out.extend_from_slice(b"\r\n"),
            Framed::Chunked { .. } => out.extend_from_slice(b"transfer-encoding: chunked\r\n\r\n"),
        }
        match framed {
            Framed::Length | Framed::Close | Framed::Http10 => out.extend_from_slice(&data),
            Framed::Chunked { sizes, extension, trailers } => {
                let mut rest = &data[..];
                for size in sizes.into_iter().chain([usize::MAX]) {
                    let (chunk, after) = rest.split_at(size.min(rest.len()));
                    if !chunk.is_empty() {
                        let ext = if extension { ";name=\"value\"" } else { "" };
                        out.extend_from_slice(format!("{:X}{ext}\r\n", chunk.len()).as_bytes());
                        out.extend_from_slice(chunk);
                        out.extend_from_slice(b"\r\n");
                    }
                    rest = after;
                }
                out.extend_from_slice(b"0\r\n");
                let mut map = HeaderMap::new();
                for (name, value) in &trailers {
                    out.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
                    map.append(
                        HeaderName::from_bytes(name.as_bytes()).expect("a name"),
                        value.parse().expect("a value"),
                    );
                }
                out.extend_from_slice(b"\r\n");
                trailers_read = (!trailers.is_empty()).then(|| pairs(&map));
            }
        }
        (out, Read::Body { status, body: data, trailers: trailers_read })
    })
}

proptest! {
    // A case takes well under a millisecond on loopback.
    #![proptest_config(ProptestConfig::with_cases(1024))]

    /// Whatever an upstream sends, a response the gateway accepts is one hyper's client reads
    /// the same: same status, same body (so the same end), same trailers.
    #[test]
    fn what_the_gateway_accepts_hyper_reads_the_same(bytes in hostile_response(), head in any::<bool>()) {
        let method = if head { Method::HEAD } else { Method::GET };
        let (ours, hypers) = both(&bytes, &method);
        if ours != Read::Refused {
            prop_assert_eq!(&ours, &hypers, "{} {:?}", method, String::from_utf8_lossy(&bytes));
        }
    }

    /// A well-formed response is read whole, and alike, by both.
    #[test]
    fn well_formed_responses_are_read_alike((bytes, expected) in well_formed_response()) {
        let (ours, hypers) = both(&bytes, &Method::GET);
        prop_assert_eq!(&ours, &expected, "{:?}", String::from_utf8_lossy(&bytes));
        prop_assert_eq!(&hypers, &expected, "{:?}", String::from_utf8_lossy(&bytes));
    }
}

/// The inputs known to desynchronise HTTP/1.1 peers, each with how the gateway and hyper read
/// it. Where the two differ, the gateway refuses and hyper reads on, which is harmless: a
/// refused response never reaches the client, and its connection is closed.
#[test]
fn cases_where_the_two_differ_are_named() {
    let refused = || Read::Refused;
    let chunked = |rest: &str| format!("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n{rest}");
    #[rustfmt::skip]
    let cases: Vec<(String, Read, Read)> = vec![
        // Both framings: the transfer coding wins, for both.
        ("HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n".into(), body(200, b"hello"), body(200, b"hello")),
        // Conflicting lengths, in two headers or in one list; the same length twice is one length.
        ("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!".into(), refused(), refused()),
        ("HTTP/1.1 200 OK\r\nContent-Length: 5, 6\r\n\r\nhello!".into(), refused(), refused()),
        ("HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\nhello".into(), body(200, b"hello"), body(200, b"hello")),
        ("HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\nhello".into(), refused(), refused()),
        // obs-fold and a space before the colon are malformed heads for both (httparse's defaults).
        ("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n identity\r\n\r\nhello".into(), refused(), refused()),
        ("HTTP/1.1 200 OK\r\nContent-Length : 5\r\n\r\nhello".into(), refused(), refused()),
        // Chunked not last: the body runs until the close.
        ("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, identity\r\n\r\n5\r\nhello\r\n0\r\n\r\n".into(), body(200, b"5\r\nhello\r\n0\r\n\r\n"), body(200, b"5\r\nhello\r\n0\r\n\r\n")),
        // Fixed here: read as chunked before, where hyper refuses.
        ("HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n".into(), refused(), refused()),
        // Fixed here: an empty chunk-size line was the last chunk (httparse reads it as 0).
        (chunked("5\r\nhello\r\n\r\nworld"), refused(), refused()),
        // Fixed here: a bare LF in a chunk extension ended the line.
        (chunked("5;a\nb\r\nhello\r\n0\r\n\r\n"), refused(), refused()),
        // Fixed here: bare LFs ended the trailer section where hyper reads on. hyper reads the
        // trailer section to its CRLF CRLF (ignoring `more`, httparse stops at the bare LFs): the
        // gateway ended the body 10 bytes earlier, and now refuses it.
        (chunked("0\r\nX-T: 1\n\nmore\r\n\r\n"), refused(), Read::Body { status: 200, body: vec![], trailers: Some(vec![("x-t".into(), b"1".to_vec())]) }),
        (chunked("0\n\n"), refused(), refused()),
        // Bad chunk sizes.
        (chunked("zz\r\n"), refused(), refused()),
        (chunked("-1\r\nhello\r\n0\r\n\r\n"), refused(), refused()),
        (chunked("0x5\r\nhello\r\n0\r\n\r\n"), refused(), refused()),
        (chunked(" 5\r\nhello\r\n0\r\n\r\n"), refused(), refused()),
        (chunked("5\r\nhelloXX0\r\n\r\n"), refused(), refused()),
        (chunked("5 ;x\r\nhello\r\n0\r\n\r\n"), body(200, b"hello"), body(200, b"hello")),
        // Stricter, harmless: more than 16 hex digits, even leading zeros (httparse's limit).
        (chunked("00000000000000000005\r\nhello\r\n0\r\n\r\n"), refused(), body(200, b"hello")),
        // Stricter, harmless: a transfer coding that is not visible ASCII (hyper reads until the close).
        ("HTTP/1.1 200 OK\r\nTransfer-Encoding: \u{e9}, chunked\r\n\r\n0\r\n\r\n".into(), refused(), body(200, b"0\r\n\r\n")),
        // Stricter, harmless: an invalid length beside a transfer coding (hyper ignores the length).
        ("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: x\r\n\r\n0\r\n\r\n".into(), refused(), body(200, b"")),
        // Stricter, harmless: no upgrades through the gateway.
        ("HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n".into(), refused(), body(101, b"")),
    ];
    for (bytes, expected_ours, expected_hyper) in cases {
        let (ours, hypers) = both(bytes.as_bytes(), &Method::GET);
        assert_eq!((&ours, &hypers), (&expected_ours, &expected_hyper), "{bytes:?}");
    }
}

/// A body a client's request may carry.
#[derive(Clone, Debug)]
enum ClientBody {
    None,
    /// Of known size, with the client's `Content-Length` written this many times (and, when
    /// `conflict`, once more with a wrong value: conflicting, or alone just wrong).
    Known {
        data: Vec<u8>,
        lengths: usize,
        conflict: bool,
    },
    /// Of unknown size, in these frames, with trailers.
    Streamed {
        frames: Vec<Vec<u8>>,
        trailers: Vec<(String, String)>,
    },
}

/// A request as a client may send it to the gateway: any method, target, headers (hop-by-hop
/// ones, those `Connection` names, forwarded ones) and body.
fn client_request() -> impl Strategy<Value = (Method, String, Vec<(String, String)>, ClientBody)> {
    let method = prop::sample::select(vec![Method::GET, Method::POST, Method::PUT, Method::DELETE, Method::PATCH]);
    let name = prop::sample::select(vec![
        "x-a",
        "x-b",
        "accept",
        "host",
        "connection",
        "keep-alive",
        "te",
        "trailer",
        "upgrade",
        "proxy-authorization",
        "x-forwarded-for",
        "x-forwarded-host",
        "x-forwarded-proto",
        "x-request-id",
    ]);
    let value = prop_oneof!["[!-~]([ -~]{0,8}[!-~])?", Just("close, x-a".to_owned()), Just("keep-alive".to_owned())];
    let body = prop_oneof![
        Just(ClientBody::None),
        (prop::collection::vec(any::<u8>(), 0..40), 0usize..3, any::<bool>())
            .prop_map(|(data, lengths, conflict)| ClientBody::Known { data, lengths, conflict }),
        (
            prop::collection::vec(prop::collection::vec(any::<u8>(), 0..20), 0..4),
            prop::collection::vec(("x-[a-z]{1,6}", "[!-~]{1,8}"), 0..2)
        )
            .prop_map(|(frames, trailers)| ClientBody::Streamed { frames, trailers }),
    ];
    let field = (name, value).prop_map(|(n, v)| (n.to_owned(), v));
    (method, "/[a-z0-9._~-]{0,8}(\\?[a-z]{1,4}=[a-z0-9]{0,4})?", prop::collection::vec(field, 0..6), body)
}

/// What hyper's server read of one request.
#[derive(Debug)]
struct Seen {
    method: Method,
    target: String,
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
    trailers: Option<Vec<(String, Vec<u8>)>>,
}

/// Write `request` as the gateway does (head and body on a loopback connection, then a second
/// request), and read what hyper's HTTP/1 server makes of it; `Err` when the gateway refused it.
async fn through_hyper(request: Request<GatewayBody>) -> Result<Vec<Seen>, String> {
    static REQUEST_ID: HeaderValue = HeaderValue::from_static("rid-1");
    let forwarded = Forwarded { client_ip: "10.0.0.9", host: "app.example", proto: "http", request_id: &REQUEST_ID };
    let authority: Authority = "upstream:8080".parse().expect("an authority");
    let (head, framing) = encode_head(&request, &authority, &forwarded)?;
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let stream = tokio::net::TcpStream::connect(listener.local_addr().expect("addr")).await.expect("connect");
    let (server, _) = listener.accept().await.expect("accept");
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let into = seen.clone();
    let service = hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
        let into = into.clone();
        async move {
            let (parts, body) = request.into_parts();
            let collected = body.collect().await?;
            into.lock().expect("lock").push(Seen {
                method: parts.method,
                target: parts.uri.to_string(),
                headers: pairs(&parts.headers),
                trailers: collected.trailers().map(pairs),
                body: collected.to_bytes().to_vec(),
            });
            Ok::<_, hyper::Error>(Response::new(Empty::<Bytes>::new()))
        }
    });
    let serving =
        tokio::spawn(hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(server), service));
    let mut conn = Conn { stream, buf: BytesMut::new(), reused: false };
    let mut body = request.into_body();
    conn.write_request(&head, framing, &mut body).await?;
    conn.stream.write_all(b"GET /next HTTP/1.1\r\nhost: next\r\n\r\n").await.expect("write");
    // Two answers (heads of empty bodies), or a close after hyper refused something. (Closing
    // our side instead races hyper's reading of the pipelined request.)
    let answers = async {
        let (mut answered, mut buf) = (Vec::new(), [0u8; 1024]);
        while answered.windows(4).filter(|w| w == b"\r\n\r\n").count() < 2 {
            match conn.stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answered.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(PATIENCE, answers).await.expect("hyper's server hung");
    drop(conn);
    let _ = tokio::time::timeout(PATIENCE, serving).await.expect("hyper's server hung");
    let seen = std::mem::take(&mut *seen.lock().expect("lock"));
    Ok(seen)
}

/// The headers the upstream must get for a client's `headers`, the framing's aside.
fn expected_headers(headers: &[(String, String)]) -> Vec<(String, Vec<u8>)> {
    let named: Vec<String> = headers
        .iter()
        .filter(|(n, _)| n == "connection")
        .flat_map(|(_, v)| v.split(',').map(|t| t.trim().to_ascii_lowercase()).collect::<Vec<_>>())
        .collect();
    let dropped = |n: &str| {
        HOP_BY_HOP.iter().any(|h| h.as_str() == n)
            || named.iter().any(|t| t == n)
            || ["content-length", "x-forwarded-for", "x-forwarded-host", "x-forwarded-proto", "x-request-id"]
                .contains(&n)
    };
    let mut out: Vec<(String, Vec<u8>)> =
        headers.iter().filter(|(n, _)| !dropped(n)).map(|(n, v)| (n.clone(), v.as_bytes().to_vec())).collect();
    if !out.iter().any(|(n, _)| n == "host") {
        out.push(("host".into(), b"upstream:8080".to_vec()));
    }
    let client_xff = headers.iter().filter(|(n, _)| n == "x-forwarded-for" && !named.iter().any(|t| t == n));
    let mut xff: Vec<&str> = client_xff.map(|(_, v)| v.as_str()).collect();
    xff.push("10.0.0.9");
    out.push(("x-forwarded-for".into(), xff.join(", ").into_bytes()));
    out.push(("x-forwarded-host".into(), b"app.example".to_vec()));
    out.push(("x-forwarded-proto".into(), b"http".to_vec()));
    out.push(("x-request-id".into(), b"rid-1".to_vec()));
    out
}

/// `headers` sorted by name, keeping the order of each name's values (the order of the names
/// is not the upstream's business).
fn grouped(mut headers: Vec<(String, Vec<u8>)>) -> Vec<(String, Vec<u8>)> {
    headers.sort_by(|a, b| a.0.cmp(&b.0));
    headers
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// A request the gateway forwards is read by hyper's server as exactly that request: same
    /// method, target and body, the client's end-to-end headers, the forwarded ones, one framing;
    /// and the next request on the connection is read as the next one (nothing smuggled).
    #[test]
    fn forwarded_requests_read_back_the_same_in_hyper((method, target, headers, client_body) in client_request()) {
        let mut request = Request::new(Empty::new().map_err(|never| match never {}).boxed_unsync());
        let (mut data, mut trailers, mut conflicting) = (Vec::new(), None, false);
        match &client_body {
            ClientBody::None => {}
            ClientBody::Known { data: known, lengths, conflict } => {
                data = known.clone();
                for _ in 0..*lengths {
                    request.headers_mut().append(header::CONTENT_LENGTH, known.len().into());
                }
                if *conflict {
                    request.headers_mut().append(header::CONTENT_LENGTH, (known.len() + 1).into());
                    conflicting = true;
                }
                *request.body_mut() = Full::new(Bytes::from(known.clone())).map_err(|never| match never {}).boxed_unsync();
            }
            ClientBody::Streamed { frames, trailers: sent } => {
                data = frames.concat();
                let mut frames: std::collections::VecDeque<Frame<Bytes>> =
                    frames.iter().map(|f| Frame::data(Bytes::from(f.clone()))).collect();
                if !sent.is_empty() {
                    let mut map = HeaderMap::new();
                    for (n, v) in sent {
                        map.append(HeaderName::from_bytes(n.as_bytes()).expect("a name"), v.parse().expect("a value"));
                    }
                    trailers = Some(pairs(&map));
                    frames.push_back(Frame::trailers(map));
                }
                let stream = http_body_util::StreamBody::new(futures::stream::iter(frames.into_iter().map(Ok::<_, BoxError>)));
                *request.body_mut() = stream.boxed_unsync();
            }
        }
        *request.method_mut() = method.clone();
        *request.uri_mut() = target.parse().expect("a target");
        for (name, value) in &headers {
            request.headers_mut().append(HeaderName::from_bytes(name.as_bytes()).expect("a name"), value.parse().expect("a value"));
        }
        let seen = runtime().block_on(through_hyper(request));
        if conflicting {
            prop_assert!(seen.is_err(), "conflicting lengths must be refused");
            return Ok(());
        }
        let mut seen = seen.map_err(TestCaseError::fail)?;
        prop_assert_eq!(seen.len(), 2, "two requests read: {:?}", seen);
        let next = seen.pop().expect("the next request");
        prop_assert_eq!((&next.method, next.target.as_str()), (&Method::GET, "/next"));
        let first = seen.pop().expect("the request");
        prop_assert_eq!((&first.method, &first.target, &first.body, &first.trailers), (&method, &target, &data, &trailers));
        let mut expected = expected_headers(&headers);
        match &client_body {
            ClientBody::Streamed { .. } => expected.push(("transfer-encoding".into(), b"chunked".to_vec())),
            ClientBody::Known { lengths, .. } if *lengths > 0 || !data.is_empty() => {
                expected.push(("content-length".into(), data.len().to_string().into_bytes()));
            }
            _ if matches!(method, Method::POST | Method::PUT | Method::PATCH) => {
                expected.push(("content-length".into(), b"0".to_vec()));
            }
            _ => {}
        }
        prop_assert_eq!(grouped(first.headers), grouped(expected));
    }
}
