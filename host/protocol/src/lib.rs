//! The contract between Shoal's processes: what the master, agents and executors say to each
//! other, and the names and limits they must agree on.
//!
//! - [`agent`] — registration and heartbeats (agent → master);
//! - [`task`] — launches, kills, status updates with their acknowledgement, logs, and the task
//!   types they carry ([`TaskInfo`], [`TaskState`], …);
//! - [`resources`] — [`Resources`], their arithmetic and the `cpus:4;mem:8192;ports:[…]` text form;
//! - [`artifact`] — how agents fetch the components Wasm tasks run;
//! - [`store`] — the state store's control plane: the shard map, node registrations, move
//!   progress, and the data of key-value events;
//! - [`labels`] — the task-label contract (`shoal.service`, `shoal.route.path`, …), with the one
//!   list of labels apps may not set;
//! - [`term`] — leader terms and the fencing rule: every command of the master carries its term,
//!   and agents and store nodes refuse one of a lower term than the highest they have seen;
//! - [`limits`] — the key-value limits every surface enforces.
//!
//! The subjects these messages travel on are built by `shoal_bus::subject`; the store's binary
//! data-plane protocol (reads, writes and move steps to one node) is `shoal_store::wire`. Every role depends on this crate, and it depends on no role: a change to
//! a message is a change here, seen by both sides at compile time.
//!
//! What this crate must never do: perform I/O, or depend on the bus, the runtime or a role's
//! crate. It is plain data and pure checks, so guests can use it too (the SDK re-exports
//! [`labels`]).

pub mod agent;
pub mod artifact;
pub mod labels;
pub mod resources;
pub mod store;
pub mod task;
pub mod term;

pub use agent::{AgentRegistration, HeartbeatReply, RegisterReply, validate_agent_id};
pub use resources::{PortRange, ResourceError, Resources};
pub use task::{
    AgentTask, KillReply, KillRequest, LaunchReply, LaunchRequest, LogsReply, LogsRequest, StatusAck, StatusUpdate,
    TaskCommand, TaskInfo, TaskState, validate_task_id,
};
pub use term::StaleTerm;

/// The key-value limits of every surface (HTTP API, plugins' `keyvalue`, tasks' `wasi:keyvalue`,
/// the store): owned by `shoal-keyspace`, which also places keys on shards.
pub mod limits {
    pub use shoal_keyspace::{MAX_KEY_BYTES, MAX_VALUE_BYTES};
}

/// An id that cannot be used: it would become a file name, a process argument or a subject
/// token, so only a narrow alphabet is allowed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{what} `{id}` must be {rule}")]
pub struct InvalidId {
    /// What kind of id (`agent id`, `task id`).
    pub what: &'static str,
    /// The id as given.
    pub id: String,
    /// The rule it broke.
    pub rule: &'static str,
}
