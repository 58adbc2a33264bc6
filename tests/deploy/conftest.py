"""Fixtures for the deployment proofs: external tools, a live server, YAML, a real Prometheus.

The deployment (Dockerfile, docker-compose.yml, deploy/) is checked without a Docker engine:
with the tools that read those files for real (docker-compose, promtool, prometheus, buf) and
against a real rnnserve server on loopback ephemeral ports.

A missing tool skips its tests on a developer's machine (with the command that installs it) but
fails them in CI (``CI=true``), where ``.ci/run`` installs every one of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
MODEL_REPOSITORY = ROOT / "model_repository"
SHIPPED_MODELS = ("timemachine", "sentiment")
IN_CI = os.environ.get("CI", "").lower() in ("true", "1", "yes")

INSTALL_HINTS = {
    "docker-compose": "apt-get install docker-compose",
    "promtool": "apt-get install prometheus",
    "prometheus": "apt-get install prometheus",
    "buf": "npm install --no-save (the pinned @bufbuild/buf of package-lock.json)",
    "python3-yaml": "apt-get install python3-yaml",
}


def missing(what: str, why: str = "") -> None:
    """Skip locally, fail in CI: CI installs every tool these proofs need."""
    hint = INSTALL_HINTS.get(what, "")
    message = f"{what} is not available{': ' + why if why else ''}" + (
        f" (install: {hint})" if hint else "")
    if IN_CI:
        pytest.fail(f"{message}; .ci/run must install it", pytrace=False)
    pytest.skip(message)


def find_tool(name: str) -> str:
    """The path of an executable: ``buf`` from node_modules, the others from PATH."""
    if name == "buf":
        path = ROOT / "node_modules" / ".bin" / "buf"
        found = str(path) if path.exists() else None
    else:
        found = shutil.which(name)
    if found is None:
        missing(name)
    return found


def run(args: list[str], *, timeout: float = 60, cwd: Path = ROOT, input: str | None = None,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run a command with a bounded time; the result keeps stdout and stderr."""
    return subprocess.run(args, cwd=cwd, input=input, env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)


def output(result: subprocess.CompletedProcess[str]) -> str:
    return f"exit {result.returncode}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"


# --- YAML -----------------------------------------------------------------------------------

_YAML_TO_JSON = "import json, sys, yaml; json.dump(yaml.safe_load(sys.stdin), sys.stdout)"


def load_yaml(text: str) -> Any:
    """Parse YAML with PyYAML: in this interpreter if it has it, else in the system Python.

    The project's environment has no YAML library; Debian's docker-compose depends on
    python3-yaml, so the system interpreter has one wherever docker-compose is installed.
    """
    try:
        import yaml  # type: ignore[import-untyped]
    except ImportError:
        pass
    else:
        return yaml.safe_load(text)
    for python in ("/usr/bin/python3", shutil.which("python3")):
        if python and Path(python).exists():
            result = run([python, "-c", _YAML_TO_JSON], input=text, timeout=30)
            if result.returncode == 0:
                return json.loads(result.stdout)
    missing("python3-yaml", "no Python with PyYAML to read YAML files")


# --- a live server --------------------------------------------------------------------------


class ThreadedServer:
    """A real RnnServer on its own event loop in a background thread.

    One server serves every deploy test (the session-scoped fixture below); its loop lives in a
    thread so that sync tests, subprocesses and Prometheus can all talk to it.
    """

    def __init__(self, **settings: Any) -> None:
        self._settings = settings
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="rnnserve-test",
                                        daemon=True)
        self.server: Any = None

    def start(self, timeout: float = 120) -> None:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout)

    async def _start(self) -> None:
        from rnnserve.server.app import build_server
        from rnnserve.server.settings import ServerSettings

        self.server = build_server(ServerSettings(**self._settings))
        await self.server.start()

    def stop(self) -> None:
        try:
            if self.server is not None:
                asyncio.run_coroutine_threadsafe(
                    self.server.stop(grace=0.5), self._loop).result(30)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(30)
            if not self._thread.is_alive():
                self._loop.close()

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.server.port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.server.metrics_port}/metrics"

    def scrape(self) -> str:
        with urllib.request.urlopen(self.metrics_url, timeout=10) as response:
            return response.read().decode("utf-8")


# The live server's session cap, small enough for the traffic test to force one eviction.
MAX_SESSIONS = 2


def require_shipped_models() -> None:
    absent = [m for m in SHIPPED_MODELS
              if not any((MODEL_REPOSITORY / m).glob("*/model.pt"))]
    if absent:
        message = f"shipped models missing from model_repository/: {', '.join(absent)}"
        if IN_CI:
            pytest.fail(message, pytrace=False)
        pytest.skip(message)


@pytest.fixture(scope="session")
def live_server() -> Iterator[ThreadedServer]:
    """A started server on the shipped models (CPU, loopback, ephemeral ports)."""
    require_shipped_models()
    server = ThreadedServer(
        host="127.0.0.1", port=0, metrics_port=0, metrics_host="127.0.0.1",
        model_repository=MODEL_REPOSITORY, device="cpu", grace_period_s=1.0,
        max_sessions=MAX_SESSIONS,
    )
    try:
        server.start()
        yield server
    finally:
        server.stop()


# --- a real Prometheus ----------------------------------------------------------------------


def free_port() -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(condition: Callable[[], Any], timeout: float, what: str,
              interval: float = 0.25) -> Any:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = condition()
        except (OSError, ValueError, KeyError, AssertionError) as error:
            last_error, value = error, None
        if value:
            return value
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}"
                + (f" (last error: {last_error!r})" if last_error else ""), pytrace=False)


class PrometheusProcess:
    """A Prometheus server on 127.0.0.1 with temporary storage, and a tiny HTTP API client."""

    def __init__(self, binary: str, config: Path, storage: Path, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.log = storage.parent / "prometheus.log"
        self._log_file = self.log.open("w")
        self.process = subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={storage}",
             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
            stdout=self._log_file, stderr=subprocess.STDOUT, cwd=storage.parent,
        )

    def api(self, path: str, **params: str) -> Any:
        query = ("?" + urllib.parse.urlencode(params)) if params else ""
        try:
            with urllib.request.urlopen(f"{self.url}/api/v1/{path}{query}", timeout=5) as r:
                body = json.load(r)
        except urllib.error.HTTPError as error:  # 400/422 carry the error as JSON
            body = json.load(error)
        if body.get("status") != "success":
            raise AssertionError(f"Prometheus API {path} {params}: {body}")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self.api("query", query=expr)
        return data["result"] if data["resultType"] == "vector" else [data["result"]]

    def total(self, expr: str) -> float:
        """The sum of an instant vector's values (0 when it is empty)."""
        return sum(float(r["value"][1]) for r in self.query(expr))

    def ready(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"prometheus exited {self.process.returncode}: "
                                 f"{self.log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as r:
                return r.status == 200
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self._log_file.close()


def scrape_config_for(live_server: ThreadedServer, listen: str) -> dict[str, Any]:
    """deploy/prometheus/prometheus.yml, pointed at the live server and sped up to 1 s."""
    config = load_yaml((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    config["global"].update(scrape_interval="1s", scrape_timeout="1s", evaluation_interval="1s")
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    # The committed job finds the replicas by DNS (compose's service name); here the one live
    # server stands in for them, as a static target.
    [dns] = jobs["rnnserve"].pop("dns_sd_configs")
    assert dns["names"] == ["rnnserve"] and "static_configs" not in jobs["rnnserve"], (
        "the rewrite below expects one DNS name and no static targets")
    jobs["rnnserve"]["static_configs"] = [
        {"targets": [f"127.0.0.1:{live_server.server.metrics_port}"]}]
    if "prometheus" in jobs:
        jobs["prometheus"]["static_configs"] = [{"targets": [listen]}]
    return config


@pytest.fixture(scope="session")
def prometheus(live_server: ThreadedServer, tmp_path_factory: pytest.TempPathFactory
               ) -> Iterator[PrometheusProcess]:
    """The real Prometheus scraping the live server with the project's config and rules."""
    binary = find_tool("prometheus")
    workdir = tmp_path_factory.mktemp("prometheus")
    shutil.copy(ROOT / "deploy" / "prometheus" / "rules.yml", workdir / "rules.yml")
    process: PrometheusProcess | None = None
    try:
        for _attempt in range(3):  # the free port may be taken between probe and bind
            port = free_port()
            config = scrape_config_for(live_server, f"127.0.0.1:{port}")
            (workdir / "prometheus.yml").write_text(json.dumps(config, indent=2))  # JSON is YAML
            process = PrometheusProcess(binary, workdir / "prometheus.yml", workdir / "data", port)
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and process.process.poll() is None:
                if process.ready():
                    break
                time.sleep(0.2)
            if process.process.poll() is None and process.ready():
                break
            process.stop()
            process = None
        if process is None:
            pytest.fail("prometheus did not become ready", pytrace=False)
        yield process
    finally:
        if process is not None:
            process.stop()


def metric_value(exposition: str, name: str, **labels: str) -> float:
    """Sum of the samples called ``name`` whose labels include ``labels`` (0 when none)."""
    from prometheus_client.parser import text_string_to_metric_families

    return sum(
        sample.value
        for family in text_string_to_metric_families(exposition)
        for sample in family.samples
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
    )


# What the traffic below must add to each series, as (PromQL, sample name, labels).
COUNTED = {
    "generate_ok": ('rnnserve_requests_total{method="Generate", code="OK"}',
                    "rnnserve_requests_total", {"method": "Generate", "code": "OK"}),
    "generate_invalid": ('rnnserve_requests_total{method="Generate", code="INVALID_ARGUMENT"}',
                         "rnnserve_requests_total",
                         {"method": "Generate", "code": "INVALID_ARGUMENT"}),
    "stream_ok": ('rnnserve_requests_total{method="GenerateStream", code="OK"}',
                  "rnnserve_requests_total", {"method": "GenerateStream", "code": "OK"}),
    "classify_ok": ('rnnserve_requests_total{method="Classify", code="OK"}',
                    "rnnserve_requests_total", {"method": "Classify", "code": "OK"}),
    "generate_latency_count": ('rnnserve_request_duration_seconds_count{method="Generate"}',
                               "rnnserve_request_duration_seconds_count",
                               {"method": "Generate"}),
    "generated_tokens": ("rnnserve_generated_tokens_total", "rnnserve_generated_tokens_total",
                         {}),
    "classified_texts": ("rnnserve_classified_texts_total", "rnnserve_classified_texts_total",
                         {}),
    "evicted": ('rnnserve_sessions_removed_total{reason="evicted"}',
                "rnnserve_sessions_removed_total", {"reason": "evicted"}),
}


@pytest.fixture(scope="session")
def traffic(live_server: ThreadedServer, prometheus: PrometheusProcess) -> dict[str, float]:
    """Known traffic sent to the live server, seen through Prometheus.

    Returns the expected value of each ``COUNTED`` series, which Prometheus has been seen to
    report (values before the traffic are read from /metrics, so test order does not matter).
    """
    from rnnserve.client import Client, InvalidArgumentError

    wait_for(lambda: any(t["labels"].get("job") == "rnnserve" and t["health"] == "up"
                         for t in prometheus.api("targets")["activeTargets"]),
             timeout=15, what="the rnnserve target to be up")
    before_text = live_server.scrape()
    before = {key: metric_value(before_text, name, **labels)
              for key, (_, name, labels) in COUNTED.items()}
    live_sessions = metric_value(before_text, "rnnserve_sessions_active")
    added = dict.fromkeys(COUNTED, 0.0)
    with Client(live_server.target, retries=0, timeout=30) as client:
        for prefix in ("time traveller", "the machine", "hello", "x", "it was"):
            result = client.generate(prefix, max_tokens=20)
            added["generated_tokens"] += result.generated_tokens
            added["generate_ok"] += 1
        with pytest.raises(InvalidArgumentError):
            client.generate("", max_tokens=5)  # empty prefix without a session
        added["generate_invalid"] += 1
        chunks = list(client.stream("the time traveller", max_tokens=10))
        added["generated_tokens"] += chunks[-1].generated_tokens
        added["stream_ok"] += 1
        for texts in (["a wonderful film", "dull", "fine"], ["bad", "good", "so-so"]):
            assert len(client.classify(texts)) == len(texts)
            added["classified_texts"] += len(texts)
            added["classify_ok"] += 1
        # Sessions past the cap evict the least recently used, in two rounds a scrape apart,
        # so the eviction counter visibly increases (an alert rule uses increase()).
        opened = 0
        for round_size in (MAX_SESSIONS + 1, 1):
            for _ in range(round_size):
                result = client.generate("session ", max_tokens=3, keep_session=True)
                assert result.session_id
                added["generated_tokens"] += result.generated_tokens
                added["generate_ok"] += 1
                opened += 1
            if round_size > 1:
                evicted_so_far = before["evicted"] + live_sessions + opened - MAX_SESSIONS
                wait_for(lambda n=evicted_so_far: prometheus.total(COUNTED["evicted"][0]) == n,
                         timeout=15, what="Prometheus to see the first evictions")
        added["evicted"] = live_sessions + opened - MAX_SESSIONS
    added["generate_latency_count"] = added["generate_ok"] + added["generate_invalid"]
    expected = {key: before[key] + added[key] for key in COUNTED}

    def seen() -> dict[str, float]:
        return {key: prometheus.total(expr) for key, (expr, _, _) in COUNTED.items()}

    observed: dict[str, float] = {}

    def all_seen() -> bool:
        observed.update(seen())
        return observed == expected

    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not all_seen():
        time.sleep(0.25)
    assert observed == expected, f"Prometheus shows {observed}, the traffic made {expected}"
    return expected


@pytest.fixture(scope="session")
def deploy() -> SimpleNamespace:
    """The helpers above, for the test modules (conftest modules are not importable)."""
    return SimpleNamespace(
        ROOT=ROOT, IN_CI=IN_CI, MAX_SESSIONS=MAX_SESSIONS, find_tool=find_tool, run=run,
        output=output, load_yaml=load_yaml, wait_for=wait_for, missing=missing,
        metric_value=metric_value, COUNTED=COUNTED,
    )
