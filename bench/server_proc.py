"""The server under test, in its own process: ``python -m bench.server_proc '<settings json>'``.

The child builds ``ServerSettings`` from the JSON (loopback, ephemeral port, metrics off, the
shipped models on the device: "auto" unless told, plus the overrides), starts the server,
prints ``READY <port>`` and serves until its stdin closes. :class:`ServerProcess` is the parent's handle.

Also here for the benches that need them: :func:`free_port`, :func:`start_redis` (a private
``redis-server``) and :class:`ServeCommand` (the ``rnnserve serve`` command line itself, e.g.
with ``--workers N``, which the in-process child above cannot run).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def base_settings(model_repository: Path, **overrides: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "host": "127.0.0.1", "port": 0, "metrics_port": -1, "device": "auto",
        "model_repository": str(model_repository), "log_level": "WARNING", "grace_period_s": 0.5,
    }
    values.update(overrides)
    return values


class ServerProcess:
    """A server subprocess; ``target`` once started. Use as a context manager."""

    def __init__(self, settings: dict[str, Any]) -> None:
        self.settings = settings
        self.proc: subprocess.Popen[str] | None = None
        self.target = ""

    def __enter__(self) -> ServerProcess:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.server_proc", json.dumps(self.settings)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT,
        )
        assert self.proc.stdout is not None
        deadline = time.monotonic() + 120
        for line in self.proc.stdout:
            if line.startswith("READY "):
                self.target = f"127.0.0.1:{int(line.split()[1])}"
                return self
            if time.monotonic() > deadline:
                break
        self.__exit__(None, None, None)
        raise RuntimeError("the server subprocess did not start")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def __exit__(self, *exc: object) -> None:
        if self.proc is None:
            return
        try:
            if self.proc.stdin:
                self.proc.stdin.close()
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_redis(binary: str = "redis-server") -> tuple[subprocess.Popen[bytes], str]:
    """A private redis-server (free port, no persistence) and its URL; RuntimeError when it
    does not answer within 10 s."""
    port = free_port()
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--loglevel", "warning"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(200):
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return proc, f"redis://127.0.0.1:{port}/0"
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    raise RuntimeError(f"{binary} did not start")


class ServeCommand:
    """``rnnserve serve`` on a free loopback port as a subprocess (``args``: more flags, e.g.
    ``--workers 2``), its output in a log file; :meth:`wait` needs ``--log-level INFO``."""

    def __init__(self, repo: Path, args: list[str]) -> None:
        self.port = free_port()
        self.target = f"127.0.0.1:{self.port}"
        self.log = tempfile.NamedTemporaryFile(prefix="bench-serve-", suffix=".log", delete=False)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "rnnserve.server.main", "--host", "127.0.0.1",
             "--port", str(self.port), "--metrics-port", "-1", "--model-repository", str(repo),
             *args], stdout=self.log, stderr=subprocess.STDOUT, cwd=ROOT)

    def tail(self) -> str:
        return Path(self.log.name).read_text(errors="replace")[-2000:]

    def wait(self) -> str:
        """The target once the log says ready (bounded: 120 s); RuntimeError with the log's tail
        if the server exits or does not get ready."""
        for _ in range(1200):
            if "rnnserve ready" in Path(self.log.name).read_text(errors="replace"):
                return self.target
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        raise RuntimeError(self.tail())

    def close(self) -> None:
        """SIGTERM (a drain), SIGKILL after 60 s; removes the log."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        Path(self.log.name).unlink(missing_ok=True)


async def _serve(settings: dict[str, Any]) -> None:
    from rnnserve.server.app import build_server
    from rnnserve.server.main import freeze_startup_objects
    from rnnserve.server.settings import ServerSettings

    server = build_server(ServerSettings(**settings))
    await server.start()
    freeze_startup_objects()  # as `rnnserve serve` does once started
    print(f"READY {server.port}", flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.read)  # until the parent closes our stdin
    await server.stop(grace=0.5)


def main() -> None:
    import logging

    logging.basicConfig(level=logging.WARNING)
    settings = json.loads(sys.argv[1])
    os.environ.setdefault("PYTHONHASHSEED", "0")
    asyncio.run(_serve(settings))


if __name__ == "__main__":
    main()
