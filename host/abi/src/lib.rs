//! The host side of the plugin contract: bindings of the four worlds of `shoal:plugin` (from
//! `wit/`), the [`PluginKind`] enum, and one typed call per export.
//!
//! This crate is the only place in the host that names WIT-generated types of the worlds; the
//! master, the gateway and the agents call plugins through the functions here. It knows the
//! *shape* of the contract (which export takes what, which answers are out of range) and nothing
//! of how answers are used.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use shoal_runtime::{
    CallError, CallLimits, HostState, Instance, LoadError, Plugin, PluginScope, ProbeTarget, Runtime, World,
};
use wasmtime::Store;
use wasmtime::component::{InstancePre, Resource};

pub mod check;
pub mod conformance;

/// Bindings of the four worlds. The host imports are shared with `shoal_runtime::imports`.
#[allow(missing_docs)]
pub mod bindings {
    pub mod allocator {
        wasmtime::component::bindgen!({
            world: "allocator",
            path: "../../wit",
            with: {
                "shoal:plugin/types@0.1.0": shoal_runtime::imports::shoal::plugin::types,
                "shoal:plugin/log@0.1.0": shoal_runtime::imports::shoal::plugin::log,
                "shoal:plugin/clock@0.1.0": shoal_runtime::imports::shoal::plugin::clock,
                "shoal:plugin/keyvalue@0.1.0": shoal_runtime::imports::shoal::plugin::keyvalue,
            },
            additional_derives: [serde::Serialize, serde::Deserialize, PartialEq],
        });
    }
    pub mod router {
        wasmtime::component::bindgen!({
            world: "router",
            path: "../../wit",
            with: {
                "shoal:plugin/types@0.1.0": shoal_runtime::imports::shoal::plugin::types,
                "shoal:plugin/log@0.1.0": shoal_runtime::imports::shoal::plugin::log,
                "shoal:plugin/clock@0.1.0": shoal_runtime::imports::shoal::plugin::clock,
                "shoal:plugin/keyvalue@0.1.0": shoal_runtime::imports::shoal::plugin::keyvalue,
                "shoal:plugin/route-request@0.1.0": shoal_runtime::imports::shoal::plugin::route_request,
            },
            additional_derives: [serde::Serialize, serde::Deserialize, PartialEq],
        });
    }
    pub mod health_check {
        wasmtime::component::bindgen!({
            world: "health-check",
            path: "../../wit",
            with: {
                "shoal:plugin/log@0.1.0": shoal_runtime::imports::shoal::plugin::log,
                "shoal:plugin/clock@0.1.0": shoal_runtime::imports::shoal::plugin::clock,
                "shoal:plugin/keyvalue@0.1.0": shoal_runtime::imports::shoal::plugin::keyvalue,
                "shoal:plugin/probe@0.1.0": shoal_runtime::imports::shoal::plugin::probe,
            },
            additional_derives: [serde::Serialize, serde::Deserialize, PartialEq],
        });
    }
    pub mod framework {
        wasmtime::component::bindgen!({
            world: "framework",
            path: "../../wit",
            with: {
                "shoal:plugin/types@0.1.0": shoal_runtime::imports::shoal::plugin::types,
                "shoal:plugin/log@0.1.0": shoal_runtime::imports::shoal::plugin::log,
                "shoal:plugin/clock@0.1.0": shoal_runtime::imports::shoal::plugin::clock,
                "shoal:plugin/keyvalue@0.1.0": shoal_runtime::imports::shoal::plugin::keyvalue,
            },
            additional_derives: [serde::Serialize, serde::Deserialize, PartialEq],
        });
    }
}

pub use shoal_runtime::RouteRequest;
pub use shoal_runtime::imports::shoal::plugin::types::{
    Agent, Attribute, ClusterSnapshot, DeclineFilter, Endpoint, Framework as FrameworkInfo, HttpRequest, HttpResponse,
    Offer, PortRange, Resources, Scalar, TaskState, TaskStatus,
};
/// Types of the health-check world.
pub mod health {
    pub use crate::bindings::health_check::exports::shoal::plugin::health::{CheckResult, CheckStatus, CheckTarget};
}
/// Types of the framework world.
pub mod scheduling {
    pub use crate::bindings::framework::exports::shoal::plugin::scheduling::{
        Decline, Launch, OfferInfo, Operation, TaskCommand, TaskSpec,
    };
}

/// The four kinds of plugin, one per world.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PluginKind {
    /// World `allocator`.
    Allocator,
    /// World `router`.
    Router,
    /// World `health-check`.
    HealthCheck,
    /// World `framework`.
    Framework,
}

impl PluginKind {
    /// Every kind.
    pub const ALL: [PluginKind; 4] =
        [PluginKind::Allocator, PluginKind::Router, PluginKind::HealthCheck, PluginKind::Framework];

    /// Name as used in URLs, subjects and the CLI (`health-check`).
    pub fn as_str(self) -> &'static str {
        match self {
            PluginKind::Allocator => "allocator",
            PluginKind::Router => "router",
            PluginKind::HealthCheck => "health-check",
            PluginKind::Framework => "framework",
        }
    }

    /// Default bounds of one call of this kind. Routers sit on every proxied request, so they get
    /// the tightest deadline; allocators see the whole cluster, so they get the most memory.
    pub fn default_limits(self) -> CallLimits {
        match self {
            PluginKind::Allocator => {
                CallLimits { deadline: Duration::from_secs(2), memory: 256 << 20, max_idle: 2, max_live: 8 }
            }
            PluginKind::Router => {
                CallLimits { deadline: Duration::from_millis(50), memory: 32 << 20, max_idle: 64, max_live: 256 }
            }
            PluginKind::HealthCheck => {
                CallLimits { deadline: Duration::from_secs(10), memory: 32 << 20, max_idle: 16, max_live: 64 }
            }
            PluginKind::Framework => {
                CallLimits { deadline: Duration::from_secs(2), memory: 128 << 20, max_idle: 4, max_live: 16 }
            }
        }
    }
}

impl std::fmt::Display for PluginKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An unknown plugin kind.
#[derive(Debug, thiserror::Error)]
#[error("unknown plugin kind `{0}`; expected one of: allocator, router, health-check, framework")]
pub struct UnknownKind(pub String);

impl FromStr for PluginKind {
    type Err = UnknownKind;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        PluginKind::ALL.into_iter().find(|k| k.as_str() == s).ok_or_else(|| UnknownKind(s.to_owned()))
    }
}

macro_rules! world {
    ($ty:ident, $name:literal, $export:literal, $probe:literal, $route:literal, $pre:path, $bindings:path) => {
        #[doc = concat!("The `", $name, "` world.")]
        pub struct $ty;
        impl World for $ty {
            const NAME: &'static str = $name;
            const EXPORT: &'static str = $export;
            const IMPORTS: shoal_runtime::imports::Imports =
                shoal_runtime::imports::Imports { probe: $probe, route_request: $route };
            type Pre = $pre;
            type Bindings = $bindings;
            fn pre(pre: InstancePre<HostState>) -> wasmtime::Result<Self::Pre> {
                <$pre>::new(pre)
            }
            fn instantiate(pre: &Self::Pre, store: &mut Store<HostState>) -> wasmtime::Result<Self::Bindings> {
                pre.instantiate(store)
            }
        }
    };
}

world!(
    AllocatorWorld,
    "allocator",
    "shoal:plugin/allocation@0.1.0",
    false,
    false,
    bindings::allocator::AllocatorPre<HostState>,
    bindings::allocator::Allocator
);
world!(
    RouterWorld,
    "router",
    "shoal:plugin/routing@0.1.0",
    false,
    true,
    bindings::router::RouterPre<HostState>,
    bindings::router::Router
);
world!(
    HealthCheckWorld,
    "health-check",
    "shoal:plugin/health@0.1.0",
    true,
    false,
    bindings::health_check::HealthCheckPre<HostState>,
    bindings::health_check::HealthCheck
);
world!(
    FrameworkWorld,
    "framework",
    "shoal:plugin/scheduling@0.1.0",
    false,
    false,
    bindings::framework::FrameworkPre<HostState>,
    bindings::framework::Framework
);

/// A loaded plugin of any kind.
#[derive(Clone)]
pub enum AnyPlugin {
    /// An allocator.
    Allocator(Arc<Plugin<AllocatorWorld>>),
    /// A router.
    Router(Arc<Plugin<RouterWorld>>),
    /// A health check.
    HealthCheck(Arc<Plugin<HealthCheckWorld>>),
    /// A framework.
    Framework(Arc<Plugin<FrameworkWorld>>),
}

impl AnyPlugin {
    /// Type-check `bytes` against the world of `kind` and load them.
    pub fn load(
        runtime: &Runtime,
        kind: PluginKind,
        bytes: &[u8],
        scope: PluginScope,
        limits: CallLimits,
    ) -> Result<Self, LoadError> {
        Self::load_compiled(runtime, kind, &runtime.compile(bytes)?, scope, limits)
    }

    /// [`AnyPlugin::load`] of a component compiled already (e.g. by
    /// [`Runtime::compile_unadmitted`], for an upload that may still be refused).
    pub fn load_compiled(
        runtime: &Runtime,
        kind: PluginKind,
        compiled: &shoal_runtime::cache::Compiled,
        scope: PluginScope,
        limits: CallLimits,
    ) -> Result<Self, LoadError> {
        Ok(match kind {
            PluginKind::Allocator => AnyPlugin::Allocator(Arc::new(runtime.load(&compiled, scope, limits)?)),
            PluginKind::Router => AnyPlugin::Router(Arc::new(runtime.load(&compiled, scope, limits)?)),
            PluginKind::HealthCheck => AnyPlugin::HealthCheck(Arc::new(runtime.load(&compiled, scope, limits)?)),
            PluginKind::Framework => AnyPlugin::Framework(Arc::new(runtime.load(&compiled, scope, limits)?)),
        })
    }

    /// The kind of the plugin.
    pub fn kind(&self) -> PluginKind {
        match self {
            AnyPlugin::Allocator(_) => PluginKind::Allocator,
            AnyPlugin::Router(_) => PluginKind::Router,
            AnyPlugin::HealthCheck(_) => PluginKind::HealthCheck,
            AnyPlugin::Framework(_) => PluginKind::Framework,
        }
    }

    /// sha256 of the component.
    pub fn digest(&self) -> &str {
        match self {
            AnyPlugin::Allocator(p) => p.digest(),
            AnyPlugin::Router(p) => p.digest(),
            AnyPlugin::HealthCheck(p) => p.digest(),
            AnyPlugin::Framework(p) => p.digest(),
        }
    }
}

/// Most offers an allocator may answer in one cycle; more is a broken plugin, not a big cluster.
pub const MAX_OFFERS: usize = 1_000_000;
/// Most operations a framework may answer in one call.
pub const MAX_OPERATIONS: usize = 100_000;
/// Largest HTTP response body a framework may answer.
pub const MAX_RESPONSE_BODY: usize = 8 << 20;

/// `allocation.allocate`.
pub fn allocate(plugin: &Plugin<AllocatorWorld>, snapshot: &ClusterSnapshot) -> Result<Vec<Offer>, CallError> {
    plugin.call(|i| {
        let offers = i.bindings.shoal_plugin_allocation().call_allocate(&mut i.store, snapshot)?;
        if offers.len() > MAX_OFFERS {
            return Err(
                CallError::InvalidOutput(format!("{} offers, over the limit of {MAX_OFFERS}", offers.len())).into()
            );
        }
        Ok(offers)
    })
}

/// The endpoint set of a route, with a generation that changes whenever the set or the health
/// of an endpoint does. Router instances are told the set (`routing.update`) once per generation.
#[derive(Clone, Debug, Default)]
pub struct RouteTable {
    /// Changes whenever `endpoints` (or an endpoint's `healthy`) changes; never 0 for a real table.
    pub generation: u64,
    /// The endpoints, in the order `route` indexes them.
    pub endpoints: Vec<Endpoint>,
}

/// `routing.route` for `request`, after `routing.update` if this instance has not seen `table`
/// yet. The request is lent to the plugin for the call (moved into the instance's state and back,
/// never copied); the plugin reads what it needs through the `route-request.request` resource.
///
/// An answer out of range, or naming an endpoint that is not healthy, is an
/// [`CallError::InvalidOutput`]: the caller should serve the request with a safe rule instead.
///
/// The call runs on the calling thread ([`Plugin::call_inline`]), even a Tokio worker: router
/// calls are short (50 ms deadline at most) and this is the gateway's per-request path.
pub fn route(
    plugin: &Plugin<RouterWorld>,
    table: &RouteTable,
    request: &mut RouteRequest,
) -> Result<Option<u32>, CallError> {
    route_full(plugin, table, request).map(|routed| routed.pick)
}

/// What [`route_full`] answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Routed {
    /// The endpoint picked, if any.
    pub pick: Option<u32>,
    /// The instance that routed wants [`route_complete`] for this request (it did not call
    /// `route-request.completions(false)`).
    pub wants_complete: bool,
}

/// [`route`], and whether the router wants to hear how the request ends.
pub fn route_full(
    plugin: &Plugin<RouterWorld>,
    table: &RouteTable,
    request: &mut RouteRequest,
) -> Result<Routed, CallError> {
    plugin.call_inline(|i| route_on(i, table, request))
}

/// [`route_full`] on an instance the caller keeps (see `Plugin::call_kept`): the gateway's
/// workers keep one per router.
pub fn route_kept(
    plugin: &Plugin<RouterWorld>,
    kept: &mut Option<Instance<RouterWorld>>,
    table: &RouteTable,
    request: &mut RouteRequest,
) -> Result<Routed, CallError> {
    plugin.call_kept(kept, |i| route_on(i, table, request))
}

fn route_on(i: &mut Instance<RouterWorld>, table: &RouteTable, request: &mut RouteRequest) -> wasmtime::Result<Routed> {
    let routing = i.bindings.shoal_plugin_routing();
    if i.generation != table.generation {
        routing.call_update(&mut i.store, &table.endpoints)?;
        i.generation = table.generation;
    }
    let state = i.store.data_mut();
    std::mem::swap(&mut state.request, request);
    state.routing = true;
    let pick = routing.call_route(&mut i.store, Resource::new_borrow(0));
    let state = i.store.data_mut();
    state.routing = false;
    std::mem::swap(&mut state.request, request);
    let pick = pick?;
    if let Some(index) = pick {
        match table.endpoints.get(index as usize) {
            None => {
                return Err(CallError::InvalidOutput(format!(
                    "endpoint index {index} out of range 0..{}",
                    table.endpoints.len()
                ))
                .into());
            }
            Some(endpoint) if !endpoint.healthy => {
                return Err(
                    CallError::InvalidOutput(format!("endpoint {index} (`{}`) is not healthy", endpoint.id)).into()
                );
            }
            Some(_) => {}
        }
    }
    Ok(Routed { pick, wants_complete: i.store.data().completions })
}

/// `routing.on-complete`, on the calling thread like [`route`].
pub fn route_complete(
    plugin: &Plugin<RouterWorld>,
    table: &RouteTable,
    index: u32,
    status: u16,
    latency_us: u64,
) -> Result<(), CallError> {
    plugin.call_inline(|i| complete_on(i, table, index, status, latency_us))
}

/// [`route_complete`] on an instance the caller keeps.
pub fn route_complete_kept(
    plugin: &Plugin<RouterWorld>,
    kept: &mut Option<Instance<RouterWorld>>,
    table: &RouteTable,
    index: u32,
    status: u16,
    latency_us: u64,
) -> Result<(), CallError> {
    plugin.call_kept(kept, |i| complete_on(i, table, index, status, latency_us))
}

fn complete_on(
    i: &mut Instance<RouterWorld>,
    table: &RouteTable,
    index: u32,
    status: u16,
    latency_us: u64,
) -> wasmtime::Result<()> {
    let routing = i.bindings.shoal_plugin_routing();
    if i.generation != table.generation {
        routing.call_update(&mut i.store, &table.endpoints)?;
        i.generation = table.generation;
    }
    if !i.store.data().completions {
        // The router declined completions (`route-request.completions(false)`).
        return Ok(());
    }
    routing.call_on_complete(&mut i.store, index, status, latency_us)
}

/// `health.check` against `target`; the probe may reach only the target's address and ports.
pub fn check_health(
    plugin: &Plugin<HealthCheckWorld>,
    target: &health::CheckTarget,
) -> Result<health::CheckResult, CallError> {
    check_health_until(plugin, target, None)
}

/// [`check_health`] for a check that must be over by `deadline` (its timeout): the plugin's
/// probes end by then, whatever timeout they ask for.
pub fn check_health_until(
    plugin: &Plugin<HealthCheckWorld>,
    target: &health::CheckTarget,
    deadline: Option<std::time::Instant>,
) -> Result<health::CheckResult, CallError> {
    plugin.call(|i| {
        i.store.data_mut().probe =
            Some(ProbeTarget { address: target.address.clone(), ports: target.ports.clone(), deadline });
        let result = i.bindings.shoal_plugin_health().call_check(&mut i.store, target);
        i.store.data_mut().probe = None;
        result
    })
}

fn check_operations(ops: Vec<scheduling::Operation>) -> wasmtime::Result<Vec<scheduling::Operation>> {
    if ops.len() > MAX_OPERATIONS {
        return Err(
            CallError::InvalidOutput(format!("{} operations, over the limit of {MAX_OPERATIONS}", ops.len())).into()
        );
    }
    Ok(ops)
}

/// `scheduling.init`. A framework's own refusal (`err`) is a value, not a [`CallError`].
pub fn framework_init(plugin: &Plugin<FrameworkWorld>, config: &str) -> Result<Result<(), String>, CallError> {
    plugin.call(|i| i.bindings.shoal_plugin_scheduling().call_init(&mut i.store, config))
}

/// `scheduling.resource-offers`.
pub fn resource_offers(
    plugin: &Plugin<FrameworkWorld>,
    offers: &[scheduling::OfferInfo],
) -> Result<Vec<scheduling::Operation>, CallError> {
    plugin.call(|i| check_operations(i.bindings.shoal_plugin_scheduling().call_resource_offers(&mut i.store, offers)?))
}

/// `scheduling.status-update`.
pub fn status_update(
    plugin: &Plugin<FrameworkWorld>,
    status: &TaskStatus,
) -> Result<Vec<scheduling::Operation>, CallError> {
    plugin.call(|i| check_operations(i.bindings.shoal_plugin_scheduling().call_status_update(&mut i.store, status)?))
}

/// `scheduling.handle-request`.
pub fn handle_request(plugin: &Plugin<FrameworkWorld>, request: &HttpRequest) -> Result<HttpResponse, CallError> {
    plugin.call(|i| {
        let response = i.bindings.shoal_plugin_scheduling().call_handle_request(&mut i.store, request)?;
        if response.body.len() > MAX_RESPONSE_BODY {
            return Err(CallError::InvalidOutput(format!(
                "response body of {} bytes, over the limit of {MAX_RESPONSE_BODY}",
                response.body.len()
            ))
            .into());
        }
        Ok(response)
    })
}

/// `scheduling.tick`.
pub fn tick(plugin: &Plugin<FrameworkWorld>, now_ms: u64) -> Result<Vec<scheduling::Operation>, CallError> {
    plugin.call(|i| check_operations(i.bindings.shoal_plugin_scheduling().call_tick(&mut i.store, now_ms)?))
}

/// What the master hands a framework in one call.
#[derive(Debug)]
pub enum FrameworkInput<'a> {
    /// `resource-offers`.
    Offers(&'a [scheduling::OfferInfo]),
    /// `status-update`.
    Status(&'a TaskStatus),
    /// `tick`.
    Tick(u64),
    /// `handle-request`.
    Request(&'a HttpRequest),
}

/// A framework's answer to one call.
#[derive(Debug)]
pub enum FrameworkOutput {
    /// What `resource-offers`, `status-update` and `tick` return.
    Operations(Vec<scheduling::Operation>),
    /// What `handle-request` returns.
    Response(HttpResponse),
}

/// Call a framework, running `init(config)` first on an instance that has not been initialised
/// (a fresh one: the pool hands out instances with generation 0 when it makes them). A refusal
/// by `init` fails the call (and the instance is discarded).
pub fn framework_call(
    plugin: &Plugin<FrameworkWorld>,
    config: &str,
    input: FrameworkInput<'_>,
) -> Result<FrameworkOutput, CallError> {
    plugin.call(|i| {
        if i.generation == 0 {
            if let Err(why) = i.bindings.shoal_plugin_scheduling().call_init(&mut i.store, config)? {
                return Err(CallError::Instantiate(format!("init refused: {why}")).into());
            }
            i.generation = 1;
        }
        let s = i.bindings.shoal_plugin_scheduling();
        Ok(match input {
            FrameworkInput::Offers(offers) => {
                FrameworkOutput::Operations(check_operations(s.call_resource_offers(&mut i.store, offers)?)?)
            }
            FrameworkInput::Status(status) => {
                FrameworkOutput::Operations(check_operations(s.call_status_update(&mut i.store, status)?)?)
            }
            FrameworkInput::Tick(now) => {
                FrameworkOutput::Operations(check_operations(s.call_tick(&mut i.store, now)?)?)
            }
            FrameworkInput::Request(request) => {
                let response = s.call_handle_request(&mut i.store, request)?;
                if response.body.len() > MAX_RESPONSE_BODY {
                    return Err(CallError::InvalidOutput(format!(
                        "response body of {} bytes, over the limit of {MAX_RESPONSE_BODY}",
                        response.body.len()
                    ))
                    .into());
                }
                FrameworkOutput::Response(response)
            }
        })
    })
}
