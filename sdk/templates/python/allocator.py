"""{{name}}: an allocation policy for Shoal, in Python.

Spreads the cluster: each agent with free CPU is offered whole to one framework, taking the
frameworks that want offers (not suppressed, no decline filter on that agent) in turn. Quotas and
fair shares are left to you.
"""

from typing import List

from wit_world import exports
from wit_world.imports import types


class Allocation(exports.Allocation):
    def allocate(self, snapshot: types.ClusterSnapshot) -> List[types.Offer]:
        offers = []
        for i, agent in enumerate(snapshot.agents):
            if agent.free.cpus <= 0:
                continue
            wanting = [
                f
                for f in snapshot.frameworks
                if not f.suppressed
                and not any(d.agent_id == agent.id and d.until_ms > snapshot.now_ms for d in f.filters)
            ]
            if not wanting:
                continue
            framework = wanting[i % len(wanting)]
            offers.append(types.Offer(framework=framework.name, agent_id=agent.id, resources=agent.free))
        return offers
