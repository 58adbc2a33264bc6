"""``make bench-peers``: Classify on the same model, Seldon MLServer 1.7.1 against rnnserve, one run.

Both servers serve rnnserve's shipped ``sentiment`` model on 127.0.0.1 (ephemeral ports):

- **MLServer** 1.7.1 from its own virtual environment ``.venv/peers`` (``make
  bench-peers`` creates it; pins in ``bench/peers-requirements.txt``), through the runtime
  :mod:`bench.mlserver_runtime`, adaptive batching ``max_batch_size`` 64 and ``max_batch_time``
  5 ms, its other settings at their defaults (one parallel inference worker process, metrics on)
  except ``debug`` off (MLServer's default logs every request);
- **rnnserve** on its defaults (``rnnserve serve``: the server settings' defaults, device CPU,
  metrics on an ephemeral port) except log level WARNING (INFO logs a line per request), plus
  any ``--rnnserve-set NAME=VALUE``, all printed beside the figures.

For each concurrency the two cells run back to back (the order alternates between rounds), each
in a fresh load-generator subprocess (:mod:`bench.peers_load`: same driver, MLServer's through
the Open Inference Protocol's ``ModelInfer``). Every non-OK status is counted; the run exits 1
when any cell had one. Prints a markdown table with ratios and the targets, writes JSON to
``bench/results/peers.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from bench import machine, report
from bench.report import _f
from bench.run import BENCH_CHANGES, review_texts
from bench.server_proc import ROOT, ServerProcess, base_settings, free_port

VENV = ROOT / ".venv" / "peers"  # inside .venv: what skips .venv (scans, builds) skips it
REPO = ROOT / "model_repository"
CONCURRENCY = (1, 16, 64)
MLSERVER_BATCH = {"max_batch_size": 64, "max_batch_time": 0.005}  # seconds


def _log(msg: str) -> None:
    print(f"[bench-peers {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()


class MLServerProcess:
    """``mlserver start`` on a generated settings folder; ``target`` once the model is ready."""

    def __init__(self, model_dir: Path, log_path: Path, debug: bool = False) -> None:
        self.model_dir = model_dir
        self.log_path = log_path
        self.debug = debug
        self.proc: subprocess.Popen[bytes] | None = None
        self.target = ""
        self._tmp: str | None = None

    def __enter__(self) -> MLServerProcess:
        self._tmp = tempfile.mkdtemp(prefix="bench-peers-")
        grpc_port, http_port, metrics_port = free_port(), free_port(), free_port()
        folder = Path(self._tmp)
        (folder / "settings.json").write_text(json.dumps({
            "host": "127.0.0.1", "grpc_port": grpc_port, "http_port": http_port,
            "metrics_port": metrics_port, "debug": self.debug,
        }))
        (folder / "sentiment").mkdir()
        (folder / "sentiment" / "model-settings.json").write_text(json.dumps({
            "name": "sentiment", "implementation": "bench.mlserver_runtime.SentimentRuntime",
            **MLSERVER_BATCH, "parameters": {"uri": str(self.model_dir)},
        }))
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen([str(VENV / "bin" / "mlserver"), "start", str(folder)],
                                         cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        ready = f"http://127.0.0.1:{http_port}/v2/models/sentiment/ready"
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                with urllib.request.urlopen(ready, timeout=2) as response:
                    if response.status == 200:
                        self.target = f"127.0.0.1:{grpc_port}"
                        return self
            except OSError:
                pass
            time.sleep(0.5)
        self.__exit__(None, None, None)
        raise RuntimeError(f"MLServer did not become ready; see {self.log_path}")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.proc.terminate()  # MLServer stops its inference workers on SIGTERM
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                for pid in machine.process_tree(self.proc.pid)[1:]:
                    try:
                        os.kill(pid, 9)
                    except OSError:
                        pass
                self.proc.kill()
                self.proc.wait()
            self.proc = None
        if self._tmp:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None


class FloorProcess:
    """:mod:`bench.grpc_floor` (a bare grpc.aio Classify answering a constant) in a subprocess."""

    def __enter__(self) -> FloorProcess:
        self.proc = subprocess.Popen([sys.executable, "-m", "bench.grpc_floor"], cwd=ROOT,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        if not line.startswith("READY "):
            self.__exit__()
            raise RuntimeError("the gRPC floor server did not start")
        self.target = f"127.0.0.1:{int(line.split()[1])}"
        return self

    @property
    def pid(self) -> int:
        return self.proc.pid

    def __exit__(self, *exc: object) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def run_cell(python: Path, protocol: str, target: str, pid: int, c: int,
             a: argparse.Namespace) -> dict:
    args = [str(python), "-m", "bench.peers_load", "--protocol", protocol, "--target", target,
            "--concurrency", str(c), "--duration", str(a.duration), "--warmup", str(a.warmup),
            "--pid", str(pid), "--texts-file", str(a.texts_file)]
    done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, check=False,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    if done.returncode != 0:
        raise RuntimeError(f"load generator failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _parse_sets(pairs: list[str]) -> dict:
    out: dict = {}
    for pair in pairs:
        name, _, value = pair.partition("=")
        try:
            out[name] = json.loads(value)
        except json.JSONDecodeError:
            out[name] = value
    return out


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


def targets(rows: list[dict]) -> list[dict]:
    """The issue's targets, rnnserve against MLServer in the same run."""
    out = []
    for row in rows:
        c = row["concurrency"]
        if c == 1:
            out.append({"target": f"c={c} latency p50, MLServer / rnnserve",
                        "value": row["ratio_latency_p50"], "bound": 1.0})
        else:
            out.append({"target": f"c={c} requests/s, rnnserve / MLServer",
                        "value": row["ratio_requests_per_s"], "bound": 2.0})
    errors = sum(row[s]["errors"] for row in rows for s in ("mlserver", "rnnserve"))
    out.append({"target": "non-OK statuses (both servers, every cell)", "value": errors,
                "bound": 0, "at_most": True})
    for t in out:
        v = t["value"]
        t["pass"] = v is not None and (v <= t["bound"] if t.get("at_most") else v >= t["bound"])
    return out


def _fmt_statuses(cell: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(cell["statuses"].items())) or "0"


def markdown(results: dict) -> str:
    m = results["machine"]
    lines = [
        f"Machine: {m['nproc']} CPUs ({m['cpu_model']}), torch {m['torch']}, Python {m['python']}; "
        f"{m['date']}; `uptime` at start: {results['uptime_start']}; at end: "
        f"{results['uptime_end']}.",
        f"MLServer {results['mlserver']['version']}: {results['mlserver']['batching']}, "
        f"debug {results['mlserver']['debug']}, other settings default. rnnserve: defaults"
        + "".join(f", {k}={v}" for k, v in results['rnnserve']['changed'].items())
        + f". Cells: {results['settings']['duration_s']} s measured after "
        f"{results['settings']['warmup_s']} s warm-up, one text per request, one channel.",
        "",
        "| round | conc. | MLServer req/s | p50 | p99 | CPU cores | CPU ms/req | non-OK "
        "| rnnserve req/s | p50 | p99 | CPU cores | CPU ms/req | non-OK | req/s ratio | p50 ratio |",
        "|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    for row in results["rows"]:
        ml, rn = row["mlserver"], row["rnnserve"]
        lines.append(
            f"| {row['round']} | {row['concurrency']} | {ml['requests_per_s']:,.0f} | "
            f"{_f(ml['latency_p50_ms'], 2)} ms | {_f(ml['latency_p99_ms'], 2)} ms | "
            f"{ml['server_cpu_cores']:.2f} | {_f(ml['server_cpu_ms_per_request'], 2)} | "
            f"{_fmt_statuses(ml)} | {rn['requests_per_s']:,.0f} | "
            f"{_f(rn['latency_p50_ms'], 2)} ms | {_f(rn['latency_p99_ms'], 2)} ms | "
            f"{rn['server_cpu_cores']:.2f} | {_f(rn['server_cpu_ms_per_request'], 2)} | "
            f"{_fmt_statuses(rn)} | "
            f"{_f(row['ratio_requests_per_s'], 2)} x | {_f(row['ratio_latency_p50'], 2)} x |")
    floors = [row for row in results["rows"] if "floor" in row]
    if floors:
        lines += ["", "Server CPU time per request (ms), the same cells, against the floor of a bare "
                  "grpc.aio server answering a constant (`bench/grpc_floor.py`, no model):", "",
                  "| round | conc. | floor req/s | floor | rnnserve | MLServer | rnnserve − floor "
                  "| MLServer − floor |", "|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for row in floors:
            fl, rn, ml = (row[k].get("server_cpu_ms_per_request") for k in
                          ("floor", "rnnserve", "mlserver"))
            lines.append(
                f"| {row['round']} | {row['concurrency']} | {row['floor']['requests_per_s']:,.0f} | "
                f"{_f(fl, 3)} | {_f(rn, 3)} | {_f(ml, 3)} | "
                f"{_f(rn - fl if rn and fl else None, 3)} | {_f(ml - fl if ml and fl else None, 3)} |")
    lines += ["", "| target | measured | bound | result |", "|---|---:|---:|---|"]
    for t in results["targets"]:
        v = t["value"]
        shown = "–" if v is None else (f"{v}" if isinstance(v, int) else f"{v:.2f} x")
        bound = f"<= {t['bound']}" if t.get("at_most") else f">= {t['bound']} x"
        lines.append(f"| {t['target']} | {shown} | {bound} | {'PASS' if t['pass'] else 'FAIL'} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.peers", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-repository", type=Path, default=REPO)
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "peers.json")
    p.add_argument("--duration", type=float, default=8.0, help="seconds measured per cell")
    p.add_argument("--warmup", type=float, default=1.0, help="seconds before each window")
    p.add_argument("--rounds", type=int, default=1, help="passes over the concurrencies")
    p.add_argument("--concurrency", default=",".join(map(str, CONCURRENCY)))
    p.add_argument("--rnnserve-set", action="append", default=[], metavar="NAME=VALUE",
                   help="override an rnnserve server setting (printed with the figures)")
    p.add_argument("--no-floor", action="store_true",
                   help="skip the gRPC floor cells (bench/grpc_floor.py: no model, no checks)")
    p.add_argument("--mlserver-debug", action="store_true",
                   help="MLServer's default debug mode (an access-log line per request)")
    a = p.parse_args(argv)
    if not (VENV / "bin" / "mlserver").exists():
        print(f"no MLServer in {VENV}: run `make bench-peers`", file=sys.stderr)
        return 2
    repo = a.model_repository.resolve()
    model_dir = max((v for v in (repo / "sentiment").iterdir() if v.name.isdigit()),
                    key=lambda v: int(v.name))
    changed = _parse_sets(a.rnnserve_set)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.texts_file = a.out.parent / "peers-texts.json"
    a.texts_file.write_text(json.dumps(review_texts()), encoding="utf-8")
    version = subprocess.run([str(VENV / "bin" / "python"), "-c",
                              "import mlserver; print(mlserver.__version__)"],
                             capture_output=True, text=True, check=True).stdout.strip()
    results: dict = {
        "machine": machine.describe(), "uptime_start": _uptime(),
        "settings": {"duration_s": a.duration, "warmup_s": a.warmup, "rounds": a.rounds,
                     "model": str(model_dir)},
        "mlserver": {"version": version, "debug": a.mlserver_debug,
                     "batching": "adaptive batching max_batch_size 64, max_batch_time 5 ms"},
        "rnnserve": {"changed": {**BENCH_CHANGES, **changed}},
        "rows": [],
    }
    started = time.perf_counter()
    settings = base_settings(repo, metrics_port=0, **changed)
    _log(f"MLServer {version} and rnnserve (defaults{' + ' + str(changed) if changed else ''}) "
         f"on {model_dir}")
    log_path = a.out.parent / "mlserver.log"
    with MLServerProcess(model_dir, log_path, a.mlserver_debug) as mls, \
            ServerProcess(settings) as rns, contextlib.ExitStack() as stack:
        servers = {"mlserver": (VENV / "bin" / "python", "oip", mls),
                   "rnnserve": (Path(sys.executable), "rnnserve", rns)}
        if not a.no_floor:
            floor = stack.enter_context(FloorProcess())
            servers["floor"] = (Path(sys.executable), "rnnserve", floor)
        for r in range(a.rounds):
            for c in map(int, a.concurrency.split(",")):
                order = ["mlserver", "rnnserve"] if (r % 2 == 0) else ["rnnserve", "mlserver"]
                order += ["floor"] if "floor" in servers else []
                row: dict = {"round": r + 1, "concurrency": c, "first": order[0]}
                for name in order:
                    python, protocol, server = servers[name]
                    row[name] = cell = run_cell(python, protocol, server.target, server.pid, c, a)
                    _log(f"  round {r + 1} c={c} {name}: {cell['requests_per_s']:,.0f} req/s, "
                         f"p50 {cell['latency_p50_ms']:.2f} ms, non-OK {cell['statuses'] or 0}")
                row["ratio_requests_per_s"] = _ratio(row["rnnserve"]["requests_per_s"],
                                                     row["mlserver"]["requests_per_s"])
                row["ratio_latency_p50"] = _ratio(row["mlserver"]["latency_p50_ms"],
                                                  row["rnnserve"]["latency_p50_ms"])
                results["rows"].append(row)
    results["uptime_end"] = _uptime()
    results["elapsed_s"] = time.perf_counter() - started
    results["targets"] = targets(results["rows"])
    report.write_json(results, a.out)
    print(markdown(results))
    _log(f"done in {results['elapsed_s']:.0f} s; JSON in {a.out}")
    errors = sum(row[s]["errors"] for row in results["rows"] for s in ("mlserver", "rnnserve"))
    return 1 if errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
