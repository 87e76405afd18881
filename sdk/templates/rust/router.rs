//! {{name}}: a routing rule for Shoal's gateway.
//!
//! Round-robin over the healthy endpoints. The state lives in this instance (the gateway keeps
//! one instance per worker); read from the request only what your rule needs, each read is a
//! call into the host: `request.path()`, `request.header("x-user")`, `request.client_ip()`, …

use std::cell::{Cell, RefCell};

use shoal_sdk::{Endpoint, Request, Router};

thread_local! {
    static HEALTHY: RefCell<Vec<u32>> = const { RefCell::new(Vec::new()) };
    static TURN: Cell<usize> = const { Cell::new(0) };
}

struct Rule;

impl Router for Rule {
    fn update(endpoints: Vec<Endpoint>) {
        let healthy = endpoints.iter().enumerate().filter(|(_, e)| e.healthy).map(|(i, _)| i as u32).collect();
        HEALTHY.set(healthy);
        // If `on_complete` stays empty, `shoal_sdk::routing::completions(false)` here spares the
        // gateway that call per request.
    }

    fn route(_request: &Request) -> Option<u32> {
        HEALTHY.with_borrow(|healthy| {
            if healthy.is_empty() {
                return None;
            }
            let turn = TURN.get();
            TURN.set(turn.wrapping_add(1));
            Some(healthy[turn % healthy.len()])
        })
    }

    fn on_complete(_index: u32, _status: u16, _latency_us: u64) {}
}

shoal_sdk::export_router!(Rule);
