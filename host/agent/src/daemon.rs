//! The agent daemon: registers with the master (through [`crate::run_agent_with`]), runs
//! the tasks the master launches on it, checks their health, and reports every change as a status
//! update that it sends again until the master acknowledges it.
//!
//! - **Launch** (`shoal.ctl.agent.<id>.launch`): each task goes `staging → starting → running`,
//!   then `finished` (exit 0), `failed` (any other exit, or it could not start) or `killed`.
//! - **Kill** (`shoal.ctl.agent.<id>.kill`): SIGTERM to the task's process group, SIGKILL after
//!   the grace period.
//! - **Health**: a task labelled `shoal.health` (a [`CheckSpec`] as JSON) is checked next to it;
//!   each change of verdict is a `running` status update with `healthy` set.
//! - **Status updates** wait in an outbox, oldest first, until the master acknowledges each; a
//!   master that is away or restarting gets them when it is back.
//! - **Logs** (`shoal.ctl.agent.<id>.logs`): the bounded stdout/stderr of a task.
//! - **Isolation**: process tasks run as the task user, in a cgroup with their limits, with a
//!   clean environment, in `<sandbox root>/<task id>` (see [`crate::isolation`] and
//!   [`crate::cgroups`]); a task the OOM killer ended is `failed` with a memory reason. Command
//!   health checks of a task run the same way. Every id that becomes a path or an argument (task
//!   ids, Wasm digests) is checked when a request arrives; a bad one is refused, never used.
//! - **Fencing**: every launch and kill carries the sending master's leader term, and one of a
//!   lower term than the highest the agent has seen (a deposed master's) is refused — nothing is
//!   started or killed, the reply says why. The highest term is kept in `<work_dir>/term` (see
//!   `fence.rs`), so a restart does not forget it. Status updates are not commands: they go
//!   to whoever leads.
//! - **Restart**: the process group of every task of a previous run is recorded under
//!   `<work_dir>/run/`; a restarted agent kills those leftovers (it cannot watch them any more),
//!   registers without them, and the master declares them lost so their frameworks replace them.

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures::StreamExt;
use parking_lot::Mutex;
use shoal_bus::{SharedBus, subject};
use shoal_health::{CheckKind, CheckSpec, HealthChecker, HealthUpdate, Status, Target, WasmCheck};
use shoal_protocol::{
    AgentRegistration, AgentTask, KillReply, KillRequest, LaunchReply, LaunchRequest, LogsReply, LogsRequest,
    StatusAck, StatusUpdate, TaskCommand, TaskInfo, TaskState, labels, validate_agent_id, validate_task_id,
};
use tokio::sync::{Notify, mpsc, oneshot};

use crate::{AgentHooks, DEFAULT_GRACE, ProcessExit, ProcessSpec, TaskLogs};

/// Why an agent stopped serving.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The bus refused a subscription or is gone.
    #[error(transparent)]
    Bus(#[from] shoal_bus::BusError),
    /// The master refused the registration.
    #[error(transparent)]
    Refused(crate::RegistrationError),
    /// The registration loop ended abnormally (it panicked).
    #[error("the registration loop stopped: {0}")]
    Stopped(tokio::task::JoinError),
}

/// How an agent runs.
#[derive(Clone)]
pub struct AgentConfig {
    /// What the agent registers.
    pub registration: AgentRegistration,
    /// Sandboxes (`<work_dir>/tasks/<id>`) and the record of running tasks (`<work_dir>/run`).
    pub work_dir: PathBuf,
    /// Bytes of each output stream kept per task.
    pub log_limit: usize,
    /// SIGTERM → SIGKILL grace.
    pub grace: Duration,
    /// Runs `wasm` health checks, when the agent has the plugins.
    pub wasm_checks: Option<Arc<dyn WasmCheck>>,
    /// Where task sandboxes are made (`<root>/<task id>`); never inside `work_dir` or any other
    /// data directory. Default [`crate::isolation::default_sandbox_root`].
    pub sandbox_root: Option<PathBuf>,
    /// The user process tasks run as when the agent is root (default `nobody`); naming one when
    /// the agent is not root is refused.
    pub task_user: Option<String>,
}

impl AgentConfig {
    /// Defaults for `registration`, working under `work_dir`.
    pub fn new(registration: AgentRegistration, work_dir: PathBuf) -> Self {
        AgentConfig {
            registration,
            work_dir,
            log_limit: shoal_task_io::DEFAULT_LOG_LIMIT,
            grace: DEFAULT_GRACE,
            wasm_checks: None,
            sandbox_root: None,
            task_user: None,
        }
    }
}

struct Task {
    info: TaskInfo,
    state: TaskState,
    healthy: Option<bool>,
    message: String,
    logs: Arc<TaskLogs>,
    kill: Option<oneshot::Sender<Duration>>,
    /// The master acknowledged the task's terminal status.
    end_acknowledged: bool,
}

/// A running agent. Share it behind an `Arc`.
pub struct Agent {
    bus: SharedBus,
    config: AgentConfig,
    tasks: Mutex<BTreeMap<String, Task>>,
    outbox: Mutex<VecDeque<StatusUpdate>>,
    outbox_ready: Notify,
    /// Signalled whenever the outbox becomes empty (its last update acknowledged).
    outbox_empty: Notify,
    checker: HealthChecker,
    health_rx: Mutex<Option<mpsc::UnboundedReceiver<HealthUpdate>>>,
    wasm: shoal_wasm_executor::WasmExecutor,
    /// The state store for Wasm tasks' `wasi:keyvalue`.
    kv: Arc<crate::kv::StoreTaskKv>,
    seq: AtomicU64,
    boot: u64,
    isolation: Isolation,
    /// The highest leader term seen; commands of lower terms are refused.
    fence: crate::fence::Fence,
}

/// How this agent confines its process tasks.
struct Isolation {
    user: Option<crate::TaskUser>,
    sandboxes: crate::SandboxRoot,
    cgroups: Result<Arc<crate::Cgroups>, crate::LimitsUnsupported>,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

impl Agent {
    /// An agent on `bus`. Kills the leftovers of a previous run first.
    pub fn new(bus: SharedBus, config: AgentConfig) -> std::io::Result<Arc<Agent>> {
        use std::os::unix::fs::PermissionsExt;
        std::fs::create_dir_all(config.work_dir.join("run"))?;
        std::fs::set_permissions(&config.work_dir, std::fs::Permissions::from_mode(0o700))?;
        let isolation = Isolation::new(&config).map_err(std::io::Error::other)?;
        std::fs::create_dir_all(config.work_dir.join("cache"))?;
        kill_leftovers(&config.work_dir.join("run"));
        let fence = crate::fence::Fence::open(config.work_dir.join("term"))?;
        let (tx, rx) = mpsc::unbounded_channel();
        let checker = HealthChecker::new(
            Arc::new(move |u| {
                let _ = tx.send(u);
            }),
            config.wasm_checks.clone(),
        );
        let wasm = shoal_wasm_executor::WasmExecutor::new(shoal_wasm_executor::ExecutorConfig {
            cache_dir: Some(config.work_dir.join("cache")),
            ..shoal_wasm_executor::ExecutorConfig::default()
        })
        .map_err(|e| std::io::Error::other(e.to_string()))?;
        Ok(Arc::new(Agent {
            wasm,
            kv: crate::kv::StoreTaskKv::new(bus.clone()),
            bus,
            config,
            tasks: Mutex::new(BTreeMap::new()),
            outbox: Mutex::new(VecDeque::new()),
            outbox_ready: Notify::new(),
            outbox_empty: Notify::new(),
            checker,
            health_rx: Mutex::new(Some(rx)),
            seq: AtomicU64::new(0),
            boot: now_ms(),
            isolation,
            fence,
        }))
    }

    /// Where this agent makes task sandboxes.
    pub fn sandbox_root(&self) -> &std::path::Path {
        self.isolation.sandboxes.path()
    }

    /// The agent's id.
    pub fn id(&self) -> &str {
        &self.config.registration.id
    }

    /// Ids and states of the tasks the agent knows.
    pub fn task_states(&self) -> Vec<(String, TaskState, Option<bool>)> {
        self.tasks.lock().values().map(|t| (t.info.id.clone(), t.state, t.healthy)).collect()
    }

    /// The highest leader term this agent has seen (0: none yet); launches and kills of lower
    /// terms are refused.
    pub fn highest_term(&self) -> u64 {
        self.fence.highest()
    }

    /// Status updates not yet acknowledged.
    pub fn unacknowledged(&self) -> usize {
        self.outbox.lock().len()
    }

    /// Returns once the master has acknowledged every status update queued so far.
    pub async fn all_acknowledged(&self) {
        loop {
            let emptied = self.outbox_empty.notified();
            tokio::pin!(emptied);
            // Registered before the check, so an acknowledgement in between is not missed.
            emptied.as_mut().enable();
            if self.outbox.lock().is_empty() {
                return;
            }
            emptied.await;
        }
    }

    /// Serve the master until the bus closes, or return the master's refusal.
    pub async fn run(self: Arc<Self>) -> Result<(), AgentError> {
        let id = self.id().to_owned();
        let mut launches = self.bus.subscribe(&subject::agent_launch(&id)).await?;
        let mut kills = self.bus.subscribe(&subject::agent_kill(&id)).await?;
        let mut logs = self.bus.subscribe(&subject::agent_logs(&id)).await?;
        self.bus.flush().await?;
        tokio::spawn(self.clone().send_statuses());
        if let Some(rx) = self.health_rx.lock().take() {
            tokio::spawn(self.clone().health_verdicts(rx));
        }
        let registration = tokio::spawn(crate::run_agent_with(
            self.bus.clone(),
            self.config.registration.clone(),
            self.clone() as Arc<dyn AgentHooks>,
        ));
        let mut registration = std::pin::pin!(registration);
        loop {
            tokio::select! {
                done = &mut registration => {
                    return match done {
                        Ok(result) => result.map_err(AgentError::Refused),
                        Err(e) => Err(AgentError::Stopped(e)),
                    };
                }
                msg = launches.next() => {
                    let Some(msg) = msg else { return Ok(()) };
                    // The launch's span, a child of the master's (its context came with the message).
                    let span = match &msg.trace {
                        Some(trace) => {
                            let span = tracing::info_span!(target: shoal_trace::TARGET, "agent.launch", agent = %id, accepted = tracing::field::Empty);
                            trace.adopt(&span);
                            span
                        }
                        None => tracing::Span::none(),
                    };
                    let reply = span.in_scope(|| match serde_json::from_slice::<LaunchRequest>(&msg.payload) {
                        Ok(req) => self.launch(req),
                        Err(e) => LaunchReply { accepted: Vec::new(), refused: vec![(String::new(), format!("malformed launch: {e}"))] },
                    });
                    span.record("accepted", reply.accepted.len());
                    let _ = msg.respond(self.bus.as_ref(), json(&reply)).await;
                }
                msg = kills.next() => {
                    let Some(msg) = msg else { return Ok(()) };
                    let reply = match serde_json::from_slice::<KillRequest>(&msg.payload) {
                        Ok(req) if validate_task_id(&req.task_id).is_ok() => self.kill_request(&req),
                        _ => KillReply { known: false, refused: None },
                    };
                    let _ = msg.respond(self.bus.as_ref(), json(&reply)).await;
                }
                msg = logs.next() => {
                    let Some(msg) = msg else { return Ok(()) };
                    let reply = match serde_json::from_slice::<LogsRequest>(&msg.payload) {
                        Ok(req) if validate_task_id(&req.task_id).is_ok() => self.logs(&req),
                        _ => LogsReply { found: false, data: String::new(), dropped: 0 },
                    };
                    let _ = msg.respond(self.bus.as_ref(), json(&reply)).await;
                }
            }
        }
    }

    fn launch(self: &Arc<Self>, req: LaunchRequest) -> LaunchReply {
        if let Err(e) = self.fence.admit(req.term) {
            let ids: Vec<&str> = req.tasks.iter().map(|t| t.id.as_str()).collect();
            tracing::warn!(term = req.term, tasks = ?ids, cause = %e, "launch refused");
            let refused = req.tasks.into_iter().map(|t| (t.id, e.to_string())).collect();
            return LaunchReply { accepted: Vec::new(), refused };
        }
        let mut accepted = Vec::new();
        let mut refused = Vec::new();
        for info in req.tasks {
            if let Err(e) = check_ids(&info) {
                tracing::warn!(task = ?info.id, cause = %e, "launch refused");
                refused.push((info.id.clone(), e));
                continue;
            }
            if info.agent_id != self.id() {
                refused.push((info.id.clone(), format!("launched on agent {}, not on {}", info.agent_id, self.id())));
                continue;
            }
            let mut tasks = self.tasks.lock();
            if let Some(existing) = tasks.get(&info.id) {
                // A launch sent again (at least once): the task is already here.
                if existing.info == info {
                    accepted.push(info.id.clone());
                } else {
                    refused.push((info.id.clone(), "another task with this id runs here".into()));
                }
                continue;
            }
            let (kill_tx, kill_rx) = oneshot::channel();
            let logs = TaskLogs::new(self.config.log_limit);
            tasks.insert(
                info.id.clone(),
                Task {
                    info: info.clone(),
                    state: TaskState::Staging,
                    healthy: None,
                    message: String::new(),
                    logs: logs.clone(),
                    kill: Some(kill_tx),
                    end_acknowledged: false,
                },
            );
            drop(tasks);
            accepted.push(info.id.clone());
            tokio::spawn(self.clone().run_task(info, logs, kill_rx));
        }
        LaunchReply { accepted, refused }
    }

    async fn run_task(self: Arc<Self>, info: TaskInfo, logs: Arc<TaskLogs>, mut kill_rx: oneshot::Receiver<Duration>) {
        self.set_state(&info.id, TaskState::Starting, None, "starting".into());
        let command = match &info.command {
            TaskCommand::Shell(c) => c.clone(),
            TaskCommand::Wasm(digest) => return self.run_wasm_task(info.clone(), digest.clone(), logs, kill_rx).await,
        };
        let spec = ProcessSpec {
            task_id: info.id.clone(),
            command,
            env: info.env.clone(),
            ports: info.ports(),
            sandbox: self.isolation.sandboxes.sandbox(&info.id),
            log_limit: self.config.log_limit,
            user: self.isolation.user.clone(),
            limits: crate::Limits { cpus: info.resources.cpus, mem_mb: info.resources.mem_mb },
            cgroups: self.isolation.cgroups.clone(),
        };
        let mut process = match crate::start_with_logs(&spec, logs) {
            Ok(p) => p,
            Err(e) => {
                self.set_state(&info.id, TaskState::Failed, None, e.to_string());
                return;
            }
        };
        let pid_file = self.config.work_dir.join("run").join(format!("{}.pgid", info.id));
        let _ = std::fs::write(&pid_file, process.pid().to_string());
        let user = match &spec.user {
            Some(u) => format!("as {}", u.name),
            None => "as the agent's own user (the agent is not root)".to_owned(),
        };
        let message = format!("pid {} {user}; {}", process.pid(), process.isolation());
        self.set_state(&info.id, TaskState::Running, None, message);
        let procs = process.group().map(crate::TaskGroup::procs_files).unwrap_or_default();
        let checked = self.start_check(&info, &spec, &procs);
        let (state, message) = tokio::select! {
            exit = process.wait() => match exit {
                ProcessExit::Code(0) => (TaskState::Finished, "exited with code 0".to_owned()),
                _ if process.out_of_memory().is_some() => {
                    let limit = process.out_of_memory().unwrap_or_default();
                    (TaskState::Failed, format!("killed: out of memory (limit {limit} MiB; {exit:?})"))
                }
                ProcessExit::Code(c) => (TaskState::Failed, format!("exited with code {c}")),
                ProcessExit::Signal(s) => (TaskState::Failed, format!("killed by signal {s}")),
            },
            grace = &mut kill_rx => {
                let grace = grace.unwrap_or(self.config.grace);
                let exit = process.kill(grace).await;
                (TaskState::Killed, format!("killed on request ({exit:?})"))
            }
        };
        if checked {
            self.checker.stop(&info.id);
        }
        let _ = std::fs::remove_file(&pid_file);
        self.set_state(&info.id, state, None, message);
    }

    /// Start the task's `shoal.health` check, if it has one; a command check runs as the task
    /// does (user, environment, sandbox, cgroup `procs`). Whether a check was started.
    fn start_check(&self, info: &TaskInfo, spec: &ProcessSpec, procs: &[PathBuf]) -> bool {
        let check = match info.labels.get(labels::HEALTH).map(|text| serde_json::from_str::<CheckSpec>(text)) {
            None => return false,
            Some(Ok(check)) => check,
            Some(Err(e)) => {
                tracing::warn!(task = %info.id, cause = %e, "unreadable shoal.health label; no health check");
                return false;
            }
        };
        let check = match check.kind {
            CheckKind::Command { command } => {
                let env = crate::isolation::task_env(&spec.task_id, &spec.sandbox, &spec.env, &spec.ports);
                let command =
                    crate::isolation::isolated_check_command(&command, &spec.sandbox, &env, spec.user.as_ref(), procs);
                CheckSpec { kind: CheckKind::Command { command }, ..check }
            }
            _ => check,
        };
        let address = self.config.registration.address.clone().unwrap_or_else(|| "127.0.0.1".into());
        let target = Target { address, ports: info.ports() };
        match self.checker.start(info.id.clone(), target, check) {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(task = %info.id, cause = %e, "health check not started");
                false
            }
        }
    }

    /// A Wasm task: fetch the component (cached), then run it in the agent's executor — a
    /// command until it returns, an HTTP service on the task's first port until it is killed.
    async fn run_wasm_task(
        self: Arc<Self>,
        info: TaskInfo,
        digest: String,
        logs: Arc<TaskLogs>,
        mut kill_rx: oneshot::Receiver<Duration>,
    ) {
        let cache = self.config.work_dir.join("artifacts");
        let prepared = match shoal_task_io::fetch(&self.bus, &digest, &cache).await {
            Ok(bytes) => {
                let wasm = self.wasm.clone();
                match tokio::task::spawn_blocking(move || wasm.prepare(&bytes)).await {
                    Ok(Ok(p)) => p,
                    Ok(Err(e)) => return self.set_state(&info.id, TaskState::Failed, None, e.to_string()),
                    Err(e) => return self.set_state(&info.id, TaskState::Failed, None, e.to_string()),
                }
            }
            Err(e) => return self.set_state(&info.id, TaskState::Failed, None, e.to_string()),
        };
        let ports = info.ports();
        let ip: std::net::IpAddr =
            self.config.registration.address.as_deref().and_then(|a| a.parse().ok()).unwrap_or([127, 0, 0, 1].into());
        let mut env: Vec<(String, String)> = info.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        for (i, p) in ports.iter().enumerate() {
            env.push((format!("PORT{i}"), p.to_string()));
        }
        let sandbox = self.isolation.sandboxes.sandbox(&info.id);
        if let Err(e) = crate::isolation::prepare_sandbox(&sandbox, None) {
            return self.set_state(&info.id, TaskState::Failed, None, format!("sandbox: {e}"));
        }
        let kv = match crate::kv::access(&info.labels, self.kv.clone()) {
            Ok(kv) => kv,
            Err(e) => return self.set_state(&info.id, TaskState::Failed, None, e.to_string()),
        };
        let spec = shoal_wasm_executor::TaskSpec {
            task_id: info.id.clone(),
            args: Vec::new(),
            env,
            sandbox: Some(sandbox),
            memory_limit: ((info.resources.mem_mb.max(1.0)) * 1024.0 * 1024.0) as usize,
            listen: ports.first().map(|p| std::net::SocketAddr::new(ip, *p)),
            network: false,
            logs,
            kv,
        };
        let mut task = match self.wasm.start(&prepared, spec).await {
            Ok(t) => t,
            Err(e) => return self.set_state(&info.id, TaskState::Failed, None, e.to_string()),
        };
        self.set_state(&info.id, TaskState::Running, None, format!("wasm {:?} {digest}", task.kind()));
        let (state, message) = tokio::select! {
            exit = task.wait() => match exit {
                shoal_wasm_executor::Exit::Code(0) => (TaskState::Finished, "exited with code 0".to_owned()),
                other => (TaskState::Failed, format!("{other:?}")),
            },
            _ = &mut kill_rx => {
                task.kill();
                let _ = tokio::time::timeout(Duration::from_secs(2), task.wait()).await;
                (TaskState::Killed, "killed on request".to_owned())
            }
        };
        self.set_state(&info.id, state, None, message);
    }

    /// Kill every task (SIGTERM, SIGKILL after the grace period) and wait for them to end, at
    /// most the grace period and a second: what a graceful stop of `shoal dev` does.
    pub async fn stop_all(&self) {
        let ids: Vec<String> =
            self.tasks.lock().values().filter(|t| !t.state.is_terminal()).map(|t| t.info.id.clone()).collect();
        for id in &ids {
            Agent::kill(self, id, None);
        }
        let deadline = tokio::time::Instant::now() + self.config.grace + Duration::from_secs(1);
        while tokio::time::Instant::now() < deadline
            && self.tasks.lock().values().any(|t| !t.state.is_terminal() && ids.contains(&t.info.id))
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A kill from the master: carried out only if its term is not stale.
    fn kill_request(&self, req: &KillRequest) -> KillReply {
        if let Err(e) = self.fence.admit(req.term) {
            tracing::warn!(task = %req.task_id, term = req.term, cause = %e, "kill refused");
            let known = self.tasks.lock().contains_key(&req.task_id);
            return KillReply { known, refused: Some(e.to_string()) };
        }
        KillReply { known: self.kill(&req.task_id, req.grace_ms.map(Duration::from_millis)), refused: None }
    }

    fn kill(&self, task_id: &str, grace: Option<Duration>) -> bool {
        let mut tasks = self.tasks.lock();
        let Some(t) = tasks.get_mut(task_id) else { return false };
        if let Some(tx) = t.kill.take() {
            let _ = tx.send(grace.unwrap_or(self.config.grace));
        }
        true
    }

    fn logs(&self, req: &LogsRequest) -> LogsReply {
        let tasks = self.tasks.lock();
        let Some(t) = tasks.get(&req.task_id) else {
            return LogsReply { found: false, data: String::new(), dropped: 0 };
        };
        let tail = if req.stream == "stderr" { t.logs.stderr() } else { t.logs.stdout() };
        let mut bytes = tail.bytes;
        let mut dropped = tail.dropped;
        if let Some(n) = req.tail
            && bytes.len() > n
        {
            dropped += (bytes.len() - n) as u64;
            bytes.drain(..bytes.len() - n);
        }
        LogsReply { found: true, data: String::from_utf8_lossy(&bytes).into_owned(), dropped }
    }

    /// Record a task's new state and queue the status update.
    fn set_state(&self, task_id: &str, state: TaskState, healthy: Option<bool>, message: String) {
        let update = {
            let mut tasks = self.tasks.lock();
            let Some(t) = tasks.get_mut(task_id) else { return };
            if !t.state.may_become(state) {
                return;
            }
            t.state = state;
            if healthy.is_some() {
                t.healthy = healthy;
            }
            t.message = message.clone();
            StatusUpdate {
                uuid: format!("{}-{}-{}", self.id(), self.boot, self.seq.fetch_add(1, Ordering::Relaxed)),
                task_id: task_id.to_owned(),
                agent_id: self.id().to_owned(),
                state,
                healthy: t.healthy,
                message,
                timestamp_ms: now_ms(),
            }
        };
        tracing::info!(task = %task_id, state = %state, healthy = ?update.healthy, "task status");
        self.outbox.lock().push_back(update);
        self.outbox_ready.notify_one();
    }

    /// Send the outbox, oldest first, each until acknowledged.
    async fn send_statuses(self: Arc<Self>) {
        loop {
            let next = self.outbox.lock().front().cloned();
            let Some(update) = next else {
                self.outbox_ready.notified().await;
                continue;
            };
            let body = json(&update);
            match self.bus.request(&subject::agent_status(&update.agent_id), body, Duration::from_secs(2)).await {
                Ok(msg) => match serde_json::from_slice::<StatusAck>(&msg.payload) {
                    Ok(ack) if ack.uuid == update.uuid => {
                        let mut outbox = self.outbox.lock();
                        if outbox.front().is_some_and(|u| u.uuid == ack.uuid) {
                            outbox.pop_front();
                        }
                        let emptied = outbox.is_empty();
                        drop(outbox);
                        if emptied {
                            self.outbox_empty.notify_waiters();
                        }
                        self.forget_if_done(&update);
                    }
                    _ => tokio::time::sleep(Duration::from_millis(200)).await,
                },
                Err(e) => {
                    tracing::debug!(cause = %e, task = %update.task_id, "status update not acknowledged; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                        _ = self.outbox_ready.notified() => {}
                    }
                }
            }
        }
    }

    /// A terminal status was acknowledged: the task leaves the agent's table a while later
    /// (its logs stay readable until then).
    fn forget_if_done(self: &Arc<Self>, update: &StatusUpdate) {
        if !update.state.is_terminal() {
            return;
        }
        if let Some(t) = self.tasks.lock().get_mut(&update.task_id) {
            t.end_acknowledged = true;
        }
        let me = self.clone();
        let id = update.task_id.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(300)).await;
            let mut tasks = me.tasks.lock();
            if tasks.get(&id).is_some_and(|t| t.state.is_terminal()) {
                tasks.remove(&id);
            }
        });
    }

    async fn health_verdicts(self: Arc<Self>, mut rx: mpsc::UnboundedReceiver<HealthUpdate>) {
        while let Some(u) = rx.recv().await {
            let healthy = match u.state.status {
                Status::Healthy => Some(true),
                Status::Unhealthy => Some(false),
                Status::Unknown => continue,
            };
            let changed =
                self.tasks.lock().get(&u.id).is_some_and(|t| t.state == TaskState::Running && t.healthy != healthy);
            if changed {
                let message = format!("health check {}: {}", u.kind, u.state.message);
                self.set_state(&u.id, TaskState::Running, healthy, message);
            }
        }
    }
}

impl AgentHooks for Agent {
    fn tasks(&self) -> Vec<AgentTask> {
        self.tasks
            .lock()
            .values()
            // Ended tasks too, until the master acknowledged their end: a registration must not
            // make the master conclude a task vanished when its last status is still on its way.
            .filter(|t| !t.state.is_terminal() || !t.end_acknowledged)
            .map(|t| AgentTask { info: t.info.clone(), state: t.state, healthy: t.healthy, message: t.message.clone() })
            .collect()
    }

    fn kill(&self, task_ids: Vec<String>) {
        for id in task_ids {
            Agent::kill(self, &id, None);
        }
    }

    fn registered(&self) {
        self.outbox_ready.notify_one();
    }

    fn admit_term(&self, term: u64) -> Result<(), crate::FenceError> {
        self.fence.admit(term)
    }
}

impl Isolation {
    fn new(config: &AgentConfig) -> Result<Isolation, crate::IsolationError> {
        let id = &config.registration.id;
        let user = crate::isolation::task_user(config.task_user.as_deref())?;
        let root = config.sandbox_root.clone().unwrap_or_else(|| crate::isolation::default_sandbox_root(id));
        let sandboxes = crate::SandboxRoot::open(&root, &config.work_dir, user.as_ref())?;
        let cgroups = crate::Cgroups::create(id).map(Arc::new);
        if let Ok(cgroups) = &cgroups {
            cgroups.sweep();
        }
        match (&user, &cgroups) {
            (Some(u), Ok(c)) => {
                tracing::info!(user = %u.name, sandboxes = %sandboxes.path().display(), cgroups = c.version(), "tasks are isolated")
            }
            (None, Ok(c)) => {
                tracing::warn!(sandboxes = %sandboxes.path().display(), cgroups = c.version(), "the agent is not root: tasks run as its own user")
            }
            (_, Err(why)) => {
                tracing::warn!(sandboxes = %sandboxes.path().display(), user = ?user.as_ref().map(|u| &u.name), cause = %why, "tasks run without cpu and memory limits")
            }
        }
        Ok(Isolation { user, sandboxes, cgroups })
    }
}

/// The ids of a launched task that become paths or arguments: refused unless well-formed.
fn check_ids(info: &TaskInfo) -> Result<(), String> {
    validate_task_id(&info.id).map_err(|e| e.to_string())?;
    validate_agent_id(&info.agent_id).map_err(|e| e.to_string())?;
    if let TaskCommand::Wasm(digest) = &info.command
        && !shoal_protocol::artifact::is_digest(digest)
    {
        return Err(format!("`{digest}` is not a sha256 artifact digest"));
    }
    Ok(())
}

fn json<T: serde::Serialize>(value: &T) -> Bytes {
    serde_json::to_vec(value).expect("a protocol message serialises").into()
}

/// Kill the process groups a previous run of the agent left (recorded in `run/*.pgid`).
fn kill_leftovers(run_dir: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(run_dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        if let Some(pgid) = std::fs::read_to_string(&path).ok().and_then(|s| s.trim().parse::<i32>().ok())
            && pgid > 1
        {
            tracing::warn!(pgid, file = %path.display(), "killing a task left by a previous run of this agent");
            crate::signal_group(pgid, "KILL");
        }
        let _ = std::fs::remove_file(&path);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use shoal_protocol::Resources;

    use super::*;

    fn task(id: &str, command: TaskCommand) -> TaskInfo {
        TaskInfo {
            id: id.into(),
            framework: "test".into(),
            agent_id: "a1".into(),
            command,
            resources: Resources::parse("cpus:0.1;mem:16").unwrap(),
            env: BTreeMap::new(),
            labels: BTreeMap::new(),
        }
    }

    /// A launch over the bus whose ids would leave the sandbox root (or name no artifact) is
    /// refused with the reason, and nothing is created outside the sandbox root.
    #[tokio::test]
    async fn launches_with_ids_that_are_not_ids_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
        let root = dir.path().join("a").join("b").join("sandboxes");
        let registration = AgentRegistration {
            id: "a1".into(),
            hostname: "localhost".into(),
            address: Some("127.0.0.1".into()),
            attributes: BTreeMap::new(),
            resources: Resources::parse("cpus:1;mem:64").unwrap(),
            tasks: Vec::new(),
        };
        let mut config = AgentConfig::new(registration, dir.path().join("work"));
        config.sandbox_root = Some(root.clone());
        let bus: SharedBus = Arc::new(shoal_bus::LocalBus::new());
        let agent = Agent::new(bus.clone(), config).unwrap();
        tokio::spawn(agent.clone().run());
        let launch = LaunchRequest {
            term: 1,
            tasks: vec![
                task("../../x", TaskCommand::Shell("touch escaped".into())),
                task("..", TaskCommand::Shell("touch escaped".into())),
                task("a/b", TaskCommand::Shell("touch escaped".into())),
                task("ok.1", TaskCommand::Wasm("../../../etc/passwd".into())),
            ],
        };
        let reply = shoal_testkit::eventually("the agent to answer a launch", Duration::from_secs(10), || {
            let bus = bus.clone();
            let body = json(&launch);
            async move {
                let msg = bus.request(&subject::agent_launch("a1"), body, Duration::from_secs(1)).await.ok()?;
                serde_json::from_slice::<LaunchReply>(&msg.payload).ok()
            }
        })
        .await;
        assert!(reply.accepted.is_empty(), "{reply:?}");
        let reasons: Vec<&str> = reply.refused.iter().map(|(_, why)| why.as_str()).collect();
        assert_eq!(reasons.len(), 4, "{reply:?}");
        assert!(reasons[..3].iter().all(|r| r.contains("task id")), "{reasons:?}");
        assert!(reasons[3].contains("not a sha256 artifact digest"), "{reasons:?}");
        assert!(agent.task_states().is_empty());
        // Nothing was made outside the sandbox root, nor in it.
        for outside in [dir.path().join("x"), dir.path().join("a").join("x"), root.join("a")] {
            assert!(!outside.exists(), "{} was created", outside.display());
        }
        let made: Vec<_> = std::fs::read_dir(&root).unwrap().flatten().map(|e| e.file_name()).collect();
        assert_eq!(made, [std::ffi::OsString::from(".agent.lock")]);
        // Kills and log reads of such ids are answered "unknown", not looked up.
        assert!(!Agent::kill(&agent, "../../x", None));
    }
}
