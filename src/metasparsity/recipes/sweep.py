"""Recipe ``sweep-lambda``: the fixed-λ baseline over a λ grid (the hand-tuning that meta-sparsity
replaces): dense MTL and one fixed-λ model per grid point under the same budget; Δm against dense
MTL, sparsity and time per point, the point chosen on validation Δm, and the Δm/sparsity plot.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from metasparsity.config import Config
from metasparsity.data import resolve_tasks
from metasparsity.eval.delta import default_spec, delta_m, usable_spec
from metasparsity.recipes import run_recipe
from metasparsity.recipes.train import Trainer, refuse_train_budget, settings_from_config
from metasparsity.report.tables import markdown_table
from metasparsity.training import collectives
from metasparsity.training.reuse import check_finished_sub_runs
from metasparsity.training.session import sub_run
from metasparsity.utils.errors import UserError
from metasparsity.utils.io import atomic_write_text, write_json
from metasparsity.utils.rundir import (
    config_restored_on_refusal,
    config_text,
    create_run_dir,
    update_run_config,
)


def lam_label(lam: float) -> str:
    return "dense" if lam == 0 else f"{lam:g}"


def sub_run_config(cfg: Config, lam: float, seed: int | None = None) -> Config:
    """The config a sub-run of :func:`train_or_load` trains with, and records in its
    ``config.yaml`` (a later ``train --resume`` of the sub-run rebuilds it from there): the
    sweep's or comparison's, at ``lam`` (and ``seed``)."""
    cfg = cfg.copy()
    cfg.sparsity.lam = lam
    if seed is not None:
        cfg.train.seed = seed
    return cfg


def train_or_load(cfg: Config, run_dir: Path, lam: float, kind: str, tasks: list[str] | None = None,
                  seed: int | None = None, note_reuse: bool = True) -> dict[str, Any]:
    """Train one fixed-λ (or dense) model into ``run_dir`` as a sub-run of a sweep or comparison:
    reused when it finished, continued when it was started (:func:`sub_run`, whose note on a
    run of other code ``note_reuse`` keeps), so the whole sweep / comparison can be resumed."""
    done, resume = sub_run(run_dir, note=note_reuse)
    if done is not None:
        return done
    cfg = sub_run_config(cfg, lam, seed)
    s = settings_from_config(cfg, tasks)
    s.kind = kind
    return run_recipe(Trainer(cfg, run_dir, s, resume=resume, overwrite=not resume))


def primary_columns(spec: dict[str, dict[str, bool]]) -> list[tuple[str, str]]:
    return [(t, m) for t, ms in spec.items() for m in ms]


def _delta(results: dict, baseline: dict, spec: dict) -> float | None:
    """Δm over ``spec`` (already without the metrics whose baseline is 0); None when none is left."""
    return delta_m(results, baseline, spec) if spec else None


def run_sweep(cfg: Config, out_dir: str | Path, grid: Sequence[float], *, resume: bool = False,
              overwrite: bool = False) -> dict[str, Any]:
    out = Path(out_dir)
    grid = [float(g) for g in grid]
    refuse_train_budget(cfg, "sweep-lambda", "it trains one fixed λ per grid point")
    if not grid or any(g <= 0 for g in grid):
        raise UserError(f"--grid: give positive λ values, got {grid}")
    tasks = resolve_tasks(cfg, cfg.train_tasks)
    spec = default_spec({t: task.type for t, task in tasks.items()})
    collectives.init_distributed(cfg.train.device)  # every rank has checked its arguments
    before = None  # the config.yaml this invocation rewrote, put back if a sub-run refuses
    if collectives.is_main():
        if resume:
            check_finished_sub_runs(out)  # before config.yaml changes
            before = config_text(out)
            update_run_config(out, cfg.to_yaml())
        else:
            create_run_dir(out, cfg.to_yaml(), overwrite=overwrite, layout="sweep")
    with config_restored_on_refusal(out, before):
        dense = train_or_load(cfg, out / "dense_mtl", 0.0, "mtl")
        trained = [(lam, train_or_load(cfg, out / f"lam_{lam:g}", lam, "fixed_lambda"))
                   for lam in grid]
    # Δm is undefined over a metric whose dense baseline is 0 (e.g. an F1 of a degenerate dense
    # model): left out, per split, and named in sweep.json / sweep.md, as compare does
    spec_test, left_out_test = usable_spec(spec, dense["test"])
    spec_val, left_out_val = usable_spec(spec, dense["val"])
    rows = []
    for lam, res in trained:
        rows.append({
            "label": lam_label(lam), "lam": lam, "run_dir": str(out / f"lam_{lam:g}"),
            "test": res["test"], "val": res["val"],
            "delta_m": _delta(res["test"], dense["test"], spec_test),
            "val_delta_m": _delta(res["val"], dense["val"], spec_val),
            "group_sparsity": res["sparsity"]["group_sparsity"],
            "param_sparsity": res["sparsity"]["param_sparsity"],
            "wall_time_s": res.get("wall_time_s", res.get("train_time_s")),
            "per_layer": res["sparsity"]["per_layer"],
        })
    # chosen on validation Δm; with no usable validation metric, the first grid point
    best = max(range(len(rows)), key=lambda i: (rows[i]["val_delta_m"] is not None,
                                                rows[i]["val_delta_m"] or 0.0, -i))
    summary = {
        "grid": grid, "spec": spec, "selected": rows[best]["lam"],
        "left_out": {"test": left_out_test, "val": left_out_val},
        "dense": {"test": dense["test"], "val": dense["val"],
                  "wall_time_s": dense.get("wall_time_s", dense.get("train_time_s"))},
        "rows": rows,
        "total_wall_time_s": sum(r["wall_time_s"] or 0 for r in rows),
    }
    if collectives.is_main():
        write_json(out / "sweep.json", summary)
        atomic_write_text(out / "sweep.md", sweep_markdown(summary))
        from metasparsity.report.plots import plot_delta_vs_sparsity, plot_per_layer_sparsity

        plot_delta_vs_sparsity([r for r in rows if r["delta_m"] is not None],
                               out / "delta_vs_sparsity.png",
                               title="fixed-λ sweep: Δm against dense MTL vs sparsity")
        plot_per_layer_sparsity({f"λ={r['label']}": r["per_layer"] for r in rows},
                                out / "per_layer_sparsity.png",
                                title="per-layer group sparsity per λ")
    collectives.barrier()  # the command prints sweep.md on every rank
    return summary


def sweep_markdown(summary: dict[str, Any]) -> str:
    cols = primary_columns(summary["spec"])
    header = ["λ"] + [f"{t} {m}" for t, m in cols] + ["Δm % (test)", "Δm % (val)", "group sp. %",
                                                      "param sp. %", "time s"]
    rows = [["dense MTL"] + [summary["dense"]["test"][t][m] for t, m in cols]
            + [0.0, 0.0, 0.0, 0.0, summary["dense"]["wall_time_s"]]]
    for r in summary["rows"]:
        mark = " ←" if r["lam"] == summary["selected"] else ""
        rows.append([r["label"] + mark] + [r["test"][t][m] for t, m in cols]
                    + [r["delta_m"], r["val_delta_m"], 100 * r["group_sparsity"],
                       100 * r["param_sparsity"], r["wall_time_s"]])
    text = ("Fixed-λ group-sparse MTL. Δm against dense MTL over the metrics: "
            + ", ".join(f"{t}.{m}" for t, m in cols)
            + ". ← = grid point chosen on validation Δm.\n\n")
    left_out = summary.get("left_out", {})
    test, val = left_out.get("test", []), left_out.get("val", [])
    names = [f"{m} ({'test, val' if m in test and m in val else 'test' if m in test else 'val'})"
             for m in dict.fromkeys(test + val)]
    if names:
        text += ("Left out of Δm because the dense-MTL baseline is 0 or undefined: "
                 + ", ".join(names) + ".\n\n")
    return text + markdown_table(header, rows) + "\n"
