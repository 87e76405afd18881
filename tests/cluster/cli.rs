//! The operator CLI as scripts use it, against a real `shoal dev`: `-o json` (parsable, with the
//! stable fields) and `-q` (ids) on every noun's list and show, tables that keep every column
//! around a very long id, the exit codes (usage, refused, unreachable, a failed wait), `app
//! deploy --wait` that succeeds, fails and times out, `task logs -f`, and `completion`.

use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use shoal_testkit::eventually_sync;

use super::fixture::Reaper;
use super::{Dev, shoal, showing_last, write};

/// `shoal <args>` against `dev` with `token`: the whole outcome.
fn run(dev: &Dev, token: &str, args: &[&str]) -> Output {
    Command::new(shoal()).args(args).env("SHOAL_API", &dev.api).env("SHOAL_TOKEN", token).output().expect("run the cli")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `shoal <args> -o json`, which must succeed: its answer.
fn json_of(dev: &Dev, args: &[&str]) -> Value {
    let out = run(dev, &dev.token, &[args, &["-o", "json"]].concat());
    assert!(out.status.success(), "shoal {args:?} -o json: {}", text(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("shoal {args:?} -o json: {e}: {}", text(&out.stdout)))
}

/// `shoal <args> -q`, which must succeed: its lines.
fn ids_of(dev: &Dev, args: &[&str]) -> Vec<String> {
    let out = run(dev, &dev.token, &[args, &["-q"]].concat());
    assert!(out.status.success(), "shoal {args:?} -q: {}", text(&out.stderr));
    text(&out.stdout).lines().map(str::to_owned).collect()
}

/// `value` has every one of `fields`.
fn has_fields(what: &str, value: &Value, fields: &[&str]) {
    for field in fields {
        assert!(value.get(field).is_some(), "{what}: no `{field}` in {value}");
    }
}

/// A list's `-o json` has `items` (each with `fields`), and its `-q` prints each item's `id`.
fn check_list(dev: &Dev, args: &[&str], items: &str, id: &str, fields: &[&str]) -> Vec<Value> {
    let v = json_of(dev, args);
    let list = v[items].as_array().unwrap_or_else(|| panic!("shoal {args:?}: no `{items}` array in {v}")).clone();
    assert!(!list.is_empty(), "shoal {args:?}: nothing listed: {v}");
    for item in &list {
        has_fields(&format!("shoal {args:?}"), item, fields);
    }
    let want: Vec<String> =
        list.iter().map(|i| i[id].as_str().map_or_else(|| i[id].to_string(), str::to_owned)).collect();
    assert_eq!(ids_of(dev, args), want, "shoal {args:?} -q");
    list
}

/// A show's `-o json` has `fields`, and its `-q` prints `id`.
fn check_show(dev: &Dev, args: &[&str], id: &str, fields: &[&str]) -> Value {
    let v = json_of(dev, args);
    has_fields(&format!("shoal {args:?}"), &v, fields);
    assert_eq!(ids_of(dev, args), [id], "shoal {args:?} -q");
    v
}

/// A dev node whose agent offers `ports`, with the service and batch frameworks answering.
fn dev_with_frameworks(dir: &std::path::Path, ports: &str) -> Dev {
    let resources = format!("cpus:2;mem:1024;ports:[{ports}]");
    let dev = Dev::start_in(&dir.join("data"), &["--agent-resources", &resources], &[]);
    eventually_sync(
        "the service and batch frameworks to answer",
        Duration::from_secs(20),
        showing_last(|| {
            for noun in ["app", "job"] {
                let out = run(&dev, &dev.token, &[noun, "list"]);
                if !out.status.success() {
                    return Err(format!("{noun} list: {}", text(&out.stderr)));
                }
            }
            Ok(())
        }),
    );
    dev
}

/// A directory the unprivileged task user may write in, under `dir` (which it may enter).
fn task_writable(dir: &std::path::Path) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let marks = dir.join("marks");
    std::fs::create_dir(&marks).expect("mkdir");
    for (path, mode) in [(dir, 0o711), (marks.as_path(), 0o777)] {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
    }
    marks
}

/// Every noun's list and show, as JSON and as ids; tables keep their columns around the longest
/// ids there are (a 128-character instance id, a 63-character route name); the exit codes of a usage error, a refusal (404, 403) and an unreachable server.
#[test]
fn every_noun_lists_and_shows_as_json_ids_and_tables_with_distinct_exit_codes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dev = dev_with_frameworks(dir.path(), "29400-29409");
    let _reaper = Reaper(dir.path().join("data"));
    let long = format!("i-{}", "x".repeat(126));
    let route = format!("r-{}", "x".repeat(61));
    let setup: Vec<Vec<&str>> = vec![
        vec!["service", "register", "ext", &long, "--address", "127.0.0.1:9"],
        vec!["route", "put", &route, "--service", "ext", "--prefix", "/long"],
        vec!["kv", "put", "app", "greeting", "hello"],
    ];
    for args in setup {
        let out = run(&dev, &dev.token, &args);
        assert!(out.status.success(), "shoal {args:?}: {}", text(&out.stderr));
    }
    let app = json!({"id": "web", "instances": 1, "cpus": 0.1, "mem": 16, "cmd": "exec sleep 600"});
    let app_file = write(dir.path(), "web.json", app.to_string().as_bytes());
    let job = json!({"id": "nightly", "schedule": "0 3 * * *", "cpus": 0.1, "mem": 16, "cmd": "true"});
    let job_file = write(dir.path(), "nightly.json", job.to_string().as_bytes());
    let wasm = write(dir.path(), "rr.wasm", shoal_artifacts::ROUND_ROBIN);
    assert_eq!(ids_of(&dev, &["app", "deploy", &app_file, "--wait", "--timeout", "60"]), ["web"]);
    assert_eq!(ids_of(&dev, &["job", "put", &job_file]), ["nightly"]);
    let digest = ids_of(&dev, &["artifact", "push", &wasm]).concat();

    let agents = check_list(&dev, &["agent", "list"], "agents", "id", &["id", "hostname", "state", "total", "tasks"]);
    let agent = agents[0]["id"].as_str().expect("agent id").to_owned();
    check_show(&dev, &["agent", "show", &agent], &agent, &["id", "hostname", "state", "total", "tasks"]);
    check_list(&dev, &["app", "list"], "apps", "id", &["id", "status", "version", "instances", "running", "healthy"]);
    check_show(&dev, &["app", "show", "web"], "web", &["id", "status", "version", "deployment", "tasks", "definition"]);
    let tasks = check_list(&dev, &["task", "list", "--service", "web"], "tasks", "id", &["id", "framework", "state"]);
    let task = tasks[0]["id"].as_str().expect("task id").to_owned();
    check_show(&dev, &["task", "show", &task], &task, &["id", "framework", "state", "agent_id"]);
    check_list(&dev, &["job", "list"], "jobs", "id", &["id", "schedule", "last_run"]);
    check_show(&dev, &["job", "show", "nightly"], "nightly", &["id", "definition", "runs"]);
    check_list(&dev, &["framework", "list"], "frameworks", "name", &["name", "role", "weight", "tasks", "offers"]);
    check_show(&dev, &["framework", "show", "service"], "service", &["name", "role", "allocated"]);
    let plugins = json_of(&dev, &["plugin", "list"]);
    has_fields("plugin list", &plugins["plugins"][0], &["kind", "name", "active", "versions"]);
    assert!(ids_of(&dev, &["plugin", "list", "--kind", "router"]).contains(&"router/round-robin".to_owned()));
    let shown = check_show(
        &dev,
        &["plugin", "show", "--kind", "router", "--name", "round-robin"],
        "router/round-robin",
        &["kind", "name", "active", "versions"],
    );
    has_fields("plugin show's versions", &shown["versions"][0], &["version", "digest", "size"]);
    check_list(&dev, &["artifact", "list"], "artifacts", "digest", &["digest", "size"]);
    check_show(&dev, &["artifact", "show", &digest], &digest, &["digest", "size"]);
    let services = json_of(&dev, &["service", "list"]);
    has_fields("service list", &services["services"][0], &["name", "instances", "passing"]);
    assert!(ids_of(&dev, &["service", "list"]).contains(&"ext".to_owned()));
    let ext = json_of(&dev, &["service", "show", "ext"]);
    has_fields("service show", &ext, &["service", "index", "instances"]);
    assert_eq!(ids_of(&dev, &["service", "show", "ext"]), std::slice::from_ref(&long), "service show -q: instance ids");
    check_list(&dev, &["route", "list"], "routes", "name", &["name", "service", "path_prefix", "router"]);
    check_show(&dev, &["route", "show", &route], &route, &["name", "service", "path_prefix", "router"]);
    check_list(&dev, &["kv", "list", "app"], "entries", "key", &["key", "version"]);
    let value = check_show(&dev, &["kv", "get", "app", "greeting"], "greeting", &["key", "version", "value"]);
    assert_eq!(value["value"], "hello");
    let tokens = check_list(&dev, &["token", "list"], "tokens", "id", &["id", "scope", "expired", "node"]);
    let token = tokens[0]["id"].as_str().expect("token id").to_owned();
    check_show(&dev, &["token", "show", &token], &token, &["id", "scope"]);
    has_fields("store status", &json_of(&dev, &["store", "status"]), &["map", "nodes"]);
    has_fields("master status", &json_of(&dev, &["master", "status"]), &["leader", "term", "self", "members"]);
    assert_eq!(ids_of(&dev, &["master", "status"]), ["local"]);
    check_show(&dev, &["allocator", "show"], "drf", &["plugin"]);

    // Tables: a long id widens its column; every other column stays on its row.
    let out = run(&dev, &dev.token, &["route", "list"]);
    let table = text(&out.stdout);
    let header = table.lines().next().expect("a header");
    assert!(["ROUTE", "HOST", "PREFIX", "SERVICE", "ROUTER"].iter().all(|c| header.contains(c)), "{table}");
    let row =
        table.lines().find(|l| l.starts_with(&route)).unwrap_or_else(|| panic!("no row of the long route: {table}"));
    assert_eq!(row.split_whitespace().collect::<Vec<_>>(), [route.as_str(), "*", "/long", "ext", "round-robin"]);
    assert_eq!(header.find("SERVICE"), row.find(" ext ").map(|i| i + 1), "columns aligned:\n{table}");
    let out = run(&dev, &dev.token, &["service", "show", "ext"]);
    let table = text(&out.stdout);
    let row = table.lines().find(|l| l.starts_with(&long)).unwrap_or_else(|| panic!("no row of the long id: {table}"));
    assert!(row.contains("127.0.0.1:9"), "{table}");

    // Exit codes: 2 usage, 3 refused (404 and 403), 4 unreachable.
    let code = |out: &Output| out.status.code().expect("an exit code");
    assert_eq!(code(&run(&dev, &dev.token, &["app", "show"])), 2);
    assert_eq!(code(&run(&dev, &dev.token, &["plugin", "list", "--kind", "balancer"])), 2);
    let missing = run(&dev, &dev.token, &["app", "show", "nope"]);
    assert_eq!(code(&missing), 3, "{}", text(&missing.stderr));
    assert!(text(&missing.stderr).contains("404"), "{}", text(&missing.stderr));
    assert_eq!(code(&run(&dev, &dev.token, &["token", "show", "nope"])), 3);
    let operator = ids_of(&dev, &["token", "create", "--scope", "operator"]).concat();
    let weak = run(&dev, &operator, &["token", "list"]);
    assert_eq!(code(&weak), 3, "{}", text(&weak.stderr));
    assert!(text(&weak.stderr).contains("403"), "{}", text(&weak.stderr));
    let away = run(&dev, &dev.token, &["app", "list", "--api", "http://127.0.0.1:1"]);
    assert_eq!(code(&away), 4, "{}", text(&away.stderr));
    assert!(text(&away.stderr).contains("cannot reach"), "{}", text(&away.stderr));
}

/// `--wait`: an app that becomes healthy exits 0 with its progress; one whose command exits at
/// once fails (exit 5) well before its timeout; one that cannot be placed exits 5 at its timeout,
/// saying why it waits. `task logs -f` prints a running task's new output and ends with it.
#[test]
fn app_wait_reports_success_failure_and_timeout_and_task_logs_follow() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dev = dev_with_frameworks(dir.path(), "29300-29309");
    let _reaper = Reaper(dir.path().join("data"));
    let code = |out: &Output| out.status.code().expect("an exit code");

    let healthy = json!({"id": "ok", "instances": 2, "cpus": 0.1, "mem": 32, "ports": 1,
        "cmd": "exec python3 -m http.server --bind 127.0.0.1 $PORT0",
        "health_checks": [{"type": "http", "port_index": 0, "path": "/", "grace_ms": 10000, "interval_ms": 300, "timeout_ms": 250, "max_failures": 3}]});
    let file = write(dir.path(), "ok.json", healthy.to_string().as_bytes());
    let out = run(&dev, &dev.token, &["app", "deploy", &file, "--wait", "--timeout", "60"]);
    let progress = text(&out.stdout);
    assert_eq!(code(&out), 0, "{progress}{}", text(&out.stderr));
    assert!(progress.contains("0/2 healthy") && progress.contains("2/2 healthy"), "{progress}");
    assert!(progress.trim_end().ends_with("app ok is ready"), "{progress}");
    let out = run(&dev, &dev.token, &["app", "scale", "ok", "1", "--wait", "--timeout", "60", "-o", "json"]);
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    let view: Value = serde_json::from_slice(&out.stdout).expect("the final app view");
    assert_eq!((view["running"].as_u64(), view["healthy"].as_u64()), (Some(1), Some(1)), "{view}");
    let out = run(&dev, &dev.token, &["app", "restart", "ok", "--wait", "--timeout", "60"]);
    assert_eq!(code(&out), 0, "{}{}", text(&out.stdout), text(&out.stderr));
    assert!(text(&out.stdout).contains("deploying"), "the restart's progress: {}", text(&out.stdout));

    let crash = json!({"id": "crash", "instances": 1, "cpus": 0.1, "mem": 16, "cmd": "exit 3"});
    let file = write(dir.path(), "crash.json", crash.to_string().as_bytes());
    let started = Instant::now();
    let out = run(&dev, &dev.token, &["app", "deploy", &file, "--wait", "--timeout", "60"]);
    assert_eq!(code(&out), 5, "{}{}", text(&out.stdout), text(&out.stderr));
    assert!(text(&out.stderr).contains("app crash failed: task"), "{}", text(&out.stderr));
    assert!(started.elapsed() < Duration::from_secs(50), "failed only after {:?}", started.elapsed());

    // No agent has a rack `r9`: the app is accepted and never placed.
    let huge = json!({"id": "huge", "instances": 1, "cpus": 0.1, "mem": 16, "cmd": "exec sleep 600",
        "constraints": [["rack", "LIKE", "r9"]]});
    let file = write(dir.path(), "huge.json", huge.to_string().as_bytes());
    let started = Instant::now();
    let out = run(&dev, &dev.token, &["app", "deploy", &file, "--wait", "--timeout", "3"]);
    assert_eq!(code(&out), 5, "{}{}", text(&out.stdout), text(&out.stderr));
    let said = text(&out.stderr);
    assert!(said.contains("not ready after 3 s") && said.contains("rack LIKE r9"), "{said}");
    assert!(started.elapsed() < Duration::from_secs(10), "the timeout took {:?}", started.elapsed());

    // A job that writes, then waits for the test before each next line.
    let marks = task_writable(dir.path());
    let m = marks.display();
    let cmd = format!(
        "echo first; while [ ! -f {m}/more ]; do sleep 0.05; done; echo second; \
         while [ ! -f {m}/end ]; do sleep 0.05; done; echo last"
    );
    let job = json!({"id": "talker", "cpus": 0.1, "mem": 16, "cmd": cmd});
    let file = write(dir.path(), "talker.json", job.to_string().as_bytes());
    assert_eq!(ids_of(&dev, &["job", "put", &file]), ["talker"]);
    let task = eventually_sync(
        "the job's task",
        Duration::from_secs(20),
        showing_last(|| {
            let v = json_of(&dev, &["job", "show", "talker"]);
            v["runs"][0]["task_id"].as_str().map(str::to_owned).ok_or_else(|| v.to_string())
        }),
    );
    let mut follow = Command::new(shoal())
        .args(["task", "logs", "-f", &task])
        .env("SHOAL_API", &dev.api)
        .env("SHOAL_TOKEN", &dev.token)
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn task logs -f");
    let stdout = follow.stdout.take().expect("stdout");
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let next = || lines.recv_timeout(Duration::from_secs(20)).expect("a line from task logs -f");
    assert_eq!(next(), "first");
    std::fs::write(marks.join("more"), "").expect("touch");
    assert_eq!(next(), "second");
    assert!(follow.try_wait().expect("wait").is_none(), "task logs -f ended while the task runs");
    std::fs::write(marks.join("end"), "").expect("touch");
    assert_eq!(next(), "last");
    let status = eventually_sync("task logs -f to end with its task", Duration::from_secs(20), || {
        follow.try_wait().expect("wait")
    });
    assert!(status.success(), "{status}");
}

/// `shoal completion bash` prints a script that names the subcommands, which bash parses.
#[test]
fn completion_scripts_name_the_subcommands() {
    for shell in ["bash", "zsh", "fish"] {
        let out = Command::new(shoal()).args(["completion", shell]).output().expect("run");
        assert!(out.status.success(), "{}", text(&out.stderr));
        let script = text(&out.stdout);
        for word in ["deploy", "logs", "token", "rollback"] {
            assert!(script.contains(word), "{shell}: no `{word}` in the script");
        }
    }
    let out = Command::new(shoal()).args(["completion", "bash"]).output().expect("run");
    let file = tempfile::NamedTempFile::new().expect("tempfile");
    std::fs::write(file.path(), &out.stdout).expect("write");
    if let Ok(check) = Command::new("bash").arg("-n").arg(file.path()).output() {
        assert!(check.status.success(), "bash -n: {}", text(&check.stderr));
    }
}
