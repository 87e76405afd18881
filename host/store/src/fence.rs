//! A store node's fence against deposed masters: the highest leader term it has seen, in
//! `<dir>/term` next to its shards, so a restarted node remembers it (the rule is
//! `shoal_protocol::term`'s).
//!
//! The master's admin requests and every map a node takes pass [`Fence::admit`] first. A higher
//! term is written to disk (a temporary file, fsynced, renamed over the old one) *before* it is
//! obeyed: a node that crashed just after obeying a new leader must not come back willing to
//! obey the old one. The file changes once per change of leader, so the write is done in place,
//! under the fence's lock, on whatever thread asks.
//!
//! What this must never do: let the highest term go down, in memory or on disk.

use std::io::Write;
use std::path::{Path, PathBuf};

use parking_lot::Mutex;

use crate::StoreError;

/// The file, in a node's directory, that keeps the highest term it has seen.
const TERM_FILE: &str = "term";

/// The highest leader term a node has seen, kept in a file.
pub(crate) struct Fence {
    path: PathBuf,
    /// Held while a higher term is written, so two raises reach the disk in order.
    highest: Mutex<u64>,
}

impl Fence {
    /// The fence recorded in `dir`: term 0 when there is no file yet (a new node obeys any
    /// master); an unreadable file is an error, never a silent 0.
    pub(crate) fn open(dir: &Path) -> Result<Fence, StoreError> {
        let path = dir.join(TERM_FILE);
        let highest = match std::fs::read_to_string(&path) {
            Ok(text) => text
                .trim()
                .parse::<u64>()
                .map_err(|e| StoreError::Config(format!("{} does not hold a term: {e}", path.display())))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(e.into()),
        };
        Ok(Fence { path, highest: Mutex::new(highest) })
    }

    /// The highest term seen.
    pub(crate) fn highest(&self) -> u64 {
        *self.highest.lock()
    }

    /// Whether to obey a command or map of `term`: [`StoreError::StaleTerm`] when lower than the
    /// highest term seen; a higher term is recorded on disk first, then becomes the highest.
    pub(crate) fn admit(&self, term: u64) -> Result<(), StoreError> {
        let mut highest = self.highest.lock();
        if shoal_protocol::term::admit(term, *highest, "store node")? {
            write_term(&self.path, term)?;
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
mod tests {
    use super::*;

    #[test]
    fn the_highest_term_only_grows_and_survives_a_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let fence = Fence::open(dir.path()).expect("open");
        assert_eq!(fence.highest(), 0);
        fence.admit(3).expect("a first term");
        let err = fence.admit(2).expect_err("a lower term");
        assert_eq!(err.to_string(), "stale term 2: this store node has seen term 3");
        let reopened = Fence::open(dir.path()).expect("reopen");
        assert_eq!(reopened.highest(), 3);
        assert!(matches!(reopened.admit(2), Err(StoreError::StaleTerm(_))));
        std::fs::write(dir.path().join(TERM_FILE), "three").expect("write");
        assert!(Fence::open(dir.path()).is_err(), "an unreadable term file is not taken for 0");
    }
}
