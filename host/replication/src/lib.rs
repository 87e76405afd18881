//! Consensus borrowed from NATS JetStream, built once for every part of Shoal that needs a single
//! leader: the master (issue 22) and each replicated shard of the state store (issue 23).
//!
//! JetStream's streams and KV buckets are replicated with Raft inside the NATS servers; Shoal never
//! runs an election of its own. What it builds on top is small and shared:
//!
//! - [`lease`]: a leader lease on one key of a replicated KV bucket. Whoever creates the key leads;
//!   it renews by compare-and-set on the key's revision, well inside the bucket's TTL; the key's
//!   creation revision is the leader's **term**, which only grows. A holder stops counting itself
//!   leader, on its own monotonic clock, before the server can let the key expire, so two holders
//!   never both believe they lead at the same moment.
//! - [`log`]: a replicated log on one JetStream stream, appended by the leader only, each append
//!   fenced with the sequence it expects to be last, read in order by everyone.
//! - [`blobs`]: content-addressed bytes too large for one log entry, in a JetStream Object Store.

pub mod blobs;
pub mod lease;
pub mod log;

pub use blobs::{BlobError, Blobs};
pub use lease::{Lease, LeaseConfig, LeaseError, Role};
pub use log::{Appending, Entry, Log, LogConfig, LogError, Reader};
