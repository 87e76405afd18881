//! Per-route state: the endpoint table a router sees (rebuilt only when the registry's index or
//! an ejection changes, read lock-free), and the ejection of endpoints that fail in a row (the
//! ejection map is locked only while an endpoint of the route is failing).

use super::*;

/// Per-route state that outlives requests: the endpoint table, ejections, fallback counter,
/// metrics handles.
pub(crate) struct RouteState {
    pub(crate) table: ArcSwap<Table>,
    pub(crate) rebuild: Mutex<()>,
    pub(crate) ejections: Mutex<HashMap<String, Ejection>>,
    /// Whether `ejections` holds a failure streak or an ejection, written only under its lock.
    pub(crate) failing: std::sync::atomic::AtomicBool,
    pub(crate) ejection_epoch: AtomicU64,
    pub(crate) fallback_next: AtomicUsize,
    pub(crate) last_fallback_event_ms: AtomicU64,
    pub(crate) requests: [metrics::Counter; 5],
    pub(crate) fallbacks: metrics::Counter,
    pub(crate) latency: metrics::Histogram,
}

#[derive(Default)]
pub(crate) struct Ejection {
    pub(crate) failures: u32,
    pub(crate) until: Option<Instant>,
}

/// An endpoint table built from the registry at one index.
pub(crate) struct Table {
    pub(crate) service: String,
    pub(crate) index: u64,
    pub(crate) ejection_epoch: u64,
    /// When the earliest ejection ends (the table must be rebuilt then).
    pub(crate) valid_until: Option<Instant>,
    pub(crate) table: RouteTable,
    pub(crate) active: Arc<[AtomicU32]>,
    /// Each endpoint's address as a URI authority, parsed once per table (an address that is not
    /// one answers 502 when chosen).
    pub(crate) authorities: Vec<Result<http::uri::Authority, String>>,
}

impl Table {
    pub(crate) fn healthy(&self) -> impl Iterator<Item = usize> + '_ {
        self.table.endpoints.iter().enumerate().filter(|(_, e)| e.healthy).map(|(i, _)| i)
    }
}

impl Gateway {
    pub(crate) fn state(&self, route: &Route) -> Arc<RouteState> {
        let current = |states: &HashMap<String, Arc<RouteState>>| {
            states.get(&route.name).filter(|state| state.table.load().service == route.service).cloned()
        };
        if let Some(state) = current(&self.states.load()) {
            return state;
        }
        let _guard = self.states_write.lock();
        if let Some(state) = current(&self.states.load()) {
            return state;
        }
        let labels = |class: &'static str| metrics::counter!("shoal_gateway_requests_total", "route" => route.name.clone(), "code" => class);
        let state = Arc::new(RouteState {
            table: ArcSwap::from_pointee(Table {
                service: route.service.clone(),
                index: u64::MAX,
                ejection_epoch: 0,
                valid_until: None,
                table: RouteTable::default(),
                active: Arc::from([]),
                authorities: Vec::new(),
            }),
            rebuild: Mutex::new(()),
            ejections: Mutex::new(HashMap::new()),
            failing: std::sync::atomic::AtomicBool::new(false),
            ejection_epoch: AtomicU64::new(0),
            fallback_next: AtomicUsize::new(0),
            last_fallback_event_ms: AtomicU64::new(0),
            requests: [labels("1xx"), labels("2xx"), labels("3xx"), labels("4xx"), labels("5xx")],
            fallbacks: metrics::counter!("shoal_gateway_router_fallbacks_total", "route" => route.name.clone()),
            latency: metrics::histogram!("shoal_gateway_request_seconds", "route" => route.name.clone()),
        });
        let mut states = HashMap::clone(&self.states.load());
        states.insert(route.name.clone(), state.clone());
        self.states.store(Arc::new(states));
        state
    }

    /// The route's endpoint table, rebuilt if the registry or an ejection changed.
    pub(crate) fn table(&self, state: &RouteState) -> Arc<Table> {
        let fresh = |t: &Table| {
            t.index == self.discovery.index()
                && t.ejection_epoch == state.ejection_epoch.load(Ordering::Acquire)
                && t.valid_until.is_none_or(|u| Instant::now() < u)
        };
        let current = state.table.load_full();
        if fresh(&current) {
            return current;
        }
        let _guard = state.rebuild.lock();
        let current = state.table.load_full();
        if fresh(&current) {
            return current;
        }
        let epoch = state.ejection_epoch.load(Ordering::Acquire);
        let (instances, index) = self.discovery.instances(&current.service, false);
        let now = Instant::now();
        let mut valid_until: Option<Instant> = None;
        let mut ejections = state.ejections.lock();
        let endpoints = instances
            .into_iter()
            .map(|i| {
                let ejected = match ejections.get_mut(&i.id).and_then(|e| e.until) {
                    Some(until) if until > now => {
                        valid_until = Some(valid_until.map_or(until, |v| v.min(until)));
                        true
                    }
                    Some(_) => {
                        // The ejection is over: try the endpoint again (one more failure ejects it).
                        if let Some(e) = ejections.get_mut(&i.id) {
                            e.until = None;
                            e.failures = self.config.eject_after.saturating_sub(1);
                        }
                        false
                    }
                    None => false,
                };
                Endpoint {
                    healthy: i.health == Health::Passing && !ejected,
                    id: i.id,
                    address: i.address,
                    weight: i.weight,
                    labels: i.labels.into_iter().map(|(name, value)| shoal_abi::Attribute { name, value }).collect(),
                }
            })
            .collect::<Vec<_>>();
        drop(ejections);
        let active: Arc<[AtomicU32]> = endpoints.iter().map(|_| AtomicU32::new(0)).collect();
        let authorities = endpoints
            .iter()
            .map(|e| e.address.parse::<http::uri::Authority>().map_err(|err| format!("`{}`: {err}", e.address)))
            .collect();
        let generation = self.generation.fetch_add(1, Ordering::Relaxed);
        let table = Arc::new(Table {
            service: current.service.clone(),
            index,
            ejection_epoch: epoch,
            valid_until,
            table: RouteTable { generation, endpoints },
            active,
            authorities,
        });
        state.table.store(table.clone());
        table
    }

    pub(crate) fn failed(&self, route: &Route, state: &RouteState, endpoint: &Endpoint, cause: &str) {
        let mut ejections = state.ejections.lock();
        state.failing.store(true, Ordering::Relaxed);
        let e = ejections.entry(endpoint.id.clone()).or_default();
        e.failures += 1;
        if e.failures >= self.config.eject_after && e.until.is_none() {
            e.until = Some(Instant::now() + self.config.eject_for);
            drop(ejections);
            state.ejection_epoch.fetch_add(1, Ordering::AcqRel);
            tracing::warn!(route = %route.name, endpoint = %endpoint.address, %cause, "endpoint ejected");
            self.event(
                &route.name,
                "ejected",
                serde_json::json!({ "instance": endpoint.id, "address": endpoint.address, "cause": cause,
                    "for_seconds": self.config.eject_for.as_secs_f64() }),
            );
        }
    }

    pub(crate) fn succeeded(&self, state: &RouteState, endpoint: &Endpoint) {
        // Free while nothing failed: one read of a flag no request writes.
        if !state.failing.load(Ordering::Relaxed) {
            return;
        }
        let mut ejections = state.ejections.lock();
        if let Some(e) = ejections.get_mut(&endpoint.id)
            && e.until.is_none()
        {
            e.failures = 0;
        }
        if ejections.values().all(|e| e.failures == 0 && e.until.is_none()) {
            state.failing.store(false, Ordering::Relaxed);
        }
    }
}
