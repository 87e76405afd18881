//! The envelope of every Shoal event: CloudEvents 1.0 in its JSON format.
//!
//! Every state change is published under `shoal.evt.>` (see [`crate::subject`]) as one
//! [`CloudEvent`], so `shoal events tail`, the SSE endpoint and any external consumer read one shape.
//! Emitting an event is a side effect of a state change, never a condition for it: the
//! [`EventPublisher`] logs a failed publish and carries on.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::{Bus, BusError, SharedBus};

/// The CloudEvents version Shoal speaks.
pub const SPEC_VERSION: &str = "1.0";
/// The content type of every Shoal event's `data`.
pub const JSON_CONTENT_TYPE: &str = "application/json";

/// One CloudEvents 1.0 event, serialised with the attribute names of the JSON event format.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CloudEvent {
    /// Always `"1.0"`.
    pub specversion: String,
    /// Unique per event (a UUID v4), so consumers can deduplicate redeliveries.
    pub id: String,
    /// Who emitted it, as a URI reference, e.g. `/shoal/dev` or `/shoal/master/m1`.
    pub source: String,
    /// What happened, reverse-DNS style, e.g. `io.shoal.plugin.activated`.
    #[serde(rename = "type")]
    pub r#type: String,
    /// When it happened, RFC 3339 in UTC.
    pub time: String,
    /// What it happened to, e.g. `allocator/drf` or an agent id.
    pub subject: String,
    /// Always `application/json`.
    pub datacontenttype: String,
    /// The event-specific body.
    pub data: serde_json::Value,
    /// The CloudEvents distributed-tracing extension: the W3C `traceparent` of the span the event
    /// was emitted in (absent when spans are not exported). A consumer makes it the parent of
    /// its span for the event ([`CloudEvent::trace`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    /// The W3C `tracestate` that goes with [`CloudEvent::traceparent`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracestate: Option<String>,
}

/// The process every event of it names in its `source`: `/shoal/<role>/<node>`.
static ORIGIN: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Names this process in the `source` of every event it emits from now on: `/shoal/<role>/<node>`
/// (e.g. `/shoal/master/m1`, `/shoal/dev/laptop`). The first call wins.
pub fn set_origin(role: &str, node: &str) {
    let _ = ORIGIN.set(format!("/shoal/{role}/{node}"));
}

/// The `source` of an event of `component` of this process: `/shoal/<role>/<node>/<component>`
/// (`/shoal/<component>` before [`set_origin`]).
pub fn source(component: &str) -> String {
    format!("{}/{component}", ORIGIN.get().map_or("/shoal", String::as_str))
}

impl CloudEvent {
    /// A new event with a fresh id, stamped now.
    pub fn new(
        source: impl Into<String>,
        r#type: impl Into<String>,
        subject: impl Into<String>,
        data: serde_json::Value,
    ) -> Self {
        let trace = shoal_trace::TraceContext::current();
        let tracestate = trace.as_ref().map(|t| t.tracestate.clone()).filter(|s| !s.is_empty());
        CloudEvent {
            traceparent: trace.map(|t| t.traceparent),
            tracestate,
            specversion: SPEC_VERSION.to_owned(),
            id: uuid::Uuid::new_v4().to_string(),
            source: source.into(),
            r#type: r#type.into(),
            time: now_rfc3339(),
            subject: subject.into(),
            datacontenttype: JSON_CONTENT_TYPE.to_owned(),
            data,
        }
    }

    /// The trace context the event carries (distributed-tracing extension), to parent the span
    /// that handles it.
    pub fn trace(&self) -> Option<shoal_trace::TraceContext> {
        shoal_trace::TraceContext::from_parts(self.traceparent.as_deref(), self.tracestate.as_deref())
    }

    /// The event as JSON bytes, the payload that goes on the bus.
    pub fn to_json(&self) -> Result<bytes::Bytes, BusError> {
        serde_json::to_vec(self).map(bytes::Bytes::from).map_err(|err| BusError::Encode(err.to_string()))
    }
}

fn now_rfc3339() -> String {
    let now = OffsetDateTime::now_utc();
    // Formatting only fails for years outside 0..=9999, which the system clock cannot produce; fall
    // back to the Unix timestamp in seconds rather than invent a date.
    now.format(&Rfc3339).unwrap_or_else(|_| now.unix_timestamp().to_string())
}

/// Publishes `event` as JSON on `subject` (a `shoal.evt.…` subject from [`crate::subject`]).
pub async fn publish_event(bus: &dyn Bus, subject: &str, event: &CloudEvent) -> Result<(), BusError> {
    bus.publish(subject, event.to_json()?).await
}

/// Emits events on behalf of one source; what the roles hold to announce their state changes.
#[derive(Clone)]
pub struct EventPublisher {
    bus: SharedBus,
    source: String,
}

impl EventPublisher {
    /// A publisher that stamps every event with `source` (e.g. `/shoal/dev`).
    pub fn new(bus: SharedBus, source: impl Into<String>) -> Self {
        EventPublisher { bus, source: source.into() }
    }

    /// The bus events go to.
    pub fn bus(&self) -> &SharedBus {
        &self.bus
    }

    /// The CloudEvents `source` of every event emitted.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Publishes a new event of type `ty` about `cloud_subject` on bus subject `subject`.
    ///
    /// Never fails: the state change the event reports has already happened, so a bus hiccup must
    /// not turn it into an error for the caller. Failures are logged.
    pub async fn emit(&self, subject: String, ty: &str, cloud_subject: &str, data: serde_json::Value) {
        let event = CloudEvent::new(self.source.as_str(), ty, cloud_subject, data);
        if let Err(err) = publish_event(self.bus.as_ref(), &subject, &event).await {
            tracing::warn!(cause = %err, %subject, r#type = ty, "event not published");
        }
    }
}

impl std::fmt::Debug for EventPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventPublisher").field("bus", &self.bus.kind()).field("source", &self.source).finish()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use futures::StreamExt;
    use serde_json::json;

    use super::*;
    use crate::LocalBus;
    use crate::subject::{self, PluginAction};

    #[test]
    fn json_shape_has_every_required_attribute() {
        let event =
            CloudEvent::new("/shoal/dev", PluginAction::Activated.event_type(), "allocator/drf", json!({"version": 3}));
        let value = serde_json::to_value(&event).expect("serialise");
        let object = value.as_object().expect("an object");
        let mut keys: Vec<&str> = object.keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(keys, ["data", "datacontenttype", "id", "source", "specversion", "subject", "time", "type"]);
        assert_eq!(value["specversion"], "1.0");
        assert_eq!(value["type"], "io.shoal.plugin.activated");
        assert_eq!(value["source"], "/shoal/dev");
        assert_eq!(value["subject"], "allocator/drf");
        assert_eq!(value["datacontenttype"], "application/json");
        assert_eq!(value["data"], json!({"version": 3}));

        let id = value["id"].as_str().expect("id is a string");
        let id = uuid::Uuid::parse_str(id).expect("id is a uuid");
        assert_eq!(id.get_version(), Some(uuid::Version::Random));

        let time = value["time"].as_str().expect("time is a string");
        let parsed = OffsetDateTime::parse(time, &Rfc3339).expect("time is rfc 3339");
        assert!(parsed.offset().is_utc());
        assert!(time.ends_with('Z'), "{time} should be in utc");
    }

    #[test]
    fn json_round_trips_and_reads_foreign_events() {
        let event = CloudEvent::new("/shoal/master", "io.shoal.task.running", "web", json!(null));
        let bytes = event.to_json().expect("encode");
        let back: CloudEvent = serde_json::from_slice(&bytes).expect("decode");
        assert_eq!(back, event);

        let foreign = r#"{"specversion":"1.0","id":"x","source":"/a","type":"t","time":"2024-01-02T03:04:05Z",
            "subject":"s","datacontenttype":"application/json","data":{"k":[1,2]}}"#;
        let parsed: CloudEvent = serde_json::from_str(foreign).expect("decode");
        assert_eq!(parsed.r#type, "t");
        assert_eq!(parsed.data, json!({"k": [1, 2]}));
    }

    #[test]
    fn ids_are_unique() {
        let a = CloudEvent::new("/s", "t", "x", json!({}));
        let b = CloudEvent::new("/s", "t", "x", json!({}));
        assert_ne!(a.id, b.id);
    }

    #[tokio::test]
    async fn publisher_emits_on_the_bus_and_swallows_failures() {
        let local = LocalBus::new();
        let bus: SharedBus = Arc::new(local.clone());
        let mut events = bus.subscribe(subject::EVENTS_ALL).await.expect("subscribe");
        let publisher = EventPublisher::new(bus.clone(), "/shoal/dev");

        let on = subject::plugin_event("allocator", "drf", PluginAction::Activated);
        publisher.emit(on.clone(), PluginAction::Activated.event_type(), "allocator/drf", json!({"version": 2})).await;
        let message =
            tokio::time::timeout(Duration::from_secs(5), events.next()).await.expect("in time").expect("an event");
        assert_eq!(message.subject, on);
        let event: CloudEvent = serde_json::from_slice(&message.payload).expect("decode");
        assert_eq!(event.source, "/shoal/dev");
        assert_eq!(event.r#type, "io.shoal.plugin.activated");
        assert_eq!(event.data, json!({"version": 2}));

        // An invalid subject and a closed bus are logged, not returned.
        publisher.emit("not a subject".into(), "t", "x", json!({})).await;
        local.close();
        publisher.emit(subject::STORE_SHARDMAP.into(), "t", "x", json!({})).await;
    }
}
