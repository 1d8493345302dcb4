"""Evaluation: split-level metrics, Δm against single-task baselines, and model cost.

Public API:
    ``metrics``: one class per task type (``SegmentationMetric``, ``DepthMetric``,
    ``NormalMetric``, ``EdgeMetric``, ``BinaryMetric``) with ``update(pred, target)`` /
    ``compute()`` / ``reset()``, the registry ``METRICS`` and the builders ``build_metric``,
    ``build_metrics``, ``update_all``, ``compute_all``.
    ``delta_m(results, baseline, spec)``, ``per_task_delta``, ``default_spec``.
    ``count_parameters``, ``count_macs``, ``measure_latency``, ``cost_table``.

This package imports only :mod:`metasparsity.utils` (plus torch, NumPy and SciPy).
"""

from metasparsity.eval import metrics
from metasparsity.eval.cost import (
    cost_table,
    count_macs,
    count_parameters,
    measure_latency,
    stage_costs,
)
from metasparsity.eval.delta import default_spec, delta_m, per_task_delta
from metasparsity.eval.metrics import (
    METRICS,
    BinaryMetric,
    DepthMetric,
    EdgeMetric,
    Metric,
    NormalMetric,
    SegmentationMetric,
    build_metric,
    build_metrics,
    compute_all,
    register_metric,
    reset_all,
    update_all,
)

__all__ = [
    "metrics",
    "METRICS",
    "Metric",
    "SegmentationMetric",
    "DepthMetric",
    "NormalMetric",
    "EdgeMetric",
    "BinaryMetric",
    "build_metric",
    "build_metrics",
    "update_all",
    "compute_all",
    "reset_all",
    "register_metric",
    "delta_m",
    "per_task_delta",
    "default_spec",
    "count_parameters",
    "count_macs",
    "measure_latency",
    "stage_costs",
    "cost_table",
]
