//! Task states as frameworks store them (serde-friendly mirror of the WIT `task-state`), and the
//! rules for applying at-least-once status updates.

use serde::{Deserialize, Serialize};
use shoal_sdk::TaskState;

/// Life cycle of a task, stored lower-case in JSON.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Launched, not yet on the agent.
    Staging,
    /// The agent is starting it.
    Starting,
    /// Running.
    Running,
    /// Exited with success.
    Finished,
    /// Exited with failure or could not start.
    Failed,
    /// Killed.
    Killed,
    /// Its agent was lost.
    Lost,
}

impl From<TaskState> for State {
    fn from(s: TaskState) -> Self {
        match s {
            TaskState::Staging => State::Staging,
            TaskState::Starting => State::Starting,
            TaskState::Running => State::Running,
            TaskState::Finished => State::Finished,
            TaskState::Failed => State::Failed,
            TaskState::Killed => State::Killed,
            TaskState::Lost => State::Lost,
        }
    }
}

impl State {
    /// Whether the task has ended (nothing follows a terminal state).
    pub fn is_terminal(self) -> bool {
        matches!(self, State::Finished | State::Failed | State::Killed | State::Lost)
    }

    /// Lower-case name, as in JSON.
    pub fn name(self) -> &'static str {
        match self {
            State::Staging => "staging",
            State::Starting => "starting",
            State::Running => "running",
            State::Finished => "finished",
            State::Failed => "failed",
            State::Killed => "killed",
            State::Lost => "lost",
        }
    }

    fn rank(self) -> u8 {
        match self {
            State::Staging => 0,
            State::Starting => 1,
            State::Running => 2,
            _ => 3,
        }
    }

    /// Whether an update to `next` may be applied to a task now in `self`: never out of a terminal
    /// state, never back to an earlier non-terminal state (a late duplicate). The same state is
    /// allowed (health may have changed).
    pub fn accepts(self, next: State) -> bool {
        !self.is_terminal() && next.rank() >= self.rank()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transitions() {
        assert!(State::Staging.accepts(State::Running));
        assert!(State::Running.accepts(State::Running));
        assert!(!State::Running.accepts(State::Staging));
        assert!(State::Running.accepts(State::Failed));
        assert!(!State::Failed.accepts(State::Running));
        assert!(!State::Killed.accepts(State::Killed));
        assert_eq!(serde_json::to_string(&State::Lost).ok().as_deref(), Some("\"lost\""));
    }
}
