"""Recipe: the fixed-λ baseline over a λ grid (the hand-tuning that meta-sparsity replaces).

Trains dense MTL (λ = 0) once and one fixed-λ group-sparse MTL model per grid point, under the
same budget; reports per-task test metrics, Δm against dense MTL, group / parameter sparsity and
wall time, picks the grid point with the best *validation* Δm, and plots Δm against sparsity
with the grid's Pareto front.

Under torchrun every sub-run is data parallel; rank 0 decides which sub-runs are finished or
to be resumed (:func:`metasparsity.train.distributed.from_main`) and writes every file.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from metasparsity.config import Config
from metasparsity.data import resolve_tasks
from metasparsity.eval.delta import default_spec, delta_m
from metasparsity.recipes.train import Trainer, settings_from_config
from metasparsity.report.tables import markdown_table
from metasparsity.training import collectives as ddp
from metasparsity.training.run_checkpoints import has_checkpoints
from metasparsity.utils.errors import UserError
from metasparsity.utils.io import atomic_write_text, read_json, write_json
from metasparsity.utils.rundir import create_run_dir, is_run_dir, update_run_config


def lam_label(lam: float) -> str:
    return "dense" if lam == 0 else f"{lam:g}"


def train_or_load(cfg: Config, run_dir: Path, lam: float, kind: str, tasks: list[str] | None = None,
                  seed: int | None = None) -> dict[str, Any]:
    """Train one fixed-λ (or dense) model into ``run_dir``; reuse it when it already finished,
    continue it when it was started (so a whole sweep / comparison can be resumed: finished
    sub-runs are reused as they are, an interrupted one continues from its last checkpoint)."""
    done = ddp.from_main(lambda: read_json(run_dir / "results.json")
                         if (run_dir / "results.json").is_file() else None)
    if done is not None:
        return done
    s = settings_from_config(cfg, tasks)
    s.lam, s.kind = lam, kind
    if seed is not None:
        s.seed = seed
    # a started sub-run with a checkpoint continues from it (never restarted over it); one
    # without any checkpoint has nothing to lose and starts afresh
    resume = ddp.from_main(lambda: is_run_dir(run_dir) and has_checkpoints(run_dir))
    t0 = time.time()
    trainer = Trainer(cfg, run_dir, s, resume=resume, overwrite=not resume)
    trainer.setup()
    res = trainer.train()
    res["wall_time_s"] = round(time.time() - t0, 2)
    if ddp.is_main():
        write_json(run_dir / "results.json", res)
    return res


def primary_columns(spec: dict[str, dict[str, bool]]) -> list[tuple[str, str]]:
    return [(t, m) for t, ms in spec.items() for m in ms]


def run_sweep(cfg: Config, out_dir: str | Path, grid: Sequence[float], *, resume: bool = False,
              overwrite: bool = False) -> dict[str, Any]:
    out = Path(out_dir)
    grid = [float(g) for g in grid]
    if not grid or any(g <= 0 for g in grid):
        raise UserError(f"--grid: give positive λ values, got {grid}")
    tasks = resolve_tasks(cfg, cfg.train_tasks)
    spec = default_spec({t: task.type for t, task in tasks.items()})
    ddp.init_distributed(cfg.train.device)  # every rank has checked its arguments
    if ddp.is_main():
        if resume:
            update_run_config(out, cfg.to_yaml())
        else:
            create_run_dir(out, cfg.to_yaml(), overwrite=overwrite)
    dense = train_or_load(cfg, out / "dense_mtl", 0.0, "mtl")
    rows = []
    for lam in grid:
        res = train_or_load(cfg, out / f"lam_{lam:g}", lam, "fixed_lambda")
        rows.append({
            "label": lam_label(lam), "lam": lam, "run_dir": str(out / f"lam_{lam:g}"),
            "test": res["test"], "val": res["val"],
            "delta_m": delta_m(res["test"], dense["test"], spec),
            "val_delta_m": delta_m(res["val"], dense["val"], spec),
            "group_sparsity": res["sparsity"]["group_sparsity"],
            "param_sparsity": res["sparsity"]["param_sparsity"],
            "wall_time_s": res.get("wall_time_s", res.get("train_time_s")),
            "per_layer": res["sparsity"]["per_layer"],
        })
    best = max(range(len(rows)), key=lambda i: rows[i]["val_delta_m"])
    summary = {
        "grid": grid, "spec": spec, "selected": rows[best]["lam"],
        "dense": {"test": dense["test"], "val": dense["val"],
                  "wall_time_s": dense.get("wall_time_s", dense.get("train_time_s"))},
        "rows": rows,
        "total_wall_time_s": sum(r["wall_time_s"] or 0 for r in rows),
    }
    if ddp.is_main():
        write_json(out / "sweep.json", summary)
        atomic_write_text(out / "sweep.md", sweep_markdown(summary))
        from metasparsity.report.plots import plot_delta_vs_sparsity, plot_per_layer_sparsity

        plot_delta_vs_sparsity(rows, out / "delta_vs_sparsity.png",
                               title="fixed-λ sweep: Δm against dense MTL vs sparsity")
        plot_per_layer_sparsity({f"λ={r['label']}": r["per_layer"] for r in rows},
                                out / "per_layer_sparsity.png",
                                title="per-layer group sparsity per λ")
    ddp.barrier()  # the command prints sweep.md on every rank
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
    return ("Fixed-λ group-sparse MTL. Δm against dense MTL over the metrics: "
            + ", ".join(f"{t}.{m}" for t, m in cols)
            + ". ← = grid point chosen on validation Δm.\n\n"
            + markdown_table(header, rows) + "\n")
