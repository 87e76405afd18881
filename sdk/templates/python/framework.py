"""{{name}}: a scheduler framework for Shoal, in Python.

A skeleton that launches nothing: it declines every offer for five seconds and answers its HTTP
endpoint (`/v1/frameworks/<name>/...`). An instance may be thrown away at any time, so keep what
must last in the `keyvalue` store (`from wit_world.imports import keyvalue`).
"""

from typing import List

from wit_world import exports
from wit_world.exports.scheduling import Decline, OfferInfo, Operation, Operation_Decline
from wit_world.imports import types


class Scheduling(exports.Scheduling):
    def init(self, config: str) -> None:
        # Raise componentize_py_types.Err("why") to refuse the configuration.
        pass

    def resource_offers(self, offers: List[OfferInfo]) -> List[Operation]:
        return [Operation_Decline(Decline(offer_id=offer.id, refuse_seconds=5.0)) for offer in offers]

    def status_update(self, status: types.TaskStatus) -> List[Operation]:
        return []

    def handle_request(self, request: types.HttpRequest) -> types.HttpResponse:
        body = f"{{name}}: {request.method} {request.path}\n".encode()
        return types.HttpResponse(status=200, headers=[("content-type", "text/plain")], body=body)

    def tick(self, now_ms: int) -> List[Operation]:
        return []
