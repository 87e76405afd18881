//! One allocation cycle: the master hands the allocator plugin a snapshot of the cluster (every
//! active agent's free resources and attributes; every framework's role, weight, quota,
//! allocation and decline filters) and turns the answer into offers — after checking every
//! proposed offer, so whatever the plugin answers, nothing is ever offered twice or beyond what an
//! agent has, and no framework gets past its quota.

use std::collections::BTreeMap;

use serde::Serialize;
use shoal_abi as abi;

use crate::Resources;

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

impl Resources {
    /// The WIT record.
    pub fn to_wit(&self) -> abi::Resources {
        abi::Resources {
            cpus: self.cpus,
            mem_mb: self.mem_mb,
            disk_mb: self.disk_mb,
            ports: self.ports.iter().map(|r| abi::PortRange { begin: r.begin, end: r.end }).collect(),
            scalars: self.scalars.iter().map(|(k, v)| abi::Scalar { name: k.clone(), value: *v }).collect(),
        }
    }

    /// From the WIT record (not validated).
    pub fn from_wit(r: &abi::Resources) -> Resources {
        Resources {
            cpus: r.cpus,
            mem_mb: r.mem_mb,
            disk_mb: r.disk_mb,
            ports: r.ports.iter().map(|p| crate::PortRange { begin: p.begin, end: p.end }).collect(),
            scalars: r.scalars.iter().map(|s| (s.name.clone(), s.value)).collect(),
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
        let resources = match Resources::from_wit(&p.resources).validate() {
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
