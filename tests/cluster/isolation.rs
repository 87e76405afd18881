//! Issue 21, item 3: process tasks are isolated. In a real `shoal dev` run as root, a task cannot
//! read the node's admin token by any path nor see the node's environment, a task past its
//! memory limit is OOM-killed and reported `failed` with a memory reason, a CPU-hungry task
//! is held to its `cpus` share (measured from `/proc` over a few seconds), and an app's command
//! health check runs with its task's isolation.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use shoal_testkit::eventually_sync;

use super::fixture::Reaper;
use super::tasks::http;
use super::{Dev, showing_last, write};

/// `shoal dev` on `<dir>/data` with a small agent; `dir` itself is opened to other users (0711),
/// so what keeps tasks out of the data is the node's own 0700, not the test's temp directory.
fn dev(dir: &Path, ports: &str, envs: &[(&str, &str)]) -> Dev {
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711)).expect("chmod");
    let resources = format!("cpus:2;mem:1024;ports:[{ports}]");
    Dev::start_in(&dir.join("data"), &["--agent-resources", &resources], envs)
}

/// Put the one-shot `job` and wait for its task to end: its entry from `GET /v1/tasks/{id}`.
fn run_job(dev: &Dev, dir: &Path, job: &serde_json::Value) -> serde_json::Value {
    let id = job["id"].as_str().expect("job id").to_owned();
    let file = write(dir, &format!("{id}.json"), job.to_string().as_bytes());
    eventually_sync(
        &format!("`shoal job put` of `{id}` to succeed"),
        Duration::from_secs(10),
        showing_last(|| {
            let (ok, out, err) = dev.cli(&["job", "put", &file]);
            if ok { Ok(()) } else { Err(format!("{out} {err}")) }
        }),
    );
    eventually_sync(
        &format!("the task of job `{id}` to end"),
        Duration::from_secs(60),
        showing_last(|| {
            let (_, body) = http(&dev.api, &dev.token, "GET", "/v1/tasks", "");
            let v: serde_json::Value = serde_json::from_str(&body).expect("JSON");
            let task = v["tasks"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|t| t["id"].as_str().is_some_and(|t| t.starts_with(&format!("{id}."))))
                .cloned();
            match task {
                Some(t) if ["finished", "failed", "killed"].contains(&t["state"].as_str().unwrap_or("")) => Ok(t),
                _ => Err(format!("tasks: {body}")),
            }
        }),
    )
}

fn logs(dev: &Dev, task: &str, stream: &str) -> String {
    let (status, body) = http(&dev.api, &dev.token, "GET", &format!("/v1/tasks/{task}/logs?stream={stream}"), "");
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or(serde_json::Value::String(body.clone()));
    v["data"].as_str().map_or(body, str::to_owned)
}

#[test]
fn a_task_reaches_neither_the_admin_token_nor_the_nodes_environment() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dev = dev(dir.path(), "29500-29509", &[("SHOAL_SECRET_PROBE", "x")]);
    let _reaper = Reaper(dir.path().join("data"));
    let token_file = dir.path().join("data").join("admin.token").canonicalize().expect("the admin token file");
    let data = token_file.parent().expect("data dir").display().to_string();
    let cmd = format!(
        "id -u; env; cat ../../admin.token && echo READ-RELATIVE; cat {token} && echo READ-ABSOLUTE; \
         ls {data} && echo LISTED-DATA; echo done",
        token = token_file.display()
    );
    let job = serde_json::json!({ "id": "probe", "cpus": 0.1, "mem": 32, "max_retries": 0, "cmd": cmd });
    let task = run_job(&dev, dir.path(), &job);
    let id = task["id"].as_str().expect("task id");
    assert_eq!(task["state"], "finished", "{task}");
    let out = logs(&dev, id, "stdout");
    let err = logs(&dev, id, "stderr");
    assert!(out.ends_with("done\n"), "{out}");
    assert_eq!(out.lines().next(), Some("65534"), "the task runs as nobody: {out}");
    for leaked in ["READ-RELATIVE", "READ-ABSOLUTE", "LISTED-DATA", "SHOAL_SECRET_PROBE", dev.token.as_str()] {
        assert!(!out.contains(leaked), "the task saw `{leaked}`: {out}");
    }
    assert!(err.contains("Permission denied"), "the absolute path is refused by the data dir's mode: {err}");
    // Its whole environment is what the agent gives it: HOME is its sandbox, outside the data.
    let home = out.lines().find_map(|l| l.strip_prefix("HOME=")).expect("HOME is set");
    assert!(home.starts_with(&dev.sandboxes.path().display().to_string()), "{home}");
    assert!(out.lines().any(|l| l == "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"), "{out}");
    assert!(out.lines().any(|l| l == format!("SHOAL_TASK_ID={id}")), "{out}");
    assert_eq!(std::fs::metadata(&data).expect("data").permissions().mode() & 0o777, 0o700);
    assert_eq!(std::fs::metadata(&token_file).expect("token").permissions().mode() & 0o777, 0o600);
}

#[test]
fn a_task_past_its_memory_limit_is_killed_and_failed_for_memory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dev = dev(dir.path(), "29510-29519", &[]);
    let _reaper = Reaper(dir.path().join("data"));
    // `tail` keeps the whole line it reads: 400 MiB of zeros without a newline.
    let job = serde_json::json!({
        "id": "hog", "cpus": 0.5, "mem": 64, "max_retries": 0, "cmd": "head -c 400M /dev/zero | tail",
    });
    let task = run_job(&dev, dir.path(), &job);
    assert_eq!(task["state"], "failed", "{task}");
    let message = task["message"].as_str().unwrap_or("");
    assert!(message.contains("out of memory (limit 64 MiB"), "{task}");
}

#[test]
fn a_cpu_hungry_task_is_held_to_its_share() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dev = dev(dir.path(), "29520-29529", &[]);
    let _reaper = Reaper(dir.path().join("data"));
    let app =
        serde_json::json!({ "id": "spin", "instances": 1, "cpus": 0.25, "mem": 32, "cmd": "while :; do :; done" });
    let file = write(dir.path(), "spin.json", app.to_string().as_bytes());
    eventually_sync(
        "`shoal app deploy` of `spin` to succeed",
        Duration::from_secs(10),
        showing_last(|| {
            let (ok, _, err) = dev.cli(&["app", "deploy", &file]);
            if ok { Ok(()) } else { Err(err) }
        }),
    );
    let message = eventually_sync(
        "the spinning task to run",
        Duration::from_secs(30),
        showing_last(|| {
            let (_, body) = http(&dev.api, &dev.token, "GET", "/v1/tasks?state=running", "");
            let v: serde_json::Value = serde_json::from_str(&body).expect("JSON");
            let message = v["tasks"][0]["message"].as_str().map(str::to_owned);
            message.ok_or(format!("running: {body}"))
        }),
    );
    assert!(message.contains("limits cpus 0.25 mem 32 MiB in cgroup"), "{message}");
    let pid: u32 = message
        .strip_prefix("pid ")
        .and_then(|m| m.split_whitespace().next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("a pid in {message:?}"));
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("the task's cgroups");
    assert!(cgroups.lines().any(|l| l.contains(":cpu") && l.contains("/shoal/")), "{cgroups}");

    // CPU time (utime + stime, in clock ticks of 1/100 s) over three seconds of wall time.
    let cpu_ticks = || -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("the task's stat");
        let fields: Vec<&str> = stat.rsplit_once(')').expect("stat").1.split_whitespace().collect();
        fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime")
    };
    let (t0, c0) = (Instant::now(), cpu_ticks());
    std::thread::sleep(Duration::from_secs(3)); // a measurement window, not a wait for an event
    let (elapsed, used) = (t0.elapsed().as_secs_f64(), (cpu_ticks() - c0) as f64 / 100.0);
    let cores = used / elapsed;
    assert!(cores < 0.4, "the task used {cores:.2} cores with cpus 0.25");
    assert!(cores > 0.02, "the task barely ran ({cores:.2} cores): is it spinning?");
    eprintln!("a busy loop with cpus 0.25 used {cores:.3} cores over {elapsed:.1} s");
}

/// An operator may deploy an app with a `command` health check: the agent runs it next to the
/// task, with the task's isolation, so it cannot escalate either. The check passes only when it
/// runs as the task user, without the node's environment, and cannot read the admin token; the
/// task turning healthy is the proof (run as the node's user, `! cat` would fail forever).
#[test]
fn an_apps_command_check_runs_with_the_tasks_isolation() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dev = dev(dir.path(), "29530-29539", &[("SHOAL_SECRET_PROBE", "x")]);
    let _reaper = Reaper(dir.path().join("data"));
    let token_file = dir.path().join("data").join("admin.token").canonicalize().expect("the admin token file");
    let check = format!(
        "test \"$(id -u)\" = 65534 && test -z \"$SHOAL_SECRET_PROBE\" && ! cat {} && ! cat ../../admin.token",
        token_file.display()
    );
    let app = serde_json::json!({
        "id": "peek", "instances": 1, "cpus": 0.1, "mem": 32, "cmd": "exec sleep 600",
        "health_checks": [{"type": "command", "command": check, "grace_ms": 0, "interval_ms": 1000,
            "timeout_ms": 1000, "max_failures": 100}],
    });
    let file = write(dir.path(), "peek.json", app.to_string().as_bytes());
    let (ok, out, err) = dev.cli(&["app", "deploy", &file]);
    assert!(ok, "an operator-level deploy with a command check is accepted: {out} {err}");
    eventually_sync(
        "the task's isolated command check to pass",
        Duration::from_secs(30),
        showing_last(|| {
            let (_, body) = http(&dev.api, &dev.token, "GET", "/v1/tasks?state=running", "");
            let v: serde_json::Value = serde_json::from_str(&body).expect("JSON");
            if v["tasks"][0]["healthy"] == true { Ok(()) } else { Err(body) }
        }),
    );
}
