//! Load client of the DNS interface (issue 25's benchmark; dnsperf is not packaged here), and a
//! server to point it at.
//!
//! - `dns_load serve ADDR INSTANCES`: the DNS interface alone on a one-thread runtime, over a
//!   registry of INSTANCES passing instances of `web` (pin it with `taskset -c 0`);
//! - `dns_load query ADDR NAME TYPE SECONDS INFLIGHT`: one thread keeping INFLIGHT queries
//!   outstanding over UDP for SECONDS, then queries/s and latency percentiles. A query lost for
//!   200 ms is sent again (and counted as lost);
//! - `dns_load respond NAME TYPE COUNT`: no sockets, COUNT calls of `Responder::respond` over a
//!   registry of 3 instances: the CPU time of one answer.

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, Query};
use hickory_proto::rr::{Name, RecordType};
use shoal_discovery::{Discovery, Registration};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["serve", addr, instances] => serve(addr.parse()?, instances.parse()?),
        ["query", addr, name, kind, seconds, inflight] => {
            query(addr.parse()?, name, kind.parse()?, Duration::from_secs(seconds.parse()?), inflight.parse()?)
        }
        ["respond", name, kind, count] => respond(name, kind.parse()?, count.parse()?),
        _ => anyhow::bail!(
            "usage: dns_load serve ADDR INSTANCES | query ADDR NAME TYPE SECONDS INFLIGHT | respond NAME TYPE COUNT"
        ),
    }
}

fn registry(instances: usize) -> anyhow::Result<Arc<Discovery>> {
    let discovery = Arc::new(Discovery::default());
    for i in 0..instances {
        let registration: Registration = serde_json::from_value(
            serde_json::json!({"address": format!("10.0.{}.{}:8080", i / 250, i % 250 + 1), "labels": {"zone": "eu"}}),
        )?;
        discovery.register("web", &format!("web-{i}"), registration)?;
    }
    Ok(discovery)
}

fn respond(name: &str, kind: RecordType, count: u32) -> anyhow::Result<()> {
    let zone = Arc::new(arc_swap::ArcSwap::from_pointee(shoal_dns::Snapshot::of(&*registry(3)?)));
    let responder = shoal_dns::Responder { zone, ttl: shoal_dns::DEFAULT_TTL, leads: Arc::new(|| true) };
    let mut message = Message::query();
    message.add_query(Query::query(Name::from_ascii(name)?, kind));
    let mut packet = message.to_vec()?;
    let start = Instant::now();
    let mut bytes = 0;
    for i in 0..count {
        packet[..2].copy_from_slice(&(i as u16).to_be_bytes());
        bytes += responder.respond(&packet, false).map_or(0, |r| r.len());
    }
    let per = start.elapsed() / count;
    println!("{count} answers ({bytes} bytes): {per:?} each, {:.0}/s", 1.0 / per.as_secs_f64());
    Ok(())
}

fn serve(addr: SocketAddr, instances: usize) -> anyhow::Result<()> {
    let discovery = registry(instances)?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let config = shoal_dns::DnsConfig { addr, ttl: shoal_dns::DEFAULT_TTL };
        let server = shoal_dns::serve(&config, discovery, Arc::new(|| true)).await?;
        println!("answering on {} (one thread)", server.addr);
        std::future::pending::<()>().await;
        anyhow::Ok(())
    })
}

fn query(addr: SocketAddr, name: &str, kind: RecordType, seconds: Duration, inflight: usize) -> anyhow::Result<()> {
    let mut message = Message::query();
    message.metadata.recursion_desired = true;
    message.add_query(Query::query(Name::from_ascii(name)?, kind));
    let template = message.to_vec()?;
    let socket = UdpSocket::bind("127.0.0.1:0")?;
    socket.connect(addr)?;
    socket.set_read_timeout(Some(Duration::from_millis(200)))?;
    let mut sent_at: Vec<Option<Instant>> = vec![None; 65536];
    let mut packet = template.clone();
    let mut next_id: u16 = 0;
    let mut send = |sent_at: &mut Vec<Option<Instant>>, packet: &mut Vec<u8>| -> std::io::Result<()> {
        next_id = next_id.wrapping_add(1);
        packet[..2].copy_from_slice(&next_id.to_be_bytes());
        sent_at[usize::from(next_id)] = Some(Instant::now());
        socket.send(packet).map(|_| ())
    };
    for _ in 0..inflight {
        send(&mut sent_at, &mut packet)?;
    }
    let (start, mut buf) = (Instant::now(), [0u8; 4096]);
    let (mut answered, mut errors, mut lost, mut latencies) = (0u64, 0u64, 0u64, Vec::new());
    while start.elapsed() < seconds {
        match socket.recv(&mut buf) {
            Ok(n) if n >= 12 => {
                let id = usize::from(u16::from_be_bytes([buf[0], buf[1]]));
                let Some(at) = sent_at[id].take() else { continue };
                latencies.push(at.elapsed().as_micros() as u32);
                let ancount = u16::from_be_bytes([buf[6], buf[7]]);
                if buf[3] & 0x0f != 0 || ancount == 0 {
                    errors += 1;
                }
                answered += 1;
                send(&mut sent_at, &mut packet)?;
            }
            Ok(_) => {}
            Err(_) => {
                // Nothing for 200 ms: whatever is outstanding was lost; start the window again.
                lost += sent_at.iter().filter(|s| s.is_some()).count() as u64;
                sent_at.iter_mut().for_each(|s| *s = None);
                for _ in 0..inflight {
                    send(&mut sent_at, &mut packet)?;
                }
            }
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    latencies.sort_unstable();
    let pct = |p: f64| latencies.get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)));
    println!(
        "{answered} answers in {elapsed:.1} s: {:.0} queries/s; {errors} errors, {lost} lost; latency p50 {:?} µs, p99 {:?} µs, max {:?} µs",
        answered as f64 / elapsed,
        pct(0.50).unwrap_or(&0),
        pct(0.99).unwrap_or(&0),
        latencies.last().unwrap_or(&0),
    );
    Ok(())
}
