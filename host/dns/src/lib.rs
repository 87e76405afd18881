//! Shoal's DNS interface: the service registry's passing instances as DNS records in the zone
//! `shoal.`, on UDP and TCP (`shoal dev --dns ADDR`, `shoal master --dns ADDR`), the way
//! Consul's `web.service.consul` and Mesos-DNS let software find services without a client
//! library.
//!
//! - `zone.rs` — the names (`<service>.service.shoal.`, tags, RFC 2782 SRV names, `addr`
//!   targets) and the records answering them, from a [`Snapshot`] of the registry;
//! - `server.rs` — one message in, one out ([`Responder::respond`]), and the UDP and TCP loops.
//!
//! Queries never lock the registry: a task follows the registry's changes and swaps a fresh
//! snapshot in (one `ArcSwap` load per query). hickory-proto reads and writes the wire format;
//! the loops are ours, so their bounds are too (see `server.rs`).
//!
//! What this crate must never do: answer a name of the zone with an instance that is not
//! passing, or answer a name outside `shoal.` (REFUSED: it is no resolver).

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use arc_swap::ArcSwap;
use shoal_discovery::Discovery;
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::broadcast::error::RecvError;

pub mod server;
pub mod zone;

pub use server::Responder;
pub use zone::{Snapshot, ZONE};

/// Default TTL of answers, in seconds.
pub const DEFAULT_TTL: u32 = 5;

/// Where and how the DNS interface answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsConfig {
    /// UDP and TCP address (port 0: any free port, the same for both).
    pub addr: SocketAddr,
    /// TTL of every record, and the negative-caching TTL of the zone's SOA.
    pub ttl: u32,
}

/// A running DNS interface; dropping it stops it.
pub struct DnsServer {
    /// The address it answers on (UDP and TCP).
    pub addr: SocketAddr,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Bind `config.addr` (UDP and TCP) and answer from `discovery`; `leads` says whether this
/// node's registry is the cluster's (a standby master answers SERVFAIL for the zone's names,
/// so that resolvers ask another server).
pub async fn serve(
    config: &DnsConfig,
    discovery: Arc<Discovery>,
    leads: Arc<dyn Fn() -> bool + Send + Sync>,
) -> anyhow::Result<DnsServer> {
    let udp = UdpSocket::bind(config.addr).await.with_context(|| format!("binding UDP {} for DNS", config.addr))?;
    let addr = udp.local_addr()?;
    let tcp = TcpListener::bind(addr).await.with_context(|| format!("binding TCP {addr} for DNS"))?;
    // Subscribed before the first snapshot: no change falls between the two.
    let changes = discovery.subscribe();
    let zone = Arc::new(ArcSwap::from_pointee(Snapshot::of(&discovery)));
    let responder = Responder { zone: zone.clone(), ttl: config.ttl, leads };
    let tasks = vec![
        tokio::spawn(follow(discovery, zone, changes)),
        tokio::spawn(server::udp_loop(udp, responder.clone())),
        tokio::spawn(server::tcp_loop(tcp, responder)),
    ];
    Ok(DnsServer { addr, tasks })
}

/// Swap a fresh snapshot in after every change (changes that came together make one).
async fn follow(
    discovery: Arc<Discovery>,
    zone: Arc<ArcSwap<Snapshot>>,
    mut changes: tokio::sync::broadcast::Receiver<shoal_discovery::Change>,
) {
    loop {
        match changes.recv().await {
            Ok(_) | Err(RecvError::Lagged(_)) => {}
            Err(RecvError::Closed) => return,
        }
        use tokio::sync::broadcast::error::TryRecvError;
        while matches!(changes.try_recv(), Ok(_) | Err(TryRecvError::Lagged(_))) {}
        zone.store(Arc::new(Snapshot::of(&discovery)));
    }
}
