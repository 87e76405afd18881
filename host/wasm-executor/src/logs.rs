//! A task's [`TaskLogs`] as WASI sees them: each stream a sink that appends to the bounded
//! buffer and never fails or blocks.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use shoal_task_io::TaskLogs;
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};

/// The WASI stdout of a task.
pub(crate) fn stdout_sink(logs: &Arc<TaskLogs>) -> Sink {
    Sink { logs: logs.clone(), stderr: false }
}

/// The WASI stderr of a task.
pub(crate) fn stderr_sink(logs: &Arc<TaskLogs>) -> Sink {
    Sink { logs: logs.clone(), stderr: true }
}

/// One stream of a task, as WASI sees it.
pub(crate) struct Sink {
    logs: Arc<TaskLogs>,
    stderr: bool,
}

impl IsTerminal for Sink {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for Sink {
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(Sink { logs: self.logs.clone(), stderr: self.stderr })
    }
}

impl AsyncWrite for Sink {
    fn poll_write(self: Pin<&mut Self>, _cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.logs.append(self.stderr, buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
