//! Round-robin: each request goes to the next healthy endpoint in turn.
//!
//! The counter is per instance (the gateway keeps one instance per worker), as in nginx. The rule
//! reads nothing of the request, so a call costs little more than an empty call.

use std::cell::{Cell, RefCell};

use shoal_sdk::{Endpoint, Request, Router};

thread_local! {
    static HEALTHY: RefCell<Vec<bool>> = const { RefCell::new(Vec::new()) };
    static NEXT: Cell<usize> = const { Cell::new(0) };
}

struct RoundRobin;

impl Router for RoundRobin {
    fn update(endpoints: Vec<Endpoint>) {
        // `on_complete` does nothing: spare the gateway that call per request.
        shoal_sdk::routing::completions(false);
        HEALTHY.set(endpoints.iter().map(|e| e.healthy).collect());
        NEXT.set(0);
    }

    fn route(_request: &Request) -> Option<u32> {
        HEALTHY.with_borrow(|healthy| {
            let n = healthy.len();
            let start = NEXT.get();
            // Look at each endpoint at most once, starting where the last request left off.
            let pick = (0..n).map(|k| (start + k) % n).find(|&i| healthy[i])?;
            NEXT.set((pick + 1) % n);
            Some(pick as u32)
        })
    }

    fn on_complete(_index: u32, _status: u16, _latency_us: u64) {}
}

shoal_sdk::export_router!(RoundRobin);
