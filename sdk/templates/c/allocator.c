// {{name}}: an allocation policy for Shoal, in C.
//
// Spreads the cluster: each agent with free CPU is offered whole to one framework, taking the
// frameworks that want offers (not suppressed, no decline filter on that agent) in turn. Quotas
// and fair shares are left to you.
//
// The bindings in gen/{{world_c}}.h are generated from wit/ by `wit-bindgen c` (see build.sh).
// Arguments of an export belong to the plugin, and what it returns must be allocated with malloc:
// the bindings free it after the host has read it. Here the offers take the agents' ids and free
// resources over from the snapshot (and leave empty values behind), so nothing is copied twice.

#include <stdlib.h>
#include <string.h>

#include "gen/{{world_c}}.h"

typedef exports_shoal_plugin_allocation_cluster_snapshot_t snapshot_t;
typedef shoal_plugin_types_framework_t framework_t;

static bool same(const {{world_c}}_string_t *a, const {{world_c}}_string_t *b) {
    return a->len == b->len && memcmp(a->ptr, b->ptr, a->len) == 0;
}

// Whether `f` wants an offer of `agent` now.
static bool wants(const framework_t *f, const {{world_c}}_string_t *agent, uint64_t now_ms) {
    if (f->suppressed) return false;
    for (size_t k = 0; k < f->filters.len; k++) {
        if (same(&f->filters.ptr[k].agent_id, agent) && f->filters.ptr[k].until_ms > now_ms) return false;
    }
    return true;
}

void exports_shoal_plugin_allocation_allocate(snapshot_t *snapshot,
                                               exports_shoal_plugin_allocation_list_offer_t *ret) {
    size_t n = snapshot->agents.len, nf = snapshot->frameworks.len;
    ret->ptr = malloc(sizeof(*ret->ptr) * (n ? n : 1));
    ret->len = 0;
    const framework_t **wanting = malloc(sizeof(*wanting) * (nf ? nf : 1));
    for (size_t i = 0; i < n; i++) {
        shoal_plugin_types_agent_t *agent = &snapshot->agents.ptr[i];
        if (agent->free.cpus <= 0) continue;
        size_t count = 0;
        for (size_t j = 0; j < nf; j++) {
            if (wants(&snapshot->frameworks.ptr[j], &agent->id, snapshot->now_ms)) wanting[count++] = &snapshot->frameworks.ptr[j];
        }
        if (count == 0) continue;
        const framework_t *framework = wanting[i % count];
        shoal_plugin_types_offer_t *offer = &ret->ptr[ret->len++];
        {{world_c}}_string_dup_n(&offer->framework, (const char *)framework->name.ptr, framework->name.len);
        offer->agent_id = agent->id;        // taken over from the snapshot...
        offer->resources = agent->free;
        memset(&agent->id, 0, sizeof(agent->id)); // ...which must then not free them
        memset(&agent->free, 0, sizeof(agent->free));
    }
    free(wanting);
    exports_shoal_plugin_allocation_cluster_snapshot_free(snapshot);
}
