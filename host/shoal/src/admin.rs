//! The admin token: one for the whole cluster, so it works on every master.
//!
//! It lives in the master's state, table [`CLUSTER_TABLE`], key `admin-token` (in clear: the bus
//! grants let only masters read JetStream), and every master writes the one it uses to its own
//! `<data_dir>/admin.token` whenever it learns it: mode 0600 from creation (a temporary file
//! opened with mode 0600, fsynced, then renamed), so a crash leaves the old token or the new one,
//! whole. The token itself is never printed or logged: callers show where it is, not what it is.
//!
//! Which token wins:
//! - **Local state** (`shoal dev`, one master): the file, as before the state existed. A new data
//!   directory gets a new token; an operator who rotates `admin.token` (replaces or removes it)
//!   and restarts rotates the token. The state gets the file's token at start.
//! - **Replicated state**: the state's, when it has one; a master starting on a cluster without
//!   one uses its file's (or a new one) and commits it once it leads ([`claim`]). A master that
//!   learns another token (another master committed it first) switches to it.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};

use anyhow::Context;
use shoal_api::Auth;
use shoal_state::{Batch, StateDb, TableWatch};

/// The state's table of cluster-wide settings.
pub const CLUSTER_TABLE: &str = "cluster";
/// The admin token's key in [`CLUSTER_TABLE`].
const ADMIN_TOKEN_KEY: &[u8] = b"admin-token";

/// Read the admin token from `data_dir`, or make and store one (see the module's docs).
pub fn admin_token(data_dir: &Path) -> anyhow::Result<(String, PathBuf)> {
    let path = data_dir.join("admin.token");
    if let Some(token) = read_file(&path) {
        return Ok((token, path));
    }
    let token = shoal_api::auth::generate_token();
    write_file(data_dir, &token)?;
    Ok((token, path))
}

fn read_file(path: &Path) -> Option<String> {
    let token = std::fs::read_to_string(path).ok()?.trim().to_owned();
    (!token.is_empty()).then_some(token)
}

/// Write `token` to `<data_dir>/admin.token`, atomically and never readable by others.
fn write_file(data_dir: &Path, token: &str) -> anyhow::Result<PathBuf> {
    let path = data_dir.join("admin.token");
    let tmp = data_dir.join(format!("admin.token.{}.tmp", std::process::id()));
    let written = (|| {
        use std::io::Write;
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(&tmp)?;
        file.write_all(format!("{token}\n").as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&tmp, &path)
    })();
    if let Err(err) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(err).with_context(|| format!("writing {}", path.display()));
    }
    Ok(path)
}

/// The admin token in the state, if any.
fn stored(state: &StateDb) -> anyhow::Result<Option<String>> {
    let value = state.get(CLUSTER_TABLE, ADMIN_TOKEN_KEY).context("reading the admin token from the state")?;
    Ok(value.map(|v| String::from_utf8_lossy(&v).trim().to_owned()).filter(|t| !t.is_empty()))
}

/// Make this master's admin token the cluster's, if the state has none yet (with the local
/// state: if the state's is not the file's). Call it once this master leads; returns the
/// cluster's admin token.
pub async fn claim(state: &StateDb, data_dir: &Path) -> anyhow::Result<String> {
    let stored = stored(state)?;
    let wanted = match &stored {
        Some(token) if state.is_replicated() => token.clone(),
        _ => admin_token(data_dir)?.0,
    };
    if stored.as_ref() != Some(&wanted) {
        let mut batch = Batch::new();
        batch.put(CLUSTER_TABLE, ADMIN_TOKEN_KEY, wanted.as_bytes());
        state.commit(batch).await.context("storing the admin token in the state")?;
    }
    Ok(wanted)
}

/// The admin token a master starts with, and what it needs to follow the cluster's.
pub struct AdminToken {
    /// The token.
    pub token: String,
    /// Where it is written.
    pub file: PathBuf,
    watch: TableWatch,
    data_dir: PathBuf,
}

impl AdminToken {
    /// Decide the token this master starts with (see the module's docs) and write it to its
    /// file; with the local state, commit it at once.
    pub async fn start(state: &StateDb, data_dir: &Path) -> anyhow::Result<AdminToken> {
        let watch = state.watch(CLUSTER_TABLE);
        let token = match (state.is_replicated(), stored(state)?) {
            (false, _) => claim(state, data_dir).await?,
            (true, Some(token)) => token,
            (true, None) => admin_token(data_dir)?.0,
        };
        let file = data_dir.join("admin.token");
        if read_file(&file).as_ref() != Some(&token) {
            write_file(data_dir, &token)?;
        }
        Ok(AdminToken { token, file, watch, data_dir: data_dir.to_owned() })
    }

    /// From now on, whenever the state's admin token changes, write it to the file and make it
    /// the one `auth` accepts.
    pub fn follow(self, state: &Arc<StateDb>, auth: &Arc<Auth>) {
        tokio::spawn(follow(self.watch, Arc::downgrade(state), Arc::downgrade(auth), self.token, self.data_dir));
    }
}

async fn follow(mut watch: TableWatch, state: Weak<StateDb>, auth: Weak<Auth>, mut current: String, data_dir: PathBuf) {
    while watch.next().await.is_some() {
        let (Some(state), Some(auth)) = (state.upgrade(), auth.upgrade()) else { return };
        let token = match stored(&state) {
            Ok(Some(token)) if token != current => token,
            Ok(_) => continue,
            Err(e) => {
                tracing::error!(cause = format!("{e:#}"), "the cluster's admin token could not be read");
                continue;
            }
        };
        auth.set_admin_token(&token);
        if let Err(e) = write_file(&data_dir, &token) {
            tracing::error!(cause = format!("{e:#}"), "the cluster's admin token could not be written to admin.token");
        }
        tracing::info!(file = %data_dir.join("admin.token").display(), "the cluster's admin token changed");
        current = token;
    }
}
