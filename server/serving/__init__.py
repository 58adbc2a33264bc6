"""Serving logic: what a request means, independent of its protocol.

Generation, classification and forecasting services, the session stores (memory, Redis) and the
OIP sequence table, the model registry and the runner seam. Imports ``rnnserve.server.execution``
and ``rnnserve.models``, never the protocol layer (``rnnserve.server.rpc``) or generated protobuf.
"""
