//! A `wasi:cli` command task that uses the state store through `wasi:keyvalue@0.2.0-draft`, for
//! the Wasm executor's tests. It opens the bucket named by `BUCKET` (default `tasks`), runs the
//! operation its arguments name, prints the outcome to stdout and exits 0, or prints
//! `error: <the error>` and exits 1:
//!
//! - `set KEY VALUE` → `ok`; `get KEY` → the value, or `(none)`; `delete KEY` → `ok`;
//!   `exists KEY` → `true` or `false`;
//! - `incr KEY [DELTA]` → the new count (`atomics.increment`, DELTA defaults to 1);
//! - `list` → every key, one a line, following `list-keys` cursors to the last page, then
//!   `pages: N`;
//! - `set-many K=V…` → `ok`; `get-many K…` → `K=V` or `K: (none)` a line; `delete-many K…` → `ok`;
//! - `set-big KEY BYTES` → stores a value of BYTES bytes (to test the size limit);
//! - `open-denied NAME` → opens bucket NAME expecting `access-denied`: prints `denied`, or what
//!   it got instead and exits 1;
//! - `forge-cursor N` → `list-keys` with a cursor the host never handed out.
//!
//! Without arguments it takes them from `WASM_KV_ARGS` (what a framework-launched task uses).

// Generated import glue is unsafe by nature; this crate's own code is not.
#![allow(unsafe_code, missing_docs)]

// The WIT is the executor's own copy of `wasi:keyvalue`, so guest and host cannot drift apart.
wit_bindgen::generate!({ world: "shoal:task/imports", path: "../../wasm-executor/wit", generate_all });

use wasi::keyvalue::store::{self, Bucket, Error};
use wasi::keyvalue::{atomics, batch};

fn main() {
    // Tasks launched by a framework get no arguments; `WASM_KV_ARGS` (split on spaces) stands in.
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    if args.is_empty()
        && let Ok(line) = std::env::var("WASM_KV_ARGS")
    {
        args = line.split_whitespace().map(str::to_owned).collect();
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match run(&args) {
        Ok(lines) => {
            for line in lines {
                println!("{line}");
            }
        }
        Err(message) => {
            println!("error: {message}");
            std::process::exit(1);
        }
    }
}

fn describe(err: Error) -> String {
    match err {
        Error::NoSuchStore => "no-such-store".into(),
        Error::AccessDenied => "access-denied".into(),
        Error::Other(message) => format!("other: {message}"),
    }
}

fn open() -> Result<Bucket, String> {
    let name = std::env::var("BUCKET").unwrap_or_else(|_| "tasks".into());
    store::open(&name).map_err(describe)
}

fn run(args: &[&str]) -> Result<Vec<String>, String> {
    let ok = || Ok(vec!["ok".to_owned()]);
    match args {
        ["set", key, value] => {
            open()?.set(key, value.as_bytes()).map_err(describe)?;
            ok()
        }
        ["get", key] => Ok(vec![match open()?.get(key).map_err(describe)? {
            Some(value) => String::from_utf8_lossy(&value).into_owned(),
            None => "(none)".into(),
        }]),
        ["delete", key] => {
            open()?.delete(key).map_err(describe)?;
            ok()
        }
        ["exists", key] => Ok(vec![open()?.exists(key).map_err(describe)?.to_string()]),
        ["incr", key, rest @ ..] => {
            let delta = match rest {
                [] => 1,
                [delta] => delta.parse().map_err(|_| format!("bad delta {delta:?}"))?,
                _ => return Err("usage: incr KEY [DELTA]".into()),
            };
            Ok(vec![atomics::increment(&open()?, key, delta).map_err(describe)?.to_string()])
        }
        ["list"] => {
            let bucket = open()?;
            let (mut lines, mut cursor, mut pages) = (Vec::new(), None, 0);
            loop {
                let page = bucket.list_keys(cursor).map_err(describe)?;
                pages += 1;
                lines.extend(page.keys);
                match page.cursor {
                    Some(next) => cursor = Some(next),
                    None => break,
                }
            }
            lines.push(format!("pages: {pages}"));
            Ok(lines)
        }
        ["set-many", pairs @ ..] => {
            let pairs: Vec<(String, Vec<u8>)> = pairs
                .iter()
                .map(|p| p.split_once('=').map(|(k, v)| (k.to_owned(), v.as_bytes().to_vec())))
                .collect::<Option<_>>()
                .ok_or("usage: set-many KEY=VALUE…")?;
            batch::set_many(&open()?, &pairs).map_err(describe)?;
            ok()
        }
        ["get-many", keys @ ..] => {
            let keys: Vec<String> = keys.iter().map(|k| (*k).to_owned()).collect();
            let values = batch::get_many(&open()?, &keys).map_err(describe)?;
            Ok(keys
                .iter()
                .zip(values)
                .map(|(key, pair)| match pair {
                    Some((k, v)) => format!("{k}={}", String::from_utf8_lossy(&v)),
                    None => format!("{key}: (none)"),
                })
                .collect())
        }
        ["delete-many", keys @ ..] => {
            let keys: Vec<String> = keys.iter().map(|k| (*k).to_owned()).collect();
            batch::delete_many(&open()?, &keys).map_err(describe)?;
            ok()
        }
        ["set-big", key, bytes] => {
            let size: usize = bytes.parse().map_err(|_| format!("bad size {bytes:?}"))?;
            open()?.set(key, &vec![b'x'; size]).map_err(describe)?;
            ok()
        }
        ["open-denied", name] => match store::open(name) {
            Err(Error::AccessDenied) => Ok(vec!["denied".into()]),
            Err(other) => Err(format!("expected access-denied, got {}", describe(other))),
            Ok(_) => Err(format!("bucket {name:?} opened, but it should be denied")),
        },
        ["forge-cursor", token] => {
            let token: u64 = token.parse().map_err(|_| format!("bad cursor {token:?}"))?;
            let page = open()?.list_keys(Some(token)).map_err(describe)?;
            Ok(page.keys)
        }
        _ => Err(format!("unknown operation {args:?}")),
    }
}
