"""Δm: the average relative gain of a multi-task model over single-task baselines (DESIGN §4).

    Δm = 100/T · Σ_t (1/N_t) · Σ_m (−1)^{l_m} · (M_{t,m} − B_{t,m}) / B_{t,m}

``T`` tasks, ``N_t`` metrics of task ``t`` entering the score, ``M`` the evaluated model's value,
``B`` the single-task baseline's value, and ``l_m = 1`` when lower is better for metric ``m``
(0 when higher is better).  In percent; higher is better; a model equal to its baseline scores 0.
Every task weighs the same whatever its number of metrics.  The metrics that enter are given
explicitly by ``spec = {task: {metric: higher_is_better}}``; :func:`default_spec` uses each task
type's ``primary`` keys (:mod:`metasparsity.eval.metrics`) — report the spec with the number.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from metasparsity.eval.metrics import METRICS

Results = Mapping[str, Mapping[str, float]]
Spec = Mapping[str, Mapping[str, bool]]


def _lookup(table: Results, which: str, task: str, metric: str) -> float:
    if task not in table:
        raise ValueError(f"Δm: {which} has no task {task!r} (has {sorted(table)})")
    if metric not in table[task]:
        raise ValueError(
            f"Δm: {which} has no metric {metric!r} for task {task!r} (has {sorted(table[task])})"
        )
    value = table[task][metric]
    if value is None or not math.isfinite(float(value)):
        raise ValueError(f"Δm: {which}[{task!r}][{metric!r}] is not a finite number: {value!r}")
    return float(value)


def per_task_delta(results: Results, baseline: Results, spec: Spec) -> dict[str, float]:
    """``{task: Δ_t}`` with ``Δ_t = 100/N_t · Σ_m (−1)^{l_m} (M_m − B_m)/B_m`` (percent).

    Raises:
        ValueError: empty spec or task entry, a metric missing from ``results`` or ``baseline``,
            a non-finite value, or a zero baseline value.
    """
    if not spec:
        raise ValueError("Δm: the spec names no task")
    out: dict[str, float] = {}
    for task, metrics in spec.items():
        if not metrics:
            raise ValueError(f"Δm: the spec names no metric for task {task!r}")
        total = 0.0
        for metric, higher_is_better in metrics.items():
            m = _lookup(results, "results", task, metric)
            b = _lookup(baseline, "baseline", task, metric)
            if b == 0.0:
                raise ValueError(
                    f"Δm: baseline {task!r}/{metric!r} is 0, the relative change is undefined"
                )
            sign = 1.0 if higher_is_better else -1.0
            total += sign * (m - b) / b
        out[task] = 100.0 * total / len(metrics)
    return out


def delta_m(results: Results, baseline: Results, spec: Spec) -> float:
    """Δm (percent, higher is better) of ``results`` against ``baseline``; see the module docstring.

    Args:
        results: ``{task: {metric: value}}`` of the evaluated model.
        baseline: ``{task: {metric: value}}`` of the single-task baselines.
        spec: ``{task: {metric: higher_is_better}}``, the metrics that enter Δm.

    Returns:
        ``100/T · Σ_t (1/N_t) Σ_m (−1)^{l_m} (M_m − B_m)/B_m``.
    """
    per_task = per_task_delta(results, baseline, spec)
    return sum(per_task.values()) / len(per_task)


def default_spec(task_types: Mapping[str, str]) -> dict[str, dict[str, bool]]:
    """``{task: {metric: higher_is_better}}`` from each task type's primary metrics.

    ``task_types`` maps task names to types, e.g. ``{"segment": "segmentation", "depth": "depth"}``
    gives ``{"segment": {"miou": True, "pixel_acc": True}, "depth": {"abs_err": False,
    "rel_err": False}}``.
    """
    spec: dict[str, dict[str, bool]] = {}
    for task, task_type in task_types.items():
        cls = METRICS.get(task_type)
        spec[task] = {key: cls.higher_is_better[key] for key in cls.primary}
    return spec


def usable_spec(spec: dict, baseline: dict) -> tuple[dict, list[str]]:
    """``spec`` without the metrics whose baseline is 0 or not finite (Δm is undefined there),
    and the list of ``task.metric`` names left out (reported beside Δm)."""
    kept: dict = {}
    dropped: list[str] = []
    for t, ms in spec.items():
        for m, hib in ms.items():
            b = baseline.get(t, {}).get(m)
            if b is None or not math.isfinite(b) or b == 0:
                dropped.append(f"{t}.{m}")
            else:
                kept.setdefault(t, {})[m] = hib
    return kept, dropped
