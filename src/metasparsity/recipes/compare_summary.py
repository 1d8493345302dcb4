"""What ``compare`` reports beside the metrics: Δm per method and seed (test split, against STL)
with mean ± std, the fixed-λ grid's Pareto front and a method's gap to it, and the cost of a
run's model after its zero channels are removed."""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

import torch

from metasparsity.eval.delta import delta_m, front_value, pareto_points, usable_spec


def pruned_cost(run_dir: str | Path, image_size: int) -> dict[str, Any]:
    """Parameters and MACs of a run's best model, dense and after removing its zero channels."""
    from metasparsity.eval.cost import count_macs, count_parameters
    from metasparsity.recipes.load_run import load_run_model
    from metasparsity.sparsity import prune_zero_channels

    _, model, _ = load_run_model(run_dir)
    model.eval()
    x = torch.zeros(1, 3, image_size, image_size)
    pruned = prune_zero_channels(model, x)
    return {"params_dense": count_parameters(model), "params": count_parameters(pruned),
            "macs_dense": count_macs(model, x), "macs": count_macs(pruned, x),
            "backbone_params": count_parameters(pruned.backbone),
            "backbone_params_dense": count_parameters(model.backbone)}


def backbone_cost(run_dir: str | Path, image_size: int) -> dict[str, float]:
    """A run's best model's backbone cost after pruning, as fractions of dense (macs, params,
    groups): the levels budget mode is matched to."""
    from metasparsity.recipes.load_run import load_run_model
    from metasparsity.sparsity import BackboneCost, channel_groups

    _, model, _ = load_run_model(run_dir)
    x = torch.zeros(1, 3, image_size, image_size)
    return BackboneCost(model, x, channel_groups(model)).summary(model)


def mean_std_cell(values: list[float | None]) -> dict[str, float]:
    """``{"mean", "std", "n"}`` over the values that exist (None and NaN left out; ``n``: how
    many), the cell the reports print as ``mean ± std`` (:func:`metasparsity.report.compare.mean_std`)."""
    vals = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not vals:
        return {"mean": float("nan"), "std": float("nan"), "n": 0}
    return {"mean": statistics.fmean(vals), "std": statistics.stdev(vals) if len(vals) > 1 else 0.0,
            "n": len(vals)}


def summarize(per_seed: dict[str, dict[str, Any]], spec_seen: dict, spec_unseen: dict,
              stl_by_seed: dict[str, Any]) -> dict[str, Any]:
    """Δm per method and seed (test split, against that seed's STL), then mean ± std."""
    methods: dict[str, Any] = {}
    for seed, rows in per_seed.items():
        stl = stl_by_seed[seed]
        s_seen, drop_seen = usable_spec(spec_seen, stl["test"],
                                        needed=f"seed {seed}'s seen tasks (test split, STL)")
        s_unseen, drop_unseen = usable_spec(spec_unseen, stl["test"])
        for name in ("fixed_lambda", "meta_budget"):
            for p in rows.get(name, {}).get("grid", []):
                p["delta_m_seen"] = delta_m(p["test"], stl["test"], s_seen)
        for name, row in rows.items():
            d_seen = delta_m(row["seen"]["test"], stl["test"], s_seen)
            d_unseen = delta_m(row["unseen"]["test"], stl["test"], s_unseen) if s_unseen else None
            both = {**row["seen"]["test"], **row["unseen"]["test"]}
            d_all = delta_m(both, stl["test"], {**s_seen, **s_unseen})
            row["delta_m"] = {"seen": d_seen, "unseen": d_unseen, "all": d_all,
                              "left_out": drop_seen + drop_unseen}
            methods.setdefault(name, []).append(row)
    front = fixed_lambda_front(per_seed)
    for rows in per_seed.values():  # every budget-mode level against the front
        for p in rows.get("meta_budget", {}).get("grid", []):
            if front:
                p["gap_to_front"] = gap_to_front(front, 100 * p["param_sparsity"],
                                                 p["delta_m_seen"])
    for rows in methods.values():
        for r in rows:
            if front and r["sparsity"]["param_sparsity"] > 0:
                r["gap_to_front"] = gap_to_front(front, 100 * r["sparsity"]["param_sparsity"],
                                                 r["delta_m"]["seen"])
    out = {}
    for name, rows in methods.items():
        def col(f, rows=rows):
            return mean_std_cell([f(r) for r in rows])

        agg = {
            "delta_m_seen": col(lambda r: r["delta_m"]["seen"]),
            "delta_m_unseen": col(lambda r: r["delta_m"]["unseen"]),
            "delta_m_all": col(lambda r: r["delta_m"]["all"]),
            "group_sparsity": col(lambda r: 100 * r["sparsity"]["group_sparsity"]),
            "param_sparsity": col(lambda r: 100 * r["sparsity"]["param_sparsity"]),
            "wall_time_s": col(lambda r: r["wall_time_s"]),
            "gap_to_front": col(lambda r: r.get("gap_to_front")),
            "passes": col(lambda r: r.get("passes")),
            "passes_total": col(lambda r: r.get("passes_total")),
            "params": col(lambda r: r.get("cost", {}).get("params")),
            "macs": col(lambda r: r.get("cost", {}).get("macs")),
            "metrics": {},
        }
        tasks = list(rows[0]["seen"]["test"]) + list(rows[0]["unseen"]["test"])
        for t in tasks:
            part = "seen" if t in rows[0]["seen"]["test"] else "unseen"
            agg["metrics"][t] = {m: col(lambda r, t=t, m=m, part=part: r[part]["test"][t][m])
                                 for m in rows[0][part]["test"][t]}
        if "lambda_final" in rows[0]:
            agg["lambda_final"] = col(lambda r: _lam_scalar(r["lambda_final"]))
        if "selected_lambda" in rows[0]:
            agg["selected_lambda"] = col(lambda r: r["selected_lambda"])
        out[name] = agg
    return out


def fixed_lambda_front(per_seed: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The fixed-λ grid averaged over seeds: one point per λ with the mean ± std of its backbone
    parameter sparsity (%) and Δm (seen tasks, test, %), and ``front`` marking the points on the
    Pareto front (no other point is at least as sparse and at least as good)."""
    by_lam: dict[float, list[tuple[float, float]]] = {}
    for rows in per_seed.values():
        grid = rows.get("fixed_lambda", {}).get("grid", [])
        for p in grid:
            by_lam.setdefault(p["lam"], []).append((100 * p["param_sparsity"], p["delta_m_seen"]))
        if grid and "delta_m" in rows.get("mtl", {}):  # λ = 0, the grid's dense end
            by_lam.setdefault(0.0, []).append((0.0, rows["mtl"]["delta_m"]["seen"]))
    pts = []
    for lam, vals in sorted(by_lam.items()):
        xs, ys = [v[0] for v in vals], [v[1] for v in vals]
        p = {"lam": lam, "param_sparsity": mean_std_cell(xs), "delta_m": mean_std_cell(ys)}
        if all(math.isfinite(p[k]["mean"]) for k in ("param_sparsity", "delta_m")):
            pts.append(p)
    front = set(pareto_points((p["param_sparsity"]["mean"], p["delta_m"]["mean"]) for p in pts))
    for p in pts:
        p["front"] = (p["param_sparsity"]["mean"], p["delta_m"]["mean"]) in front
    return pts


def gap_to_front(front: list[dict[str, Any]], param_sparsity: float, delta: float) -> float | None:
    """``delta`` minus the front's Δm at ``param_sparsity`` (%) (:func:`front_value`): linear
    between front points, flat to the left of the densest one; None beyond the sparsest grid
    point.  With dense MTL in the comparison (λ = 0) the front may start at 0 %."""
    at = front_value([(p["param_sparsity"]["mean"], p["delta_m"]["mean"]) for p in front],
                     param_sparsity)
    return None if at is None else delta - at


def _lam_scalar(v) -> float:
    return float(sum(v) / len(v)) if isinstance(v, list) else float(v)
