"""One TorchScript call for a fixed-shape piece of serving math: the GIL is not held while it runs.

Why: an eager torch operator gives the GIL back while its kernel runs and takes it again after,
so serving math of many small operators (a classifier tile is ~15 of them) takes the GIL
again and again. In a server the event loop holds the GIL
most of the time, and a thread that wants it back waits until the holder drops it, at the
latest after the switch interval (5 ms). Measured on this project's 2-core machine next to a
busy Python thread: a classifier tile of 8 texts took 1.5 ms alone, 122-129 ms eager, 8.3 ms
as one TorchScript call. The TorchScript interpreter runs the whole graph without the GIL.

How: :func:`trace` records the eager code on example inputs of the exact shapes it will be
called with (``torch.jit.trace``; tensors it reads that are not inputs, such as weights, are
kept by reference, so an in-place change of them is seen). Tracing and every :func:`call` run
with the graph executor's optimisations off (``torch.jit.optimized_execution(False)``, a flag of
the calling thread), so the graph is exactly the eager operators and kernels: the same bits,
pinned by tests/models/test_invariant.py. A traced graph is specialised to its shapes, so
callers keep one per shape. Used on the CPU only so far (it has not run on a GPU).

Memory: every trace registers a class type in TorchScript's global compilation unit, which is
never freed (~1-2.5 MiB each, measured). Trace per loaded model and shape, never per batch size;
keep the graphs with the model (see ``SentimentRNN``), so its weights go when it does.

torch 2.13 marks TorchScript deprecated (``torch`` is pinned; the notice is silenced here). If
tracing fails, :func:`trace` logs a warning and returns None, and callers run the eager code,
which gives the same results.
"""

from __future__ import annotations

import logging
import threading
import warnings
from collections.abc import Callable
from typing import Any

import torch

logger = logging.getLogger(__name__)
_TRACING = threading.Lock()  # warnings.catch_warnings changes process state: one trace at a time


def trace(fn: Callable[..., Any], example: tuple[Any, ...], what: str,
          script: Callable[[Any], Any] | None = None) -> Callable[..., Any] | None:
    """``fn`` (a function or ``nn.Module``) traced on ``example``, then passed through
    ``script`` (e.g. ``torch.jit.script`` of a loop around it) if given, under the same
    warning filters; None if TorchScript cannot."""
    try:
        with _TRACING, warnings.catch_warnings():
            # shape checks inside the eager code are constants for fixed shapes; the
            # deprecation notice is known (module docstring)
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            with torch.no_grad(), torch.jit.optimized_execution(False):
                traced = torch.jit.trace(fn, example, check_trace=False)
                return script(traced) if script is not None else traced
    except Exception as exc:  # noqa: BLE001 - any failure: the eager code gives the same bits
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
        logger.warning("could not trace %s with TorchScript (%s: %s); it runs eagerly (same "
                       "results, slower next to a busy event loop)", what, type(exc).__name__,
                       first)
        return None


def call(traced: Callable[..., Any], *args: Any) -> Any:
    """Run a graph from :func:`trace` exactly as traced (executor optimisations off)."""
    with torch.no_grad(), torch.jit.optimized_execution(False):
        return traced(*args)
