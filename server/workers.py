"""``rnnserve serve --workers N``: N server processes on one port, one /metrics for all of them.

The supervisor (this module) reserves the gRPC port with ``SO_REUSEPORT`` (so port 0 picks one
free port that every worker then shares, as gRPC's Python multiprocessing example does), starts
N workers — each a full ``rnnserve serve`` in its own interpreter, with its own engines, torch
threads and event loop, bound to that port with ``grpc.so_reuseport`` (the kernel spreads new
connections over them) — and serves /metrics itself from prometheus_client's multiprocess mode
(``PROMETHEUS_MULTIPROC_DIR``, emptied at start; a worker's live gauges are dropped with
``mark_process_dead`` when it exits). A worker that dies is logged and restarted. SIGTERM or
SIGINT is passed to every worker, and each drains within ``grace_period_s``.

Sessions must be shared for this to be correct: the settings refuse ``workers > 1`` with the
memory store (``settings.py``).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from rnnserve.server.settings import ServerSettings

logger = logging.getLogger(__name__)

WORKER_ENV = "_RNNSERVE_WORKER"  # set in a worker's environment: its index (not a setting)
READY_DIR_ENV = "_RNNSERVE_READY_DIR"  # where a worker drops a file named by its pid when ready
RESTART_PAUSE_S = 1.0
PR_SET_PDEATHSIG = 1


def is_worker() -> bool:
    """True inside a worker started by the supervisor."""
    return WORKER_ENV in os.environ


def mark_ready() -> None:
    """Called by a worker once it serves: tells the supervisor (a file named by the pid)."""
    folder = os.environ.get(READY_DIR_ENV)
    if folder:
        Path(folder, str(os.getpid())).touch()


@contextlib.contextmanager
def reserve_port(host: str, port: int) -> Iterator[int]:
    """Bind host:port with SO_REUSEPORT (port 0: a free one) and hold it while workers run."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host or "0.0.0.0", port))
        yield sock.getsockname()[1]
    finally:
        sock.close()


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class Supervisor:
    """Starts, watches, restarts and stops the workers of one replica."""

    def __init__(self, settings: ServerSettings, argv: list[str]) -> None:
        self.settings = settings
        self.argv = argv
        self.workers: list[subprocess.Popen[bytes] | None] = [None] * settings.workers
        self.stopping = threading.Event()
        given = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        self.own_metrics_dir = not given
        self.metrics_dir = Path(given) if given else Path(tempfile.mkdtemp(prefix="rnnserve-prom-"))
        self.ready_dir = Path(tempfile.mkdtemp(prefix="rnnserve-ready-"))
        self.port = 0

    def _clean_metrics_dir(self) -> None:
        self.metrics_dir.mkdir(parents=True, exist_ok=True)
        for leftover in self.metrics_dir.glob("*.db"):
            leftover.unlink()

    def _spawn(self, index: int) -> None:
        env = {**os.environ, WORKER_ENV: str(index), READY_DIR_ENV: str(self.ready_dir),
               "PROMETHEUS_MULTIPROC_DIR": str(self.metrics_dir)}
        argv = [*self.argv, "--port", str(self.port), "--metrics-port", "-1"]
        proc = subprocess.Popen([sys.executable, "-m", "rnnserve.server.main", *argv], env=env,
                                preexec_fn=_die_with_parent)  # noqa: PLW1509 - one libc call
        self.workers[index] = proc
        logger.info("worker %d started (pid %d)", index, proc.pid)

    def _wait_ready(self) -> bool:
        while not self.stopping.is_set():
            alive = {str(p.pid) for p in self.workers if p is not None and p.poll() is None}
            if len(alive) < len(self.workers):
                return False
            if alive <= {f.name for f in self.ready_dir.iterdir()}:
                return True
            time.sleep(0.1)
        return False

    def run(self) -> int:
        """Serve until SIGTERM/SIGINT; returns the exit code."""
        s = self.settings
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stopping.set())
        self._clean_metrics_dir()
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=str(self.metrics_dir))
        http = None
        with reserve_port(s.host, s.port) as port:
            self.port = port
            if s.metrics_port >= 0:
                http, _ = start_http_server(s.metrics_port, addr=s.metrics_host, registry=registry)
            for index in range(s.workers):
                self._spawn(index)
            if not self._wait_ready():
                if not self.stopping.is_set():
                    logger.error("cannot start: a worker exited before it was ready")
                    self._stop_all()
                    return 2
            else:
                logger.info("rnnserve ready: gRPC %s:%d, %d workers, metrics port %d", s.host,
                            port, s.workers, http.server_port if http else -1)
            while not self.stopping.wait(0.2):
                self._restart_dead()
            logger.info("draining %d workers (grace %.1fs)", s.workers, s.grace_period_s)
            code = self._stop_all()
        if http is not None:
            http.shutdown()
            http.server_close()
        shutil.rmtree(self.ready_dir, ignore_errors=True)
        if self.own_metrics_dir:
            shutil.rmtree(self.metrics_dir, ignore_errors=True)
        logger.info("stopped")
        return code

    def _restart_dead(self) -> None:
        for index, proc in enumerate(self.workers):
            if proc is None or proc.poll() is None:
                continue
            logger.error("worker %d (pid %d) exited with code %s; restarting it", index,
                         proc.pid, proc.returncode)
            mark_process_dead(proc.pid, str(self.metrics_dir))
            time.sleep(RESTART_PAUSE_S)  # a worker that cannot start must not spin
            if not self.stopping.is_set():
                self._spawn(index)

    def _stop_all(self) -> int:
        live = [p for p in self.workers if p is not None and p.poll() is None]
        for proc in live:
            proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.settings.grace_period_s + 30
        code = 0
        for proc in live:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                logger.error("worker pid %d did not stop; killing it", proc.pid)
                proc.kill()
                proc.wait()
            # a worker still starting has no handler yet and ends by the signal itself
            if proc.returncode not in (0, -signal.SIGTERM):
                logger.error("worker pid %d ended with code %s", proc.pid, proc.returncode)
                code = 1
            mark_process_dead(proc.pid, str(self.metrics_dir))
        return code


def supervise(settings: ServerSettings, argv: list[str]) -> int:
    """Run ``settings.workers`` workers with the same flags until told to stop."""
    return Supervisor(settings, argv).run()
