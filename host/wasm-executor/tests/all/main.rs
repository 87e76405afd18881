//! The Wasm executor runs real components: the `wasm-command` and `wasm-http` test programs.

use std::sync::Arc;
use std::time::{Duration, Instant};

use shoal_wasm_executor::{ExecError, ExecutorConfig, Exit, TaskKind, TaskLogs, TaskSpec, WasmExecutor};

fn executor(request_timeout: Duration) -> WasmExecutor {
    WasmExecutor::new(ExecutorConfig { cache_dir: None, request_timeout }).expect("executor")
}

fn spec(id: &str, args: &[&str], logs: &Arc<TaskLogs>) -> TaskSpec {
    TaskSpec {
        task_id: id.into(),
        args: args.iter().map(|a| a.to_string()).collect(),
        env: vec![("GREETING".into(), "ahoy".into())],
        sandbox: None,
        memory_limit: 64 << 20,
        listen: None,
        network: false,
        logs: logs.clone(),
    }
}

/// Wait for the task, but never hang the test suite on a bug.
async fn finish(task: &mut shoal_wasm_executor::RunningTask) -> Exit {
    tokio::time::timeout(Duration::from_secs(60), task.wait()).await.expect("the task ends")
}

#[tokio::test]
async fn a_command_runs_with_its_arguments_environment_sandbox_and_logs() {
    let exec = executor(Duration::from_secs(5));
    let prepared = exec.prepare(shoal_artifacts::WASM_COMMAND).expect("prepare");
    assert_eq!(prepared.kind, TaskKind::Command);
    let sandbox = tempfile::tempdir().expect("tempdir");
    let logs = TaskLogs::new(64 << 10);
    let mut s = spec("task-1", &["hello", "big", "world"], &logs);
    s.sandbox = Some(sandbox.path().join("task-1"));
    let started = Instant::now();
    let mut task = exec.start(&prepared, s).await.expect("start");
    let exit = finish(&mut task).await;
    eprintln!("command ran in {:?}", started.elapsed());
    assert_eq!(exit, Exit::Code(0), "stderr: {}", String::from_utf8_lossy(&logs.stderr().bytes));
    assert_eq!(String::from_utf8_lossy(&logs.stdout().bytes), "hello big world\nGREETING=ahoy\n");
    assert_eq!(String::from_utf8_lossy(&logs.stderr().bytes), "to stderr\n");
    let written = std::fs::read_to_string(sandbox.path().join("task-1/out.txt")).expect("file in the sandbox");
    assert_eq!(written, "written by the task");
}

#[tokio::test]
async fn exit_codes_traps_memory_caps_and_missing_sandboxes_are_reported() {
    let exec = executor(Duration::from_secs(5));
    let prepared = exec.prepare(shoal_artifacts::WASM_COMMAND).expect("prepare");
    let run = |args: &'static [&'static str]| {
        let (exec, prepared) = (exec.clone(), prepared.clone());
        async move {
            let logs = TaskLogs::new(4096);
            let mut task = exec.start(&prepared, spec("t", args, &logs)).await.expect("start");
            (finish(&mut task).await, logs)
        }
    };
    // WASI 0.2's `exit` carries success or failure only (`exit-with-code` is still unstable), so
    // `exit(7)` reads as 1, like any failure.
    assert_eq!(run(&["exit", "7"]).await.0, Exit::Code(1));
    assert_eq!(run(&["exit", "0"]).await.0, Exit::Code(0));
    let (exit, logs) = run(&["trap"]).await;
    assert!(matches!(&exit, Exit::Trap(_)), "{exit:?}");
    assert!(String::from_utf8_lossy(&logs.stderr().bytes).contains("panics on purpose"));
    assert_eq!(run(&["oom"]).await.0, Exit::OutOfMemory { limit: 64 << 20 });
    // Without a sandbox the task has no file system: writing `/out.txt` fails, the task panics.
    let (exit, logs) = run(&["hello"]).await;
    assert!(matches!(&exit, Exit::Trap(_)), "{exit:?}");
    assert!(String::from_utf8_lossy(&logs.stderr().bytes).contains("write into the sandbox"));
}

#[tokio::test]
async fn logs_keep_the_tail_of_a_flood() {
    let exec = executor(Duration::from_secs(5));
    let prepared = exec.prepare(shoal_artifacts::WASM_COMMAND).expect("prepare");
    let logs = TaskLogs::new(16 << 10);
    let mut task = exec.start(&prepared, spec("flood", &["flood"], &logs)).await.expect("start");
    assert_eq!(finish(&mut task).await, Exit::Code(0));
    let out = logs.stdout();
    assert_eq!(out.bytes.len(), 16 << 10);
    assert!(out.bytes.ends_with(b"the end\n"), "the newest bytes are kept");
    assert_eq!(out.dropped + out.bytes.len() as u64, 8192 * 1025 + 8);
}

#[tokio::test]
async fn an_http_service_serves_each_request_in_a_fresh_instance_and_survives_bad_ones() {
    let exec = executor(Duration::from_millis(500));
    let prepared = exec.prepare(shoal_artifacts::WASM_HTTP).expect("prepare");
    assert_eq!(prepared.kind, TaskKind::HttpService);
    let logs = TaskLogs::new(4096);

    let mut no_addr = spec("web-1", &[], &logs);
    no_addr.listen = None;
    let err = exec.start(&prepared, no_addr).await.err().expect("a service needs an address");
    assert!(matches!(err, ExecError::Spec(_)), "{err}");

    let mut s = spec("web-1", &[], &logs);
    s.listen = Some("127.0.0.1:0".parse().expect("addr"));
    let started = Instant::now();
    let mut task = exec.start(&prepared, s).await.expect("start");
    eprintln!("service listening after {:?}", started.elapsed());
    let url = format!("http://{}", task.local_addr().expect("address"));
    let http = reqwest::Client::new();
    let get = |path: &str| {
        let (http, url) = (http.clone(), format!("{url}{path}"));
        async move {
            let r = http.get(url).send().await.expect("request");
            (r.status().as_u16(), r.text().await.expect("body"))
        }
    };
    assert_eq!(get("/items?x=1").await, (200, "hello from web-1: GET /items?x=1".to_owned()));
    // A request that traps fails alone.
    assert_eq!(get("/trap").await.0, 500);
    // A request past its deadline is a 504; the service goes on.
    let (status, body) = get("/spin").await;
    assert_eq!(status, 504, "{body}");
    assert_eq!(get("/after").await, (200, "hello from web-1: GET /after".to_owned()));

    task.kill();
    assert_eq!(finish(&mut task).await, Exit::Killed);
    // Stopped: nobody listens any more.
    let mut refused = false;
    for _ in 0..50 {
        if http.get(format!("{url}/")).send().await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(refused, "the service still answers after being killed");
}

#[tokio::test]
async fn a_spinning_task_is_killed_and_does_not_starve_the_agent() {
    // One thread for everything (the default for `#[tokio::test]`): the service can only answer
    // if the spinning command yields.
    let exec = executor(Duration::from_secs(5));
    let command = exec.prepare(shoal_artifacts::WASM_COMMAND).expect("prepare");
    let service = exec.prepare(shoal_artifacts::WASM_HTTP).expect("prepare");
    let logs = TaskLogs::new(4096);
    let mut spinner = exec.start(&command, spec("spin", &["spin"], &logs)).await.expect("start");
    let mut s = spec("web-2", &[], &logs);
    s.listen = Some("127.0.0.1:0".parse().expect("addr"));
    let web = exec.start(&service, s).await.expect("start service");
    let url = format!("http://{}/ping", web.local_addr().expect("address"));
    let body = reqwest::get(url).await.expect("the service answers while a task spins").text().await.expect("body");
    assert_eq!(body, "hello from web-2: GET /ping");
    assert!(spinner.try_exit().is_none(), "the spinner is still running");
    spinner.kill();
    assert_eq!(finish(&mut spinner).await, Exit::Killed);
}

#[test]
fn what_is_not_a_task_is_refused_with_a_reason() {
    let exec = executor(Duration::from_secs(5));
    let err = exec.prepare(b"definitely not wasm").err().expect("garbage");
    assert!(matches!(err, ExecError::Invalid(_)), "{err}");
    let err = exec.prepare(shoal_artifacts::ROUND_ROBIN).err().expect("a plugin is not a task");
    assert!(matches!(&err, ExecError::NotATask(m) if m.contains("shoal:plugin/routing")), "{err}");
}
