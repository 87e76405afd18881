//! The agent: its side of the registry ([`registration`]), the daemon that runs what the master
//! launches ([`daemon`]), the store behind Wasm tasks' `wasi:keyvalue` ([`kv`]), and the process
//! executor (this file). The Wasm executor is `shoal-wasm-executor`; both capture output into
//! `shoal-task-io`'s bounded [`TaskLogs`]. The messages to and from the master are
//! `shoal-protocol`'s: this crate depends on no other role.
//!
//! The process executor runs a task as `sh -c <command>` in its own process group, isolated
//! ([`isolation`], [`cgroups`]): in its own cgroup with the task's memory and CPU as limits (the
//! process is placed there before its command runs: a wrapper shell waits on its stdin until the
//! agent has written its pid into the group), as the task user, with a clean environment
//! (`PATH`, `HOME`, `SHOAL_TASK_ID`, the declared variables, `PORT0…PORTn` and `PORT` = `PORT0`),
//! in its sandbox directory; stdout and stderr captured into bounded logs (the newest bytes kept,
//! the rest counted); a kill sends SIGTERM to the whole group, waits the grace period, then
//! SIGKILLs the group. Where a limit cannot be applied the task still runs and
//! [`ProcessTask::isolation`] says so, which the agent puts in the task's `running` status.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

pub use shoal_task_io::{LogTail, TaskLogs};
use tokio::io::AsyncReadExt;
use tokio::process::{Child, Command};

pub mod cgroups;
pub mod daemon;
mod fence;
pub mod isolation;
pub mod kv;
pub mod registration;

pub use cgroups::{Cgroups, Limits, LimitsUnsupported, TaskGroup};
pub use isolation::{IsolationError, SandboxRoot, TaskUser};

pub use daemon::{Agent, AgentConfig, AgentError};
pub use fence::FenceError;
pub use registration::{AgentHooks, RegistrationError, run_agent, run_agent_with};

/// Default grace between SIGTERM and SIGKILL.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(5);

/// What to run.
#[derive(Clone, Debug)]
pub struct ProcessSpec {
    /// Task id (exported as `SHOAL_TASK_ID`; checked with `shoal_protocol::validate_task_id`).
    pub task_id: String,
    /// Shell command, run with `sh -c`.
    pub command: String,
    /// The environment the task declares (the only variables besides the agent's few).
    pub env: BTreeMap<String, String>,
    /// Ports assigned by the agent: `PORT0…`, and `PORT` = the first.
    pub ports: Vec<u16>,
    /// Working directory and `HOME`, created if missing (mode 0700, owned by `user`).
    pub sandbox: PathBuf,
    /// Bytes of each stream kept.
    pub log_limit: usize,
    /// Run as this user (uid, gid, no supplementary groups); `None`: the agent's own user.
    pub user: Option<TaskUser>,
    /// The task's resources, applied as limits in a cgroup of `cgroups`.
    pub limits: Limits,
    /// Where task groups are made, or why limits cannot be applied on this machine.
    pub cgroups: Result<Arc<Cgroups>, LimitsUnsupported>,
}

/// How a process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProcessExit {
    /// Exited with this code.
    Code(i32),
    /// Killed by this signal.
    Signal(i32),
}

impl ProcessExit {
    /// Exit code 0.
    pub fn success(self) -> bool {
        self == ProcessExit::Code(0)
    }
}

/// Why a task could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The spec is unusable.
    #[error("invalid task: {0}")]
    Invalid(String),
    /// The sandbox or the process could not be created.
    #[error("could not start the task: {0}")]
    Io(#[from] std::io::Error),
}

/// A running (or finished) process task.
pub struct ProcessTask {
    child: Child,
    pgid: i32,
    logs: Arc<TaskLogs>,
    exit: Option<ProcessExit>,
    readers: Vec<tokio::task::JoinHandle<()>>,
    group: Option<TaskGroup>,
    /// Why limits are not enforced, when they are not.
    pub limits_note: Option<String>,
}

/// Start `spec`.
pub fn start(spec: &ProcessSpec) -> Result<ProcessTask, StartError> {
    start_with_logs(spec, TaskLogs::new(spec.log_limit))
}

/// Start `spec`, its output going to `logs`.
pub fn start_with_logs(spec: &ProcessSpec, logs: Arc<TaskLogs>) -> Result<ProcessTask, StartError> {
    if spec.command.trim().is_empty() {
        return Err(StartError::Invalid("the command is empty".into()));
    }
    if spec.command.contains('\0')
        || spec.env.iter().any(|(k, v)| k.is_empty() || k.contains(['=', '\0']) || v.contains('\0'))
    {
        return Err(StartError::Invalid("NUL bytes or malformed environment names".into()));
    }
    shoal_protocol::validate_task_id(&spec.task_id).map_err(|e| StartError::Invalid(e.to_string()))?;
    isolation::prepare_sandbox(&spec.sandbox, spec.user.as_ref())?;
    let (group, mut limits_note) = task_group(spec);
    // The user switch is a program, `setpriv` (util-linux), rather than `CommandExt::uid`, and
    // programs are named by absolute path (the task's PATH differs from the agent's): std can
    // then start the task with `posix_spawn` (a vfork) instead of forking the agent's whole
    // address space, which tripled deploy → RUNNING (3.5 → 10–12 ms, BENCHMARKS.md).
    let mut cmd = match &spec.user {
        Some(user) => {
            let Some(program) = isolation::setpriv() else {
                return Err(StartError::Invalid("running tasks as another user needs `setpriv` (util-linux)".into()));
            };
            let mut setpriv = Command::new(program);
            setpriv.arg(format!("--reuid={}", user.uid)).arg(format!("--regid={}", user.gid)).args([
                "--clear-groups",
                "--",
                "/bin/sh",
            ]);
            setpriv
        }
        None => Command::new("/bin/sh"),
    };
    if group.is_some() {
        // The wrapper waits for the agent to place it in the group (EOF on stdin), then runs
        // the command with stdin from /dev/null: nothing of the task runs unconfined.
        cmd.args(["-c", "read -r _; exec sh -c \"$1\" </dev/null", "sh"]).arg(&spec.command).stdin(Stdio::piped());
    } else {
        cmd.arg("-c").arg(&spec.command).stdin(Stdio::null());
    }
    cmd.current_dir(&spec.sandbox)
        .env_clear()
        .envs(isolation::task_env(&spec.task_id, &spec.sandbox, &spec.env, &spec.ports))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut child = cmd.spawn()?;
    let pgid = child.id().map(|p| p as i32).ok_or_else(|| StartError::Invalid("the process exited at once".into()))?;
    if let Some(g) = &group
        && let Err(e) = g.add(pgid as u32)
    {
        limits_note = Some(format!("{e}: limits are not enforced"));
    }
    // Closing the wrapper's stdin releases it.
    drop(child.stdin.take());
    let mut readers = Vec::new();
    for (stderr, stream) in [
        (false, child.stdout.take().map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Send + Unpin>)),
        (true, child.stderr.take().map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Send + Unpin>)),
    ] {
        let Some(mut stream) = stream else { continue };
        let logs = logs.clone();
        readers.push(tokio::spawn(async move {
            let mut buf = vec![0u8; 16 * 1024];
            while let Ok(n) = stream.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                logs.append(stderr, &buf[..n]);
            }
        }));
    }
    Ok(ProcessTask { child, pgid, logs, exit: None, readers, group, limits_note })
}

/// The task's cgroup with its limits written, or why there is none.
fn task_group(spec: &ProcessSpec) -> (Option<TaskGroup>, Option<String>) {
    if spec.limits.cpus <= 0.0 && spec.limits.mem_mb <= 0.0 {
        return (None, None);
    }
    match &spec.cgroups {
        Ok(cgroups) => match cgroups.task_group(&spec.task_id, spec.limits) {
            Ok(group) => (Some(group), cgroups.missing().map(|m| m.to_string())),
            Err(e) => (None, Some(format!("cgroup: {e}: limits are not enforced"))),
        },
        Err(why) => (None, Some(why.to_string())),
    }
}

impl ProcessTask {
    /// Process (and group) id.
    pub fn pid(&self) -> i32 {
        self.pgid
    }

    /// How the task is confined, for its status: its limits and cgroup, or why limits are not
    /// enforced.
    pub fn isolation(&self) -> String {
        match (&self.group, &self.limits_note) {
            (_, Some(note)) => note.clone(),
            (Some(g), None) => {
                let l = g.limits();
                format!("limits cpus {} mem {} MiB in cgroup {}", l.cpus, l.mem_mb, g.dirs()[0].display())
            }
            (None, None) => "no cpu or memory requested: no limits".into(),
        }
    }

    /// The memory limit (MiB) when the kernel's OOM killer killed a process of the task.
    pub fn out_of_memory(&self) -> Option<f64> {
        self.group.as_ref().filter(|g| g.oom_kills() > 0).map(|g| g.limits().mem_mb)
    }

    /// The task's cgroup, when it has one.
    pub fn group(&self) -> Option<&TaskGroup> {
        self.group.as_ref()
    }

    /// The captured output.
    pub fn logs(&self) -> Arc<TaskLogs> {
        self.logs.clone()
    }

    /// Wait for the process to end (its output fully captured).
    pub async fn wait(&mut self) -> ProcessExit {
        if let Some(exit) = self.exit {
            return exit;
        }
        let status = self.child.wait().await;
        for reader in self.readers.drain(..) {
            // The group may keep the pipes open (a background child): do not wait for ever.
            let _ = tokio::time::timeout(Duration::from_millis(500), reader).await;
        }
        let exit = match status {
            Ok(status) => {
                use std::os::unix::process::ExitStatusExt;
                match (status.code(), status.signal()) {
                    (Some(code), _) => ProcessExit::Code(code),
                    (None, Some(signal)) => ProcessExit::Signal(signal),
                    (None, None) => ProcessExit::Code(-1),
                }
            }
            Err(_) => ProcessExit::Code(-1),
        };
        self.exit = Some(exit);
        exit
    }

    /// Stop the task: SIGTERM to its process group, then SIGKILL to the group after `grace`.
    pub async fn kill(&mut self, grace: Duration) -> ProcessExit {
        if let Some(exit) = self.exit {
            return exit;
        }
        signal_group(self.pgid, "TERM");
        match tokio::time::timeout(grace, self.child.wait()).await {
            Ok(_) => {}
            Err(_) => {
                signal_group(self.pgid, "KILL");
            }
        }
        let exit = self.wait().await;
        // Whatever the leader left behind in its group goes too.
        signal_group(self.pgid, "KILL");
        exit
    }
}

impl Drop for ProcessTask {
    fn drop(&mut self) {
        if let Some(group) = self.group.take() {
            group.remove();
        }
    }
}

/// Signal a whole process group with kill(1) (no `unsafe` in this crate; a kill is rare).
pub(crate) fn signal_group(pgid: i32, signal: &str) {
    let _ = std::process::Command::new("kill")
        .args(["-s", signal, "--", &format!("-{pgid}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}
