"""rnnserve's benchmark (``make bench``): engine limit, loopback gRPC load, session memory.

Not part of the test suite. ``python -m bench.run --help`` lists the options; the numbers of a
recorded run and how they were taken are in ``docs/bench.md``.
"""
