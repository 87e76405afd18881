//! Following the state: a standby loads the activations the leader commits.

use std::sync::Arc;

use shoal_abi::PluginKind;

use crate::Registry;
use crate::store::{CF_META, plugin_of_state_key};

impl Registry {
    /// Keep the loaded versions in step with the state as another member changes it: on a
    /// member that does not write (a standby master), each applied change of a plugin's
    /// activation is loaded here; a subscriber that lagged reloads everything. The writer loads
    /// what it commits itself. Run it in a task of its own; it ends with the state.
    pub async fn follow(self: Arc<Self>) {
        let mut changes = self.store.state_db().subscribe();
        loop {
            let plugins: Vec<(PluginKind, String)> = match changes.recv().await {
                Ok(batch) => batch
                    .writes
                    .iter()
                    .filter(|w| w.table == CF_META)
                    .filter_map(|w| plugin_of_state_key(&w.key))
                    .collect(),
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                    self.store.states().map(|s| s.into_iter().map(|(k, n, _)| (k, n)).collect()).unwrap_or_default()
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            };
            if plugins.is_empty() || self.store.state_db().is_writer() {
                continue;
            }
            let me = self.clone();
            let _ = tokio::task::spawn_blocking(move || {
                for (kind, name) in plugins {
                    me.reload(kind, &name);
                }
            })
            .await;
        }
    }

    /// Make the loaded version of every plugin the one the state names (a member that starts
    /// leading calls this once it has applied the log).
    pub fn reload_all(&self) {
        let mut plugins: Vec<(PluginKind, String)> =
            self.store.states().map(|s| s.into_iter().map(|(k, n, _)| (k, n)).collect()).unwrap_or_default();
        for (kind, names) in self.slots.read().iter() {
            plugins.extend(names.keys().map(|n| (*kind, n.clone())));
        }
        plugins.sort();
        plugins.dedup();
        for (kind, name) in plugins {
            self.reload(kind, &name);
        }
    }

    /// Load the version the state names active for one plugin, unless it is loaded already.
    fn reload(&self, kind: PluginKind, name: &str) {
        let wanted = match self.store.state(kind, name) {
            Ok(state) => state.and_then(|s| s.active),
            Err(e) => {
                tracing::error!(%kind, %name, cause = %e, "cannot read a plugin's state");
                return;
            }
        };
        let current = self.active(kind, name);
        match wanted {
            None => {
                let removed = self.slots.write().get_mut(&kind).and_then(|names| names.remove(name));
                if let Some(slot) = removed {
                    self.set_current(&slot, None);
                }
            }
            Some(version) if current.as_ref().is_some_and(|c| c.meta.version == version) => {}
            Some(version) => match self.load_version(kind, name, &version) {
                Ok(loaded) => {
                    tracing::info!(%kind, %name, %version, "the leader's active version loaded");
                    self.swap_in(kind, name, loaded, false);
                }
                Err(e) => {
                    tracing::error!(%kind, %name, %version, cause = %e, "cannot load the leader's active version")
                }
            },
        }
    }
}
