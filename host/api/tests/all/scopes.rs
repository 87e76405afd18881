//! Issue 21, least privilege over HTTP: tokens expire, are listed without secrets and revoked at
//! once; an operator cannot become admin; command checks need admin and check output is for
//! admin and operator tokens only; app tokens see only their namespace (events, components,
//! apps and jobs).

use std::sync::atomic::Ordering;

use reqwest::Method;
use reqwest::StatusCode;
use serde_json::Value;
use sha2::Digest;

use super::{ADMIN, Server, assert_error, next_event};

async fn issue(s: &Server, body: &str) -> (StatusCode, Value) {
    s.req(Method::POST, "/v1/tokens", Some(ADMIN), Some(body.as_bytes().to_vec())).await
}

/// A token of `scope` issued through the API.
async fn token(s: &Server, scope: &str) -> String {
    let (status, body) = issue(s, &format!(r#"{{"scope":"{scope}"}}"#)).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body["token"].as_str().expect("token").to_owned()
}

#[tokio::test]
async fn tokens_expire_are_listed_without_secrets_and_revoked_at_once() {
    let s = Server::start().await;
    let (status, created) = issue(&s, r#"{"scope":"operator","ttl":"1h"}"#).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let operator = created["token"].as_str().expect("token").to_owned();
    let id = created["id"].as_str().expect("id").to_owned();
    assert_eq!(id.len(), 12, "{created}");
    let (made, expires) = (created["created_ms"].as_u64().expect("created"), created["expires_ms"].as_u64());
    assert_eq!(expires, Some(made + 3_600_000), "{created}");
    for bad in ["1w", "0h", "-1h", "h", "3651d", ""] {
        let got = issue(&s, &format!(r#"{{"scope":"operator","ttl":"{bad}"}}"#)).await;
        assert_error(&got, StatusCode::BAD_REQUEST, "bad_request");
    }

    // An operator token can neither mint an admin token, nor list tokens, nor revoke one.
    let as_operator = |method: Method, path: String, body: Option<&str>| {
        let body = body.map(|b| b.as_bytes().to_vec());
        let (s, operator) = (&s, operator.clone());
        async move { s.req(method, &path, Some(&operator), body).await }
    };
    assert_eq!(as_operator(Method::GET, "/v1/plugins".into(), None).await.0, StatusCode::OK);
    let minted = as_operator(Method::POST, "/v1/tokens".into(), Some(r#"{"scope":"admin"}"#)).await;
    assert_error(&minted, StatusCode::FORBIDDEN, "forbidden");
    assert_error(&as_operator(Method::GET, "/v1/tokens".into(), None).await, StatusCode::FORBIDDEN, "forbidden");
    let revoked = as_operator(Method::DELETE, format!("/v1/tokens/{id}"), None).await;
    assert_error(&revoked, StatusCode::FORBIDDEN, "forbidden");

    // The listing has ids, scopes and dates: no token, no whole digest.
    let app = token(&s, "app:shop").await;
    let (status, list) = s.get("/v1/tokens").await;
    assert_eq!(status, StatusCode::OK, "{list}");
    let text = list.to_string();
    for secret in [ADMIN, operator.as_str(), app.as_str()] {
        assert!(!text.contains(secret), "a token in the listing: {text}");
        assert!(!text.contains(&hex::encode(sha2::Sha256::digest(secret))), "a whole digest in the listing: {text}");
    }
    let tokens = list["tokens"].as_array().expect("tokens");
    assert_eq!(tokens.len(), 3, "{list}");
    assert_eq!((tokens[0]["scope"].as_str(), tokens[0]["node"].as_bool()), (Some("admin"), Some(true)), "{list}");
    assert!(tokens.iter().any(|t| t["id"] == id.as_str() && t["scope"] == "operator" && t["expired"] == false));

    // An hour later the operator token is refused with a reason; the app token (no TTL) works.
    s.clock_offset.store(3_600_000, Ordering::SeqCst);
    let expired = as_operator(Method::GET, "/v1/plugins".into(), None).await;
    assert_error(&expired, StatusCode::UNAUTHORIZED, "unauthorized");
    assert!(expired.1["error"]["message"].as_str().is_some_and(|m| m.contains("expired")), "{:?}", expired.1);
    assert_eq!(s.req(Method::GET, "/v1/plugins", Some(&app), None).await.0, StatusCode::OK);

    // Revoked by id: refused at once; an unknown id is 404; the node's admin token is not revoked.
    let app_id = tokens.iter().find(|t| t["scope"] == "app:shop").and_then(|t| t["id"].as_str()).expect("app id");
    let (status, gone) = s.req(Method::DELETE, &format!("/v1/tokens/{app_id}"), Some(ADMIN), None).await;
    assert_eq!(status, StatusCode::OK, "{gone}");
    let refused = s.req(Method::GET, "/v1/plugins", Some(&app), None).await;
    assert_error(&refused, StatusCode::UNAUTHORIZED, "unauthorized");
    let again = s.req(Method::DELETE, &format!("/v1/tokens/{app_id}"), Some(ADMIN), None).await;
    assert_error(&again, StatusCode::NOT_FOUND, "not_found");
    let node_id = tokens[0]["id"].as_str().expect("node id");
    let node = s.req(Method::DELETE, &format!("/v1/tokens/{node_id}"), Some(ADMIN), None).await;
    assert_error(&node, StatusCode::CONFLICT, "node_token");
    assert_eq!(s.get("/v1/plugins").await.0, StatusCode::OK);

    // The served OpenAPI document describes it.
    let (_, doc) = s.req(Method::GET, "/v1/openapi.json", None, None).await;
    assert!(doc["paths"]["/v1/tokens"]["get"].is_object() && doc["paths"]["/v1/tokens/{id}"]["delete"].is_object());
    assert!(doc["components"]["schemas"]["TokenRequest"]["properties"]["ttl"].is_object(), "{doc}");
}

#[tokio::test]
async fn a_token_file_of_an_earlier_version_moves_into_the_state_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("tokens");
    let state =
        shoal_state::StateDb::open_local(&dir.path().join("state"), &[shoal_api::auth::TOKENS_TABLE]).expect("state");
    // Lines of both earlier formats: `<digest> <scope>` (never expires) and the one with dates.
    let old = hex::encode(sha2::Sha256::digest("old-token"));
    let dated = hex::encode(sha2::Sha256::digest("short-lived"));
    let expires = 1_900_000_000_000u64;
    std::fs::write(&file, format!("{old} app:shop\n{dated} operator created=1 expires={expires}\n")).expect("file");

    // A line that does not parse: an error naming it, and nothing changes.
    let bad = dir.path().join("bad-tokens");
    std::fs::write(&bad, "not a token line\n").expect("bad file");
    let err = shoal_api::auth::migrate_token_file(&state, &bad).await.expect_err("a corrupt token file is an error");
    assert!(err.to_string().contains("line 1"), "{err}");
    assert!(bad.exists() && state.scan(shoal_api::auth::TOKENS_TABLE, b"").expect("scan").is_empty());

    assert_eq!(shoal_api::auth::migrate_token_file(&state, &file).await.expect("migrate"), 2);
    assert!(!file.exists(), "the file is removed once its tokens are in the state");
    let clock = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(expires - 1));
    let now = clock.clone();
    let auth = shoal_api::Auth::new(ADMIN)
        .with_clock(std::sync::Arc::new(move || now.load(Ordering::SeqCst)))
        .backed_by(state.clone())
        .expect("open");
    assert_eq!(auth.scope(&bearer("old-token")).expect("old token"), shoal_api::Scope::App("shop".into()));
    assert_eq!(auth.scope(&bearer("short-lived")).expect("dated token"), shoal_api::Scope::Operator);
    // The expiry came along: a moment later the token is refused.
    clock.store(expires, Ordering::SeqCst);
    let err = auth.scope(&bearer("short-lived")).expect_err("expired");
    assert!(err.message.contains("expired"), "{}", err.message);

    // Revoked, then a leftover file shows up again: a table with tokens is not overwritten, so
    // the revoked token stays revoked.
    auth.revoke(&old[..12]).await.expect("revoke");
    std::fs::write(&file, format!("{old} app:shop\n")).expect("leftover");
    assert_eq!(shoal_api::auth::migrate_token_file(&state, &file).await.expect("migrate"), 0);
    assert!(!file.exists());
    assert!(auth.scope(&bearer("old-token")).is_err(), "a revoked token came back from a leftover file");
    assert!(state.get(shoal_api::auth::TOKENS_TABLE, old.as_bytes()).expect("read").is_none());
}

fn bearer(token: &str) -> axum::http::HeaderMap {
    let mut h = axum::http::HeaderMap::new();
    h.insert(axum::http::header::AUTHORIZATION, format!("Bearer {token}").parse().expect("header"));
    h
}

#[tokio::test]
async fn command_checks_need_admin_and_check_output_is_for_operators_only() {
    let s = Server::start().await;
    let operator = token(&s, "operator").await;
    let app = token(&s, "app:web").await;
    let index = s.discovery.index();
    // The attack of issue 21: an operator's check that reads the admin token. Refused, nothing
    // registered.
    let attack = r#"{"address":"127.0.0.1:9","check":{"type":"command","command":"cat .shoal/admin.token"}}"#;
    let refused =
        s.req(Method::PUT, "/v1/services/web/instances/w1", Some(&operator), Some(attack.as_bytes().to_vec())).await;
    assert_error(&refused, StatusCode::FORBIDDEN, "forbidden");
    let message = refused.1["error"]["message"].as_str().expect("message");
    assert!(message.contains("command") && message.contains("admin"), "{message}");
    assert_eq!(s.discovery.index(), index, "a refused registration changed the registry");
    assert!(s.discovery.instances("web", false).0.is_empty());
    // An operator may still register http and tcp checks; an admin may register a command check.
    let http = r#"{"address":"127.0.0.1:9","check":{"type":"http","path":"/"}}"#;
    let ok = s.req(Method::PUT, "/v1/services/web/instances/w1", Some(&operator), Some(http.as_bytes().to_vec())).await;
    assert_eq!(ok.0, StatusCode::OK, "{}", ok.1);
    let ok = s.req(Method::PUT, "/v1/services/web/instances/w2", Some(ADMIN), Some(attack.as_bytes().to_vec())).await;
    assert_eq!(ok.0, StatusCode::OK, "{}", ok.1);

    // Output longer than the bound is cut with a marker; operators read it, app tokens never.
    let output = format!("{}SECRET-AT-THE-END", "x".repeat(10_000));
    s.discovery.report("web", "w2", shoal_discovery::Health::Critical, &output).expect("report");
    let (status, seen) = s.req(Method::GET, "/v1/services/web", Some(&operator), None).await;
    assert_eq!(status, StatusCode::OK, "{seen}");
    let kept = seen["instances"]
        .as_array()
        .into_iter()
        .flatten()
        .find_map(|i| i["health_output"].as_str())
        .expect("operators read check output");
    assert!(kept.ends_with(shoal_health::TRUNCATED), "{kept}");
    assert_eq!(kept.len(), shoal_health::MAX_OUTPUT + shoal_health::TRUNCATED.len());
    assert!(!kept.contains("SECRET"), "past the bound");
    let (status, seen) = s.req(Method::GET, "/v1/services/web", Some(&app), None).await;
    assert_eq!(status, StatusCode::OK, "{seen}");
    assert_eq!(seen["instances"].as_array().map(Vec::len), Some(2), "{seen}");
    assert!(!seen.to_string().contains("health_output") && !seen.to_string().contains("xxxx"), "{seen}");
    // Nor in a watch.
    let response =
        s.http.get(format!("{}/v1/services/web/watch", s.url)).bearer_auth(&app).send().await.expect("watch");
    let mut stream = futures::StreamExt::boxed(response.bytes_stream());
    let first = next_event(&mut stream, &mut String::new()).await;
    assert_eq!(first["instances"].as_array().map(Vec::len), Some(2), "{first}");
    assert!(!first.to_string().contains("health_output"), "{first}");
}

#[tokio::test]
async fn app_tokens_see_only_their_namespace() {
    let s = Server::start().await;
    let shop = token(&s, "app:shop").await;
    let operator = token(&s, "operator").await;
    // Events: subscribed to everything, an app token gets its own namespace's keys only. The
    // marker written last in its own namespace proves the other namespace's event was passed over.
    let sse = |token: String| {
        let request = s.http.get(format!("{}/v1/events", s.url)).bearer_auth(token);
        async move {
            let response = request.send().await.expect("sse");
            assert_eq!(response.status(), StatusCode::OK);
            futures::StreamExt::boxed(response.bytes_stream())
        }
    };
    let (mut as_shop, mut as_operator) = (sse(shop.clone()).await, sse(operator).await);
    for (ns, key) in [("shop", "cart-1"), ("billing", "secret-key-name"), ("shop", "marker")] {
        let put = s.req(Method::PUT, &format!("/v1/kv/{ns}/{key}"), Some(ADMIN), Some(b"v".to_vec())).await;
        assert_eq!(put.0, StatusCode::OK, "{:?}", put.1);
    }
    let mut buf = String::new();
    let mut seen = Vec::new();
    loop {
        let event = next_event(&mut as_shop, &mut buf).await;
        seen.push(event.to_string());
        if event["data"]["key"] == "marker" {
            break;
        }
    }
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(seen[0].contains("cart-1"), "{seen:?}");
    assert!(!seen.iter().any(|e| e.contains("billing") || e.contains("secret-key-name")), "{seen:?}");
    // An operator's stream has the other namespace's event.
    let mut buf = String::new();
    let mut keys = Vec::new();
    while keys.len() < 3 {
        let event = next_event(&mut as_operator, &mut buf).await;
        if let Some(key) = event["data"]["key"].as_str() {
            keys.push(key.to_owned());
        }
    }
    assert_eq!(keys, ["cart-1", "secret-key-name", "marker"]);

    // Components, listings of apps and jobs, other apps and frameworks' own APIs: 403 before
    // anything else is asked (this server has no master: what passes the scope says 503).
    assert_eq!(s.post("/v1/plugins/router/rr", shoal_artifacts::ROUND_ROBIN).await.0, StatusCode::CREATED);
    let as_shop = |path: &'static str| {
        let (s, shop) = (&s, shop.clone());
        async move { s.req(Method::GET, path, Some(&shop), None).await }
    };
    for path in [
        "/v1/plugins/router/rr/versions/v1/component",
        "/v1/apps",
        "/v1/apps/billing",
        "/v1/jobs/billing/runs",
        "/v1/frameworks/service/apps",
        "/v1/artifacts/00",
    ] {
        assert_error(&as_shop(path).await, StatusCode::FORBIDDEN, "forbidden");
    }
    assert_eq!(as_shop("/v1/apps/shop").await.0, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(s.get("/v1/plugins/router/rr/versions/v1/component").await.0, StatusCode::OK);
}
