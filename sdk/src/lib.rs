//! The Rust SDK for Shoal plugins.
//!
//! A Shoal plugin is a WebAssembly component that implements one *world* of the WIT package
//! `shoal:plugin@0.1.0` (in the repository's `wit/` folder):
//!
//! | kind | world | implement | export with |
//! | --- | --- | --- | --- |
//! | allocation policy | `allocator` | [`Allocator`] | [`export_allocator!`] |
//! | routing rule | `router` | [`Router`] | [`export_router!`] |
//! | health check | `health-check` | [`HealthCheck`] | [`export_health_check!`] |
//! | scheduler framework | `framework` | [`Framework`] | [`export_framework!`] |
//!
//! A plugin crate is a `cdylib` built with `cargo build --release --target wasm32-wasip2`; the
//! resulting `.wasm` file is the component you upload with `shoal plugin push`, and you can try it
//! on a fixture first with `shoal plugin check --kind router target/.../my_router.wasm --input
//! fixture.json`.
//!
//! What a plugin may use is exactly what its world imports: [`log`], [`clock`], the plugin's own
//! [`kv`] store, and for health checks the [`probe`] of the checked task. There is no filesystem,
//! no network, no environment: the host links the standard WASI interfaces that Rust's standard
//! library needs with an empty capability set, so `std::fs::read` fails and `println!` goes
//! nowhere. Every call runs under a deadline and a memory cap; a plugin that traps, loops or runs
//! out of memory fails that one call and its instance is thrown away.
//!
//! # A complete router
//!
//! ```no_run
//! use shoal_sdk::{Endpoint, Request, Router};
//! use std::cell::{Cell, RefCell};
//!
//! struct RoundRobin;
//!
//! thread_local! {
//!     static HEALTHY: RefCell<Vec<bool>> = const { RefCell::new(Vec::new()) };
//!     static NEXT: Cell<usize> = const { Cell::new(0) };
//! }
//!
//! impl Router for RoundRobin {
//!     // Called before the first request and whenever the endpoints or their health change.
//!     fn update(endpoints: Vec<Endpoint>) {
//!         HEALTHY.set(endpoints.iter().map(|e| e.healthy).collect());
//!         // `on_complete` below does nothing: spare the gateway that call per request.
//!         shoal_sdk::routing::completions(false);
//!     }
//!
//!     // Reads nothing of the request: a rule pays only for what it reads
//!     // (`request.path()`, `request.header("x-user")`, `request.active_requests()`, …).
//!     fn route(_request: &Request) -> Option<u32> {
//!         HEALTHY.with_borrow(|healthy| {
//!             let n = healthy.len();
//!             // Try each endpoint at most once, starting after the last one picked.
//!             let pick = (0..n).map(|k| (NEXT.get() + k) % n).find(|&i| healthy[i])?;
//!             NEXT.set(pick + 1);
//!             Some(pick as u32)
//!         })
//!     }
//!
//!     fn on_complete(_index: u32, _status: u16, _latency_us: u64) {}
//! }
//!
//! shoal_sdk::export_router!(RoundRobin);
//! ```
//!
//! Instances of a plugin share nothing but the [`kv`] store: the host keeps several instances
//! alive (one per worker on hot paths), so per-instance state such as the counter above is local
//! to one instance, the way nginx keeps round-robin state per worker.

mod helpers;

/// Bindings of every host import, generated once and shared by the four worlds.
#[doc(hidden)]
pub mod host {
    wit_bindgen::generate!({
        world: "host",
        path: "../wit",
    });
}

/// Bindings of the `allocator` world.
#[doc(hidden)]
pub mod allocator {
    wit_bindgen::generate!({
        world: "allocator",
        path: "../wit",
        with: {
            "shoal:plugin/types@0.1.0": crate::host::shoal::plugin::types,
            "shoal:plugin/log@0.1.0": crate::host::shoal::plugin::log,
            "shoal:plugin/clock@0.1.0": crate::host::shoal::plugin::clock,
            "shoal:plugin/keyvalue@0.1.0": crate::host::shoal::plugin::keyvalue,
        },
        pub_export_macro: true,
        export_macro_name: "export_allocator",
        default_bindings_module: "shoal_sdk::allocator",
    });
}

/// Bindings of the `router` world.
#[doc(hidden)]
pub mod router {
    wit_bindgen::generate!({
        world: "router",
        path: "../wit",
        with: {
            "shoal:plugin/types@0.1.0": crate::host::shoal::plugin::types,
            "shoal:plugin/log@0.1.0": crate::host::shoal::plugin::log,
            "shoal:plugin/clock@0.1.0": crate::host::shoal::plugin::clock,
            "shoal:plugin/keyvalue@0.1.0": crate::host::shoal::plugin::keyvalue,
            "shoal:plugin/route-request@0.1.0": crate::host::shoal::plugin::route_request,
        },
        pub_export_macro: true,
        export_macro_name: "export_router",
        default_bindings_module: "shoal_sdk::router",
    });
}

/// Bindings of the `health-check` world.
#[doc(hidden)]
pub mod health_check {
    wit_bindgen::generate!({
        world: "health-check",
        path: "../wit",
        with: {
            "shoal:plugin/log@0.1.0": crate::host::shoal::plugin::log,
            "shoal:plugin/clock@0.1.0": crate::host::shoal::plugin::clock,
            "shoal:plugin/keyvalue@0.1.0": crate::host::shoal::plugin::keyvalue,
            "shoal:plugin/probe@0.1.0": crate::host::shoal::plugin::probe,
        },
        pub_export_macro: true,
        export_macro_name: "export_health_check",
        default_bindings_module: "shoal_sdk::health_check",
    });
}

/// Bindings of the `framework` world.
#[doc(hidden)]
pub mod framework {
    wit_bindgen::generate!({
        world: "framework",
        path: "../wit",
        with: {
            "shoal:plugin/types@0.1.0": crate::host::shoal::plugin::types,
            "shoal:plugin/log@0.1.0": crate::host::shoal::plugin::log,
            "shoal:plugin/clock@0.1.0": crate::host::shoal::plugin::clock,
            "shoal:plugin/keyvalue@0.1.0": crate::host::shoal::plugin::keyvalue,
        },
        pub_export_macro: true,
        export_macro_name: "export_framework",
        default_bindings_module: "shoal_sdk::framework",
    });
}

pub use host::shoal::plugin::types::{
    Agent, Attribute, ClusterSnapshot, DeclineFilter, Endpoint, Framework as FrameworkInfo, HttpRequest, HttpResponse,
    Offer, PortRange, Resources, Scalar, TaskState, TaskStatus,
};

/// The request a router is routing (`route-request.request`): read only what the rule needs —
/// `method()`, `host()`, `path()`, `client_ip()`, `header(name)`, `active_requests()`; each read
/// is a call into the host.
pub use host::shoal::plugin::route_request::Request;

/// Implement this for an allocation policy, then `export_allocator!(YourType);`.
pub use allocator::exports::shoal::plugin::allocation::Guest as Allocator;
/// Implement this for a framework, then `export_framework!(YourType);`.
pub use framework::exports::shoal::plugin::scheduling::Guest as Framework;
/// Implement this for a health check, then `export_health_check!(YourType);`.
pub use health_check::exports::shoal::plugin::health::Guest as HealthCheck;
/// Implement this for a routing rule, then `export_router!(YourType);`.
pub use router::exports::shoal::plugin::routing::Guest as Router;

/// Types of the health-check world.
pub mod health {
    pub use crate::health_check::exports::shoal::plugin::health::{CheckResult, CheckStatus, CheckTarget};
}

/// Types of the framework world.
pub mod scheduling {
    pub use crate::framework::exports::shoal::plugin::scheduling::{
        Decline, Launch, OfferInfo, Operation, TaskCommand, TaskSpec,
    };
}

/// Logging to the host, attributed to this plugin.
pub mod log {
    pub use crate::host::shoal::plugin::log::Level;
    use crate::host::shoal::plugin::log::log;

    /// Log at trace level.
    pub fn trace(message: &str) {
        log(Level::Trace, message)
    }
    /// Log at debug level.
    pub fn debug(message: &str) {
        log(Level::Debug, message)
    }
    /// Log at info level.
    pub fn info(message: &str) {
        log(Level::Info, message)
    }
    /// Log at warn level.
    pub fn warn(message: &str) {
        log(Level::Warn, message)
    }
    /// Log at error level.
    pub fn error(message: &str) {
        log(Level::Error, message)
    }
}

/// The host's clocks.
pub mod clock {
    pub use crate::host::shoal::plugin::clock::{monotonic_ns, now_ms};
}

/// The plugin's own key-value store (shared by all its instances and versions).
pub mod kv {
    pub use crate::host::shoal::plugin::keyvalue::{Error, KeyResponse, delete, exists, get, list_keys, set};
}

/// Calls a router makes to the gateway (routers only).
pub mod routing {
    /// Whether this router wants `on_complete` calls (yes until it says no): a rule that ignores
    /// them calls `completions(false)` from `update`, and the gateway saves one Wasm call per
    /// request.
    pub use crate::host::shoal::plugin::route_request::completions;
}

/// Probes of the checked task's address (health checks only).
pub mod probe {
    pub use crate::host::shoal::plugin::probe::{HttpReply, ProbeError, http_get, tcp_connect};
}

/// Stable hashing for policies that place things (the source-hash router): the very functions
/// that place keys on the state store's shards, from `shoal-keyspace`.
pub use shoal_keyspace::{fnv1a64, jump_hash};

/// The task-label contract (`shoal.service`, `shoal.route.path`, …): the names frameworks put on
/// the tasks they launch and the host reads, with the one list of labels apps may not set.
pub use shoal_protocol::labels;

pub use allocator::export_allocator;
pub use framework::export_framework;
pub use health_check::export_health_check;
pub use router::export_router;
