//! Weighted random: each request goes to a healthy endpoint with probability proportional to its
//! weight.

use std::cell::{Cell, RefCell};
use std::hash::{BuildHasher, Hasher};

use shoal_sdk::{Endpoint, Request, Router};

thread_local! {
    /// Per endpoint: its weight, 0 when unhealthy.
    static WEIGHTS: RefCell<Vec<u64>> = const { RefCell::new(Vec::new()) };
    /// xorshift64* state seeded from the host's randomness.
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

struct WeightedRandom;

impl Router for WeightedRandom {
    fn update(endpoints: Vec<Endpoint>) {
        // `on_complete` does nothing: spare the gateway that call per request.
        shoal_sdk::routing::completions(false);
        WEIGHTS.set(endpoints.iter().map(|e| if e.healthy { u64::from(e.weight) } else { 0 }).collect());
    }

    fn route(_request: &Request) -> Option<u32> {
        WEIGHTS.with_borrow(|weights| {
            let total: u64 = weights.iter().sum();
            if total == 0 {
                return None;
            }
            let mut r = next_u64() % total;
            for (i, &w) in weights.iter().enumerate() {
                if r < w {
                    return Some(i as u32);
                }
                r -= w;
            }
            None
        })
    }

    fn on_complete(_index: u32, _status: u16, _latency_us: u64) {}
}

shoal_sdk::export_router!(WeightedRandom);
