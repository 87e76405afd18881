//! W3C trace context (`traceparent`, `tracestate`) for every hop of Shoal: HTTP headers (the
//! API, the gateway and its upstreams), bus messages and CloudEvents.
//!
//! Spans meant for the exporter carry the target [`TARGET`]: the node's text log filters that
//! target out and the OpenTelemetry layer keeps it (`shoal_node::init_tracing`), so when nothing
//! is exported those spans are disabled at their callsite and cost a cached check. Whether
//! anything is exported is decided once, at start ([`set_exporting`]); every function here that
//! would read or write a carrier answers at once when nothing is.
//!
//! The encoding is opentelemetry's `TraceContextPropagator`: this crate never parses or formats a
//! `traceparent` itself, and must never learn what the spans it links are about.

use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry_http::{HeaderExtractor, HeaderInjector};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use serde::{Deserialize, Serialize};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The target of every span Shoal makes for the trace exporter.
pub const TARGET: &str = "shoal::trace";
/// The W3C header (and CloudEvents attribute, and bus header) naming the parent span.
pub const TRACEPARENT: &str = "traceparent";
/// The W3C header carrying vendor-specific trace state.
pub const TRACESTATE: &str = "tracestate";

static EXPORTING: AtomicBool = AtomicBool::new(false);

/// Record, once at start, whether spans are exported (an OpenTelemetry layer is installed).
pub fn set_exporting(on: bool) {
    EXPORTING.store(on, Ordering::Relaxed);
}

/// Whether spans are exported: when not, no trace context is read or written anywhere.
#[inline]
pub fn exporting() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

/// The trace context of one hop as the wire carries it: what a bus message or an event holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceContext {
    /// The W3C `traceparent`: version, trace id, parent span id, flags.
    pub traceparent: String,
    /// The W3C `tracestate`, empty when there is none.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub tracestate: String,
}

impl TraceContext {
    /// The context of the current span, or `None` when nothing is exported or no span is
    /// recording.
    pub fn current() -> Option<Self> {
        if !exporting() {
            return None;
        }
        Self::of(&tracing::Span::current())
    }

    /// The context of `span`, as its children elsewhere should name their parent.
    pub fn of(span: &tracing::Span) -> Option<Self> {
        if !exporting() || span.is_none() {
            return None;
        }
        let mut carrier = Carrier::default();
        TraceContextPropagator::new().inject_context(&span.context(), &mut carrier);
        carrier.0
    }

    /// Context from the two strings a carrier held (`tracestate` may be absent).
    pub fn from_parts(traceparent: Option<&str>, tracestate: Option<&str>) -> Option<Self> {
        Some(TraceContext { traceparent: traceparent?.to_owned(), tracestate: tracestate.unwrap_or("").to_owned() })
    }

    /// Make this context the parent of `span` (which must not have been entered yet). A context
    /// the propagator cannot read leaves `span` where it was.
    pub fn adopt(&self, span: &tracing::Span) {
        if !exporting() || span.is_disabled() {
            return;
        }
        let cx = TraceContextPropagator::new().extract(self);
        if opentelemetry::trace::TraceContextExt::span(&cx).span_context().is_valid() {
            let _ = span.set_parent(cx);
        }
    }
}

impl Extractor for TraceContext {
    fn get(&self, key: &str) -> Option<&str> {
        match key {
            TRACEPARENT => Some(&self.traceparent),
            TRACESTATE if !self.tracestate.is_empty() => Some(&self.tracestate),
            _ => None,
        }
    }

    fn keys(&self) -> Vec<&str> {
        vec![TRACEPARENT, TRACESTATE]
    }
}

/// What the propagator writes, kept as a [`TraceContext`].
#[derive(Default)]
struct Carrier(Option<TraceContext>);

impl Injector for Carrier {
    fn set(&mut self, key: &str, value: String) {
        match (key, &mut self.0) {
            (TRACEPARENT, slot) => {
                let tracestate = slot.take().map(|c| c.tracestate).unwrap_or_default();
                *slot = Some(TraceContext { traceparent: value, tracestate });
            }
            (TRACESTATE, Some(context)) => context.tracestate = value,
            _ => {}
        }
    }
}

/// Make the `traceparent` (and `tracestate`) of an incoming request the parent of `span`.
pub fn adopt_headers(headers: &http::HeaderMap, span: &tracing::Span) {
    if !exporting() || span.is_disabled() || !headers.contains_key(TRACEPARENT) {
        return;
    }
    let cx = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
    if opentelemetry::trace::TraceContextExt::span(&cx).span_context().is_valid() {
        let _ = span.set_parent(cx);
    }
}

/// Write the current span's context into an outgoing request's headers, replacing any the
/// request came with (the next hop's parent is our span, not our caller's). Nothing when
/// nothing is exported or no span is current.
pub fn inject_headers(headers: &mut http::HeaderMap) {
    if !exporting() {
        return;
    }
    let span = tracing::Span::current();
    if span.is_none() {
        return;
    }
    let cx = span.context();
    if !opentelemetry::trace::TraceContextExt::span(&cx).span_context().is_valid() {
        return;
    }
    headers.remove(TRACESTATE);
    TraceContextPropagator::new().inject_context(&cx, &mut HeaderInjector(headers));
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::layer::SubscriberExt;

    fn with_exporter(f: impl FnOnce()) {
        use opentelemetry::trace::TracerProvider;
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
        let subscriber =
            tracing_subscriber::registry().with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        set_exporting(true);
        tracing::subscriber::with_default(subscriber, f);
    }

    #[test]
    fn a_context_crosses_a_carrier_and_becomes_the_parent() {
        with_exporter(|| {
            let incoming = TraceContext {
                traceparent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into(),
                tracestate: "shoal=1".into(),
            };
            let span = tracing::info_span!(target: TARGET, "child");
            incoming.adopt(&span);
            let out = span.in_scope(TraceContext::current).expect("a context inside a span");
            assert!(out.traceparent.starts_with("00-0af7651916cd43dd8448eb211c80319c-"), "{out:?}");
            assert!(!out.traceparent.contains("b7ad6b7169203331"), "the child's own span id: {out:?}");
            assert_eq!(out.tracestate, "shoal=1");

            let mut headers = http::HeaderMap::new();
            span.in_scope(|| inject_headers(&mut headers));
            assert_eq!(headers[TRACEPARENT], out.traceparent.as_str());
            let next = tracing::info_span!(target: TARGET, "next");
            adopt_headers(&headers, &next);
            let id = |c: &TraceContext| c.traceparent.split('-').nth(1).map(str::to_owned);
            assert_eq!(id(&TraceContext::of(&next).expect("context")), id(&incoming));
        });
    }

    #[test]
    fn garbage_is_no_parent() {
        with_exporter(|| {
            let span = tracing::info_span!(target: TARGET, "root");
            TraceContext { traceparent: "00-zz-yy-01".into(), tracestate: String::new() }.adopt(&span);
            let out = TraceContext::of(&span).expect("a context");
            assert!(!out.traceparent.contains("zz"));
            assert_eq!(TraceContext::from_parts(None, Some("x")), None);
        });
    }
}
