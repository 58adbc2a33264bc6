"""How many torch intra-op threads one model step gets, chosen by the step's size.

torch's own default (one thread per core) makes every step, even a one-row decode step, fork
its work over all cores. On a small machine those threads compete with the event loop, which
needs a core to receive requests and send answers, and a spinning OpenMP team on a busy machine
is much slower than one thread (measured on this project's 2-core machine: a batch of 8
classifier rows took 4.6 ms alone on one thread and 88 ms with two, while other processes held
the cores). So, unless the settings fix a count, a step of ``rows`` rows gets one thread per
``ROWS_PER_THREAD`` rows begun, at most the usable cores minus one (that one stays with the event
loop): one thread up to 32 rows, two up to 64 (the largest default batch) on a machine with
three cores or more, and always one on a 2-core machine.

torch's thread count belongs to the thread that sets it (a pool thread does not see a count the
main thread set after it started), so :meth:`StepThreads.apply` runs on the device thread, right
before each step, and calls into torch only when the count changes.
"""

from __future__ import annotations

import os
import threading

import torch

ROWS_PER_THREAD = 32  # a step gets one more intra-op thread per this many rows
_SET = threading.local()  # the count last set on each thread (torch's own state is per thread)


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask, else the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return os.cpu_count() or 1


class StepThreads:
    """Chooses and applies the intra-op thread count of each model step."""

    def __init__(self, fixed: int = 0, cores: int | None = None) -> None:
        """``fixed`` > 0 pins every step to that many threads (the ``torch_threads`` setting);
        0 chooses per step. ``cores`` defaults to :func:`usable_cores`."""
        self.fixed = fixed
        self.max_threads = max(1, (cores if cores is not None else usable_cores()) - 1)

    def count(self, rows: int) -> int:
        """Threads for a step over ``rows`` rows (a batch's size)."""
        if self.fixed:
            return self.fixed
        return max(1, min(self.max_threads, -(-rows // ROWS_PER_THREAD)))

    def apply(self, rows: int) -> int:
        """Set the calling thread's torch thread count for a step of ``rows`` rows; returns it."""
        n = self.count(rows)
        if getattr(_SET, "current", None) != n:  # shared by every runner on this thread
            torch.set_num_threads(n)
            _SET.current = n
        return n
