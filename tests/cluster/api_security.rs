//! Issue 21, the HTTP API's half of least privilege, on a real `shoal dev` driven by the CLI:
//! the attacks as the issue wrote them, each now refused: an app token reading another
//! namespace's task logs, an app token's event stream carrying another namespace's keys, a Wasm
//! task opening a framework's private namespace, an operator registering a command check that
//! reads the admin token; and tokens as an operator handles them (`shoal token …`).

use std::time::Duration;

use shoal_testkit::eventually_sync;

use super::fixture::Reaper;
use super::tasks::http;
use super::{Dev, expect_event, showing_last, tail_events, write};

/// The CLI against `dev` with another token: success, stdout, stderr.
fn cli_as(dev: &Dev, token: &str, args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(super::shoal())
        .args(args)
        .env("SHOAL_API", &dev.api)
        .env("SHOAL_TOKEN", token)
        .output()
        .expect("run cli");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A new token of `scope` through `shoal token create`, which prints it (and only it) on stdout.
fn token(dev: &Dev, scope: &str) -> String {
    let (ok, out, err) = dev.cli(&["token", "create", "--scope", scope, "--ttl", "1h"]);
    assert!(ok, "{err}");
    let token = out.trim().to_owned();
    assert!(token.starts_with("shoal_") && !token.contains(char::is_whitespace), "{out}");
    token
}

#[test]
fn app_tokens_see_only_their_namespace_and_tasks_cannot_open_system_namespaces() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dev =
        Dev::start_in(&dir.path().join("data"), &["--agent-resources", "cpus:2;mem:1024;ports:[29700-29709]"], &[]);
    let _reaper = Reaper(dir.path().join("data"));
    let (orders, other) = (token(&dev, "app:orders"), token(&dev, "app:other"));
    let keeper = write(dir.path(), "keeper.wasm", shoal_artifacts::KEEPER_FRAMEWORK);
    let (ok, _, err) = dev.cli(&["plugin", "push", "--kind", "framework", "--name", "keeper", "--activate", &keeper]);
    assert!(ok, "{err}");
    eventually_sync("the keeper framework to attach and take the labels", Duration::from_secs(10), || {
        (http(&dev.api, &dev.token, "POST", "/v1/frameworks/keeper/labels", "shoal.kv=orders\n").0 == 200).then_some(())
    });
    let keep = "1 echo hello-from-orders; exec sleep 600";
    assert_eq!(http(&dev.api, &dev.token, "POST", "/v1/frameworks/keeper/keep", keep).0, 200);
    let id = eventually_sync(
        "the task of namespace `orders` to run and write its line",
        Duration::from_secs(20),
        showing_last(|| {
            let (_, body) = http(&dev.api, &dev.token, "GET", "/v1/tasks?state=running", "");
            let v: serde_json::Value = serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))?;
            let id = v["tasks"][0]["id"].as_str().ok_or(body.clone())?.to_owned();
            let (status, logs) = http(&dev.api, &orders, "GET", &format!("/v1/tasks/{id}/logs"), "");
            if status == 200 && logs.contains("hello-from-orders") { Ok(id) } else { Err(format!("{status} {logs}")) }
        }),
    );
    // The issue's example: another namespace's token read these logs (200). Now 403, and the task
    // is not shown to it either.
    let (status, body) = http(&dev.api, &other, "GET", &format!("/v1/tasks/{id}/logs"), "");
    assert_eq!(status, 403, "{body}");
    assert!(!body.contains("hello-from-orders"), "{body}");
    assert_eq!(http(&dev.api, &other, "GET", &format!("/v1/tasks/{id}"), "").0, 403);
    let (_, listed) = http(&dev.api, &other, "GET", "/v1/tasks", "");
    assert!(!listed.contains(&id), "{listed}");
    let (_, listed) = http(&dev.api, &orders, "GET", "/v1/tasks", "");
    assert!(listed.contains(&id), "{listed}");
    let (ok, _, err) = cli_as(&dev, &other, &["task", "logs", &id]);
    assert!(!ok && err.contains("403"), "{err}");

    // Events: `other` subscribes to everything; a key of `orders` is written, then a marker of
    // its own. Everything up to the marker is its own namespace's.
    let (mut tail, events) = tail_events(&dev.api, &other, "shoal.evt.>");
    for (ns, key) in [("orders", "secret-order-key"), ("other", "marker")] {
        let (ok, _, err) = dev.cli(&["kv", "put", ns, key, "v"]);
        assert!(ok, "{err}");
    }
    let mut seen = Vec::new();
    loop {
        let line = events.recv_timeout(Duration::from_secs(20)).expect("the marker event of the token's namespace");
        let done = line.contains("\"marker\"");
        seen.push(line);
        if done {
            break;
        }
    }
    let _ = tail.kill();
    let _ = tail.wait();
    assert!(!seen.iter().any(|e| e.contains("orders") || e.contains(&id)), "{seen:#?}");

    // A Wasm task naming a framework's private namespace is refused at launch, with the reason
    // in the framework's `invalid` event; no such task exists.
    let wasm = write(dir.path(), "kv.wasm", shoal_artifacts::WASM_KV);
    let (ok, digest, err) = dev.cli(&["artifact", "push", &wasm]);
    assert!(ok, "{err}");
    let (mut tail, events) = tail_events(&dev.api, &dev.token, "shoal.evt.framework.>");
    let labels = "shoal.kv=_plugin-framework-service\n";
    assert_eq!(http(&dev.api, &dev.token, "POST", "/v1/frameworks/keeper/labels", labels).0, 200);
    let keep = format!("2 wasm:{}", digest.trim());
    assert_eq!(http(&dev.api, &dev.token, "POST", "/v1/frameworks/keeper/keep", &keep).0, 200);
    let refused = expect_event(&events, "io.shoal.framework.invalid");
    let _ = tail.kill();
    let _ = tail.wait();
    let reason = refused["data"]["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("`_plugin-framework-service`, a system namespace"), "{refused}");
    let (_, tasks) = http(&dev.api, &dev.token, "GET", "/v1/tasks", "");
    assert!(!tasks.contains("_plugin-framework-service"), "{tasks}");
}

#[test]
fn command_checks_need_admin_and_tokens_are_created_listed_and_revoked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let dev = Dev::start_in(&data, &[], &[]);
    // The banner says where the admin token is, never what it is; the file is the owner's only.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(data.join("admin.token")).expect("admin.token").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let (operator, app) = (token(&dev, "operator"), token(&dev, "app:web"));
    // The attack of issue 21: an operator registers a check that prints the admin token.
    let attack = format!(
        r#"{{"address":"127.0.0.1:9","check":{{"type":"command","command":"cat {}"}}}}"#,
        data.join("admin.token").display()
    );
    let (status, body) = http(&dev.api, &operator, "PUT", "/v1/services/web/instances/w1", &attack);
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("admin"), "{body}");
    let (_, services) = http(&dev.api, &dev.token, "GET", "/v1/services/web", "");
    assert!(!services.contains("w1"), "a refused registration registered: {services}");
    // An admin's command check runs; its long output is cut with a marker, shown to operators,
    // never to app tokens.
    let long = r#"{"address":"127.0.0.1:9","check":{"type":"command","command":"head -c 10000 /dev/zero | tr '\\0' x; exit 1","interval_ms":300,"timeout_ms":250,"grace_ms":0}}"#;
    let (status, body) = http(&dev.api, &dev.token, "PUT", "/v1/services/web/instances/w2", long);
    assert_eq!(status, 200, "{body}");
    let output = eventually_sync(
        "the command check's output on the instance",
        Duration::from_secs(10),
        showing_last(|| {
            let (_, body) = http(&dev.api, &operator, "GET", "/v1/services/web", "");
            let v: serde_json::Value = serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))?;
            v["instances"][0]["health_output"].as_str().map(str::to_owned).ok_or(body)
        }),
    );
    assert!(output.ends_with(" [… truncated]") && output.len() == 4096 + " [… truncated]".len(), "{output}");
    let (status, seen) = http(&dev.api, &app, "GET", "/v1/services/web", "");
    assert_eq!(status, 200, "{seen}");
    assert!(seen.contains("\"w2\"") && !seen.contains("health_output") && !seen.contains("xxxx"), "{seen}");

    // `shoal token list` shows ids and scopes, no token; an operator can neither list nor mint
    // an admin token; a revoked token stops working at once.
    let (ok, list, err) = dev.cli(&["token", "list"]);
    assert!(ok, "{err}");
    for secret in [&dev.token, &operator, &app] {
        assert!(!list.contains(secret.as_str()), "{list}");
    }
    let line = list.lines().find(|l| l.contains(" operator ")).expect("the operator token listed");
    assert!(line.contains("in 59m") || line.contains("in 1h"), "{list}");
    let (ok, _, err) = cli_as(&dev, &operator, &["token", "create", "--scope", "admin"]);
    assert!(!ok && err.contains("403"), "{err}");
    let (ok, _, err) = cli_as(&dev, &operator, &["token", "list"]);
    assert!(!ok && err.contains("403"), "{err}");
    let id = line.split_whitespace().next().expect("id");
    let (ok, out, err) = dev.cli(&["token", "revoke", id]);
    assert!(ok && out.contains(id), "{out}{err}");
    let (status, body) = http(&dev.api, &operator, "GET", "/v1/services", "");
    assert_eq!(status, 401, "{body}");
}
