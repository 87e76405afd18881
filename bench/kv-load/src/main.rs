//! The load tool of `bench/kv-replicated-vs-etcd.sh`: one workload, the same keys and values,
//! against etcd through its own gRPC client (`etcd-client`, tonic) and against Shoal through its
//! HTTP KV API (`PUT/GET /v1/kv/<ns>/<key>`, the admin bearer token), as their users drive them.
//!
//! ```text
//! kv-load bench (--etcd URL[,URL…] [--etcd-clients N] | --shoal URL --token-file FILE)
//!               [--label NAME] [--conns 64] [--keys 100000] [--value-size 100] [--seed 1]
//!               [--duration 10] [--warmup 2] [--ops preload,put,get]
//! kv-load ready --shoal URL --token-file FILE --shards N [--timeout-s 120]
//! kv-load failover --shoal URL --token-file FILE --shards N --kill-pid PID --led S[,S…]
//!               [--interval-ms 10] [--timeout-s 30]
//! ```
//!
//! `bench`: `conns` concurrent clients, each a loop of one request at a time. `preload` writes
//! every key `k0…k<keys-1>` once (split among the clients); `put` overwrites random keys for
//! `duration` seconds; `get` reads random keys (etcd: its default, linearizable range; Shoal: its
//! default consistency, linearizable) for `warmup` seconds unmeasured, then `duration` seconds.
//! Client `c` draws keys from its own generator seeded with `seed` and `c`, so every target gets
//! the same key sequence. A value is `<key>:<n>:` padded with `x` to `value-size` bytes; every
//! answer is checked (a put acknowledged, a get that finds its key with a value of that key and
//! size). One line per phase: `KVLOAD label=… op=… requests=… errors=… seconds=… rps=… p50_ms=…
//! p90_ms=… p99_ms=… max_ms=…`, and `KVLOAD_ERROR …` with the first error of a phase that had
//! any. Exits 1 when any phase had an error.
//!
//! `ready`: until a linearizable get of a key of every shard is answered (200 or 404) within
//! 1 s, each: every shard has a leader the client reaches without waiting on a member that does
//! not answer. Exits 1 after `timeout-s`.
//!
//! `failover`: a light writer on every shard of Shoal's store (one put every `interval-ms` to a
//! key of that shard, each in its own request, whoever answers first) until every shard has
//! answered; then `kill -9 PID` (a store node leading shards `led`) and, for each of those shards,
//! the time from the kill until a put *sent after it* was acknowledged. One line per led shard:
//! `FAILOVER shard=… writable_ms=… failed=…`, and `FAILOVER_OTHERS max_ms=…` (the slowest put of
//! the other shards sent after the kill). Exits 1 when a led shard is not writable within
//! `timeout-s`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tokio::sync::mpsc;

const NAMESPACE: &str = "bench";

/// `--name value` pairs after the mode.
struct Args(HashMap<String, String>);

impl Args {
    fn parse(args: &[String]) -> Result<Args, String> {
        let mut map = HashMap::new();
        let mut it = args.iter();
        while let Some(name) = it.next() {
            let name = name.strip_prefix("--").ok_or_else(|| format!("expected --name, got {name}"))?;
            let value = it.next().ok_or_else(|| format!("--{name} needs a value"))?;
            map.insert(name.to_owned(), value.clone());
        }
        Ok(Args(map))
    }

    fn str(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    fn num<T: std::str::FromStr>(&self, name: &str, default: T) -> Result<T, String> {
        match self.0.get(name) {
            None => Ok(default),
            Some(v) => v.parse().map_err(|_| format!("--{name} {v}: not a number")),
        }
    }
}

/// splitmix64: a small, fixed generator, so every run and target draws the same keys.
struct Rng(u64);

impl Rng {
    fn new(seed: u64, stream: u64) -> Rng {
        Rng(seed ^ stream.wrapping_mul(0x9e37_79b9_7f4a_7c15))
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

fn key(i: u64) -> String {
    format!("k{i}")
}

/// `<key>:<n>:` padded with `x` to `size` bytes.
fn value(key: &str, n: u64, size: usize) -> Vec<u8> {
    let mut v = format!("{key}:{n}:").into_bytes();
    v.resize(size.max(v.len()), b'x');
    v.truncate(size);
    v
}

/// A value read back must be one written to that key: its size, and the key in front.
fn check_value(key: &str, got: &[u8], size: usize) -> Result<(), String> {
    let prefix = format!("{key}:");
    if got.len() != size || !got.starts_with(prefix.as_bytes()) {
        return Err(format!(
            "{key}: read {} bytes {:?}",
            got.len(),
            String::from_utf8_lossy(&got[..got.len().min(40)])
        ));
    }
    Ok(())
}

/// One client of a target.
enum Conn {
    Etcd(etcd_client::KvClient),
    Shoal(Shoal),
}

#[derive(Clone)]
struct Shoal {
    http: reqwest::Client,
    base: String,
    auth: String,
}

impl Shoal {
    fn new(url: &str, token_file: &str, conns: usize) -> Result<Shoal, String> {
        let token = std::fs::read_to_string(token_file).map_err(|e| format!("{token_file}: {e}"))?;
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(conns)
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Shoal {
            http,
            base: format!("{}/v1/kv/{NAMESPACE}", url.trim_end_matches('/')),
            auth: format!("Bearer {}", token.trim()),
        })
    }

    async fn put(&self, key: &str, value: Vec<u8>) -> Result<(), String> {
        let response = self
            .http
            .put(format!("{}/{key}", self.base))
            .header("Authorization", &self.auth)
            .header("Content-Type", "application/octet-stream")
            .body(value)
            .send()
            .await
            .map_err(|e| format!("put {key}: {e}"))?;
        let status = response.status();
        let body = response.bytes().await.map_err(|e| format!("put {key}: {e}"))?;
        if status != 200 || !body.windows(9).any(|w| w == b"\"version\"") {
            return Err(format!("put {key}: {status} {}", String::from_utf8_lossy(&body)));
        }
        Ok(())
    }

    async fn get(&self, key: &str) -> Result<Vec<u8>, String> {
        let response = self
            .http
            .get(format!("{}/{key}", self.base))
            .header("Authorization", &self.auth)
            .send()
            .await
            .map_err(|e| format!("get {key}: {e}"))?;
        let status = response.status();
        let body = response.bytes().await.map_err(|e| format!("get {key}: {e}"))?;
        if status != 200 {
            return Err(format!("get {key}: {status} {}", String::from_utf8_lossy(&body)));
        }
        Ok(body.to_vec())
    }
}

impl Conn {
    async fn put(&mut self, key: &str, value: Vec<u8>) -> Result<(), String> {
        match self {
            Conn::Etcd(kv) => kv.put(key, value, None).await.map(drop).map_err(|e| format!("put {key}: {e}")),
            Conn::Shoal(s) => s.put(key, value).await,
        }
    }

    async fn get(&mut self, key: &str, size: usize) -> Result<(), String> {
        let got = match self {
            Conn::Etcd(kv) => {
                // etcd's default range: linearizable (a ReadIndex round through its Raft).
                let response = kv.get(key, None).await.map_err(|e| format!("get {key}: {e}"))?;
                match response.kvs() {
                    [one] => one.value().to_vec(),
                    other => return Err(format!("get {key}: {} keys", other.len())),
                }
            }
            Conn::Shoal(s) => s.get(key).await?,
        };
        check_value(key, &got, size)
    }
}

/// What one client saw in a phase.
struct Tally {
    latencies: Histogram<u64>,
    errors: u64,
    first_error: Option<String>,
}

impl Tally {
    fn new() -> Tally {
        Tally {
            latencies: Histogram::new_with_bounds(1, 120_000_000, 3).expect("histogram bounds"),
            errors: 0,
            first_error: None,
        }
    }

    fn record(&mut self, started: Instant, outcome: Result<(), String>) {
        let micros = started.elapsed().as_micros().clamp(1, 120_000_000) as u64;
        self.latencies.saturating_record(micros);
        if let Err(e) = outcome {
            self.errors += 1;
            self.first_error.get_or_insert(e);
        }
    }

    fn merge(&mut self, other: Tally) {
        self.latencies.add(&other.latencies).expect("same histogram bounds");
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Op {
    Preload,
    Put,
    Get,
}

struct Workload {
    keys: u64,
    value_size: usize,
    seed: u64,
}

/// Runs `op` on every client (until `duration` has passed, or for preload until every key is
/// written); returns the merged tally and the wall time.
async fn phase(conns: Vec<Conn>, op: Op, w: Arc<Workload>, duration: Duration) -> (Tally, Duration, Vec<Conn>) {
    let n = conns.len() as u64;
    let start = Instant::now();
    let end = start + duration;
    let mut tasks = Vec::new();
    for (c, mut conn) in conns.into_iter().enumerate() {
        let w = w.clone();
        tasks.push(tokio::spawn(async move {
            let c = c as u64;
            let mut tally = Tally::new();
            let mut rng = Rng::new(w.seed, c + 1);
            let mut written = 0u64;
            match op {
                Op::Preload => {
                    let mut i = c;
                    while i < w.keys {
                        let k = key(i);
                        let t = Instant::now();
                        let outcome = conn.put(&k, value(&k, 0, w.value_size)).await;
                        tally.record(t, outcome);
                        i += n;
                    }
                }
                Op::Put | Op::Get => {
                    while Instant::now() < end {
                        let k = key(rng.next() % w.keys);
                        let t = Instant::now();
                        let outcome = if op == Op::Put {
                            written += 1;
                            // Distinct per client and write, so an overwrite really changes the value.
                            conn.put(&k, value(&k, (c << 40) | written, w.value_size)).await
                        } else {
                            conn.get(&k, w.value_size).await
                        };
                        tally.record(t, outcome);
                    }
                }
            }
            (tally, conn)
        }));
    }
    let mut total = Tally::new();
    let mut back = Vec::new();
    for task in tasks {
        let (tally, conn) = task.await.expect("a client task panicked");
        total.merge(tally);
        back.push(conn);
    }
    (total, start.elapsed(), back)
}

fn report(label: &str, op: &str, tally: &Tally, took: Duration) {
    let h = &tally.latencies;
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "KVLOAD label={label} op={op} requests={} errors={} seconds={:.2} rps={:.0} p50_ms={:.2} p90_ms={:.2} \
         p99_ms={:.2} max_ms={:.2}",
        h.len(),
        tally.errors,
        took.as_secs_f64(),
        h.len() as f64 / took.as_secs_f64(),
        ms(0.5),
        ms(0.9),
        ms(0.99),
        h.max() as f64 / 1000.0,
    );
    if let Some(e) = &tally.first_error {
        println!("KVLOAD_ERROR label={label} op={op} first={e:?}");
    }
}

async fn bench(args: Args) -> Result<bool, String> {
    let conns_n: usize = args.num("conns", 64)?;
    let w = Arc::new(Workload {
        keys: args.num("keys", 100_000)?,
        value_size: args.num("value-size", 100)?,
        seed: args.num("seed", 1)?,
    });
    if w.value_size < 16 {
        return Err("--value-size: at least 16 (a value starts with its key)".into());
    }
    let duration = Duration::from_secs_f64(args.num("duration", 10.0)?);
    let warmup = Duration::from_secs_f64(args.num("warmup", 2.0)?);
    let ops = args.str("ops").unwrap_or("preload,put,get").to_owned();
    let mut conns = Vec::new();
    let label;
    if let Some(endpoints) = args.str("etcd") {
        label = args.str("label").unwrap_or("etcd").to_owned();
        let endpoints: Vec<&str> = endpoints.split(',').collect();
        let clients: usize = args.num("etcd-clients", 1)?;
        let mut kvs = Vec::new();
        for _ in 0..clients.max(1) {
            let client = etcd_client::Client::connect(&endpoints, None).await.map_err(|e| format!("etcd: {e}"))?;
            kvs.push(client.kv_client());
        }
        for c in 0..conns_n {
            conns.push(Conn::Etcd(kvs[c % kvs.len()].clone()));
        }
    } else if let Some(url) = args.str("shoal") {
        label = args.str("label").unwrap_or("shoal").to_owned();
        let shoal = Shoal::new(url, args.str("token-file").ok_or("--shoal needs --token-file")?, conns_n)?;
        for _ in 0..conns_n {
            conns.push(Conn::Shoal(shoal.clone()));
        }
    } else {
        return Err("bench: --etcd URL[,URL…] or --shoal URL".into());
    }
    let mut ok = true;
    for op in ops.split(',') {
        let (tally, took);
        match op {
            "preload" => (tally, took, conns) = phase(conns, Op::Preload, w.clone(), Duration::ZERO).await,
            "put" => (tally, took, conns) = phase(conns, Op::Put, w.clone(), duration).await,
            "get" => {
                if !warmup.is_zero() {
                    let (warm, _, back) = phase(conns, Op::Get, w.clone(), warmup).await;
                    conns = back;
                    if warm.errors > 0 {
                        report(&label, "get-warmup", &warm, warmup);
                        ok = false;
                    }
                }
                (tally, took, conns) = phase(conns, Op::Get, w.clone(), duration).await;
            }
            other => return Err(format!("--ops: unknown {other} (preload, put, get)")),
        }
        report(&label, op, &tally, took);
        ok &= tally.errors == 0;
    }
    Ok(ok)
}

/// Keys of namespace `bench` on shard `shard` of `shards`.
fn keys_of_shard(shard: u32, shards: u32, count: usize) -> Vec<String> {
    (0u64..)
        .map(|i| format!("failover-{i}"))
        .filter(|k| shoal_keyspace::shard_of(NAMESPACE, k, shards) == shard)
        .take(count)
        .collect()
}

/// One put of the light writer: the shard, when it was sent, when it was answered, whether
/// acknowledged.
struct Attempt {
    shard: u32,
    sent: Instant,
    answered: Instant,
    ok: bool,
}

async fn ready(args: Args) -> Result<bool, String> {
    let url = args.str("shoal").ok_or("ready: --shoal URL")?;
    let shoal = Shoal::new(url, args.str("token-file").ok_or("--token-file")?, 4)?;
    let shards: u32 = args.num("shards", 0)?;
    let deadline = Instant::now() + Duration::from_secs(args.num("timeout-s", 120)?);
    let keys: Vec<String> = (0..shards).map(|s| keys_of_shard(s, shards, 1).remove(0)).collect();
    let mut last = String::new();
    while Instant::now() < deadline {
        let mut all = true;
        for k in &keys {
            let t = Instant::now();
            let answer = tokio::time::timeout(Duration::from_secs(1), shoal.get(k)).await;
            match answer {
                Ok(Ok(_)) => {}
                Ok(Err(e)) if e.contains(" 404 ") => {}
                Ok(Err(e)) => (all, last) = (false, e),
                Err(_) => (all, last) = (false, format!("get {k}: no answer within {:?}", t.elapsed())),
            }
        }
        if all {
            return Ok(true);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(format!("not every shard answered within 1 s: {last}"))
}

async fn failover(args: Args) -> Result<bool, String> {
    let url = args.str("shoal").ok_or("failover: --shoal URL")?;
    let shoal = Shoal::new(url, args.str("token-file").ok_or("--token-file")?, 64)?;
    let shards: u32 = args.num("shards", 0)?;
    let pid: u32 = args.num("kill-pid", 0)?;
    if shards == 0 || pid == 0 {
        return Err("failover: --shards N and --kill-pid PID".into());
    }
    let led: Vec<u32> = args
        .str("led")
        .ok_or("failover: --led S[,S…]")?
        .split(',')
        .map(|s| s.parse().map_err(|_| format!("--led: {s}")))
        .collect::<Result<_, _>>()?;
    let interval = Duration::from_millis(args.num("interval-ms", 10)?);
    let timeout = Duration::from_secs(args.num("timeout-s", 30)?);

    let (tx, mut rx) = mpsc::unbounded_channel::<Attempt>();
    let stop = Arc::new(tokio::sync::Notify::new());
    let mut writers = Vec::new();
    for shard in 0..shards {
        let keys = keys_of_shard(shard, shards, 64);
        let (shoal, tx, stop) = (shoal.clone(), tx.clone(), stop.clone());
        writers.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            for n in 0u64.. {
                tokio::select! {
                    _ = tick.tick() => {}
                    () = stop.notified() => return,
                }
                let k = keys[(n % keys.len() as u64) as usize].clone();
                let (shoal, tx) = (shoal.clone(), tx.clone());
                tokio::spawn(async move {
                    let sent = Instant::now();
                    let ok = shoal.put(&k, value(&k, n, 100)).await.is_ok();
                    let _ = tx.send(Attempt { shard, sent, answered: Instant::now(), ok });
                });
            }
        }));
    }
    drop(tx);

    // Every shard answers before the kill.
    let mut answered = vec![0u32; shards as usize];
    let warm_until = Instant::now() + timeout;
    while answered.iter().any(|&n| n < 10) {
        let a = tokio::time::timeout_at(warm_until.into(), rx.recv())
            .await
            .map_err(|_| format!("not every shard took writes before the kill: {answered:?} acknowledged"))?
            .ok_or("the writers stopped")?;
        if a.ok {
            answered[a.shard as usize] += 1;
        }
    }

    let status =
        std::process::Command::new("kill").args(["-9", &pid.to_string()]).status().map_err(|e| e.to_string())?;
    let killed = Instant::now();
    if !status.success() {
        return Err(format!("kill -9 {pid}: {status}"));
    }

    let mut writable: HashMap<u32, Duration> = HashMap::new();
    let mut failed: HashMap<u32, u32> = HashMap::new();
    let mut others_max = Duration::ZERO;
    let deadline = killed + timeout;
    while led.iter().any(|s| !writable.contains_key(s)) {
        let Ok(Some(a)) = tokio::time::timeout_at(deadline.into(), rx.recv()).await else { break };
        if !a.ok {
            *failed.entry(a.shard).or_default() += 1;
            continue;
        }
        if a.sent < killed {
            continue;
        }
        if led.contains(&a.shard) {
            writable.entry(a.shard).or_insert(a.answered - killed);
        } else {
            others_max = others_max.max(a.answered - a.sent);
        }
    }
    stop.notify_waiters();
    for w in writers {
        w.abort();
    }
    let mut ok = true;
    for s in &led {
        match writable.get(s) {
            Some(d) => println!(
                "FAILOVER shard={s} writable_ms={:.1} failed={}",
                d.as_secs_f64() * 1000.0,
                failed.get(s).copied().unwrap_or(0)
            ),
            None => {
                println!("FAILOVER shard={s} writable_ms=none failed={}", failed.get(s).copied().unwrap_or(0));
                ok = false;
            }
        }
    }
    println!("FAILOVER_OTHERS max_ms={:.1}", others_max.as_secs_f64() * 1000.0);
    Ok(ok)
}

#[tokio::main]
async fn main() {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let result = match (argv.first().map(String::as_str), Args::parse(argv.get(1..).unwrap_or(&[]))) {
        (_, Err(e)) => Err(e),
        (Some("bench"), Ok(args)) => bench(args).await,
        (Some("failover"), Ok(args)) => failover(args).await,
        (Some("ready"), Ok(args)) => ready(args).await,
        _ => Err("usage: kv-load bench|ready|failover --name value … (see the module doc)".into()),
    };
    match result {
        Ok(true) => {}
        Ok(false) => {
            eprintln!("kv-load: errors in a measured phase");
            std::process::exit(1);
        }
        Err(e) => {
            eprintln!("kv-load: {e}");
            std::process::exit(2);
        }
    }
}
