"""{{name}}: a health check for Shoal, in Python.

Healthy when the task's first port accepts TCP connections. The probe reaches only the checked
task's own ports; `probe.http_get(port, "/health", timeout_ms)` reads an HTTP answer.
"""

from componentize_py_types import Err

from wit_world import exports
from wit_world.exports.health import CheckResult, CheckStatus, CheckTarget
from wit_world.imports import probe


class Health(exports.Health):
    def check(self, target: CheckTarget) -> CheckResult:
        if not target.ports:
            return CheckResult(status=CheckStatus.UNHEALTHY, message="the task has no port to probe")
        port = target.ports[0]
        try:
            probe.tcp_connect(port, 1000)
        except Err as e:
            return CheckResult(status=CheckStatus.UNHEALTHY, message=f"port {port}: {e.value}")
        return CheckResult(status=CheckStatus.HEALTHY, message=f"port {port} accepts connections")
