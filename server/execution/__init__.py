"""Execution: all model work — engines with continuous batching, the decode batch algebra, the
classifier's dynamic batcher, sampling, chunked prefill, torch threads and device faults.

Imports ``rnnserve.models`` and the server's cross-cutting modules (errors, metrics), never the
serving layer (``rnnserve.server.serving``) or the protocol layer (``rnnserve.server.rpc``).
"""
