//! Health checks, run next to what they check: by agents for their tasks (the `shoal.health`
//! label), and by the node for the instances registered with a check.
//!
//! A [`HealthChecker`] runs any number of checks, each on its own schedule: the first run is
//! spread over the first interval (so ten thousand checks added at once do not fire together),
//! then one run every `interval_ms`, each bounded by `timeout_ms` (never longer than the
//! interval, so runs of one check never overlap). Four kinds ([`CheckKind`]): `http` (2xx–3xx
//! passes), `tcp`, `command` (`sh -c`, exit 0 passes) and `wasm` (a health-check plugin, run by
//! whatever implements [`WasmCheck`]).
//!
//! Each check's verdict follows Marathon's rules:
//!
//! * `unknown` until the first verdict; failures during the grace period (`grace_ms` from the
//!   start) do not count as long as the target never passed;
//! * one pass makes it `healthy` and resets the failure count;
//! * one counted failure makes it `unhealthy` (traffic moves away at once), and
//!   `max_failures` consecutive ones make it *given up*: the owner kills the task and its
//!   framework replaces it.
//!
//! Every change of verdict (and the moment a check gives up) is handed to the checker's sink as a
//! [`HealthUpdate`]; [`HealthChecker::state`] reads the current one. The checker counts runs,
//! ticks it missed (a run that could not start within one interval of its time) and how late runs
//! started ([`Stats`]).

mod probe;
mod spec;

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use parking_lot::Mutex;
use serde::Serialize;
use tokio::task::JoinHandle;
use tokio::time::Instant;

pub use probe::{Outcome, WasmCheck, WasmCheckError};
pub use spec::{
    CheckKind, CheckSpec, DEFAULT_GRACE_MS, DEFAULT_INTERVAL_MS, DEFAULT_MAX_FAILURES, DEFAULT_TIMEOUT_MS,
    MAX_DURATION_MS, MIN_INTERVAL_MS, SpecError,
};

/// Most bytes of a check's output kept (a command's stdout and stderr, an HTTP body, a plugin's
/// message): what an operator needs to see why a check fails, and no more. Output is shown to
/// people (an instance's `health_output`, a task's message, health events), so it must not grow
/// without bound, nor carry a whole file out of the checking machine.
pub const MAX_OUTPUT: usize = 4096;

/// What follows output cut at [`MAX_OUTPUT`] bytes.
pub const TRUNCATED: &str = " [… truncated]";

/// `text` cut to its first [`MAX_OUTPUT`] bytes (at a character boundary) followed by
/// [`TRUNCATED`] when it is longer; unchanged otherwise.
pub fn bound_output(text: &str) -> String {
    if text.len() <= MAX_OUTPUT {
        return text.to_owned();
    }
    let cut = (0..=MAX_OUTPUT).rev().find(|&i| text.is_char_boundary(i)).unwrap_or(0);
    format!("{}{TRUNCATED}", &text[..cut])
}

/// What a check checks: an address and its ports.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Target {
    /// IP address or host name.
    pub address: String,
    /// Ports; the first is the default port of `http` and `tcp` checks.
    pub ports: Vec<u16>,
}

/// A check's verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// No verdict yet (not run, or failing within the grace period).
    Unknown,
    /// The last run passed.
    Healthy,
    /// The last counted run failed.
    Unhealthy,
}

/// A check's state, as [`HealthChecker::state`] reads it and [`HealthUpdate`] carries it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CheckState {
    /// Verdict.
    pub status: Status,
    /// Counted failures in a row.
    pub consecutive_failures: u32,
    /// `max_failures` was reached: the owner should kill the task.
    pub given_up: bool,
    /// What the last run saw.
    pub message: String,
    /// When the last run ended (milliseconds since the Unix epoch; 0 before the first).
    pub checked_at_ms: u64,
    /// Runs so far.
    pub runs: u64,
}

/// A change of a check's verdict (or the moment it gave up).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HealthUpdate {
    /// The id the check was started with.
    pub id: String,
    /// `http`, `tcp`, `command` or `wasm`.
    pub kind: &'static str,
    /// The state after the run.
    #[serde(flatten)]
    pub state: CheckState,
}

/// Where updates go.
pub type Sink = Arc<dyn Fn(HealthUpdate) + Send + Sync>;

/// Counters of a checker.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Stats {
    /// Checks running.
    pub checks: usize,
    /// Runs completed.
    pub runs: u64,
    /// Runs that failed.
    pub failures: u64,
    /// Ticks skipped because the run could not start within one interval of its time.
    pub missed: u64,
    /// Median delay between a run's scheduled and actual start, microseconds (bucket bound).
    pub late_p50_us: u64,
    /// 99th percentile of that delay, microseconds (bucket bound).
    pub late_p99_us: u64,
    /// Largest delay seen, microseconds.
    pub late_max_us: u64,
}

/// Lateness buckets: bucket `i` counts delays below `2^i` µs (the last one everything above).
const BUCKETS: usize = 32;

#[derive(Default)]
struct Counters {
    runs: AtomicU64,
    failures: AtomicU64,
    missed: AtomicU64,
    late_max_us: AtomicU64,
    late: [AtomicU64; BUCKETS],
}

impl Counters {
    fn late(&self, delay: Duration) {
        let us = u64::try_from(delay.as_micros()).unwrap_or(u64::MAX);
        let bucket = (64 - us.leading_zeros() as usize).min(BUCKETS - 1);
        self.late[bucket].fetch_add(1, Ordering::Relaxed);
        self.late_max_us.fetch_max(us, Ordering::Relaxed);
    }

    fn percentile(&self, p: f64) -> u64 {
        let counts: Vec<u64> = self.late.iter().map(|c| c.load(Ordering::Relaxed)).collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return 0;
        }
        let rank = ((total as f64) * p).ceil() as u64;
        let mut seen = 0;
        for (i, c) in counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return 1u64 << i;
            }
        }
        u64::MAX
    }
}

struct Running {
    task: JoinHandle<()>,
    state: Arc<Mutex<CheckState>>,
}

struct Inner {
    probes: probe::Probes,
    sink: Sink,
    counters: Counters,
    checks: Mutex<HashMap<String, Running>>,
}

/// Runs health checks. Cheap to clone; every clone runs the same checks. Dropping the last clone
/// does not stop them: call [`HealthChecker::stop_all`].
#[derive(Clone)]
pub struct HealthChecker {
    inner: Arc<Inner>,
}

impl HealthChecker {
    /// A checker handing every update to `sink`; `wasm` runs `wasm` checks (without it they fail
    /// with a message saying so).
    pub fn new(sink: Sink, wasm: Option<Arc<dyn WasmCheck>>) -> Self {
        HealthChecker {
            inner: Arc::new(Inner {
                probes: probe::Probes::new(wasm),
                sink,
                counters: Counters::default(),
                checks: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Start checking `target` with `spec` under `id`, replacing a check of the same id. The
    /// grace period starts now. Must be called within a Tokio runtime.
    pub fn start(&self, id: impl Into<String>, target: Target, spec: CheckSpec) -> Result<(), SpecError> {
        spec.validate()?;
        let id = id.into();
        let state = Arc::new(Mutex::new(CheckState {
            status: Status::Unknown,
            consecutive_failures: 0,
            given_up: false,
            message: "not checked yet".into(),
            checked_at_ms: 0,
            runs: 0,
        }));
        let task = tokio::spawn(run(self.inner.clone(), id.clone(), target, spec, state.clone()));
        if let Some(old) = self.inner.checks.lock().insert(id, Running { task, state }) {
            old.task.abort();
        }
        Ok(())
    }

    /// Stop the check `id`; false if there was none.
    pub fn stop(&self, id: &str) -> bool {
        match self.inner.checks.lock().remove(id) {
            Some(running) => {
                running.task.abort();
                true
            }
            None => false,
        }
    }

    /// Stop every check.
    pub fn stop_all(&self) {
        for (_, running) in self.inner.checks.lock().drain() {
            running.task.abort();
        }
    }

    /// The current state of the check `id`.
    pub fn state(&self, id: &str) -> Option<CheckState> {
        self.inner.checks.lock().get(id).map(|r| r.state.lock().clone())
    }

    /// Ids of the running checks.
    pub fn ids(&self) -> Vec<String> {
        self.inner.checks.lock().keys().cloned().collect()
    }

    /// Counters since the checker was made.
    pub fn stats(&self) -> Stats {
        let c = &self.inner.counters;
        Stats {
            checks: self.inner.checks.lock().len(),
            runs: c.runs.load(Ordering::Relaxed),
            failures: c.failures.load(Ordering::Relaxed),
            missed: c.missed.load(Ordering::Relaxed),
            late_p50_us: c.percentile(0.50),
            late_p99_us: c.percentile(0.99),
            late_max_us: c.late_max_us.load(Ordering::Relaxed),
        }
    }

    /// Run `spec` once against `target`, now, outside any schedule (`shoal` uses it to try a
    /// check before declaring it).
    pub async fn check_once(&self, target: &Target, spec: &CheckSpec) -> Result<Outcome, SpecError> {
        spec.validate()?;
        Ok(self.inner.probes.run("check-once", target, spec).await)
    }
}

/// Where in its interval a check first runs: spread by a hash of its id.
fn first_offset(id: &str, interval: Duration) -> Duration {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    id.hash(&mut h);
    Duration::from_nanos(h.finish() % (interval.as_nanos() as u64).max(1))
}

async fn run(inner: Arc<Inner>, id: String, target: Target, spec: CheckSpec, state: Arc<Mutex<CheckState>>) {
    let started = Instant::now();
    let interval = spec.interval();
    let mut next = started + first_offset(&id, interval);
    loop {
        tokio::time::sleep_until(next).await;
        inner.counters.late(Instant::now().saturating_duration_since(next));
        let outcome = inner.probes.run(&id, &target, &spec).await;
        inner.counters.runs.fetch_add(1, Ordering::Relaxed);
        if !outcome.passed {
            inner.counters.failures.fetch_add(1, Ordering::Relaxed);
        }
        let in_grace = started.elapsed() < spec.grace();
        let update = {
            let mut s = state.lock();
            apply(&mut s, &spec, outcome, in_grace).then(|| s.clone())
        };
        if let Some(state) = update {
            tracing::debug!(check = %id, status = ?state.status, message = %state.message, "health changed");
            (inner.sink)(HealthUpdate { id: id.clone(), kind: spec.kind_name(), state });
        }
        next += interval;
        let now = Instant::now();
        if now > next + interval {
            // More than a whole interval behind: skip the ticks that can no longer run on time.
            let behind = now.duration_since(next).as_nanos() / interval.as_nanos();
            inner.counters.missed.fetch_add(behind as u64, Ordering::Relaxed);
            next += interval * behind as u32;
        }
    }
}

/// Fold one run into the state; true if the verdict changed or the check just gave up.
fn apply(s: &mut CheckState, spec: &CheckSpec, outcome: Outcome, in_grace: bool) -> bool {
    let before = (s.status, s.given_up);
    s.runs += 1;
    s.checked_at_ms = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    s.message = outcome.message;
    if outcome.passed {
        s.status = Status::Healthy;
        s.consecutive_failures = 0;
        s.given_up = false;
    } else if in_grace && s.status == Status::Unknown {
        // Still starting: not counted.
    } else {
        s.status = Status::Unhealthy;
        s.consecutive_failures += 1;
        if s.consecutive_failures >= spec.max_failures {
            s.given_up = true;
        }
    }
    (s.status, s.given_up) != before
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> CheckState {
        CheckState {
            status: Status::Unknown,
            consecutive_failures: 0,
            given_up: false,
            message: String::new(),
            checked_at_ms: 0,
            runs: 0,
        }
    }

    fn fail() -> Outcome {
        Outcome { passed: false, message: "refused".into() }
    }
    fn pass() -> Outcome {
        Outcome { passed: true, message: "ok".into() }
    }

    #[test]
    fn grace_then_failures_then_give_up() {
        let spec = CheckSpec { max_failures: 2, ..CheckSpec::new(CheckKind::Tcp { port: None }) };
        let mut s = state();
        // In grace and never passed: not counted, no update.
        assert!(!apply(&mut s, &spec, fail(), true));
        assert_eq!((s.status, s.consecutive_failures), (Status::Unknown, 0));
        // After grace: unhealthy at the first failure, given up at max_failures.
        assert!(apply(&mut s, &spec, fail(), false));
        assert_eq!((s.status, s.consecutive_failures, s.given_up), (Status::Unhealthy, 1, false));
        assert!(apply(&mut s, &spec, fail(), false));
        assert!(s.given_up);
        assert!(!apply(&mut s, &spec, fail(), false), "no repeated update while still failing");
        assert!(apply(&mut s, &spec, pass(), false));
        assert_eq!((s.status, s.consecutive_failures, s.given_up), (Status::Healthy, 0, false));
    }

    #[test]
    fn a_pass_ends_the_grace_period() {
        let spec = CheckSpec::new(CheckKind::Tcp { port: None });
        let mut s = state();
        assert!(apply(&mut s, &spec, pass(), true));
        assert!(apply(&mut s, &spec, fail(), true), "counted although within the grace period");
        assert_eq!((s.status, s.consecutive_failures), (Status::Unhealthy, 1));
    }

    #[test]
    fn first_runs_are_spread_over_the_interval() {
        let interval = Duration::from_secs(1);
        let offsets: Vec<Duration> = (0..1000).map(|i| first_offset(&format!("task-{i}"), interval)).collect();
        assert!(offsets.iter().all(|o| *o < interval));
        let first_half = offsets.iter().filter(|o| **o < interval / 2).count();
        assert!((400..600).contains(&first_half), "{first_half} of 1000 in the first half");
    }
}
