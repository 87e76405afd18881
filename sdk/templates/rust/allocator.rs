//! {{name}}: an allocation policy for Shoal.
//!
//! Spreads the cluster: each agent with free CPU is offered whole to one framework, taking the
//! frameworks that want offers (not suppressed, no decline filter on that agent) in turn.
//! Quotas and fair shares are left to you: see the DRF plugin in Shoal's `plugins/drf`.

use shoal_sdk::{Allocator, ClusterSnapshot, Offer};

struct Policy;

impl Allocator for Policy {
    fn allocate(snapshot: ClusterSnapshot) -> Vec<Offer> {
        let mut offers = Vec::new();
        for (i, agent) in snapshot.agents.iter().enumerate() {
            if agent.free.cpus <= 0.0 {
                continue;
            }
            let wanting: Vec<_> = snapshot
                .frameworks
                .iter()
                .filter(|f| !f.suppressed)
                .filter(|f| !f.filters.iter().any(|d| d.agent_id == agent.id && d.until_ms > snapshot.now_ms))
                .collect();
            if wanting.is_empty() {
                continue;
            }
            let framework = wanting[i % wanting.len()];
            offers.push(Offer {
                framework: framework.name.clone(),
                agent_id: agent.id.clone(),
                resources: agent.free.clone(),
            });
        }
        offers
    }
}

shoal_sdk::export_allocator!(Policy);
