//! Round-robin: each request goes to the next healthy endpoint in turn.
//!
//! The counter is per instance (the gateway keeps one instance per worker), as in nginx.

use std::cell::Cell;

use shoal_sdk::{Endpoint, EndpointState, RequestInfo, Router};

thread_local! {
    static NEXT: Cell<usize> = const { Cell::new(0) };
}

struct RoundRobin;

impl Router for RoundRobin {
    fn update(_endpoints: Vec<Endpoint>) {
        NEXT.set(0);
    }

    fn route(_request: RequestInfo, states: Vec<EndpointState>) -> Option<u32> {
        let n = states.len();
        let start = NEXT.get();
        // Look at each endpoint at most once, starting where the last request left off.
        let pick = (0..n).map(|k| (start + k) % n).find(|&i| states[i].healthy)?;
        NEXT.set((pick + 1) % n);
        Some(pick as u32)
    }

    fn on_complete(_index: u32, _status: u16, _latency_us: u64) {}
}

shoal_sdk::export_router!(RoundRobin);
