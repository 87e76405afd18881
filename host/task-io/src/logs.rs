//! Bounded capture of a task's stdout and stderr: the newest bytes are kept, older ones fall off
//! and are counted, and a write never fails or blocks (a chatty task must not stall on its logs).
//! The process executor appends what it reads from pipes; the Wasm executor wraps the same
//! buffers as WASI output streams.

use std::collections::VecDeque;
use std::sync::Arc;

use parking_lot::Mutex;

/// Default bytes kept per stream.
pub const DEFAULT_LIMIT: usize = 1 << 20;

/// The newest `limit` bytes of one stream.
#[derive(Debug, Default)]
struct Tail {
    bytes: VecDeque<u8>,
    /// Bytes written in total, kept or not.
    written: u64,
}

/// A task's captured output.
#[derive(Debug)]
pub struct TaskLogs {
    limit: usize,
    stdout: Mutex<Tail>,
    stderr: Mutex<Tail>,
}

/// A snapshot of one stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogTail {
    /// The newest bytes, at most the limit.
    pub bytes: Vec<u8>,
    /// Bytes that were written but fell off the front.
    pub dropped: u64,
}

impl TaskLogs {
    /// Logs that keep the newest `limit` bytes of each stream.
    pub fn new(limit: usize) -> Arc<TaskLogs> {
        Arc::new(TaskLogs { limit, stdout: Mutex::default(), stderr: Mutex::default() })
    }

    /// What the task wrote to stdout.
    pub fn stdout(&self) -> LogTail {
        snapshot(&self.stdout.lock())
    }

    /// What the task wrote to stderr.
    pub fn stderr(&self) -> LogTail {
        snapshot(&self.stderr.lock())
    }

    /// Append `data` to stderr (`stderr`) or stdout: what other executors (processes) capture.
    pub fn append(&self, stderr: bool, data: &[u8]) {
        let mut tail = if stderr { self.stderr.lock() } else { self.stdout.lock() };
        tail.written += data.len() as u64;
        let data = &data[data.len().saturating_sub(self.limit)..];
        let overflow = (tail.bytes.len() + data.len()).saturating_sub(self.limit);
        let keep_from = overflow.min(tail.bytes.len());
        tail.bytes.drain(..keep_from);
        tail.bytes.extend(data);
    }
}

fn snapshot(tail: &Tail) -> LogTail {
    LogTail { bytes: tail.bytes.iter().copied().collect(), dropped: tail.written - tail.bytes.len() as u64 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_newest_bytes_and_counts_the_rest() {
        let logs = TaskLogs::new(8);
        logs.append(false, b"hello ");
        logs.append(false, b"world");
        logs.append(true, b"0123456789abcdef");
        assert_eq!(logs.stdout(), LogTail { bytes: b"lo world".to_vec(), dropped: 3 });
        assert_eq!(logs.stderr(), LogTail { bytes: b"89abcdef".to_vec(), dropped: 8 });
    }
}
