//! One allocation cycle: the master hands the allocator plugin a snapshot of the cluster (every
//! active agent's free resources and attributes; every framework's role, weight, quota,
//! allocation and decline filters) and turns the answer into offers — after checking every
//! proposed offer, so whatever the plugin answers, nothing is ever offered twice or beyond what an
//! agent has, and no framework gets past its quota.

use std::collections::BTreeMap;

use serde::Serialize;
use shoal_abi as abi;

use shoal_protocol::{PortRange, Resources, TaskState};

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use shoal_abi::{AnyPlugin, PluginKind};
use shoal_bus::subject;

use crate::{AgentState, Master, MasterError};

/// A framework as the master accounts it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FrameworkSpec {
    /// Unique name.
    pub name: String,
    /// Role its resources are accounted to.
    pub role: String,
    /// Weight of the role (> 0).
    pub weight: f64,
    /// Most it may hold.
    pub quota: Option<Resources>,
}

/// An outstanding offer.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct OfferView {
    /// Offer id, unique for the master's lifetime.
    pub id: u64,
    /// Framework it was made to.
    pub framework: String,
    /// Agent whose resources it holds.
    pub agent_id: String,
    /// The resources.
    pub resources: Resources,
}

/// A proposed offer the master refused.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Rejected {
    /// Framework named by the plugin.
    pub framework: String,
    /// Agent named by the plugin.
    pub agent_id: String,
    /// Why it was refused.
    pub reason: String,
}

/// What one cycle did.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct AllocationReport {
    /// Offers made this cycle.
    pub offers: Vec<OfferView>,
    /// Proposals refused.
    pub rejected: Vec<Rejected>,
    /// Agents and frameworks in the snapshot.
    pub agents: usize,
    /// Frameworks in the snapshot.
    pub frameworks: usize,
    /// Each framework's revive count as the snapshot saw it.
    pub revived: BTreeMap<String, u64>,
}

/// The WIT form of the protocol's values, as the master hands them to plugins (`shoal-abi`
/// names the generated types; `shoal-protocol` knows nothing of WIT).
pub(crate) trait ToWit {
    /// The WIT type.
    type Wit;
    /// Convert.
    fn to_wit(&self) -> Self::Wit;
}

impl ToWit for Resources {
    type Wit = abi::Resources;
    fn to_wit(&self) -> abi::Resources {
        abi::Resources {
            cpus: self.cpus,
            mem_mb: self.mem_mb,
            disk_mb: self.disk_mb,
            ports: self.ports.iter().map(|r| abi::PortRange { begin: r.begin, end: r.end }).collect(),
            scalars: self.scalars.iter().map(|(k, v)| abi::Scalar { name: k.clone(), value: *v }).collect(),
        }
    }
}

impl ToWit for TaskState {
    type Wit = abi::TaskState;
    fn to_wit(&self) -> abi::TaskState {
        match self {
            TaskState::Staging => abi::TaskState::Staging,
            TaskState::Starting => abi::TaskState::Starting,
            TaskState::Running => abi::TaskState::Running,
            TaskState::Finished => abi::TaskState::Finished,
            TaskState::Failed => abi::TaskState::Failed,
            TaskState::Killed => abi::TaskState::Killed,
            TaskState::Lost => abi::TaskState::Lost,
        }
    }
}

/// Resources from the WIT record (not validated).
pub(crate) fn resources_from_wit(r: &abi::Resources) -> Resources {
    Resources {
        cpus: r.cpus,
        mem_mb: r.mem_mb,
        disk_mb: r.disk_mb,
        ports: r.ports.iter().map(|p| PortRange { begin: p.begin, end: p.end }).collect(),
        scalars: r.scalars.iter().map(|s| (s.name.clone(), s.value)).collect(),
    }
}

impl Master {
    /// Name of the allocator plugin the cycles call.
    pub fn allocator(&self) -> String {
        let name = self.allocator.lock();
        if name.is_empty() { self.config.allocator.clone() } else { name.clone() }
    }

    /// Use another allocator plugin from the next cycle on (it must be active in the registry),
    /// and run a cycle soon. Returns the previous one.
    pub fn set_allocator(&self, name: &str) -> Result<String, MasterError> {
        let registry = self.registry.as_ref().ok_or(MasterError::NoRegistry)?;
        if registry.active(PluginKind::Allocator, name).is_none() {
            return Err(MasterError::NoAllocator(name.to_owned()));
        }
        let previous = self.allocator();
        *self.allocator.lock() = name.to_owned();
        if let Some(j) = &self.journal
            && let Err(e) = j.set("allocator", name.as_bytes())
        {
            tracing::error!(cause = %e, "could not record the allocator choice; a restart returns to the configured one");
        }
        tracing::info!(allocator = name, %previous, "allocator switched");
        self.kick.notify_one();
        Ok(previous)
    }

    /// One allocation cycle: snapshot, allocator plugin, checked offers (see [`check_offers`]).
    /// Blocks on the plugin call: call it from a blocking thread.
    pub fn allocate_once(&self) -> Result<AllocationReport, MasterError> {
        let registry = self.registry.as_ref().ok_or(MasterError::NoRegistry)?;
        let now = self.clock.now_ms();
        let (task_agents, task_frameworks) = self.task_usage();
        let filters: BTreeMap<String, (Vec<shoal_abi::DeclineFilter>, bool, u64)> =
            self.frameworks.lock().keys().map(|f| (f.clone(), self.filters_of(f, now))).collect();
        let (snapshot, mut free, frameworks, mut allocated) = {
            let agents = self.agents.lock();
            let offers = self.offers.lock();
            let frameworks = self.frameworks.lock().clone();
            let mut offered: BTreeMap<&str, Resources> =
                task_agents.iter().map(|(a, r)| (a.as_str(), r.clone())).collect();
            let mut allocated: BTreeMap<String, Resources> = task_frameworks;
            for o in offers.by_id.values() {
                let held = offered.entry(o.agent_id.as_str()).or_default();
                *held = held.plus(&o.resources);
                let f = allocated.entry(o.framework.clone()).or_default();
                *f = f.plus(&o.resources);
            }
            let mut free = BTreeMap::new();
            let mut wit_agents = Vec::with_capacity(agents.len());
            for e in agents.values().filter(|e| e.state == AgentState::Active) {
                let taken = offered.get(e.reg.id.as_str()).cloned().unwrap_or_default();
                let left = e.reg.resources.minus(&taken).unwrap_or_default();
                wit_agents.push(shoal_abi::Agent {
                    id: e.reg.id.clone(),
                    hostname: e.reg.hostname.clone(),
                    attributes: e
                        .reg
                        .attributes
                        .iter()
                        .map(|(k, v)| shoal_abi::Attribute { name: k.clone(), value: v.clone() })
                        .collect(),
                    total: e.reg.resources.to_wit(),
                    free: left.to_wit(),
                });
                free.insert(e.reg.id.clone(), left);
            }
            let wit_frameworks = frameworks
                .values()
                .map(|f| shoal_abi::FrameworkInfo {
                    name: f.name.clone(),
                    role: f.role.clone(),
                    weight: f.weight,
                    quota: f.quota.as_ref().map(Resources::to_wit),
                    allocated: allocated.get(&f.name).cloned().unwrap_or_default().to_wit(),
                    filters: filters.get(&f.name).map(|x| x.0.clone()).unwrap_or_default(),
                    suppressed: filters.get(&f.name).is_some_and(|x| x.1),
                })
                .collect();
            let snapshot = shoal_abi::ClusterSnapshot { now_ms: now, agents: wit_agents, frameworks: wit_frameworks };
            (snapshot, free, frameworks, allocated)
        };
        let allocator = self.allocator();
        let answer = registry.call(PluginKind::Allocator, &allocator, |p| match p {
            AnyPlugin::Allocator(a) => shoal_abi::allocate(a, &snapshot),
            _ => unreachable!("the registry keys plugins by kind"),
        });
        let proposals = match answer {
            None => return Err(MasterError::NoAllocator(allocator)),
            Some(Err(source)) => return Err(MasterError::AllocatorFailed { name: allocator, source }),
            Some(Ok(p)) => p,
        };
        // Decline filters and suppression are the frameworks' wishes: proposals against them are
        // dropped (and reported), whatever the allocator thinks.
        let (proposals, mut filtered): (Vec<_>, Vec<_>) = proposals.into_iter().partition(|p| {
            filters.get(&p.framework).is_none_or(|(f, suppressed, _)| {
                !*suppressed && !f.iter().any(|d| d.agent_id == p.agent_id && d.until_ms > now)
            })
        });
        let (accepted, mut rejected) = check_offers(proposals, &mut free, &frameworks, &mut allocated);
        rejected.extend(filtered.drain(..).map(|p| Rejected {
            framework: p.framework,
            agent_id: p.agent_id,
            reason: "the framework declined this agent or suppressed offers".into(),
        }));
        let mut offers = self.offers.lock();
        // Agents lost during the plugin call: their offers are not made.
        let agents = self.agents.lock();
        let mut made = Vec::with_capacity(accepted.len());
        for (framework, agent_id, resources) in accepted {
            if agents.get(&agent_id).is_none_or(|e| e.state != AgentState::Active) {
                continue;
            }
            offers.next_id += 1;
            let offer = OfferView { id: offers.next_id, framework, agent_id, resources };
            offers.by_id.insert(offer.id, offer.clone());
            made.push(offer);
        }
        let revived = filters.into_iter().map(|(f, (_, _, n))| (f, n)).collect();
        Ok(AllocationReport {
            offers: made,
            rejected,
            agents: snapshot.agents.len(),
            frameworks: frameworks.len(),
            revived,
        })
    }

    /// Allocation cycles, one at a time, apart from the loop that serves agents (a cycle over
    /// many agents must not delay their registrations and heartbeats): every interval, and soon
    /// after a change (launches, ended tasks, revives, new agents), gathering whatever else
    /// happens in the next few milliseconds.
    pub(crate) async fn allocation_loop(self: Arc<Self>) {
        let mut interval = tokio::time::interval(self.config.allocation_interval.unwrap_or(Duration::from_secs(1)));
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = interval.tick() => {}
                _ = self.kick.notified() => tokio::time::sleep(Duration::from_millis(2)).await,
                () = self.until_stopped() => return,
            }
            // Nobody to offer to: no cycle (and no allocator call over every agent).
            let wanted = {
                let frameworks = self.frameworks.lock();
                let state = self.fw_state.lock();
                frameworks.keys().any(|f| !state.get(f).is_some_and(|s| s.suppressed))
                    || state.values().any(|s| !s.held.is_empty())
            };
            if wanted {
                self.cycle().await;
            }
        }
    }

    /// One allocation cycle, its events, and its offers handed to the frameworks.
    pub(crate) async fn cycle(self: &Arc<Self>) {
        let me = self.clone();
        let started = Instant::now();
        let result = tokio::task::spawn_blocking(move || me.allocate_once()).await;
        metrics::histogram!("shoal_allocation_cycle_seconds").record(started.elapsed().as_secs_f64());
        match result {
            Ok(Ok(report)) => {
                metrics::counter!("shoal_offers_made_total").increment(report.offers.len() as u64);
                metrics::counter!("shoal_offers_refused_total").increment(report.rejected.len() as u64);
                self.dispatch_offers(&report);
                self.publish_report(&report).await;
            }
            Ok(Err(e)) => tracing::warn!(cause = %e, "allocation cycle failed"),
            Err(e) => tracing::error!(cause = %e, "allocation cycle panicked"),
        }
    }

    /// Events of one cycle: one per offer made, one per proposal refused.
    pub async fn publish_report(&self, report: &AllocationReport) {
        for offer in &report.offers {
            self.events
                .emit(
                    subject::offer_event(&offer.framework, "made"),
                    "io.shoal.offer.made",
                    &format!("offers/{}", offer.id),
                    serde_json::json!(offer),
                )
                .await;
        }
        for r in &report.rejected {
            tracing::warn!(framework = %r.framework, agent = %r.agent_id, reason = %r.reason, "allocator proposal refused");
            self.events
                .emit(
                    subject::offer_event(&r.framework, "refused"),
                    "io.shoal.offer.refused",
                    &format!("allocators/{}", self.allocator()),
                    serde_json::json!({ "allocator": self.allocator(), "proposal": r }),
                )
                .await;
        }
    }
}

/// Check the plugin's proposals in order against `free` (per agent) and the frameworks' quotas
/// and allocations; accepted ones are taken out of `free` and added to `allocated`.
pub fn check_offers(
    proposals: Vec<abi::Offer>,
    free: &mut BTreeMap<String, Resources>,
    frameworks: &BTreeMap<String, FrameworkSpec>,
    allocated: &mut BTreeMap<String, Resources>,
) -> (Vec<(String, String, Resources)>, Vec<Rejected>) {
    let mut accepted = Vec::new();
    let mut rejected = Vec::new();
    for p in proposals {
        let reject = |reason: String| Rejected { framework: p.framework.clone(), agent_id: p.agent_id.clone(), reason };
        let Some(spec) = frameworks.get(&p.framework) else {
            rejected.push(reject(format!("no framework `{}`", p.framework)));
            continue;
        };
        let Some(available) = free.get(&p.agent_id) else {
            rejected.push(reject(format!("no active agent `{}`", p.agent_id)));
            continue;
        };
        let resources = match resources_from_wit(&p.resources).validate() {
            Ok(r) => r,
            Err(e) => {
                rejected.push(reject(e.to_string()));
                continue;
            }
        };
        if resources.is_empty() {
            rejected.push(reject("an empty offer".into()));
            continue;
        }
        let Some(left) = available.minus(&resources) else {
            rejected.push(reject(format!("{resources} does not fit in the agent's free {available}")));
            continue;
        };
        let holds = allocated.get(&p.framework).cloned().unwrap_or_default().plus(&resources);
        if let Some(quota) = &spec.quota
            && !holds.fits_in(quota)
        {
            rejected.push(reject(format!("{holds} would exceed the framework's quota {quota}")));
            continue;
        }
        free.insert(p.agent_id.clone(), left);
        allocated.insert(p.framework.clone(), holds);
        accepted.push((p.framework, p.agent_id, resources));
    }
    (accepted, rejected)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn offer(framework: &str, agent: &str, text: &str) -> abi::Offer {
        abi::Offer {
            framework: framework.into(),
            agent_id: agent.into(),
            resources: Resources::parse(text).unwrap().to_wit(),
        }
    }

    #[test]
    fn nothing_is_over_committed_whatever_the_plugin_says() {
        let mut free = BTreeMap::from([
            ("a1".to_owned(), Resources::parse("cpus:4;mem:4096;ports:[31000-31009]").unwrap()),
            ("a2".to_owned(), Resources::parse("cpus:2;mem:1024").unwrap()),
        ]);
        let frameworks = BTreeMap::from([
            ("web".to_owned(), FrameworkSpec { name: "web".into(), role: "web".into(), weight: 1.0, quota: None }),
            (
                "batch".to_owned(),
                FrameworkSpec {
                    name: "batch".into(),
                    role: "batch".into(),
                    weight: 1.0,
                    quota: Some(Resources::parse("cpus:1;mem:512").unwrap()),
                },
            ),
        ]);
        let mut allocated = BTreeMap::new();
        let mut nan = offer("web", "a2", "cpus:1");
        nan.resources.mem_mb = f64::NAN;
        let proposals = vec![
            offer("web", "a1", "cpus:3;mem:2048;ports:[31000-31004]"),
            offer("web", "a1", "cpus:2"),                     // a1 has 1 cpu left
            offer("web", "a1", "cpus:1;ports:[31004-31005]"), // 31004 is taken
            offer("batch", "a2", "cpus:2;mem:512"),           // past batch's quota
            offer("batch", "a2", "cpus:1;mem:512"),
            offer("nobody", "a2", "cpus:0.5"),
            offer("web", "a9", "cpus:0.5"),
            offer("web", "a2", "cpus:0"),
            nan,
            offer("web", "a1", "cpus:1;ports:[31005-31009]"),
        ];
        let (accepted, rejected) = check_offers(proposals, &mut free, &frameworks, &mut allocated);
        assert_eq!(accepted.len(), 3, "{rejected:#?}");
        let reasons: Vec<&str> = rejected.iter().map(|r| r.reason.as_str()).collect();
        assert!(reasons[0].contains("does not fit"), "{reasons:?}");
        assert!(reasons[1].contains("does not fit"), "{reasons:?}");
        assert!(reasons[2].contains("quota"), "{reasons:?}");
        assert!(reasons[3].contains("no framework"), "{reasons:?}");
        assert!(reasons[4].contains("no active agent"), "{reasons:?}");
        assert!(reasons[5].contains("empty"), "{reasons:?}");
        assert!(reasons[6].contains("mem_mb"), "{reasons:?}");
        assert_eq!(free["a1"].to_string(), "cpus:0;mem:2048;disk:0");
        assert_eq!(free["a2"].to_string(), "cpus:1;mem:512;disk:0");
        assert_eq!(allocated["web"].to_string(), "cpus:4;mem:2048;disk:0;ports:[31000-31009]");
    }
}
