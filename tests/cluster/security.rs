//! Issue 21, the bus: attacks on a running cluster's `nats-server`, configured and credentialed by
//! `shoal nats init`, each performed as written in the issue and each refused. A client without
//! credentials cannot connect; with agent `a1`'s credentials it cannot launch on agent `a2`,
//! listen to `a2`'s commands, forge `a2`'s status or registration, or publish a shard map. What it
//! is granted (its own heartbeat) still works, so the refusals are the permissions' doing. A
//! `tls://` URL gets TLS, checked against the CA given with `--nats-ca`. Master credentials are
//! not enough either once a newer leader has spoken: a forged kill of a lower term than the one
//! a task was launched under does not kill it, also after the agent restarts.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use shoal_bus::auth;
use shoal_testkit::{eventually, eventually_sync};

use super::fixture::Cluster;

/// A raw NATS client with `creds`, and the errors the server sent it.
pub(crate) async fn connect_as(url: &str, creds: &std::path::Path) -> (async_nats::Client, Arc<Mutex<Vec<String>>>) {
    let seed = auth::read_seed(creds).expect("a credentials file");
    let public = auth::public_key_of(&seed).expect("a user seed");
    let errors = Arc::new(Mutex::new(Vec::new()));
    let seen = errors.clone();
    let client = async_nats::ConnectOptions::with_nkey(seed)
        .custom_inbox_prefix(auth::inbox_prefix(&public))
        .event_callback(move |event| {
            let seen = seen.clone();
            async move {
                if let async_nats::Event::ServerError(err) = event {
                    seen.lock().expect("lock").push(err.to_string());
                }
            }
        })
        .connect(url)
        .await
        .expect("connects with its credentials");
    (client, errors)
}

/// Waits until the server has told `errors`' client that `what` on `subject` was refused.
pub(crate) async fn refused(errors: &Arc<Mutex<Vec<String>>>, what: &str, subject: &str) {
    let want = format!("Permissions Violation for {what} to \"{subject}\"");
    let said = || errors.lock().expect("lock").clone();
    eventually(&format!("the server refuses: {want} (it said {:?} so far)", said()), Duration::from_secs(10), || {
        let found = said().iter().any(|e| e.contains(&want));
        async move { found.then_some(()) }
    })
    .await;
}

#[test]
fn the_bus_lets_each_role_speak_only_for_itself() {
    let mut cluster = Cluster::builder().agents(&[("a1", "r1"), ("a2", "r1")]).start();
    cluster.wait_for_agents("registration", &[("a1", "active"), ("a2", "active")]);
    let url = cluster.nats_url();
    let a1_creds = cluster.creds("agent", "a1");
    let master_creds = cluster.nats_dir().join("creds/master.nk");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        // No credentials: not even a connection.
        let err = shoal_bus::NatsBus::connect(&url).await.expect_err("anonymous clients are refused");
        assert!(err.to_string().to_lowercase().contains("authorization"), "{err}");

        // The master's view of a2's launch subject, to see what reaches it.
        let (master, _) = connect_as(&url, &master_creds).await;
        let a2_launch = shoal_bus::subject::agent_launch("a2");
        let mut watch = master.subscribe(a2_launch.clone()).await.expect("subscribe");
        master.flush().await.expect("flush");

        let (a1, errors) = connect_as(&url, &a1_creds).await;
        // What a1 is granted works: its own heartbeat is answered.
        let beat =
            a1.request(shoal_bus::subject::agent_heartbeat("a1"), "".into()).await.expect("a1 may heartbeat as itself");
        let beat: serde_json::Value = serde_json::from_slice(&beat.payload).expect("JSON");
        assert_eq!(beat["known"], true, "{beat}");

        // Launch on a2: refused by the server, and never delivered.
        let launch = serde_json::json!({"tasks": [{"id": "evil", "command": {"shell": "touch /tmp/pwned"}}]});
        a1.publish(a2_launch.clone(), launch.to_string().into()).await.expect("sent");
        refused(&errors, "Publish", &a2_launch).await;
        master.publish(a2_launch.clone(), "marker".into()).await.expect("marker");
        let first =
            tokio::time::timeout(Duration::from_secs(10), watch.next()).await.expect("a message").expect("open");
        assert_eq!(&first.payload[..], b"marker", "a forged launch reached agent a2's subject");

        // Listen to a2's commands, forge its status, register as a2, publish a shard map, talk to
        // a store node's admin subject: each refused.
        let _spy = a1.subscribe(a2_launch.clone()).await.expect("the client sends the SUB");
        refused(&errors, "Subscription", &a2_launch).await;
        let forged_status = serde_json::json!({"uuid": "u", "task_id": "t", "agent_id": "a2", "state": "failed",
            "timestamp_ms": 1});
        let a2_status = shoal_bus::subject::agent_status("a2");
        a1.publish(a2_status.clone(), forged_status.to_string().into()).await.expect("sent");
        refused(&errors, "Publish", &a2_status).await;
        let a2_register = shoal_bus::subject::agent_register("a2");
        a1.publish(a2_register.clone(), "{}".into()).await.expect("sent");
        refused(&errors, "Publish", &a2_register).await;
        let map = serde_json::json!({"data": {"epoch": u64::MAX, "shards": ["a1"]}});
        a1.publish(shoal_bus::subject::STORE_SHARDMAP, map.to_string().into()).await.expect("sent");
        refused(&errors, "Publish", shoal_bus::subject::STORE_SHARDMAP).await;
        let admin = shoal_bus::subject::store_admin("master");
        a1.publish(admin.clone(), "x".into()).await.expect("sent");
        refused(&errors, "Publish", &admin).await;

        // On its own subject, a1 still cannot register as someone else: the master checks the
        // payload against the subject.
        let registration = serde_json::json!({"id": "a2", "hostname": "host-a1",
            "resources": {"cpus": 1.0, "mem_mb": 64.0}});
        let reply = a1
            .request(shoal_bus::subject::agent_register("a1"), registration.to_string().into())
            .await
            .expect("the master answers");
        let reply: serde_json::Value = serde_json::from_slice(&reply.payload).expect("JSON");
        assert_eq!(reply["accepted"], false, "{reply}");
        assert!(reply["error"].as_str().unwrap_or_default().contains("may not register as"), "{reply}");
    });
    // Nothing of it changed the cluster.
    cluster.wait_for_agents("after the attacks", &[("a1", "active"), ("a2", "active")]);
    assert!(!std::path::Path::new("/tmp/pwned").exists());
}

#[test]
fn roles_refuse_to_start_on_nats_without_credentials_unless_told_to() {
    let out = std::process::Command::new(super::shoal())
        .args(["agent", "--nats", "nats://127.0.0.1:1", "--id", "a1"])
        .output()
        .expect("run shoal agent");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--nats-creds") && err.contains("--nats-insecure"), "{err}");
}

/// `openssl`, which must succeed.
fn openssl(dir: &std::path::Path, args: &[&str]) {
    let out = std::process::Command::new("openssl").current_dir(dir).args(args).output().expect("run openssl");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn tls_urls_connect_with_tls_to_the_server_nats_init_configured() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    // A certificate authority and a certificate for 127.0.0.1 signed by it.
    openssl(
        d,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=shoal test CA",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
        ],
    );
    openssl(
        d,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
        ],
    );
    std::fs::write(d.join("ext.cnf"), "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n").expect("write");
    openssl(
        d,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
            "-out",
            "server.pem",
        ],
    );
    let nats_dir = d.join("nats");
    let out = std::process::Command::new(super::shoal())
        .args(["nats", "init", "--no-jetstream", "--dir"])
        .arg(&nats_dir)
        .arg("--tls-cert")
        .arg(d.join("server.pem"))
        .arg("--tls-key")
        .arg(d.join("server.key"))
        .output()
        .expect("shoal nats init");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let server = shoal_testkit::NatsServer::start_with_config(&nats_dir.join("nats-server.conf")).expect("nats-server");
    let url = format!("tls://127.0.0.1:{}", server.port());
    let creds = nats_dir.join("creds/master.nk");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        use shoal_bus::Bus;
        let trusted =
            shoal_bus::NatsOptions { creds: Some(creds.clone()), ca: Some(d.join("ca.pem")), ..Default::default() };
        let bus = shoal_bus::NatsBus::connect_with(&url, &trusted).await.expect("TLS with the CA");
        let mut echo = bus.subscribe("shoal.evt.test.tls").await.expect("subscribe");
        bus.flush().await.expect("flush");
        bus.publish("shoal.evt.test.tls", "over tls".into()).await.expect("publish");
        let got =
            tokio::time::timeout(Duration::from_secs(10), echo.next()).await.expect("in time").expect("a message");
        assert_eq!(&got.payload[..], b"over tls");

        let untrusted = shoal_bus::NatsOptions { creds: Some(creds), ca: None, ..Default::default() };
        let err = shoal_bus::NatsBus::connect_with(&url, &untrusted).await.expect_err("an unknown CA is refused");
        assert!(err.to_string().to_lowercase().contains("certificate"), "{err}");
    });
}

/// Letting a new identity in (`shoal nats add` and a reload) leaves the connected ones working:
/// an agent's request/reply before and after the reload.
#[test]
fn adding_an_identity_keeps_connected_roles_working() {
    let mut cluster = Cluster::builder().agents(&[("a1", "r1")]).start();
    cluster.wait_for_agents("registration", &[("a1", "active")]);
    let url = cluster.nats_url();
    let a1_creds = cluster.creds("agent", "a1");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let (a1, errors) = runtime.block_on(connect_as(&url, &a1_creds));
    let beat = |a1: &async_nats::Client| {
        runtime.block_on(async {
            let reply = tokio::time::timeout(
                Duration::from_secs(10),
                a1.request(shoal_bus::subject::agent_heartbeat("a1"), "".into()),
            )
            .await;
            matches!(reply, Ok(Ok(_)))
        })
    };
    assert!(beat(&a1), "a heartbeat before the reload");
    for n in 2..5 {
        cluster.creds("agent", &format!("a{n}"));
        assert!(beat(&a1), "a heartbeat after reload {n}; the server said {:?}", errors.lock().expect("lock"));
    }
    cluster.wait_for_agents("after the reloads", &[("a1", "active")]);
}

/// A launch of `id` on agent `a1` at leader term `term`, as a master sends it: the agent's reply.
async fn launch_as_master(master: &async_nats::Client, term: u64, id: &str) -> serde_json::Value {
    let launch = serde_json::json!({"term": term, "tasks": [{"id": id, "framework": "attacker", "agent_id": "a1",
        "command": {"shell": "exec sleep 600"}, "resources": {"cpus": 0.1, "mem_mb": 16.0}}]});
    request_as_master(master, shoal_bus::subject::agent_launch("a1"), launch).await
}

/// A kill of `id` on agent `a1` at leader term `term`, as a master sends it: the agent's reply.
async fn kill_as_master(master: &async_nats::Client, term: u64, id: &str) -> serde_json::Value {
    let kill = serde_json::json!({"term": term, "task_id": id, "grace_ms": 500});
    request_as_master(master, shoal_bus::subject::agent_kill("a1"), kill).await
}

/// `body` to `subject`, until agent `a1` answers (it may be starting).
async fn request_as_master(master: &async_nats::Client, subject: String, body: serde_json::Value) -> serde_json::Value {
    eventually(&format!("agent a1 to answer on {subject}"), Duration::from_secs(20), || {
        let (master, subject, body) = (master.clone(), subject.clone(), body.to_string());
        async move {
            let reply = tokio::time::timeout(Duration::from_secs(5), master.request(subject, body.into())).await;
            serde_json::from_slice(&reply.ok()?.ok()?.payload).ok()
        }
    })
    .await
}

/// Reads agent `a1`'s status updates (as the master hears them) until task `id` reports `state`;
/// returns every (task, state) read on the way.
async fn until_status(statuses: &mut async_nats::Subscriber, id: &str, state: &str) -> Vec<(String, String)> {
    let mut seen = Vec::new();
    let wait = async {
        while let Some(msg) = statuses.next().await {
            let update: serde_json::Value = serde_json::from_slice(&msg.payload).expect("a status update");
            let (task, now) =
                (update["task_id"].as_str().unwrap_or_default(), update["state"].as_str().unwrap_or_default());
            seen.push((task.to_owned(), now.to_owned()));
            if task == id && now == state {
                return;
            }
        }
    };
    let done = tokio::time::timeout(Duration::from_secs(20), wait).await;
    assert!(done.is_ok(), "task {id} never reported {state}; the agent reported {seen:?}");
    seen
}

/// Issue 22, fencing: someone holding the master's credentials (a deposed master, or whoever took
/// its key) forges a kill of a lower term than the task's launch. The agent refuses it, the task
/// keeps running, and a restart of the agent does not make it forget the term.
#[test]
fn a_forged_kill_of_a_lower_term_does_not_kill_a_task_of_a_higher_term() {
    let mut cluster = Cluster::builder().agents(&[("a1", "r1")]).start();
    cluster.wait_for_agents("registration", &[("a1", "active")]);
    let master_creds = cluster.nats_dir().join("creds/master.nk");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let (master, _) = runtime.block_on(connect_as(&cluster.nats_url(), &master_creds));
    runtime.block_on(async {
        let mut statuses = master.subscribe(shoal_bus::subject::agent_status("a1")).await.expect("subscribe");
        master.flush().await.expect("flush");
        // The leader of term 5 launches a task.
        let reply = launch_as_master(&master, 5, "fenced").await;
        assert_eq!(reply["accepted"], serde_json::json!(["fenced"]), "{reply}");
        until_status(&mut statuses, "fenced", "running").await;

        // The forged kill of term 4: refused, with the reason.
        let reply = kill_as_master(&master, 4, "fenced").await;
        assert_eq!(reply["refused"], "stale term 4: this agent has seen term 5", "{reply}");
        // A launch of term 5 is the barrier: by the time its task runs, a kill carried out would
        // have ended `fenced` (a SIGTERM to `sleep`), and its status would have come first.
        let reply = launch_as_master(&master, 5, "barrier").await;
        assert_eq!(reply["accepted"], serde_json::json!(["barrier"]), "{reply}");
        let seen = until_status(&mut statuses, "barrier", "running").await;
        assert!(!seen.iter().any(|(task, _)| task == "fenced"), "the forged kill changed the task: {seen:?}");

        // The leader's own kill works.
        let reply = kill_as_master(&master, 5, "fenced").await;
        assert_eq!((reply["known"].as_bool(), reply["refused"].is_null()), (Some(true), true), "{reply}");
        until_status(&mut statuses, "fenced", "killed").await;
    });

    // The agent restarts (SIGKILL: it kills what its previous run left when it starts again) and
    // still refuses term 4.
    cluster.kill_agent("a1");
    cluster.start_agent("a1", "r1");
    runtime.block_on(async {
        let reply = launch_as_master(&master, 4, "after-restart").await;
        assert_eq!(reply["accepted"], serde_json::json!([]), "{reply}");
        assert_eq!(
            reply["refused"],
            serde_json::json!([["after-restart", "stale term 4: this agent has seen term 5"]]),
            "{reply}"
        );
    });
}

/// A `nats-server` of no cluster of ours that dials `route`; it and its monitoring port.
fn server_routing_to(route: &str) -> (super::fixture::Process, u16) {
    let [monitor, client, own_route] = shoal_testkit::free_ports(3)[..] else { unreachable!("three ports") };
    let binary = std::env::var_os(shoal_testkit::NATS_SERVER_ENV).unwrap_or_else(|| "nats-server".into());
    let child = std::process::Command::new(binary)
        .args(["-a", "127.0.0.1", "-p", &client.to_string(), "-m", &monitor.to_string()])
        .args(["--cluster_name", "shoal", "--cluster", &format!("nats://127.0.0.1:{own_route}")])
        .args(["--routes", route])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("run nats-server");
    (super::fixture::Process(child), monitor)
}

/// The routes a server has (its monitoring's `/routez`), once it answers.
fn routes_of(monitor: u16) -> Option<u64> {
    std::net::TcpStream::connect(("127.0.0.1", monitor)).ok()?;
    let (status, body) = super::tasks::http(&format!("http://127.0.0.1:{monitor}"), "", "GET", "/routez", "");
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    if status == 200 { v["num_routes"].as_u64() } else { None }
}

/// A server that dials a route port of a cluster `shoal nats init` configured: without the routes'
/// password it is refused and has no route, so it sees none of the cluster's messages; with the
/// password it joins, so the refusal is the password's doing.
#[test]
fn a_server_without_the_routes_password_cannot_join_the_cluster() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut nats, routes) = super::fixture::secured_nats_cluster(dir.path());
    let registry = std::fs::read_to_string(dir.path().join("shoal-nats.json")).expect("the registry");
    let registry: serde_json::Value = serde_json::from_str(&registry).expect("JSON");
    let password = registry["cluster"]["password"].as_str().expect("the routes' password").to_owned();

    let failures =
        |nats: &mut shoal_testkit::NatsCluster| nats.member(0).log().matches("Authentication Failure").count();
    let before = failures(&mut nats);
    let (_rogue, monitor) = server_routing_to(&format!("nats://127.0.0.1:{}", routes[0]));
    eventually_sync("the cluster's member to refuse the route", Duration::from_secs(10), || {
        (failures(&mut nats) > before).then_some(())
    });
    let count = eventually_sync("the rogue server's /routez", Duration::from_secs(10), || routes_of(monitor));
    assert_eq!(count, 0, "a server without the routes' password has a route into the cluster");

    let (_member, monitor) = server_routing_to(&format!("nats://shoal-route:{password}@127.0.0.1:{}", routes[0]));
    eventually_sync("a server with the password to be routed", Duration::from_secs(10), || {
        routes_of(monitor).filter(|&n| n > 0)
    });
}
