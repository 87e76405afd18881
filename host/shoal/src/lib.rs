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
use tracing_subscriber::Layer;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// How log lines are written to stderr (`--log-format`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One human-readable line per event (colours on a terminal).
    #[default]
    Text,
    /// One JSON object per line: `timestamp`, `level`, `target`, `fields` (with `message`) and the
    /// spans it happened in.
    Json,
}

/// The filter of the text or JSON log when `RUST_LOG` is not set.
const DEFAULT_FILTER: &str = "warn,shoal=info";

/// The log's filter: `RUST_LOG` or [`DEFAULT_FILTER`], without the exporter's spans.
fn log_filter() -> EnvFilter {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    filter.add_directive(format!("{}=off", shoal_trace::TARGET).parse().expect("a valid directive"))
}

/// Install the tracing subscriber: `RUST_LOG` filters (default `info` for Shoal's crates, `warn`
/// for dependencies), logs go to stderr as text or JSON lines (`format`), and spans are exported
/// with OTLP over HTTP when `OTEL_EXPORTER_OTLP_ENDPOINT` is set (the standard OpenTelemetry
/// variables apply, e.g. `OTEL_BSP_SCHEDULE_DELAY`).
///
/// The spans made for the exporter (target [`shoal_trace::TARGET`]: a request through the API
/// or the gateway, a plugin call, a launch) never reach the log, and when nothing is exported
/// they are disabled at their callsite, so the gateway's hot path pays nothing for them. The
/// exporter gets them at `info` whatever `RUST_LOG` says, with the spans and events `RUST_LOG`
/// (or the default) lets through. Call it before starting an async runtime; keep the returned
/// provider and shut it down at exit so the last spans are flushed.
pub fn init_tracing(format: LogFormat) -> Option<SdkTracerProvider> {
    let log = match format {
        LogFormat::Text => {
            let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(ansi)
                .with_filter(log_filter())
                .boxed()
        }
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_writer(std::io::stderr)
            .with_current_span(true)
            .with_span_list(false)
            .with_filter(log_filter())
            .boxed(),
    };
    let registry = tracing_subscriber::registry().with(log);
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
    let exported = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER))
        .add_directive(format!("{}=info", shoal_trace::TARGET).parse().expect("a valid directive"));
    // Lean spans: no busy/idle timings (two clock reads per enter and exit) and no thread
    // attributes (a request hops between Tokio's threads); the source location stays.
    let layer = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("shoal"))
        .with_tracked_inactivity(false)
        .with_threads(false)
        .with_filter(exported);
    if registry.with(layer).try_init().is_ok() {
        shoal_trace::set_exporting(true);
    }
    Some(provider)
}
