//! What can go wrong when the master is asked to do something, as one type the API maps to
//! status codes by variant (never by message).

use shoal_protocol::{InvalidId, ResourceError, TaskState};
use shoal_runtime::CallError;

/// Why the master refused or could not do what it was asked.
#[derive(Debug, thiserror::Error)]
pub enum MasterError {
    /// The master was built without a plugin registry (simulations).
    #[error("this master has no plugin registry")]
    NoRegistry,
    /// No active allocator plugin of that name.
    #[error("no active allocator plugin `{0}` (push one: shoal plugin push --kind allocator)")]
    NoAllocator(String),
    /// The allocator plugin's call failed.
    #[error("allocator `{name}` failed: {source}")]
    AllocatorFailed {
        /// The allocator.
        name: String,
        /// Why.
        source: CallError,
    },
    /// A framework name that is not a DNS label.
    #[error("framework name `{0}` must be 1-63 of [a-z0-9-]")]
    InvalidFrameworkName(String),
    /// A framework weight that is not a positive number.
    #[error("weight {0} must be a finite number > 0")]
    InvalidWeight(f64),
    /// Resources that cannot be (negative, malformed ports, …).
    #[error(transparent)]
    Resources(#[from] ResourceError),
    /// An id that cannot be used.
    #[error(transparent)]
    InvalidId(#[from] InvalidId),
    /// A registration's host name is empty or too long.
    #[error("hostname must be 1-253 bytes")]
    InvalidHostname,
    /// Another live agent holds the id.
    #[error("agent id `{id}` is held by a live agent on {hostname}; pick another id")]
    AgentIdTaken {
        /// The id.
        id: String,
        /// The host of the agent that holds it.
        hostname: String,
    },
    /// No framework of that name.
    #[error("no framework `{0}`")]
    NoFramework(String),
    /// The framework has as many requests waiting as it may queue.
    #[error("framework `{name}` has {limit} requests waiting already; retry shortly")]
    FrameworkBusy {
        /// The framework.
        name: String,
        /// Most requests waiting at once.
        limit: usize,
    },
    /// The framework has no active plugin version any more.
    #[error("no active framework plugin `{0}`")]
    NoFrameworkPlugin(String),
    /// The framework's worker is gone or dropped the request.
    #[error("framework `{0}` stopped")]
    FrameworkStopped(String),
    /// The framework plugin's call failed.
    #[error("{0}")]
    FrameworkCall(CallError),
    /// No task of that id.
    #[error("no task `{0}`")]
    NoTask(String),
    /// The task has ended.
    #[error("task `{id}` is already {state}")]
    TaskEnded {
        /// The task.
        id: String,
        /// Its state.
        state: TaskState,
    },
    /// The task's agent did not answer.
    #[error("agent {agent} did not answer: {source}")]
    AgentUnreachable {
        /// The agent.
        agent: String,
        /// What the bus said.
        source: shoal_bus::BusError,
    },
    /// The task's agent answered something that is not the protocol.
    #[error("agent {agent} answered {source}")]
    AgentMalformed {
        /// The agent.
        agent: String,
        /// The decoding error.
        source: serde_json::Error,
    },
}
