//! Issue 25: what API clients rely on across every endpoint. One error shape,
//! `{"error": {"code", "message"}}`, also for what the frameworks answer; an SSE client that
//! reconnects with `Last-Event-ID` gets the events it missed, in order, then the live ones (and
//! an `event: gap` when the id is not one this node can resume from); every event's `source`
//! names the role and node that emitted it.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

use super::Dev;
use super::ha::Masters;
use super::tasks::{http, http_with_head};

/// The error of an answer: (code, message); fails unless the body has exactly the one shape.
fn error_of(status: u16, body: &str) -> (String, String) {
    let v: serde_json::Value =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("{status}: not JSON ({e}): {body:?}"));
    let (Some(code), Some(message)) = (v["error"]["code"].as_str(), v["error"]["message"].as_str()) else {
        panic!("{status}: not the API's error shape: {body}");
    };
    assert_eq!(v.as_object().map(|o| o.len()), Some(1), "nothing beside `error`: {body}");
    assert!(!message.is_empty(), "{body}");
    (code.to_owned(), message.to_owned())
}

#[test]
fn every_error_answer_has_the_one_shape_frameworks_included() {
    let dev = Dev::start(None);
    let bad_app =
        r#"{"id": "odd", "cmd": "true", "cpus": 0.1, "mem": 16, "constraints": [["@hostname", "SOMETIMES"]]}"#;
    let cases: [(&str, &str, &str, u16, &str); 7] = [
        ("GET", "/v1/apps/nope", "", 404, "not_found"),
        ("PUT", "/v1/apps/odd", bad_app, 400, "bad_request"),
        ("PUT", "/v1/apps/odd", "{not json", 400, "bad_request"),
        ("GET", "/v1/jobs/a/b/c", "", 404, "not_found"),
        ("GET", "/v1/frameworks/service/nowhere", "", 404, "not_found"),
        ("GET", "/v1/nowhere", "", 404, "not_found"),
        ("GET", "/v1/kv/bad%20ns/k", "", 400, "invalid_namespace"),
    ];
    for (method, path, body, status, code) in cases {
        let (got, answer) = http(&dev.api, &dev.token, method, path, body);
        assert_eq!(got, status, "{method} {path}: {answer}");
        let (got_code, message) = error_of(got, &answer);
        assert_eq!(got_code, code, "{method} {path}: {answer}");
        if path == "/v1/apps/odd" && body.contains("SOMETIMES") {
            assert!(message.contains("SOMETIMES"), "the framework's own message is kept: {message}");
        }
    }
    // A framework's 405 keeps its Allow header, in the same shape.
    let (status, head, body) = http_with_head(&dev.api, &dev.token, "PATCH", "/v1/frameworks/service/apps", "");
    assert_eq!(status, 405, "{body}");
    assert!(head.to_ascii_lowercase().contains("\r\nallow: "), "{head}");
    assert_eq!(error_of(status, &body).0, "method_not_allowed");
    // And the document says so: every framework error answer is the host's ErrorBody.
    let (_, doc) = http(&dev.api, &dev.token, "GET", "/v1/openapi.json", "");
    let doc: serde_json::Value = serde_json::from_str(&doc).expect("JSON");
    let put = &doc["paths"]["/v1/apps/{id}"]["put"]["responses"]["400"]["content"]["application/json"]["schema"];
    assert_eq!(put["$ref"], "#/components/schemas/ErrorBody", "{put}");
}

/// An open SSE stream of the API.
struct Sse(BufReader<TcpStream>);

impl Sse {
    fn open(dev: &Dev, path: &str, last_event_id: Option<&str>) -> Sse {
        Self::open_at(&dev.api, &dev.token, path, last_event_id)
    }

    fn open_at(api: &str, token: &str, path: &str, last_event_id: Option<&str>) -> Sse {
        let addr = api.trim_start_matches("http://");
        let mut conn = TcpStream::connect(addr).expect("connect");
        conn.set_read_timeout(Some(Duration::from_secs(20))).expect("timeout");
        let resume = last_event_id.map(|id| format!("Last-Event-ID: {id}\r\n")).unwrap_or_default();
        write!(conn, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n{resume}\r\n")
            .expect("send");
        let mut reader = BufReader::new(conn);
        let mut line = String::new();
        reader.read_line(&mut line).expect("status line");
        assert!(line.starts_with("HTTP/1.1 200"), "{path}: {line}");
        while line != "\r\n" {
            line.clear();
            reader.read_line(&mut line).expect("header");
        }
        Sse(reader)
    }

    /// The next event: (name, id, data). Chunk-size lines of the chunked body are skipped.
    fn next(&mut self) -> (String, String, String) {
        let (mut name, mut id, mut data) = (String::new(), String::new(), String::new());
        loop {
            let mut line = String::new();
            assert!(self.0.read_line(&mut line).expect("an event in time") > 0, "the stream ended");
            let line = line.trim_end_matches(['\r', '\n']);
            if let Some(v) = line.strip_prefix("event:") {
                name = v.trim().to_owned();
            } else if let Some(v) = line.strip_prefix("id:") {
                id = v.trim().to_owned();
            } else if let Some(v) = line.strip_prefix("data:") {
                data = v.trim().to_owned();
            } else if line.is_empty() && !data.is_empty() {
                return (name, id, data);
            }
        }
    }

    /// The next event that is not a keep-alive, whose data is a CloudEvent about KV key `key`.
    fn next_about(&mut self, key: &str) -> (String, String, serde_json::Value) {
        loop {
            let (name, id, data) = self.next();
            let v: serde_json::Value = serde_json::from_str(&data).unwrap_or_default();
            if name == "gap" || v["data"]["key"] == key {
                return (name, id, v);
            }
        }
    }
}

fn put(dev: &Dev, key: &str) {
    let (status, body) = http(&dev.api, &dev.token, "PUT", &format!("/v1/kv/demo/{key}"), "v");
    assert_eq!(status, 200, "{body}");
}

#[test]
fn a_client_that_reconnects_with_last_event_id_misses_nothing() {
    let dev = Dev::start(None);
    let path = "/v1/events?subject=shoal.evt.kv.demo.%3E";
    let mut first = Sse::open(&dev, path, None);
    put(&dev, "k1");
    let (_, k1_id, k1) = first.next_about("k1");
    assert!(!k1_id.is_empty(), "events have ids");
    assert!(k1["source"].as_str().is_some_and(|s| s.starts_with("/shoal/store/")), "the store node named: {k1}");
    drop(first);

    // Written while the client was away.
    put(&dev, "k2");
    put(&dev, "k3");
    let mut again = Sse::open(&dev, path, Some(&k1_id));
    let (_, k2_id, _) = again.next_about("k2");
    let (_, k3_id, _) = again.next_about("k3");
    put(&dev, "k4");
    let (_, k4_id, _) = again.next_about("k4");
    let seq = |id: &str| id.rsplit_once('-').and_then(|(_, s)| s.parse::<u64>().ok()).expect("<epoch>-<seq>");
    assert!(seq(&k1_id) < seq(&k2_id) && seq(&k2_id) < seq(&k3_id) && seq(&k3_id) < seq(&k4_id), "in order");

    // An id this node never gave (another node's, or from before a restart): told, not hidden.
    let mut foreign = Sse::open(&dev, path, Some("12345-1"));
    let (name, _, gap) = foreign.next_about("none");
    assert_eq!(name, "gap", "{gap}");
    assert_eq!(gap["after"], "12345-1", "{gap}");

    // The KV watch resumes the same way.
    let watch = "/v1/kv/demo?prefix=w&watch=true";
    let mut w = Sse::open(&dev, watch, None);
    put(&dev, "w1");
    let (_, w1_id, _) = w.next();
    drop(w);
    put(&dev, "w2");
    let mut w = Sse::open(&dev, watch, Some(&w1_id));
    let (name, _, data) = w.next();
    assert!(name == "put" && data.contains("\"key\":\"w2\""), "{name} {data}");

    // Events of the API name the role and node: `/shoal/dev/<node>/api`.
    let mut apps = Sse::open(&dev, "/v1/events?subject=shoal.evt.app.%3E", None);
    let app = r#"{"id": "named", "cmd": "sleep 1", "cpus": 0.1, "mem": 16, "instances": 0}"#;
    let (status, body) = http(&dev.api, &dev.token, "PUT", "/v1/apps/named", app);
    assert!(status < 300, "{status} {body}");
    let (_, _, data) = apps.next();
    let v: serde_json::Value = serde_json::from_str(&data).expect("JSON");
    let source = v["source"].as_str().unwrap_or_default();
    assert!(source.starts_with("/shoal/dev/") && source.ends_with("/api"), "{v}");
}

/// Deploys app `id` (one sleeping task) through master `i`.
fn deploy(c: &Masters, i: usize, id: &str) {
    let app = format!(r#"{{"id": "{id}", "cmd": "exec sleep 600", "cpus": 0.1, "mem": 16, "instances": 1}}"#);
    let (status, body) = http(c.api(i), &c.token, "PUT", &format!("/v1/apps/{id}"), &app);
    assert!(status < 300, "deploy {id} through m{}: {status} {body}", i + 1);
}

/// The next app event's (app id, SSE id).
fn next_app(stream: &mut Sse) -> (String, String) {
    loop {
        let (name, id, data) = stream.next();
        assert_ne!(name, "gap", "no gap: {data}");
        let v: serde_json::Value = serde_json::from_str(&data).unwrap_or_default();
        if let Some(app) = v["data"]["id"].as_str() {
            return (app.to_owned(), id);
        }
    }
}

#[test]
fn an_event_stream_resumes_on_another_master_after_a_failover() {
    let mut c = Masters::start();
    let (leader, _) = c.leader("a first leader");
    let path = "/v1/events?subject=shoal.evt.app.%3E";
    let mut first = Sse::open_at(c.api(leader), &c.token, path, None);
    deploy(&c, leader, "before");
    let (app, seen) = next_app(&mut first);
    assert_eq!(app, "before");
    drop(first);

    // The leader dies; the next one takes writes; the client comes back to another master.
    c.masters[leader].take().expect("leader").process.kill_9();
    let (next, _) = c.leader("a new leader");
    deploy(&c, next, "during");
    let other = c.live().into_iter().find(|i| *i != next).expect("a standby");
    let mut again = Sse::open_at(c.api(other), &c.token, path, Some(&seen));
    assert_eq!(next_app(&mut again).0, "during", "the event missed while away, from another master");
    deploy(&c, next, "after");
    assert_eq!(next_app(&mut again).0, "after", "then the live ones");
}
