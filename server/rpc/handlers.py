"""What shape of call a gRPC method handler serves (shared by the interceptors)."""

from __future__ import annotations

import grpc


def handler_kind(handler: grpc.RpcMethodHandler) -> str:
    """The handler's attribute that holds its behaviour: ``unary_unary``, ``unary_stream``,
    ``stream_unary`` or ``stream_stream``."""
    if handler.request_streaming:
        return "stream_stream" if handler.response_streaming else "stream_unary"
    return "unary_stream" if handler.response_streaming else "unary_unary"
