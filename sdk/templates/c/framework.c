// {{name}}: a scheduler framework for Shoal, in C.
//
// A skeleton that launches nothing: it declines every offer for five seconds and answers its HTTP
// endpoint (/v1/frameworks/<name>/...). An instance may be thrown away at any time, so keep what
// must last in the keyvalue store (shoal_plugin_keyvalue_get / _set).
//
// The bindings in gen/{{world_c}}.h are generated from wit/ by `wit-bindgen c` (see build.sh).
// Arguments of an export belong to the plugin (free them with the generated *_free functions),
// and what it returns must be allocated with malloc: the bindings free it after the host read it.

#include <stdlib.h>
#include <string.h>

#include "gen/{{world_c}}.h"

typedef exports_shoal_plugin_scheduling_list_operation_t operations_t;

bool exports_shoal_plugin_scheduling_init({{world_c}}_string_t *config, {{world_c}}_string_t *err) {
    (void)err; // to refuse the configuration: fill *err and return false
    {{world_c}}_string_free(config);
    return true;
}

void exports_shoal_plugin_scheduling_resource_offers(exports_shoal_plugin_scheduling_list_offer_info_t *offers,
                                                      operations_t *ret) {
    ret->len = offers->len;
    ret->ptr = malloc(sizeof(*ret->ptr) * (offers->len ? offers->len : 1));
    for (size_t i = 0; i < offers->len; i++) {
        ret->ptr[i].tag = EXPORTS_SHOAL_PLUGIN_SCHEDULING_OPERATION_DECLINE;
        ret->ptr[i].val.decline.offer_id = offers->ptr[i].id; // taken over from the offer
        ret->ptr[i].val.decline.refuse_seconds = 5.0;
        memset(&offers->ptr[i].id, 0, sizeof(offers->ptr[i].id));
    }
    exports_shoal_plugin_scheduling_list_offer_info_free(offers);
}

void exports_shoal_plugin_scheduling_status_update(exports_shoal_plugin_scheduling_task_status_t *status,
                                                    operations_t *ret) {
    exports_shoal_plugin_scheduling_task_status_free(status);
    ret->ptr = NULL;
    ret->len = 0;
}

void exports_shoal_plugin_scheduling_handle_request(exports_shoal_plugin_scheduling_http_request_t *request,
                                                     exports_shoal_plugin_scheduling_http_response_t *ret) {
    static const char prefix[] = "{{name}}: ";
    size_t len = strlen(prefix) + request->method.len + 1 + request->path.len + 1;
    uint8_t *body = malloc(len), *p = body;
    memcpy(p, prefix, strlen(prefix)), p += strlen(prefix);
    memcpy(p, request->method.ptr, request->method.len), p += request->method.len;
    *p++ = ' ';
    memcpy(p, request->path.ptr, request->path.len), p += request->path.len;
    *p++ = '\n';
    ret->status = 200;
    ret->headers.len = 1;
    ret->headers.ptr = malloc(sizeof(*ret->headers.ptr));
    {{world_c}}_string_dup(&ret->headers.ptr[0].f0, "content-type");
    {{world_c}}_string_dup(&ret->headers.ptr[0].f1, "text/plain");
    ret->body.ptr = body;
    ret->body.len = len;
    exports_shoal_plugin_scheduling_http_request_free(request);
}

void exports_shoal_plugin_scheduling_tick(uint64_t now_ms, operations_t *ret) {
    (void)now_ms;
    ret->ptr = NULL;
    ret->len = 0;
}
