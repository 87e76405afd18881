//! `/v1/kv` over real HTTP with a real 4-shard store: versions, compare-and-set, TTL, listings,
//! batches, namespace isolation by token, and refusals that write nothing.

use std::cell::RefCell;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use shoal_testkit::eventually;

use super::{ADMIN, OnPanic, Server, assert_error};

/// A request with a raw body; returns status, the `X-Shoal-Version` header and the body.
async fn raw(s: &Server, method: Method, path: &str, token: &str, body: &[u8]) -> (StatusCode, Option<u64>, Vec<u8>) {
    let response = s
        .http
        .request(method, format!("{}{path}", s.url))
        .bearer_auth(token)
        .body(body.to_vec())
        .send()
        .await
        .expect("send");
    let status = response.status();
    let version = response.headers().get("x-shoal-version").map(|v| v.to_str().expect("ascii").parse().expect("u64"));
    (status, version, response.bytes().await.expect("body").to_vec())
}

fn json_of(body: &[u8]) -> Value {
    serde_json::from_slice(body).unwrap_or(Value::Null)
}

/// Every live entry of `ns` straight from the store: (key, value, version).
async fn dump(s: &Server, ns: &str) -> Vec<(String, Vec<u8>, u64)> {
    let page = s.store.list(ns, "", None, 1000).await.expect("list");
    page.entries.into_iter().map(|e| (e.key, e.value, e.version)).collect()
}

#[tokio::test]
async fn kv_get_put_delete_with_versions_and_cas() {
    let s = Server::start().await;
    let (status, version, body) = raw(&s, Method::PUT, "/v1/kv/shop/cart/42", ADMIN, b"\x00binary\xff").await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    let v1 = version.expect("version header");
    assert_eq!(json_of(&body), json!({ "key": "cart/42", "version": v1 }));
    let (status, version, body) = raw(&s, Method::GET, "/v1/kv/shop/cart/42", ADMIN, b"").await;
    assert_eq!((status, version, body.as_slice()), (StatusCode::OK, Some(v1), b"\x00binary\xff".as_slice()));

    // Compare-and-set.
    let path = format!("/v1/kv/shop/cart/42?version={v1}");
    let (status, v2, _) = raw(&s, Method::PUT, &path, ADMIN, b"two").await;
    assert_eq!(status, StatusCode::OK);
    assert!(v2.expect("version") > v1);
    assert_error(
        &s.req(Method::PUT, &path, Some(ADMIN), Some(b"stale".to_vec())).await,
        StatusCode::CONFLICT,
        "version_conflict",
    );
    assert_error(
        &s.req(Method::PUT, "/v1/kv/shop/cart/42?version=0", Some(ADMIN), Some(b"create".to_vec())).await,
        StatusCode::CONFLICT,
        "version_conflict",
    );
    assert_eq!(raw(&s, Method::GET, "/v1/kv/shop/cart/42", ADMIN, b"").await.2, b"two");
    // Create only if absent.
    assert_eq!(raw(&s, Method::PUT, "/v1/kv/shop/new?version=0", ADMIN, b"n").await.0, StatusCode::OK);

    // Percent-encoded keys round-trip.
    assert_eq!(raw(&s, Method::PUT, "/v1/kv/shop/a%20b%3Fc", ADMIN, b"q").await.0, StatusCode::OK);
    assert_eq!(s.store.get("shop", "a b?c").await.expect("get").expect("present").value, b"q");

    // Delete: CAS, then plain, then missing.
    assert_error(&s.req(Method::DELETE, &path, Some(ADMIN), None).await, StatusCode::CONFLICT, "version_conflict");
    let (status, version, _) = raw(&s, Method::DELETE, "/v1/kv/shop/cart/42", ADMIN, b"").await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert!(version.expect("version") > v2.expect("version"));
    assert_error(
        &s.req(Method::GET, "/v1/kv/shop/cart/42", Some(ADMIN), None).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    assert_error(
        &s.req(Method::DELETE, "/v1/kv/shop/cart/42", Some(ADMIN), None).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
}

#[tokio::test]
async fn kv_ttl_expires_entries() {
    let s = Server::start().await;
    assert_eq!(raw(&s, Method::PUT, "/v1/kv/shop/session?ttl=1", ADMIN, b"s").await.0, StatusCode::OK);
    assert_eq!(raw(&s, Method::PUT, "/v1/kv/shop/keep?ttl=3600", ADMIN, b"k").await.0, StatusCode::OK);
    let (_, list) = s.get("/v1/kv/shop").await;
    assert!(list["entries"][0]["expires_at_ms"].as_u64().is_some(), "{list}");
    eventually("the entry to expire", Duration::from_secs(10), || async {
        (raw(&s, Method::GET, "/v1/kv/shop/session", ADMIN, b"").await.0 == StatusCode::NOT_FOUND).then_some(())
    })
    .await;
    assert_eq!(raw(&s, Method::GET, "/v1/kv/shop/keep", ADMIN, b"").await.0, StatusCode::OK);
}

#[tokio::test]
async fn kv_listing_pages_across_shards() {
    let s = Server::start().await;
    for i in 0..30 {
        let path = format!("/v1/kv/shop/item/{i:02}");
        assert_eq!(raw(&s, Method::PUT, &path, ADMIN, format!("v{i}").as_bytes()).await.0, StatusCode::OK);
    }
    assert_eq!(raw(&s, Method::PUT, "/v1/kv/shop/other", ADMIN, b"x").await.0, StatusCode::OK);
    let mut keys = Vec::new();
    let mut cursor = String::new();
    loop {
        let (status, page) = s.get(&format!("/v1/kv/shop?prefix=item/&limit=7&cursor={cursor}")).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        for e in page["entries"].as_array().expect("entries") {
            keys.push(e["key"].as_str().expect("key").to_owned());
            let i: u32 = e["key"].as_str().expect("key")[5..].parse().expect("number");
            assert_eq!(e["value"], format!("v{i}"), "{e}");
            assert!(e["version"].as_u64().is_some_and(|v| v > 0));
        }
        match page["cursor"].as_str() {
            Some(c) => cursor = c.to_owned(),
            None => break,
        }
    }
    let expected: Vec<String> = (0..30).map(|i| format!("item/{i:02}")).collect();
    assert_eq!(keys, expected);
    assert_error(&s.get("/v1/kv/shop?cursor=zz").await, StatusCode::BAD_REQUEST, "bad_request");
    assert_error(&s.get("/v1/kv/shop?limit=0").await, StatusCode::BAD_REQUEST, "bad_request");
    assert_error(&s.get("/v1/kv/shop?limit=many").await, StatusCode::BAD_REQUEST, "bad_request");
    assert_error(&s.get("/v1/kv/shop?colour=red").await, StatusCode::BAD_REQUEST, "bad_request");
}

#[tokio::test]
async fn kv_batches_apply_all_or_nothing() {
    let s = Server::start().await;
    let batch = json!({ "ops": [
        { "op": "put", "key": "a", "value": "1" },
        { "op": "put", "key": "b", "value": "2", "version": 0 },
        { "op": "put", "key": "c", "value": "3", "ttl": 60 },
    ]});
    let (status, body) = s.post("/v1/kv/shop", batch.to_string().as_bytes()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["versions"].as_array().expect("versions").len(), 3);
    let a = body["versions"][0].as_u64().expect("version");
    let before = dump(&s, "shop").await;

    let refused: Vec<(Value, StatusCode, &str)> = vec![
        (
            json!({ "ops": [{ "op": "put", "key": "d", "value": "4" }, { "op": "put", "key": "b", "value": "x", "version": 0 }] }),
            StatusCode::CONFLICT,
            "version_conflict",
        ),
        (
            json!({ "ops": [{ "op": "put", "key": "d", "value": "4" }, { "op": "delete", "key": "missing" }] }),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            json!({ "ops": [{ "op": "put", "key": "d", "value": "4" }, { "op": "delete", "key": "d" }] }),
            StatusCode::BAD_REQUEST,
            "invalid_batch",
        ),
        (json!({ "ops": [] }), StatusCode::BAD_REQUEST, "invalid_batch"),
        (json!({ "ops": [{ "op": "put", "key": "", "value": "4" }] }), StatusCode::BAD_REQUEST, "invalid_key"),
        (
            json!({ "ops": [{ "op": "put", "key": "d", "value": "4", "ttl": 0 }] }),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (json!({ "ops": [{ "op": "merge", "key": "d" }] }), StatusCode::BAD_REQUEST, "bad_request"),
        (
            json!({ "ops": [{ "op": "put", "key": "d", "value": "4", "colour": "red" }] }),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            json!({ "ops": (0..=128).map(|i| json!({ "op": "put", "key": format!("k{i}"), "value": "v" })).collect::<Vec<_>>() }),
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
        ),
    ];
    for (batch, status, code) in refused {
        assert_error(&s.post("/v1/kv/shop", batch.to_string().as_bytes()).await, status, code);
    }
    assert_error(&s.post("/v1/kv/shop", b"{").await, StatusCode::BAD_REQUEST, "bad_request");
    assert_eq!(dump(&s, "shop").await, before, "a refused batch wrote something");

    let batch =
        json!({ "ops": [{ "op": "delete", "key": "a", "version": a }, { "op": "put", "key": "d", "value": "4" }] });
    assert_eq!(s.post("/v1/kv/shop", batch.to_string().as_bytes()).await.0, StatusCode::OK);
    let keys: Vec<String> = dump(&s, "shop").await.into_iter().map(|e| e.0).collect();
    assert_eq!(keys, ["b", "c", "d"]);
}

#[tokio::test]
async fn kv_bad_input_gets_a_clear_4xx_and_writes_nothing() {
    let s = Server::start().await;
    assert_eq!(raw(&s, Method::PUT, "/v1/kv/shop/a", ADMIN, b"1").await.0, StatusCode::OK);
    let before = dump(&s, "shop").await;
    let long_key = "k".repeat(shoal_store::MAX_KEY_LEN + 1);
    let big = vec![b'x'; shoal_store::MAX_VALUE_LEN + 1];
    let cases: Vec<(Method, String, Vec<u8>, StatusCode, &str)> = vec![
        (Method::PUT, "/v1/kv/Shop/a".into(), b"1".to_vec(), StatusCode::BAD_REQUEST, "invalid_namespace"),
        (
            Method::PUT,
            format!("/v1/kv/{}/a", "n".repeat(64)),
            b"1".to_vec(),
            StatusCode::BAD_REQUEST,
            "invalid_namespace",
        ),
        (Method::PUT, format!("/v1/kv/shop/{long_key}"), b"1".to_vec(), StatusCode::BAD_REQUEST, "invalid_key"),
        (Method::PUT, "/v1/kv/shop/a".into(), big, StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
        (Method::PUT, "/v1/kv/shop/a?ttl=0".into(), b"1".to_vec(), StatusCode::BAD_REQUEST, "bad_request"),
        (Method::PUT, "/v1/kv/shop/a?ttl=-5".into(), b"1".to_vec(), StatusCode::BAD_REQUEST, "bad_request"),
        (Method::PUT, "/v1/kv/shop/a?ttl=999999999999".into(), b"1".to_vec(), StatusCode::BAD_REQUEST, "invalid_ttl"),
        (Method::PUT, "/v1/kv/shop/a?version=x".into(), b"1".to_vec(), StatusCode::BAD_REQUEST, "bad_request"),
        (Method::PUT, "/v1/kv/shop/a?colour=red".into(), b"1".to_vec(), StatusCode::BAD_REQUEST, "bad_request"),
        (Method::DELETE, "/v1/kv/shop/a?version=x".into(), vec![], StatusCode::BAD_REQUEST, "bad_request"),
        (Method::GET, "/v1/kv/Shop/a".into(), vec![], StatusCode::BAD_REQUEST, "invalid_namespace"),
        (Method::GET, "/v1/kv/Shop".into(), vec![], StatusCode::BAD_REQUEST, "invalid_namespace"),
    ];
    for (method, path, body, status, code) in cases {
        let got = s.req(method.clone(), &path, Some(ADMIN), Some(body)).await;
        assert_eq!(got.0, status, "{method} {}: {:?}", &path[..path.len().min(60)], got.1);
        assert_error(&got, status, code);
    }
    assert_eq!(dump(&s, "shop").await, before, "a refused request wrote something");
}

#[tokio::test]
async fn kv_namespaces_are_isolated_by_token() {
    let s = Server::start().await;
    let (status, body) =
        s.req(Method::POST, "/v1/tokens", Some(ADMIN), Some(br#"{"scope":"app:shop"}"#.to_vec())).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let shop = body["token"].as_str().expect("token").to_owned();
    let (_, body) = s.req(Method::POST, "/v1/tokens", Some(ADMIN), Some(br#"{"scope":"operator"}"#.to_vec())).await;
    let operator = body["token"].as_str().expect("token").to_owned();

    assert_eq!(raw(&s, Method::PUT, "/v1/kv/shop/k", &shop, b"mine").await.0, StatusCode::OK);
    assert_eq!(raw(&s, Method::PUT, "/v1/kv/bank/k", ADMIN, b"secret").await.0, StatusCode::OK);
    assert_eq!(raw(&s, Method::GET, "/v1/kv/shop/k", &shop, b"").await.2, b"mine");
    assert_eq!(raw(&s, Method::GET, "/v1/kv/bank/k", &operator, b"").await.2, b"secret");
    assert_eq!(raw(&s, Method::PUT, "/v1/kv/bank/op", &operator, b"o").await.0, StatusCode::OK);
    let before = dump(&s, "bank").await;

    let batch = br#"{"ops":[{"op":"put","key":"k","value":"stolen"}]}"#.to_vec();
    for (method, path, body) in [
        (Method::GET, "/v1/kv/bank/k", vec![]),
        (Method::PUT, "/v1/kv/bank/k", b"stolen".to_vec()),
        (Method::PUT, "/v1/kv/bank/new", b"stolen".to_vec()),
        (Method::DELETE, "/v1/kv/bank/k", vec![]),
        (Method::GET, "/v1/kv/bank", vec![]),
        (Method::POST, "/v1/kv/bank", batch),
    ] {
        let got = s.req(method.clone(), path, Some(&shop), Some(body.clone())).await;
        assert_error(&got, StatusCode::FORBIDDEN, "forbidden");
        assert_error(
            &s.req(method.clone(), path, None, Some(body.clone())).await,
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        );
        assert_error(&s.req(method, path, Some("wrong"), Some(body)).await, StatusCode::UNAUTHORIZED, "unauthorized");
    }
    assert_eq!(dump(&s, "bank").await, before, "a forbidden request changed another namespace");
    let (status, list) = s.req(Method::GET, "/v1/kv/shop", Some(&shop), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["entries"].as_array().expect("entries").len(), 1, "{list}");

    // System namespaces (plugins' stores): admin writes, operator only reads, apps nothing; and
    // no token can be made for one.
    let sys = "/v1/kv/_plugin-framework-service/gen";
    assert_eq!(raw(&s, Method::PUT, sys, ADMIN, b"1").await.0, StatusCode::OK);
    assert_eq!(raw(&s, Method::GET, sys, &operator, b"").await.2, b"1");
    assert_eq!(s.req(Method::GET, "/v1/kv/_plugin-framework-service", Some(&operator), None).await.0, StatusCode::OK);
    for (method, path, body) in [
        (Method::PUT, sys, b"2".to_vec()),
        (Method::DELETE, sys, vec![]),
        (Method::POST, "/v1/kv/_plugin-framework-service", br#"{"ops":[{"op":"delete","key":"gen"}]}"#.to_vec()),
    ] {
        let got = s.req(method, path, Some(&operator), Some(body)).await;
        assert_error(&got, StatusCode::FORBIDDEN, "forbidden");
        assert!(got.1["error"]["message"].as_str().unwrap_or("").contains("system namespace"), "{}", got.1);
    }
    assert_error(&s.req(Method::GET, sys, Some(&shop), None).await, StatusCode::FORBIDDEN, "forbidden");
    let (status, _) = s
        .req(Method::POST, "/v1/tokens", Some(ADMIN), Some(br#"{"scope":"app:_plugin-framework-service"}"#.to_vec()))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(raw(&s, Method::GET, sys, ADMIN, b"").await.2, b"1", "a refused request changed it");
    // Names stay bounded: `_` alone and over-long system namespaces are refused.
    assert_error(
        &s.req(Method::GET, "/v1/kv/_/k", Some(ADMIN), None).await,
        StatusCode::BAD_REQUEST,
        "invalid_namespace",
    );
    let long = format!("/v1/kv/_{}/k", "a".repeat(128));
    assert_error(&s.req(Method::GET, &long, Some(ADMIN), None).await, StatusCode::BAD_REQUEST, "invalid_namespace");
}

#[tokio::test]
async fn kv_without_a_store_is_503_and_documented_in_openapi() {
    let s = Server::start_with(false).await;
    assert_error(&s.get("/v1/kv/shop/k").await, StatusCode::SERVICE_UNAVAILABLE, "store_unavailable");
    assert_error(&s.get("/v1/kv/shop").await, StatusCode::SERVICE_UNAVAILABLE, "store_unavailable");
    let (_, doc) = s.req(Method::GET, "/v1/openapi.json", None, None).await;
    for path in ["/v1/kv/{ns}/{key}", "/v1/kv/{ns}"] {
        assert!(doc["paths"][path].is_object(), "{path} missing from the OpenAPI document");
    }
    for method in ["get", "put", "delete"] {
        assert!(doc["paths"]["/v1/kv/{ns}/{key}"][method].is_object(), "{method} missing");
    }
}

/// A request's status, `X-Shoal-Index` and body.
async fn indexed(s: &Server, path: &str) -> (StatusCode, u64, Vec<u8>) {
    let response = s.http.get(format!("{}{path}", s.url)).bearer_auth(ADMIN).send().await.expect("send");
    let status = response.status();
    let index =
        response.headers().get("x-shoal-index").map_or(u64::MAX, |v| v.to_str().expect("ascii").parse().expect("u64"));
    (status, index, response.bytes().await.expect("body").to_vec())
}

#[tokio::test]
async fn kv_blocking_queries_answer_on_the_next_write() {
    let s = Server::start().await;
    // A key that is absent has index 0; waiting on 0 answers when it is created.
    let (status, index, _) = indexed(&s, "/v1/kv/shop/counter").await;
    assert_eq!((status, index), (StatusCode::NOT_FOUND, 0));
    let url = s.url.clone();
    let http = s.http.clone();
    let waiter = tokio::spawn(async move {
        let started = std::time::Instant::now();
        let response = http
            .get(format!("{url}/v1/kv/shop/counter?index=0&wait=20"))
            .bearer_auth(ADMIN)
            .send()
            .await
            .expect("send");
        let index: u64 = response.headers()["x-shoal-index"].to_str().expect("ascii").parse().expect("u64");
        (response.status(), index, response.bytes().await.expect("body"), started.elapsed())
    });
    // Time passing is the point here: the blocking query must still be waiting after a while
    // without a change.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiter.is_finished(), "the blocking query waits while nothing changes");
    let (_, v1, _) = raw(&s, Method::PUT, "/v1/kv/shop/counter", ADMIN, b"1").await;
    let (status, index, body, took) = waiter.await.expect("waiter");
    assert_eq!(status, StatusCode::OK);
    assert_eq!(Some(index), v1);
    assert_eq!(&body[..], b"1");
    assert!(took < Duration::from_secs(10), "answered on the write, not at the timeout: {took:?}");

    // An index that is already stale answers at once; a current one waits out its `wait`.
    let (status, index, _) = indexed(&s, "/v1/kv/shop/counter?index=1234567&wait=20").await;
    assert_eq!((status, Some(index)), (StatusCode::OK, v1));
    let started = std::time::Instant::now();
    let (status, index, _) = indexed(&s, &format!("/v1/kv/shop/counter?index={}&wait=1", index)).await;
    assert_eq!((status, Some(index)), (StatusCode::OK, v1));
    assert!(started.elapsed() >= Duration::from_millis(900), "waited out the wait: {:?}", started.elapsed());

    // A listing's index changes when a key under its prefix is written, not for other keys.
    let (_, list_index, _) = indexed(&s, "/v1/kv/shop?prefix=cart/").await;
    let (url, http) = (s.url.clone(), s.http.clone());
    let waiter = tokio::spawn(async move {
        let response = http
            .get(format!("{url}/v1/kv/shop?prefix=cart/&index={list_index}&wait=20"))
            .bearer_auth(ADMIN)
            .send()
            .await
            .expect("send");
        let index: u64 = response.headers()["x-shoal-index"].to_str().expect("ascii").parse().expect("u64");
        (index, response.json::<Value>().await.expect("json"))
    });
    // Time passing is the point here: the listing's wait must be parked before the unrelated write
    // (the API shows nothing to wait for), and must still be unanswered a while after it.
    tokio::time::sleep(Duration::from_millis(200)).await;
    raw(&s, Method::PUT, "/v1/kv/shop/other", ADMIN, b"x").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!waiter.is_finished(), "a write outside the prefix does not answer the listing's wait");
    raw(&s, Method::PUT, "/v1/kv/shop/cart/1", ADMIN, b"apple").await;
    let (index, list) = waiter.await.expect("waiter");
    assert_ne!(index, list_index);
    assert_eq!(list["entries"][0]["key"], "cart/1", "{list}");

    // Waits are bounded.
    let (status, _, body) = indexed(&s, "/v1/kv/shop/counter?index=1&wait=100000").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{}", String::from_utf8_lossy(&body));
}

#[tokio::test]
async fn kv_watch_streams_every_write_as_sse() {
    let s = Server::start().await;
    let response = s
        .http
        .get(format!("{}/v1/kv/shop?prefix=cart/&watch=true", s.url))
        .bearer_auth(ADMIN)
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), StatusCode::OK);
    let mut stream = response.bytes_stream();
    raw(&s, Method::PUT, "/v1/kv/shop/elsewhere", ADMIN, b"no").await;
    let (_, v1, _) = raw(&s, Method::PUT, "/v1/kv/shop/cart/7", ADMIN, b"pear").await;
    let (mut text, mut v2) = (String::new(), None);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    // The put's event carries the entry as it is when the watch reads it: the delete waits for
    // it (a delete first would leave the put's event without a value, `"superseded": true`).
    for events in [1, 2] {
        if events == 2 {
            v2 = raw(&s, Method::DELETE, "/v1/kv/shop/cart/7", ADMIN, b"").await.1;
        }
        while text.matches("data:").count() < events {
            use futures::StreamExt;
            let chunk = tokio::time::timeout_at(deadline, stream.next())
                .await
                .expect("events in time")
                .expect("open")
                .expect("chunk");
            text.push_str(&String::from_utf8_lossy(&chunk));
        }
    }
    assert!(!text.contains("elsewhere"), "only keys under the prefix: {text}");
    let put = text.find("event: put").expect("a put event");
    let delete = text.find("event: delete").expect("a delete event");
    assert!(put < delete, "in order: {text}");
    assert!(text.contains("\"value\":\"pear\""), "the put carries the entry: {text}");
    assert!(text.contains(&format!("\"version\":{}", v1.expect("v1"))), "{text}");
    assert!(text.contains(&format!("\"version\":{}", v2.expect("v2"))), "{text}");
}

#[tokio::test]
async fn an_expired_entry_is_announced_as_a_delete_when_swept() {
    let s = Server::start().await;
    let response = s
        .http
        .get(format!("{}/v1/kv/shop?prefix=session/&watch=true", s.url))
        .bearer_auth(ADMIN)
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), StatusCode::OK);
    let mut stream = response.bytes_stream();
    let (status, v1, _) = raw(&s, Method::PUT, "/v1/kv/shop/session/1?ttl=1", ADMIN, b"s").await;
    assert_eq!(status, StatusCode::OK);
    let mut text = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !text.contains("event: delete") {
        use futures::StreamExt;
        let chunk = tokio::time::timeout_at(deadline, stream.next())
            .await
            .expect("the expiry announced in time")
            .expect("open")
            .expect("chunk");
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    let delete = &text[text.find("event: delete").expect("delete")..];
    assert!(delete.contains("\"expired\":true"), "{text}");
    assert!(delete.contains(&format!("\"version\":{}", v1.expect("version"))), "the entry's version: {text}");
    assert!(text.find("event: put").expect("the put first") < text.find("event: delete").expect("delete"));
    assert_eq!(raw(&s, Method::GET, "/v1/kv/shop/session/1", ADMIN, b"").await.0, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn store_status_and_an_online_scale_out_through_the_api() {
    let s = Server::start().await;
    for i in 0..200 {
        raw(&s, Method::PUT, &format!("/v1/kv/shop/item-{i}"), ADMIN, format!("v{i}").as_bytes()).await;
    }
    let (status, v) = s.get("/v1/store").await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["map"]["shards"].as_array().expect("shards").len(), 4, "{v}");
    assert_eq!(v["nodes"][0]["node"], "local");
    // Mutations need an admin token; a malformed body is refused.
    let (status, _) = s.req(Method::POST, "/v1/store/scale-out", None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = s.req(Method::POST, "/v1/store/scale-out", Some(ADMIN), Some(b"{nope".to_vec())).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) =
        s.req(Method::POST, "/v1/store/scale-out", Some(ADMIN), Some(br#"{"node": "ghost"}"#.to_vec())).await;
    assert_eq!(status, StatusCode::CONFLICT, "an unknown node is refused: the store has no such node");
    let (status, started) = s.req(Method::POST, "/v1/store/scale-out", Some(ADMIN), None).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{started}");
    let id = started["id"].as_u64().expect("id");
    let seen = RefCell::new(Value::Null);
    let report = OnPanic(|| eprintln!("the move did not end: {}", seen.borrow()));
    let last = eventually("the move to end", Duration::from_secs(30), || async {
        let (_, v) = s.get("/v1/store").await;
        if v["last_move"]["id"].as_u64() == Some(id) {
            return Some(v);
        }
        *seen.borrow_mut() = v;
        None
    })
    .await;
    drop(report);
    assert_eq!(last["last_move"]["phase"], "finished", "{last}");
    assert_eq!(last["map"]["shards"].as_array().expect("shards").len(), 5);
    for i in 0..200 {
        let (status, _, body) = raw(&s, Method::GET, &format!("/v1/kv/shop/item-{i}"), ADMIN, b"").await;
        assert_eq!((status, body), (StatusCode::OK, format!("v{i}").into_bytes()));
    }
    assert_eq!(dump(&s, "shop").await.len(), 200);
}
