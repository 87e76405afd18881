//! The zone `shoal.`: a snapshot of the service registry's healthy instances, the names a query
//! may ask for, and the records that answer it. Pure: no sockets, so unit-testable.
//!
//! Names (Consul's convention, case-insensitive):
//! - `<service>.service.shoal.`: `A`/`AAAA` of the passing instances whose host is an IP
//!   address; `SRV` of every passing instance (port of its address, weight, target);
//! - `<tag>.<service>.service.shoal.`: the same, only instances carrying the tag;
//! - `_<service>._tcp.service.shoal.` (RFC 2782): the same as `<service>.service.shoal.`, and
//!   `_<service>._<tag>.service.shoal.` the tagged form;
//! - `<hex>.addr.shoal.`: the address an SRV target names (8 hex digits for IPv4, 32 for IPv6).
//!
//! **Tags from labels.** An instance's label `key=value` is the tag `key-value` (`key` alone
//! when the value is empty), lower-cased, every character other than `a-z`, `0-9` and `-`
//! turned into `-`; a tag longer than a DNS label (63 bytes) is not offered. So `version=2`
//! answers `version-2.web.service.shoal.` and `zone=eu-1` `zone-eu-1.web.service.shoal.`.
//!
//! **Instances registered by host name** (`db.internal:5432`) are in `SRV` answers with their
//! host name as the target (the client's resolver resolves it: a name outside `shoal.` is not
//! ours to answer); `A`/`AAAA` answers carry only instances whose host is an IP address, since a
//! CNAME cannot stand beside other records of a name.
//!
//! A name under `shoal.` that names nothing is NXDOMAIN; a known service without a passing
//! instance, or a type it has none of, is an empty answer (NODATA); both carry the zone's SOA in
//! the authority section, its minimum (the negative-caching TTL) being the answers' TTL.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::rdata::{A, AAAA, SOA, SRV};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use shoal_discovery::{Discovery, Instance};

/// The zone's apex.
pub const ZONE: &str = "shoal.";
/// Most instances in one answer (a service with more gives a rotating window of them).
pub const MAX_ANSWERS: usize = 256;

/// Where an instance is.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Host {
    Ip(IpAddr),
    Name(Name),
}

/// A passing instance as DNS answers it.
#[derive(Clone, Debug)]
struct Endpoint {
    host: Host,
    port: u16,
    weight: u16,
    tags: Vec<String>,
    /// The SRV target: `<hex>.addr.shoal.` or the host name.
    target: Name,
}

/// The registry as DNS sees it, taken at one index.
#[derive(Debug)]
pub struct Snapshot {
    /// Service → its passing instances (a known service may have none).
    services: HashMap<String, Vec<Endpoint>>,
    index: u64,
    apex: Name,
    soa_mname: Name,
    soa_rname: Name,
}

/// What a name in the zone asks for.
#[derive(Debug, PartialEq, Eq)]
enum Lookup {
    Apex,
    /// `service.shoal.` or `addr.shoal.`: names that exist but hold no records.
    Empty,
    Service {
        service: String,
        tag: Option<String>,
    },
    Addr(IpAddr),
    Unknown,
}

/// The records answering one question.
#[derive(Debug, Default)]
pub struct Answer {
    /// NOERROR, NXDOMAIN, REFUSED.
    pub rcode: ResponseCode,
    /// The answer section.
    pub answers: Vec<Record>,
    /// The authority section (the SOA of a negative answer).
    pub authorities: Vec<Record>,
    /// The additional section (the addresses of SRV targets).
    pub additionals: Vec<Record>,
}

/// The tag a label gives (see the module's documentation), if it fits a DNS label.
pub fn tag_of(key: &str, value: &str) -> Option<String> {
    let raw = if value.is_empty() { key.to_owned() } else { format!("{key}-{value}") };
    let tag: String = raw
        .chars()
        .map(|c| c.to_ascii_lowercase())
        .map(|c| if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' { c } else { '-' })
        .collect();
    (!tag.is_empty() && tag.len() <= 63).then_some(tag)
}

/// `host` of `host:port` (IPv6 in brackets or bare) and the port.
fn split_address(address: &str) -> Option<(Host, u16)> {
    if let Ok(socket) = address.parse::<std::net::SocketAddr>() {
        return Some((Host::Ip(socket.ip()), socket.port()));
    }
    let (host, port) = address.rsplit_once(':')?;
    let port = port.parse().ok()?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Some((Host::Ip(ip), port));
    }
    let mut name = Name::from_ascii(host).ok()?;
    name.set_fqdn(true);
    Some((Host::Name(name), port))
}

/// `<hex>.addr.shoal.` for an address.
fn addr_name(ip: IpAddr) -> Name {
    let hex: String = match ip {
        IpAddr::V4(v4) => v4.octets().iter().map(|b| format!("{b:02x}")).collect(),
        IpAddr::V6(v6) => v6.octets().iter().map(|b| format!("{b:02x}")).collect(),
    };
    Name::from_ascii(format!("{hex}.addr.{ZONE}")).expect("hex digits make a valid name")
}

fn parse_hex_addr(label: &str) -> Option<IpAddr> {
    let bytes: Option<Vec<u8>> =
        (0..label.len()).step_by(2).map(|i| label.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok())).collect();
    match bytes?.as_slice() {
        b if b.len() == 4 && label.len() == 8 => Some(IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]))),
        b if b.len() == 16 && label.len() == 32 => {
            let octets: [u8; 16] = b.try_into().ok()?;
            Some(IpAddr::V6(Ipv6Addr::from(octets)))
        }
        _ => None,
    }
}

fn endpoint(instance: &Instance) -> Option<Endpoint> {
    let (host, port) = split_address(&instance.address)?;
    let target = match &host {
        Host::Ip(ip) => addr_name(*ip),
        Host::Name(name) => name.clone(),
    };
    let tags = instance.labels.iter().filter_map(|(k, v)| tag_of(k, v)).collect();
    Some(Endpoint { host, port, weight: instance.weight.min(u32::from(u16::MAX)) as u16, tags, target })
}

fn ascii_label(label: &[u8]) -> Option<String> {
    std::str::from_utf8(label).ok().map(str::to_ascii_lowercase)
}

impl Snapshot {
    /// The registry's passing instances now.
    pub fn of(discovery: &Discovery) -> Snapshot {
        let mut services = HashMap::new();
        let mut index = discovery.index();
        for (name, _, _) in discovery.services() {
            let (instances, at) = discovery.instances(&name, true);
            index = index.max(at);
            services.insert(name, instances.iter().filter_map(endpoint).collect());
        }
        Snapshot::with(services, index)
    }

    /// A snapshot of nothing.
    pub fn empty() -> Snapshot {
        Snapshot::with(HashMap::new(), 0)
    }

    fn with(services: HashMap<String, Vec<Endpoint>>, index: u64) -> Snapshot {
        let name = |s: &str| Name::from_ascii(s).expect("a valid constant name");
        Snapshot {
            services,
            index,
            apex: name(ZONE),
            soa_mname: name("ns.shoal."),
            soa_rname: name("hostmaster.shoal."),
        }
    }

    /// The registry index the snapshot was taken at.
    pub fn index(&self) -> u64 {
        self.index
    }

    /// Whether `name` is in the zone.
    pub fn in_zone(&self, name: &Name) -> bool {
        self.apex.zone_of(name)
    }

    fn lookup(&self, name: &Name) -> Lookup {
        let labels: Option<Vec<String>> = name.iter().map(ascii_label).collect();
        let Some(mut labels) = labels else { return Lookup::Unknown };
        labels.pop(); // "shoal", checked by `in_zone`
        let service =
            |s: &str, tag: Option<&str>| Lookup::Service { service: s.to_owned(), tag: tag.map(str::to_owned) };
        match labels.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
            [] => Lookup::Apex,
            ["service"] | ["addr"] => Lookup::Empty,
            [s, "service"] if !s.starts_with('_') => service(s, None),
            [s, "_tcp", "service"] if s.starts_with('_') => service(&s[1..], None),
            [s, t, "service"] if s.starts_with('_') && t.starts_with('_') => service(&s[1..], Some(&t[1..])),
            [t, s, "service"] if !s.starts_with('_') && !t.starts_with('_') => service(s, Some(t)),
            [hex, "addr"] => parse_hex_addr(hex).map_or(Lookup::Unknown, Lookup::Addr),
            _ => Lookup::Unknown,
        }
    }

    fn soa(&self, ttl: u32) -> Record {
        let soa = SOA::new(self.soa_mname.clone(), self.soa_rname.clone(), self.index as u32, 3600, 600, 86400, ttl);
        Record::from_rdata(self.apex.clone(), ttl, RData::SOA(soa))
    }

    fn negative(&self, rcode: ResponseCode, ttl: u32) -> Answer {
        Answer { rcode, authorities: vec![self.soa(ttl)], ..Answer::default() }
    }

    /// The answer to `qtype` of `name` (a name in the zone), `ttl` on every record; `rotate`
    /// picks where a service's list starts (a different start per query spreads the load).
    pub fn answer(&self, name: &Name, qtype: RecordType, ttl: u32, rotate: usize) -> Answer {
        let endpoints = match self.lookup(name) {
            Lookup::Unknown => return self.negative(ResponseCode::NXDomain, ttl),
            Lookup::Apex if matches!(qtype, RecordType::SOA | RecordType::ANY) => {
                return Answer { answers: vec![self.soa(ttl)], ..Answer::default() };
            }
            Lookup::Apex | Lookup::Empty => return self.negative(ResponseCode::NoError, ttl),
            Lookup::Addr(ip) => {
                let mut answer = Answer::default();
                match address_record(name, ip, qtype, ttl) {
                    Some(record) => answer.answers.push(record),
                    None => return self.negative(ResponseCode::NoError, ttl),
                }
                return answer;
            }
            Lookup::Service { service, tag } => match self.services.get(&service) {
                None => return self.negative(ResponseCode::NXDomain, ttl),
                Some(list) => (list, tag),
            },
        };
        let (list, tag) = endpoints;
        let chosen: Vec<&Endpoint> =
            list.iter().filter(|e| tag.as_ref().is_none_or(|t| e.tags.iter().any(|have| have == t))).collect();
        if tag.is_some() && chosen.is_empty() && !list.is_empty() {
            // A tag no passing instance carries: the name does not exist (it may later).
            return self.negative(ResponseCode::NXDomain, ttl);
        }
        let start = if chosen.is_empty() { 0 } else { rotate % chosen.len() };
        let window = chosen.iter().cycle().skip(start).take(chosen.len().min(MAX_ANSWERS));
        let mut answer = Answer::default();
        // Instances sharing an address share a target: its record once in the additional section.
        let mut targets: Vec<IpAddr> = Vec::new();
        for e in window {
            match qtype {
                RecordType::SRV => {
                    let srv = SRV::new(1, e.weight, e.port, e.target.clone());
                    answer.answers.push(Record::from_rdata(name.clone(), ttl, RData::SRV(srv)));
                    if let Host::Ip(ip) = e.host
                        && !targets.contains(&ip)
                    {
                        targets.push(ip);
                        let kind = if ip.is_ipv4() { RecordType::A } else { RecordType::AAAA };
                        answer.additionals.extend(address_record(&e.target, ip, kind, ttl));
                    }
                }
                _ => {
                    if let Host::Ip(ip) = e.host {
                        answer.answers.extend(address_record(name, ip, qtype, ttl));
                    }
                }
            }
        }
        if answer.answers.is_empty() {
            return self.negative(ResponseCode::NoError, ttl);
        }
        answer
    }
}

/// The `A` or `AAAA` record of `ip` if `qtype` asks for its kind (`ANY` asks for both).
fn address_record(name: &Name, ip: IpAddr, qtype: RecordType, ttl: u32) -> Option<Record> {
    let rdata = match (ip, qtype) {
        (IpAddr::V4(v4), RecordType::A | RecordType::ANY) => RData::A(A(v4)),
        (IpAddr::V6(v6), RecordType::AAAA | RecordType::ANY) => RData::AAAA(AAAA(v6)),
        _ => return None,
    };
    Some(Record::from_rdata(name.clone(), ttl, rdata))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::BTreeMap;

    use shoal_discovery::{Health, Registration};

    use super::*;

    fn registration(address: &str, labels: &[(&str, &str)], health: Health) -> Registration {
        Registration {
            address: address.into(),
            ports: BTreeMap::new(),
            weight: 1,
            labels: labels.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect(),
            version: String::new(),
            health: Some(health),
            ttl_seconds: None,
            check: None,
        }
    }

    fn registry() -> Discovery {
        let d = Discovery::default();
        d.register("web", "a", registration("10.0.0.1:8080", &[("zone", "eu")], Health::Passing)).unwrap();
        d.register("web", "b", registration("[::1]:8081", &[("Version", "2.0")], Health::Passing)).unwrap();
        d.register("web", "c", registration("10.0.0.3:8082", &[], Health::Critical)).unwrap();
        d.register("web", "d", registration("db.internal:5432", &[], Health::Passing)).unwrap();
        d.register("idle", "x", registration("10.0.0.9:1", &[], Health::Critical)).unwrap();
        d.register("pair", "p1", registration("10.0.0.7:1", &[], Health::Passing)).unwrap();
        d.register("pair", "p2", registration("10.0.0.7:2", &[], Health::Passing)).unwrap();
        d
    }

    fn name(s: &str) -> Name {
        Name::from_ascii(s).unwrap()
    }

    fn data(answer: &Answer) -> Vec<String> {
        let mut v: Vec<String> = answer.answers.iter().map(|r| r.data.to_string()).collect();
        v.sort();
        v
    }

    #[test]
    fn a_aaaa_and_srv_hold_the_passing_instances_only() {
        let zone = Snapshot::of(&registry());
        let a = zone.answer(&name("web.service.shoal."), RecordType::A, 7, 0);
        assert_eq!(data(&a), ["10.0.0.1"]);
        assert!(a.answers.iter().all(|r| r.ttl == 7));
        let aaaa = zone.answer(&name("WEB.Service.SHOAL."), RecordType::AAAA, 7, 0);
        assert_eq!(data(&aaaa), ["::1"]);
        let srv = zone.answer(&name("_web._tcp.service.shoal."), RecordType::SRV, 7, 3);
        assert_eq!(
            data(&srv),
            [
                "1 1 5432 db.internal.",
                "1 1 8080 0a000001.addr.shoal.",
                "1 1 8081 00000000000000000000000000000001.addr.shoal."
            ]
        );
        // The addresses of the SRV targets that are IPs come along; a host name is the client's.
        assert_eq!(srv.additionals.len(), 2);
        // Two instances on one address: two SRV records, one address record.
        let pair = zone.answer(&name("pair.service.shoal."), RecordType::SRV, 7, 0);
        assert_eq!((pair.answers.len(), pair.additionals.len()), (2, 1));
    }

    #[test]
    fn tags_filter_and_unknown_names_are_nxdomain_with_an_soa() {
        let zone = Snapshot::of(&registry());
        let eu = zone.answer(&name("zone-eu.web.service.shoal."), RecordType::A, 5, 0);
        assert_eq!(data(&eu), ["10.0.0.1"]);
        let v2 = zone.answer(&name("_web._version-2-0.service.shoal."), RecordType::SRV, 5, 0);
        assert_eq!(v2.answers.len(), 1, "{v2:?}");
        for unknown in ["nope.service.shoal.", "zone-us.web.service.shoal.", "x.y.shoal.", "zz.addr.shoal."] {
            let answer = zone.answer(&name(unknown), RecordType::A, 5, 0);
            assert_eq!(answer.rcode, ResponseCode::NXDomain, "{unknown}");
            assert_eq!(answer.authorities[0].record_type(), RecordType::SOA);
        }
        // A known service without a passing instance exists, with nothing in it.
        let idle = zone.answer(&name("idle.service.shoal."), RecordType::A, 5, 0);
        assert_eq!((idle.rcode, idle.answers.len(), idle.authorities.len()), (ResponseCode::NoError, 0, 1));
    }

    #[test]
    fn addr_names_decode_and_tags_are_dns_labels() {
        let zone = Snapshot::of(&registry());
        let a = zone.answer(&name("0a000001.addr.shoal."), RecordType::A, 5, 0);
        assert_eq!(data(&a), ["10.0.0.1"]);
        assert_eq!(tag_of("shoal.route.path", "/shop"), Some("shoal-route-path--shop".into()));
        assert_eq!(tag_of("primary", ""), Some("primary".into()));
        assert_eq!(tag_of(&"k".repeat(64), ""), None);
    }
}
