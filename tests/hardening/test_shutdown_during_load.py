"""Issue 9 B: loading never holds up SIGTERM (a slow checkpoint, or a slow warm-up, is abandoned,
not awaited)."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time

import rnnserve.server.serving.registry as registry
from conftest import test_settings as server_settings
from rnnserve.server import main
from rnnserve.server.execution.batcher import ClassificationBatcher


async def test_sigterm_while_a_model_loads_stops_at_once(repo, monkeypatch):
    real, started = registry.load_model, threading.Event()

    def slow_load(*args):  # stands for a checkpoint that takes long to check
        started.set()
        time.sleep(30)
        return real(*args)

    monkeypatch.setattr(registry, "load_model", slow_load)
    serving = asyncio.create_task(main.serve(server_settings(model_repository=repo)))
    assert await asyncio.to_thread(started.wait, 20)
    os.kill(os.getpid(), signal.SIGTERM)
    assert await asyncio.wait_for(serving, timeout=10) == 0


async def test_sigterm_while_a_classifier_warms_up_stops_at_once(repo, monkeypatch):
    real, started = ClassificationBatcher.warm_up, threading.Event()

    def slow_warm_up(self):  # stands for a large classifier traced on the CPU (seconds)
        started.set()
        time.sleep(30)
        return real(self)

    monkeypatch.setattr(ClassificationBatcher, "warm_up", slow_warm_up)
    serving = asyncio.create_task(main.serve(server_settings(model_repository=repo)))
    assert await asyncio.to_thread(started.wait, 20)
    os.kill(os.getpid(), signal.SIGTERM)
    assert await asyncio.wait_for(serving, timeout=10) == 0
