// {{name}}: an allocation policy for Shoal, in JavaScript.
//
// Spreads the cluster: each agent with free CPU is offered whole to one framework, taking the
// frameworks that want offers (not suppressed, no decline filter on that agent) in turn. Quotas
// and fair shares are left to you. WIT names are camelCase here; u64 values are BigInts.

export const allocation = {
  allocate(snapshot) {
    const offers = [];
    snapshot.agents.forEach((agent, i) => {
      if (agent.free.cpus <= 0) return;
      const wanting = snapshot.frameworks.filter(
        (f) => !f.suppressed && !f.filters.some((d) => d.agentId === agent.id && d.untilMs > snapshot.nowMs),
      );
      if (wanting.length === 0) return;
      const framework = wanting[i % wanting.length];
      offers.push({ framework: framework.name, agentId: agent.id, resources: agent.free });
    });
    return offers;
  },
};
