//! Source hash: requests with the same key go to the same endpoint, with jump consistent hashing
//! so that adding an endpoint moves only about 1/(n+1) of the keys.
//!
//! The key is the first header the route exposes to the router (e.g. a session cookie) when
//! there is one, else the client IP. When the chosen endpoint is unhealthy the key is rehashed,
//! so the fallback is also stable per key.

use shoal_sdk::{Endpoint, EndpointState, RequestInfo, Router, jump_hash};

/// FNV-1a, 64 bit: stable across hosts and versions, unlike std's randomly seeded hasher.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3))
}

struct SourceHash;

impl Router for SourceHash {
    fn update(_endpoints: Vec<Endpoint>) {}

    fn route(request: RequestInfo, states: Vec<EndpointState>) -> Option<u32> {
        let key = request.headers.first().map(|(_, v)| v.as_str()).unwrap_or(request.client_ip.as_str());
        let n = u32::try_from(states.len()).ok()?;
        if !states.iter().any(|s| s.healthy) {
            return None;
        }
        let mut hash = fnv1a(key.as_bytes());
        for _ in 0..n.max(8) {
            let pick = jump_hash(hash, n);
            if states[pick as usize].healthy {
                return Some(pick);
            }
            hash = hash.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(1);
        }
        // Unlucky rehashes: take the first healthy endpoint after the key's own.
        let start = jump_hash(fnv1a(key.as_bytes()), n);
        (0..n).map(|k| (start + k) % n).find(|&i| states[i as usize].healthy)
    }

    fn on_complete(_index: u32, _status: u16, _latency_us: u64) {}
}

shoal_sdk::export_router!(SourceHash);
