//! Issue 3: tasks through a framework plugin, on a master and three agents as separate processes
//! over a real `nats-server`. The framework is `keeper` (a host test program that keeps N copies
//! of a command running): its tasks run, their output is readable, an agent killed with SIGKILL
//! has its tasks declared lost and replaced on the others, a restarted master accounts for every
//! task exactly once (nothing relaunched), and a framework call that traps leaves the master
//! serving.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use shoal_testkit::eventually_sync;

use super::fixture::{Cluster, Reaper};
use super::{expect_event, showing_last, write};

/// One HTTP/1.1 request to the API: status and body.
pub(crate) fn http(api: &str, token: &str, method: &str, path: &str, body: &str) -> (u16, String) {
    let (status, _, body) = http_with_head(api, token, method, path, body);
    (status, body)
}

/// [`http`], with the response's head (status line and headers) as it came.
pub(crate) fn http_with_head(api: &str, token: &str, method: &str, path: &str, body: &str) -> (u16, String, String) {
    let addr = api.trim_start_matches("http://").trim_end_matches('/');
    let mut stream = TcpStream::connect(addr).expect("connect to the API");
    stream.set_read_timeout(Some(Duration::from_secs(20))).expect("timeout");
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .expect("write");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read the response");
    let status = response.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    if !head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        return (status, head.to_owned(), body.to_owned());
    }
    // Chunked: `<hex size>\r\n<data>\r\n` … `0\r\n\r\n`.
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, tail)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || tail.len() < n {
            break;
        }
        out.push_str(&tail[..n]);
        rest = tail[n..].trim_start_matches("\r\n");
    }
    (status, head.to_owned(), out)
}

/// Running tasks as (id, agent) from `GET /v1/tasks?state=running`.
fn running(cluster: &Cluster) -> Vec<(String, String)> {
    let (status, body) = http(cluster.api(), cluster.token(), "GET", "/v1/tasks?state=running", "");
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    v["tasks"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|t| (t["id"].as_str().unwrap_or("").to_owned(), t["agent_id"].as_str().unwrap_or("").to_owned()))
        .collect()
}

fn wait_running(cluster: &Cluster, what: &str, ok: impl Fn(&[(String, String)]) -> bool) -> Vec<(String, String)> {
    eventually_sync(
        &format!("the running tasks: {what}"),
        Duration::from_secs(20),
        showing_last(|| {
            let now = running(cluster);
            if ok(&now) { Ok(now) } else { Err(format!("{what}: running tasks are {now:?}")) }
        }),
    )
}

/// Wait until `n` running tasks are healthy (their checks passed on their agents).
fn wait_healthy(cluster: &Cluster, n: usize) {
    eventually_sync(
        &format!("{n} healthy running tasks"),
        Duration::from_secs(20),
        showing_last(|| {
            let (_, body) = http(cluster.api(), cluster.token(), "GET", "/v1/tasks?state=running", "");
            let v: serde_json::Value = serde_json::from_str(&body).expect("JSON");
            let healthy = v["tasks"].as_array().into_iter().flatten().filter(|t| t["healthy"] == true).count();
            if healthy == n { Ok(()) } else { Err(format!("{healthy} of {n} healthy: {body}")) }
        }),
    );
}

#[test]
fn tasks_are_replaced_when_an_agent_dies_and_survive_a_master_restart() {
    let mut cluster = Cluster::builder().agents(&[("a1", "r1"), ("a2", "r1"), ("a3", "r2")]).start();
    cluster.wait_for_agents("registration", &[("a1", "active"), ("a2", "active"), ("a3", "active")]);

    // Upload the framework; the master attaches it within a second.
    let wasm = write(cluster.dir(), "keeper.wasm", shoal_artifacts::KEEPER_FRAMEWORK);
    cluster.cli(&["plugin", "push", "--kind", "framework", "--name", "keeper", "--activate", &wasm]);
    eventually_sync("the keeper framework to attach", Duration::from_secs(10), || {
        cluster.cli(&["framework", "list"]).contains("keeper").then_some(())
    });
    // Health-checked web servers (a check every 500 ms).
    // Checks lenient enough that a loaded machine (the whole suite on two cores, the API fuzzing
    // among it) does not fail a healthy task: three misses of a second each, in a row.
    let labels = "shoal.health={\"type\":\"http\",\"grace_ms\":5000,\"interval_ms\":500,\"timeout_ms\":400}\n";
    assert_eq!(http(cluster.api(), cluster.token(), "POST", "/v1/frameworks/keeper/labels", labels).0, 200);
    let (status, body) = http(
        cluster.api(),
        cluster.token(),
        "POST",
        "/v1/frameworks/keeper/keep",
        "6 echo started-$SHOAL_TASK_ID-on-$PORT0; exec python3 -m http.server --bind 127.0.0.1 $PORT0",
    );
    assert_eq!(status, 200, "{body}");
    let first = wait_running(&cluster, "launch", |t| t.len() == 6);
    wait_healthy(&cluster, 6);

    // Output is captured and readable through the API and the CLI.
    let (id, _) = &first[0];
    eventually_sync(
        &format!("task {id}'s logs to say it started"),
        Duration::from_secs(10),
        showing_last(|| {
            let out = cluster.cli(&["task", "logs", id]);
            if out.contains(&format!("started-{id}-on-3")) { Ok(()) } else { Err(format!("task {id} logs: {out:?}")) }
        }),
    );
    let listed = cluster.cli(&["task", "list", "--framework", "keeper"]);
    assert_eq!(listed.lines().filter(|l| l.contains(" running ")).count(), 6, "{listed}");

    // kill -9 the agent with the most tasks: they are lost and replaced on the others.
    let victim = {
        let mut count = std::collections::BTreeMap::new();
        for (_, a) in &first {
            *count.entry(a.clone()).or_insert(0) += 1;
        }
        count.into_iter().max_by_key(|(_, n)| *n).map(|(a, _)| a).expect("an agent with tasks")
    };
    assert!(["a1", "a2", "a3"].contains(&victim.as_str()), "unknown agent {victim}");
    let (mut tail, events) = cluster.tail("shoal.evt.task.>");
    let killed_at = Instant::now();
    cluster.kill_agent(&victim);
    let lost = expect_event(&events, "io.shoal.task.lost");
    assert_eq!(lost["data"]["agent_id"], victim.as_str(), "{lost}");
    let replaced = wait_running(&cluster, "replacement", |t| t.len() == 6 && t.iter().all(|(_, a)| *a != victim));
    let took = killed_at.elapsed();
    assert!(took < Duration::from_secs(10), "replaced {took:?} after the kill");
    let _ = tail.kill();
    let _ = tail.wait();
    let survivors: BTreeSet<&String> = first.iter().filter(|(_, a)| *a != victim).map(|(id, _)| id).collect();
    for id in &survivors {
        assert!(replaced.iter().any(|(r, _)| r == *id), "task {id} on a live agent was touched: {replaced:?}");
    }

    // The agent comes back: it kills what it left behind and registers without tasks.
    cluster.start_agent(&victim, "r1");
    cluster.wait_for_agents("return", &[("a1", "active"), ("a2", "active"), ("a3", "active")]);
    let pid_files = std::fs::read_dir(cluster.dir().join(format!("agent-{victim}/run"))).expect("run dir").count();
    assert_eq!(pid_files, 0, "the restarted agent did not clean up its old tasks");

    // The master restarts (SIGKILL): every task is accounted for exactly once, none relaunched.
    wait_healthy(&cluster, 6);
    let before: BTreeSet<(String, String)> = running(&cluster).into_iter().collect();
    cluster.restart_master();
    let after = wait_running(&cluster, "after the master's restart", |t| t.len() == 6);
    assert_eq!(after.into_iter().collect::<BTreeSet<_>>(), before, "tasks changed across the master's restart");
    // Health comes back with the tasks (the agents kept checking): no instance went `unknown`.
    let (_, body) = http(cluster.api(), cluster.token(), "GET", "/v1/tasks?state=running", "");
    let v: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    let healthy = v["tasks"].as_array().expect("tasks").iter().filter(|t| t["healthy"] == true).count();
    assert_eq!(healthy, 6, "health was lost across the master's restart: {body}");
    // The service registry is rebuilt as the agents register again (one heartbeat), with the
    // health the agents report — passing at once, not after a new round of checks.
    cluster.wait_for_agents("after the master's restart", &[("a1", "active"), ("a2", "active"), ("a3", "active")]);
    eventually_sync(
        "6 passing instances of `keep` within 1.5 s of the agents' return",
        Duration::from_millis(1500),
        showing_last(|| {
            let (_, services) = http(cluster.api(), cluster.token(), "GET", "/v1/services/keep?healthy=true", "");
            let s: serde_json::Value = serde_json::from_str(&services).expect("JSON");
            if s["instances"].as_array().map(Vec::len) == Some(6) { Ok(()) } else { Err(services) }
        }),
    );
    // Past the recovery window (2 × the agent timeout), still the same six.
    // Time passing is the point here: nothing may change while the recovery window runs out.
    std::thread::sleep(Duration::from_secs(4));
    let settled: BTreeSet<(String, String)> = running(&cluster).into_iter().collect();
    assert_eq!(settled, before, "tasks changed after the recovery window");
    let (_, all) = http(cluster.api(), cluster.token(), "GET", "/v1/tasks", "");
    let v: serde_json::Value = serde_json::from_str(&all).expect("JSON");
    let live = v["tasks"].as_array().expect("tasks").iter().filter(|t| t["state"] == "running").count();
    assert_eq!(live, 6, "{all}");

    // A framework call that traps: an event, and the master goes on serving and scheduling.
    let (mut tail, events) = cluster.tail("shoal.evt.framework.>");
    let (status, _) = http(cluster.api(), cluster.token(), "POST", "/v1/frameworks/keeper/trap", "");
    assert_eq!(status, 200);
    let victim_task = settled.iter().next().expect("a task").0.clone();
    cluster.cli(&["task", "kill", &victim_task]);
    let failed = expect_event(&events, "io.shoal.framework.failed");
    assert_eq!(failed["data"]["call"], "resource-offers", "{failed}");
    let _ = tail.kill();
    let _ = tail.wait();
    wait_running(&cluster, "replacement after the trap", |t| {
        t.len() == 6 && t.iter().all(|(id, _)| *id != victim_task)
    });
    assert_eq!(cluster.agents().len(), 3);
    let (status, ended) = http(cluster.api(), cluster.token(), "GET", "/v1/frameworks/keeper/ended", "");
    assert_eq!(status, 200);
    assert!(ended.contains(&format!("{victim_task} killed")), "{ended}");
}

/// Wasm tasks run inside the agent: an HTTP service component uploaded as an artifact, launched
/// by a framework, fetched by the agent over the bus, serving on its assigned port; killed on
/// request; a bad upload is refused and changes nothing.
#[test]
fn wasm_tasks_run_inside_the_agent() {
    use super::Dev;
    let dir = tempfile::tempdir().expect("tempdir");
    let dev =
        Dev::start_in(&dir.path().join("data"), &["--agent-resources", "cpus:2;mem:1024;ports:[29500-29509]"], &[]);
    let wasm = write(dir.path(), "service.wasm", shoal_artifacts::WASM_HTTP);
    let (ok, digest, err) = dev.cli(&["artifact", "push", &wasm]);
    assert!(ok, "{err}");
    let digest = digest.trim().to_owned();
    assert_eq!(digest.len(), 64, "{digest}");
    // A core module, and junk, are refused with the reason; nothing is stored.
    let junk = write(dir.path(), "junk.wasm", b"\0asm\x01\0\0\0");
    let (ok, _, err) = dev.cli(&["artifact", "push", &junk]);
    assert!(!ok && err.contains("not a component"), "{err}");
    let (_, listed, _) = dev.cli(&["artifact", "list"]);
    assert_eq!(listed.lines().count(), 2, "{listed}");

    let keeper = write(dir.path(), "keeper.wasm", shoal_artifacts::KEEPER_FRAMEWORK);
    let (ok, _, err) = dev.cli(&["plugin", "push", "--kind", "framework", "--name", "keeper", "--activate", &keeper]);
    assert!(ok, "{err}");
    eventually_sync(
        "the keeper framework to attach and keep two Wasm tasks",
        Duration::from_secs(10),
        showing_last(|| {
            let (status, body) =
                http(&dev.api, &dev.token, "POST", "/v1/frameworks/keeper/keep", &format!("2 wasm:{digest}"));
            if status == 200 { Ok(()) } else { Err(format!("keeper never attached: {status} {body}")) }
        }),
    );
    // Both serve on their ports.
    let tasks = eventually_sync(
        "two running Wasm tasks",
        Duration::from_secs(20),
        showing_last(|| {
            let (_, body) = http(&dev.api, &dev.token, "GET", "/v1/tasks?state=running", "");
            let v: serde_json::Value = serde_json::from_str(&body).expect("JSON");
            let tasks: Vec<(String, u64)> = v["tasks"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|t| {
                    let port = t["resources"]["ports"][0]["begin"].as_u64().unwrap_or(0);
                    (t["id"].as_str().unwrap_or("").to_owned(), port)
                })
                .collect();
            if tasks.len() == 2 { Ok(tasks) } else { Err(format!("Wasm tasks did not run: {body}")) }
        }),
    );
    for (id, port) in &tasks {
        let (status, body) = http(&format!("127.0.0.1:{port}"), "", "GET", "/hi", "");
        assert_eq!((status, body.trim()), (200, format!("hello from {id}: GET /hi").as_str()));
    }
    // Killed on request: the port closes and the framework starts a replacement.
    let (id, port) = &tasks[0];
    let (ok, _, err) = dev.cli(&["task", "kill", id]);
    assert!(ok, "{err}");
    eventually_sync(
        &format!("task {id} to be killed"),
        Duration::from_secs(10),
        showing_last(|| {
            let (_, body) = http(&dev.api, &dev.token, "GET", &format!("/v1/tasks/{id}"), "");
            if body.contains("\"killed\"") { Ok(()) } else { Err(body) }
        }),
    );
    assert!(
        TcpStream::connect(format!("127.0.0.1:{port}")).is_err()
            || http(&format!("127.0.0.1:{port}"), "", "GET", "/", "").0 != 200
            || {
                // The replacement may have taken the same port: then it is another task.
                let (_, b) = http(&format!("127.0.0.1:{port}"), "", "GET", "/", "");
                !b.contains(id.as_str())
            }
    );
}

/// A task's health check runs on its agent: the verdict reaches the task's status and its
/// service instance; the route declared in its labels sends gateway traffic to healthy tasks only.
#[test]
fn task_health_checks_and_routes_from_labels() {
    use super::Dev;
    let dir = tempfile::tempdir().expect("tempdir");
    let dev =
        Dev::start_in(&dir.path().join("data"), &["--agent-resources", "cpus:2;mem:1024;ports:[29600-29609]"], &[]);
    let _reaper = Reaper(dir.path().join("data"));
    let keeper = write(dir.path(), "keeper.wasm", shoal_artifacts::KEEPER_FRAMEWORK);
    let (ok, _, err) = dev.cli(&["plugin", "push", "--kind", "framework", "--name", "keeper", "--activate", &keeper]);
    assert!(ok, "{err}");
    let labels = "shoal.health={\"type\":\"http\",\"path\":\"/\",\"grace_ms\":5000,\"interval_ms\":1000,\"timeout_ms\":1000,\"max_failures\":3}\nshoal.route.path=/keep\nshoal.route.strip_prefix=true\n";
    eventually_sync("the keeper framework to attach and take the labels", Duration::from_secs(10), || {
        (http(&dev.api, &dev.token, "POST", "/v1/frameworks/keeper/labels", labels).0 == 200).then_some(())
    });
    // Each task serves its own sandbox, where it writes its id.
    let (status, _) = http(
        &dev.api,
        &dev.token,
        "POST",
        "/v1/frameworks/keeper/keep",
        "3 echo $SHOAL_TASK_ID > whoami; exec python3 -m http.server --bind 127.0.0.1 $PORT0",
    );
    assert_eq!(status, 200);
    // All three healthy in their status and as instances of the service.
    eventually_sync(
        "three healthy tasks and three passing instances of `keep`",
        Duration::from_secs(30),
        showing_last(|| {
            let (_, body) = http(&dev.api, &dev.token, "GET", "/v1/tasks?state=running", "");
            let v: serde_json::Value = serde_json::from_str(&body).expect("JSON");
            let healthy = v["tasks"].as_array().into_iter().flatten().filter(|t| t["healthy"] == true).count();
            let (_, services) = http(&dev.api, &dev.token, "GET", "/v1/services/keep?healthy=true", "");
            let instances = serde_json::from_str::<serde_json::Value>(&services)
                .ok()
                .and_then(|s| s["instances"].as_array().map(Vec::len))
                .unwrap_or(0);
            if healthy == 3 && instances == 3 {
                return Ok(());
            }
            Err(format!("healthy tasks {healthy}, passing instances {instances}: {body} {services}"))
        }),
    );
    // The cluster's gauges on /metrics (refreshed every second).
    eventually_sync(
        "3 running tasks and 1 active agent on /metrics",
        Duration::from_secs(5),
        showing_last(|| {
            let (_, metrics) = http(&dev.api, &dev.token, "GET", "/metrics", "");
            if metrics.contains("shoal_tasks{state=\"running\"} 3")
                && metrics.contains("shoal_agents{state=\"active\"} 1")
            {
                return Ok(());
            }
            Err(metrics
                .lines()
                .filter(|l| l.starts_with("shoal_tasks") || l.starts_with("shoal_agents"))
                .collect::<Vec<_>>()
                .join("\n"))
        }),
    );
    // The route from the labels exists and spreads requests over the three.
    let (ok, routes, err) = dev.cli(&["route", "list"]);
    assert!(ok && routes.contains("keep") && routes.contains("/keep"), "{routes} {err}");
    let mut seen = BTreeSet::new();
    for _ in 0..9 {
        let (status, body) = http(&dev.gateway, "", "GET", "/keep/whoami", "");
        assert_eq!(status, 200, "{body}");
        seen.insert(body.trim().to_owned());
    }
    assert_eq!(seen.len(), 3, "{seen:?}");
}

/// Status updates are delivered at least once: a task that ends while the master is down is
/// reported when the master is back, and its framework replaces it.
#[test]
fn a_status_update_waits_for_the_master() {
    let mut cluster = Cluster::builder().agents(&[("a7", "r1")]).start();
    cluster.wait_for_agents("registration", &[("a7", "active")]);
    let wasm = write(cluster.dir(), "keeper.wasm", shoal_artifacts::KEEPER_FRAMEWORK);
    cluster.cli(&["plugin", "push", "--kind", "framework", "--name", "keeper", "--activate", &wasm]);
    eventually_sync("the keeper framework to attach and keep a task", Duration::from_secs(10), || {
        (http(cluster.api(), cluster.token(), "POST", "/v1/frameworks/keeper/keep", "1 exec sleep 600").0 == 200)
            .then_some(())
    });
    let first = wait_running(&cluster, "launch", |t| t.len() == 1);
    let id = first[0].0.clone();

    // The master goes away; meanwhile the task dies (its process is killed from outside).
    cluster.kill_master();
    let pid_file = cluster.dir().join(format!("agent-a7/run/{id}.pgid"));
    let pgid = std::fs::read_to_string(&pid_file).expect("the agent records its task's process group");
    assert!(
        std::process::Command::new("kill")
            .args(["-s", "KILL", "--", &format!("-{}", pgid.trim())])
            .status()
            .expect("kill")
            .success()
    );
    // The agent removes the record once it has seen the task end (and queued the update).
    eventually_sync("the agent to see its task die", Duration::from_secs(10), || (!pid_file.exists()).then_some(()));

    // Back: the failure is reported (not lost), and the framework starts a replacement.
    cluster.start_master();
    eventually_sync(
        &format!("the failure of {id} to reach the master"),
        Duration::from_secs(20),
        showing_last(|| {
            let (_, body) = http(cluster.api(), cluster.token(), "GET", &format!("/v1/tasks/{id}"), "");
            if body.contains("\"failed\"") && body.contains("signal 9") { Ok(()) } else { Err(body) }
        }),
    );
    let replaced = wait_running(&cluster, "replacement", |t| t.len() == 1 && t[0].0 != id);
    assert_ne!(replaced[0].0, id);
    let (_, ended) = http(cluster.api(), cluster.token(), "GET", "/v1/frameworks/keeper/ended", "");
    assert!(ended.contains(&format!("{id} failed")), "{ended}");
}
