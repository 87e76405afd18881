//! Trace context on both buses: a request made inside an exported span carries the span's
//! `traceparent` to its responder (a NATS header on NATS), an event emitted inside one carries it
//! as the CloudEvents distributed-tracing extension, and a message sent outside any span carries
//! nothing.

use bytes::Bytes;
use futures::StreamExt;
use opentelemetry::trace::TracerProvider as _;
use serde_json::json;
use shoal_bus::event::{CloudEvent, EventPublisher};
use shoal_bus::subject::{self, PluginAction};
use shoal_trace::TraceContext;
use tracing::Instrument;
use tracing_subscriber::layer::SubscriberExt;

use crate::Fixture;

const PATIENCE: std::time::Duration = std::time::Duration::from_secs(10);

/// A subscriber with an OpenTelemetry layer for this thread (the tests run on a current-thread
/// runtime), spans marked exported.
fn exported() -> tracing::subscriber::DefaultGuard {
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
    let layer = tracing_opentelemetry::layer().with_tracer(provider.tracer("bus-test"));
    shoal_trace::set_exporting(true);
    tracing::subscriber::set_default(tracing_subscriber::registry().with(layer))
}

async fn next(subscription: &mut shoal_bus::Subscription) -> shoal_bus::Message {
    tokio::time::timeout(PATIENCE, subscription.next()).await.expect("a message in time").expect("open")
}

pub async fn trace_context_rides_with_requests_and_events(fixture: &Fixture) {
    let _exported = exported();
    let (caller, responder) = (fixture.bus().await, fixture.bus().await);
    let mut requests = responder.subscribe("svc.traced").await.expect("subscribe");
    let mut events = responder.subscribe(subject::PLUGIN_EVENTS_ALL).await.expect("subscribe");
    responder.flush().await.expect("flush");

    let span = tracing::info_span!(target: shoal_trace::TARGET, "caller");
    let expected = TraceContext::of(&span).expect("an exported span has a context");
    let asking = caller.request("svc.traced", Bytes::from_static(b"?"), PATIENCE).instrument(span.clone());
    let answering = async {
        let request = next(&mut requests).await;
        assert_eq!(request.trace.as_ref(), Some(&expected), "the request carries its span's context");
        request.respond(responder.as_ref(), Bytes::from_static(b"!")).await.expect("respond");
    };
    let (reply, ()) = tokio::join!(asking, answering);
    assert_eq!(reply.expect("a reply").payload.as_ref(), b"!");

    // An event emitted in the span carries it (distributed-tracing extension), one outside
    // carries nothing.
    let publisher = EventPublisher::new(caller.clone(), "/shoal/test");
    let on = subject::plugin_event("router", "rr", PluginAction::Activated);
    let emitted = publisher.emit(on.clone(), PluginAction::Activated.event_type(), "router/rr", json!({}));
    emitted.instrument(span.clone()).await;
    publisher.emit(on, PluginAction::Activated.event_type(), "router/rr", json!({})).await;
    let event: CloudEvent = serde_json::from_slice(&next(&mut events).await.payload).expect("an event");
    assert_eq!(event.trace(), Some(expected.clone()));
    let raw: serde_json::Value = serde_json::from_slice(&event.to_json().expect("json")).expect("json");
    assert_eq!(raw["traceparent"], expected.traceparent.as_str());
    let untraced = next(&mut events).await;
    let event: CloudEvent = serde_json::from_slice(&untraced.payload).expect("an event");
    assert_eq!((event.traceparent, untraced.trace), (None, None));

    // A plain publish outside any span carries nothing.
    caller.publish("svc.traced", Bytes::new()).await.expect("publish");
    assert_eq!(next(&mut requests).await.trace, None);
}
