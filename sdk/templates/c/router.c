// {{name}}: a routing rule for Shoal's gateway, in C.
//
// Round-robin over the healthy endpoints. The bindings in gen/{{world_c}}.h are generated from
// wit/ by `wit-bindgen c` (see build.sh). Arguments of an export belong to the plugin: free them
// with the generated *_free functions once read. The state lives in this instance (the gateway
// keeps one instance per worker); read from the request only what your rule needs, each read is
// a call into the host (shoal_plugin_route_request_method_request_path, ..._header, ...).

#include <stdlib.h>

#include "gen/{{world_c}}.h"

static uint32_t *healthy = NULL; // indices of the healthy endpoints
static size_t healthy_len = 0;
static size_t turn = 0;

void exports_shoal_plugin_routing_update(exports_shoal_plugin_routing_list_endpoint_t *endpoints) {
    free(healthy);
    healthy = malloc(sizeof(uint32_t) * (endpoints->len ? endpoints->len : 1));
    healthy_len = 0;
    for (size_t i = 0; i < endpoints->len; i++) {
        if (endpoints->ptr[i].healthy) healthy[healthy_len++] = (uint32_t)i;
    }
    exports_shoal_plugin_routing_list_endpoint_free(endpoints);
}

bool exports_shoal_plugin_routing_route(exports_shoal_plugin_routing_borrow_request_t request, uint32_t *ret) {
    // The request is lent for this call: hand it back before returning (the host traps a call
    // that keeps a borrow), after the last read.
    shoal_plugin_route_request_request_drop_borrow(request);
    if (healthy_len == 0) return false; // no endpoint: the gateway answers 503
    *ret = healthy[turn % healthy_len];
    turn++;
    return true;
}

void exports_shoal_plugin_routing_on_complete(uint32_t index, uint16_t status, uint64_t latency_us) {
    (void)index;
    (void)status;
    (void)latency_us;
}
