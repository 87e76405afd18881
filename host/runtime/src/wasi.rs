//! Non-blocking WASI: the few WASI p2 functions a plugin can reach that wasmtime-wasi's *sync*
//! bindings run on Tokio, redefined so that no WASI call ever blocks the thread or touches Tokio.
//!
//! wasmtime-wasi's sync bindings implement the blocking functions of `wasi:io` (the stream drops,
//! `blocking-*`, `poll`, `pollable.block`/`ready`) and `udp-create-socket` by running the async
//! implementation through `Handle::block_on`, which panics on a thread that drives Tokio tasks.
//! That forced every plugin call off the async worker (`block_in_place`), a thread hand-off per
//! call that cost the gateway a third of its CPU. The plugins' WASI context is empty (see
//! [`HostState`]): stdout/stderr are sinks, stdin is closed, there are no sockets, no name lookups
//! and no preopened directories. Over such a context every operation can answer at once, so:
//!
//! - the `blocking-*` stream functions and the stream destructors run the same async
//!   implementation but poll it exactly once with a no-op waker: a sink or a closed stream is
//!   ready on that first poll;
//! - `wasi:io/poll` answers what is ready now; waiting for a pollable that is not ready (a
//!   `sleep`, a wait on a stream that is not ready) fails the call with a trap: a plugin runs on the
//!   host's threads and may not park them;
//! - `wasi:clocks/monotonic-clock` timers are plain deadlines compared with the clock (Tokio's
//!   timers would need a Tokio runtime with a time driver on the calling thread);
//! - `wasi:sockets/udp-create-socket` answers `access-denied` (TCP sockets and name lookups are
//!   already refused synchronously by the context).
//!
//! [`add_to_linker`] redefines these names over wasmtime-wasi's, under the names and versions
//! wasmtime-wasi's own bindings register (it uses their generated `add_to_linker`), with the same
//! resource types, so every other WASI function keeps working on the same streams and pollables.

use std::future::Future;
use std::pin::pin;
use std::time::{Duration, Instant};

use wasmtime::component::{HasData, Linker, Resource, ResourceTable};
use wasmtime_wasi::clocks::{WasiClocksCtxView, WasiClocksView};
use wasmtime_wasi::p2::bindings::clocks::monotonic_clock;
use wasmtime_wasi::p2::bindings::io::{poll as async_poll, streams as async_streams};
use wasmtime_wasi::p2::bindings::sockets::network::{self, ErrorCode};
use wasmtime_wasi::p2::bindings::sync::io::{poll, streams};
use wasmtime_wasi::p2::bindings::sync::sockets::{network::IpAddressFamily, udp_create_socket};
use wasmtime_wasi::p2::{
    DynInputStream, DynOutputStream, DynPollable, Pollable, SocketError, SocketResult, StreamError, StreamResult,
    UdpSocket,
};
use wasmtime_wasi::sockets::{WasiSocketsCtxView, WasiSocketsView};
use wasmtime_wasi::{WasiView, runtime::poll_noop};

use crate::error::CallError;
use crate::state::HostState;

/// Redefine, in a linker that already has wasmtime-wasi's sync p2 interfaces, every function
/// that would block or need Tokio (see the module docs).
pub(crate) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    let result = (|| {
        streams::add_to_linker::<HostState, NonBlockingIo>(linker, |s| Io(s.ctx().table))?;
        poll::add_to_linker::<HostState, NonBlockingIo>(linker, |s| Io(s.ctx().table))?;
        monotonic_clock::add_to_linker::<HostState, DeadlineClock>(linker, |s| Clock(s.clocks()))?;
        udp_create_socket::add_to_linker::<HostState, NoUdp>(linker, |s| Sockets(s.sockets()))?;
        Ok(())
    })();
    linker.allow_shadowing(false);
    result
}

/// The error of a call that tried to wait. It is a [`CallError`] so that the caller reports it as
/// it is, without the guest backtrace.
fn would_block(what: &str) -> wasmtime::Error {
    CallError::Trap(format!(
        "the plugin waited in {what} on something that is not ready (a sleep, a timer or a stream); \
         plugins run on the host's threads and may not block"
    ))
    .into()
}

/// Poll `future` once, with a waker that does nothing: its answer if it has one now, else the
/// plugin wanted to wait for something, which fails the call.
fn at_once<F: Future>(what: &str, future: F) -> wasmtime::Result<F::Output> {
    poll_noop(pin!(future)).ok_or_else(|| would_block(what))
}

/// [`at_once`] for a stream operation: a wait becomes a trap of the stream.
fn stream_at_once<T>(what: &str, future: impl Future<Output = StreamResult<T>>) -> StreamResult<T> {
    at_once(what, future).map_err(StreamError::Trap)?
}

struct NonBlockingIo;

impl HasData for NonBlockingIo {
    type Data<'a> = Io<'a>;
}

/// `wasi:io/streams` and `wasi:io/poll` over the WASI resource table.
struct Io<'a>(&'a mut ResourceTable);

impl streams::Host for Io<'_> {
    fn convert_stream_error(&mut self, err: StreamError) -> wasmtime::Result<streams::StreamError> {
        streams::Host::convert_stream_error(self.0, err)
    }
}

impl streams::HostOutputStream for Io<'_> {
    fn drop(&mut self, stream: Resource<DynOutputStream>) -> wasmtime::Result<()> {
        let mut stream = self.0.delete(stream)?;
        // A stream with background work still running cancels it when dropped; nothing to wait for.
        let _ = poll_noop(pin!(stream.cancel()));
        Ok(())
    }

    fn check_write(&mut self, stream: Resource<DynOutputStream>) -> StreamResult<u64> {
        streams::HostOutputStream::check_write(self.0, stream)
    }

    fn write(&mut self, stream: Resource<DynOutputStream>, bytes: Vec<u8>) -> StreamResult<()> {
        streams::HostOutputStream::write(self.0, stream, bytes)
    }

    fn blocking_write_and_flush(&mut self, stream: Resource<DynOutputStream>, bytes: Vec<u8>) -> StreamResult<()> {
        stream_at_once(
            "wasi:io/streams.blocking-write-and-flush",
            async_streams::HostOutputStream::blocking_write_and_flush(self.0, stream, bytes),
        )
    }

    fn blocking_write_zeroes_and_flush(&mut self, stream: Resource<DynOutputStream>, len: u64) -> StreamResult<()> {
        stream_at_once(
            "wasi:io/streams.blocking-write-zeroes-and-flush",
            async_streams::HostOutputStream::blocking_write_zeroes_and_flush(self.0, stream, len),
        )
    }

    fn subscribe(&mut self, stream: Resource<DynOutputStream>) -> wasmtime::Result<Resource<DynPollable>> {
        streams::HostOutputStream::subscribe(self.0, stream)
    }

    fn write_zeroes(&mut self, stream: Resource<DynOutputStream>, len: u64) -> StreamResult<()> {
        streams::HostOutputStream::write_zeroes(self.0, stream, len)
    }

    fn flush(&mut self, stream: Resource<DynOutputStream>) -> StreamResult<()> {
        streams::HostOutputStream::flush(self.0, stream)
    }

    fn blocking_flush(&mut self, stream: Resource<DynOutputStream>) -> StreamResult<()> {
        stream_at_once(
            "wasi:io/streams.blocking-flush",
            async_streams::HostOutputStream::blocking_flush(self.0, stream),
        )
    }

    fn splice(&mut self, dst: Resource<DynOutputStream>, src: Resource<DynInputStream>, len: u64) -> StreamResult<u64> {
        streams::HostOutputStream::splice(self.0, dst, src, len)
    }

    fn blocking_splice(
        &mut self,
        dst: Resource<DynOutputStream>,
        src: Resource<DynInputStream>,
        len: u64,
    ) -> StreamResult<u64> {
        stream_at_once(
            "wasi:io/streams.blocking-splice",
            async_streams::HostOutputStream::blocking_splice(self.0, dst, src, len),
        )
    }
}

impl streams::HostInputStream for Io<'_> {
    fn drop(&mut self, stream: Resource<DynInputStream>) -> wasmtime::Result<()> {
        let mut stream = self.0.delete(stream)?;
        let _ = poll_noop(pin!(stream.cancel()));
        Ok(())
    }

    fn read(&mut self, stream: Resource<DynInputStream>, len: u64) -> StreamResult<Vec<u8>> {
        streams::HostInputStream::read(self.0, stream, len)
    }

    fn blocking_read(&mut self, stream: Resource<DynInputStream>, len: u64) -> StreamResult<Vec<u8>> {
        stream_at_once(
            "wasi:io/streams.blocking-read",
            async_streams::HostInputStream::blocking_read(self.0, stream, len),
        )
    }

    fn skip(&mut self, stream: Resource<DynInputStream>, len: u64) -> StreamResult<u64> {
        streams::HostInputStream::skip(self.0, stream, len)
    }

    fn blocking_skip(&mut self, stream: Resource<DynInputStream>, len: u64) -> StreamResult<u64> {
        stream_at_once(
            "wasi:io/streams.blocking-skip",
            async_streams::HostInputStream::blocking_skip(self.0, stream, len),
        )
    }

    fn subscribe(&mut self, stream: Resource<DynInputStream>) -> wasmtime::Result<Resource<DynPollable>> {
        streams::HostInputStream::subscribe(self.0, stream)
    }
}

impl poll::Host for Io<'_> {
    fn poll(&mut self, pollables: Vec<Resource<DynPollable>>) -> wasmtime::Result<Vec<u32>> {
        at_once("wasi:io/poll.poll", async_poll::Host::poll(self.0, pollables))?
    }
}

impl poll::HostPollable for Io<'_> {
    fn ready(&mut self, pollable: Resource<DynPollable>) -> wasmtime::Result<bool> {
        // The async `ready` polls the pollable once itself and always answers on the first poll.
        at_once("wasi:io/poll.pollable.ready", async_poll::HostPollable::ready(self.0, pollable))?
    }

    fn block(&mut self, pollable: Resource<DynPollable>) -> wasmtime::Result<()> {
        at_once("wasi:io/poll.pollable.block", async_poll::HostPollable::block(self.0, pollable))?
    }

    fn drop(&mut self, pollable: Resource<DynPollable>) -> wasmtime::Result<()> {
        async_poll::HostPollable::drop(self.0, pollable)
    }
}

struct DeadlineClock;

impl HasData for DeadlineClock {
    type Data<'a> = Clock<'a>;
}

/// `wasi:clocks/monotonic-clock` with timers that are plain deadlines.
struct Clock<'a>(WasiClocksCtxView<'a>);

/// A monotonic-clock timer: ready once `Instant::now()` reaches it; `None` never is.
struct Deadline(Option<Instant>);

#[wasmtime_wasi::async_trait]
impl Pollable for Deadline {
    async fn ready(&mut self) {
        match self.0 {
            Some(at) if Instant::now() >= at => {}
            // Nothing will wake a waiter: the pollable is checked again on the next poll, and
            // waiting on it fails the call (see `at_once`).
            _ => std::future::pending().await,
        }
    }
}

impl Clock<'_> {
    fn subscribe(&mut self, after: Duration) -> wasmtime::Result<Resource<DynPollable>> {
        let deadline = self.0.table.push(Deadline(Instant::now().checked_add(after)))?;
        wasmtime_wasi::p2::subscribe(self.0.table, deadline)
    }
}

impl monotonic_clock::Host for Clock<'_> {
    fn now(&mut self) -> wasmtime::Result<monotonic_clock::Instant> {
        monotonic_clock::Host::now(&mut self.0)
    }

    fn resolution(&mut self) -> wasmtime::Result<monotonic_clock::Duration> {
        monotonic_clock::Host::resolution(&mut self.0)
    }

    fn subscribe_instant(&mut self, when: monotonic_clock::Instant) -> wasmtime::Result<Resource<DynPollable>> {
        let now = monotonic_clock::Host::now(&mut self.0)?;
        self.subscribe(Duration::from_nanos(when.saturating_sub(now)))
    }

    fn subscribe_duration(&mut self, duration: monotonic_clock::Duration) -> wasmtime::Result<Resource<DynPollable>> {
        self.subscribe(Duration::from_nanos(duration))
    }
}

struct NoUdp;

impl HasData for NoUdp {
    type Data<'a> = Sockets<'a>;
}

/// `wasi:sockets/udp-create-socket` without UDP.
struct Sockets<'a>(WasiSocketsCtxView<'a>);

impl udp_create_socket::Host for Sockets<'_> {
    fn create_udp_socket(&mut self, _family: IpAddressFamily) -> SocketResult<Resource<UdpSocket>> {
        Err(ErrorCode::AccessDenied.into())
    }
}

// The error conversion the generated `udp-create-socket` binding needs: wasmtime-wasi's own.
impl network::Host for Sockets<'_> {
    fn convert_error_code(&mut self, error: SocketError) -> wasmtime::Result<ErrorCode> {
        network::Host::convert_error_code(&mut self.0, error)
    }

    fn network_error_code(&mut self, err: Resource<network::Error>) -> wasmtime::Result<Option<ErrorCode>> {
        network::Host::network_error_code(&mut self.0, err)
    }
}

impl network::HostNetwork for Sockets<'_> {
    fn drop(&mut self, network: Resource<network::Network>) -> wasmtime::Result<()> {
        network::HostNetwork::drop(&mut self.0, network)
    }
}
