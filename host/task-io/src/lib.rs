//! A task's bytes in and out, in one place that both executors (processes in `shoal-agent`,
//! components in `shoal-wasm-executor`) and the master can use without reaching into another
//! role's crate:
//!
//! - [`logs`] — [`TaskLogs`], the bounded capture of a task's stdout and stderr;
//! - [`artifacts`] — the components Wasm tasks run, by sha256: [`ArtifactStore`] on the master
//!   (kept on disk, served over the bus in chunks) and [`fetch`] on agents (checked against the
//!   digest, cached).
//!
//! What this crate must never do: hand out bytes of an artifact that do not match its digest, or
//! let a task's output grow without bound.

pub mod artifacts;
pub mod logs;

pub use artifacts::{ArtifactError, ArtifactInfo, ArtifactStore, digest_of, fetch};
pub use logs::{DEFAULT_LIMIT as DEFAULT_LOG_LIMIT, LogTail, TaskLogs};
