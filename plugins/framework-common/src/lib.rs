//! Pure code shared by the `service` and `batch` framework plugins: strict JSON field parsing with
//! errors that name the field, placement constraints (Marathon's operators), offer bookkeeping
//! (what is left of an offer, which exact ports a task takes, why nothing fits), task states, the
//! key-value store behind a small trait (with a generation-validated cache), and HTTP helpers.
//!
//! Nothing here calls the host except [`store::HostStore`], so every rule can be unit-tested
//! natively with [`store::MemStore`].

pub mod constraint;
pub mod http;
pub mod json;
pub mod openapi;
pub mod place;
pub mod state;
pub mod store;
pub mod time;
pub mod validate;
