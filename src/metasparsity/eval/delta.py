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
from collections.abc import Iterable, Mapping
from typing import Any

from metasparsity.eval.metrics import METRICS, _task_type
from metasparsity.utils.errors import UserError

Results = Mapping[str, Mapping[str, float]]
Spec = Mapping[str, Mapping[str, bool]]


def _lookup(table: Results, which: str, task: str, metric: str) -> float:
    if task not in table:
        raise ValueError(f"Δm: {which} has no task {task!r} (has {sorted(table)})")
    if not isinstance(table[task], Mapping):
        raise TypeError(
            f"Δm: {which}[{task!r}] must be {{metric: value}}, got {type(table[task]).__name__} "
            f"{table[task]!r}"
        )
    if metric not in table[task]:
        raise ValueError(
            f"Δm: {which} has no metric {metric!r} for task {task!r} (has {sorted(table[task])})"
        )
    value = table[task][metric]
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if value is None or not math.isfinite(number):
        raise ValueError(f"Δm: {which}[{task!r}][{metric!r}] is not a finite number: {value!r}")
    return number


def per_task_delta(results: Results, baseline: Results, spec: Spec) -> dict[str, float]:
    """``{task: Δ_t}`` with ``Δ_t = 100/N_t · Σ_m (−1)^{l_m} (M_m − B_m)/B_m`` (percent).

    Raises:
        ValueError: empty spec or task entry, a metric missing from ``results`` or ``baseline``,
            a non-finite (or non-numeric) value, or a zero baseline value.
        TypeError: a spec entry that is not ``{metric: bool}`` (a direction such as ``"lower"``
            is not a bool), or a ``results`` / ``baseline`` entry that is not ``{metric: value}``.
    """
    _check_spec_is_a_mapping(spec)
    if not spec:
        raise ValueError("Δm: the spec names no task")
    out: dict[str, float] = {}
    for task, metrics in spec.items():
        if not isinstance(metrics, Mapping):
            raise TypeError(f"Δm: spec[{task!r}] must be {{metric: higher_is_better}}, got "
                            f"{type(metrics).__name__} {metrics!r}")
        if not metrics:
            raise ValueError(f"Δm: the spec names no metric for task {task!r}")
        total = 0.0
        for metric, higher_is_better in metrics.items():
            if not isinstance(higher_is_better, bool):
                raise TypeError(f"Δm: spec[{task!r}][{metric!r}] must be a bool (True: higher is "
                                f"better), got {type(higher_is_better).__name__} "
                                f"{higher_is_better!r}")
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


def default_spec(task_types: Mapping[str, Any]) -> dict[str, dict[str, bool]]:
    """``{task: {metric: higher_is_better}}`` from each task type's primary metrics.

    ``task_types`` maps task names to types, e.g. ``{"segment": "segmentation", "depth": "depth"}``
    gives ``{"segment": {"miou": True, "pixel_acc": True}, "depth": {"abs_err": False,
    "rel_err": False}}``; the :class:`~metasparsity.data.tasks.Task` objects of
    :func:`metasparsity.data.resolve_tasks` (anything with ``.type``) do as well.
    """
    if not isinstance(task_types, Mapping):
        raise TypeError("default_spec: expected {task name: type string or Task}, got "
                        f"{type(task_types).__name__}")
    spec: dict[str, dict[str, bool]] = {}
    for task, task_type in task_types.items():
        cls = METRICS.get(_task_type(task, task_type))
        spec[task] = {key: cls.higher_is_better[key] for key in cls.primary}
    return spec


def _check_spec_is_a_mapping(spec: object) -> None:
    if not isinstance(spec, Mapping):
        raise TypeError(f"Δm: the spec must be {{task: {{metric: higher_is_better}}}} (e.g. "
                        f"default_spec(tasks)), got {type(spec).__name__} {spec!r}")


def usable_spec(spec: dict, baseline: dict, *, needed: str | None = None) -> tuple[dict, list[str]]:
    """``spec`` without the metrics whose baseline is 0 or not finite (Δm is undefined there),
    and the list of ``task.metric`` names left out (reported beside Δm).  ``needed`` names what
    the Δm is for (e.g. ``"seed 0's seen tasks"``): then none left is a UserError naming the
    metrics, not a ValueError from :func:`delta_m`."""
    _check_spec_is_a_mapping(spec)
    kept: dict = {}
    dropped: list[str] = []
    for t, ms in spec.items():
        for m, hib in ms.items():
            b = baseline.get(t, {}).get(m)
            if b is None or not math.isfinite(b) or b == 0:
                dropped.append(f"{t}.{m}")
            else:
                kept.setdefault(t, {})[m] = hib
    if needed and spec and not kept:
        raise UserError(f"Δm over {needed}: every metric's baseline is 0 or missing "
                        f"({', '.join(dropped)}), so no relative change is defined; the "
                        "baseline models learned nothing (train them longer)")
    return kept, dropped


def pareto_points(points: Iterable[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points ``(x, y)`` no other point beats in both (higher is better in each), sorted.
    A point with a NaN coordinate is compared with nothing: never on the front, never beating one."""
    pts = {p for p in points if not (math.isnan(p[0]) or math.isnan(p[1]))}
    return sorted(p for p in pts if not any(
        q[0] >= p[0] and q[1] >= p[1] and q != p for q in pts))


def front_value(points: Iterable[tuple[float, float]], x: float) -> float | None:
    """The Pareto front of ``points`` (``(sparsity, Δm)``, higher is better in both) read at
    ``x``: linear between front points, flat to the left of the first (that point is sparser
    and at least as good), None beyond the last (nothing there to compare with)."""
    pts = pareto_points(points)
    if not pts or x > pts[-1][0] + 1e-9:
        return None
    if x <= pts[0][0]:
        return pts[0][1]
    for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
        if x0 - 1e-9 <= x <= x1 + 1e-9:
            t = 0.0 if x1 == x0 else (x - x0) / (x1 - x0)
            return y0 + t * (y1 - y0)
    return None  # pragma: no cover - the cases above cover the range
