//! Shoal's service registry: which instances of which service exist, where, and whether they are
//! healthy — the part of Consul/Eureka that discovery and the gateway read.
//!
//! - An **instance** belongs to a service and has an address (`host:port`), named ports, a
//!   weight, labels, a version, a health state and a source: a task (fed by the master, removed
//!   when the task ends) or an external process (registered through the API, with a TTL it
//!   renews by heartbeats, Eureka-style; an instance whose TTL lapses expires).
//! - Every change bumps one registry-wide **index** (monotonic, like Consul's `X-Consul-Index`).
//!   [`Discovery::wait`] blocks until the index passes a value or a timeout ends: the blocking
//!   query behind `GET /v1/services/<svc>?index=N`. Changes are also sent on a broadcast
//!   channel ([`Discovery::subscribe`]) for SSE and bus events.
//! - **Self-preservation** (Eureka): when one expiry sweep would expire more than a threshold
//!   share of the TTL-bound instances at once (default 50 %, with at least 3 of them), that looks
//!   like the registry's own network failing rather than the instances; the sweep expires
//!   nothing, the registry says so ([`Discovery::self_preservation`]) and a change event carries
//!   it, until a sweep finds a normal share again.
//!
//! What this crate must never do: change an instance without bumping the index (watchers would
//! miss it), or expire anything while self-preservation holds.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use shoal_health::CheckSpec;
use tokio::sync::{broadcast, watch};

/// Longest service name; names are `[a-z0-9-]{1,63}` (DNS labels: they go into host names,
/// URLs and bus subjects).
pub const MAX_NAME_LEN: usize = 63;
/// Longest instance id.
pub const MAX_ID_LEN: usize = 128;
/// Most labels on one instance.
pub const MAX_LABELS: usize = 64;
/// Shortest and longest TTL of an external registration.
pub const TTL_RANGE: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(3600));
/// Share of TTL-bound instances that may expire in one sweep before self-preservation holds.
pub const DEFAULT_PRESERVATION_THRESHOLD: f64 = 0.5;

/// Health of an instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    /// Passing its checks (or, for an external instance, heartbeating).
    Passing,
    /// Failing its checks.
    Critical,
    /// Not checked yet (a task in its grace period).
    Unknown,
}

/// Where an instance comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// A task run by Shoal; the master adds and removes it.
    Task,
    /// A process registered through the API, kept alive by heartbeats.
    External,
}

/// What a registration says about an instance.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Registration {
    /// `host:port` of the instance's main port.
    pub address: String,
    /// Named ports, e.g. `{"http": 8080, "admin": 9090}`.
    #[serde(default)]
    pub ports: BTreeMap<String, u16>,
    /// Relative weight for weighted routing rules; default 1, 0 = never picked.
    #[serde(default = "one")]
    pub weight: u32,
    /// Labels, e.g. `version=2`.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Version of the app the instance runs.
    #[serde(default)]
    pub version: String,
    /// Health at registration; default passing for external instances.
    #[serde(default)]
    pub health: Option<Health>,
    /// Seconds until the registration expires unless renewed (external instances).
    #[serde(default)]
    pub ttl_seconds: Option<u64>,
    /// A health check the node runs against the instance (see [`shoal_health::CheckSpec`]);
    /// an instance with a check starts `unknown` and is routed to once it passes.
    #[serde(default)]
    pub check: Option<CheckSpec>,
}

fn one() -> u32 {
    1
}

/// An instance as the registry holds it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Instance {
    /// Instance id, unique in its service.
    pub id: String,
    /// Service name.
    pub service: String,
    /// `host:port`.
    pub address: String,
    /// Named ports.
    pub ports: BTreeMap<String, u16>,
    /// Relative weight.
    pub weight: u32,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// App version.
    pub version: String,
    /// Health.
    pub health: Health,
    /// Task or external.
    pub source: Source,
    /// TTL of an external registration, in seconds.
    pub ttl_seconds: Option<u64>,
    /// The instance's health check, if it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub check: Option<CheckSpec>,
    /// What the last health check saw: at most `shoal_health::MAX_OUTPUT` bytes, then
    /// `shoal_health::TRUNCATED`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub health_output: String,
    /// Index of the instance's last change.
    pub modify_index: u64,
    #[serde(skip)]
    expires_at: Option<Instant>,
}

/// A change, as sent to subscribers.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Change {
    /// Registry index after the change.
    pub index: u64,
    /// Service that changed.
    pub service: String,
    /// Instance that changed.
    pub instance: String,
    /// `registered`, `updated`, `health`, `deregistered`, `expired`, `self-preservation-on`, `self-preservation-off`.
    pub action: &'static str,
}

/// Why a registry operation was refused. Nothing changed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DiscoveryError {
    /// A service name or instance id is malformed.
    #[error("invalid {what} `{value}`: {rule}")]
    InvalidName {
        /// `service name` or `instance id`.
        what: &'static str,
        /// The value.
        value: String,
        /// The rule it breaks.
        rule: &'static str,
    },
    /// The registration is malformed.
    #[error("invalid registration: {0}")]
    Invalid(String),
    /// No such instance.
    #[error("no instance `{instance}` in service `{service}`")]
    NotFound {
        /// Service.
        service: String,
        /// Instance.
        instance: String,
    },
    /// The instance exists but belongs to a task: only the master changes it.
    #[error("instance `{0}` is a task's; it is managed by the master, not through registrations")]
    NotExternal(String),
}

/// Check a service name.
pub fn validate_service(name: &str) -> Result<(), DiscoveryError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-');
    if ok {
        Ok(())
    } else {
        Err(DiscoveryError::InvalidName {
            what: "service name",
            value: name.chars().take(80).collect(),
            rule: "1-63 characters of a-z, 0-9 and '-', not starting with '-'",
        })
    }
}

/// Check an instance id.
pub fn validate_instance(id: &str) -> Result<(), DiscoveryError> {
    let ok = !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'));
    if ok {
        Ok(())
    } else {
        Err(DiscoveryError::InvalidName {
            what: "instance id",
            value: id.chars().take(140).collect(),
            rule: "1-128 characters of A-Z, a-z, 0-9, '-', '_', '.', ':'",
        })
    }
}

fn validate_registration(r: &Registration) -> Result<(), DiscoveryError> {
    let bad = |m: String| Err(DiscoveryError::Invalid(m));
    let Some((host, port)) = r.address.rsplit_once(':') else {
        return bad(format!("address `{}` is not host:port", r.address));
    };
    if host.is_empty() || host.len() > 253 || host.contains(char::is_whitespace) || port.parse::<u16>().is_err() {
        return bad(format!("address `{}` is not host:port", r.address));
    }
    if r.labels.len() > MAX_LABELS {
        return bad(format!("{} labels; at most {MAX_LABELS}", r.labels.len()));
    }
    if r.labels.iter().any(|(k, v)| k.is_empty() || k.len() > 128 || v.len() > 1024) {
        return bad("label names must be 1-128 bytes and values at most 1024".into());
    }
    if let Some(ttl) = r.ttl_seconds {
        let (min, max) = TTL_RANGE;
        if ttl < min.as_secs() || ttl > max.as_secs() {
            return bad(format!("ttl_seconds {ttl} is outside {}..={}", min.as_secs(), max.as_secs()));
        }
    }
    if r.version.len() > 128 {
        return bad("version longer than 128 bytes".into());
    }
    if let Some(check) = &r.check {
        check.validate().map_err(|e| DiscoveryError::Invalid(e.to_string()))?;
    }
    Ok(())
}

#[derive(Default)]
struct State {
    services: BTreeMap<String, BTreeMap<String, Instance>>,
    index: u64,
    preserving: bool,
}

/// The service registry. Share it in an `Arc`.
pub struct Discovery {
    state: RwLock<State>,
    index_tx: watch::Sender<u64>,
    changes: broadcast::Sender<Change>,
    threshold: f64,
}

impl Default for Discovery {
    fn default() -> Self {
        Discovery::new(DEFAULT_PRESERVATION_THRESHOLD)
    }
}

impl Discovery {
    /// An empty registry; self-preservation holds when a sweep would expire more than
    /// `threshold` (0..=1) of the TTL-bound instances (≥ 1.0 disables it).
    pub fn new(threshold: f64) -> Self {
        let (index_tx, _) = watch::channel(0);
        let (changes, _) = broadcast::channel(1024);
        Discovery { state: RwLock::new(State::default()), index_tx, changes, threshold }
    }

    /// The current index.
    pub fn index(&self) -> u64 {
        self.state.read().index
    }

    /// Whether self-preservation holds right now.
    pub fn self_preservation(&self) -> bool {
        self.state.read().preserving
    }

    /// Changes as they happen.
    pub fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.changes.subscribe()
    }

    fn bump(&self, state: &mut State, service: &str, instance: &str, action: &'static str) -> u64 {
        state.index += 1;
        let index = state.index;
        let _ = self.changes.send(Change { index, service: service.into(), instance: instance.into(), action });
        self.index_tx.send_replace(index);
        index
    }

    /// Register or update an external instance (a PUT: the same id again replaces it and renews
    /// its TTL). Returns the new index.
    pub fn register(&self, service: &str, id: &str, registration: Registration) -> Result<u64, DiscoveryError> {
        self.upsert(service, id, registration, Source::External)
    }

    /// Add or update a task's instance (the master calls this; no TTL: it lives as long as the
    /// task).
    pub fn upsert_task(&self, service: &str, id: &str, registration: Registration) -> Result<u64, DiscoveryError> {
        self.upsert(service, id, Registration { ttl_seconds: None, ..registration }, Source::Task)
    }

    fn upsert(&self, service: &str, id: &str, r: Registration, source: Source) -> Result<u64, DiscoveryError> {
        validate_service(service)?;
        validate_instance(id)?;
        validate_registration(&r)?;
        let mut state = self.state.write();
        let existing = state.services.get(service).and_then(|s| s.get(id));
        if let Some(existing) = existing
            && existing.source != source
        {
            return Err(DiscoveryError::NotExternal(id.into()));
        }
        let health = r.health.unwrap_or(match (source, &r.check) {
            // Checked instances keep the verdict of their check across re-registrations.
            (_, Some(check)) => {
                existing.filter(|e| e.check.as_ref() == Some(check)).map_or(Health::Unknown, |e| e.health)
            }
            (Source::External, None) => Health::Passing,
            (Source::Task, None) => existing.map_or(Health::Unknown, |e| e.health),
        });
        let action = if existing.is_some() { "updated" } else { "registered" };
        let unchanged = existing.is_some_and(|e| {
            e.address == r.address
                && e.ports == r.ports
                && e.weight == r.weight
                && e.labels == r.labels
                && e.version == r.version
                && e.health == health
                && e.ttl_seconds == r.ttl_seconds
                && e.check == r.check
        });
        let expires_at = r.ttl_seconds.map(|t| Instant::now() + Duration::from_secs(t));
        if unchanged {
            // A renewal: extend the TTL without waking every watcher.
            if let Some(e) = state.services.get_mut(service).and_then(|s| s.get_mut(id)) {
                e.expires_at = expires_at;
            }
            return Ok(state.index);
        }
        let existing_output = existing.map(|e| e.health_output.clone()).unwrap_or_default();
        let index = self.bump(&mut state, service, id, action);
        let instance = Instance {
            id: id.into(),
            service: service.into(),
            address: r.address,
            ports: r.ports,
            weight: r.weight,
            labels: r.labels,
            version: r.version,
            health,
            source,
            ttl_seconds: r.ttl_seconds,
            health_output: existing_output,
            check: r.check,
            modify_index: index,
            expires_at,
        };
        state.services.entry(service.into()).or_default().insert(id.into(), instance);
        Ok(index)
    }

    /// Renew an external instance's TTL (a heartbeat). Returns the index.
    pub fn heartbeat(&self, service: &str, id: &str) -> Result<u64, DiscoveryError> {
        let mut state = self.state.write();
        let index = state.index;
        let instance = state
            .services
            .get_mut(service)
            .and_then(|s| s.get_mut(id))
            .ok_or_else(|| DiscoveryError::NotFound { service: service.into(), instance: id.into() })?;
        if instance.source != Source::External {
            return Err(DiscoveryError::NotExternal(id.into()));
        }
        instance.expires_at = instance.ttl_seconds.map(|t| Instant::now() + Duration::from_secs(t));
        Ok(index)
    }

    /// Set an instance's health (the agent's checks report through the master). No-op when
    /// unchanged.
    pub fn set_health(&self, service: &str, id: &str, health: Health) -> Result<u64, DiscoveryError> {
        self.update_health(service, id, health, None)
    }

    /// Record a health check's verdict and what it saw. Watchers wake only when the health
    /// changes; the output is kept either way.
    pub fn report(&self, service: &str, id: &str, health: Health, output: &str) -> Result<u64, DiscoveryError> {
        self.update_health(service, id, health, Some(output))
    }

    fn update_health(
        &self,
        service: &str,
        id: &str,
        health: Health,
        output: Option<&str>,
    ) -> Result<u64, DiscoveryError> {
        let mut state = self.state.write();
        let instance = state
            .services
            .get_mut(service)
            .and_then(|s| s.get_mut(id))
            .ok_or_else(|| DiscoveryError::NotFound { service: service.into(), instance: id.into() })?;
        if let Some(output) = output {
            instance.health_output = shoal_health::bound_output(output);
        }
        if instance.health == health {
            return Ok(state.index);
        }
        let index = self.bump(&mut state, service, id, "health");
        if let Some(i) = state.services.get_mut(service).and_then(|s| s.get_mut(id)) {
            i.health = health;
            i.modify_index = index;
        }
        Ok(index)
    }

    /// Remove an instance. Returns the new index.
    pub fn deregister(&self, service: &str, id: &str) -> Result<u64, DiscoveryError> {
        let mut state = self.state.write();
        let removed = state.services.get_mut(service).and_then(|s| s.remove(id));
        if removed.is_none() {
            return Err(DiscoveryError::NotFound { service: service.into(), instance: id.into() });
        }
        if state.services.get(service).is_some_and(BTreeMap::is_empty) {
            state.services.remove(service);
        }
        Ok(self.bump(&mut state, service, id, "deregistered"))
    }

    /// Every service with its instance counts: `(name, instances, passing)`.
    pub fn services(&self) -> Vec<(String, usize, usize)> {
        let state = self.state.read();
        state
            .services
            .iter()
            .map(|(name, s)| (name.clone(), s.len(), s.values().filter(|i| i.health == Health::Passing).count()))
            .collect()
    }

    /// The instances of `service` (only passing ones when `healthy_only`), by id, and the index
    /// they are valid at.
    pub fn instances(&self, service: &str, healthy_only: bool) -> (Vec<Instance>, u64) {
        let state = self.state.read();
        let list = state
            .services
            .get(service)
            .map(|s| s.values().filter(|i| !healthy_only || i.health == Health::Passing).cloned().collect())
            .unwrap_or_default();
        (list, state.index)
    }

    /// Wait until the index is greater than `index` or `timeout` passes; returns the index then.
    pub async fn wait(&self, index: u64, timeout: Duration) -> u64 {
        let mut rx = self.index_tx.subscribe();
        let _ = tokio::time::timeout(timeout, rx.wait_for(|&i| i > index)).await;
        *rx.borrow()
    }

    /// Expire external instances whose TTL lapsed, unless that would expire more than the
    /// threshold share of TTL-bound instances at once (self-preservation). Returns how many
    /// expired.
    pub fn sweep(&self) -> usize {
        self.sweep_at(Instant::now())
    }

    fn sweep_at(&self, now: Instant) -> usize {
        let mut state = self.state.write();
        let mut bound = 0usize;
        let mut lapsed = Vec::new();
        for (service, instances) in &state.services {
            for instance in instances.values() {
                if let Some(at) = instance.expires_at {
                    bound += 1;
                    if at <= now {
                        lapsed.push((service.clone(), instance.id.clone()));
                    }
                }
            }
        }
        let preserve = bound >= 3 && (lapsed.len() as f64) > self.threshold * bound as f64;
        if preserve != state.preserving {
            state.preserving = preserve;
            let action = if preserve { "self-preservation-on" } else { "self-preservation-off" };
            self.bump(&mut state, "", "", action);
            if preserve {
                tracing::warn!(
                    lapsed = lapsed.len(),
                    of = bound,
                    "self-preservation: too many registrations lapsed at once; expiring none"
                );
            }
        }
        if preserve {
            return 0;
        }
        for (service, id) in &lapsed {
            if let Some(s) = state.services.get_mut(service) {
                s.remove(id);
                if s.is_empty() {
                    state.services.remove(service);
                }
            }
            self.bump(&mut state, service, id, "expired");
        }
        lapsed.len()
    }

    /// A thread-free sweeper: call from a tokio task every `interval`.
    pub async fn run_sweeper(self: std::sync::Arc<Self>, interval: Duration) {
        let mut tick = tokio::time::interval(interval);
        loop {
            tick.tick().await;
            self.sweep();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg(port: u16, ttl: Option<u64>) -> Registration {
        Registration {
            address: format!("127.0.0.1:{port}"),
            ports: BTreeMap::new(),
            weight: 1,
            labels: BTreeMap::new(),
            version: "1".into(),
            health: None,
            ttl_seconds: ttl,
            check: None,
        }
    }

    #[test]
    fn ttl_expiry_and_self_preservation() {
        let d = Discovery::default();
        for i in 0..4 {
            d.register("web", &format!("w{i}"), reg(8000 + i, Some(10))).expect("register");
        }
        d.register("db", "d0", reg(5432, None)).expect("no ttl");
        let now = Instant::now();
        // One of four lapses: normal, it expires.
        d.heartbeat("web", "w0").expect("hb");
        d.heartbeat("web", "w1").expect("hb");
        d.heartbeat("web", "w2").expect("hb");
        {
            let mut s = d.state.write();
            s.services.get_mut("web").and_then(|w| w.get_mut("w3")).expect("w3").expires_at = Some(now);
        }
        assert_eq!(d.sweep_at(now), 1);
        assert!(!d.self_preservation());
        // All three left lapse at once: that is the registry's network, not the instances.
        assert_eq!(d.sweep_at(now + Duration::from_secs(11)), 0);
        assert!(d.self_preservation());
        assert_eq!(d.instances("web", false).0.len(), 3);
        // Heartbeats come back: preservation ends.
        for i in 0..3 {
            d.heartbeat("web", &format!("w{i}")).expect("hb");
        }
        assert_eq!(d.sweep(), 0);
        assert!(!d.self_preservation());
        // Instances without a TTL never expire.
        assert_eq!(d.instances("db", false).0.len(), 1);
    }

    #[test]
    fn bad_input_changes_nothing() {
        let d = Discovery::default();
        assert!(matches!(d.register("Web!", "a", reg(1, None)), Err(DiscoveryError::InvalidName { .. })));
        assert!(matches!(d.register("web", "a b", reg(1, None)), Err(DiscoveryError::InvalidName { .. })));
        let mut r = reg(1, Some(0));
        assert!(matches!(d.register("web", "a", r.clone()), Err(DiscoveryError::Invalid(_))));
        r.ttl_seconds = None;
        r.address = "nohostport".into();
        assert!(matches!(d.register("web", "a", r), Err(DiscoveryError::Invalid(_))));
        assert_eq!(d.index(), 0);
        d.upsert_task("web", "task-1", reg(2, None)).expect("task");
        assert!(matches!(d.register("web", "task-1", reg(3, None)), Err(DiscoveryError::NotExternal(_))));
        assert!(matches!(d.heartbeat("web", "task-1"), Err(DiscoveryError::NotExternal(_))));
        assert_eq!(d.instances("web", false).0[0].address, "127.0.0.1:2");
    }

    #[test]
    fn check_output_is_bounded_with_a_marker() {
        let d = Discovery::default();
        d.register("web", "a", reg(1, None)).expect("register");
        // Multi-byte characters across the cut: it falls on a character boundary.
        let long = "é".repeat(shoal_health::MAX_OUTPUT);
        d.report("web", "a", Health::Critical, &long).expect("report");
        let kept = d.instances("web", false).0[0].health_output.clone();
        assert!(kept.ends_with(shoal_health::TRUNCATED), "{kept}");
        assert_eq!(kept.len(), shoal_health::MAX_OUTPUT + shoal_health::TRUNCATED.len());
        d.report("web", "a", Health::Passing, "ok").expect("report");
        assert_eq!(d.instances("web", false).0[0].health_output, "ok");
    }
}
