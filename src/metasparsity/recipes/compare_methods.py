"""The methods ``compare`` runs, under one protocol: the equal-compute plan (:class:`ComputePlan`),
the per-seed :class:`Context`, and one function per method registered in :data:`METHODS` by name.

* ``stl``: one dense single-task model per task (seen and unseen): the baseline of Δm;
* ``mtl``: dense multi-task on the seen tasks;
* ``fixed_lambda``: fixed-λ group-sparse MTL for every λ of ``compare.lambda_grid``; the grid
  point with the best validation Δm is kept, and its cost includes the whole grid;
* ``optuna``: λ tuned by Optuna's TPE sampler over the grid's range (log scale);
* ``meta_dense`` / ``meta_sparsity``: meta-training with λ = 0 / learned λ, then fine-tuning on
  the seen tasks together; ``meta_budget``: budget mode at the grid's backbone costs;
* ``train_budget``: budget mode without meta-learning: multi-task training (``train``'s
  ``sparsity.target``) at the comparison's budget, ``meta.target`` of ``meta.target_measure``,
  the multiplier starting at ``sparsity.lam``.

Seen-task metrics come from a method's final model; unseen-task metrics from fine-tuning its
backbone on the unseen tasks with fresh heads (``finetune.*``, zero groups kept).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from metasparsity.config import Config
from metasparsity.eval.delta import delta_m, usable_spec
from metasparsity.recipes import run_recipe
from metasparsity.recipes.compare_summary import backbone_cost
from metasparsity.recipes.finetune import run_finetune
from metasparsity.recipes.meta_train import MetaTrainer
from metasparsity.recipes.sweep import train_or_load
from metasparsity.recipes.train import final_multiplier, run_train
from metasparsity.training import collectives
from metasparsity.training.session import sub_run
from metasparsity.utils.errors import UserError
from metasparsity.utils.registry import Registry


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
    ``budget`` passes for the model it deploys: MTL, STL (per task), ``train_budget`` and each
    fixed-λ grid point or Optuna trial train ``budget`` steps; meta-training gets the outer steps that fit beside its
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
    from metasparsity.recipes.finetune import finetune_settings

    budget = cfg.compare.budget or cfg.train.max_steps
    m = cfg.meta
    # the λ-validation pass of each subset (held-out objective, λ meta-learned; one more at
    # θ_{t+1} with meta.lambda_through_prox): counted for every meta method, so that all of
    # them take the same number of meta-steps
    lam_passes = (m.meta_batch * (1 + m.lambda_through_prox)
                  if (m.lambda_objective == "heldout" and m.learn_lambda) else 0)
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
            f"with lambda_objective=heldout, twice with lambda_through_prox) at batch {bs_meta}; "
            "raise "
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


def _finetune(ctx: Context, source: Path, tasks: list[str], name: str,
              cfg: Config | None = None) -> tuple[dict, float]:
    """Fine-tune ``source`` on ``tasks`` into ``source/name`` (reused / resumed) under ``cfg``,
    the config ``source`` was trained with (default: the comparison's, at this seed)."""
    out = source / name
    done, resume = sub_run(out)
    if done is not None:
        return done, done.get("wall_time_s", done.get("train_time_s", 0.0))
    if cfg is None:
        cfg = ctx.cfg.copy()
        cfg.train.seed = ctx.seed
    res = run_finetune(source, tasks, out, cfg=cfg, resume=resume, overwrite=not resume)
    return res, res["wall_time_s"]


def _unseen(ctx: Context, source: Path, cfg: Config | None = None) -> tuple[dict, float]:
    if not ctx.unseen:
        return {"test": {}, "val": {}}, 0.0
    return _finetune(ctx, source, ctx.unseen, "finetune_unseen", cfg)


def _val_delta(ctx: Context, res: dict) -> float:
    spec, _ = usable_spec(ctx.spec_seen, ctx.stl["val"],
                          needed="the seen tasks (validation split, STL), which selects λ")
    return delta_m(res["val"], ctx.stl["val"], spec)


def _row(source: Path, seen: dict, unseen: dict, wall: float, extra: dict | None = None) -> dict:
    return {"run_dir": str(source), "seen": {"val": seen["val"], "test": seen["test"],
                                             "backbone_cut": seen.get("backbone_cut")},
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
        p["backbone_cost"] = collectives.from_main(lambda p=p: backbone_cost(p["run_dir"],
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
    meta_res, resume = sub_run(src)
    if meta_res is None:
        meta_res = run_recipe(MetaTrainer(cfg, src, resume=resume, overwrite=not resume,
                                          kind=name.split("/")[0]))
    w0 = meta_res.get("wall_time_s", meta_res.get("train_time_s", 0.0))
    # fine-tuned under the config it was meta-trained with: a budget run (finetune.lam > 0)
    # keeps its own target
    seen, w1 = _finetune(ctx, src, ctx.seen, "finetune_seen", cfg)
    unseen, w2 = _unseen(ctx, src, cfg)
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


@METHODS.register("train_budget")
def method_train_budget(ctx: Context) -> dict[str, Any]:
    """Budget mode in plain multi-task training at ``meta.target`` (the budget of
    ``meta_sparsity``'s budget mode): the multiplier starts at ``sparsity.lam`` and moves by dual
    ascent towards the target ramped over ``sparsity.target_ramp`` of the steps; the last step
    lands on the target and is the model deployed (no seen-task fine-tuning: ``budget`` passes,
    as ``mtl``).  Its unseen tasks are fine-tuned under its config (``finetune.lam_unseen``)."""
    cfg = ctx.cfg.copy()
    cfg.train.seed = ctx.seed
    cfg.sparsity.target, cfg.sparsity.target_measure = cfg.meta.target, cfg.meta.target_measure
    src = ctx.dir("train_budget")
    seen, resume = sub_run(src)
    if seen is None:
        seen = run_train(cfg, src, resume=resume, overwrite=not resume, tasks=ctx.seen)
    w1 = seen.get("wall_time_s", seen.get("train_time_s", 0.0))
    unseen, w2 = _unseen(ctx, src, cfg)
    return _row(src, seen, unseen, w1 + w2,
                {"lambda_final": final_multiplier(seen["budget"]), "budget": seen["budget"],
                 "passes": ctx.plan.budget, "passes_total": ctx.plan.budget})


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
