//! `--dns ADDR` and `--dns-ttl-s` of `shoal dev` and `shoal master`: the DNS interface on the
//! service registry (`shoal_dns`), off unless asked for.

use std::net::SocketAddr;

/// The DNS interface's flags.
#[derive(clap::Args, Debug, Clone)]
pub(crate) struct DnsArgs {
    /// Answer DNS queries for the zone `shoal.` on this address, UDP and TCP (e.g.
    /// 127.0.0.1:8600): `<service>.service.shoal` A/AAAA/SRV of the passing instances. Off when
    /// not given.
    #[arg(long, value_name = "ADDR")]
    dns: Option<SocketAddr>,
    /// TTL of the DNS answers, in seconds (also the negative-caching TTL of the zone's SOA).
    #[arg(long, default_value_t = shoal_dns::DEFAULT_TTL, value_name = "SECONDS")]
    dns_ttl_s: u32,
}

impl DnsArgs {
    /// The node's DNS configuration, `None` without `--dns`.
    pub(crate) fn config(&self) -> Option<shoal_dns::DnsConfig> {
        self.dns.map(|addr| shoal_dns::DnsConfig { addr, ttl: self.dns_ttl_s })
    }
}
