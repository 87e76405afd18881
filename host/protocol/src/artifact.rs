//! How agents fetch the components Wasm tasks run (artifacts, named by the sha256 of their
//! bytes) from the master, over the bus in chunks (NATS messages are small):
//! `shoal.ctl.artifact.stat` with the digest as its body answers a [`StatReply`], then
//! `shoal.ctl.artifact.read` with a JSON [`ReadRequest`] answers up to [`CHUNK`] raw bytes (empty
//! past the end or for an unknown artifact). The agent checks the digest of what it assembled
//! before it runs anything.

use serde::{Deserialize, Serialize};

/// Bytes per chunk on the bus: half of NATS's default 1 MiB payload limit.
pub const CHUNK: usize = 512 * 1024;
/// Largest artifact, in bytes: a component is held whole in memory by the master serving it and
/// by the agent compiling it.
pub const MAX_ARTIFACT: usize = 64 << 20;

/// The answer to a size request: the size, or why there is none.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatReply {
    /// Size in bytes, when the master has the artifact.
    pub size: Option<u64>,
    /// Why not, otherwise.
    pub error: Option<String>,
}

/// A request for the chunk of an artifact that starts at `offset`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadRequest {
    /// The artifact.
    pub digest: String,
    /// First byte wanted.
    pub offset: u64,
}

/// Whether `d` is a sha256 digest as artifacts are named: 64 lower-case hex digits (so it is
/// also a safe file name).
pub fn is_digest(d: &str) -> bool {
    d.len() == 64 && d.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests() {
        assert!(is_digest(&"ab".repeat(32)));
        assert!(!is_digest(&"AB".repeat(32)));
        assert!(!is_digest(&"ab".repeat(31)));
        assert!(!is_digest("../../etc/passwd"));
    }
}
