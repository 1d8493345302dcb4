"""Recipe ``compare``: every method of ``compare.methods`` (:mod:`metasparsity.recipes.compare_methods`)
for every seed, under one protocol, budget and split (DESIGN §5); then ``results.json``, the
prediction samples and ``report.md``.  Δm is computed on the test split against STL over the
primary metrics of each task.  Under torchrun rank 0 decides which sub-runs are finished or
resumed, measures costs and writes every file.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from metasparsity.config import Config
from metasparsity.data import SPLITS, build_dataset, resolve_tasks
from metasparsity.eval.delta import default_spec
from metasparsity.recipes.compare_methods import METHODS, ComputePlan, Context, compute_plan
from metasparsity.recipes.compare_summary import fixed_lambda_front, pruned_cost, summarize
from metasparsity.recipes.train import check_multiplier_start, refuse_train_budget
from metasparsity.training import collectives
from metasparsity.training.reuse import RESULTS, check_finished_sub_runs, reused_from_other_code
from metasparsity.utils.device import resolve_device
from metasparsity.utils.errors import UserError
from metasparsity.utils.io import check_json_shape, write_json
from metasparsity.utils.provenance import code_identity, machine_identity
from metasparsity.utils.rundir import (
    config_restored_on_refusal,
    config_text,
    create_run_dir,
    update_run_config,
)


def check_compare(cfg: Config, command: str = "compare") -> tuple[list[str], ComputePlan]:
    """Every check of a comparison that needs no training, before anything is written: the
    device, the methods, their settings, the compute plan and a budget-mode target within
    reach.  Returns the methods in the order they run (STL first) and the equal-compute plan.
    ``command``: the command named in errors (``compare`` or ``demo``)."""
    resolve_device(cfg.train.device)  # a device this machine lacks
    refuse_train_budget(cfg, command, "its budget methods, meta_sparsity, meta_budget and "
                        "train_budget, take meta.target")
    methods = list(cfg.compare.methods)
    for m in methods:
        METHODS.get(m)  # unknown names fail before anything is written
    methods = ["stl"] + [m for m in methods if m != "stl"]  # Δm needs the single-task baselines
    if "optuna" in methods and cfg.compare.optuna_trials <= 0:
        raise UserError("compare.methods has optuna but compare.optuna_trials is 0")
    # meta_budget after the grid runs at the grid's costs; otherwise at meta.target
    grid_first = "fixed_lambda" in methods and "meta_budget" in methods and (
        methods.index("fixed_lambda") < methods.index("meta_budget"))
    if "meta_budget" in methods and cfg.meta.target is None and not grid_first:
        raise UserError("compare.methods has meta_budget but nothing sets its targets: put "
                        "fixed_lambda before it (budget mode at the grid's costs) or set meta.target")
    if "train_budget" in methods:
        if cfg.meta.target is None:
            raise UserError("compare.methods has train_budget but meta.target is not set: it "
                            "trains at the comparison's budget, meta.target (e.g. 0.5)")
        check_multiplier_start(cfg.sparsity.lam, "compare.methods: train_budget")
    if "meta_sparsity" in methods and cfg.meta.lambda_init == 0:
        raise UserError("compare.methods has meta_sparsity but meta.lambda_init is 0 (meta-learning "
                        "without sparsity is the method meta_dense); use auto or a number > 0")
    resolve_tasks(cfg, list(cfg.data.seen_tasks) + list(cfg.data.unseen_tasks))
    for split in SPLITS:  # a bad data config, or a bad first sample, stops here
        build_dataset(cfg, split)
    plan = compute_plan(cfg, need_meta=any(m.startswith("meta") for m in methods))
    if cfg.meta.target is not None and (
            "meta_sparsity" in methods or "train_budget" in methods
            or ("meta_budget" in methods and not grid_first)):
        _check_target(cfg, methods)
    return methods, plan


def equal_compute_config(cfg: Config, plan: ComputePlan) -> Config:
    """A copy of ``cfg`` with the equal-compute budget of ``plan``: ``train.max_steps`` and the
    derived ``meta.steps`` (what ``config.yaml`` records and the runs follow)."""
    cfg = cfg.copy()
    cfg.train.max_steps = plan.budget
    if plan.meta_steps >= 1:
        cfg.meta.steps = plan.meta_steps
    return cfg


def _check_target(cfg: Config, methods: list[str]) -> None:
    """``meta.target`` within reach of the seen-task model (as meta-training and ``train``
    check it; the cost does not depend on the pixels, so no sample is rendered or cached):
    for ``train_budget`` with ``sparsity.multiplier_on=removable``, within reach of the layers
    its multiplier moves."""
    from metasparsity.builders import build_model
    from metasparsity.sparsity import (
        BackboneCost,
        channel_groups,
        penalised_layers,
        removable_layers,
    )

    model = build_model(cfg, list(cfg.data.seen_tasks))
    x0 = torch.zeros(1, 3, cfg.data.image_size, cfg.data.image_size)
    layers = penalised_layers(model, x0, channel_groups(model), cfg.sparsity.penalize)
    cost = BackboneCost(model, x0, layers)
    cost.check_target(model, cfg.meta.target_measure, cfg.meta.target)
    if ("train_budget" in methods and cfg.sparsity.multiplier_on == "removable"
            and cfg.meta.target_measure != "groups"):
        moved = [g.group_weight > 0 for g in removable_layers(model, x0, layers)]
        cost.check_target(model, cfg.meta.target_measure, cfg.meta.target, moved=moved)


def run_compare(cfg: Config, out_dir: str | Path, *, resume: bool = False, overwrite: bool = False,
                progress: Callable[[str], None] = print,
                checked: tuple[list[str], ComputePlan] | None = None) -> dict[str, Any]:
    """``checked``: what :func:`check_compare` returned for ``cfg``, when the caller ran it
    already (the demo, before writing its run directory)."""
    out = Path(out_dir)
    methods, plan = checked if checked is not None else check_compare(cfg)
    tasks = resolve_tasks(cfg, list(cfg.data.seen_tasks) + list(cfg.data.unseen_tasks))
    types = {t: task.type for t, task in tasks.items()}
    spec_seen = default_spec({t: types[t] for t in cfg.data.seen_tasks})
    spec_unseen = default_spec({t: types[t] for t in cfg.data.unseen_tasks}) if cfg.data.unseen_tasks else {}
    cfg = equal_compute_config(cfg, plan)  # written into config.yaml as it is used
    progress(f"[compare] equal compute: {plan.budget} batch passes per method "
             f"(training: {plan.budget} steps; meta-training: {plan.meta_steps} steps × "
             f"{plan.passes_per_meta_step} passes + {plan.finetune_steps} fine-tuning steps); "
             "tuning on top")
    collectives.init_distributed(cfg.train.device)  # every rank has checked its arguments
    before = None  # the config.yaml this invocation rewrote, put back if a sub-run refuses
    if collectives.is_main():
        if resume:  # a continued run's config.yaml is the config its new runs follow
            check_finished_sub_runs(out)  # before config.yaml changes
            before = config_text(out)
            changed = update_run_config(out, cfg.to_yaml())
            if changed:
                progress("[compare] config.yaml updated: " + ", ".join(
                    f"{k} {old!r} -> {new!r}" for k, (old, new) in changed.items())
                    + " (finished runs are reused as they are)")
        else:
            create_run_dir(out, cfg.to_yaml(), overwrite=overwrite, layout="compare")
    t_start = time.time()
    per_seed: dict[str, dict[str, Any]] = {}
    stl_by_seed: dict[str, Any] = {}
    with config_restored_on_refusal(out, before):
        for seed in cfg.compare.seeds:
            ctx = Context(cfg, out, seed, {}, spec_seen, spec_unseen, plan)
            rows: dict[str, Any] = {}
            for name in methods:
                progress(f"[compare] seed {seed}: {name}")
                row = check_method_row(name, METHODS.get(name)(ctx), ctx)
                row["cost"] = collectives.from_main(
                    lambda row=row: _row_cost(row, cfg.data.image_size))
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
        "code": code_identity(),
        "machine": machine_identity(),
        # sub-runs reused or continued from other code (training.reuse), by code
        "runs_from_other_code": collectives.from_main(lambda: reused_from_other_code(
            sorted(str(p.parent.relative_to(out)) for p in out.rglob(RESULTS)
                   if p.parent != out), root=out)),
        "compute": {"budget_passes": plan.budget, "meta_steps": plan.meta_steps,
                    "passes_per_meta_step": plan.passes_per_meta_step,
                    "lambda_passes_per_meta_step": plan.lambda_passes_per_meta_step,
                    "finetune_steps": plan.finetune_steps, "batch_size": plan.batch_size,
                    "meta_batch_size": plan.meta_batch_size,
                    "finetune_batch_size": plan.finetune_batch_size},
    }
    if collectives.is_main():
        write_json(out / RESULTS, results)
        save_samples(out, results, cfg)
        from metasparsity.report.compare import write_report

        write_report(out, results)
    collectives.barrier()
    return results


METHOD_ROW_SHAPE = {
    "run_dir": str, "wall_time_s": float,
    "seen": {"val": dict, "test": dict}, "unseen": {"val": dict, "test": dict},
    "sparsity": {"param_sparsity": float, "group_sparsity": float},
}
"""What the comparison reads of a method's row (``METHODS[name](ctx)``)."""


def check_method_row(name: str, row: Any, ctx: Any) -> dict:
    """``row`` if it has :data:`METHOD_ROW_SHAPE` and scores every seen task (and every unseen
    task when it scores any), else a UserError naming the method: a method of one's own that
    returns another structure failed after every method and seed had run, with no results."""
    problem = check_json_shape(row, METHOD_ROW_SHAPE, f"method {name!r}'s row")
    if not problem:
        for part, tasks in (("seen", ctx.seen), ("unseen", ctx.unseen)):
            for split in ("val", "test"):
                missing = [t for t in tasks if t not in row[part][split]]
                if missing and (part == "seen" or row[part][split]):
                    problem = (f"method {name!r}'s row[{part!r}][{split!r}] has no metrics for "
                               f"{', '.join(missing)}")
                    break
            if problem:
                break
    if problem:
        raise UserError(f"{problem}; a method returns the row of its run (see README, 'Adding a "
                        "training method')")
    return row


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
    from metasparsity.recipes.load_run import load_run_model

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
