//! Least connections: each request goes to the healthy endpoint with the fewest requests in
//! flight relative to its weight (`active / weight`, as nginx's `least_conn`). Ties rotate, so
//! idle endpoints share the load instead of the first one taking it all.
//!
//! The in-flight counts are the gateway's, read per request through `active-requests`: every
//! instance of the rule sees the same numbers.

use std::cell::{Cell, RefCell};

use shoal_sdk::{Endpoint, Request, Router};

thread_local! {
    /// Per endpoint: its weight (at least 1), or 0 when unhealthy.
    static WEIGHTS: RefCell<Vec<u64>> = const { RefCell::new(Vec::new()) };
    static ROTATE: Cell<usize> = const { Cell::new(0) };
}

struct LeastConnections;

impl Router for LeastConnections {
    fn update(endpoints: Vec<Endpoint>) {
        // `on_complete` does nothing: spare the gateway that call per request.
        shoal_sdk::routing::completions(false);
        // Weight 0 means "never pick" for weighted rules; here it still serves, at weight 1,
        // so that unweighted services work with this rule.
        WEIGHTS.set(endpoints.iter().map(|e| if e.healthy { u64::from(e.weight.max(1)) } else { 0 }).collect());
    }

    fn route(request: &Request) -> Option<u32> {
        WEIGHTS.with_borrow(|weights| {
            let n = weights.len();
            if n == 0 {
                return None;
            }
            let active = request.active_requests();
            let start = ROTATE.get() % n;
            ROTATE.set(start + 1);
            let active = |i: usize| u64::from(active.get(i).copied().unwrap_or(0));
            let mut best: Option<usize> = None;
            for k in 0..n {
                let i = (start + k) % n;
                if weights[i] == 0 {
                    continue;
                }
                // Compare a/wa < b/wb as a*wb < b*wa to stay in integers.
                if best.is_none_or(|b| active(i) * weights[b] < active(b) * weights[i]) {
                    best = Some(i);
                }
            }
            best.map(|i| i as u32)
        })
    }

    fn on_complete(_index: u32, _status: u16, _latency_us: u64) {}
}

shoal_sdk::export_router!(LeastConnections);
