//! A router built against `shoal:plugin@0.2.0`, which this host does not speak.

// Generated export glue is unsafe by nature; this crate has no other code.
#![allow(unsafe_code, missing_docs)]

wit_bindgen::generate!({ world: "router", path: "wit" });

struct Future;

impl exports::shoal::plugin::routing::Guest for Future {
    fn route(_path: String) -> Option<u32> {
        Some(0)
    }
}

export!(Future);
