//! Issue 25: how a role's process starts and stops. Its settings come from a flag, else its
//! `SHOAL_*` variable, else the `--config` file, else the default; SIGTERM (what service managers
//! and container runtimes send) stops `shoal dev` gracefully — a request in flight through the
//! gateway is answered, the local agent's tasks are stopped — and stops `shoal agent`'s tasks and
//! reports them to the master before the agent exits.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use shoal_testkit::eventually_sync;

use super::fixture::Cluster;
use super::tasks::http;
use super::{Dev, sandbox_root, shoal, showing_last};

/// A free port on 127.0.0.1 (free when this returns).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

#[test]
fn a_setting_comes_from_the_flag_then_the_variable_then_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sandboxes = sandbox_root();
    let (flag_api, env_api, file_api, env_gateway, file_gateway) =
        (free_port(), free_port(), free_port(), free_port(), free_port());
    let config = dir.path().join("shoal.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:{file_api}\"\n[dev]\ngateway = \"127.0.0.1:{file_gateway}\"\n\
             agent-resources = \"cpus:3;mem:1000;disk:100;ports:[35000-35010]\"\n\
             data_dir = \"{}\"\n[master]\nlisten = \"127.0.0.1:1\"\n",
            dir.path().join("data").display()
        ),
    )
    .expect("write the config file");
    let mut child = Command::new(shoal())
        .args(["dev", "--listen", &format!("127.0.0.1:{flag_api}"), "--sandbox-dir"])
        .arg(sandboxes.path())
        .env("SHOAL_CONFIG", &config)
        .env("SHOAL_LISTEN", format!("127.0.0.1:{env_api}"))
        .env("SHOAL_GATEWAY", format!("127.0.0.1:{env_gateway}"))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn shoal dev");
    let stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let printed: Vec<String> =
        stdout.lines().map_while(Result::ok).take_while(|l| !l.trim().starts_with("admin token")).collect();
    let printed = printed.join("\n");
    let _ = child.kill();
    let _ = child.wait();
    assert!(printed.contains(&format!("API:      http://127.0.0.1:{flag_api}/v1")), "the flag wins:\n{printed}");
    assert!(
        printed.contains(&format!("gateway:  http://127.0.0.1:{env_gateway}/")),
        "the variable beats the file:\n{printed}"
    );
    assert!(
        printed.contains(&format!("data: {}", dir.path().join("data").display())),
        "the file's [dev] table:\n{printed}"
    );

    // Without the flag and the variables, the file: and the agent has the file's resources.
    let dev = Dev::start_in(&dir.path().join("data"), &["--config", config.to_str().expect("utf-8")], &[]);
    let (status, body) = http(&dev.api, &dev.token, "GET", "/v1/agents", "");
    assert_eq!(status, 200, "{body}");
    let agents: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(agents["agents"][0]["total"]["cpus"], 3.0, "the file's agent-resources: {body}");
    // `Dev::start_in` passes --listen and --gateway: the file's addresses are not used.
    assert!(!dev.api.ends_with(&format!(":{file_api}")), "{}", dev.api);

    // A setting the role does not have: refused before anything starts, exit code 2.
    std::fs::write(&config, "[dev]\nlisten-on = \"127.0.0.1:0\"\n").expect("write");
    let out = Command::new(shoal()).args(["dev", "--config"]).arg(&config).output().expect("run shoal dev");
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("`listen-on` is not a setting of `shoal dev`"), "{out:?}");
}

/// Whether a process runs whose command line is exactly `args` (NUL-separated in /proc).
fn running(args: &[&str]) -> bool {
    let want = format!("{}\0", args.join("\0"));
    std::fs::read_dir("/proc").into_iter().flatten().flatten().any(|p| {
        std::fs::read(p.path().join("cmdline")).is_ok_and(|c| c == want.as_bytes())
            && std::fs::read_to_string(p.path().join("stat"))
                .is_ok_and(|s| s.rsplit_once(')').and_then(|(_, r)| r.split_whitespace().next()) != Some("Z"))
    })
}

/// Deploys app `id` whose one task runs `sleep <seconds>` (a number no other test uses, to find
/// the process by), and waits for it to run.
fn deploy_sleeper(api: &str, token: &str, id: &str, seconds: &str) {
    let app =
        serde_json::json!({"id": id, "instances": 1, "cmd": format!("exec sleep {seconds}"), "cpus": 0.1, "mem": 16});
    let (status, body) = http(api, token, "PUT", &format!("/v1/apps/{id}"), &app.to_string());
    assert!(status == 200 || status == 201, "{status} {body}");
    eventually_sync(&format!("{id}'s task to run"), Duration::from_secs(30), || {
        running(&["sleep", seconds]).then_some(())
    });
}

#[test]
fn sigterm_lets_shoal_dev_answer_the_requests_in_flight_and_stop_its_tasks() {
    let dev = Dev::start(None);
    deploy_sleeper(&dev.api, &dev.token, "sleeper", "3517");

    // An upstream that holds the request until the test lets it answer.
    let upstream = TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = upstream.local_addr().expect("addr").to_string();
    let (got, got_rx) = mpsc::channel();
    let (release, release_rx) = mpsc::channel::<()>();
    std::thread::spawn(move || {
        let (mut conn, _) = upstream.accept().expect("accept");
        let mut head = [0u8; 4096];
        let _ = conn.read(&mut head);
        got.send(()).expect("tell the test");
        let _ = release_rx.recv_timeout(Duration::from_secs(30));
        let _ = conn.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\nconnection: close\r\n\r\nslow-done");
    });
    let (ok, out, err) = dev.cli(&["service", "register", "slow", "s1", "--address", &address]);
    assert!(ok, "{out}{err}");
    let (ok, out, err) = dev.cli(&["route", "put", "slow", "--prefix", "/slow", "--service", "slow"]);
    assert!(ok, "{out}{err}");
    let gateway = dev.gateway.trim_start_matches("http://").to_owned();
    let client = std::thread::spawn(move || {
        let mut conn = TcpStream::connect(&gateway).expect("connect to the gateway");
        conn.write_all(format!("GET /slow HTTP/1.1\r\nhost: {gateway}\r\nconnection: close\r\n\r\n").as_bytes())
            .expect("send");
        let mut answer = String::new();
        let _ = conn.read_to_string(&mut answer);
        answer
    });
    got_rx.recv_timeout(Duration::from_secs(30)).expect("the request to reach the upstream");

    let pid = dev.child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().expect("kill").success());
    // Draining: the gateway takes no new connection, and the request in flight is still waiting.
    let gateway = dev.gateway.trim_start_matches("http://").to_owned();
    eventually_sync("the gateway to stop accepting", Duration::from_secs(10), || {
        TcpStream::connect(&gateway).is_err().then_some(())
    });
    release.send(()).expect("release the upstream");
    let answer = client.join().expect("the client thread");
    assert!(
        answer.starts_with("HTTP/1.1 200") && answer.ends_with("slow-done"),
        "the request in flight is answered: {answer:?}"
    );

    let mut dev = dev;
    let status = eventually_sync("shoal dev to exit after SIGTERM", Duration::from_secs(15), || {
        dev.child.try_wait().expect("wait")
    });
    assert!(status.success(), "shoal dev exited with {status}");
    assert!(!running(&["sleep", "3517"]), "the task was stopped with shoal dev");
}

#[test]
fn sigterm_stops_an_agents_tasks_and_reports_them_to_the_master() {
    let mut cluster = Cluster::builder().agents(&[("t1", "r1")]).start();
    cluster.wait_for_agents("registration", &[("t1", "active")]);
    deploy_sleeper(cluster.api(), cluster.token(), "napper", "3518");
    // The agent lists the task the master placed there (not only what it reported at registration).
    let (status, body) = http(cluster.api(), cluster.token(), "GET", "/v1/agents/t1", "");
    assert_eq!(status, 200, "{body}");
    let agent: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(agent["tasks"].as_array().map(Vec::len), Some(1), "{body}");

    let status = cluster.terminate_agent("t1", Duration::from_secs(15));
    assert!(status.success(), "the agent exited with {status}");
    assert!(!running(&["sleep", "3518"]), "the agent stopped its task before it exited");
    // The master heard it from the agent (killed), not by losing the agent (lost).
    let (status, body) = http(cluster.api(), cluster.token(), "GET", "/v1/tasks?service=napper", "");
    assert_eq!(status, 200, "{body}");
    eventually_sync(
        "the master to know napper's task was killed",
        Duration::from_secs(5),
        showing_last(|| {
            let (_, body) = http(cluster.api(), cluster.token(), "GET", "/v1/tasks?service=napper", "");
            let v: serde_json::Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
            let states: Vec<String> =
                v["tasks"].as_array().into_iter().flatten().map(|t| t["state"].to_string()).collect();
            if states.iter().any(|s| s.contains("killed")) { Ok(()) } else { Err(body) }
        }),
    );
}
