//! The HTTP API over real HTTP on loopback, with a real registry (RocksDB) and the in-process bus.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use reqwest::StatusCode;
use serde_json::Value;
use shoal_abi::{AnyPlugin, Endpoint, PluginKind, RouteRequest, RouteTable};
use shoal_api::{AppState, Auth, Scope};
use shoal_bus::{LocalBus, SharedBus};
use shoal_registry::{Registry, RegistryConfig};
use shoal_runtime::{Runtime, RuntimeConfig};

mod kv;
mod replicated;
mod scopes;

const ADMIN: &str = "admin-token-for-tests";

/// Runs its closure if the test panics while the guard lives: a wait that gives up can then say
/// what it saw last (`eventually` only knows what it was waiting for).
struct OnPanic<F: FnMut()>(F);

impl<F: FnMut()> Drop for OnPanic<F> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            (self.0)();
        }
    }
}

struct Server {
    url: String,
    http: reqwest::Client,
    registry: Arc<Registry>,
    auth: Arc<Auth>,
    /// Milliseconds added to the wall clock the token table reads (tokens' expiry).
    clock_offset: Arc<std::sync::atomic::AtomicU64>,
    discovery: Arc<shoal_discovery::Discovery>,
    store: Arc<shoal_store::client::StoreClient>,
    _dir: tempfile::TempDir,
    _service: shoal_store::service::StoreService,
    _store_dir: tempfile::TempDir,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl Server {
    async fn start() -> Server {
        Self::start_with(true).await
    }

    /// A server with a 4-shard state store, or with none.
    async fn start_with(with_store: bool) -> Server {
        let dir = tempfile::tempdir().expect("tempdir");
        let store_dir = tempfile::tempdir().expect("tempdir");
        let runtime =
            Runtime::new(RuntimeConfig { max_component_size: 4 << 20, max_instances: 50, ..RuntimeConfig::default() })
                .expect("runtime");
        let (registry, mut events) = Registry::open(dir.path(), runtime, RegistryConfig::default()).expect("registry");
        let bus: SharedBus = Arc::new(LocalBus::new());
        // Forward registry events to the bus as the node does.
        let forward_bus = bus.clone();
        tokio::spawn(async move {
            while let Some(e) = events.recv().await {
                let action = shoal_bus::subject::PluginAction::ALL
                    .into_iter()
                    .find(|a| a.as_str() == e.action)
                    .expect("known action");
                let subject = shoal_bus::subject::plugin_event(e.kind.as_str(), &e.name, action);
                let event = shoal_bus::event::CloudEvent::new(
                    "/shoal/test",
                    action.event_type(),
                    format!("plugins/{}/{}", e.kind, e.name),
                    e.data,
                );
                let _ = shoal_bus::event::publish_event(forward_bus.as_ref(), &subject, &event).await;
            }
        });
        // The master's state as the node keeps it: tokens, routes and the shard map in tables.
        let tables =
            [shoal_api::auth::TOKENS_TABLE, shoal_gateway::routes::ROUTES_TABLE, shoal_store::coordinator::STORE_TABLE];
        let master_state = shoal_state::StateDb::open_local(&store_dir.path().join("state"), &tables).expect("state");
        let clock_offset = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let offset = clock_offset.clone();
        let auth = Auth::new(ADMIN)
            .with_clock(Arc::new(move || {
                let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("after 1970");
                now.as_millis() as u64 + offset.load(std::sync::atomic::Ordering::SeqCst)
            }))
            .backed_by(master_state.clone())
            .expect("tokens");
        let discovery = Arc::new(shoal_discovery::Discovery::default());
        let routes = shoal_gateway::Routes::on_state(master_state.clone()).expect("routes");
        // The store as `shoal dev` runs it: a coordinator and one node of 4 shards, on the bus.
        let store = shoal_store::service::start(
            bus.clone(),
            shoal_store::service::ServiceOptions {
                node: Some(shoal_store::service::NodeOptions {
                    id: "local".into(),
                    dir: store_dir.path().join("store"),
                    durability: shoal_store::Durability::Wal,
                    sweep_interval: Duration::from_millis(200),
                    replication: None,
                }),
                coordinator: Some(shoal_store::coordinator::CoordinatorConfig {
                    state: master_state,
                    initial_shards: 4,
                    auto_scale_out: false,
                    source: "/test".into(),
                    term: 1,
                    replicas: 1,
                }),
            },
        )
        .await
        .expect("store");
        let journal = shoal_api::journal::Journal::start(bus.clone(), None).await.expect("the event journal");
        let state = AppState {
            registry: registry.clone(),
            bus,
            journal,
            auth: auth.clone(),
            max_upload: 4 << 20,
            store: with_store.then(|| store.client.clone()),
            store_coordinator: shoal_api::leading(with_store.then(|| store.coordinator.clone()).flatten()),
            discovery: Some(discovery.clone()),
            routes: Some(routes.clone()),
            master: shoal_api::leading(None),
            artifacts: None,
            leadership: None,
            streams: shoal_api::streams::Streams::new(shoal_api::streams::DEFAULT_PER_TOKEN),
            max_query_time: std::time::Duration::from_secs(300),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(shoal_api::serve(
            listener,
            state,
            async move {
                let _ = stopped.await;
            },
            shoal_gateway::edge::EdgeLimits::default(),
        ));
        Server {
            url,
            http: reqwest::Client::new(),
            registry,
            auth,
            clock_offset,
            discovery,
            store: store.client.clone(),
            _service: store,
            _dir: dir,
            _store_dir: store_dir,
            _stop: stop,
        }
    }

    async fn req(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Vec<u8>>,
    ) -> (StatusCode, Value) {
        let mut request = self.http.request(method, format!("{}{path}", self.url));
        if let Some(t) = token {
            request = request.bearer_auth(t);
        }
        if let Some(b) = body {
            request = request.body(b);
        }
        let response = request.send().await.expect("send");
        let status = response.status();
        let text = response.text().await.expect("body");
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.req(reqwest::Method::GET, path, Some(ADMIN), None).await
    }

    async fn post(&self, path: &str, body: &[u8]) -> (StatusCode, Value) {
        self.req(reqwest::Method::POST, path, Some(ADMIN), Some(body.to_vec())).await
    }
}

fn assert_error(got: &(StatusCode, Value), status: StatusCode, code: &str) {
    assert_eq!(got.0, status, "{:?}", got.1);
    assert_eq!(got.1["error"]["code"], code, "{:?}", got.1);
    assert!(got.1["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{:?}", got.1);
}

#[tokio::test]
async fn tokens_and_scopes_guard_every_endpoint() {
    let s = Server::start().await;
    assert_error(
        &s.req(reqwest::Method::GET, "/v1/plugins", None, None).await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    );
    assert_error(
        &s.req(reqwest::Method::GET, "/v1/plugins", Some("nope"), None).await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    );
    let (status, body) =
        s.req(reqwest::Method::POST, "/v1/tokens", Some(ADMIN), Some(br#"{"scope":"operator"}"#.to_vec())).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let operator = body["token"].as_str().expect("token").to_owned();
    assert_eq!(s.req(reqwest::Method::GET, "/v1/plugins", Some(&operator), None).await.0, StatusCode::OK);
    let push = s
        .req(
            reqwest::Method::POST,
            "/v1/plugins/router/rr",
            Some(&operator),
            Some(shoal_artifacts::ROUND_ROBIN.to_vec()),
        )
        .await;
    assert_error(&push, StatusCode::FORBIDDEN, "forbidden");
    assert!(s.registry.list().expect("list").is_empty(), "a forbidden push stored something");
    assert_error(
        &s.req(reqwest::Method::POST, "/v1/tokens", Some(&operator), Some(br#"{"scope":"admin"}"#.to_vec())).await,
        StatusCode::FORBIDDEN,
        "forbidden",
    );
    assert_error(
        &s.req(reqwest::Method::POST, "/v1/tokens", Some(ADMIN), Some(br#"{"scope":"root"}"#.to_vec())).await,
        StatusCode::BAD_REQUEST,
        "bad_request",
    );
    assert_error(
        &s.req(reqwest::Method::POST, "/v1/tokens", Some(ADMIN), Some(b"{".to_vec())).await,
        StatusCode::BAD_REQUEST,
        "bad_request",
    );
    s.auth.insert("app-token", Scope::App("shop".into())).await.expect("insert");
    assert_eq!(s.req(reqwest::Method::GET, "/v1/plugins", Some("app-token"), None).await.0, StatusCode::OK);
    // Open endpoints.
    assert_eq!(s.req(reqwest::Method::GET, "/healthz", None, None).await.0, StatusCode::OK);
    assert_error(&s.get("/v1/nowhere").await, StatusCode::NOT_FOUND, "not_found");
}

#[tokio::test]
async fn plugin_lifecycle_over_http() {
    let s = Server::start().await;
    let (status, v1) = s.post("/v1/plugins/router/rr", shoal_artifacts::ROUND_ROBIN).await;
    assert_eq!(status, StatusCode::CREATED, "{v1}");
    assert_eq!(v1["version"], "v1");
    assert_eq!(v1["digest"], shoal_runtime::cache::digest(shoal_artifacts::ROUND_ROBIN));
    let (status, v2) = s.post("/v1/plugins/router/rr?version=2.0.0", shoal_artifacts::WEIGHTED_ROUND_ROBIN).await;
    assert_eq!(status, StatusCode::CREATED, "{v2}");

    let (status, list) = s.get("/v1/plugins").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["plugins"][0]["name"], "rr");
    assert_eq!(list["plugins"][0]["active"], "v1");
    assert_eq!(list["plugins"][0]["versions"].as_array().expect("versions").len(), 2);

    let (status, body) = s.post("/v1/plugins/router/rr/activate", br#"{"version":"2.0.0"}"#).await;
    assert_eq!((status, &body["version"]), (StatusCode::OK, &Value::from("2.0.0")), "{body}");
    let (_, shown) = s.get("/v1/plugins/router/rr").await;
    assert_eq!((shown["active"].clone(), shown["history"].clone()), (Value::from("2.0.0"), serde_json::json!(["v1"])));
    let (status, body) = s.post("/v1/plugins/router/rr/rollback", b"").await;
    assert_eq!((status, &body["version"]), (StatusCode::OK, &Value::from("v1")), "{body}");
    assert_error(&s.post("/v1/plugins/router/rr/rollback", b"").await, StatusCode::CONFLICT, "nothing_to_roll_back");
    assert_error(
        &s.post("/v1/plugins/router/rr/activate", br#"{"version":"9"}"#).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    assert_error(
        &s.post("/v1/plugins/router/rr/activate", br#"{"versio":"9"}"#).await,
        StatusCode::BAD_REQUEST,
        "bad_request",
    );

    let bytes = s
        .http
        .get(format!("{}/v1/plugins/router/rr/versions/2.0.0/component", s.url))
        .bearer_auth(ADMIN)
        .send()
        .await
        .expect("get");
    assert_eq!(bytes.bytes().await.expect("bytes").as_ref(), shoal_artifacts::WEIGHTED_ROUND_ROBIN);

    assert_error(
        &s.req(reqwest::Method::DELETE, "/v1/plugins/router/rr?version=v1", Some(ADMIN), None).await,
        StatusCode::CONFLICT,
        "version_active",
    );
    assert_eq!(
        s.req(reqwest::Method::DELETE, "/v1/plugins/router/rr?version=2.0.0", Some(ADMIN), None).await.0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        s.req(reqwest::Method::DELETE, "/v1/plugins/router/rr", Some(ADMIN), None).await.0,
        StatusCode::NO_CONTENT
    );
    assert_error(&s.get("/v1/plugins/router/rr").await, StatusCode::NOT_FOUND, "not_found");
}

#[tokio::test]
async fn bad_uploads_get_a_clear_4xx_and_change_nothing() {
    let s = Server::start().await;
    assert_eq!(s.post("/v1/plugins/router/rr?version=1", shoal_artifacts::ROUND_ROBIN).await.0, StatusCode::CREATED);
    let before = s.get("/v1/plugins").await;
    let big = vec![0u8; (4 << 20) + 4096];
    let cases: Vec<(&str, Vec<u8>, StatusCode, &str)> = vec![
        ("/v1/plugins/router/x", b"not wasm at all".to_vec(), StatusCode::BAD_REQUEST, "not_wasm"),
        ("/v1/plugins/router/x", b"\0asm\x01\0\0\0".to_vec(), StatusCode::BAD_REQUEST, "not_a_component"),
        (
            "/v1/plugins/router/x",
            shoal_artifacts::ROUND_ROBIN[..1000].to_vec(),
            StatusCode::BAD_REQUEST,
            "invalid_component",
        ),
        (
            "/v1/plugins/allocator/x",
            shoal_artifacts::ROUND_ROBIN.to_vec(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "wrong_world",
        ),
        (
            "/v1/plugins/router/x",
            shoal_artifacts::FUTURE_VERSION.to_vec(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "incompatible_version",
        ),
        ("/v1/plugins/scheduler/x", shoal_artifacts::ROUND_ROBIN.to_vec(), StatusCode::BAD_REQUEST, "unknown_kind"),
        (
            "/v1/plugins/router/rr?version=1",
            shoal_artifacts::RANDOM.to_vec(),
            StatusCode::CONFLICT,
            "duplicate_version",
        ),
        ("/v1/plugins/router/x", big, StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
        ("/v1/plugins/router/x", Vec::new(), StatusCode::BAD_REQUEST, "bad_request"),
        (
            "/v1/plugins/router/Not_A_Name",
            shoal_artifacts::ROUND_ROBIN.to_vec(),
            StatusCode::BAD_REQUEST,
            "invalid_name",
        ),
        (
            "/v1/plugins/router/x?activate=maybe",
            shoal_artifacts::ROUND_ROBIN.to_vec(),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
    ];
    for (path, body, status, code) in cases {
        let got = s.post(path, &body).await;
        assert_error(&got, status, code);
    }
    assert_eq!(s.get("/v1/plugins").await, before, "a refused upload changed the registry");
}

async fn next_event(
    stream: &mut (impl futures::Stream<Item = reqwest::Result<bytes::Bytes>> + Unpin),
    buf: &mut String,
) -> Value {
    loop {
        if let Some(pos) = buf.find("\n\n") {
            let frame: String = buf.drain(..pos + 2).collect();
            if let Some(data) = frame.lines().find_map(|l| l.strip_prefix("data:")) {
                return serde_json::from_str(data.trim()).expect("event JSON");
            }
            continue;
        }
        let chunk = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .expect("event in time")
            .expect("stream open")
            .expect("chunk");
        buf.push_str(&String::from_utf8_lossy(&chunk));
    }
}

#[tokio::test]
async fn events_stream_as_cloudevents_over_sse() {
    let s = Server::start().await;
    assert_error(&s.get("/v1/events?subject=shoal.evt..x").await, StatusCode::BAD_REQUEST, "bad_request");
    assert_error(&s.get("/v1/events?subject=shoal.ctl.>").await, StatusCode::BAD_REQUEST, "bad_request");
    let response = s
        .http
        .get(format!("{}/v1/events?subject=shoal.evt.plugin.router.*.activated", s.url))
        .bearer_auth(ADMIN)
        .send()
        .await
        .expect("sse");
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers()["content-type"].to_str().expect("ct").starts_with("text/event-stream"));
    let mut stream = response.bytes_stream();
    // The subscription is on the bus already: the handler subscribes before it answers, and the
    // response's headers are in.
    assert_eq!(s.post("/v1/plugins/router/rr", shoal_artifacts::ROUND_ROBIN).await.0, StatusCode::CREATED);
    let mut buf = String::new();
    let event = next_event(&mut stream, &mut buf).await;
    assert_eq!(event["specversion"], "1.0");
    assert_eq!(event["type"], "io.shoal.plugin.activated");
    assert_eq!(event["subject"], "plugins/router/rr");
    assert_eq!(event["data"]["version"], "v1");
    for field in ["id", "source", "time"] {
        assert!(event[field].as_str().is_some_and(|v| !v.is_empty()), "missing {field}: {event}");
    }
}

#[tokio::test]
async fn openapi_and_metrics() {
    let s = Server::start().await;
    let (status, doc) = s.req(reqwest::Method::GET, "/v1/openapi.json", None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")), "{doc}");
    for path in
        ["/v1/plugins", "/v1/plugins/{kind}/{name}", "/v1/plugins/{kind}/{name}/activate", "/v1/events", "/v1/tokens"]
    {
        assert!(doc["paths"][path].is_object(), "{path} missing from the OpenAPI document");
    }
    assert_eq!(s.post("/v1/plugins/router/lc", shoal_artifacts::LEAST_CONNECTIONS).await.0, StatusCode::CREATED);
    let table = RouteTable {
        generation: 1,
        endpoints: (0..1)
            .map(|i| Endpoint {
                id: format!("e{i}"),
                address: format!("127.0.0.1:{}", 9000 + i),
                weight: 1,
                labels: vec![],
                healthy: true,
            })
            .collect(),
    };
    for _ in 0..3 {
        s.registry
            .call(PluginKind::Router, "lc", |p| match p {
                AnyPlugin::Router(r) => shoal_abi::route(r, &table, &mut RouteRequest::default()),
                _ => unreachable!(),
            })
            .expect("active")
            .expect("call");
    }
    let text = s.http.get(format!("{}/metrics", s.url)).send().await.expect("metrics").text().await.expect("text");
    let line = text
        .lines()
        .find(|l| {
            l.starts_with("shoal_plugin_calls_total") && l.contains("name=\"lc\"") && l.contains("outcome=\"ok\"")
        })
        .unwrap_or_else(|| panic!("no call counter for lc in:\n{text}"));
    assert!(line.ends_with(" 3"), "{line}");
    assert!(text.contains("shoal_plugin_call_duration_seconds"), "{text}");
}

/// A bearer header.
fn bearer(token: &str) -> axum::http::HeaderMap {
    let mut h = axum::http::HeaderMap::new();
    h.insert(axum::http::header::AUTHORIZATION, format!("Bearer {token}").parse().expect("header"));
    h
}

#[tokio::test]
async fn issued_tokens_are_digests_in_the_state_and_a_restarted_table_knows_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = shoal_state::StateDb::open_local(dir.path(), &[shoal_api::auth::TOKENS_TABLE]).expect("state");
    let auth = Auth::new(ADMIN).backed_by(state.clone()).expect("open");
    auth.insert("shop-token", Scope::App("shop".into())).await.expect("insert");
    let table = state.scan(shoal_api::auth::TOKENS_TABLE, b"").expect("scan");
    assert_eq!(table.len(), 1, "one key per issued token, none for the admin token");
    let stored = format!("{table:?}");
    assert!(!stored.contains("shop-token") && !stored.contains(ADMIN), "tokens must be stored as digests: {stored}");

    // What a restarted master builds from the same state.
    let again = Auth::new(ADMIN).backed_by(state.clone()).expect("reopen");
    assert_eq!(again.scope(&bearer("shop-token")).expect("known after restart"), Scope::App("shop".into()));
    assert_eq!(again.scope(&bearer(ADMIN)).expect("admin"), Scope::Admin);
    assert!(again.scope(&bearer("other")).is_err());
    // Another admin token replaces the old one.
    let rotated = Auth::new("new-admin").backed_by(state.clone()).expect("reopen with another admin token");
    assert!(rotated.scope(&bearer(ADMIN)).is_err(), "the old admin token must not survive rotation");
    rotated.set_admin_token("newer-admin");
    assert!(rotated.scope(&bearer("new-admin")).is_err(), "a new admin token replaces the old one at once");
    assert_eq!(rotated.scope(&bearer("newer-admin")).expect("admin"), Scope::Admin);

    // A corrupt entry is refused, not half-loaded.
    let mut batch = shoal_state::Batch::new();
    batch.put(shoal_api::auth::TOKENS_TABLE, "0".repeat(64), "{not json");
    state.commit(batch).await.expect("commit");
    let err = Auth::new(ADMIN).backed_by(state).err().expect("a corrupt token table is an error");
    assert!(err.to_string().contains(&"0".repeat(64)), "{err}");
}

async fn put(s: &Server, path: &str, body: &str) -> (StatusCode, Value) {
    s.req(reqwest::Method::PUT, path, Some(ADMIN), Some(body.as_bytes().to_vec())).await
}

#[tokio::test]
async fn services_register_watch_block_and_refuse_bad_input() {
    let s = Server::start().await;
    let (status, v) =
        put(&s, "/v1/services/web/instances/w1", r#"{"address": "127.0.0.1:8081", "ttl_seconds": 30}"#).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let index = v["index"].as_u64().expect("index");

    // A blocking query returns when the index passes, not before.
    let url = format!("{}/v1/services/web?index={index}&wait=20s", s.url);
    let blocked = tokio::spawn({
        let http = s.http.clone();
        async move {
            let r = http.get(url).bearer_auth(ADMIN).send().await.expect("blocking query");
            let header: u64 = r.headers()["x-shoal-index"].to_str().expect("ascii").parse().expect("index");
            (header, r.json::<Value>().await.expect("json"))
        }
    });
    // Time passing is the point here: the blocking query must not answer while nothing changes.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!blocked.is_finished(), "the blocking query answered without a change");
    let (status, _) = put(&s, "/v1/services/web/instances/w2", r#"{"address": "127.0.0.1:8082", "weight": 3}"#).await;
    assert_eq!(status, StatusCode::OK);
    let (header, body) = tokio::time::timeout(Duration::from_secs(10), blocked).await.expect("woke up").expect("join");
    assert!(header > index);
    assert_eq!(body["instances"].as_array().expect("instances").len(), 2);

    let (status, v) = s.get("/v1/services").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(v["services"][0]["name"], "web");
    assert_eq!(v["services"][0]["passing"], 2);
    let (status, _) = s.req(reqwest::Method::PUT, "/v1/services/web/instances/w1/heartbeat", Some(ADMIN), None).await;
    assert_eq!(status, StatusCode::OK);

    // Bad input: 4xx that says why, nothing registered.
    let before = s.get("/v1/services/web").await.1["index"].clone();
    for (path, body, code) in [
        ("/v1/services/Web!/instances/x", r#"{"address": "h:1"}"#, StatusCode::BAD_REQUEST),
        ("/v1/services/web/instances/x", r#"{"address": "no-port"}"#, StatusCode::BAD_REQUEST),
        ("/v1/services/web/instances/x", r#"{"address": "h:1", "ttl_seconds": 0}"#, StatusCode::BAD_REQUEST),
        ("/v1/services/web/instances/x", r#"{"address": "h:1", "bogus": 1}"#, StatusCode::BAD_REQUEST),
        ("/v1/services/web/instances/x", "{not json", StatusCode::BAD_REQUEST),
        (
            "/v1/services/web/instances/x",
            r#"{"address": "h:1", "check": {"type": "http", "path": "x"}}"#,
            StatusCode::BAD_REQUEST,
        ),
        ("/v1/services/web/instances/x", r#"{"address": "h:1", "check": {"type": "udp"}}"#, StatusCode::BAD_REQUEST),
    ] {
        let (status, v) = put(&s, path, body).await;
        assert_eq!(status, code, "{path} {body}: {v}");
        assert!(v["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    }
    // A check's type is its name, never the index serde would take for one (0: `http`).
    let (status, v) = put(&s, "/v1/services/web/instances/x", r#"{"address": "h:1", "check": {"type": 0}}"#).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    let message = v["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("a check's `type` must be `http`, `tcp`, `command` or `wasm`, not 0"), "{v}");
    assert_eq!(s.get("/v1/services/web").await.1["index"], before);
    let (status, _) = s.req(reqwest::Method::DELETE, "/v1/services/web/instances/nope", Some(ADMIN), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // An app token may read, not register.
    s.auth.insert("app-reader", Scope::App("shop".into())).await.expect("insert");
    let (status, _) = s
        .req(
            reqwest::Method::PUT,
            "/v1/services/web/instances/z",
            Some("app-reader"),
            Some(br#"{"address": "h:1"}"#.to_vec()),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // Routes.
    let (status, v) =
        put(&s, "/v1/routes/web", r#"{"service": "web", "path_prefix": "/api", "router": "source-hash"}"#).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["timeout_ms"], 30000);
    let (status, v) = put(&s, "/v1/routes/bad", r#"{"service": "web", "path_prefix": "api"}"#).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    let (status, v) = s.get("/v1/routes").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(v["routes"].as_array().expect("routes").len(), 1);
    let (status, _) = s.req(reqwest::Method::DELETE, "/v1/routes/web", Some(ADMIN), None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = s.req(reqwest::Method::DELETE, "/v1/routes/web", Some(ADMIN), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}
