"""Markdown tables."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def fmt(v: Any, digits: int = 4) -> str:
    """Format a number compactly: 3 significant decimals for %, more for small values."""
    if v is None:
        return "–"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if v != v:
            return "nan"
        a = abs(v)
        if a == 0:
            return "0"
        if a >= 100:
            return f"{v:.1f}"
        if a >= 1:
            return f"{v:.2f}"
        if a >= 1e-3:
            return f"{v:.{digits}f}"
        return f"{v:.2e}"
    return str(v)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """``| a | b |`` table; numbers formatted with :func:`fmt`."""
    cells = [[fmt(c) if not isinstance(c, str) else c for c in r] for r in rows]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in cells]
    return "\n".join(lines)


def metrics_table(results: Mapping[str, Mapping[str, float]]) -> str:
    """One row per (task, metric) of ``{task: {metric: value}}``."""
    rows = []
    for task, ms in results.items():
        for k, v in ms.items():
            rows.append([task, k, v])
    return markdown_table(["task", "metric", "value"], rows)
