//! Smooth weighted round-robin, as in nginx: with weights 5, 1, 1 the sequence is
//! a a b a c a a, not a a a a a b c — heavy endpoints are spread out, not bunched.
//!
//! Every pick adds each healthy endpoint's weight to its current weight, picks the largest, and
//! subtracts the total from the winner.

use std::cell::RefCell;

use shoal_sdk::{Endpoint, Request, Router};

thread_local! {
    /// Per endpoint: weight (0 when unhealthy or weight 0) and current weight.
    static TABLE: RefCell<(Vec<i64>, Vec<i64>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

struct WeightedRoundRobin;

impl Router for WeightedRoundRobin {
    fn update(endpoints: Vec<Endpoint>) {
        // `on_complete` does nothing: spare the gateway that call per request.
        shoal_sdk::routing::completions(false);
        TABLE.with_borrow_mut(|(weights, current)| {
            *weights = endpoints.iter().map(|e| if e.healthy { i64::from(e.weight) } else { 0 }).collect();
            *current = vec![0; endpoints.len()];
        });
    }

    fn route(_request: &Request) -> Option<u32> {
        TABLE.with_borrow_mut(|(weights, current)| {
            let mut total = 0;
            let mut best: Option<usize> = None;
            for (i, &w) in weights.iter().enumerate() {
                if w <= 0 {
                    continue;
                }
                current[i] += w;
                total += w;
                if best.is_none_or(|b| current[i] > current[b]) {
                    best = Some(i);
                }
            }
            let best = best?;
            current[best] -= total;
            Some(best as u32)
        })
    }

    fn on_complete(_index: u32, _status: u16, _latency_us: u64) {}
}

shoal_sdk::export_router!(WeightedRoundRobin);
