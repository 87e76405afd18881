//! The sandboxed WebAssembly plugin runtime of Shoal.
//!
//! This crate turns component bytes into something the rest of the host can call safely:
//!
//! - [`Runtime`] owns the wasmtime [`wasmtime::Engine`] (component model, pooling allocator, epoch
//!   interruption) and a compile cache keyed by the sha256 digest of the bytes, in memory and on
//!   disk ([`cache`]), so a component is compiled once per digest and machine;
//! - [`Runtime::load`] type-checks a component against a [`World`] (its imports must be a subset
//!   of what that world grants, its exports must be the world's) and yields a [`Plugin`];
//! - [`Plugin::call`] runs one bounded call on a pooled instance: a wall-clock deadline (epoch
//!   ticks), a memory cap, no ambient capability. A trap, a timeout or an out-of-memory fails
//!   that call with a typed [`CallError`]; the instance is discarded and the host keeps serving.
//!
//! What this crate must never do: know what a plugin is *for*. It knows worlds only through the
//! [`World`] trait; the bindings of the four Shoal worlds and their typed calls live in
//! `shoal-abi`. The host imports every world may use (log, clock, keyvalue, probe, route-request) are
//! implemented here, in [`imports`], because they are capabilities, not policy.

pub mod cache;
mod engine;
mod error;
pub mod imports;
mod pool;
mod probe;
mod state;
pub mod wasi;

pub use engine::{CallLimits, Runtime, RuntimeConfig, SetupError};
pub use error::{CallError, KvError, LoadError};
pub use pool::{Instance, Plugin, PluginStats, World};
pub use state::{HostState, KvBackend, MemoryKv, PluginScope, ProbeTarget, RouteRequest};

/// The version of the WIT package `shoal:plugin` this host implements.
pub const PACKAGE_VERSION: &str = "0.1.0";

/// The name of the WIT package, without version.
pub const PACKAGE_NAME: &str = "shoal:plugin";
