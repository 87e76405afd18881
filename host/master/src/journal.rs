//! The task journal: every live task is kept in the master's key-value journal
//! (`framework/_master/task/<id>` in the registry's RocksDB), so a restarted master knows what
//! ran where. Journaled tasks are unconfirmed until their agent registers again.

use crate::Master;
use crate::tasks::{JOURNAL_TASKS, TaskEntry};

impl Master {
    pub(crate) fn journal_put(&self, t: &TaskEntry) {
        if let Some(j) = &self.journal
            && let Err(e) = j.set(&format!("{JOURNAL_TASKS}{}", t.info.id), &serde_json::to_vec(t).expect("serialises"))
        {
            tracing::error!(task = %t.info.id, cause = %e, "could not journal a task");
        }
    }

    pub(crate) fn journal_delete(&self, id: &str) {
        if let Some(j) = &self.journal {
            let _ = j.delete(&format!("{JOURNAL_TASKS}{id}"));
        }
    }

    /// Load the journal of a previous run: its live tasks, unconfirmed until their agents register.
    pub(crate) fn load_journal(&self) -> usize {
        let Some(j) = &self.journal else { return 0 };
        let mut after: Option<String> = None;
        let mut loaded = 0;
        loop {
            let keys = match j.list(JOURNAL_TASKS, after.as_deref(), 1000) {
                Ok(keys) => keys,
                Err(e) => {
                    tracing::error!(cause = %e, "could not read the task journal");
                    return loaded;
                }
            };
            let Some(last) = keys.last().cloned() else { return loaded };
            let mut tasks = self.tasks.lock();
            for key in keys {
                let Ok(Some(bytes)) = j.get(&key) else { continue };
                match serde_json::from_slice::<TaskEntry>(&bytes) {
                    Ok(t) if !t.state.is_terminal() => {
                        tasks.insert(t.info.id.clone(), TaskEntry { confirmed: false, ..t });
                        loaded += 1;
                    }
                    Ok(_) => {}
                    Err(e) => tracing::error!(%key, cause = %e, "unreadable journal entry; skipped"),
                }
            }
            after = Some(last);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;
    use std::time::Duration;

    use shoal_bus::{LocalBus, SharedBus};
    use shoal_protocol::{Resources, TaskCommand, TaskInfo, TaskState};
    use shoal_runtime::{KvBackend, MemoryKv};

    use super::*;
    use crate::{MasterConfig, MasterParts};

    fn entry(id: &str, agent: &str) -> TaskEntry {
        TaskEntry {
            info: TaskInfo {
                id: id.into(),
                framework: "service".into(),
                agent_id: agent.into(),
                command: TaskCommand::Shell("sleep 60".into()),
                resources: Resources::parse("cpus:0.1;mem:16").unwrap(),
                env: BTreeMap::new(),
                labels: BTreeMap::new(),
            },
            hostname: format!("{agent}.local"),
            state: TaskState::Running,
            healthy: None,
            message: String::new(),
            created_ms: 1,
            updated_ms: 1,
            confirmed: true,
        }
    }

    /// A restarted master knows the journaled tasks, unconfirmed; those whose agent does not
    /// come back within the recovery window (2 × the agent timeout, on the test's clock) are
    /// lost, and not a moment before.
    #[tokio::test(start_paused = true)]
    async fn journaled_tasks_are_lost_when_their_agent_misses_the_recovery_window() {
        let journal: Arc<dyn KvBackend> = Arc::new(MemoryKv::default());
        for t in [entry("web.1", "a1"), TaskEntry { state: TaskState::Finished, ..entry("old.1", "a1") }] {
            journal.set(&format!("{JOURNAL_TASKS}{}", t.info.id), &serde_json::to_vec(&t).unwrap()).unwrap();
        }
        let bus: SharedBus = Arc::new(LocalBus::new());
        let timeout = Duration::from_secs(5);
        let master = Master::with_parts(
            bus,
            MasterConfig { agent_timeout: timeout, ..MasterConfig::default() },
            MasterParts { journal: Some(journal.clone()), ..MasterParts::default() },
        );
        let web = master.task("web.1").expect("the live task is recovered");
        assert!(!web.confirmed && web.state == TaskState::Running);
        assert!(master.task("old.1").is_none(), "ended tasks are not recovered");

        tokio::time::advance(timeout * 2 - Duration::from_millis(1)).await;
        master.tasks_housekeeping().await;
        assert_eq!(master.task("web.1").unwrap().state, TaskState::Running, "still inside the window");

        tokio::time::advance(Duration::from_millis(2)).await;
        master.tasks_housekeeping().await;
        let web = master.task("web.1").unwrap();
        assert_eq!(web.state, TaskState::Lost);
        assert!(web.message.contains("did not come back"), "{}", web.message);
        assert_eq!(journal.get(&format!("{JOURNAL_TASKS}web.1")).unwrap(), None, "a lost task leaves the journal");
    }
}
