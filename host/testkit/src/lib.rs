//! Test helpers shared by every Shoal crate's tests (a dev-dependency only, never shipped).
//!
//! - [`NatsServer`]: a real `nats-server` (JetStream on) on a free loopback port, killed on drop;
//! - [`free_port`]: a loopback TCP port nobody is listening on right now;
//! - [`eventually`] (async, on Tokio's clock, so it works under paused time) and
//!   [`eventually_sync`] (for plain `#[test]`s and threads): poll a condition with bounded
//!   patience instead of sleeping;
//! - [`init_tracing`]: a test log subscriber honouring `RUST_LOG`, so a failing test can be re-run
//!   loud.
//!
//! Helpers fail with a message that says what to do about it (install the server, raise the
//! patience), because a test that cannot start its fixture should not look like a product bug.

mod nats;

use std::future::Future;
use std::net::{Ipv4Addr, TcpListener};
use std::time::Duration;

pub use nats::{NATS_SERVER_ENV, NatsCluster, NatsServer};

/// A TCP port on 127.0.0.1 that was free a moment ago.
///
/// The port is released before returning, so another process may grab it before the caller binds;
/// [`NatsServer`] copes with that by retrying, other callers should prefer binding `127.0.0.1:0`.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .expect("cannot bind a loopback port: is the loopback interface up?");
    listener.local_addr().expect("a bound listener has a local address").port()
}

/// `n` distinct TCP ports on 127.0.0.1 that were free a moment ago: all are held at once while
/// they are picked, so none comes twice (one at a time, the kernel may hand a just-released port
/// out again — seen: a cluster's route port equal to its client port). Released on return, as
/// with [`free_port`].
pub fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| {
            TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
                .expect("cannot bind a loopback port: is the loopback interface up?")
        })
        .collect();
    listeners.iter().map(|l| l.local_addr().expect("a bound listener has a local address").port()).collect()
}

/// How often [`eventually`] polls: short enough not to slow tests down, long enough not to spin.
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// Polls `f` every 20 ms until it returns `Some`, and returns that value.
///
/// Panics with `what` once `patience` has passed without success (the last poll happens at or after
/// the deadline, so a condition that becomes true just in time is not missed). Uses tokio's clock,
/// so it also works in tests with paused time.
pub async fn eventually<F, Fut, T>(what: &str, patience: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + patience;
    loop {
        if let Some(value) = f().await {
            return value;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("gave up after {patience:?} waiting for {what}");
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// [`eventually`] for code that is not async: polls `f` every 20 ms on this thread until it
/// returns `Some`, and returns that value; panics with `what` once `patience` has passed.
pub fn eventually_sync<T>(what: &str, patience: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + patience;
    loop {
        if let Some(value) = f() {
            return value;
        }
        if std::time::Instant::now() >= deadline {
            panic!("gave up after {patience:?} waiting for {what}");
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

/// Installs a `tracing` subscriber that writes through the test harness (captured unless the test
/// fails or `--nocapture` is given). Filter with `RUST_LOG` (default `warn`). Safe to call from
/// every test: only the first call installs anything.
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    // Fails only when a global subscriber is already set, which is exactly the idempotence we want.
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_test_writer().try_init();
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    #[test]
    fn free_ports_are_distinct() {
        let ports = free_ports(64);
        let distinct: std::collections::BTreeSet<u16> = ports.iter().copied().collect();
        assert_eq!(distinct.len(), 64, "{ports:?}");
    }

    #[test]
    fn free_ports_are_bindable() {
        let port = free_port();
        assert_ne!(port, 0);
        TcpListener::bind((Ipv4Addr::LOCALHOST, port)).expect("the port is free");
    }

    #[tokio::test]
    async fn eventually_returns_the_first_success() {
        let calls = Arc::new(AtomicU32::new(0));
        let value = eventually("the third call", Duration::from_secs(5), || {
            let calls = calls.clone();
            async move {
                let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
                (n >= 3).then_some(n * 10)
            }
        })
        .await;
        assert_eq!(value, 30);
    }

    #[test]
    fn eventually_sync_returns_the_first_success_and_gives_up_after_its_patience() {
        let mut calls = 0;
        let value = eventually_sync("the second call", Duration::from_secs(5), || {
            calls += 1;
            (calls >= 2).then_some(calls)
        });
        assert_eq!(value, 2);
        let panic = std::panic::catch_unwind(|| eventually_sync("never", Duration::from_millis(50), || None::<()>))
            .expect_err("eventually_sync should panic");
        let message = panic.downcast_ref::<String>().expect("a formatted panic message");
        assert!(message.contains("waiting for never"), "{message}");
    }

    #[tokio::test(start_paused = true)]
    async fn eventually_gives_up_after_its_patience() {
        let outcome = tokio::spawn(eventually("never", Duration::from_secs(1), || async { None::<()> })).await;
        let panic = outcome.expect_err("eventually should panic").into_panic();
        let message = panic.downcast_ref::<String>().expect("a formatted panic message");
        assert!(message.contains("waiting for never"), "{message}");
    }

    #[test]
    fn init_tracing_is_idempotent() {
        init_tracing();
        init_tracing();
        tracing_subscriber::fmt::try_init().expect_err("a subscriber is already installed");
    }
}
