//! The `shoal` binary's library: the node wiring ([`node`]) and the command line ([`cli`]).
//! `main.rs` only parses flags and calls [`cli::run`]; tests drive the same functions.

pub mod admin;
pub mod cli;
pub mod edge;
pub mod health;
pub mod import;
pub mod leadership;
pub mod node;
pub mod plugin_kv;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Install the tracing subscriber: `RUST_LOG` filters (default `info` for Shoal's crates, `warn`
/// for dependencies), logs go to stderr, and spans are exported with OTLP over HTTP when
/// `OTEL_EXPORTER_OTLP_ENDPOINT` is set (the standard OpenTelemetry variables apply). Call it
/// before starting an async runtime; keep the returned provider and shut it down at exit so the
/// last spans are flushed.
pub fn init_tracing() -> Option<SdkTracerProvider> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn,shoal=info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_ansi(ansi);
    let registry = tracing_subscriber::registry().with(filter).with(fmt);
    if std::env::var_os("OTEL_EXPORTER_OTLP_ENDPOINT").is_none() {
        let _ = registry.try_init();
        return None;
    }
    let exporter = match opentelemetry_otlp::SpanExporter::builder().with_http().build() {
        Ok(exporter) => exporter,
        Err(err) => {
            let _ = registry.try_init();
            tracing::error!(cause = %err, "OpenTelemetry export disabled");
            return None;
        }
    };
    let resource = opentelemetry_sdk::Resource::builder().with_service_name("shoal").build();
    let provider = SdkTracerProvider::builder().with_batch_exporter(exporter).with_resource(resource).build();
    let layer = tracing_opentelemetry::layer().with_tracer(provider.tracer("shoal"));
    let _ = registry.with(layer).try_init();
    Some(provider)
}
