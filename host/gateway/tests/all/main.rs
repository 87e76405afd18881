//! The gateway against real upstream HTTP servers on loopback, real router plugins (the built
//! default components and a hostile one) and the real plugin registry.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, combinators::UnsyncBoxBody};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use shoal_abi::PluginKind;
use shoal_discovery::{Discovery, Health, Registration};
use shoal_gateway::{Gateway, GatewayConfig, GatewayEvent, Route, Routes};
use shoal_registry::{Registry, RegistryConfig};
use shoal_runtime::{Runtime, RuntimeConfig};
use shoal_testkit::eventually;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

mod replicated;

type Body = UnsyncBoxBody<Bytes, hyper::Error>;

/// A real HTTP server standing in for an app instance. It answers its name, echoes what the
/// gateway added in headers, sleeps on `/slow` (or always, when `delay` is set), and streams
/// `/echo` bodies back.
struct Upstream {
    name: String,
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    /// Connections accepted.
    conns: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Upstream {
    async fn start(name: &str, delay: Duration) -> Upstream {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        Upstream::serve(listener, name, delay)
    }

    /// On a given address (a restart of an instance).
    async fn start_on(addr: SocketAddr, name: &str) -> Upstream {
        let listener = tokio::net::TcpListener::bind(addr).await.expect("bind again");
        Upstream::serve(listener, name, Duration::ZERO)
    }

    fn serve(listener: tokio::net::TcpListener, name: &str, delay: Duration) -> Upstream {
        let addr = listener.local_addr().expect("addr");
        let hits = Arc::new(AtomicUsize::new(0));
        let conns = Arc::new(AtomicUsize::new(0));
        let (name2, hits2, conns2) = (name.to_owned(), hits.clone(), conns.clone());
        let task = tokio::spawn(async move {
            // Connections live in this set: aborting the server task drops them all, like a crash.
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let (stream, _) = listener.accept().await.expect("accept");
                conns2.fetch_add(1, Ordering::SeqCst);
                let (name, hits) = (name2.clone(), hits2.clone());
                conns.spawn(async move {
                    let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
                        let (name, hits) = (name.clone(), hits.clone());
                        async move {
                            hits.fetch_add(1, Ordering::SeqCst);
                            let path = req.uri().path().to_owned();
                            // Time passing is the point here: a slow upstream (or instance) must be slow.
                            if path == "/slow" {
                                tokio::time::sleep(Duration::from_secs(3)).await;
                            } else if !delay.is_zero() {
                                tokio::time::sleep(delay).await;
                            }
                            let seen =
                                |h: &str| req.headers().get(h).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
                            let (xff, xfh, rid, host) =
                                (seen("x-forwarded-for"), seen("x-forwarded-host"), seen("x-request-id"), seen("host"));
                            let body: Body = if path == "/echo" {
                                req.into_body().boxed_unsync()
                            } else {
                                Full::new(Bytes::from(format!("{name} {path}"))).map_err(|n| match n {}).boxed_unsync()
                            };
                            let mut resp = hyper::Response::new(body);
                            resp.headers_mut().insert("x-seen-forwarded-for", xff.parse().expect("hv"));
                            resp.headers_mut().insert("x-seen-forwarded-host", xfh.parse().expect("hv"));
                            resp.headers_mut().insert("x-seen-request-id", rid.parse().expect("hv"));
                            resp.headers_mut().insert("x-seen-host", host.parse().expect("hv"));
                            Ok::<_, Infallible>(resp)
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Upstream { name: name.to_owned(), addr, hits, conns, task }
    }
}

struct Setup {
    registry: Arc<Registry>,
    discovery: Arc<Discovery>,
    routes: Arc<Routes>,
    url: String,
    events: mpsc::UnboundedReceiver<GatewayEvent>,
    _dir: tempfile::TempDir,
}

async fn setup(config: GatewayConfig) -> Setup {
    let dir = tempfile::tempdir().expect("tempdir");
    let runtime = Runtime::new(RuntimeConfig { max_instances: 200, ..RuntimeConfig::default() }).expect("runtime");
    let (registry, _registry_events) =
        Registry::open(&dir.path().join("registry"), runtime, RegistryConfig::default()).expect("registry");
    for &(kind, name, bytes) in shoal_artifacts::DEFAULT_PLUGINS {
        if kind == "router" {
            registry.push(PluginKind::Router, name, Some("1"), bytes, true).await.expect("push router");
        }
    }
    registry.push(PluginKind::Router, "hostile", Some("1"), shoal_artifacts::HOSTILE_ROUTER, true).await.expect("push");
    let discovery = Arc::new(Discovery::default());
    let routes = Arc::new(Routes::in_memory());
    let (tx, events) = mpsc::unbounded_channel();
    let gateway = Gateway::new(routes.clone(), discovery.clone(), registry.clone(), config, Some(tx));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(gateway.serve(listener, std::future::pending()));
    Setup { registry, discovery, routes, url, events, _dir: dir }
}

fn register(d: &Discovery, service: &str, up: &Upstream, weight: u32) {
    let r = Registration {
        address: up.addr.to_string(),
        ports: BTreeMap::new(),
        weight,
        labels: BTreeMap::new(),
        version: "1".into(),
        health: Some(Health::Passing),
        ttl_seconds: None,
        check: None,
    };
    d.register(service, &up.name, r).expect("register");
}

fn route(name: &str, service: &str, router: &str, prefix: &str) -> Route {
    Route {
        name: name.into(),
        host: None,
        path_prefix: prefix.into(),
        service: service.into(),
        router: router.into(),
        strip_prefix: false,
        timeout_ms: 10_000,
    }
}

async fn get(http: &reqwest::Client, url: &str) -> (u16, String) {
    let r = http.get(url).send().await.expect("request");
    let status = r.status().as_u16();
    (status, r.text().await.expect("body"))
}

fn tally(bodies: &[String]) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for b in bodies {
        *m.entry(b.split(' ').next().unwrap_or("").to_owned()).or_default() += 1;
    }
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_spreads_requests_and_sets_forwarding_headers() {
    // One worker: each keeps its own router instance, so round-robin is exact per worker, and
    // the client may open a second connection that lands on another worker.
    let s = setup(GatewayConfig { workers: 1, ..GatewayConfig::default() }).await;
    let ups = [
        Upstream::start("a", Duration::ZERO).await,
        Upstream::start("b", Duration::ZERO).await,
        Upstream::start("c", Duration::ZERO).await,
    ];
    for u in &ups {
        register(&s.discovery, "web", u, 1);
    }
    s.routes.put(route("web", "web", "round-robin", "/")).await.expect("route");
    let http = reqwest::Client::new();
    let mut bodies = Vec::new();
    for _ in 0..30 {
        let (status, body) = get(&http, &format!("{}/items", s.url)).await;
        assert_eq!(status, 200, "{body}");
        bodies.push(body);
    }
    assert_eq!(tally(&bodies), HashMap::from([("a".into(), 10), ("b".into(), 10), ("c".into(), 10)]));
    let r = http.get(format!("{}/x", s.url)).header("x-request-id", "req-42").send().await.expect("request");
    assert_eq!(r.headers()["x-request-id"], "req-42");
    assert_eq!(r.headers()["x-seen-request-id"], "req-42");
    assert_eq!(r.headers()["x-seen-forwarded-for"], "127.0.0.1");
    assert!(r.headers()["x-seen-forwarded-host"].to_str().expect("ascii").starts_with("127.0.0.1"));
    // Without one, the gateway makes a request id and returns it.
    let r = http.get(format!("{}/x", s.url)).send().await.expect("request");
    assert_eq!(r.headers()["x-request-id"].len(), 32);

    // HTTP/2 (h2c, prior knowledge) is served too.
    let h2 = reqwest::Client::builder().http2_prior_knowledge().build().expect("client");
    let r = h2.get(format!("{}/h2", s.url)).send().await.expect("h2 request");
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(r.status().as_u16(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_connections_are_kept_alive_and_reused_after_each_body_ends() {
    // Upstream connections belong to a worker: with one, every request can reuse the same one.
    let s = setup(GatewayConfig { workers: 1, ..GatewayConfig::default() }).await;
    let up = Upstream::start("a", Duration::ZERO).await;
    register(&s.discovery, "web", &up, 1);
    s.routes.put(route("web", "web", "round-robin", "/")).await.expect("route");
    // One client connection: its requests are served one after another by one worker.
    let http = reqwest::Client::builder().pool_max_idle_per_host(1).build().expect("client");
    for n in 0..20 {
        let (status, body) = get(&http, &format!("{}/n{n}", s.url)).await;
        assert_eq!((status, body), (200, format!("a /n{n}")));
        // A body of unknown length (chunked), streamed back, ends the same way.
        let r = http.post(format!("{}/echo", s.url)).body(reqwest::Body::wrap_stream(futures::stream::iter([
            Ok::<_, std::io::Error>(Bytes::from_static(b"one ")),
            Ok(Bytes::from_static(b"two")),
        ])));
        let r = r.send().await.expect("echo");
        assert_eq!(r.status().as_u16(), 200);
        assert_eq!(r.text().await.expect("body"), "one two");
    }
    assert_eq!(up.hits.load(Ordering::SeqCst), 40);
    assert_eq!(up.conns.load(Ordering::SeqCst), 1, "every request on the one upstream connection");
    let r = http.get(format!("{}/x", s.url)).send().await.expect("request");
    assert!(r.headers()["x-seen-host"].to_str().expect("ascii").starts_with("127.0.0.1"), "the client's Host");

    // An HTTP/2 client sends no Host; the upstream still gets one (its own address).
    let h2 = reqwest::Client::builder().http2_prior_knowledge().build().expect("client");
    let r = h2.get(format!("{}/h2", s.url)).send().await.expect("h2 request");
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.headers()["x-seen-host"], up.addr.to_string().as_str());

    // The upstream closes its connections (a restart): the next requests get new ones, no error.
    let addr = up.addr;
    up.task.abort();
    let again = eventually("the aborted upstream to release its address", Duration::from_secs(10), || async {
        tokio::net::TcpListener::bind(addr).await.ok()
    })
    .await;
    drop(again);
    let up = Upstream::start_on(addr, "a2").await;
    for _ in 0..5 {
        let (status, body) = get(&http, &format!("{}/after", s.url)).await;
        assert_eq!((status, body.as_str()), (200, "a2 /after"));
    }
    assert_eq!(up.hits.load(Ordering::SeqCst), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_clear_no_route_no_instance_unhealthy_timeout() {
    let s = setup(GatewayConfig::default()).await;
    let http = reqwest::Client::new();
    let (status, body) = get(&http, &format!("{}/nothing", s.url)).await;
    assert_eq!(status, 404);
    assert!(body.contains("no_route"), "{body}");

    s.routes.put(route("empty", "empty", "round-robin", "/empty")).await.expect("route");
    let (status, body) = get(&http, &format!("{}/empty", s.url)).await;
    assert_eq!(status, 503);
    assert!(body.contains("has no instances"), "{body}");

    let up = Upstream::start("sick", Duration::ZERO).await;
    register(&s.discovery, "empty", &up, 1);
    s.discovery.set_health("empty", "sick", Health::Critical).expect("health");
    let (status, body) = get(&http, &format!("{}/empty", s.url)).await;
    assert_eq!(status, 503);
    assert!(body.contains("none of the 1 instances"), "{body}");

    let slow = Upstream::start("slow", Duration::ZERO).await;
    register(&s.discovery, "slow", &slow, 1);
    s.routes.put(Route { timeout_ms: 200, ..route("slow", "slow", "round-robin", "/slow") }).await.expect("route");
    let (status, body) = get(&http, &format!("{}/slow", s.url)).await;
    assert_eq!(status, 504, "{body}");
    assert!(body.contains("did not answer within 200 ms"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_instance_is_retried_around_then_ejected() {
    let config = GatewayConfig { eject_after: 2, eject_for: Duration::from_secs(60), ..GatewayConfig::default() };
    let mut s = setup(config).await;
    let ups = [
        Upstream::start("a", Duration::ZERO).await,
        Upstream::start("b", Duration::ZERO).await,
        Upstream::start("c", Duration::ZERO).await,
    ];
    for u in &ups {
        register(&s.discovery, "web", u, 1);
    }
    s.routes.put(route("web", "web", "round-robin", "/")).await.expect("route");
    let http = reqwest::Client::new();
    for _ in 0..6 {
        assert_eq!(get(&http, &format!("{}/", s.url)).await.0, 200);
    }
    // Instance b dies (its process and every connection).
    ups[1].task.abort();
    // Once its task has finished, its listener is closed and its connections are cancelled.
    eventually("the aborted instance b to stop", Duration::from_secs(10), || {
        std::future::ready(ups[1].task.is_finished().then_some(()))
    })
    .await;
    let before = ups[1].hits.load(Ordering::SeqCst);
    let mut bodies = Vec::new();
    for _ in 0..60 {
        let (status, body) = get(&http, &format!("{}/", s.url)).await;
        assert_eq!(status, 200, "no request may fail while healthy instances remain: {body}");
        bodies.push(body);
    }
    assert_eq!(ups[1].hits.load(Ordering::SeqCst), before, "the dead instance answered?");
    let t = tally(&bodies);
    assert_eq!(t.get("b"), None);
    assert_eq!(t["a"] + t["c"], 60);
    let mut ejected = false;
    while let Ok(e) = s.events.try_recv() {
        ejected |= e.action == "ejected" && e.data["instance"] == "b";
    }
    assert!(ejected, "an `ejected` event names the dead instance");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_keep_their_connection_when_the_upstream_speaks_http_1_0() {
    // An HTTP/1.0 upstream that closes after each answer, as Python's `http.server` does.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else { return };
            tokio::spawn(async move {
                let mut seen = Vec::new();
                let mut buf = [0u8; 1024];
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = stream.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok").await;
            });
        }
    });
    let s = setup(GatewayConfig::default()).await;
    let up = Upstream { name: "old".into(), addr, hits: Arc::default(), conns: Arc::default(), task: server };
    register(&s.discovery, "web", &up, 1);
    s.routes.put(route("web", "web", "round-robin", "/")).await.expect("route");

    // Three requests on one client connection, each answered in HTTP/1.1.
    let gateway = s.url.trim_start_matches("http://").to_owned();
    let mut client = tokio::net::TcpStream::connect(&gateway).await.expect("connect");
    let mut answers = String::new();
    for _ in 0..3 {
        client.write_all(b"GET / HTTP/1.1\r\nhost: app\r\n\r\n").await.expect("request");
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        while !got.ends_with(b"\r\n\r\nok") {
            let n = tokio::time::timeout(Duration::from_secs(5), client.read(&mut buf))
                .await
                .expect("an answer in time")
                .expect("read");
            assert!(n > 0, "the gateway closed the client's connection after: {}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&buf[..n]);
        }
        answers.push_str(&String::from_utf8_lossy(&got));
    }
    assert_eq!(answers.matches("HTTP/1.1 200 OK\r\n").count(), 3, "{answers}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_source_hash_and_least_connections_rules_on_real_traffic() {
    // One worker: smooth weighted round-robin is exact per worker's router instance, and the
    // client may open a second connection that lands on another worker (CI saw 50/11/9).
    let s = setup(GatewayConfig { workers: 1, ..GatewayConfig::default() }).await;
    let ups = [
        Upstream::start("a", Duration::ZERO).await,
        Upstream::start("b", Duration::ZERO).await,
        Upstream::start("c", Duration::ZERO).await,
    ];
    for (u, w) in ups.iter().zip([5, 1, 1]) {
        register(&s.discovery, "web", u, w);
    }
    s.routes.put(route("wrr", "web", "weighted-round-robin", "/wrr")).await.expect("route");
    s.routes.put(route("hash", "web", "source-hash", "/hash")).await.expect("route");
    let http = reqwest::Client::new();
    let mut bodies = Vec::new();
    for _ in 0..70 {
        bodies.push(get(&http, &format!("{}/wrr", s.url)).await.1);
    }
    assert_eq!(tally(&bodies), HashMap::from([("a".into(), 50), ("b".into(), 10), ("c".into(), 10)]));

    // Same key, same instance; many keys, every instance.
    let keyed = |key: String| {
        let (http, url) = (http.clone(), format!("{}/hash", s.url));
        async move { http.get(url).header("x-hash-key", key).send().await.expect("req").text().await.expect("body") }
    };
    let first = keyed("user-7".into()).await;
    for _ in 0..20 {
        assert_eq!(keyed("user-7".into()).await, first);
    }
    let mut spread = Vec::new();
    for i in 0..60 {
        spread.push(keyed(format!("user-{i}")).await);
    }
    assert_eq!(tally(&spread).len(), 3, "keys spread over every instance: {:?}", tally(&spread));

    // Least connections: instance `slow` takes 300 ms per request, the others answer at once.
    let slow = Upstream::start("slow", Duration::from_millis(300)).await;
    let f1 = Upstream::start("f1", Duration::ZERO).await;
    let f2 = Upstream::start("f2", Duration::ZERO).await;
    for u in [&slow, &f1, &f2] {
        register(&s.discovery, "lc", u, 1);
    }
    s.routes.put(route("lc", "lc", "least-connections", "/lc")).await.expect("route");
    let mut handles = Vec::new();
    for _ in 0..30 {
        let (http, url) = (http.clone(), format!("{}/lc", s.url));
        handles.push(tokio::spawn(async move { get(&http, &url).await }));
        // Time passing is the point here: requests arrive paced, while the slow ones are in flight.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut bodies = Vec::new();
    for h in handles {
        let (status, body) = h.await.expect("join");
        assert_eq!(status, 200);
        bodies.push(body);
    }
    let t = tally(&bodies);
    assert!(t.get("slow").copied().unwrap_or(0) <= 4, "least-connections kept sending to the busy instance: {t:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_router_falls_back_and_swapping_the_rule_drops_nothing() {
    let mut s = setup(GatewayConfig::default()).await;
    let ups = [Upstream::start("a", Duration::ZERO).await, Upstream::start("b", Duration::ZERO).await];
    for u in &ups {
        register(&s.discovery, "web", u, 1);
    }
    s.routes.put(route("hostile", "web", "hostile", "/")).await.expect("route");
    s.routes.put(route("missing", "web", "no-such-router", "/missing")).await.expect("route");
    let http = reqwest::Client::new();
    for path in ["/trap", "/out-of-range", "/loop", "/missing"] {
        let (status, body) = get(&http, &format!("{}{path}", s.url)).await;
        assert_eq!(status, 200, "{path}: served by the fallback rule: {body}");
    }
    let mut fallbacks = Vec::new();
    while let Ok(e) = s.events.try_recv() {
        if e.action == "fallback" {
            fallbacks.push((e.route, e.data["cause"].as_str().unwrap_or("").to_owned()));
        }
    }
    assert!(fallbacks.iter().any(|(r, c)| r == "hostile" && c.contains("trap")), "{fallbacks:?}");
    assert!(fallbacks.iter().any(|(r, c)| r == "missing" && c.contains("no active router")), "{fallbacks:?}");

    // Swap the route's rule live (a new version of the plugin it names) under load.
    s.registry.push(PluginKind::Router, "live", Some("rr"), shoal_artifacts::ROUND_ROBIN, true).await.expect("push");
    s.routes.put(route("live", "web", "live", "/live")).await.expect("route");
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut load = Vec::new();
    for _ in 0..4 {
        let (http, url, stop) = (http.clone(), format!("{}/live", s.url), stop.clone());
        load.push(tokio::spawn(async move {
            let (mut ok, mut failed) = (0, 0);
            while !stop.load(Ordering::Relaxed) {
                match get(&http, &url).await.0 {
                    200 => ok += 1,
                    _ => failed += 1,
                }
            }
            (ok, failed)
        }));
    }
    // Time passing is the point here: the load runs for a while before, between and after the swap
    // and the rollback.
    tokio::time::sleep(Duration::from_millis(200)).await;
    s.registry.push(PluginKind::Router, "live", Some("random"), shoal_artifacts::RANDOM, true).await.expect("swap");
    tokio::time::sleep(Duration::from_millis(200)).await;
    s.registry.rollback(PluginKind::Router, "live").await.expect("rollback");
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    let (mut ok, mut failed) = (0, 0);
    for h in load {
        let (o, f) = h.await.expect("join");
        ok += o;
        failed += f;
    }
    assert!(ok > 50, "only {ok} requests went through");
    assert_eq!(failed, 0, "requests failed during the swap");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_stream_through_and_prefixes_can_be_stripped() {
    let s = setup(GatewayConfig::default()).await;
    let up = Upstream::start("a", Duration::ZERO).await;
    register(&s.discovery, "files", &up, 1);
    s.routes
        .put(Route { strip_prefix: true, ..route("files", "files", "round-robin", "/files") })
        .await
        .expect("route");
    let http = reqwest::Client::new();
    let (status, body) = get(&http, &format!("{}/files/a/b?q=1", s.url)).await;
    assert_eq!((status, body.as_str()), (200, "a /a/b"));
    // 8 MiB up and back, in chunks.
    let chunk = Bytes::from(vec![7u8; 64 << 10]);
    let stream = futures::stream::iter((0..128).map(move |_| Ok::<_, std::io::Error>(chunk.clone())));
    let r = http
        .post(format!("{}/files/echo", s.url))
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .expect("upload");
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.bytes().await.expect("body").len(), 128 * (64 << 10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_shutdown_the_request_in_flight_finishes_then_the_gateway_stops_accepting() {
    let dir = tempfile::tempdir().expect("tempdir");
    let runtime = Runtime::new(RuntimeConfig::default()).expect("runtime");
    let (registry, _registry_events) =
        Registry::open(&dir.path().join("registry"), runtime, RegistryConfig::default()).expect("registry");
    for &(kind, name, bytes) in shoal_artifacts::DEFAULT_PLUGINS {
        if kind == "router" {
            registry.push(PluginKind::Router, name, Some("1"), bytes, true).await.expect("push router");
        }
    }
    let discovery = Arc::new(Discovery::default());
    let routes = Arc::new(Routes::in_memory());
    let upstream = Upstream::start("a", Duration::ZERO).await;
    register(&discovery, "web", &upstream, 1);
    routes.put(route("web", "web", "round-robin", "/")).await.expect("route");
    let config = GatewayConfig { workers: 2, ..GatewayConfig::default() };
    let gateway = Gateway::new(routes, discovery, registry, config, None);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(gateway.serve(listener, async move {
        let _ = stopped.await;
    }));

    let http = reqwest::Client::new();
    assert_eq!(get(&http, &format!("{url}/ready")).await, (200, "a /ready".to_owned()));
    // `/slow` takes 3 s upstream; stop the gateway while it is on its way.
    let in_flight = tokio::spawn({
        let (http, url) = (http.clone(), url.clone());
        async move { get(&http, &format!("{url}/slow")).await }
    });
    eventually("the /slow request to reach the upstream", Duration::from_secs(10), || {
        std::future::ready((upstream.hits.load(Ordering::SeqCst) >= 2).then_some(()))
    })
    .await;
    stop.send(()).expect("stop");
    assert_eq!(in_flight.await.expect("join"), (200, "a /slow".to_owned()), "the request in flight was cut");
    tokio::time::timeout(Duration::from_secs(5), serving)
        .await
        .expect("the gateway stopped after its last request")
        .expect("join");
    let refused = reqwest::Client::new().get(format!("{url}/after")).send().await;
    assert!(refused.is_err(), "a stopped gateway still answered: {refused:?}");
    assert_eq!(upstream.hits.load(Ordering::SeqCst), 2, "/ready and /slow only");
}
