//! Run a plugin against a JSON fixture and return its answers as JSON: the engine of
//! `shoal plugin check` and of the conformance fixtures.
//!
//! Fixture shapes (field names are the WIT names in snake_case):
//!
//! | kind | input | output |
//! | --- | --- | --- |
//! | allocator | `{"snapshot": ClusterSnapshot}` | `{"offers": [Offer]}` |
//! | router | `{"endpoints": [Endpoint], "requests": [{"request": RequestInfo, "states": [EndpointState]?}]}` | `{"picks": [u32 \| null]}` |
//! | health-check | `{"target": CheckTarget}` | `{"result": CheckResult}` |
//! | framework | `{"config": "…", "calls": [{"resource_offers": [OfferInfo]} \| {"status_update": TaskStatus} \| {"handle_request": HttpRequest} \| {"tick": u64}]}` | `{"init": …, "results": [...]}` |
//!
//! `states` defaults to every endpoint healthy and idle.

use serde::Deserialize;
use serde_json::{Value, json};

use crate::{AnyPlugin, ClusterSnapshot, Endpoint, EndpointState, HttpRequest, RequestInfo, RouteTable, TaskStatus};
use crate::{health, scheduling};

/// Why a fixture could not be run.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// The fixture is not valid for the plugin's kind.
    #[error("fixture does not fit a {kind} plugin: {message}")]
    Fixture {
        /// Kind of the plugin.
        kind: &'static str,
        /// What is wrong.
        message: String,
    },
    /// The plugin failed.
    #[error(transparent)]
    Call(#[from] shoal_runtime::CallError),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AllocatorFixture {
    snapshot: ClusterSnapshot,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RouterFixture {
    endpoints: Vec<Endpoint>,
    requests: Vec<RouterRequest>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RouterRequest {
    request: RequestInfo,
    states: Option<Vec<EndpointState>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HealthFixture {
    target: health::CheckTarget,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FrameworkFixture {
    #[serde(default)]
    config: String,
    calls: Vec<FrameworkCall>,
}

#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
enum FrameworkCall {
    ResourceOffers(Vec<scheduling::OfferInfo>),
    StatusUpdate(TaskStatus),
    HandleRequest(HttpRequest),
    Tick(u64),
}

fn parse<T: for<'de> Deserialize<'de>>(kind: &'static str, input: &Value) -> Result<T, CheckError> {
    T::deserialize(input).map_err(|e| CheckError::Fixture { kind, message: e.to_string() })
}

fn to_json<T: serde::Serialize>(value: &T) -> Value {
    serde_json::to_value(value).unwrap_or(Value::Null)
}

/// Run `plugin` on `input` and return its answers.
pub fn run(plugin: &AnyPlugin, input: &Value) -> Result<Value, CheckError> {
    match plugin {
        AnyPlugin::Allocator(p) => {
            let fx: AllocatorFixture = parse("allocator", input)?;
            let offers = crate::allocate(p, &fx.snapshot)?;
            Ok(json!({ "offers": to_json(&offers) }))
        }
        AnyPlugin::Router(p) => {
            let fx: RouterFixture = parse("router", input)?;
            let table = RouteTable { generation: 1, endpoints: fx.endpoints };
            let mut picks = Vec::with_capacity(fx.requests.len());
            for r in fx.requests {
                let states = r.states.unwrap_or_else(|| {
                    vec![EndpointState { healthy: true, active_requests: 0 }; table.endpoints.len()]
                });
                if states.len() != table.endpoints.len() {
                    return Err(CheckError::Fixture {
                        kind: "router",
                        message: format!("{} states for {} endpoints", states.len(), table.endpoints.len()),
                    });
                }
                picks.push(crate::route(p, &table, &r.request, &states)?);
            }
            Ok(json!({ "picks": picks }))
        }
        AnyPlugin::HealthCheck(p) => {
            let fx: HealthFixture = parse("health-check", input)?;
            let result = crate::check_health(p, &fx.target)?;
            Ok(json!({ "result": to_json(&result) }))
        }
        AnyPlugin::Framework(p) => {
            let fx: FrameworkFixture = parse("framework", input)?;
            let init = crate::framework_init(p, &fx.config)?;
            let mut results = Vec::with_capacity(fx.calls.len());
            for call in fx.calls {
                let value = match call {
                    FrameworkCall::ResourceOffers(offers) => to_json(&crate::resource_offers(p, &offers)?),
                    FrameworkCall::StatusUpdate(status) => to_json(&crate::status_update(p, &status)?),
                    FrameworkCall::HandleRequest(request) => {
                        let response = crate::handle_request(p, &request)?;
                        json!({
                            "status": response.status,
                            "headers": response.headers,
                            "body": String::from_utf8_lossy(&response.body),
                        })
                    }
                    FrameworkCall::Tick(now) => to_json(&crate::tick(p, now)?),
                };
                results.push(value);
            }
            Ok(json!({ "init": to_json(&init), "results": results }))
        }
    }
}
