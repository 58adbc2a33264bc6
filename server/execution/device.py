"""What a torch failure means for the rows that hit it: their own problem, memory, or a lost device.

- out of memory (``torch.OutOfMemoryError`` on CUDA, the CPU allocator's "can't allocate
  memory", ``MemoryError``): the rows that asked for the memory fail with RESOURCE_EXHAUSTED
  ("device memory exhausted, retry"); everything else goes on;
- a lost device: a CUDA error that poisons the context (a device-side assert, an illegal memory
  access, a launch failure, ``torch.AcceleratorError``). Every later call on that context fails
  too, so the process must be replaced: the engine fails what it holds and tells the server,
  which turns health NOT_SERVING, logs it and exits for its supervisor to restart it;
- anything else fails the rows it touched with INTERNAL (the traceback goes to the log only).
"""

from __future__ import annotations

import logging

import torch
from rnnserve.server.errors import ResourceExhaustedError, RnnserveError

logger = logging.getLogger(__name__)

_LOST_MARKERS = (
    "device-side assert",
    "illegal memory access",
    "unspecified launch failure",
    "cuda error: an illegal instruction",
    "cudaerrorlaunchfailure",
    "misaligned address",
    "uncorrectable ecc",
    "cuda error: unknown error",
)


def is_out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, torch.OutOfMemoryError | MemoryError):
        return True
    text = str(exc).lower()
    return "can't allocate memory" in text or "out of memory" in text


def is_device_lost(exc: BaseException) -> bool:
    """True for an error after which the device context cannot be trusted (needs a new process)."""
    if is_out_of_memory(exc):
        return False
    accelerator_error = getattr(torch, "AcceleratorError", None)
    if accelerator_error is not None and isinstance(exc, accelerator_error):
        return True
    text = str(exc).lower()
    return any(marker in text for marker in _LOST_MARKERS)


class DeviceLost(Exception):  # noqa: N818 - control flow inside an engine, not an error type
    """Raised inside an engine's executor call when the device context is gone: carries the
    torch error (``cause``) and the work in hand when it happened (``held``: rows or jobs that
    may be in no queue), for the engine to fail everything it holds."""

    def __init__(self, cause: BaseException, held: list) -> None:
        super().__init__(str(cause))
        self.cause = cause
        self.held = held


class DeviceLostError(RnnserveError):
    """The model's device failed in a way no later call survives (UNAVAILABLE; the process exits)."""

    def __init__(self) -> None:
        super().__init__("the model's device failed; this server is being replaced, retry")


def request_error(exc: Exception) -> Exception:
    """The error a request sees for a failure of its rows."""
    if is_out_of_memory(exc):
        return ResourceExhaustedError("device memory exhausted, retry")
    if is_device_lost(exc):
        return DeviceLostError()
    return exc


def row_failure(exc: Exception, held: list, what: str) -> Exception:
    """The error for the ``held`` requests whose rows failed with ``exc``, logged once as
    ``what`` (e.g. "generation prefill on model m"): out of memory as a warning without a
    traceback, anything else as an error with it. A lost device raises :class:`DeviceLost`
    instead, carrying ``held``."""
    if is_device_lost(exc):
        raise DeviceLost(exc, list(held)) from exc
    if is_out_of_memory(exc):  # expected under load: no traceback
        logger.warning("%s ran out of device memory (%d requests fail with RESOURCE_EXHAUSTED): "
                       "%s", what, len(held), exc)
    else:
        logger.error("%s failed (%d requests fail)", what, len(held), exc_info=exc)
    return request_error(exc)
