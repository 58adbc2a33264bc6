"""How a cancelled call is counted: DEADLINE_EXCEEDED when its deadline is (nearly) over.

The client's deadline fires on its own clock; its cancel can reach the server a little before the
server's copy of the deadline runs out (seen as a flaky CANCELLED in test_sessions' deadline case).
"""

from __future__ import annotations

import grpc
import pytest
from rnnserve.server.rpc.status import DEADLINE_SKEW_S, CallRecord


class Context:
    def __init__(self, remaining: float | None) -> None:
        self._remaining = remaining

    def time_remaining(self) -> float | None:
        return self._remaining


@pytest.mark.parametrize("remaining,code", [
    (None, grpc.StatusCode.CANCELLED),  # no deadline at all
    (30.0, grpc.StatusCode.CANCELLED),  # the client went away long before its deadline
    (DEADLINE_SKEW_S * 2, grpc.StatusCode.CANCELLED),
    (DEADLINE_SKEW_S / 2, grpc.StatusCode.DEADLINE_EXCEEDED),  # the client's clock ran out first
    (0.0, grpc.StatusCode.DEADLINE_EXCEEDED),
    (-0.1, grpc.StatusCode.DEADLINE_EXCEEDED),
])
def test_a_cancel_near_the_deadline_counts_as_deadline_exceeded(remaining, code):
    record = CallRecord("Generate", "m", "rid")
    record.cancelled(Context(remaining))  # type: ignore[arg-type]
    assert record.code is code
