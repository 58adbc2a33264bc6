"""The gRPC server, in three layers (folders), imports flowing one way:

- ``rpc/``: the protocols (rnnserve.v1 servicers, the Open Inference Protocol), protobuf
  conversion, the status table, interceptors (auth, deadline, wire), TLS;
- ``serving/``: what a request means (generation, classification, forecasting, sessions and their
  stores, the model registry, the runner seam);
- ``execution/``: all model work (engines, continuous batching, sampling, prefill, threads).

Beside them: the composition root (``app.py``), the entry point and worker supervisor
(``main.py``, ``workers.py``) and cross-cutting modules (settings, metrics, errors, logs,
identity, call bounds). ``tests/server/test_imports.py`` enforces the direction.
"""
