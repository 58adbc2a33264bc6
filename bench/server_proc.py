"""The server under test, in its own process: ``python -m bench.server_proc '<settings json>'``.

The child builds ``ServerSettings`` from the JSON (loopback, ephemeral port, metrics off, the
shipped models on the device: "auto" unless told, plus the overrides), starts the server,
prints ``READY <port>`` and serves until its stdin closes. :class:`ServerProcess` is the parent's handle.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
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


async def _serve(settings: dict[str, Any]) -> None:
    from rnnserve.server.app import build_server
    from rnnserve.server.settings import ServerSettings

    server = build_server(ServerSettings(**settings))
    await server.start()
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
