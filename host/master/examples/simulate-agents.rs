//! Simulated agents for load tests of a running master: `N` agents register over NATS, then each
//! heartbeats at the interval the master asks for, for `SECONDS`; prints how many heartbeats were
//! answered and how many went unanswered.
//!
//! ```text
//! cargo run --release -p shoal-master --example simulate-agents -- nats://127.0.0.1:4222 10000 60
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use shoal_bus::{NatsBus, SharedBus, subject};
use shoal_protocol::{AgentRegistration, HeartbeatReply, RegisterReply, Resources};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let url = args.next().unwrap_or_else(|| "nats://127.0.0.1:4222".into());
    let agents: usize = args.next().map_or(Ok(10_000), |a| a.parse())?;
    let seconds: u64 = args.next().map_or(Ok(60), |a| a.parse())?;
    // The master's credentials (`shoal nats init`): one connection speaks for every simulated agent.
    let options = shoal_bus::NatsOptions { creds: args.next().map(Into::into), ..Default::default() };
    let bus: SharedBus = Arc::new(NatsBus::connect_with(&url, &options).await?);
    let answered = Arc::new(AtomicU64::new(0));
    let unanswered = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut interval = Duration::from_secs(1);
    for i in 0..agents {
        let reg = AgentRegistration {
            id: format!("sim-{i}"),
            hostname: format!("sim-host-{i}"),
            address: None,
            attributes: BTreeMap::from([("rack".to_owned(), format!("r{}", i % 40))]),
            resources: Resources::parse("cpus:16;mem:65536;disk:100000;ports:[31000-32000]")?,
            tasks: Vec::new(),
        };
        let reply = bus
            .request(&subject::agent_register(&reg.id), serde_json::to_vec(&reg)?.into(), Duration::from_secs(10))
            .await?;
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
    let mut tasks = Vec::new();
    for i in 0..agents {
        let bus = bus.clone();
        let (answered, unanswered) = (answered.clone(), unanswered.clone());
        tasks.push(tokio::spawn(async move {
            // Spread the agents over the interval, like real agents started at different times.
            tokio::time::sleep(interval.mul_f64(i as f64 / agents as f64)).await;
            let mut tick = tokio::time::interval(interval);
            let subject = subject::agent_heartbeat(&format!("sim-{i}"));
            while Instant::now() < deadline {
                tick.tick().await;
                match bus.request(&subject, bytes::Bytes::new(), Duration::from_secs(2)).await {
                    Ok(m) if serde_json::from_slice::<HeartbeatReply>(&m.payload).is_ok_and(|r| r.known) => {
                        answered.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {
                        unanswered.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    println!(
        "heartbeats answered: {}, unanswered or unknown: {}",
        answered.load(Ordering::Relaxed),
        unanswered.load(Ordering::Relaxed)
    );
    Ok(())
}
