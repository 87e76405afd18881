//! The agent's side of the agent registry: register with the master (retrying until one
//! answers), heartbeat at the pace the master asked for, and register again, with the tasks the
//! agent runs, whenever the master does not know the agent (it restarted, or declared the agent
//! lost). The messages are `shoal_protocol::agent`'s.
//!
//! Every reply carries the answering master's leader term, and the agent acts on a reply only if
//! [`AgentHooks::admit_term`] admits it: a deposed master's registration reply (which may name
//! tasks to kill, or refuse the agent) is not obeyed — the agent keeps asking until the leader
//! answers — and its heartbeat replies are ignored.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use shoal_bus::{SharedBus, subject};
use shoal_protocol::{AgentRegistration, AgentTask, HeartbeatReply, RegisterReply};

use crate::FenceError;

/// Why the agent stopped trying to be registered.
#[derive(Debug, thiserror::Error)]
pub enum RegistrationError {
    /// The master refused the registration (it says why: bad resources, an id held by another
    /// live agent, …); retrying would get the same answer.
    #[error("{0}")]
    Refused(String),
    /// The master answered something that is not a registration reply.
    #[error("the master answered something else: {0}")]
    Malformed(serde_json::Error),
    /// The registration could not be encoded.
    #[error("cannot encode the registration: {0}")]
    Encode(serde_json::Error),
}

/// What the agent loop needs of the agent it registers.
pub trait AgentHooks: Send + Sync + 'static {
    /// The tasks the agent runs now, listed in each (re-)registration.
    fn tasks(&self) -> Vec<AgentTask>;
    /// The master answered that the cluster gave these tasks up: kill them.
    fn kill(&self, task_ids: Vec<String>);
    /// Registered (again): a moment to resend unacknowledged status updates.
    fn registered(&self) {}
    /// A reply of a master at `term` arrived: whether to act on it (see `shoal_protocol::term`).
    /// An agent that runs tasks refuses a term lower than the highest it has seen and remembers a
    /// higher one; the default (an agent without tasks) obeys every master.
    fn admit_term(&self, term: u64) -> Result<(), FenceError> {
        let _ = term;
        Ok(())
    }
}

/// An agent without tasks (simulations, tests of the registry).
struct NoTasks(Vec<AgentTask>);

impl AgentHooks for NoTasks {
    fn tasks(&self) -> Vec<AgentTask> {
        self.0.clone()
    }
    fn kill(&self, _: Vec<String>) {}
}

/// The agent's side: register (retrying until a master answers), then heartbeat; register again
/// whenever the master does not know the agent. Returns only on a refused registration.
pub async fn run_agent(bus: SharedBus, registration: AgentRegistration) -> Result<(), RegistrationError> {
    let tasks = registration.tasks.clone();
    run_agent_with(bus, registration, Arc::new(NoTasks(tasks))).await
}

/// [`run_agent`] for an agent that runs tasks: each registration lists `hooks.tasks()`.
pub async fn run_agent_with(
    bus: SharedBus,
    mut registration: AgentRegistration,
    hooks: Arc<dyn AgentHooks>,
) -> Result<(), RegistrationError> {
    let heartbeat_subject = subject::agent_heartbeat(&registration.id);
    let register_subject = subject::agent_register(&registration.id);
    let mut waiting_logged = false;
    loop {
        // Register.
        registration.tasks = hooks.tasks();
        let payload: Bytes = serde_json::to_vec(&registration).map_err(RegistrationError::Encode)?.into();
        let interval = match bus.request(&register_subject, payload.clone(), Duration::from_secs(2)).await {
            Ok(msg) => match serde_json::from_slice::<RegisterReply>(&msg.payload) {
                Ok(reply) if let Err(e) = hooks.admit_term(reply.term) => {
                    // A deposed master answered (or the term could not be recorded): neither its
                    // refusal nor its kills count. The leader will answer a later attempt.
                    if !waiting_logged {
                        tracing::warn!(agent = %registration.id, cause = %e, "registration reply not obeyed; retrying");
                        waiting_logged = true;
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
                Ok(reply) if reply.accepted => {
                    tracing::info!(agent = %registration.id, tasks = registration.tasks.len(), "registered with the master");
                    waiting_logged = false;
                    if !reply.kill.is_empty() {
                        hooks.kill(reply.kill);
                    }
                    hooks.registered();
                    Duration::from_millis(reply.heartbeat_ms.max(10))
                }
                Ok(reply) => return Err(RegistrationError::Refused(reply.error.unwrap_or_else(|| "refused".into()))),
                Err(e) => return Err(RegistrationError::Malformed(e)),
            },
            Err(e) => {
                if !waiting_logged {
                    tracing::warn!(agent = %registration.id, cause = %e, "no master answers yet; retrying");
                    waiting_logged = true;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        // Heartbeat until the master forgets us.
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            match bus.request(&heartbeat_subject, Bytes::new(), interval.max(Duration::from_millis(500))).await {
                Ok(msg) => match serde_json::from_slice::<HeartbeatReply>(&msg.payload) {
                    Ok(HeartbeatReply { term, .. }) if let Err(e) = hooks.admit_term(term) => {
                        tracing::debug!(agent = %registration.id, cause = %e, "heartbeat reply not obeyed");
                    }
                    Ok(HeartbeatReply { known: true, .. }) => {}
                    _ => {
                        tracing::warn!(agent = %registration.id, "the master does not know this agent; registering again");
                        break;
                    }
                },
                Err(e) => tracing::debug!(agent = %registration.id, cause = %e, "heartbeat unanswered"),
            }
        }
    }
}
