//! The node's health checks of registered instances: every instance registered with a `check`
//! is checked by a [`HealthChecker`]; verdicts become the instance's health in the service
//! registry (so the gateway routes only to passing instances) and `io.shoal.health.*` events on
//! the bus. (Tasks' checks are run by their agent, next to the task.)

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use shoal_abi::{AnyPlugin, PluginKind, health};
use shoal_bus::event::CloudEvent;
use shoal_bus::{SharedBus, subject};
use shoal_discovery::{Discovery, Health};
use shoal_health::{CheckSpec, HealthChecker, HealthUpdate, Outcome, Status, Target, WasmCheck, WasmCheckError};
use shoal_registry::Registry;
use tokio::sync::mpsc;

/// Runs `wasm` checks with the health-check plugins of the registry.
pub struct RegistryChecks(pub Arc<Registry>);

impl WasmCheck for RegistryChecks {
    fn check(
        &self,
        plugin: &str,
        task_id: &str,
        target: &Target,
        config: &str,
        timeout: Duration,
    ) -> Result<Outcome, WasmCheckError> {
        let deadline = std::time::Instant::now() + timeout;
        let target = health::CheckTarget {
            task_id: task_id.to_owned(),
            address: target.address.clone(),
            ports: target.ports.clone(),
            config: config.to_owned(),
        };
        let answer = self.0.call(PluginKind::HealthCheck, plugin, |p| match p {
            AnyPlugin::HealthCheck(h) => shoal_abi::check_health_until(h, &target, Some(deadline)),
            _ => unreachable!("the registry keys plugins by kind"),
        });
        match answer {
            None => Err(WasmCheckError::NoPlugin(plugin.to_owned())),
            Some(Err(e)) => Err(WasmCheckError::Failed { plugin: plugin.to_owned(), cause: Box::new(e) }),
            Some(Ok(r)) => Ok(Outcome { passed: r.status == health::CheckStatus::Healthy, message: r.message }),
        }
    }
}

/// `service/instance` ↔ the checker's id.
fn check_id(service: &str, instance: &str) -> String {
    format!("{service}/{instance}")
}

/// Keep the checker in step with the registry: start a check for every instance registered with
/// one, restart it when its spec or address changes, stop it when the instance goes.
pub async fn check_registered_instances(
    discovery: Arc<Discovery>,
    registry: Arc<Registry>,
    bus: SharedBus,
    source: String,
) {
    let (tx, mut updates) = mpsc::unbounded_channel::<HealthUpdate>();
    let checker = HealthChecker::new(
        Arc::new(move |u| {
            let _ = tx.send(u);
        }),
        Some(Arc::new(RegistryChecks(registry))),
    );
    let mut changes = discovery.subscribe();
    // What runs now: check id → (address, spec).
    let mut running: HashMap<String, (String, CheckSpec)> = HashMap::new();
    let sync = |discovery: &Discovery, service: &str, instance: &str, running: &mut HashMap<_, _>| {
        let id = check_id(service, instance);
        let (instances, _) = discovery.instances(service, false);
        let wanted = instances.into_iter().find(|i| i.id == instance).and_then(|i| {
            let check = i.check?;
            Some((i.address, check, i.ports))
        });
        match wanted {
            Some((address, spec, ports)) => {
                if running.get(&id).is_some_and(|(a, s)| *a == address && *s == spec) {
                    return;
                }
                let Some(target) = target_of(&address, &ports) else { return };
                if let Err(e) = checker.start(id.clone(), target, spec.clone()) {
                    // Registration validated the spec; this would be a bug.
                    tracing::error!(check = %id, cause = %e, "could not start a health check");
                    return;
                }
                running.insert(id, (address, spec));
            }
            None => {
                if running.remove(&id).is_some() {
                    checker.stop(&id);
                }
            }
        }
    };
    loop {
        tokio::select! {
            change = changes.recv() => match change {
                Ok(change) if !change.service.is_empty() => {
                    sync(&discovery, &change.service, &change.instance, &mut running);
                }
                Ok(_) => {}
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                    // Missed changes: resynchronise with every instance.
                    let ids: Vec<String> = running.keys().cloned().collect();
                    for id in ids {
                        if let Some((service, instance)) = id.split_once('/') {
                            sync(&discovery, service, instance, &mut running);
                        }
                    }
                    for (service, _, _) in discovery.services() {
                        for i in discovery.instances(&service, false).0 {
                            sync(&discovery, &service, &i.id, &mut running);
                        }
                    }
                }
                Err(_) => break,
            },
            Some(update) = updates.recv() => {
                let Some((service, instance)) = update.id.split_once('/') else { continue };
                if !running.contains_key(&update.id) {
                    continue; // a late verdict of a check stopped meanwhile
                }
                let health = match update.state.status {
                    Status::Healthy => Health::Passing,
                    Status::Unhealthy => Health::Critical,
                    Status::Unknown => Health::Unknown,
                };
                let _ = discovery.report(service, instance, health, &update.state.message);
                publish(&bus, &source, service, instance, &update).await;
            }
        }
    }
    checker.stop_all();
}

/// `host:port` and named ports → the check's target (main port first).
fn target_of(address: &str, ports: &std::collections::BTreeMap<String, u16>) -> Option<Target> {
    let (host, port) = address.rsplit_once(':')?;
    let main: u16 = port.parse().ok()?;
    let mut list = vec![main];
    list.extend(ports.values().copied().filter(|p| *p != main));
    Some(Target { address: host.trim_start_matches('[').trim_end_matches(']').to_owned(), ports: list })
}

async fn publish(bus: &SharedBus, source: &str, service: &str, instance: &str, update: &HealthUpdate) {
    let action = match (update.state.given_up, update.state.status) {
        (true, _) => "failed",
        (false, Status::Healthy) => "passing",
        (false, Status::Unhealthy) => "critical",
        (false, Status::Unknown) => "unknown",
    };
    let event = CloudEvent::new(
        source,
        format!("io.shoal.health.{action}"),
        format!("services/{service}/instances/{instance}"),
        serde_json::json!({
            "service": service, "instance": instance, "check": update.kind, "status": update.state.status,
            "consecutive_failures": update.state.consecutive_failures, "given_up": update.state.given_up,
            "message": update.state.message,
        }),
    );
    if let Err(err) =
        shoal_bus::event::publish_event(bus.as_ref(), &subject::health_event(service, action), &event).await
    {
        tracing::warn!(cause = %err, "could not publish a health event");
    }
}
