//! What master and agents say to each other about tasks, over the bus (JSON bodies):
//!
//! - **Launch** — request on `shoal.ctl.agent.<id>.launch` with a [`LaunchRequest`] (the tasks of
//!   one offer); the agent answers [`LaunchReply`] at once (accepted into `staging`) and reports
//!   what happens next as status updates.
//! - **Kill** — request on `shoal.ctl.agent.<id>.kill` with a [`KillRequest`]; the answer says
//!   whether the agent knew the task; the end comes as a `killed` status update.
//! - **Status** — request on `shoal.ctl.task.status` with a [`StatusUpdate`]; the master's reply
//!   ([`StatusAck`]) acknowledges it. The agent keeps every unacknowledged update and sends it again
//!   until it is acknowledged (at least once), oldest first; the master drops duplicates and
//!   never moves a task back out of a terminal state.
//! - **Logs** — request on `shoal.ctl.agent.<id>.logs` with a [`LogsRequest`]; answer [`LogsReply`].
//!
//! An agent registering after a restart of the master (or after it was declared lost) lists
//! every task it still runs ([`AgentTask`]); the master's reply names the tasks the agent must
//! kill because the cluster already gave them up (they were declared lost and replaced).
//!
//! Launches and kills carry the master's leader term; an agent refuses one of a lower term than
//! the highest it has seen (see [`crate::term`]): a refused launch names every task in
//! [`LaunchReply::refused`] with the reason, a refused kill says why in [`KillReply::refused`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{InvalidId, Resources};

/// Life cycle of a task (the WIT `task-state`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum TaskState {
    /// Accepted by the master, not yet started by the agent.
    Staging,
    /// The agent is starting it.
    Starting,
    /// Running.
    Running,
    /// Exited with success.
    Finished,
    /// Exited with failure, or could not start.
    Failed,
    /// Killed on request.
    Killed,
    /// Its agent was lost, or forgot it.
    Lost,
}

impl TaskState {
    /// Whether the task is over.
    pub fn is_terminal(self) -> bool {
        matches!(self, TaskState::Finished | TaskState::Failed | TaskState::Killed | TaskState::Lost)
    }

    /// Lower-case name (`running`).
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Staging => "staging",
            TaskState::Starting => "starting",
            TaskState::Running => "running",
            TaskState::Finished => "finished",
            TaskState::Failed => "failed",
            TaskState::Killed => "killed",
            TaskState::Lost => "lost",
        }
    }

    /// May a task in `self` move to `next`? Never out of a terminal state, never backwards.
    pub fn may_become(self, next: TaskState) -> bool {
        !self.is_terminal() && (next.is_terminal() || next >= self)
    }
}

impl std::fmt::Display for TaskState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a task runs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskCommand {
    /// `sh -c <command>` by the process executor.
    Shell(String),
    /// A Wasm component (by sha256 digest) by the Wasm executor.
    Wasm(String),
}

/// Everything an agent needs to run a task; also what the master remembers of it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskInfo {
    /// Cluster-unique id, chosen by the framework.
    pub id: String,
    /// Framework that launched it.
    pub framework: String,
    /// Agent running it.
    pub agent_id: String,
    /// What to run.
    pub command: TaskCommand,
    /// Resources it holds, ports as single-port ranges.
    pub resources: Resources,
    /// Environment.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Labels (the `shoal.*` ones are read by the host: `shoal.service`, `shoal.health`, …).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

impl TaskInfo {
    /// The ports it holds, in order.
    pub fn ports(&self) -> Vec<u16> {
        self.resources.ports.iter().flat_map(|r| r.begin..=r.end).collect()
    }
}

/// Tasks of one offer, to one agent.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LaunchRequest {
    /// The sending master's leader term (see [`crate::term`]).
    pub term: u64,
    /// The tasks.
    pub tasks: Vec<TaskInfo>,
}

/// The agent's answer to a launch.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LaunchReply {
    /// Ids the agent took in (it reports them from `staging` on).
    pub accepted: Vec<String>,
    /// Ids it refused at once, with why (they are `failed`).
    #[serde(default)]
    pub refused: Vec<(String, String)>,
}

/// Kill one task.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KillRequest {
    /// The sending master's leader term (see [`crate::term`]).
    pub term: u64,
    /// Task id.
    pub task_id: String,
    /// SIGTERM → SIGKILL grace, ms.
    #[serde(default)]
    pub grace_ms: Option<u64>,
}

/// Whether the agent knew the task it was asked to kill.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KillReply {
    /// The agent runs (ran) the task.
    pub known: bool,
    /// Why the agent did not act on the request, when it did not (its term is stale); `known`
    /// still says whether the agent has the task.
    pub refused: Option<String>,
}

/// A task's new state, from its agent.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StatusUpdate {
    /// Unique id of this update (acknowledged by it).
    pub uuid: String,
    /// Task id.
    pub task_id: String,
    /// Agent.
    pub agent_id: String,
    /// New state.
    pub state: TaskState,
    /// Health verdict, once the task's check has one.
    #[serde(default)]
    pub healthy: Option<bool>,
    /// Why, for humans.
    #[serde(default)]
    pub message: String,
    /// When, ms since the Unix epoch.
    pub timestamp_ms: u64,
}

/// The master acknowledges a status update.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StatusAck {
    /// The update's uuid.
    pub uuid: String,
}

/// A task an agent runs, as it reports it when registering.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AgentTask {
    /// The task.
    pub info: TaskInfo,
    /// Its state now.
    pub state: TaskState,
    /// Its health, when known.
    #[serde(default)]
    pub healthy: Option<bool>,
    /// Last message.
    #[serde(default)]
    pub message: String,
}

/// Read a task's output.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LogsRequest {
    /// Task id.
    pub task_id: String,
    /// `stdout` or `stderr`.
    pub stream: String,
    /// At most this many bytes, the newest.
    #[serde(default)]
    pub tail: Option<usize>,
}

/// A task's output.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LogsReply {
    /// The task is known to the agent.
    pub found: bool,
    /// The bytes kept (lossy UTF-8).
    pub data: String,
    /// Bytes that fell out of the bounded buffer.
    pub dropped: u64,
}

/// `[A-Za-z0-9._-]{1,128}`, not starting with `.` or `-`: safe as a file name, a process
/// argument and a bus subject token.
pub fn validate_task_id(id: &str) -> Result<(), InvalidId> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        && !id.starts_with(['.', '-']);
    if ok {
        Ok(())
    } else {
        Err(InvalidId {
            what: "task id",
            id: id.to_owned(),
            rule: "1-128 of [A-Za-z0-9._-], not starting with `.` or `-`",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_only_move_forward() {
        use TaskState::*;
        assert!(Staging.may_become(Running));
        assert!(Running.may_become(Running));
        assert!(!Running.may_become(Starting));
        assert!(Running.may_become(Lost));
        assert!(!Lost.may_become(Running));
        assert!(!Finished.may_become(Killed));
    }

    #[test]
    fn task_ids() {
        assert!(validate_task_id("web.1a2b").is_ok());
        assert!(validate_task_id("").is_err());
        assert!(validate_task_id(".x").is_err());
        assert!(validate_task_id("a b").is_err());
        assert!(validate_task_id(&"x".repeat(129)).is_err());
    }
}
