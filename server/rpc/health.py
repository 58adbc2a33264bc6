"""The standard health service, with a cap on concurrent ``Watch`` streams.

Health is open to every client (load balancers probe it without tokens), so each ``Watch`` a
client opens would otherwise hold server memory for as long as it likes. Past
``max_health_watches`` concurrent watches a new one is RESOURCE_EXHAUSTED; ``Check`` is never
limited.
"""

from __future__ import annotations

import grpc
from grpc_health.v1 import health_pb2
from grpc_health.v1._async import HealthServicer


class BoundedHealthServicer(HealthServicer):
    """grpc's asyncio health servicer with at most ``max_watches`` watches at a time."""

    def __init__(self, max_watches: int) -> None:
        super().__init__()
        self._max_watches = max_watches
        self.watching = 0

    async def Watch(self, request: health_pb2.HealthCheckRequest,
                    context: grpc.aio.ServicerContext) -> None:
        if self.watching >= self._max_watches:
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"at most {self._max_watches} health watches are served at once; "
                "use Check, or retry later")
        self.watching += 1
        try:
            await super().Watch(request, context)
        finally:
            self.watching -= 1
