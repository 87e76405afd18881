//! The wire: one DNS message in, at most one out ([`respond`]), and the UDP and TCP loops that
//! carry them.
//!
//! Bounds: the UDP loop answers each datagram before it reads the next (a flood queues in the
//! kernel's socket buffer, whose excess the kernel drops; nothing grows in the process); TCP
//! holds at most [`MAX_TCP_CONNECTIONS`] connections (one past that is closed at once), each
//! idle at most [`TCP_IDLE`] and reading one message of at most 64 KiB at a time.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use hickory_proto::op::{Edns, Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::DNSClass;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

use crate::zone::Snapshot;

/// Largest UDP answer without EDNS (RFC 1035).
pub const UDP_PLAIN: usize = 512;
/// Largest UDP answer with EDNS, whatever the client offers (the DNS flag day 2020 value).
pub const UDP_EDNS: u16 = 1232;
/// TCP connections held at once.
pub const MAX_TCP_CONNECTIONS: usize = 256;
/// How long a TCP connection may sit between two queries.
pub const TCP_IDLE: Duration = Duration::from_secs(10);

/// What answers: the zone (swapped whole on every registry change), the TTL, and whether this
/// node may answer from its registry (a standby master may not).
#[derive(Clone)]
pub struct Responder {
    /// The current snapshot.
    pub zone: Arc<ArcSwap<Snapshot>>,
    /// TTL of every record.
    pub ttl: u32,
    /// Whether this node's registry is the cluster's.
    pub leads: Arc<dyn Fn() -> bool + Send + Sync>,
}

/// A bare header answering a request that could not be read: its id and opcode, `rcode`, no
/// sections.
fn header_only(request: &[u8], rcode: ResponseCode) -> Vec<u8> {
    let mut out = vec![0u8; 12];
    out[..2].copy_from_slice(&request[..2]);
    out[2] = 0x80 | (request[2] & 0x78); // QR, the request's opcode
    out[3] = u16::from(rcode) as u8 & 0x0f;
    out
}

impl Responder {
    /// The answer to one message, if it gets one: a response (QR set) or something shorter
    /// than a header is dropped; an unreadable query is answered FORMERR.
    pub fn respond(&self, request: &[u8], tcp: bool) -> Option<Vec<u8>> {
        if request.len() < 12 || request[2] & 0x80 != 0 {
            return None;
        }
        let Ok(query) = Message::from_vec(request) else {
            return Some(header_only(request, ResponseCode::FormErr));
        };
        let mut response = Message::response(query.metadata.id, query.metadata.op_code);
        response.metadata.recursion_desired = query.metadata.recursion_desired;
        response.add_queries(query.queries.iter().cloned());
        if query.edns.is_some() {
            let mut edns = Edns::new();
            edns.set_max_payload(UDP_EDNS);
            response.set_edns(edns);
        }
        self.fill(&query, &mut response);
        let limit = if tcp {
            usize::from(u16::MAX)
        } else {
            query.edns.as_ref().map_or(UDP_PLAIN, |e| usize::from(e.max_payload().clamp(512, UDP_EDNS)))
        };
        let bytes = response.to_vec().ok()?;
        if bytes.len() <= limit {
            return Some(bytes);
        }
        // Too long for this transport: TC set, the client asks again over TCP.
        response.truncate().to_vec().ok()
    }

    fn fill(&self, query: &Message, response: &mut Message) {
        let rcode = |response: &mut Message, rcode| response.metadata.response_code = rcode;
        if query.metadata.message_type != MessageType::Query || query.metadata.op_code != OpCode::Query {
            return rcode(response, ResponseCode::NotImp);
        }
        let [question] = query.queries.as_slice() else {
            return rcode(response, ResponseCode::FormErr);
        };
        let zone = self.zone.load();
        if !matches!(question.query_class(), DNSClass::IN | DNSClass::ANY) || !zone.in_zone(question.name()) {
            return rcode(response, ResponseCode::Refused);
        }
        if !(self.leads)() {
            // A standby master's registry is not the cluster's: the resolver asks another.
            return rcode(response, ResponseCode::ServFail);
        }
        let answer = zone.answer(question.name(), question.query_type(), self.ttl, usize::from(query.metadata.id));
        response.metadata.authoritative = true;
        response.metadata.response_code = answer.rcode;
        response.answers = answer.answers;
        response.authorities = answer.authorities;
        response.additionals = answer.additionals;
    }
}

/// Answer datagrams on `socket` until the task is aborted.
pub async fn udp_loop(socket: UdpSocket, responder: Responder) {
    let mut buf = vec![0u8; 4096];
    loop {
        let (n, peer) = match socket.recv_from(&mut buf).await {
            Ok(got) => got,
            // An ICMP error of an earlier answer, or the like: nothing to do with the next.
            Err(_) => continue,
        };
        if let Some(out) = responder.respond(&buf[..n], false) {
            let _ = socket.send_to(&out, peer).await;
        }
    }
}

/// Accept TCP connections on `listener` until the task is aborted.
pub async fn tcp_loop(listener: TcpListener, responder: Responder) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_TCP_CONNECTIONS));
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            drop(stream);
            continue;
        };
        let responder = responder.clone();
        tokio::spawn(async move {
            let _ = tcp_connection(stream, &responder).await;
            drop(slot);
        });
    }
}

/// Length-prefixed messages (RFC 1035 4.2.2) until the client closes or idles.
async fn tcp_connection(mut stream: TcpStream, responder: &Responder) -> std::io::Result<()> {
    let mut buf = Vec::new();
    loop {
        let Ok(len) = tokio::time::timeout(TCP_IDLE, stream.read_u16()).await else { return Ok(()) };
        let len = usize::from(len?);
        buf.resize(len, 0);
        if !matches!(tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut buf)).await, Ok(Ok(_))) {
            return Ok(());
        }
        let Some(out) = responder.respond(&buf, true) else { continue };
        let mut framed = Vec::with_capacity(out.len() + 2);
        framed.extend_from_slice(&(out.len() as u16).to_be_bytes());
        framed.extend_from_slice(&out);
        stream.write_all(&framed).await?;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {

    use hickory_proto::op::Query;
    use hickory_proto::rr::{Name, RecordType};
    use shoal_discovery::{Discovery, Registration};

    use super::*;

    fn responder(leads: bool, instances: usize) -> Responder {
        let d = Discovery::default();
        for i in 0..instances {
            let registration: Registration =
                serde_json::from_value(serde_json::json!({"address": format!("10.1.{}.{}:80", i / 250, i % 250 + 1)}))
                    .unwrap();
            d.register("web", &format!("i{i}"), registration).unwrap();
        }
        Responder { zone: Arc::new(ArcSwap::from_pointee(Snapshot::of(&d))), ttl: 3, leads: Arc::new(move || leads) }
    }

    fn query(name: &str, kind: RecordType, edns: bool) -> Vec<u8> {
        let mut m = Message::query();
        m.metadata.id = 4242;
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), kind));
        if edns {
            m.set_edns(Edns::new());
        }
        m.to_vec().unwrap()
    }

    fn ask(r: &Responder, bytes: &[u8], tcp: bool) -> Message {
        Message::from_vec(&r.respond(bytes, tcp).unwrap()).unwrap()
    }

    #[test]
    fn answers_refuses_and_a_standby_fails_over() {
        let r = responder(true, 2);
        let m = ask(&r, &query("web.service.shoal.", RecordType::A, false), false);
        assert_eq!((m.metadata.id, m.metadata.response_code, m.answers.len()), (4242, ResponseCode::NoError, 2));
        assert!(m.metadata.authoritative);
        let m = ask(&r, &query("example.com.", RecordType::A, false), false);
        assert_eq!((m.metadata.response_code, m.answers.len()), (ResponseCode::Refused, 0));
        let standby = responder(false, 2);
        let m = ask(&standby, &query("web.service.shoal.", RecordType::A, false), false);
        assert_eq!((m.metadata.response_code, m.answers.len()), (ResponseCode::ServFail, 0));
    }

    #[test]
    fn bad_input_is_formerr_or_dropped() {
        let r = responder(true, 1);
        assert!(r.respond(&[1, 2, 3], false).is_none(), "shorter than a header");
        let mut garbage = query("web.service.shoal.", RecordType::A, false);
        garbage.truncate(garbage.len() - 3);
        let answer = r.respond(&garbage, false).unwrap();
        assert_eq!((answer.len(), answer[3] & 0x0f), (12, 1), "FORMERR");
        garbage[2] |= 0x80;
        assert!(r.respond(&garbage, false).is_none(), "a response is never answered");
        let mut two = Message::query();
        for _ in 0..2 {
            two.add_query(Query::query(Name::from_ascii("web.service.shoal.").unwrap(), RecordType::A));
        }
        let m = ask(&r, &two.to_vec().unwrap(), false);
        assert_eq!(m.metadata.response_code, ResponseCode::FormErr);
    }

    #[test]
    fn long_answers_are_truncated_over_udp_and_whole_over_tcp() {
        let r = responder(true, 300);
        let udp = ask(&r, &query("web.service.shoal.", RecordType::A, false), false);
        assert!(udp.metadata.truncation && udp.answers.is_empty());
        let edns = ask(&r, &query("web.service.shoal.", RecordType::SRV, true), false);
        assert!(edns.metadata.truncation);
        let tcp = ask(&r, &query("web.service.shoal.", RecordType::SRV, false), true);
        assert!(!tcp.metadata.truncation);
        assert_eq!((tcp.answers.len(), tcp.additionals.len()), (crate::zone::MAX_ANSWERS, crate::zone::MAX_ANSWERS));
    }
}
