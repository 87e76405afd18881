//! Random: each request goes to a healthy endpoint chosen uniformly at random.

use std::cell::Cell;
use std::hash::{BuildHasher, Hasher};

use shoal_sdk::{Endpoint, EndpointState, RequestInfo, Router};

thread_local! {
    /// xorshift64* state, seeded from the host's randomness (std's RandomState draws it from
    /// `wasi:random`), so two instances never share a sequence.
    static STATE: Cell<u64> = Cell::new(std::collections::hash_map::RandomState::new().build_hasher().finish() | 1);
}

fn next_u64() -> u64 {
    let mut x = STATE.get();
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    STATE.set(x);
    x.wrapping_mul(0x2545_F491_4F6C_DD1D)
}

struct Random;

impl Router for Random {
    fn update(_endpoints: Vec<Endpoint>) {}

    fn route(_request: RequestInfo, states: Vec<EndpointState>) -> Option<u32> {
        let healthy = states.iter().filter(|s| s.healthy).count();
        if healthy == 0 {
            return None;
        }
        let nth = (next_u64() % healthy as u64) as usize;
        states.iter().enumerate().filter(|(_, s)| s.healthy).nth(nth).map(|(i, _)| i as u32)
    }

    fn on_complete(_index: u32, _status: u16, _latency_us: u64) {}
}

shoal_sdk::export_router!(Random);
