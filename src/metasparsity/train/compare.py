"""Recipe: every method under one protocol, budget and data split (DESIGN §5).

For each seed:

* ``stl``: one dense single-task model per task (seen and unseen), ``train.max_steps`` each —
  the baseline of Δm;
* ``mtl``: dense multi-task on the seen tasks;
* ``fixed_lambda``: fixed-λ group-sparse MTL for every λ of ``compare.lambda_grid``; the grid
  point with the best validation Δm is kept, and its cost includes the whole grid;
* ``optuna``: λ tuned by Optuna's TPE sampler over ``[min grid, max grid]`` (log scale),
  ``compare.optuna_trials`` trials with the same per-trial budget;
* ``meta_dense``: meta-training with λ = 0, then fine-tuning on the seen tasks together;
* ``meta_sparsity``: meta-training with learned λ, then fine-tuning on the seen tasks together.

Seen-task metrics come from the method's final model; unseen-task metrics from fine-tuning that
model's backbone on the unseen tasks with fresh heads (``finetune.*`` budget, zero groups kept).
Δm is computed on the test split against STL over the primary metrics of each task (the spec is
saved with the results).  Sparsity, parameters and MACs after physical pruning, and wall time
(tuning included) are reported beside.

Under torchrun every training is distributed (data parallel, or meta-batch parallel); rank 0
decides which sub-runs are finished or to be resumed, measures the pruned cost and writes every
file, and the others receive what it decided (:func:`metasparsity.train.distributed.from_main`).
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from metasparsity.config import Config
from metasparsity.data import resolve_tasks
from metasparsity.eval.delta import default_spec, delta_m, usable_spec
from metasparsity.train import distributed as ddp
from metasparsity.train.checkpoint import has_checkpoints
from metasparsity.train.finetune import run_finetune
from metasparsity.train.metatrain import MetaTrainer
from metasparsity.train.sweep import train_or_load
from metasparsity.utils.errors import UserError
from metasparsity.utils.io import read_json, write_json
from metasparsity.utils.registry import Registry
from metasparsity.utils.rundir import create_run_dir

RESULTS = "results.json"


@dataclass
class Context:
    cfg: Config
    out: Path
    seed: int
    stl: dict[str, Any]  # STL results (val/test per task), filled first
    spec_seen: dict
    spec_unseen: dict
    plan: ComputePlan
    grid_costs: list[dict[str, float]] = field(default_factory=list)  # the fixed-λ grid's

    @property
    def seen(self) -> list[str]:
        return list(self.cfg.data.seen_tasks)

    @property
    def unseen(self) -> list[str]:
        return list(self.cfg.data.unseen_tasks)

    def dir(self, *parts: str) -> Path:
        return self.out / f"seed_{self.seed}" / Path(*parts)


@dataclass(frozen=True)
class ComputePlan:
    """Every method's training compute, in batch forward-backward passes (DESIGN §5).

    One training step is one pass; one meta-step with ``M`` subsets and ``K`` inner steps is
    ``M·(K+1)`` passes (each subset: K support passes and one query pass).  Every method gets
    ``budget`` passes for the model it deploys: MTL, STL (per task) and each fixed-λ grid point
    or Optuna trial train ``budget`` steps; meta-training gets the outer steps that fit beside its
    seen-task fine-tuning.  Passes are weighed by their batch size, in units of a training batch
    (``train.batch_size``), so that ``meta.batch_size`` or ``finetune.batch_size`` different from
    it does not buy or lose compute:
    ``meta_steps·M·(K+1)·meta.batch_size + finetune_steps·finetune.batch_size ≤ budget·train.batch_size``.
    Tuning is counted on top (a grid of n points costs n budgets).  Evaluation (forward only),
    BatchNorm re-estimation and the unseen-task fine-tuning (the same for every method) are not
    counted; a ``second_order`` query backward, which costs about twice a plain one, counts as one.
    """

    budget: int
    meta_steps: int
    passes_per_meta_step: int
    finetune_steps: int
    batch_size: int = 1
    meta_batch_size: int = 1
    finetune_batch_size: int = 1
    lambda_passes_per_meta_step: int = 0  # included above; absent when λ is not meta-learned

    def meta_passes_of(self, learns_lambda: bool) -> float:
        """:attr:`meta_passes` of a method that does (not) run the λ-validation passes."""
        if learns_lambda:
            return self.meta_passes
        saved = self.meta_steps * self.lambda_passes_per_meta_step * self.meta_batch_size
        return self.meta_passes - saved / self.batch_size

    @property
    def meta_passes(self) -> float:
        """Meta-training plus its seen-task fine-tuning, in training-batch passes."""
        samples = (self.meta_steps * self.passes_per_meta_step * self.meta_batch_size
                   + self.finetune_steps * self.finetune_batch_size)
        return samples / self.batch_size


def compute_plan(cfg: Config, *, need_meta: bool = True) -> ComputePlan:
    """The equal-compute plan of ``cfg`` (``compare.budget``, else ``train.max_steps`` passes)."""
    from metasparsity.train.finetune import finetune_settings

    budget = cfg.compare.budget or cfg.train.max_steps
    m = cfg.meta
    # the λ-validation pass of each subset (held-out objective, λ meta-learned): counted for
    # every meta method, so that all of them take the same number of meta-steps
    lam_passes = m.meta_batch if (m.lambda_objective == "heldout" and m.learn_lambda) else 0
    per_step = m.meta_batch * (m.inner_steps + 1) + lam_passes
    n_train = None
    if cfg.finetune.epochs is not None:
        from metasparsity.data import build_dataset

        n_train = len(build_dataset(cfg, "train"))
    ft = finetune_settings(cfg, cfg.data.seen_tasks, n_train).max_steps
    bs, bs_meta, bs_ft = cfg.train.batch_size, m.batch_size, cfg.finetune.batch_size
    meta_steps = (budget * bs - ft * bs_ft) // (per_step * bs_meta)
    if need_meta and meta_steps < 1:
        raise UserError(
            f"compare: a budget of {budget} passes (batch {bs}) leaves no meta-step: fine-tuning "
            f"takes {ft} passes at batch {bs_ft} and one meta-step {per_step} "
            f"(meta.meta_batch × (meta.inner_steps + 1), + meta.meta_batch λ-validation passes "
            f"with lambda_objective=heldout) at batch {bs_meta}; raise "
            "compare.budget (or train.max_steps) or lower finetune.steps")
    return ComputePlan(budget=budget, meta_steps=max(meta_steps, 0), passes_per_meta_step=per_step,
                       finetune_steps=ft, batch_size=bs, meta_batch_size=bs_meta,
                       finetune_batch_size=bs_ft, lambda_passes_per_meta_step=lam_passes)


MethodFn = Callable[[Context], dict[str, Any]]
METHODS: Registry[MethodFn] = Registry("comparison method")


def _timed(fn: Callable[[], dict[str, Any]]) -> tuple[dict[str, Any], float]:
    t0 = time.time()
    res = fn()
    return res, res.get("wall_time_s") or (time.time() - t0)


def _finetune(ctx: Context, source: Path, tasks: list[str], name: str) -> tuple[dict, float]:
    out = source / name
    done = ddp.from_main(lambda: read_json(out / RESULTS) if (out / RESULTS).is_file() else None)
    if done is not None:
        return done, done.get("wall_time_s", done.get("train_time_s", 0.0))
    resume = ddp.from_main(lambda: has_checkpoints(out))
    t0 = time.time()
    cfg = ctx.cfg.copy()
    cfg.train.seed = ctx.seed
    res = run_finetune(source, tasks, out, cfg=cfg, resume=resume, overwrite=not resume)
    res["wall_time_s"] = round(time.time() - t0, 2)
    if ddp.is_main():
        write_json(out / RESULTS, res)
    return res, res["wall_time_s"]


def _unseen(ctx: Context, source: Path) -> tuple[dict, float]:
    if not ctx.unseen:
        return {"test": {}, "val": {}}, 0.0
    return _finetune(ctx, source, ctx.unseen, "finetune_unseen")


def _val_delta(ctx: Context, res: dict) -> float:
    spec, _ = usable_spec(ctx.spec_seen, ctx.stl["val"])
    return delta_m(res["val"], ctx.stl["val"], spec)


def _row(source: Path, seen: dict, unseen: dict, wall: float, extra: dict | None = None) -> dict:
    return {"run_dir": str(source), "seen": {"val": seen["val"], "test": seen["test"]},
            "unseen": {"val": unseen.get("val", {}), "test": unseen.get("test", {})},
            "sparsity": seen["sparsity"], "wall_time_s": round(wall, 2), **(extra or {})}


@METHODS.register("stl")
def method_stl(ctx: Context) -> dict[str, Any]:
    val, test, wall, per = {}, {}, 0.0, {}
    sp = None
    for task in ctx.seen + ctx.unseen:
        res, w = _timed(lambda task=task: train_or_load(ctx.cfg, ctx.dir("stl", task), 0.0, "stl",
                                                        [task], seed=ctx.seed))
        val[task], test[task] = res["val"][task], res["test"][task]
        wall += w
        per[task] = str(ctx.dir("stl", task))
        sp = sp or res["sparsity"]
    ctx.stl.update({"val": val, "test": test})
    seen = {"val": {t: val[t] for t in ctx.seen}, "test": {t: test[t] for t in ctx.seen}, "sparsity": sp}
    unseen = {"val": {t: val[t] for t in ctx.unseen}, "test": {t: test[t] for t in ctx.unseen}}
    n_seen = len(ctx.seen)
    return _row(ctx.dir("stl"), seen, unseen, wall, {
        "runs": per, "models": len(per), "passes": ctx.plan.budget * n_seen,
        "passes_total": ctx.plan.budget * n_seen})


@METHODS.register("mtl")
def method_mtl(ctx: Context) -> dict[str, Any]:
    src = ctx.dir("mtl")
    seen, w1 = _timed(lambda: train_or_load(ctx.cfg, src, 0.0, "mtl", ctx.seen, seed=ctx.seed))
    unseen, w2 = _unseen(ctx, src)
    return _row(src, seen, unseen, w1 + w2,
                {"passes": ctx.plan.budget, "passes_total": ctx.plan.budget})


def _fixed(ctx: Context, lam: float, name: str) -> tuple[dict, float, Path]:
    d = ctx.dir(name, f"lam_{lam:g}")
    res, w = _timed(lambda: train_or_load(ctx.cfg, d, lam, "fixed_lambda", ctx.seen, seed=ctx.seed))
    return res, w, d


@METHODS.register("fixed_lambda")
def method_fixed_lambda(ctx: Context) -> dict[str, Any]:
    grid = list(ctx.cfg.compare.lambda_grid)
    if not grid:
        raise UserError("compare.lambda_grid is empty but method fixed_lambda was asked for")
    points, wall = [], 0.0
    for lam in grid:
        res, w, d = _fixed(ctx, lam, "fixed_lambda")
        wall += w
        points.append({"lam": lam, "run_dir": str(d), "val_delta_m": _val_delta(ctx, res),
                       "test": res["test"], "group_sparsity": res["sparsity"]["group_sparsity"],
                       "param_sparsity": res["sparsity"]["param_sparsity"], "wall_time_s": w,
                       "_res": res})
    best = max(points, key=lambda p: p["val_delta_m"])
    unseen, w2 = _unseen(ctx, Path(best["run_dir"]))
    seen = best["_res"]
    for p in points:
        p.pop("_res")
        p["backbone_cost"] = ddp.from_main(lambda p=p: backbone_cost(p["run_dir"],
                                                                     ctx.cfg.data.image_size))
    ctx.grid_costs = [p["backbone_cost"] for p in points]
    return _row(Path(best["run_dir"]), seen, unseen, wall + w2,
                {"selected_lambda": best["lam"], "grid": points, "models": len(grid),
                 "passes": ctx.plan.budget, "passes_total": ctx.plan.budget * len(grid)})


@METHODS.register("optuna")
def method_optuna(ctx: Context) -> dict[str, Any]:
    n = ctx.cfg.compare.optuna_trials
    if n <= 0:
        raise UserError("method optuna needs compare.optuna_trials > 0")
    try:
        import optuna
    except ImportError:  # pragma: no cover - optuna is a dependency
        raise UserError("method optuna needs the optuna package (pip install optuna)") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    grid = list(ctx.cfg.compare.lambda_grid) or [1e-4, 1e-2]
    lo, hi = min(grid), max(grid)
    trials: list[dict] = []

    def objective(trial) -> float:
        lam = trial.suggest_float("lam", lo, hi, log=True)
        res, w, d = _fixed(ctx, lam, "optuna")
        trials.append({"lam": lam, "run_dir": str(d), "val_delta_m": _val_delta(ctx, res),
                       "group_sparsity": res["sparsity"]["group_sparsity"], "wall_time_s": w,
                       "_res": res})
        return trials[-1]["val_delta_m"]

    study = optuna.create_study(direction="maximize",
                                sampler=optuna.samplers.TPESampler(seed=ctx.seed))
    study.optimize(objective, n_trials=n)
    best = max(trials, key=lambda p: p["val_delta_m"])
    unseen, w2 = _unseen(ctx, Path(best["run_dir"]))
    seen = best["_res"]
    for p in trials:
        p.pop("_res")
    return _row(Path(best["run_dir"]), seen, unseen, sum(t["wall_time_s"] for t in trials) + w2,
                {"selected_lambda": best["lam"], "trials": trials, "models": n,
                 "passes": ctx.plan.budget, "passes_total": ctx.plan.budget * n})


_KEEP = object()  # _meta: keep the config's meta.target


def _meta(ctx: Context, name: str, lambda_init: float | None,
          target: float | None | object = _KEEP) -> dict[str, Any]:
    cfg = ctx.cfg.copy()
    cfg.train.seed = ctx.seed
    cfg.meta.steps = ctx.plan.meta_steps  # equal compute (run_compare wrote it in config.yaml)
    if lambda_init is not None:
        cfg.meta.lambda_init = lambda_init
    if target is not _KEEP:
        cfg.meta.target = target
    src = ctx.dir(name)
    t0 = time.time()
    meta_res = ddp.from_main(lambda: read_json(src / RESULTS) if (src / RESULTS).is_file() else None)
    if meta_res is None:
        resume = ddp.from_main(lambda: has_checkpoints(src))
        tr = MetaTrainer(cfg, src, resume=resume, overwrite=not resume,
                         kind=name.split("/")[0])
        tr.setup()
        meta_res = tr.train()
        meta_res["wall_time_s"] = round(time.time() - t0, 2)
        if ddp.is_main():
            write_json(src / RESULTS, meta_res)
    w0 = meta_res.get("wall_time_s", meta_res.get("train_time_s", 0.0))
    seen, w1 = _finetune(ctx, src, ctx.seen, "finetune_seen")
    unseen, w2 = _unseen(ctx, src)
    lam = meta_res["lambda_final"]
    passes = ctx.plan.meta_passes_of(bool(meta_res.get("lambda_objective") == "heldout"))
    return _row(src / "finetune_seen", seen, unseen, w0 + w1 + w2,
                {"meta_run_dir": str(src), "lambda_init": meta_res["lambda_init"],
                 "lambda_final": lam, "meta_sparsity": meta_res["sparsity"]["group_sparsity"],
                 "meta_steps": meta_res.get("steps"), "passes": passes,
                 "passes_total": passes, "budget": meta_res.get("budget")})


@METHODS.register("meta_dense")
def method_meta_dense(ctx: Context) -> dict[str, Any]:
    return _meta(ctx, "meta_dense", 0.0, target=None)


@METHODS.register("meta_sparsity")
def method_meta_sparsity(ctx: Context) -> dict[str, Any]:
    return _meta(ctx, "meta_sparsity", None)


def budget_targets(ctx: Context) -> list[float]:
    """Budget mode's targets: the backbone cost (``meta.target_measure``) of every fixed-λ grid
    model of this seed when the grid ran first, else ``meta.target``."""
    measure = ctx.cfg.meta.target_measure
    if ctx.grid_costs:
        return [c[measure] for c in ctx.grid_costs]
    if ctx.cfg.meta.target is None:
        raise UserError("compare: method meta_budget needs fixed_lambda before it in "
                        "compare.methods (its targets are the grid's costs) or meta.target")
    return [ctx.cfg.meta.target]


@METHODS.register("meta_budget")
def method_meta_budget(ctx: Context) -> dict[str, Any]:
    """Budget mode at the fixed-λ grid's backbone costs (matched sparsity), chosen on val."""
    points, wall = [], 0.0
    for target in budget_targets(ctx):
        row = _meta(ctx, f"meta_budget/target_{target:.4f}", None, target=target)
        res = {"val": row["seen"]["val"]}
        wall += row["wall_time_s"]
        points.append({**row, "target": target, "val_delta_m": _val_delta(ctx, res),
                       "param_sparsity": row["sparsity"]["param_sparsity"],
                       "group_sparsity": row["sparsity"]["group_sparsity"]})
    best = max(points, key=lambda p: p["val_delta_m"])
    keep = ("target", "run_dir", "meta_run_dir", "val_delta_m", "test", "param_sparsity",
            "group_sparsity", "lambda_final", "budget", "wall_time_s")
    grid = [{k: (p["seen"]["test"] if k == "test" else p.get(k)) for k in keep} for p in points]
    return {**best, "wall_time_s": round(wall, 2), "selected_target": best["target"],
            "grid": grid, "models": len(points),
            "passes_total": sum(p["passes"] for p in points)}


# ----------------------------------------------------------------------------- cost after pruning


def pruned_cost(run_dir: str | Path, image_size: int) -> dict[str, Any]:
    """Parameters and MACs of a run's best model, dense and after removing its zero channels."""
    from metasparsity.eval.cost import count_macs, count_parameters
    from metasparsity.sparsity import prune_zero_channels
    from metasparsity.train.evaluate import load_run_model

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
    from metasparsity.sparsity import BackboneCost, channel_groups
    from metasparsity.train.evaluate import load_run_model

    _, model, _ = load_run_model(run_dir)
    x = torch.zeros(1, 3, image_size, image_size)
    return BackboneCost(model, x, channel_groups(model)).summary(model)


# ----------------------------------------------------------------------------- driver


def _mean_std(values: list[float]) -> dict[str, float]:
    vals = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not vals:
        return {"mean": float("nan"), "std": float("nan")}
    return {"mean": statistics.fmean(vals), "std": statistics.stdev(vals) if len(vals) > 1 else 0.0}


def summarize(per_seed: dict[str, dict[str, Any]], spec_seen: dict, spec_unseen: dict,
              stl_by_seed: dict[str, Any]) -> dict[str, Any]:
    """Δm per method and seed (test split, against that seed's STL), then mean ± std."""
    methods: dict[str, Any] = {}
    for seed, rows in per_seed.items():
        stl = stl_by_seed[seed]
        s_seen, drop_seen = usable_spec(spec_seen, stl["test"])
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
            return _mean_std([f(r) for r in rows])

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
        p = {"lam": lam, "param_sparsity": _mean_std(xs), "delta_m": _mean_std(ys)}
        if all(math.isfinite(p[k]["mean"]) for k in ("param_sparsity", "delta_m")):
            pts.append(p)
    for p in pts:
        x, y = p["param_sparsity"]["mean"], p["delta_m"]["mean"]
        p["front"] = not any(q is not p and q["param_sparsity"]["mean"] >= x and q["delta_m"]["mean"] >= y
                             and (q["param_sparsity"]["mean"] > x or q["delta_m"]["mean"] > y)
                             for q in pts)
    return pts


def gap_to_front(front: list[dict[str, Any]], param_sparsity: float, delta: float) -> float | None:
    """``delta`` minus the front's Δm linearly interpolated at ``param_sparsity`` (%); None
    outside the front's range (nothing to compare with).  With dense MTL in the comparison the
    front starts at 0 % (λ = 0)."""
    pts = sorted((p["param_sparsity"]["mean"], p["delta_m"]["mean"]) for p in front if p["front"])
    if not pts or not pts[0][0] - 1e-9 <= param_sparsity <= pts[-1][0] + 1e-9:
        return None
    if param_sparsity <= pts[0][0]:
        return delta - pts[0][1]
    for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
        if x0 <= param_sparsity <= x1:
            t = 0.0 if x1 == x0 else (param_sparsity - x0) / (x1 - x0)
            return delta - (y0 + t * (y1 - y0))
    return None  # pragma: no cover - the cases above cover the range


def _lam_scalar(v) -> float:
    return float(sum(v) / len(v)) if isinstance(v, list) else float(v)


def run_compare(cfg: Config, out_dir: str | Path, *, resume: bool = False, overwrite: bool = False,
                progress: Callable[[str], None] = print) -> dict[str, Any]:
    out = Path(out_dir)
    methods = list(cfg.compare.methods)
    for m in methods:
        METHODS.get(m)  # unknown names fail before anything is written
    if "stl" not in methods:
        methods = ["stl"] + methods  # Δm needs the single-task baselines
    methods = ["stl"] + [m for m in methods if m != "stl"]
    if "optuna" in methods and cfg.compare.optuna_trials <= 0:
        raise UserError("compare.methods has optuna but compare.optuna_trials is 0")
    if "meta_budget" in methods and cfg.meta.target is None and (
            "fixed_lambda" not in methods or methods.index("fixed_lambda") > methods.index("meta_budget")):
        raise UserError("compare.methods has meta_budget but nothing sets its targets: put "
                        "fixed_lambda before it (budget mode at the grid's costs) or set meta.target")
    if "meta_sparsity" in methods and cfg.meta.lambda_init == 0:
        raise UserError("compare.methods has meta_sparsity but meta.lambda_init is 0 (meta-learning "
                        "without sparsity is the method meta_dense); use auto or a number > 0")
    tasks = resolve_tasks(cfg, list(cfg.data.seen_tasks) + list(cfg.data.unseen_tasks))
    types = {t: task.type for t, task in tasks.items()}
    spec_seen = default_spec({t: types[t] for t in cfg.data.seen_tasks})
    spec_unseen = default_spec({t: types[t] for t in cfg.data.unseen_tasks}) if cfg.data.unseen_tasks else {}
    plan = compute_plan(cfg, need_meta=any(m.startswith("meta") for m in methods))
    cfg = cfg.copy()  # the equal-compute budget, written into config.yaml as it is used
    cfg.train.max_steps = plan.budget
    if plan.meta_steps >= 1:
        cfg.meta.steps = plan.meta_steps
    progress(f"[compare] equal compute: {plan.budget} batch passes per method "
             f"(training: {plan.budget} steps; meta-training: {plan.meta_steps} steps × "
             f"{plan.passes_per_meta_step} passes + {plan.finetune_steps} fine-tuning steps); "
             "tuning on top")
    ddp.init_distributed(cfg.train.device)  # every rank has checked its arguments
    if not resume and ddp.is_main():
        create_run_dir(out, cfg.to_yaml(), overwrite=overwrite)
    t_start = time.time()
    per_seed: dict[str, dict[str, Any]] = {}
    stl_by_seed: dict[str, Any] = {}
    for seed in cfg.compare.seeds:
        ctx = Context(cfg, out, seed, {}, spec_seen, spec_unseen, plan)
        rows: dict[str, Any] = {}
        for name in methods:
            progress(f"[compare] seed {seed}: {name}")
            row = METHODS.get(name)(ctx)
            row["cost"] = ddp.from_main(lambda row=row: _row_cost(row, cfg.data.image_size))
            rows[name] = row
        per_seed[str(seed)] = rows
        stl_by_seed[str(seed)] = dict(ctx.stl)
    summary = summarize(per_seed, spec_seen, spec_unseen, stl_by_seed)
    front = fixed_lambda_front(per_seed)
    results = {
        "config": cfg.to_dict(),
        "methods": methods,
        "seeds": list(cfg.compare.seeds),
        "seen_tasks": list(cfg.data.seen_tasks),
        "unseen_tasks": list(cfg.data.unseen_tasks),
        "spec": {"seen": spec_seen, "unseen": spec_unseen},
        "summary": summary,
        "fixed_lambda_front": front,
        "per_seed": per_seed,
        "total_wall_time_s": round(time.time() - t_start, 1),
        "compute": {"budget_passes": plan.budget, "meta_steps": plan.meta_steps,
                    "passes_per_meta_step": plan.passes_per_meta_step,
                    "lambda_passes_per_meta_step": plan.lambda_passes_per_meta_step,
                    "finetune_steps": plan.finetune_steps, "batch_size": plan.batch_size,
                    "meta_batch_size": plan.meta_batch_size,
                    "finetune_batch_size": plan.finetune_batch_size},
    }
    if ddp.is_main():
        write_json(out / RESULTS, results)
        save_samples(out, results, cfg)
        from metasparsity.report.compare import write_report

        write_report(out, results)
    ddp.barrier()
    return results


def _row_cost(row: dict, image_size: int) -> dict[str, Any]:
    """Cost of what the method deploys for the seen tasks (STL: all its seen-task models)."""
    if row.get("runs"):
        costs = [pruned_cost(d, image_size) for t, d in row["runs"].items() if t in row["seen"]["test"]]
        return {k: sum(c[k] for c in costs) for k in costs[0]}
    return pruned_cost(row["run_dir"], image_size)


def save_samples(out: Path, results: dict[str, Any], cfg: Config, n: int = 4) -> Path | None:
    """Predictions of the main method on ``n`` test images, for the report's sample figure."""
    import numpy as np

    from metasparsity.data import build_dataset
    from metasparsity.train.evaluate import load_run_model

    seed = str(results["seeds"][0])
    rows = results["per_seed"][seed]
    name = next((m for m in ("meta_sparsity", "fixed_lambda", "mtl") if m in rows), None)
    if name is None:
        return None
    row = rows[name]
    sources = [row["run_dir"]]
    if row["unseen"]["test"]:
        sources.append(str(Path(row["run_dir"]).parent / "finetune_unseen")
                       if name.startswith("meta") else str(Path(row["run_dir"]) / "finetune_unseen"))
    test = build_dataset(cfg, "test")
    n = min(n, len(test))
    xs, ys = zip(*[test[i] for i in range(n)])
    x = torch.stack(xs)
    arrays: dict[str, Any] = {}
    img = x.permute(0, 2, 3, 1).numpy()
    lo = img.min(axis=(1, 2, 3), keepdims=True)
    hi = img.max(axis=(1, 2, 3), keepdims=True)
    arrays["image"] = (img - lo) / np.maximum(hi - lo, 1e-8)
    tasks, types = [], []
    for src in sources:
        if not Path(src, "config.yaml").is_file():
            continue
        _, model, _ = load_run_model(src)
        model.eval()
        task_objs = resolve_tasks(cfg, [t for t in model.tasks if t in cfg.data.tasks])
        dense = [t for t, task in task_objs.items() if task.kind == "dense" and t not in tasks]
        with torch.no_grad():
            out_ = model(x, tasks=dense) if dense else {}
        for t in dense:
            task = task_objs[t]
            pred = task.predict(out_[t])
            gt = torch.stack([y[t] for y in ys])
            if task.type == "normal":
                pred, gt = pred.permute(0, 2, 3, 1), gt.permute(0, 2, 3, 1)
            elif pred.dim() == 4:
                pred, gt = pred[:, 0], gt[:, 0]
            arrays[f"pred_{t}"] = pred.numpy()
            arrays[f"gt_{t}"] = gt.numpy()
            tasks.append(t)
            types.append(task.type)
    if not tasks:
        return None
    arrays["tasks"] = np.array(tasks)
    arrays["types"] = np.array(types)
    path = out / "samples.npz"
    np.savez_compressed(path, **arrays)
    return path
