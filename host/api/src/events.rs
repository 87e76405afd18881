//! `GET /v1/events`: the bus's CloudEvents as Server-Sent Events, filtered by subject, and for
//! `app:<namespace>` tokens by what belongs to the namespace (`crate::scoped::event_for_app`).

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::{Stream, StreamExt};
use serde::Deserialize;
use shoal_bus::subject;

use crate::AppState;
use crate::auth::Scope;
use crate::dto::ErrorBody;
use crate::error::ApiError;
use crate::journal::{Item, Sent, Source};

/// Query of the event stream.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    /// Subject filter with NATS wildcards (`*` one token, `>` the rest), under `shoal.evt`;
    /// default `shoal.evt.>` (everything).
    subject: Option<String>,
}

/// Stream events as SSE; each `data:` line is one CloudEvents 1.0 JSON event, each `id:` its
/// place in the node's journal: reconnect with `Last-Event-ID` to get the ones missed (an
/// `event: gap` says when some are no longer kept). An `app:<ns>`
/// token gets only `shoal.evt.kv.<ns>.*`, `shoal.evt.app.<ns>.*`, `shoal.evt.job.<ns>.*`,
/// `shoal.evt.service.<ns>.*` and the events of tasks of its namespace (check output redacted).
#[utoipa::path(get, path = "/v1/events", params(EventsQuery, ("Last-Event-ID" = Option<String>, Header, description = "the `id` of the last event received: the stream starts after it (an `event: gap` first if that is no longer possible)")),
    responses((status = 200, content_type = "text/event-stream", body = String), (status = 400, body = ErrorBody)), security(("bearer" = [])))]
pub async fn stream(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let scope = state.auth.reader(&headers)?;
    let Query(query) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let filter = query.subject.unwrap_or_else(|| subject::EVENTS_ALL.to_owned());
    subject::validate_filter(&filter).map_err(|e| ApiError::bad_request(e.to_string()))?;
    if !subject::within_events(&filter) {
        return Err(ApiError::bad_request(format!(
            "subject filter `{filter}` is outside the event tree `shoal.evt.>`"
        )));
    }
    // Wider filters are narrowed to the event tree: control traffic is not for API clients.
    let filter = if subject::covers_events(&filter) { subject::EVENTS_ALL.to_owned() } else { filter };
    let slot = state.streams.open(&headers)?;
    let master = state.master.clone();
    let items = state.journal.stream(filter, crate::journal::last_event_id(&headers));
    let events = items.filter_map(move |sent| {
        let event = match &sent.item {
            Item::Event(entry) => {
                let data = match &scope {
                    Scope::Admin | Scope::Operator => Some(String::from_utf8_lossy(&entry.payload).into_owned()),
                    Scope::App(ns) => {
                        crate::scoped::event_for_app(ns, &entry.subject, &entry.payload, master.load_full().as_deref())
                    }
                };
                data.map(|data| Event::default().event(&entry.subject).id(&sent.id).data(data))
            }
            Item::Gap { .. } => Some(gap_event(&sent)),
        };
        std::future::ready(event.map(Ok))
    });
    Ok(Sse::new(crate::streams::holding(events, slot)).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

/// `event: gap`: events after the id the client gave (`after`) are no longer kept, or the id
/// was not this node's; `missed` says which (`cluster` events or `kv` events). The client re-reads
/// the state it follows; the events after this one come without a gap.
pub(crate) fn gap_event(sent: &Sent) -> Event {
    let missed = match sent.source {
        Source::Cluster => "cluster",
        Source::Kv => "kv",
    };
    Event::default().event("gap").data(serde_json::json!({"after": sent.id, "missed": missed}).to_string())
}
