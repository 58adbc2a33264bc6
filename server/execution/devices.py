"""Where model work runs: the device a setting names, one worker thread per device that serialises
all model work on it, and the long-lived thread that loads checkpoints off the event loop."""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import TypeVar

import torch

T = TypeVar("T")


def resolve_device(requested: str) -> torch.device:
    """'auto' means CUDA when available; anything else is taken as a torch device string."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


class DeviceExecutors:
    """One worker thread per device: it serialises all model work on that device."""

    def __init__(self) -> None:
        self._executors: dict[str, ThreadPoolExecutor] = {}

    def for_device(self, device: torch.device) -> Executor:
        key = str(device)
        if key not in self._executors:
            self._executors[key] = ThreadPoolExecutor(1, thread_name_prefix=f"rnnserve-{key}")
        return self._executors[key]

    def shutdown(self) -> None:
        for executor in self._executors.values():
            executor.shutdown(wait=True, cancel_futures=True)
        self._executors.clear()


class DaemonWorker:
    """One long-lived daemon thread that runs loads, one at a time, awaited from the event loop.

    Loading may take long on a big or hostile checkpoint; shutdown (SIGTERM) never waits for
    it: cancelling the await abandons the load, and the process exits without joining the
    thread (a ThreadPoolExecutor's threads are joined at exit). The thread is kept, not started
    per load: a thread that ran torch and exits can leave its OpenMP team spinning.
    """

    def __init__(self, name: str) -> None:
        self._name = name
        self._jobs: queue.SimpleQueue[tuple[Callable[[], object], Callable[..., None]]] = (
            queue.SimpleQueue())
        self._thread: threading.Thread | None = None

    def _run(self) -> None:
        while True:
            work, done = self._jobs.get()
            try:
                result, error = work(), None
            except BaseException as err:  # noqa: BLE001 - handed to the awaiting task
                result, error = None, err
            try:
                done(result, error)
            except RuntimeError:
                pass  # the event loop is gone (shutdown): nobody waits any more

    async def run(self, fn: Callable[..., T], *args: object) -> T:
        """``fn(*args)`` on the worker thread; the event loop stays free meanwhile."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()

        def settle(result: T | None, error: BaseException | None) -> None:
            if future.done():
                return
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(result)  # type: ignore[arg-type]

        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
            self._thread.start()
        self._jobs.put((lambda: fn(*args),
                        lambda result, error: loop.call_soon_threadsafe(settle, result, error)))
        return await future
