"""A health check for Shoal that reads a JSON status field, written in Python.

`GET <path>` on the task's first port (or `port_index`); the task is healthy when the answer is
HTTP 2xx, its body is a JSON object, and the field `field` (dots descend into objects:
`checks.db`) holds one of the `healthy` values. Configuration (the check's `config`, JSON; every
key optional):

    {"path": "/health", "port_index": 0, "field": "status", "healthy": ["ok", "UP"], "timeout_ms": 2000}
"""

import json

from componentize_py_types import Err

from wit_world import exports
from wit_world.exports.health import CheckResult, CheckStatus, CheckTarget
from wit_world.imports import probe

DEFAULTS = {"path": "/health", "port_index": 0, "field": "status", "healthy": ["ok", "UP"], "timeout_ms": 2000}


def unhealthy(message: str) -> CheckResult:
    return CheckResult(status=CheckStatus.UNHEALTHY, message=message)


def describe(error) -> str:
    name = type(error).__name__.split("_")[-1].lower()
    value = getattr(error, "value", None)
    return f"{name}: {value}" if value else name


class Health(exports.Health):
    def check(self, target: CheckTarget) -> CheckResult:
        try:
            config = {**DEFAULTS, **(json.loads(target.config) if target.config.strip() else {})}
        except (ValueError, TypeError) as e:
            return unhealthy(f"invalid check config: {e}")
        index = config["port_index"]
        if not isinstance(index, int) or not 0 <= index < len(target.ports):
            return unhealthy(f"the task has no port #{index} to probe")
        port = target.ports[index]
        try:
            reply = probe.http_get(port, config["path"], int(config["timeout_ms"]))
        except Err as e:
            return unhealthy(f"GET {config['path']} on port {port}: {describe(e.value)}")
        if not 200 <= reply.status < 300:
            return unhealthy(f"GET {config['path']}: HTTP {reply.status}")
        try:
            value = json.loads(bytes(reply.body))
        except ValueError:
            return unhealthy(f"GET {config['path']}: the body is not JSON")
        for key in config["field"].split("."):
            if not isinstance(value, dict) or key not in value:
                return unhealthy(f"no field `{config['field']}` in the answer")
            value = value[key]
        if value in config["healthy"]:
            return CheckResult(status=CheckStatus.HEALTHY, message=f"{config['field']} = {value!r}")
        return unhealthy(f"{config['field']} = {value!r}, not one of {config['healthy']!r}")
