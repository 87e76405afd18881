//! Source hash: requests with the same key go to the same endpoint, with jump consistent hashing
//! so that adding an endpoint moves only about 1/(n+1) of the keys.
//!
//! The key is the request's `X-Hash-Key` header when it has one (a session id, a user id), else
//! the client IP. When the chosen endpoint is unhealthy the key is rehashed, so the fallback is
//! also stable per key and the other keys do not move.

use std::cell::RefCell;

use shoal_sdk::{Endpoint, Request, Router, fnv1a64, jump_hash};

/// The request header whose value, when present, is the hash key instead of the client IP.
pub const KEY_HEADER: &str = "x-hash-key";

thread_local! {
    static HEALTHY: RefCell<Vec<bool>> = const { RefCell::new(Vec::new()) };
}

struct SourceHash;

impl Router for SourceHash {
    fn update(endpoints: Vec<Endpoint>) {
        // `on_complete` does nothing: spare the gateway that call per request.
        shoal_sdk::routing::completions(false);
        HEALTHY.set(endpoints.iter().map(|e| e.healthy).collect());
    }

    fn route(request: &Request) -> Option<u32> {
        HEALTHY.with_borrow(|healthy| {
            let n = u32::try_from(healthy.len()).ok()?;
            if !healthy.iter().any(|&h| h) {
                return None;
            }
            let key = request.header(KEY_HEADER).unwrap_or_else(|| request.client_ip());
            let mut hash = fnv1a64(key.as_bytes());
            for _ in 0..n.max(8) {
                let pick = jump_hash(hash, n);
                if healthy[pick as usize] {
                    return Some(pick);
                }
                hash = hash.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(1);
            }
            // Unlucky rehashes: take the first healthy endpoint after the key's own.
            let start = jump_hash(fnv1a64(key.as_bytes()), n);
            (0..n).map(|k| (start + k) % n).find(|&i| healthy[i as usize])
        })
    }

    fn on_complete(_index: u32, _status: u16, _latency_us: u64) {}
}

shoal_sdk::export_router!(SourceHash);
