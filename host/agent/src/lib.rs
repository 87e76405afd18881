//! The agent: its side of the registry ([`registration`]), the daemon that runs what the master
//! launches ([`daemon`]), the store behind Wasm tasks' `wasi:keyvalue` ([`kv`]), and the process
//! executor (this file). The Wasm executor is `shoal-wasm-executor`; both capture output into
//! `shoal-task-io`'s bounded [`TaskLogs`]. The messages to and from the master are
//! `shoal-protocol`'s: this crate depends on no other role.
//!
//! The process executor runs a task as `sh -c <command>` in its own process group, in its
//! sandbox directory, with the agent-assigned ports as `PORT0…PORTn` (and `PORT` = `PORT0`),
//! stdout and stderr captured into bounded logs (the newest bytes kept, the rest counted), and a
//! kill that sends SIGTERM to the whole group, waits the grace period, then SIGKILLs the group.
//!
//! Resource limits: cgroup v2 with the `cpu` and `memory` controllers is needed to enforce them.
//! [`limits_support`] says whether this machine has it; where it does not (cgroup v1 or hybrid
//! hierarchies, containers without a delegated subtree), tasks run unconfined and their resources
//! are only accounted by the master — the executor reports that with every task it starts.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

pub use shoal_task_io::{LogTail, TaskLogs};
use tokio::io::AsyncReadExt;
use tokio::process::{Child, Command};

pub mod daemon;
pub mod kv;
pub mod registration;

pub use daemon::{Agent, AgentConfig, AgentError};
pub use registration::{AgentHooks, RegistrationError, run_agent, run_agent_with};

/// Default grace between SIGTERM and SIGKILL.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(5);

/// What to run.
#[derive(Clone, Debug)]
pub struct ProcessSpec {
    /// Task id (exported as `SHOAL_TASK_ID`).
    pub task_id: String,
    /// Shell command, run with `sh -c`.
    pub command: String,
    /// Extra environment.
    pub env: BTreeMap<String, String>,
    /// Ports assigned by the agent: `PORT0…`, and `PORT` = the first.
    pub ports: Vec<u16>,
    /// Working directory, created if missing.
    pub sandbox: PathBuf,
    /// Bytes of each stream kept.
    pub log_limit: usize,
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

/// Why this executor cannot enforce resource limits here.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitsUnsupported {
    /// The machine has no cgroup v2 hierarchy where one was looked for.
    #[error("{0} is not a cgroup v2 hierarchy (cgroup v1 or hybrid): cpu and memory limits are not enforced")]
    NoCgroupV2(PathBuf),
    /// The hierarchy lacks a controller.
    #[error("the cgroup v2 hierarchy has no `{0}` controller: limits are not enforced")]
    MissingController(&'static str),
    /// The executor does not apply limits yet.
    #[error("cgroup v2 limits are not implemented yet in this executor: limits are not enforced")]
    NotImplemented,
}

/// Whether resource limits can be enforced here: `Ok(())`, or why not.
pub fn limits_support() -> Result<(), LimitsUnsupported> {
    limits_support_at(Path::new("/sys/fs/cgroup"))
}

fn limits_support_at(root: &Path) -> Result<(), LimitsUnsupported> {
    let controllers = std::fs::read_to_string(root.join("cgroup.controllers"))
        .map_err(|_| LimitsUnsupported::NoCgroupV2(root.to_owned()))?;
    let have: Vec<&str> = controllers.split_whitespace().collect();
    for needed in ["cpu", "memory"] {
        if !have.contains(&needed) {
            return Err(LimitsUnsupported::MissingController(needed));
        }
    }
    Err(LimitsUnsupported::NotImplemented)
}

/// A running (or finished) process task.
pub struct ProcessTask {
    child: Child,
    pgid: i32,
    logs: Arc<TaskLogs>,
    exit: Option<ProcessExit>,
    readers: Vec<tokio::task::JoinHandle<()>>,
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
    std::fs::create_dir_all(&spec.sandbox)?;
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(&spec.command)
        .current_dir(&spec.sandbox)
        .env("SHOAL_TASK_ID", &spec.task_id)
        .env("MESOS_SANDBOX", &spec.sandbox)
        .envs(&spec.env)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    for (i, port) in spec.ports.iter().enumerate() {
        cmd.env(format!("PORT{i}"), port.to_string());
    }
    if let Some(first) = spec.ports.first() {
        cmd.env("PORT", first.to_string());
    }
    let mut child = cmd.spawn()?;
    let pgid = child.id().map(|p| p as i32).ok_or_else(|| StartError::Invalid("the process exited at once".into()))?;
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
    Ok(ProcessTask {
        child,
        pgid,
        logs,
        exit: None,
        readers,
        limits_note: limits_support().err().map(|e| e.to_string()),
    })
}

impl ProcessTask {
    /// Process (and group) id.
    pub fn pid(&self) -> i32 {
        self.pgid
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

/// Signal a whole process group with kill(1) (no `unsafe` in this crate; a kill is rare).
pub(crate) fn signal_group(pgid: i32, signal: &str) {
    let _ = std::process::Command::new("kill")
        .args(["-s", signal, "--", &format!("-{pgid}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn limits_need_cgroup_v2_with_cpu_and_memory() {
        let dir = tempfile::tempdir().unwrap();
        assert!(limits_support_at(dir.path()).unwrap_err().to_string().contains("not a cgroup v2"));
        std::fs::write(dir.path().join("cgroup.controllers"), "cpuset io pids").unwrap();
        assert_eq!(limits_support_at(dir.path()), Err(LimitsUnsupported::MissingController("cpu")));
        assert!(limits_support_at(dir.path()).unwrap_err().to_string().contains("no `cpu` controller"));
    }
}
