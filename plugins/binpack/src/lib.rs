//! Bin-packing allocator: tasks pile up on the fullest machines before another one is used, so
//! whole machines stay free (for large tasks, or to be turned off).
//!
//! Each cycle, every framework that is not suppressed is offered the free resources of **one**
//! agent: the most utilised active agent that still has free cpus and memory, that the framework
//! has not declined recently, and that no other framework got this cycle. Utilisation is the
//! larger of the used shares of cpus and memory; ties go to the lower agent id. Quotas cap what is
//! offered. Frameworks are served in order of name; a framework at its quota gets nothing.
//!
//! Compared with DRF (which offers every agent each cycle), a framework that places one task per
//! free slot of the offers it gets packs its tasks onto few agents.

use std::collections::HashSet;

use shoal_sdk::{Agent, Allocator, ClusterSnapshot, FrameworkInfo, Offer, Resources};

struct BinPack;

fn utilisation(agent: &Agent) -> f64 {
    let share = |total: f64, free: f64| if total > 0.0 { ((total - free) / total).clamp(0.0, 1.0) } else { 0.0 };
    share(agent.total.cpus, agent.free.cpus).max(share(agent.total.mem_mb, agent.free.mem_mb))
}

/// What of `free` the framework may take under its quota; `None` when it is at quota.
fn capped(framework: &FrameworkInfo, free: &Resources) -> Option<Resources> {
    let Some(quota) = &framework.quota else { return Some(free.clone()) };
    let room = |q: f64, a: f64| (q - a).max(0.0);
    let r = Resources {
        cpus: free.cpus.min(room(quota.cpus, framework.allocated.cpus)),
        mem_mb: free.mem_mb.min(room(quota.mem_mb, framework.allocated.mem_mb)),
        disk_mb: free.disk_mb.min(room(quota.disk_mb, framework.allocated.disk_mb)),
        ports: free.ports.clone(),
        scalars: free.scalars.clone(),
    };
    (r.cpus > 0.0 && r.mem_mb > 0.0).then_some(r)
}

/// Indices of agents with free cpus and memory, fullest first, then by id.
fn fullest_first(agents: &[Agent]) -> Vec<usize> {
    let mut order: Vec<usize> =
        (0..agents.len()).filter(|&i| agents[i].free.cpus > 0.0 && agents[i].free.mem_mb > 0.0).collect();
    order.sort_by(|&a, &b| {
        utilisation(&agents[b]).total_cmp(&utilisation(&agents[a])).then_with(|| agents[a].id.cmp(&agents[b].id))
    });
    order
}

impl Allocator for BinPack {
    fn allocate(snapshot: ClusterSnapshot) -> Vec<Offer> {
        let order = fullest_first(&snapshot.agents);
        let mut frameworks: Vec<&FrameworkInfo> = snapshot.frameworks.iter().filter(|f| !f.suppressed).collect();
        frameworks.sort_by(|a, b| a.name.cmp(&b.name));
        let mut taken: HashSet<usize> = HashSet::new();
        let mut offers = Vec::new();
        for f in frameworks {
            let declined =
                |agent: &Agent| f.filters.iter().any(|d| d.agent_id == agent.id && d.until_ms > snapshot.now_ms);
            let pick = order.iter().copied().find(|i| !taken.contains(i) && !declined(&snapshot.agents[*i]));
            let Some(i) = pick else { continue };
            let Some(resources) = capped(f, &snapshot.agents[i].free) else { continue };
            taken.insert(i);
            offers.push(Offer { framework: f.name.clone(), agent_id: snapshot.agents[i].id.clone(), resources });
        }
        offers
    }
}

shoal_sdk::export_allocator!(BinPack);
