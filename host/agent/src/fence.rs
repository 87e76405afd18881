//! The agent's fence against deposed masters: the highest leader term it has seen, in
//! `<work_dir>/term`, so a restarted agent remembers it (the rule is `shoal_protocol::term`'s).
//!
//! Launches, kills, and the master's registration and heartbeat replies pass [`Fence::admit`]
//! before the agent acts on them. A higher term is written to disk (a temporary file, fsynced,
//! renamed over the old one) *before* it is obeyed: were the agent to crash just after obeying a
//! new leader, it must not come back willing to obey the old one.
//!
//! What this must never do: let the highest term go down, in memory or on disk.

use std::io::Write;
use std::path::{Path, PathBuf};

use parking_lot::Mutex;
use shoal_protocol::StaleTerm;

/// Why a command of the master was not obeyed.
#[derive(Debug, thiserror::Error)]
pub enum FenceError {
    /// Its term is lower than one the agent has seen: it comes from a deposed master.
    #[error(transparent)]
    Stale(#[from] StaleTerm),
    /// Its term is new, and could not be written down (so it is not obeyed either: a restarted
    /// agent would not know it).
    #[error("cannot record term {term} in {}: {source}", .path.display())]
    Unrecorded {
        /// The command's term.
        term: u64,
        /// The term file.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
}

/// The highest leader term the agent has seen, kept in a file.
pub(crate) struct Fence {
    path: PathBuf,
    /// Held while a higher term is written, so two raises reach the disk in order.
    highest: Mutex<u64>,
}

impl Fence {
    /// The fence recorded at `path`: term 0 when there is no file yet (a new agent obeys any
    /// master); an unreadable file is an error, never a silent 0.
    pub(crate) fn open(path: PathBuf) -> std::io::Result<Fence> {
        let highest = match std::fs::read_to_string(&path) {
            Ok(text) => text.trim().parse::<u64>().map_err(|e| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{} does not hold a term: {e}", path.display()),
                )
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(e),
        };
        Ok(Fence { path, highest: Mutex::new(highest) })
    }

    /// The highest term seen.
    pub(crate) fn highest(&self) -> u64 {
        *self.highest.lock()
    }

    /// Whether to obey a command of `term`: refused when lower than the highest term seen; a
    /// higher term is recorded on disk first, then becomes the highest.
    pub(crate) fn admit(&self, term: u64) -> Result<(), FenceError> {
        let mut highest = self.highest.lock();
        if shoal_protocol::term::admit(term, *highest, "agent")? {
            write_term(&self.path, term).map_err(|source| FenceError::Unrecorded {
                term,
                path: self.path.clone(),
                source,
            })?;
            tracing::info!(term, previous = *highest, "a new leader's term");
            *highest = term;
        }
        Ok(())
    }
}

/// Replace the file at `path` with `term`, atomically and durably.
fn write_term(path: &Path, term: u64) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut file = std::fs::File::create(&tmp)?;
        writeln!(file, "{term}")?;
        file.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_highest_term_only_grows_and_survives_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("term");
        let fence = Fence::open(path.clone()).unwrap();
        assert_eq!(fence.highest(), 0);
        fence.admit(5).unwrap();
        fence.admit(5).unwrap();
        let err = fence.admit(4).unwrap_err();
        assert_eq!(err.to_string(), "stale term 4: this agent has seen term 5");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "5\n");
        let reopened = Fence::open(path.clone()).unwrap();
        assert_eq!(reopened.highest(), 5);
        assert!(matches!(reopened.admit(4), Err(FenceError::Stale(_))));
        std::fs::write(&path, "five").unwrap();
        assert!(Fence::open(path).is_err(), "an unreadable term file is not taken for 0");
    }
}
