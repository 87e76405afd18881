//! Weighted Dominant Resource Fairness (Ghodsi et al., NSDI 2011), the default allocator.
//!
//! Each cycle walks the agents that have free resources and offers all of an agent's free
//! resources to the framework with the lowest *weighted dominant share* — the largest share it
//! holds of any resource of the cluster, divided by its role's weight — skipping frameworks that
//! are suppressed, that declined this agent recently, or that are at their quota. After each offer
//! the receiver's share grows, so the next agent goes to whoever is now poorest. This is Mesos's
//! hierarchical DRF allocator without the role hierarchy.
//!
//! Cost: O(agents × log frameworks) with a binary heap, plus the frameworks skipped on an agent.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use shoal_sdk::{Allocator, ClusterSnapshot, FrameworkInfo, Offer, Resources};

struct Drf;

/// A framework in the heap: lowest share first, then by name for a deterministic order.
struct Entry {
    share: f64,
    index: usize,
    name_rank: usize,
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Entry {
    fn cmp(&self, other: &Self) -> Ordering {
        // BinaryHeap is a max-heap: reverse so the smallest share pops first.
        other.share.total_cmp(&self.share).then_with(|| other.name_rank.cmp(&self.name_rank))
    }
}

fn weighted_share(allocated: &Resources, total: &Resources, weight: f64) -> f64 {
    let weight = if weight > 0.0 { weight } else { 1.0 };
    allocated.dominant_share(total) / weight
}

/// What of `free` the framework may still take under its quota, or `None` when it is at quota.
fn under_quota(framework: &FrameworkInfo, allocated: &Resources, free: &Resources) -> Option<Resources> {
    let Some(quota) = &framework.quota else { return Some(free.clone()) };
    let room = |q: f64, a: f64| (q - a).max(0.0);
    let capped = Resources {
        cpus: free.cpus.min(room(quota.cpus, allocated.cpus)),
        mem_mb: free.mem_mb.min(room(quota.mem_mb, allocated.mem_mb)),
        disk_mb: free.disk_mb.min(room(quota.disk_mb, allocated.disk_mb)),
        ports: free.ports.clone(),
        scalars: free.scalars.clone(),
    };
    // At quota on cpus or memory means nothing useful is left to offer.
    let useful = (free.cpus <= 0.0 || capped.cpus > 0.0)
        && (free.mem_mb <= 0.0 || capped.mem_mb > 0.0)
        && (capped.cpus > 0.0 || capped.mem_mb > 0.0);
    useful.then_some(capped)
}

impl Allocator for Drf {
    fn allocate(snapshot: ClusterSnapshot) -> Vec<Offer> {
        let mut total = Resources::empty();
        for agent in &snapshot.agents {
            total.add(&agent.total);
        }
        let frameworks = &snapshot.frameworks;
        let mut allocated: Vec<Resources> = frameworks.iter().map(|f| f.allocated.clone()).collect();

        let mut by_name: Vec<usize> = (0..frameworks.len()).collect();
        by_name.sort_by(|&a, &b| frameworks[a].name.cmp(&frameworks[b].name));
        let mut rank = vec![0; frameworks.len()];
        for (r, &i) in by_name.iter().enumerate() {
            rank[i] = r;
        }

        let mut heap: BinaryHeap<Entry> = frameworks
            .iter()
            .enumerate()
            .filter(|(_, f)| !f.suppressed)
            .map(|(i, f)| Entry {
                share: weighted_share(&allocated[i], &total, f.weight),
                index: i,
                name_rank: rank[i],
            })
            .collect();

        let mut offers = Vec::new();
        let mut skipped = Vec::new();
        for agent in &snapshot.agents {
            if agent.free.cpus <= 0.0 && agent.free.mem_mb <= 0.0 {
                continue;
            }
            while let Some(entry) = heap.pop() {
                let f = &frameworks[entry.index];
                let filtered = f.filters.iter().any(|d| d.agent_id == agent.id && d.until_ms > snapshot.now_ms);
                let offer = if filtered { None } else { under_quota(f, &allocated[entry.index], &agent.free) };
                match offer {
                    Some(resources) => {
                        allocated[entry.index].add(&resources);
                        offers.push(Offer { framework: f.name.clone(), agent_id: agent.id.clone(), resources });
                        heap.push(Entry { share: weighted_share(&allocated[entry.index], &total, f.weight), ..entry });
                        break;
                    }
                    None => skipped.push(entry),
                }
            }
            heap.extend(skipped.drain(..));
        }
        offers
    }
}

shoal_sdk::export_allocator!(Drf);
