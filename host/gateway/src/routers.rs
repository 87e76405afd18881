//! Calling a route's router plugin: each worker keeps its own instance of each router it calls
//! ([`KeptRouter`]) and asks the registry again only when its generation moved, so a new version
//! swaps in live; a missing, failing or out-of-range router falls back to a native round-robin
//! over the healthy endpoints, with a `fallback` event.

use super::*;

pub(crate) type KeptInstance = shoal_runtime::Instance<RouterWorld>;

/// A worker's instance of one router, of the version that was active at `generation` of the
/// registry.
pub(crate) struct KeptRouter {
    pub(crate) name: String,
    pub(crate) generation: u64,
    pub(crate) loaded: Arc<shoal_registry::LoadedVersion>,
    pub(crate) instance: Option<KeptInstance>,
}

impl Gateway {
    /// Call the active version of router `name` on this worker's own instance of it (made on
    /// first use, replaced when the registry's active version changed or a call failed), and
    /// account the call in the registry like [`Registry::call`] does. `None`: no such router.
    pub(crate) fn call_router<R>(
        &self,
        local: &Local,
        name: &str,
        f: impl FnOnce(&shoal_runtime::Plugin<RouterWorld>, &mut Option<KeptInstance>) -> Result<R, CallError>,
    ) -> Option<Result<R, CallError>> {
        let generation = self.plugins.generation();
        let mut routers = local.routers.lock();
        let at = match routers.iter().position(|r| r.name == name && r.generation == generation) {
            Some(at) => at,
            None => self.keep_router(&mut routers, name, generation)?,
        };
        let KeptRouter { loaded, instance, .. } = &mut routers[at];
        let AnyPlugin::Router(router) = &loaded.plugin else {
            return Some(Err(shoal_runtime_error("the plugin is not a router")));
        };
        let started = Instant::now();
        let result = f(router, instance);
        self.plugins.record_call(loaded, started.elapsed(), result.as_ref().err());
        Some(result)
    }

    /// Bring this worker's entry for router `name` up to the registry's `generation` (first use,
    /// or some plugin's active version changed): a new active version gets a fresh instance; a
    /// router no longer active is forgotten (`None`).
    pub(crate) fn keep_router(&self, routers: &mut Vec<KeptRouter>, name: &str, generation: u64) -> Option<usize> {
        let found = routers.iter().position(|r| r.name == name);
        let Some(loaded) = self.plugins.active(PluginKind::Router, name) else {
            if let Some(at) = found {
                routers.swap_remove(at);
            }
            return None;
        };
        let Some(at) = found else {
            routers.push(KeptRouter { name: name.to_owned(), generation, loaded, instance: None });
            return Some(routers.len() - 1);
        };
        let kept = &mut routers[at];
        if !Arc::ptr_eq(&kept.loaded, &loaded) {
            kept.loaded = loaded;
            kept.instance = None;
        }
        kept.generation = generation;
        Some(at)
    }

    /// Ask the route's router; fall back to round-robin over the healthy endpoints.
    ///
    /// Answers the endpoint and whether the router wants its `on-complete` call.
    pub(crate) fn pick(
        &self,
        local: &Local,
        route: &Route,
        state: &RouteState,
        table: &Table,
        request: &mut RouteRequest,
    ) -> Result<(usize, bool), ()> {
        let answer = self.call_router(local, &route.router, |router, kept| {
            shoal_abi::route_kept(router, kept, &table.table, request)
        });
        let why = match answer {
            Some(Ok(shoal_abi::Routed { pick: Some(index), wants_complete })) => {
                return Ok((index as usize, wants_complete));
            }
            Some(Ok(shoal_abi::Routed { pick: None, .. })) => return Err(()),
            Some(Err(err)) => err.to_string(),
            None => format!("no active router plugin named `{}`", route.router),
        };
        state.fallbacks.increment(1);
        let now_ms = self.origin.elapsed().as_millis() as u64;
        let last = state.last_fallback_event_ms.load(Ordering::Relaxed);
        if (last == 0 || now_ms.saturating_sub(last) >= 5000)
            && state
                .last_fallback_event_ms
                .compare_exchange(last, now_ms.max(1), Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(route = %route.name, router = %route.router, cause = %why, "router failed; request served by round-robin");
            self.event(&route.name, "fallback", serde_json::json!({ "router": route.router, "cause": why }));
        }
        let healthy: Vec<usize> = table.healthy().collect();
        if healthy.is_empty() {
            return Err(());
        }
        Ok((healthy[state.fallback_next.fetch_add(1, Ordering::Relaxed) % healthy.len()], true))
    }
}

pub(crate) fn shoal_runtime_error(message: &str) -> shoal_runtime::CallError {
    shoal_runtime::CallError::InvalidOutput(message.into())
}
