"""Recipe ``finetune`` (meta-testing, DESIGN §2.5): a (meta-)trained run's best checkpoint
fine-tuned on seen or unseen tasks by the ``train`` recipe, its zero groups kept at zero.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from metasparsity.config import Config, load_config
from metasparsity.data import resolve_tasks
from metasparsity.recipes import run_recipe
from metasparsity.recipes.train import TRAIN_BUDGET, Trainer, TrainSettings, has_penalty
from metasparsity.training import collectives
from metasparsity.training.evaluation import bn_stats_to_recompute
from metasparsity.training.run_checkpoints import load_run_checkpoint
from metasparsity.utils.errors import UserError
from metasparsity.utils.rundir import CONFIG_FILE, require_run_dir


def finetune_settings(cfg: Config, tasks: Sequence[str], n_train: int | None = None,
                      world_size: int = 1) -> TrainSettings:
    """The ``train`` recipe's arguments for fine-tuning (``cfg.finetune``); ``world_size``:
    processes sharing each global batch of ``batch_size × world_size`` (an epoch has
    ``samples // (batch_size × world_size)`` steps)."""
    f = cfg.finetune
    steps = f.steps
    if f.epochs is not None:
        if n_train is None:
            raise ValueError("finetune.epochs needs the training-set size")
        per_epoch = max(1, int(round(n_train * f.fraction)) // (f.batch_size * world_size))
        steps = max(1, math.ceil(f.epochs * per_epoch))
    return TrainSettings(
        tasks=list(tasks), max_steps=steps, batch_size=f.batch_size, lr=f.lr,
        val_every=min(f.val_every, steps), weight_decay=cfg.train.weight_decay,
        prox_metric=cfg.sparsity.prox_metric, penalize=cfg.sparsity.penalize,
        lr_schedule=cfg.train.lr_schedule, warmup_steps=0, log_every=cfg.train.log_every,
        loss_weighting=cfg.train.loss_weighting, seed=cfg.train.seed, data_fraction=f.fraction,
        keep_zero_groups=False if f.keep_zeros == "none" else f.keep_zeros, freeze_backbone=f.freeze_backbone, amp=cfg.train.amp,
        kind="finetune")


#: Kinds of meta-trained runs that train under ``meta.target`` when it is set: ``meta-train``'s
#: own and ``compare``'s ``meta_budget`` method (one run per target).
META_BUDGET_KINDS = ("meta_sparsity", "meta_budget")


def budget_kind(cfg: Config, source_meta: dict[str, Any]) -> str | None:
    """Which budget a source run trained under: ``"meta"`` (a meta-trained run with
    ``meta.target``, of a kind in :data:`META_BUDGET_KINDS`), ``"train"`` (a ``train`` run with
    ``sparsity.target``), None for none.  A
    fine-tuning that held a budget (its checkpoint has ``budget_lambda``) counts as the kind of
    the budget it held (its checkpoint's ``budget_key``)."""
    kind = source_meta.get("kind")
    if kind == "finetune" and "budget_lambda" in source_meta:
        # the key of the budget it held (recorded since sparsity.target exists; before, only
        # meta.target could give a fine-tuning a budget)
        held = source_meta.get("budget_key", "meta.target")
        kind = TRAIN_BUDGET if held == "sparsity.target" else "meta_sparsity"
    if kind in META_BUDGET_KINDS and cfg.meta.target is not None:
        return "meta"
    if kind == TRAIN_BUDGET and cfg.sparsity.target is not None:
        return "train"
    return None


def source_budget(cfg: Config, source_meta: dict[str, Any]) -> dict[str, Any] | None:
    """The budget a source run trained under (:func:`budget_kind`), from the config: the
    :class:`TrainSettings` fields ``budget``, ``budget_key``, ``dual_rate``, ``lam_range`` (and
    a ``train`` budget's ``multiplier_on``); None when it had none."""
    m, sp = cfg.meta, cfg.sparsity
    which = budget_kind(cfg, source_meta)
    if which == "meta":
        return {"budget": (m.target_measure, m.target), "budget_key": "meta.target",
                "dual_rate": m.lambda_lr, "lam_range": (m.lambda_min, m.lambda_max)}
    if which == "train":
        return {"budget": (sp.target_measure, sp.target), "budget_key": "sparsity.target",
                "dual_rate": sp.dual_rate, "lam_range": TrainSettings.lam_range,
                "multiplier_on": sp.multiplier_on}
    return None


def _target_changed(cfg: Config, own: Config, key: str) -> bool:
    """Whether the target ``key`` (``meta.target`` or ``sparsity.target``) of ``cfg``, or its
    measure, differs from ``own``, the source run's own config (an override asked for a new
    one)."""
    section = key.split(".")[0]
    return any(getattr(getattr(cfg, section), name) != getattr(getattr(own, section), name)
               for name in ("target", "target_measure"))


def finetune_lambda(lam: float | str, source_meta: dict[str, Any],
                    source: str | Path, key: str = "finetune.lam") -> float | list[float]:
    """``finetune.lam`` (or ``key``) resolved: a number as given; ``source``: the λ the source
    run ended with (a meta-trained run's learned ``lambda``, per layer if it learned one per
    layer; a fixed-λ run's ``lam``; 0 for a dense source; budget mode's multiplier, which
    :func:`run_finetune` keeps moving so that the budget holds: meta-training's ``lambda``, or
    ``budget_lambda`` of a ``train`` run in budget mode)."""
    if not isinstance(lam, str):
        return float(lam)
    key_src = next((k for k in ("lambda", "budget_lambda", "lam") if k in source_meta), "lam")
    value = source_meta.get(key_src)
    if key_src == "budget_lambda" and isinstance(value, list) and len(value) == 1:
        value = value[0]  # the trainer keeps a global multiplier as one value
    values = value if isinstance(value, list) else [value]
    if not all(isinstance(v, (int, float)) and math.isfinite(v) and v >= 0 for v in values):
        raise UserError(f"{key}=source: the source run {source} records no usable λ "
                        f"({value!r}); give {key} a number (0: no penalty)")
    return [float(v) for v in value] if isinstance(value, list) else float(value or 0.0)


def run_finetune(source: str | Path, tasks: Sequence[str] | None, out: str | Path, *,
                 overrides: Sequence[str] = (), cfg: Config | None = None, resume: bool = False,
                 overwrite: bool = False) -> dict[str, Any]:
    """Fine-tune the best checkpoint of run ``source`` on ``tasks`` into run directory ``out``.

    ``tasks``: names (seen or unseen); None = the source's seen tasks together.  The source's
    backbone (and the heads of requested tasks it has) initialise the model; other tasks get
    fresh heads.  Zero groups of the source backbone stay zero (gradients masked, weights
    re-masked after every step), so the sparse structure learned is what gets evaluated;
    ``finetune.keep_zeros=removed`` keeps only those whose channel pruning removes (the others
    stay in the pruned model whatever their weights, so they train again); ``none`` keeps none,
    so that with a penalty the prox alone decides and a zero group may revive.
    ``finetune.lam`` > 0 (or ``source``, :func:`finetune_lambda`) also keeps the group prox on,
    as fixed-λ training does: the surviving groups are shrunk and may reach zero too;
    ``finetune.lam_unseen``, when set, replaces it if every task in ``tasks`` is unseen.  From a
    budget-mode source (``meta.target``, or ``sparsity.target`` of ``train``; a budget
    fine-tuning too), λ stays the budget's multiplier: dual ascent after
    every step and a last step that lands on the target, as meta-training's; the last step is
    the one kept (``best``), and ``results.json`` has a ``budget`` entry.
    BatchNorm statistics of a meta-trained source are re-estimated first.  Options
    (``finetune.*``): share of the training data (few-shot), steps or epochs, frozen backbone.
    """
    source = require_run_dir(source)
    if cfg is None:
        cfg = load_config(Path(source) / CONFIG_FILE, overrides)
    tasks = list(tasks) if tasks else list(cfg.data.seen_tasks)
    bad = [t for t in tasks if t not in cfg.data.tasks]
    if bad:
        raise UserError(f"--tasks: {bad} not among the tasks of the data ({', '.join(cfg.data.tasks)})")
    resolve_tasks(cfg, tasks)
    # the fine-tuning run's config.yaml records its tasks, so that --resume needs no --tasks
    cfg = cfg.copy()
    cfg.train.tasks = list(tasks)
    ck = load_run_checkpoint(source, "best")
    own = load_config(Path(source) / CONFIG_FILE)  # the source's config, without overrides
    # a sparsity.target the source's config carries without its budget (a fine-tuning that
    # held none) is a record, not a request
    if (cfg.sparsity.target is not None and budget_kind(cfg, ck.meta) != "train"
            and _target_changed(cfg, own, "sparsity.target")):
        raise UserError(f"sparsity.target: fine-tuning keeps the budget of a `train` run in budget "
                        f"mode, but {source} is a {ck.meta.get('kind')} run; remove it "
                        "(sparsity.target=null)")
    src_tasks = list(ck.meta.get("tasks") or [])
    keep = [t for t in tasks if t in src_tasks]
    state = {k: v for k, v in ck.model.items()
             if k.startswith("backbone.") or any(k.startswith(f"heads.{t}.") for t in keep)}
    if not any(k.startswith("backbone.") for k in state):
        raise UserError(f"{source}: the checkpoint holds no backbone weights")
    from metasparsity.data import build_dataset

    n_train = len(build_dataset(cfg, "train")) if cfg.finetune.epochs is not None else None
    world = collectives.init_distributed(cfg.train.device).world_size
    settings = finetune_settings(cfg, tasks, n_train, world)
    f = cfg.finetune
    if f.lam_unseen is not None and all(t in cfg.data.unseen_tasks for t in tasks):
        settings.lam = finetune_lambda(f.lam_unseen, ck.meta, source, "finetune.lam_unseen")
    else:
        settings.lam = finetune_lambda(f.lam, ck.meta, source)
    budget = source_budget(cfg, ck.meta)
    if budget is not None and has_penalty(settings.lam) and not settings.freeze_backbone:
        # a budget-mode source keeps its budget: λ stays its multiplier (dual ascent) and the
        # last step lands on the target, as in its training (a frozen backbone keeps its cost)
        for k, v in budget.items():
            setattr(settings, k, v)
    elif budget is not None and _target_changed(cfg, own, budget["budget_key"]):
        raise UserError(f"{budget['budget_key']}: a new target (or measure) needs the prox on "
                        f"and the backbone trainable (finetune.lam > 0, e.g. source, and finetune.freeze_backbone="
                        f"false); without them the source's zeros are kept and its cost stays")
    settings.recompute_bn_stats = bn_stats_to_recompute(ck.meta)
    settings.extra_results = {"source_kind": ck.meta.get("kind"), "new_heads": [t for t in tasks if t not in keep],
                              "unseen": [t for t in tasks if t in cfg.data.unseen_tasks]}
    return run_recipe(Trainer(cfg, out, settings, resume=resume, overwrite=overwrite,
                              init_state=state, init_tasks=keep, source=str(source)))
