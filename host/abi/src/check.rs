//! Run a plugin against a JSON fixture and return its answers as JSON: the engine of
//! `shoal plugin check` and of the conformance fixtures.
//!
//! Fixture shapes (field names are the WIT names in snake_case):
//!
//! | kind | input | output |
//! | --- | --- | --- |
//! | allocator | `{"snapshot": ClusterSnapshot}` | `{"offers": [Offer]}` |
//! | router | `{"endpoints": [Endpoint], "requests": [Request]}` | `{"picks": [u32 \| null]}` |
//! | health-check | `{"target": CheckTarget}` | `{"result": CheckResult}` |
//! | framework | `{"config": "…", "calls": [{"resource_offers": [OfferInfo]} \| {"status_update": TaskStatus} \| {"handle_request": HttpRequest} \| {"tick": u64}]}` | `{"init": …, "results": [...]}` |
//!
//! A router fixture's `Endpoint.healthy` defaults to `true`. A `Request` is
//! `{"method"?, "host"?, "path"?, "client_ip"?, "headers"?: {name: value}, "active"?: [u32],
//! "healthy"?: [bool]}`: method defaults to `GET`, path to `/`, `active` (requests in flight per
//! endpoint) to zeros; `healthy`, when given, sets every endpoint's health from this request on
//! (the host then calls `update` again, as the gateway does when health changes).

use serde::Deserialize;
use serde_json::{Value, json};

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::AtomicU32;

use crate::{AnyPlugin, Attribute, ClusterSnapshot, Endpoint, HttpRequest, RouteRequest, RouteTable, TaskStatus};
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
    endpoints: Vec<EndpointFixture>,
    requests: Vec<RequestFixture>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EndpointFixture {
    id: String,
    address: String,
    #[serde(default = "one")]
    weight: u32,
    #[serde(default)]
    labels: Vec<Attribute>,
    #[serde(default = "yes")]
    healthy: bool,
}

fn one() -> u32 {
    1
}

fn yes() -> bool {
    true
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RequestFixture {
    #[serde(default)]
    method: Option<String>,
    #[serde(default)]
    host: String,
    #[serde(default)]
    path: Option<String>,
    #[serde(default)]
    client_ip: Option<std::net::IpAddr>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    active: Option<Vec<u32>>,
    #[serde(default)]
    healthy: Option<Vec<bool>>,
}

impl RequestFixture {
    fn into_request(self, endpoints: usize) -> Result<RouteRequest, String> {
        let method = self.method.as_deref().unwrap_or("GET");
        let method = http::Method::from_bytes(method.as_bytes()).map_err(|_| format!("invalid method `{method}`"))?;
        let mut headers = http::HeaderMap::new();
        for (name, value) in self.headers {
            let name =
                http::HeaderName::from_bytes(name.as_bytes()).map_err(|_| format!("invalid header name `{name}`"))?;
            let value = http::HeaderValue::from_str(&value).map_err(|_| format!("invalid value of header `{name}`"))?;
            headers.append(name, value);
        }
        let active = self.active.unwrap_or_else(|| vec![0; endpoints]);
        if active.len() != endpoints {
            return Err(format!("{} `active` counts for {endpoints} endpoints", active.len()));
        }
        Ok(RouteRequest {
            method,
            host: self.host,
            path: self.path.unwrap_or_else(|| "/".into()),
            client_ip: self.client_ip,
            headers,
            active: active.into_iter().map(AtomicU32::new).collect::<Arc<[AtomicU32]>>(),
        })
    }
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
            let endpoints = endpoints(fx.endpoints);
            let mut table = RouteTable { generation: 1, endpoints };
            let mut picks = Vec::with_capacity(fx.requests.len());
            for mut r in fx.requests {
                let bad = |message: String| CheckError::Fixture { kind: "router", message };
                if let Some(healthy) = r.healthy.take() {
                    if healthy.len() != table.endpoints.len() {
                        return Err(bad(format!(
                            "{} `healthy` flags for {} endpoints",
                            healthy.len(),
                            table.endpoints.len()
                        )));
                    }
                    for (endpoint, healthy) in table.endpoints.iter_mut().zip(healthy) {
                        endpoint.healthy = healthy;
                    }
                    table.generation += 1;
                }
                let mut request = r.into_request(table.endpoints.len()).map_err(bad)?;
                picks.push(crate::route(p, &table, &mut request)?);
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

/// What [`time_calls`] measured.
#[derive(Debug, Clone)]
pub struct CallTiming {
    /// The call timed, e.g. `route` (first request of the fixture, reused instance).
    pub call: &'static str,
    /// Median time of one call.
    pub median: std::time::Duration,
    /// Fastest call.
    pub min: std::time::Duration,
}

/// The fixture's endpoints as the WIT record.
fn endpoints(fixtures: Vec<EndpointFixture>) -> Vec<Endpoint> {
    fixtures
        .into_iter()
        .map(|e| Endpoint { id: e.id, address: e.address, weight: e.weight, labels: e.labels, healthy: e.healthy })
        .collect()
}

/// `call` once untimed when `warm_up` (it may instantiate), then `iterations` times, timed.
fn timed(
    iterations: usize,
    warm_up: bool,
    mut call: impl FnMut() -> Result<(), shoal_runtime::CallError>,
) -> Result<Vec<std::time::Duration>, CheckError> {
    if warm_up {
        call()?;
    }
    let mut samples = Vec::with_capacity(iterations);
    for _ in 0..iterations {
        let start = std::time::Instant::now();
        call()?;
        samples.push(start.elapsed());
    }
    Ok(samples)
}

/// Time `iterations` calls of the plugin's hot export on the first input of the fixture, on
/// pooled, reused instances, as the host calls it: `route` (the endpoint table unchanged, so no
/// `update` after the first), `allocate`, `check`, or a framework's `tick`. The first call, which
/// may instantiate and warm up, is not counted.
pub fn time_calls(plugin: &AnyPlugin, input: &Value, iterations: usize) -> Result<CallTiming, CheckError> {
    let call: &'static str;
    let mut samples = match plugin {
        AnyPlugin::Allocator(p) => {
            let fx: AllocatorFixture = parse("allocator", input)?;
            call = "allocate";
            timed(iterations, true, || crate::allocate(p, &fx.snapshot).map(drop))?
        }
        AnyPlugin::Router(p) => {
            let fx: RouterFixture = parse("router", input)?;
            let bad = |message: String| CheckError::Fixture { kind: "router", message };
            let endpoints = endpoints(fx.endpoints);
            let n = endpoints.len();
            let table = RouteTable { generation: 1, endpoints };
            let first = fx.requests.into_iter().next().ok_or_else(|| bad("no request to time".into()))?;
            let mut request = first.into_request(n).map_err(bad)?;
            call = "route";
            timed(iterations, true, || crate::route(p, &table, &mut request).map(drop))?
        }
        AnyPlugin::HealthCheck(p) => {
            let fx: HealthFixture = parse("health-check", input)?;
            call = "check";
            timed(iterations, true, || crate::check_health(p, &fx.target).map(drop))?
        }
        AnyPlugin::Framework(p) => {
            let fx: FrameworkFixture = parse("framework", input)?;
            call = "tick";
            if let Err(why) = crate::framework_init(p, &fx.config)? {
                return Err(CheckError::Fixture {
                    kind: "framework",
                    message: format!("init refused the config: {why}"),
                });
            }
            // `init` warmed the instance up.
            timed(iterations, false, || crate::tick(p, 0).map(drop))?
        }
    };
    samples.sort();
    let median = samples.get(samples.len() / 2).copied().unwrap_or_default();
    let min = samples.first().copied().unwrap_or_default();
    Ok(CallTiming { call, median, min })
}
