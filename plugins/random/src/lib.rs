//! Random: each request goes to a healthy endpoint chosen uniformly at random.

use std::cell::{Cell, RefCell};
use std::hash::{BuildHasher, Hasher};

use shoal_sdk::{Endpoint, Request, Router};

thread_local! {
    /// Indices of the healthy endpoints.
    static HEALTHY: RefCell<Vec<u32>> = const { RefCell::new(Vec::new()) };
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
    fn update(endpoints: Vec<Endpoint>) {
        // `on_complete` does nothing: spare the gateway that call per request.
        shoal_sdk::routing::completions(false);
        HEALTHY.set((0..endpoints.len() as u32).filter(|&i| endpoints[i as usize].healthy).collect());
    }

    fn route(_request: &Request) -> Option<u32> {
        HEALTHY.with_borrow(|healthy| {
            if healthy.is_empty() {
                return None;
            }
            Some(healthy[(next_u64() % healthy.len() as u64) as usize])
        })
    }

    fn on_complete(_index: u32, _status: u16, _latency_us: u64) {}
}

shoal_sdk::export_router!(Random);
