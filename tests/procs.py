"""Real processes for the scale-out tests: redis-server, ``rnnserve serve``, nginx, on loopback.

Each helper starts its process on a free ephemeral port, waits (bounded) until it answers, and
stops it by the PID it recorded — never by name, since other servers may run on this machine.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODEL_REPOSITORY = ROOT / "model_repository"
REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
NGINX_TEMPLATE = ROOT / "deploy" / "nginx" / "nginx.conf"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    """Until something accepts on 127.0.0.1:port (bounded); fails if the process exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process {proc.args[0]} exited with {proc.returncode}")
        with socket.socket() as s:
            s.settimeout(0.2)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port} after {timeout}s")


def stop(proc: subprocess.Popen | None, sig: int = signal.SIGTERM, timeout: float = 15) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class Redis:
    """``redis-server`` on a free port, no persistence; restartable on the same port."""

    def __init__(self) -> None:
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> Redis:
        self.proc = subprocess.Popen(
            [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--daemonize", "no", "--loglevel", "warning"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        wait_port(self.port, self.proc, 20)
        return self

    def kill(self) -> None:
        stop(self.proc, signal.SIGKILL)
        self.proc = None


class Replica:
    """One ``rnnserve serve`` process (a replica; with ``--workers N``, its supervisor)."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.metrics_port = free_port()
        self.args = args
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen | None = None
        self.log = tempfile.NamedTemporaryFile(prefix="rnnserve-", suffix=".log", delete=False)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> Replica:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "rnnserve.server.main", "--host", "127.0.0.1",
             "--port", str(self.port), "--metrics-port", str(self.metrics_port),
             "--model-repository", str(MODEL_REPOSITORY), "--device", "cpu",
             "--torch-threads", "1", "--grace-period-s", "5", *self.args],
            stdout=self.log, stderr=subprocess.STDOUT, env=self.env, cwd=ROOT,
        )
        return self

    def wait_ready(self, timeout: float = 240.0) -> Replica:
        """Until the log says the server (every worker) is ready."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if "rnnserve ready" in self.output():
                return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"rnnserve exited with {self.proc.returncode}:\n"
                                   + self.output()[-3000:])
            time.sleep(0.1)
        raise RuntimeError("rnnserve did not get ready:\n" + self.output()[-3000:])

    def output(self) -> str:
        return Path(self.log.name).read_text(encoding="utf-8", errors="replace")

    def kill(self) -> None:
        stop(self.proc, signal.SIGKILL)

    def stop(self) -> int | None:
        stop(self.proc)
        return None if self.proc is None else self.proc.returncode

    def close(self) -> None:
        self.kill()
        Path(self.log.name).unlink(missing_ok=True)


class Nginx:
    """Debian's nginx, not a daemon, with its own prefix: ``grpc_pass`` to ``upstreams``."""

    def __init__(self, upstreams: list[str]) -> None:
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="rnnserve-nginx-"))
        servers = "".join(f"        server {u};\n" for u in upstreams)
        conf = NGINX_TEMPLATE.read_text(encoding="utf-8")
        conf = re.sub(r"(upstream rnnserve \{\n).*?(\n\s*keepalive)",
                      lambda m: m.group(1) + servers.rstrip("\n") + m.group(2), conf, flags=re.S)
        conf = re.sub(r"(?m)^(\s*)listen 50051 http2;", rf"\1listen 127.0.0.1:{self.port} http2;",
                      conf)
        conf = re.sub(r"(?m)^pid .*;", f"pid {self.dir}/nginx.pid;", conf)
        conf = re.sub(r"(?m)^error_log \S+", f"error_log {self.dir}/error.log", conf)
        (self.dir / "nginx.conf").write_text(conf, encoding="utf-8")
        self.proc: subprocess.Popen | None = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> Nginx:
        self.proc = subprocess.Popen(
            [NGINX, "-p", str(self.dir), "-c", str(self.dir / "nginx.conf"),
             "-e", str(self.dir / "error.log"), "-g", "daemon off;"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        wait_port(self.port, self.proc, 20)
        return self

    def close(self) -> None:
        stop(self.proc, signal.SIGQUIT)
        shutil.rmtree(self.dir, ignore_errors=True)
