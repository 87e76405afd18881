"""A canary router for Shoal, written in Python.

Endpoints labelled `track=canary` are the canary pool; every other endpoint is stable. The canary
pool receives a configured share of the traffic: the `canary-percent` label of the canary
endpoints (an integer from 0 to 100; 10 when absent). The share is spread evenly, not randomly:
with 25 %, every fourth request goes to the canary. A request can force its pool with the header
`x-canary: always` or `x-canary: never`. Inside a pool, healthy endpoints take turns. When the
chosen pool has no healthy endpoint, the other pool serves; when none is healthy, no endpoint does.
"""

from typing import List, Optional

from wit_world import exports
from wit_world.imports import log, route_request, types

DEFAULT_PERCENT = 10


class Pools:
    """The router's state. componentize-py may create a new `Routing` object for every call, so
    state lives at module level: one per instance, as the gateway keeps one instance per worker."""

    stable: List[int] = []
    canary: List[int] = []
    percent = DEFAULT_PERCENT
    requests = 0  # requests routed by share, for the even spread
    turn = {"stable": 0, "canary": 0}


class Routing(exports.Routing):
    def update(self, endpoints: List[types.Endpoint]) -> None:
        Pools.stable, Pools.canary = [], []
        percent = DEFAULT_PERCENT
        for index, endpoint in enumerate(endpoints):
            labels = {label.name: label.value for label in endpoint.labels}
            is_canary = labels.get("track") == "canary"
            if is_canary and "canary-percent" in labels:
                try:
                    percent = max(0, min(100, int(labels["canary-percent"])))
                except ValueError:
                    log.log(log.Level.WARN, f"ignoring canary-percent={labels['canary-percent']!r}")
            if endpoint.healthy:
                (Pools.canary if is_canary else Pools.stable).append(index)
        Pools.percent = percent

    def route(self, request: route_request.Request) -> Optional[int]:
        forced = request.header("x-canary")
        if forced == "always":
            pool = "canary"
        elif forced == "never":
            pool = "stable"
        else:
            n = Pools.requests
            Pools.requests += 1
            pool = "canary" if (n + 1) * Pools.percent // 100 > n * Pools.percent // 100 else "stable"
        other = "stable" if pool == "canary" else "canary"
        for name in (pool, other):
            members = Pools.canary if name == "canary" else Pools.stable
            if members:
                turn = Pools.turn[name]
                Pools.turn[name] = turn + 1
                return members[turn % len(members)]
        return None

    def on_complete(self, index: int, status: int, latency_us: int) -> None:
        pass
