"""rnnserve: a gRPC inference server for recurrent neural networks."""

__version__ = "0.1.0"
