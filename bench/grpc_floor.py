"""The floor under any Python gRPC server: ``Classify`` answered with a constant, no model.

``python -m bench.grpc_floor`` serves rnnserve's ``ClassificationService`` on 127.0.0.1 (an
ephemeral port, printed as ``READY <port>``) with a bare ``grpc.aio`` server: no interceptors,
no validation, no tokenizer, no batcher, no model, one constant response. ``make bench-peers``
loads it like the real servers, so that the CPU time per request it shows is what the gRPC
stack alone costs on this machine, next to what rnnserve and MLServer cost in the same run.
"""

from __future__ import annotations

import asyncio
import sys

import grpc
from rnnserve.v1 import classification_pb2, classification_pb2_grpc


class ConstantClassifier(classification_pb2_grpc.ClassificationServiceServicer):
    """Answers every call with one fixed result."""

    def __init__(self) -> None:
        self._response = classification_pb2.ClassifyResponse(
            results=[classification_pb2.Classification(label="positive", score=0.5)],
            model="floor", model_version=1)

    async def Classify(self, request: classification_pb2.ClassifyRequest,  # noqa: N802
                       context: grpc.aio.ServicerContext) -> classification_pb2.ClassifyResponse:
        return self._response


async def _serve() -> None:
    server = grpc.aio.server(options=[("grpc.max_concurrent_streams", 1024)])
    classification_pb2_grpc.add_ClassificationServiceServicer_to_server(ConstantClassifier(),
                                                                        server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(f"READY {port}", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until stdin closes
    await server.stop(0)


if __name__ == "__main__":
    asyncio.run(_serve())
