//! Errors of loading and calling plugins.
//!
//! A plugin's *answer* is never an error here: these are the host-side failures (bad bytes, wrong
//! world, traps, deadlines, memory). Guest-visible errors (a `result` a plugin returns) stay values
//! in the typed bindings.

use std::time::Duration;

/// Why bytes could not become a loaded plugin. Every variant is the uploader's fault and maps to
/// a 4xx at the HTTP edge.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The bytes are not WebAssembly at all.
    #[error("not a WebAssembly binary (missing the `\\0asm` header)")]
    NotWasm,
    /// A core module was given where a component is needed.
    #[error(
        "this is a core WebAssembly module, not a component; build for wasm32-wasip2 or wrap it with `wasm-tools component new`"
    )]
    CoreModule,
    /// The component failed to validate or compile.
    #[error("invalid component: {0}")]
    Invalid(String),
    /// The component was built against another, incompatible version of the WIT package.
    #[error(
        "component was built against {found}, but this host implements shoal:plugin@{expected} (compatible: {compatible}); rebuild it with a matching SDK"
    )]
    IncompatibleVersion {
        /// The `shoal:plugin@x.y.z` the component refers to.
        found: String,
        /// The version this host implements.
        expected: String,
        /// Human description of the compatible range.
        compatible: String,
    },
    /// The component does not satisfy the world of its kind.
    #[error("component does not satisfy the `{world}` world: {reason}")]
    WrongWorld {
        /// World name.
        world: &'static str,
        /// What is missing or mistyped.
        reason: String,
    },
    /// Over the size limit.
    #[error("component is {size} bytes, over the limit of {limit} bytes")]
    TooLarge {
        /// Size of the upload.
        size: usize,
        /// The limit.
        limit: usize,
    },
}

/// Why one plugin call failed. The instance that failed is discarded; the plugin stays loaded.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CallError {
    /// The call ran past its deadline and was interrupted.
    #[error("plugin call exceeded its deadline of {0:?}")]
    Timeout(Duration),
    /// The plugin tried to grow its memory past the cap.
    #[error("plugin exceeded its memory limit of {limit} bytes")]
    OutOfMemory {
        /// The cap, in bytes.
        limit: usize,
    },
    /// The plugin trapped (panic, unreachable, stack overflow, bad memory access…).
    #[error("plugin trapped: {0}")]
    Trap(String),
    /// No instance could be created (pool exhausted, start function trapped).
    #[error("plugin could not be instantiated: {0}")]
    Instantiate(String),
    /// The plugin answered, but the answer breaks the contract (index out of range, too big…).
    #[error("plugin answered invalid output: {0}")]
    InvalidOutput(String),
    /// The plugin has as many instances as its quota allows, all busy: not its fault, and not
    /// counted against it (no rollback), but this call did not run.
    #[error("plugin has {0} instances, as many as its quota allows, all in use; try again")]
    Busy(usize),
}

impl CallError {
    /// A short, stable label for metrics: `timeout`, `oom`, `trap`, `instantiate`, `invalid`.
    pub fn label(&self) -> &'static str {
        match self {
            CallError::Timeout(_) => "timeout",
            CallError::OutOfMemory { .. } => "oom",
            CallError::Trap(_) => "trap",
            CallError::Instantiate(_) => "instantiate",
            CallError::InvalidOutput(_) => "invalid",
            CallError::Busy(_) => "busy",
        }
    }
}

/// Why a plugin's key-value store could not do what was asked. The plugin sees the message as a
/// `keyvalue` error (a value it can handle, never a trap).
#[derive(Debug, thiserror::Error)]
pub enum KvError {
    /// The store did not answer in time: within the backend's own bound, or before the plugin
    /// call's deadline (less the time the plugin is left to act on this error).
    #[error("the key-value store did not answer within {} ms", .0.as_millis())]
    Timeout(Duration),
    /// The plugin call's time for the store was already used up: the store was not asked.
    #[error("the plugin call's deadline leaves no time to ask the key-value store")]
    DeadlinePassed,
    /// The store cannot be reached from where the plugin runs.
    #[error("the key-value store is unavailable: {0}")]
    Unavailable(&'static str),
    /// The store failed the operation (its own error, kept as the source).
    #[error("{0}")]
    Backend(Box<dyn std::error::Error + Send + Sync>),
}

impl KvError {
    /// The store's own error (anything that converts into a boxed error, `String` included).
    pub fn backend(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> KvError {
        KvError::Backend(e.into())
    }
}
