//! Least connections: each request goes to the healthy endpoint with the fewest requests in
//! flight relative to its weight (`active / weight`, as nginx's `least_conn`). Ties rotate, so
//! idle endpoints share the load instead of the first one taking it all.

use std::cell::{Cell, RefCell};

use shoal_sdk::{Endpoint, EndpointState, RequestInfo, Router};

thread_local! {
    static WEIGHTS: RefCell<Vec<u64>> = const { RefCell::new(Vec::new()) };
    static ROTATE: Cell<usize> = const { Cell::new(0) };
}

struct LeastConnections;

impl Router for LeastConnections {
    fn update(endpoints: Vec<Endpoint>) {
        // Weight 0 means "never pick" for weighted rules; here it still serves, at weight 1,
        // so that unweighted services work with this rule.
        WEIGHTS.set(endpoints.iter().map(|e| u64::from(e.weight.max(1))).collect());
    }

    fn route(_request: RequestInfo, states: Vec<EndpointState>) -> Option<u32> {
        let n = states.len();
        if n == 0 {
            return None;
        }
        let start = ROTATE.get() % n;
        ROTATE.set(start + 1);
        WEIGHTS.with_borrow(|weights| {
            let weight = |i: usize| weights.get(i).copied().unwrap_or(1);
            let mut best: Option<usize> = None;
            for k in 0..n {
                let i = (start + k) % n;
                if !states[i].healthy {
                    continue;
                }
                // Compare a/wa < b/wb as a*wb < b*wa to stay in integers.
                let better = best.is_none_or(|b| {
                    u64::from(states[i].active_requests) * weight(b) < u64::from(states[b].active_requests) * weight(i)
                });
                if better {
                    best = Some(i);
                }
            }
            best.map(|i| i as u32)
        })
    }

    fn on_complete(_index: u32, _status: u16, _latency_us: u64) {}
}

shoal_sdk::export_router!(LeastConnections);
