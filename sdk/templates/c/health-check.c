// {{name}}: a health check for Shoal, in C.
//
// Healthy when the task's first port accepts TCP connections. The probe reaches only the checked
// task's own ports; shoal_plugin_probe_http_get(port, &path, timeout_ms, &reply, &err) reads an
// HTTP answer.
//
// The bindings in gen/{{world_c}}.h are generated from wit/ by `wit-bindgen c` (see build.sh).
// Arguments of an export belong to the plugin (free them with the generated *_free functions),
// and what it returns must be allocated with malloc: the bindings free it after the host read it.

#include <stdlib.h>
#include <string.h>

#include "gen/{{world_c}}.h"

typedef exports_shoal_plugin_health_check_result_t result_t;

// "port <port><rest>" into buf. (No snprintf: stdio would import WASI files, which a plugin lacks.)
static const char *port_message(char *buf, uint16_t port, const char *rest) {
    char digits[6], *d = digits + sizeof digits;
    *--d = 0;
    do *--d = (char)('0' + port % 10); while (port /= 10);
    strcpy(buf, "port ");
    strcat(buf, d);
    strcat(buf, rest);
    return buf;
}

static void answer(result_t *ret, bool healthy, const char *message) {
    ret->status = healthy ? EXPORTS_SHOAL_PLUGIN_HEALTH_CHECK_STATUS_HEALTHY
                          : EXPORTS_SHOAL_PLUGIN_HEALTH_CHECK_STATUS_UNHEALTHY;
    {{world_c}}_string_dup(&ret->message, message);
}

void exports_shoal_plugin_health_check(exports_shoal_plugin_health_check_target_t *target, result_t *ret) {
    char message[128];
    if (target->ports.len == 0) {
        answer(ret, false, "the task has no port to probe");
    } else {
        uint16_t port = target->ports.ptr[0];
        shoal_plugin_probe_probe_error_t err;
        if (shoal_plugin_probe_tcp_connect(port, 1000, &err)) {
            answer(ret, true, port_message(message, port, " accepts connections"));
        } else {
            static const char *why[] = {": forbidden", ": connection failed", ": timeout", ": not HTTP"};
            answer(ret, false, port_message(message, port, err.tag < 4 ? why[err.tag] : ": probe failed"));
            shoal_plugin_probe_probe_error_free(&err);
        }
    }
    exports_shoal_plugin_health_check_target_free(target);
}
