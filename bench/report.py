"""Targets, the markdown table and the JSON file of a bench run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def _get(d: dict, *keys: Any) -> Any:
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def _stream(results: dict, mode: str, c: int) -> dict:
    for cell in _get(results, "server", mode, "streams") or []:
        if cell["concurrency"] == c:
            return cell
    return {}


def _classify(results: dict, mode: str, c: int) -> dict:
    for cell in _get(results, "server", mode, "classify") or []:
        if cell["concurrency"] == c:
            return cell
    return {}


def status_failures(results: dict) -> list[tuple[str, dict[str, int]]]:
    """Every load cell that saw a non-OK status (none is expected in any cell): where, counts."""
    out = []
    for mode, cells in (_get(results, "server") or {}).items():
        for rpc, rows in cells.items():
            if not isinstance(rows, list):  # "oip": the protocol comparison, not a cell list
                continue
            for cell in rows:
                if cell.get("statuses"):
                    out.append((f"{rpc} batching {mode} c={cell['concurrency']}",
                                cell["statuses"]))
    return out


def targets(results: dict) -> list[dict]:
    """Each target: what it compares, the measured ratio or value, the bound, pass/fail."""
    out: list[dict] = []

    def add(name: str, value: float | None, bound: float, at_least: bool, unit: str) -> None:
        ok = None if value is None else (value >= bound if at_least else value <= bound)
        out.append({"target": name, "value": value, "bound": bound,
                    "op": ">=" if at_least else "<=", "unit": unit, "pass": ok})

    def ratio(a: float | None, b: float | None) -> float | None:
        return a / b if a is not None and b else None

    engine64 = _get(results, "engine_limit", "step_tokens_per_s", "64")
    on64 = _stream(results, "on", 64).get("tokens_per_s")
    off64 = _stream(results, "off", 64).get("tokens_per_s")
    add("streams c=64 tokens/s / engine limit at batch 64", ratio(on64, engine64), 0.5, True, "x")
    add("streams c=64 tokens/s, batching on / off", ratio(on64, off64), 20.0, True, "x")
    add("TTFT p50 at c=64 (batching on)", _stream(results, "on", 64).get("ttft_p50_ms"),
        50.0, False, "ms")
    add("TTFT p50 at c=1 (batching on)", _stream(results, "on", 1).get("ttft_p50_ms"),
        3.0, False, "ms")
    seed = [v for v in (_get(results, "engine_limit", "predict_ch8_tokens_per_s"),
                        _get(results, "engine_limit", "predict_ch8_autograd_tokens_per_s")) if v]
    add("single stream tokens/s / seed predict_ch8 (the faster of its two timings)",
        ratio(_stream(results, "on", 1).get("tokens_per_s"), max(seed) if seed else None),
        3.0, True, "x")
    add("Classify c=64 requests/s, batching on / off",
        ratio(_classify(results, "on", 64).get("requests_per_s"),
              _classify(results, "off", 64).get("requests_per_s")), 4.0, True, "x")
    points = _get(results, "sessions_rss", "points") or []
    big = max(points, key=lambda p: p["sessions"]) if points else {}
    add(f"RSS growth / raw state bytes, {big.get('sessions', 0):,} idle sessions",
        big.get("ratio"), 3.0, False, "x")
    return out


def _f(x: float | None, digits: int = 0) -> str:
    if x is None:
        return "–"
    return f"{x:,.{digits}f}"


def markdown(results: dict) -> str:
    m = results.get("machine", {})
    lines = [
        f"Machine: {m.get('nproc')} CPUs ({m.get('cpu_model')}), torch {m.get('torch')}, "
        f"server torch threads {results.get('settings', {}).get('torch_threads') or 'per step'}, "
        f"Python {m.get('python')}; {m.get('date')}; load average at start "
        f"{m.get('load_average_at_start')}, at end {m.get('load_average_at_end')}.",
        "",
    ]
    changes = _get(results, "settings", "server_changes") or {}
    if changes:
        shown = "; ".join(f"batching {mode}: " + (", ".join(f"{k}={v}" for k, v in c.items()) or "none")
                          for mode, c in changes.items())
        lines += [f"Server settings changed from the defaults (besides addresses and device cpu): "
                  f"{shown}.", ""]
    el = results.get("engine_limit")
    if el:
        steps = el["step_tokens_per_s"]
        lines += [
            f"**Engine limit** (`{el['model']}`, no RPC, greedy `step` + argmax, "
            f"torch threads per batch {el.get('step_threads') or el['torch_threads']}):",
            "",
            "| batch 1 | batch 16 | batch 64 | seed `predict_ch8` (no_grad) | "
            "seed `predict_ch8` (autograd on, as d2l calls it) |",
            "|---:|---:|---:|---:|---:|",
            f"| {_f(steps.get('1'))} tok/s | {_f(steps.get('16'))} tok/s | "
            f"{_f(steps.get('64'))} tok/s | {_f(el['predict_ch8_tokens_per_s'])} tok/s | "
            f"{_f(el['predict_ch8_autograd_tokens_per_s'])} tok/s |",
            "",
        ]
    server = results.get("server", {})
    if server:
        lines += [
            "**GenerateStream** (closed loop, max_tokens "
            f"{results.get('settings', {}).get('stream_max_tokens')}; ITL = message gap / "
            "characters in the message):",
            "",
            "| batching | conc. | tokens/s | TTFT p50 | TTFT p99 | ITL p50 | ITL p99 | "
            "msg gap p50 | chars/msg | server CPU | server CPU ms / 1k tok |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for mode in ("on", "off"):
            for cell in _get(server, mode, "streams") or []:
                lines.append(
                    f"| {mode} | {cell['concurrency']} | {_f(cell['tokens_per_s'])} | "
                    f"{_f(cell['ttft_p50_ms'], 2)} ms | {_f(cell['ttft_p99_ms'], 2)} ms | "
                    f"{_f(cell['itl_p50_ms'], 3)} ms | {_f(cell['itl_p99_ms'], 3)} ms | "
                    f"{_f(cell['msg_gap_p50_ms'], 2)} ms | {_f(cell['chars_per_message'], 1)} | "
                    f"{_f(cell.get('server_cpu_cores'), 2)} | "
                    f"{_f(cell.get('server_cpu_ms_per_1k_tokens'), 1)} |"
                )
        lines += [
            "",
            "**Generate (unary)** (max_tokens "
            f"{results.get('settings', {}).get('unary_max_tokens')}) and **Classify** "
            "(one text per request):",
            "",
            "| rpc | batching | conc. | requests/s | tokens/s | p50 | p99 | server CPU | "
            "server CPU ms / request |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for rpc, key in (("Generate", "unary"), ("Classify", "classify")):
            for mode in ("on", "off"):
                for cell in _get(server, mode, key) or []:
                    lines.append(
                        f"| {rpc} | {mode} | {cell['concurrency']} | "
                        f"{_f(cell['requests_per_s'])} | {_f(cell.get('tokens_per_s'))} | "
                        f"{_f(cell['latency_p50_ms'], 2)} ms | {_f(cell['latency_p99_ms'], 2)} ms | "
                        f"{_f(cell.get('server_cpu_cores'), 2)} | "
                        f"{_f(cell.get('server_cpu_ms_per_request'), 2)} |"
                    )
        lines.append("")
    rss = results.get("sessions_rss")
    if rss:
        lines += [
            "**Idle sessions** (separate process; RSS growth over a warmed-up baseline):",
            "",
            "| sessions | RSS growth | raw state bytes | ratio | bytes/session |",
            "|---:|---:|---:|---:|---:|",
        ]
        for p in rss["points"]:
            lines.append(
                f"| {p['sessions']:,} | {p['rss_growth_bytes'] / 2**20:,.1f} MiB | "
                f"{p['state_bytes'] / 2**20:,.1f} MiB | {_f(p['ratio'], 2)} | "
                f"{_f(p['bytes_per_session'])} |"
            )
        lines.append("")
    failures = status_failures(results)
    if server:
        lines += ["**Non-OK statuses**: " + ("; ".join(
            f"{where}: " + ", ".join(f"{k} {v}" for k, v in sorted(st.items()))
            for where, st in failures) + " — FAIL (none is expected)" if failures
            else "none in any cell."), ""]
    lines += ["**Targets:**", "", "| target | measured | bound | result |", "|---|---:|---:|---|"]
    for t in results.get("targets", []):
        verdict = "n/a" if t["pass"] is None else ("PASS" if t["pass"] else "FAIL")
        lines.append(f"| {t['target']} | {_f(t['value'], 2)} {t['unit']} | "
                     f"{t['op']} {t['bound']:g} {t['unit']} | {verdict} |")
    return "\n".join(lines) + "\n"


def write_json(results: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
