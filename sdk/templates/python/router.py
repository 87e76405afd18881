"""{{name}}: a routing rule for Shoal's gateway, in Python.

Round-robin over the healthy endpoints. The state lives in this instance (the gateway keeps one
instance per worker); read from the request only what your rule needs, each read is a call into
the host: `request.path()`, `request.header("x-user")`, `request.client_ip()`, ...
"""

from typing import List, Optional

from wit_world import exports
from wit_world.imports import route_request, types


# The rule's state. componentize-py may create a new `Routing` object for every call, so state
# lives at module level: one copy per instance (the gateway keeps one instance per worker).
healthy: List[int] = []
turn = 0


class Routing(exports.Routing):
    def update(self, endpoints: List[types.Endpoint]) -> None:
        global healthy
        healthy = [i for i, endpoint in enumerate(endpoints) if endpoint.healthy]

    def route(self, request: route_request.Request) -> Optional[int]:
        global turn
        if not healthy:
            return None
        pick = healthy[turn % len(healthy)]
        turn += 1
        return pick

    def on_complete(self, index: int, status: int, latency_us: int) -> None:
        pass
