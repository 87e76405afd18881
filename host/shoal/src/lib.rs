//! The `shoal` binary's library: the node wiring ([`node`]) and the command line ([`cli`]).
//! `main.rs` only parses flags and calls [`cli::run`]; tests drive the same functions.

pub mod cli;
pub mod node;

/// Install the tracing subscriber: `RUST_LOG` filters (default `info` for Shoal, `warn` for
/// dependencies), logs to stderr.
pub fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn,shoal=info,shoal_api=info"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}
