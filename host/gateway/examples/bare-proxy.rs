//! The floor of a hyper reverse proxy, for `bench/gateway-vs-nginx.sh`: the gateway's threading
//! model (one current-thread Tokio runtime per core accepting from a shared listener, its own
//! `hyper-util` legacy client pool, mimalloc) and nothing else: no routing table, no router
//! plugin, no metrics, no request ids, round-robin over fixed upstreams, one `X-Forwarded-For`.
//! What the gateway costs above this is Shoal's own work per request.
//!
//! ```text
//! cargo build --release --example bare-proxy
//! target/release/examples/bare-proxy 127.0.0.1:18095 127.0.0.1:18081 127.0.0.1:18082 127.0.0.1:18083
//! ```

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

type Body = UnsyncBoxBody<bytes::Bytes, hyper::Error>;

struct Upstreams {
    authorities: Vec<http::uri::Authority>,
    next: AtomicUsize,
}

fn main() {
    let mut args = std::env::args().skip(1);
    let listen = args.next().unwrap_or_else(|| "127.0.0.1:18095".into());
    let authorities: Vec<http::uri::Authority> =
        args.map(|a| a.parse().unwrap_or_else(|e| panic!("upstream `{a}`: {e}"))).collect();
    assert!(!authorities.is_empty(), "usage: bare-proxy LISTEN UPSTREAM...");
    let upstreams = Arc::new(Upstreams { authorities, next: AtomicUsize::new(0) });
    let listener = std::net::TcpListener::bind(&listen).expect("bind");
    listener.set_nonblocking(true).expect("non-blocking listener");
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    let threads: Vec<_> = (0..workers)
        .map(|_| {
            let listener = listener.try_clone().expect("share the listener");
            let upstreams = upstreams.clone();
            std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
                runtime.block_on(worker(listener, upstreams));
            })
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
}

async fn worker(listener: std::net::TcpListener, upstreams: Arc<Upstreams>) {
    let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: Arc<Client<HttpConnector, Incoming>> =
        Arc::new(Client::builder(TokioExecutor::new()).pool_max_idle_per_host(1024).build(connector));
    loop {
        let Ok((stream, peer)) = listener.accept().await else { continue };
        let _ = stream.set_nodelay(true);
        let peer_ip = http::HeaderValue::from_str(&peer.ip().to_string()).expect("an IP is a header value");
        let (client, upstreams) = (client.clone(), upstreams.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let (client, upstreams, peer_ip) = (client.clone(), upstreams.clone(), peer_ip.clone());
                async move { Ok::<_, Infallible>(forward(&client, &upstreams, req, peer_ip).await) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn forward(
    client: &Client<HttpConnector, Incoming>,
    upstreams: &Upstreams,
    req: Request<Incoming>,
    peer_ip: http::HeaderValue,
) -> Response<Body> {
    let n = upstreams.next.fetch_add(1, Ordering::Relaxed) % upstreams.authorities.len();
    let (mut parts, body) = req.into_parts();
    let mut uri = http::uri::Parts::default();
    uri.scheme = Some(http::uri::Scheme::HTTP);
    uri.authority = Some(upstreams.authorities[n].clone());
    uri.path_and_query = Some(parts.uri.path_and_query().cloned().unwrap_or_else(|| "/".parse().expect("a path")));
    let Ok(uri) = http::Uri::from_parts(uri) else { return status(http::StatusCode::BAD_REQUEST) };
    parts.uri = uri;
    parts.headers.insert("x-forwarded-for", peer_ip);
    match client.request(Request::from_parts(parts, body)).await {
        Ok(response) => response.map(BodyExt::boxed_unsync),
        Err(_) => status(http::StatusCode::BAD_GATEWAY),
    }
}

fn status(code: http::StatusCode) -> Response<Body> {
    let mut response =
        Response::new(http_body_util::Empty::new().map_err(|never: Infallible| match never {}).boxed_unsync());
    *response.status_mut() = code;
    response
}
