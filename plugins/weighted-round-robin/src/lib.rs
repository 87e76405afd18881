//! Smooth weighted round-robin, as in nginx: with weights 5, 1, 1 the sequence is
//! a a b a c a a, not a a a a a b c — heavy endpoints are spread out, not bunched.
//!
//! Every pick adds each healthy endpoint's weight to its current weight, picks the largest, and
//! subtracts the total from the winner.

use std::cell::RefCell;

use shoal_sdk::{Endpoint, EndpointState, RequestInfo, Router};

thread_local! {
    static TABLE: RefCell<(Vec<i64>, Vec<i64>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

struct WeightedRoundRobin;

impl Router for WeightedRoundRobin {
    fn update(endpoints: Vec<Endpoint>) {
        TABLE.with_borrow_mut(|(weights, current)| {
            *weights = endpoints.iter().map(|e| i64::from(e.weight)).collect();
            *current = vec![0; endpoints.len()];
        });
    }

    fn route(_request: RequestInfo, states: Vec<EndpointState>) -> Option<u32> {
        TABLE.with_borrow_mut(|(weights, current)| {
            let mut total = 0;
            let mut best: Option<usize> = None;
            for (i, state) in states.iter().enumerate() {
                let w = weights.get(i).copied().unwrap_or(0);
                if !state.healthy || w <= 0 {
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
