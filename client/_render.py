"""Plain-text and JSON rendering of client results for the CLI."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from typing import Any

from ._types import Classification, ModelInfo

TOP_TOKENS = 5
"""Tokens shown per text by ``classify --explain`` in table form."""


def to_json(value: Any, *, indent: int | None = 2) -> str:
    """JSON for a result dataclass, or a list of them."""
    if isinstance(value, list):
        value = [dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v for v in value]
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    return json.dumps(value, indent=indent, ensure_ascii=False)


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns separated by two spaces; the last column is not padded."""
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]
    lines = []
    for row in [headers, *rows]:
        cells = [str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)]
        cells[-1] = str(row[-1])
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def classifications_table(
    texts: Sequence[str], results: Sequence[Classification], *, explain: bool = False
) -> str:
    """``LABEL SCORE TEXT`` per text; with ``explain``, the most attended tokens below each."""
    lines = table(
        ("LABEL", "SCORE", "TEXT"),
        [(r.label, f"{r.score:.4f}", t) for t, r in zip(texts, results, strict=False)],
    ).splitlines()
    if not explain:
        return "\n".join(lines)
    out = [lines[0]]
    for line, result in zip(lines[1:], results, strict=False):
        out.append(line)
        top = sorted(result.tokens, key=lambda tw: tw.weight, reverse=True)[:TOP_TOKENS]
        out.append("    tokens: " + ", ".join(f"{tw.token!r} {tw.weight:.3f}" for tw in top))
    return "\n".join(out)


def number(value: float) -> str:
    """A metric for people: whole numbers in full (17060, not 1.706e+04), others to 4
    significant digits."""
    if float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    return f"{value:.4g}"


def _metrics(metrics: dict[str, float]) -> str:
    return " ".join(f"{k}={number(v)}" for k, v in sorted(metrics.items())) or "-"


def models_table(models: Sequence[ModelInfo]) -> str:
    """One row per model; a failed model's error follows its row."""
    headers = ("NAME", "VERSION", "KIND", "STATE", "DEVICE", "DEFAULT", "ARCHITECTURE", "METRICS")
    rows = [
        (
            m.name,
            str(m.version),
            m.kind or "-",
            m.state or "-",
            m.device or "-",
            "yes" if m.is_default else "",
            m.architecture or "-",
            _metrics(m.metrics),
        )
        for m in models
    ]
    lines = table(headers, rows).splitlines()
    out = [lines[0]]
    for line, model in zip(lines[1:], models, strict=True):
        out.append(line)
        if model.error:
            out.append(f"    error: {model.error}")
    return "\n".join(out)
