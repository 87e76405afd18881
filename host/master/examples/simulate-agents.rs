//! Simulated agents for load tests of a running master: `N` agents register over NATS, then each
//! heartbeats at the interval the master asks for, for `SECONDS`; prints how many heartbeats were
//! answered and how many went unanswered.
//!
//! Like a real agent (`shoal_agent::registration`), a simulated agent registers again, with the
//! same registration, when a heartbeat is answered `known: false` — a master that does not know
//! it: a new leader after a failover, or one that declared it lost. Each such re-attachment is
//! counted; a line `reattached: <total> agents: <distinct> last_ms: <unix ms>` is printed at
//! most once a second while their number grows, and a summary
//! `reattachments: <total> agents: <distinct> first_ms: <unix ms> last_ms: <unix ms>` at the end
//! (`bench/master-failover.sh` reads them).
//!
//! ```text
//! cargo run --release -p shoal-master --example simulate-agents -- nats://127.0.0.1:4222 10000 60 [CREDS]
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use shoal_bus::{SharedBus, subject};
use shoal_protocol::{AgentRegistration, HeartbeatReply, RegisterReply, Resources};

/// What every simulated agent adds to.
#[derive(Default)]
struct Counters {
    answered: AtomicU64,
    unanswered: AtomicU64,
    /// Registrations after the first, accepted.
    reattached: AtomicU64,
    /// Agents that re-attached at least once.
    agents_reattached: AtomicU64,
    /// Unix ms of the first and the last accepted re-registration (0: none yet).
    first_ms: AtomicU64,
    last_ms: AtomicU64,
}

impl Counters {
    fn reattach(&self, first_time: bool) {
        let now = unix_ms();
        self.reattached.fetch_add(1, Ordering::Relaxed);
        if first_time {
            self.agents_reattached.fetch_add(1, Ordering::Relaxed);
        }
        let _ = self.first_ms.compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed);
        self.last_ms.fetch_max(now, Ordering::Relaxed);
    }
}

fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

fn registration(i: usize) -> Result<AgentRegistration, Box<dyn std::error::Error>> {
    Ok(AgentRegistration {
        id: format!("sim-{i}"),
        hostname: format!("sim-host-{i}"),
        address: None,
        attributes: BTreeMap::from([("rack".to_owned(), format!("r{}", i % 40))]),
        resources: Resources::parse("cpus:16;mem:65536;disk:100000;ports:[31000-32000]")?,
        tasks: Vec::new(),
    })
}

/// One registration attempt: `Ok(Some(heartbeat interval))` when accepted, `Ok(None)` when no
/// master answered in time, an error when refused.
async fn register(bus: &SharedBus, subject: &str, payload: &Bytes) -> Result<Option<Duration>, String> {
    let Ok(reply) = bus.request(subject, payload.clone(), Duration::from_secs(2)).await else { return Ok(None) };
    let reply: RegisterReply = serde_json::from_slice(&reply.payload).map_err(|e| e.to_string())?;
    if !reply.accepted {
        return Err(format!("registration refused: {:?}", reply.error));
    }
    Ok(Some(Duration::from_millis(reply.heartbeat_ms.max(10))))
}

/// Heartbeat until `deadline`; register again (as the real agent does: every 500 ms until a
/// master accepts) whenever the answer is `known: false`.
async fn heartbeat(
    bus: SharedBus,
    i: usize,
    agents: usize,
    mut interval: Duration,
    deadline: Instant,
    counters: Arc<Counters>,
) -> Result<(), String> {
    let reg = registration(i).map_err(|e| e.to_string())?;
    let register_subject = subject::agent_register(&reg.id);
    let heartbeat_subject = subject::agent_heartbeat(&reg.id);
    let payload: Bytes = serde_json::to_vec(&reg).map_err(|e| e.to_string())?.into();
    // Spread the agents over the interval, like real agents started at different times.
    tokio::time::sleep(interval.mul_f64(i as f64 / agents as f64)).await;
    let mut reattached = false;
    'agent: while Instant::now() < deadline {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if Instant::now() >= deadline {
                break 'agent;
            }
            match bus.request(&heartbeat_subject, Bytes::new(), Duration::from_secs(2)).await {
                Ok(m) => match serde_json::from_slice::<HeartbeatReply>(&m.payload) {
                    Ok(HeartbeatReply { known: true, .. }) => {
                        counters.answered.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {
                        counters.unanswered.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                },
                Err(_) => {
                    counters.unanswered.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        // The master does not know this agent: register again until one accepts.
        while Instant::now() < deadline {
            match register(&bus, &register_subject, &payload).await? {
                Some(every) => {
                    interval = every;
                    counters.reattach(!reattached);
                    reattached = true;
                    continue 'agent;
                }
                None => tokio::time::sleep(Duration::from_millis(500)).await,
            }
        }
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let url = args.next().unwrap_or_else(|| "nats://127.0.0.1:4222".into());
    let agents: usize = args.next().map_or(Ok(10_000), |a| a.parse())?;
    let seconds: u64 = args.next().map_or(Ok(60), |a| a.parse())?;
    // The master's credentials (`shoal nats init`): one connection speaks for every simulated agent.
    let options = shoal_bus::NatsOptions { creds: args.next().map(Into::into), ..Default::default() };
    let bus: SharedBus = Arc::new(shoal_bus::NatsBus::connect_with(&url, &options).await?);
    let counters = Arc::new(Counters::default());
    let started = Instant::now();
    let mut interval = Duration::from_secs(1);
    for i in 0..agents {
        let reg = registration(i)?;
        let payload: Bytes = serde_json::to_vec(&reg)?.into();
        let reply = bus.request(&subject::agent_register(&reg.id), payload, Duration::from_secs(10)).await?;
        let reply: RegisterReply = serde_json::from_slice(&reply.payload)?;
        if !reply.accepted {
            return Err(format!("registration refused: {:?}", reply.error).into());
        }
        interval = Duration::from_millis(reply.heartbeat_ms);
    }
    println!(
        "{agents} agents registered in {:.1?}; heartbeating every {interval:?} for {seconds} s",
        started.elapsed()
    );
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let done = Arc::new(AtomicBool::new(false));
    let reporter = tokio::spawn({
        let (counters, done) = (counters.clone(), done.clone());
        async move {
            let mut shown = 0;
            while !done.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let now = counters.reattached.load(Ordering::Relaxed);
                if now != shown {
                    shown = now;
                    println!(
                        "reattached: {now} agents: {} last_ms: {}",
                        counters.agents_reattached.load(Ordering::Relaxed),
                        counters.last_ms.load(Ordering::Relaxed)
                    );
                }
            }
        }
    });
    let mut tasks = Vec::new();
    for i in 0..agents {
        tasks.push(tokio::spawn(heartbeat(bus.clone(), i, agents, interval, deadline, counters.clone())));
    }
    for t in tasks {
        t.await??;
    }
    done.store(true, Ordering::Relaxed);
    reporter.await?;
    println!(
        "heartbeats answered: {}, unanswered or unknown: {}",
        counters.answered.load(Ordering::Relaxed),
        counters.unanswered.load(Ordering::Relaxed)
    );
    println!(
        "reattachments: {} agents: {} first_ms: {} last_ms: {}",
        counters.reattached.load(Ordering::Relaxed),
        counters.agents_reattached.load(Ordering::Relaxed),
        counters.first_ms.load(Ordering::Relaxed),
        counters.last_ms.load(Ordering::Relaxed)
    );
    Ok(())
}
