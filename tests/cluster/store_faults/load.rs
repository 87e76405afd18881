//! The load of the store's fault tests: writers and readers on the master's KV API that keep a
//! book of every acknowledged write and check every read against it.
//!
//! Each writer owns its keys (two on every shard) and writes them in turn with a counter that only
//! grows, so a key's values grow in time. The book holds, per key, the last acknowledged value and
//! version, every acknowledged value's version and the values whose outcome is unknown (the API
//! failed or timed out: they may have landed). It finds:
//! - a lost write: a read (or the final check) older than the key's last acknowledged write
//!   before the read began, or a key missing;
//! - a stale read: the same, at the default (linearizable) consistency;
//! - a duplicated version: an acknowledged version not above the key's previous one, two
//!   acknowledged writes of one shard with one version, or a value read back with another
//!   version than the one its write was acknowledged with.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use shoal_testkit::eventually_sync;

/// The namespace every key is written in.
const NAMESPACE: &str = "app";
/// Keys each writer owns on every shard.
const KEYS_PER_SHARD: usize = 2;
/// A writer's or reader's pause between two calls: a steady load that leaves the two cores
/// room for the nodes' lease renewals (the faults, not the load, should move leaderships).
const PACE: Duration = Duration::from_millis(10);

/// `method path` on `api` (`http://host:port`) with `token`: the status, the response's head and
/// its body. Short connect and read timeouts: a call the API does not answer is an outcome too.
pub(crate) fn call(
    api: &str,
    token: &str,
    method: &str,
    path: &str,
    body: &str,
) -> Result<(u16, String, String), String> {
    let addr = api.trim_start_matches("http://").trim_end_matches('/');
    let socket = addr.parse().map_err(|e| format!("{addr}: {e}"))?;
    let mut stream = TcpStream::connect_timeout(&socket, Duration::from_secs(2)).map_err(|e| e.to_string())?;
    stream.set_read_timeout(Some(Duration::from_secs(15))).map_err(|e| e.to_string())?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    )
    .map_err(|e| e.to_string())?;
    let mut response = String::new();
    stream.read_to_string(&mut response).map_err(|e| format!("{method} {path}: {e}"))?;
    let status = response.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    Ok((status, head.to_owned(), body.to_owned()))
}

/// What a linearizable `GET` of `key` saw: `Ok(Some((value, version)))`, `Ok(None)` for no
/// such key, `Err` when it was not answered (503 while a shard changes leader, a timeout).
fn get(api: &str, token: &str, key: &str) -> Result<Option<(u64, u64)>, String> {
    let (status, head, body) = call(api, token, "GET", &format!("/v1/kv/{NAMESPACE}/{key}"), "")?;
    match status {
        404 => Ok(None),
        200 => {
            let version = head
                .lines()
                .find_map(|l| l.to_ascii_lowercase().strip_prefix("x-shoal-version:").map(|v| v.trim().to_owned()))
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| format!("no version in {head}"))?;
            let value = body.parse().map_err(|e| format!("value {body:?}: {e}"))?;
            Ok(Some((value, version)))
        }
        _ => Err(format!("{status} {body}")),
    }
}

/// `PUT` `value` under `key`: the version acknowledged, or why not (its outcome is unknown).
fn put(api: &str, token: &str, key: &str, value: u64) -> Result<u64, String> {
    let (status, _, body) = call(api, token, "PUT", &format!("/v1/kv/{NAMESPACE}/{key}"), &value.to_string())?;
    if status != 200 {
        return Err(format!("{status} {body}"));
    }
    let v: serde_json::Value = serde_json::from_str(&body).map_err(|e| format!("{body}: {e}"))?;
    v["version"].as_u64().ok_or_else(|| format!("no version in {body}"))
}

/// One acknowledged write, for the times it took.
struct Ack {
    shard: u32,
    started: Instant,
    acked: Instant,
}

#[derive(Default)]
struct Book {
    /// Per key: the last acknowledged (value, version).
    last: BTreeMap<String, (u64, u64)>,
    /// Per (key, value) acknowledged: its version.
    versions: BTreeMap<(String, u64), u64>,
    /// Per (shard, version) acknowledged: the key and value.
    by_version: BTreeMap<(u32, u64), (String, u64)>,
    /// Per key: values written whose outcome is unknown.
    unknown: BTreeMap<String, BTreeSet<u64>>,
    acks: Vec<Ack>,
    violations: Vec<String>,
    /// Reads checked, and calls not answered (writes, reads).
    reads: u64,
    failed: (u64, u64),
}

impl Book {
    fn acked(&mut self, key: &str, shard: u32, value: u64, version: u64, started: Instant) {
        if let Some(&(before, previous)) = self.last.get(key)
            && version <= previous
        {
            self.violations
                .push(format!("{key}={value} acknowledged at version {version}, {key}={before} at {previous}"));
        }
        if let Some((other, v)) = self.by_version.insert((shard, version), (key.to_owned(), value)) {
            self.violations
                .push(format!("version {version} of shard {shard} acknowledged twice: {other}={v}, {key}={value}"));
        }
        self.last.insert(key.to_owned(), (value, version));
        self.versions.insert((key.to_owned(), value), version);
        self.acks.push(Ack { shard, started, acked: Instant::now() });
    }

    /// Check what a read of `key` saw against the key's last acknowledged write before it began.
    fn check(&mut self, key: &str, before: Option<(u64, u64)>, seen: Option<(u64, u64)>, what: &str) {
        match (before, seen) {
            (Some((value, version)), None) => {
                self.violations.push(format!("{what}: {key} is missing; {key}={value} was acknowledged at {version}"))
            }
            (Some((value, version)), Some((read, _))) if read < value => self
                .violations
                .push(format!("{what}: {key}={read} read after {key}={value} was acknowledged at version {version}")),
            _ => {}
        }
        if let Some((read, version)) = seen
            && let Some(&acked) = self.versions.get(&(key.to_owned(), read))
            && acked != version
        {
            self.violations.push(format!("{what}: {key}={read} read at version {version}, acknowledged at {acked}"));
        }
    }
}

/// Writers and readers running against one API until [`Load::stop`].
pub(crate) struct Load {
    api: String,
    token: String,
    shards: u32,
    book: Arc<Mutex<Book>>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

/// What the load saw, once stopped.
pub(crate) struct Report {
    pub acknowledged: usize,
    pub keys: usize,
    pub reads: u64,
    pub failed_writes: u64,
    pub failed_reads: u64,
    pub violations: Vec<String>,
    /// What every key must read as from now on.
    pub expected: Expected,
}

impl Load {
    /// `writers` writers and `readers` readers on `api`, whose store has `shards` shards.
    pub fn start(api: &str, token: &str, shards: u32, writers: usize, readers: usize) -> Load {
        let book = Arc::new(Mutex::new(Book::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let keys: Vec<Vec<(String, u32)>> = (0..writers).map(|w| keys_of(w, shards)).collect();
        let all: Vec<(String, u32)> = keys.iter().flatten().cloned().collect();
        let mut threads = Vec::new();
        for mine in keys {
            let (api, token, book, stop) = (api.to_owned(), token.to_owned(), book.clone(), stop.clone());
            threads.push(std::thread::spawn(move || write_loop(&api, &token, &mine, &book, &stop)));
        }
        for r in 0..readers {
            let (api, token, book, stop) = (api.to_owned(), token.to_owned(), book.clone(), stop.clone());
            let mut all = all.clone();
            let shift = r * all.len() / readers.max(1);
            all.rotate_left(shift);
            threads.push(std::thread::spawn(move || read_loop(&api, &token, &all, &book, &stop)));
        }
        Load { api: api.to_owned(), token: token.to_owned(), shards, book, stop, threads }
    }

    /// How long after `event` shard `shard` acknowledged a write that was sent after it: waits
    /// (`patience` at most) for the first one.
    pub fn writable_again(&self, shard: u32, event: Instant, patience: Duration) -> Duration {
        eventually_sync(&format!("shard {shard} to take a write again"), patience, || {
            let book = self.book.lock().expect("book");
            book.acks.iter().filter(|a| a.shard == shard && a.started >= event).map(|a| a.acked - event).min()
        })
    }

    /// The longest time in `from..until` in which `shard` acknowledged no write.
    pub fn longest_stall(&self, shard: u32, from: Instant, until: Instant) -> Duration {
        let book = self.book.lock().expect("book");
        let mut acked: Vec<Instant> = book
            .acks
            .iter()
            .filter(|a| a.shard == shard && a.acked >= from && a.acked <= until)
            .map(|a| a.acked)
            .collect();
        acked.sort_unstable();
        let mut last = from;
        let mut longest = Duration::ZERO;
        for at in acked.into_iter().chain([until]) {
            longest = longest.max(at - last);
            last = at;
        }
        longest
    }

    /// Waits (`patience` at most) until every shard took a write sent after `since`.
    pub fn every_shard_writable(&self, since: Instant, patience: Duration) {
        for shard in 0..self.shards {
            self.writable_again(shard, since, patience);
        }
    }

    /// Stop writing and reading, then read every key once more: its last acknowledged value and
    /// version, or a later value whose outcome was unknown.
    pub fn stop(mut self) -> Report {
        self.stop.store(true, Ordering::Relaxed);
        for thread in std::mem::take(&mut self.threads) {
            thread.join().expect("a writer or reader panicked");
        }
        let expected = self.expected();
        let wrong = expected.mismatches(&self.api, &self.token);
        let mut book = self.book.lock().expect("book");
        book.violations.extend(wrong.into_iter().map(|w| format!("final read: {w}")));
        Report {
            acknowledged: book.versions.len(),
            keys: book.last.len(),
            reads: book.reads,
            failed_writes: book.failed.0,
            failed_reads: book.failed.1,
            violations: book.violations.clone(),
            expected,
        }
    }

    /// Every key with its last acknowledged (value, version), and the values of unknown outcome.
    pub fn expected(&self) -> Expected {
        let book = self.book.lock().expect("book");
        Expected { last: book.last.clone(), unknown: book.unknown.clone() }
    }
}

/// What every key must read as, once the load stopped.
pub(crate) struct Expected {
    last: BTreeMap<String, (u64, u64)>,
    unknown: BTreeMap<String, BTreeSet<u64>>,
}

impl Expected {
    /// Read every key through `api` (waiting out 503s, 30 s at most each): the keys that do not
    /// read as their last acknowledged write (or a later one of unknown outcome).
    pub fn mismatches(&self, api: &str, token: &str) -> Vec<String> {
        let mut wrong = Vec::new();
        for (key, &(value, version)) in &self.last {
            let seen =
                eventually_sync(&format!("a read of {key}"), Duration::from_secs(30), || get(api, token, key).ok());
            let later = self.unknown.get(key).is_some_and(|u| seen.is_some_and(|(v, _)| v > value && u.contains(&v)));
            if seen != Some((value, version)) && !later {
                wrong.push(format!("{key} is {seen:?}, acknowledged {value} at version {version}"));
            }
        }
        wrong
    }
}

/// Writer `w`'s keys: `KEYS_PER_SHARD` on every shard, with their shards.
fn keys_of(w: usize, shards: u32) -> Vec<(String, u32)> {
    let mut keys: Vec<(String, u32)> = Vec::new();
    for i in 0.. {
        if keys.len() == KEYS_PER_SHARD * shards as usize {
            break;
        }
        let key = format!("w{w}-k{i}");
        let shard = shoal_keyspace::shard_of(NAMESPACE, &key, shards);
        if keys.iter().filter(|(_, s)| *s == shard).count() < KEYS_PER_SHARD {
            keys.push((key, shard));
        }
    }
    keys
}

fn write_loop(api: &str, token: &str, keys: &[(String, u32)], book: &Mutex<Book>, stop: &AtomicBool) {
    let mut value = 0u64;
    while !stop.load(Ordering::Relaxed) {
        value += 1;
        let (key, shard) = &keys[value as usize % keys.len()];
        let started = Instant::now();
        match put(api, token, key, value) {
            Ok(version) => book.lock().expect("book").acked(key, *shard, value, version, started),
            Err(_) => {
                let mut book = book.lock().expect("book");
                book.failed.0 += 1;
                book.unknown.entry(key.clone()).or_default().insert(value);
            }
        }
        std::thread::sleep(PACE);
    }
}

fn read_loop(api: &str, token: &str, keys: &[(String, u32)], book: &Mutex<Book>, stop: &AtomicBool) {
    for (key, _) in keys.iter().cycle() {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let before = book.lock().expect("book").last.get(key).copied();
        let seen = get(api, token, key);
        let mut book = book.lock().expect("book");
        match seen {
            Ok(seen) => {
                book.reads += 1;
                book.check(key, before, seen, "read");
            }
            Err(_) => book.failed.1 += 1,
        }
        drop(book);
        std::thread::sleep(PACE);
    }
}
