//! The API's server spans for the trace exporter: every request gets an `api.request` span
//! (method, path, matched route, status) whose parent is the request's `traceparent`, and the
//! handlers' work — framework calls, bus requests, events — happens inside it, so it joins the
//! caller's trace. Nothing here reaches the text log (see `shoal_trace::TARGET`), and when
//! nothing is exported the span is disabled and the request passes straight through.

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument;

/// The outermost layer: the request's span, parented on its `traceparent`.
pub(crate) async fn server_span(req: Request, next: Next) -> Response {
    let span = tracing::info_span!(
        target: shoal_trace::TARGET, "api.request",
        otel.kind = "server", http.request.method = %req.method(), url.path = %req.uri().path(),
        http.route = tracing::field::Empty, http.response.status_code = tracing::field::Empty,
    );
    if span.is_disabled() {
        return next.run(req).await;
    }
    shoal_trace::adopt_headers(req.headers(), &span);
    let response = next.run(req).instrument(span.clone()).await;
    span.record("http.response.status_code", response.status().as_u16());
    response
}

/// A route layer (it runs once the router matched): names the route on the request's span.
pub(crate) async fn route(req: Request, next: Next) -> Response {
    if shoal_trace::exporting()
        && let Some(path) = req.extensions().get::<MatchedPath>()
    {
        tracing::Span::current().record("http.route", path.as_str());
    }
    next.run(req).await
}
