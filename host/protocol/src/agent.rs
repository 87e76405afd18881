//! What an agent and the master say to each other about the agent itself, over the bus (JSON):
//!
//! - **Register** — request on `shoal.ctl.agent.register` with an [`AgentRegistration`] (id,
//!   hostname, attributes, total resources, the tasks it still runs); the reply
//!   ([`RegisterReply`]) accepts it and says how often to heartbeat, or refuses it with a reason
//!   (bad resources, an id already held by a live agent on another host), and names the tasks the
//!   agent must kill because the cluster gave them up.
//! - **Heartbeat** — request on `shoal.ctl.agent.<id>.heartbeat`; the reply ([`HeartbeatReply`])
//!   says whether the master knows the agent. An agent the master does not know (a restarted
//!   master, or one that declared it lost) registers again at once, with its tasks.
//!
//! Both replies carry the master's leader term: the agent acts on a reply (kills the tasks it
//! names, registers again) only when its term is not lower than the highest the agent has seen,
//! and learns a new leader's term from it (see [`crate::term`]).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{AgentTask, InvalidId, Resources};

/// What an agent says when it registers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentRegistration {
    /// Stable agent id (`[a-z0-9-]{1,63}`).
    pub id: String,
    /// Host name (the `@hostname` attribute of constraints).
    pub hostname: String,
    /// Address tasks on this agent are reachable at (IP or name); default the host name.
    #[serde(default)]
    pub address: Option<String>,
    /// Operator-set attributes, e.g. `rack=r1`.
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
    /// Everything the agent offers to the cluster.
    pub resources: Resources,
    /// The tasks the agent runs now (empty on a first start).
    #[serde(default)]
    pub tasks: Vec<AgentTask>,
}

/// The master's answer to a registration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RegisterReply {
    /// The answering master's leader term.
    pub term: u64,
    /// Accepted.
    pub accepted: bool,
    /// Why not, when refused.
    #[serde(default)]
    pub error: Option<String>,
    /// How often to heartbeat, in milliseconds.
    pub heartbeat_ms: u64,
    /// Tasks the agent reported that the cluster gave up (declared lost and replaced, or never
    /// knew): the agent kills them.
    #[serde(default)]
    pub kill: Vec<String>,
}

/// The master's answer to a heartbeat.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HeartbeatReply {
    /// False when the master does not know the agent (or declared it lost): register again.
    pub known: bool,
    /// The answering master's leader term.
    pub term: u64,
}

/// `[a-z0-9-]{1,63}`, not starting or ending with `-` (a DNS label: agent ids become subject
/// tokens, file names and host-name-like attributes).
pub fn validate_agent_id(id: &str) -> Result<(), InvalidId> {
    let ok = !id.is_empty()
        && id.len() <= 63
        && id.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !id.starts_with('-')
        && !id.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(InvalidId {
            what: "agent id",
            id: id.to_owned(),
            rule: "1-63 of [a-z0-9-], not starting or ending with `-`",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_ids() {
        assert!(validate_agent_id("agent-1").is_ok());
        for bad in ["", "-a", "a-", "A", "a_b", &"a".repeat(64)] {
            let err = validate_agent_id(bad).expect_err(bad);
            assert!(err.to_string().starts_with(&format!("agent id `{bad}` must be 1-63")), "{err}");
        }
    }

    #[test]
    fn registrations_refuse_unknown_fields() {
        let err = serde_json::from_str::<AgentRegistration>(
            r#"{"id":"a","hostname":"h","resources":{"cpus":1,"mem_mb":1},"root":true}"#,
        )
        .expect_err("an unknown field");
        assert!(err.to_string().contains("unknown field `root`"), "{err}");
    }
}
