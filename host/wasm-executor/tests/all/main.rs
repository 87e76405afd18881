//! The Wasm executor runs real components: the `wasm-command`, `wasm-http` and `wasm-kv` test
//! programs.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use shoal_testkit::eventually;
use shoal_wasm_executor::{
    ExecError, ExecutorConfig, Exit, MemoryTaskKv, TaskKind, TaskKv, TaskKvAccess, TaskLogs, TaskSpec, WasmExecutor,
};

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
        kv: None,
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
    eventually(
        "the killed service to refuse connections (it still answers after being killed)",
        Duration::from_secs(1),
        || async { http.get(format!("{url}/")).send().await.is_err().then_some(()) },
    )
    .await;
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

/// Run the `wasm-kv` program once with `args`, the bucket `BUCKET` names and `kv` as its access;
/// returns how it ended and its stdout.
async fn kv_task(exec: &WasmExecutor, kv: Option<TaskKvAccess>, bucket: &str, args: &[&str]) -> (Exit, String) {
    let prepared = exec.prepare(shoal_artifacts::WASM_KV).expect("prepare");
    let logs = TaskLogs::new(64 << 10);
    let mut s = spec("kv-task", args, &logs);
    s.env.push(("BUCKET".into(), bucket.into()));
    s.kv = kv;
    let mut task = exec.start(&prepared, s).await.expect("start");
    let exit = finish(&mut task).await;
    let stderr = String::from_utf8_lossy(&logs.stderr().bytes).into_owned();
    assert!(stderr.is_empty(), "{args:?} wrote to stderr: {stderr}");
    (exit, String::from_utf8_lossy(&logs.stdout().bytes).into_owned())
}

fn access(kv: &Arc<MemoryTaskKv>, buckets: &[&str]) -> Option<TaskKvAccess> {
    Some(TaskKvAccess { backend: kv.clone(), buckets: buckets.iter().map(|b| b.to_string()).collect() })
}

#[tokio::test]
async fn tasks_keep_their_state_in_the_backend_between_runs() {
    let exec = executor(Duration::from_secs(5));
    let kv = Arc::new(MemoryTaskKv::new());
    let run = |args: &'static [&'static str]| {
        let (exec, access) = (exec.clone(), access(&kv, &["tasks", "other"]));
        async move { kv_task(&exec, access, "tasks", args).await }
    };
    let ok = |out: &str| (Exit::Code(0), out.to_owned());

    assert_eq!(run(&["get", "greeting"]).await, ok("(none)\n"));
    assert_eq!(run(&["set", "greeting", "ahoy"]).await, ok("ok\n"));
    // A second task, a fresh instance: what it reads comes from the backend.
    assert_eq!(run(&["get", "greeting"]).await, ok("ahoy\n"));
    assert_eq!(kv.get("tasks", "greeting").await.expect("the memory store answers"), Some(b"ahoy".to_vec()));
    assert_eq!(kv.get("other", "greeting").await.expect("the memory store answers"), None, "buckets are separate");
    assert_eq!(run(&["exists", "greeting"]).await, ok("true\n"));
    assert_eq!(run(&["delete", "greeting"]).await, ok("ok\n"));
    assert_eq!(run(&["exists", "greeting"]).await, ok("false\n"));

    // Counters: decimal text, absent counts as 0.
    assert_eq!(run(&["incr", "runs"]).await, ok("1\n"));
    assert_eq!(run(&["incr", "runs", "41"]).await, ok("42\n"));
    assert_eq!(kv.get("tasks", "runs").await.expect("the memory store answers"), Some(b"42".to_vec()));
    assert_eq!(run(&["set", "word", "ahoy"]).await, ok("ok\n"));
    let (exit, out) = run(&["incr", "word"]).await;
    assert_eq!(exit, Exit::Code(1));
    assert!(out.starts_with("error: other: the value is not a counter"), "{out}");

    // Batches.
    assert_eq!(run(&["set-many", "a=1", "b=2"]).await, ok("ok\n"));
    assert_eq!(run(&["get-many", "a", "b", "c"]).await, ok("a=1\nb=2\nc: (none)\n"));
    assert_eq!(run(&["delete-many", "a", "c"]).await, ok("ok\n"));
    assert_eq!(run(&["get-many", "a", "b"]).await, ok("a: (none)\nb=2\n"));
}

#[tokio::test]
async fn list_keys_follows_cursors_across_pages() {
    let exec = executor(Duration::from_secs(5));
    // Two keys a page, so five keys take three pages and two cursors.
    let kv = Arc::new(MemoryTaskKv::with_page_size(2));
    for key in ["k1", "k2", "k3", "k4", "k5"] {
        kv.set("tasks", key, b"v".to_vec()).await.expect("set");
    }
    let (exit, out) = kv_task(&exec, access(&kv, &["tasks"]), "tasks", &["list"]).await;
    assert_eq!((exit, out.as_str()), (Exit::Code(0), "k1\nk2\nk3\nk4\nk5\npages: 3\n"));
    // An empty bucket is one empty page.
    let (exit, out) = kv_task(&exec, access(&kv, &["empty"]), "empty", &["list"]).await;
    assert_eq!((exit, out.as_str()), (Exit::Code(0), "pages: 1\n"));
    // A cursor the host never handed out is an error, not a trap.
    let (exit, out) = kv_task(&exec, access(&kv, &["tasks"]), "tasks", &["forge-cursor", "99"]).await;
    assert_eq!(exit, Exit::Code(1));
    assert!(out.starts_with("error: other: unknown cursor 99"), "{out}");
}

#[tokio::test]
async fn only_the_buckets_the_spec_lists_open() {
    let exec = executor(Duration::from_secs(5));
    let kv = Arc::new(MemoryTaskKv::new());
    kv.set("secret", "k", b"hidden".to_vec()).await.expect("set");
    let listed = access(&kv, &["tasks"]);
    assert_eq!(kv_task(&exec, listed.clone(), "tasks", &["open-denied", "secret"]).await.0, Exit::Code(0));
    let denied = (Exit::Code(1), "error: access-denied\n".to_owned());
    assert_eq!(kv_task(&exec, listed.clone(), "secret", &["get", "k"]).await, denied);
    // Identifiers are compared exactly.
    assert_eq!(kv_task(&exec, listed, "tasks ", &["get", "k"]).await, denied);

    // Without a backend, every bucket is denied alike.
    assert_eq!(kv_task(&exec, None, "tasks", &["get", "k"]).await, denied);
    assert_eq!(kv_task(&exec, None, "tasks", &["set", "k", "v"]).await, denied);
    assert_eq!(kv_task(&exec, None, "tasks", &["open-denied", "tasks"]).await, (Exit::Code(0), "denied\n".into()));
}

#[tokio::test]
async fn oversized_keys_and_values_are_errors_not_traps() {
    let exec = executor(Duration::from_secs(5));
    let kv = Arc::new(MemoryTaskKv::new());
    let at = |args: Vec<String>| {
        let (exec, access) = (exec.clone(), access(&kv, &["tasks"]));
        async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            kv_task(&exec, access, "tasks", &args).await
        }
    };
    let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();

    // Exactly the limit is fine; one byte more is refused and writes nothing.
    assert_eq!(at(args(&["set-big", "big", "1048576"])).await.0, Exit::Code(0));
    assert_eq!(kv.get("tasks", "big").await.expect("get").map(|v| v.len()), Some(1 << 20));
    let (exit, out) = at(args(&["set-big", "bigger", "1048577"])).await;
    assert_eq!(exit, Exit::Code(1));
    assert_eq!(out, "error: other: value of 1048577 bytes is over the limit of 1048576 bytes\n");
    assert_eq!(kv.get("tasks", "bigger").await.expect("the memory store answers"), None);

    let long = "k".repeat(1025);
    let (exit, out) = at(vec!["set".into(), long.clone(), "v".into()]).await;
    assert_eq!(exit, Exit::Code(1));
    assert_eq!(out, "error: other: key of 1025 bytes is over the limit of 1024 bytes\n");
    let (exit, out) = at(vec!["get".into(), long]).await;
    assert_eq!((exit, out.starts_with("error: other: key of 1025 bytes")), (Exit::Code(1), true), "{out}");
    let (exit, out) = at(args(&["get", ""])).await;
    assert_eq!((exit, out.as_str()), (Exit::Code(1), "error: other: empty key\n"));

    // A batch is checked whole: one bad key and nothing is written.
    let (exit, out) = at(args(&["set-many", "fine=1", "=2"])).await;
    assert_eq!((exit, out.as_str()), (Exit::Code(1), "error: other: empty key\n"));
    assert_eq!(kv.get("tasks", "fine").await.expect("the memory store answers"), None);
}

/// A backend that never answers: the state store is unreachable. Its flag is raised once a call
/// is waiting on it.
struct Hanging(Arc<AtomicBool>);

#[async_trait::async_trait]
impl TaskKv for Hanging {
    async fn get(&self, _: &str, _: &str) -> Result<Option<Vec<u8>>, shoal_wasm_executor::kv::TaskKvError> {
        self.0.store(true, Ordering::SeqCst);
        std::future::pending().await
    }
    async fn set(&self, _: &str, _: &str, _: Vec<u8>) -> Result<(), shoal_wasm_executor::kv::TaskKvError> {
        self.0.store(true, Ordering::SeqCst);
        std::future::pending().await
    }
    async fn delete(&self, _: &str, _: &str) -> Result<(), shoal_wasm_executor::kv::TaskKvError> {
        self.0.store(true, Ordering::SeqCst);
        std::future::pending().await
    }
    async fn list_keys(
        &self,
        _: &str,
        _: Option<&str>,
    ) -> Result<(Vec<String>, Option<String>), shoal_wasm_executor::kv::TaskKvError> {
        self.0.store(true, Ordering::SeqCst);
        std::future::pending().await
    }
    async fn increment(&self, _: &str, _: &str, _: u64) -> Result<u64, shoal_wasm_executor::kv::TaskKvError> {
        self.0.store(true, Ordering::SeqCst);
        std::future::pending().await
    }
}

#[tokio::test]
async fn a_task_waiting_on_the_store_can_still_be_killed() {
    let exec = executor(Duration::from_secs(5));
    let prepared = exec.prepare(shoal_artifacts::WASM_KV).expect("prepare");
    let logs = TaskLogs::new(4096);
    let mut s = spec("stuck", &["get", "k"], &logs);
    let waiting = Arc::new(AtomicBool::new(false));
    s.kv = Some(TaskKvAccess { backend: Arc::new(Hanging(waiting.clone())), buckets: vec!["tasks".into()] });
    let mut task = exec.start(&prepared, s).await.expect("start");
    eventually("the task to call the store", Duration::from_secs(10), || {
        std::future::ready(waiting.load(Ordering::SeqCst).then_some(()))
    })
    .await;
    assert!(task.try_exit().is_none(), "the task waits for the store");
    let killed = Instant::now();
    task.kill();
    assert_eq!(finish(&mut task).await, Exit::Killed);
    assert!(killed.elapsed() < Duration::from_secs(1), "killed only after {:?}", killed.elapsed());
}
