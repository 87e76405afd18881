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

/// Query of the event stream.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    /// Subject filter with NATS wildcards (`*` one token, `>` the rest), under `shoal.evt`;
    /// default `shoal.evt.>` (everything).
    subject: Option<String>,
}

/// Stream events as SSE; each `data:` line is one CloudEvents 1.0 JSON event. An `app:<ns>`
/// token gets only `shoal.evt.kv.<ns>.*`, `shoal.evt.app.<ns>.*`, `shoal.evt.job.<ns>.*`,
/// `shoal.evt.service.<ns>.*` and the events of tasks of its namespace (check output redacted).
#[utoipa::path(get, path = "/v1/events", params(EventsQuery),
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
    let subscription =
        state.bus.subscribe(&filter).await.map_err(|e| {
            ApiError::new(axum::http::StatusCode::SERVICE_UNAVAILABLE, "bus_unavailable", e.to_string())
        })?;
    let master = state.master.clone();
    let events = subscription.filter_map(move |message| {
        let data = match &scope {
            Scope::Admin | Scope::Operator => Some(String::from_utf8_lossy(&message.payload).into_owned()),
            Scope::App(ns) => {
                crate::scoped::event_for_app(ns, &message.subject, &message.payload, master.load_full().as_deref())
            }
        };
        std::future::ready(data.map(|data| Ok(Event::default().event(message.subject).data(data))))
    });
    Ok(Sse::new(crate::streams::holding(events, slot)).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}
