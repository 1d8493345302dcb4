"""Recipe ``train``: dense single-task (STL) or multi-task (MTL) training, fixed-λ group-sparse
MTL when ``sparsity.lam > 0``, and budget mode when ``sparsity.target`` is set (λ the multiplier
of the backbone's cost); fine-tuning (:mod:`metasparsity.recipes.finetune`) runs it too.
Validation every ``val_every`` steps keeps the best checkpoint (in budget mode the last step,
which lands on the target); its weights are tested at the end.
"""

from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from metasparsity.builders import build_model
from metasparsity.config import Config
from metasparsity.data import build_dataset, resolve_tasks
from metasparsity.meta.lam import dual_ascent, ramped_target
from metasparsity.models.sync_bn import convert_sync_batchnorm
from metasparsity.recipes import run_recipe
from metasparsity.sparsity import (
    BackboneCost,
    CutWatch,
    ProxAdam,
    apply_masks_,
    channel_groups,
    land_prox,
    mask_zero_group_grads_,
    penalised_layers,
    prox_param_groups,
    removable_layers,
    removed_zero_masks,
    report_cut,
    sparsity_stats,
    zero_group_masks,
)
from metasparsity.training import collectives
from metasparsity.training.batches import BatchStream, clamp_notice, eval_loader, to_device
from metasparsity.training.checkpoint import checkpoint_step
from metasparsity.training.divergence import (
    NonFiniteError,
    check_finite,
    check_finite_metrics,
    check_finite_params,
    nonfinite_metrics,
    overflow_is_divergence,
)
from metasparsity.training.evaluation import evaluate, recompute_bn_stats, selection_score
from metasparsity.training.rng import preserved_rng, set_rng_state
from metasparsity.training.run_checkpoints import load_model_state, load_run_checkpoint, repoint
from metasparsity.training.schedule import build_scheduler, lr_factor
from metasparsity.training.session import RunSession
from metasparsity.training.weighting import LossWeighting, task_losses
from metasparsity.utils.device import autocast
from metasparsity.utils.errors import UserError


@dataclass
class TrainSettings:
    """Plain arguments of one training run (built from ``cfg.train`` or ``cfg.finetune``)."""

    tasks: list[str]
    max_steps: int
    batch_size: int
    lr: float
    val_every: int
    lam: float | list[float] = 0.0  # fixed λ (one per grouped layer if a list); 0: no prox
    prox_metric: str = "adam"
    penalize: str = "all"  # sparsity.penalize: all groups, or only removable ones
    weight_decay: float = 0.0
    lr_schedule: str = "cosine"
    warmup_steps: int = 0
    log_every: int = 10
    ckpt_every: int = 0
    loss_weighting: str = "equal"
    seed: int = 0
    data_fraction: float = 1.0
    # zero groups of the initial weights kept at zero: none (False), "all", or "removed" (those
    # whose channel pruning removes); True means "all"
    keep_zero_groups: bool | str = False
    # (measure, target): λ is budget mode's multiplier, moved by dual ascent after every step at
    # ``dual_rate`` in log space inside ``lam_range`` up to the step that lands on the budget
    # (``land_step``: the last by default).  The
    # target ramps down from 1 over the first ``target_ramp_steps`` steps (0: none)
    budget: tuple[str, float] | None = None
    budget_key: str = "meta.target"  # the config key of the target, for messages
    dual_rate: float = 0.05
    target_ramp_steps: int = 0
    # the step that lands on the budget (0: the last); after it the zero set is fixed, the other
    # weights train without the prox, and the best validated checkpoint from it on is kept
    land_step: int = 0
    # where the multiplier acts: "all" penalised layers, or "removable": only those whose zero
    # groups lower the budget's measure (the others keep λ = ``lam``, moved by neither the dual
    # ascent nor the landing)
    multiplier_on: str = "all"
    lam_range: tuple[float, float] = (1e-6, 10.0)
    freeze_backbone: bool = False
    recompute_bn_stats: bool = False
    amp: bool = False
    kind: str = "train"
    extra_results: dict[str, Any] = field(default_factory=dict)


TRAIN_BUDGET = "train_budget"  # the kind of a `train` run in budget mode (sparsity.target)


def refuse_train_budget(cfg: Config, command: str, instead: str) -> None:
    """``sparsity.target`` is budget mode of ``train`` only: other commands that train refuse it
    (exit 2) rather than ignore it."""
    if cfg.sparsity.target is not None:
        raise UserError(f"sparsity.target is budget mode of `metasparsity train`; {command} does "
                        f"not use it ({instead}): remove it (sparsity.target=null)")


def has_penalty(lam: float | list[float]) -> bool:
    """Whether a fixed λ (a float or one value per layer) puts a group penalty on."""
    return any(v > 0 for v in lam) if isinstance(lam, list) else lam > 0


def check_resumed_steps(meta: dict[str, Any], total: int, key: str, run_dir: Path) -> None:
    """Refuse to resume a checkpoint of a step past the ``total`` steps ``key`` now asks for: the
    run would end at once, its config saying fewer steps than it trained."""
    step = int(meta.get("step", 0))
    if step > total:
        raise UserError(f"--resume: {run_dir} has trained {step} steps, more than {key}={total}; "
                        f"give at least {step} to continue it (in a comparison or the demo, "
                        f"compare.budget sets it)")


def settings_from_config(cfg: Config, tasks: list[str] | None = None) -> TrainSettings:
    t = cfg.train
    return TrainSettings(
        tasks=list(tasks or cfg.train_tasks), max_steps=t.max_steps, batch_size=t.batch_size,
        lr=t.lr, val_every=t.val_every, lam=cfg.sparsity.lam,
        prox_metric=cfg.sparsity.prox_metric, penalize=cfg.sparsity.penalize,
        weight_decay=t.weight_decay,
        lr_schedule=t.lr_schedule, warmup_steps=t.warmup_steps, log_every=t.log_every,
        ckpt_every=t.ckpt_every, loss_weighting=t.loss_weighting, seed=t.seed, amp=t.amp)


class Trainer:
    """Train ``settings.tasks`` on the configured data: ``setup()``, ``train()``, ``cleanup()``.

    Each step: forward all tasks once through the shared backbone → per-task losses →
    weighting → Adam (fixed λ: ProxAdam, the group prox in Adam's metric at threshold
    ``lr_t·λ·w_g``) → LR schedule → (fine-tuning) zero groups kept at zero.  Selection: the
    lowest :func:`~metasparsity.training.evaluation.selection_score` on validation.  Under
    torchrun it is data parallel: ``batch_size`` per process, DistributedDataParallel and
    synchronised BatchNorm (docs/distributed.md).  ``amp``: bf16 autocast on CUDA.

    ``init_state`` / ``init_tasks``: start from these weights (fine-tuning), with heads for the
    tasks in ``init_tasks`` taken from it and fresh heads for the others.

    ``resume=True`` continues the run in ``run_dir`` from its last complete checkpoint:
    weights, Adam and LR-schedule state, loss weights, the data order, the RNG states, the best
    score so far and the step.  The LR and weight decay of the (possibly changed) config are
    re-applied, so ``max_steps`` can be raised to train longer.  With the config unchanged,
    stopping after any step and resuming gives bit-identical weights on CPU (``num_workers =
    0``); under torchrun, with the same number of processes.
    """

    def __init__(self, cfg: Config, run_dir: str | Path, settings: TrainSettings, *,
                 resume: bool = False, overwrite: bool = False,
                 init_state: dict[str, torch.Tensor] | None = None,
                 init_tasks: list[str] | None = None, source: str | None = None) -> None:
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.s = settings
        self.resume = resume
        self.overwrite = overwrite
        self.init_state = init_state
        self.init_tasks = list(init_tasks or [])
        self.source = source

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        cfg, s = self.cfg, self.s
        self.session = RunSession(
            self.run_dir, seed=s.seed, device=cfg.train.device, num_threads=cfg.train.num_threads,
            resume=self.resume, overwrite=self.overwrite, progress=cfg.train.progress,
            lr_key="finetune.lr" if s.kind == "finetune" else "train.lr", lr=s.lr)
        self.dist = self.session.dist
        self.cut_watch = CutWatch(str(self.run_dir))  # at every validation
        self.device = self.dist.device
        self.main = self.dist.is_main
        self.tasks = resolve_tasks(cfg, s.tasks)
        self.train_set = build_dataset(cfg, "train")
        n_train = len(self.train_set)
        n_use = max(1, int(round(s.data_fraction * n_train)))
        g = torch.Generator().manual_seed(10_007 + s.seed)
        indices = sorted(torch.randperm(n_train, generator=g)[:n_use].tolist()) if n_use < n_train else None
        world = self.dist.world_size
        self.stream = BatchStream(self.train_set, s.batch_size * world, s.seed,
                                  num_workers=cfg.data.num_workers, indices=indices,
                                  pin_memory=self.device.type == "cuda",
                                  shard=(self.dist.rank, world))
        key = "finetune.batch_size" if s.kind == "finetune" else "train.batch_size"
        notice = clamp_notice(self.stream, key if world == 1 else f"{key} × {world} processes")
        if notice and self.main:
            print(notice, flush=True)
        batch, workers = cfg.train.eval_batch_size, cfg.data.num_workers
        self.val_loader = eval_loader(build_dataset(cfg, "val"), batch, workers)
        self.test_loader = eval_loader(build_dataset(cfg, "test"), batch, workers)

        self.model = self._build_model()
        self.weighting = LossWeighting(list(self.tasks), s.loss_weighting).to(self.device)
        self.masks = self._zero_masks()
        if s.freeze_backbone:
            for p in self.model.backbone.parameters():
                p.requires_grad_(False)
        params = [p for t in self.tasks for p in self.model.task_parameters(t)]
        if not s.freeze_backbone:
            params = list(self.model.shared_parameters()) + params
        params += list(self.weighting.parameters())
        # the penalty is on the backbone's groups: a frozen backbone takes no prox
        self.groups = (channel_groups(self.model)
                       if has_penalty(s.lam) and not s.freeze_backbone else None)
        if self.groups is not None and s.penalize != "all":
            x0 = self._example_input()
            self.groups = penalised_layers(self.model, x0, self.groups, s.penalize)
        if self.groups is not None and isinstance(s.lam, list) and len(s.lam) != len(self.groups):
            raise UserError(f"λ has {len(s.lam)} per-layer values but the model has "
                            f"{len(self.groups)} grouped layers")
        if self.groups is None:
            self.opt = torch.optim.Adam(params, lr=s.lr, weight_decay=s.weight_decay)
        else:  # Adam, then the group prox in its metric (DESIGN §2.2.1)
            self.opt = ProxAdam(prox_param_groups(self.model, self.groups, params), lr=s.lr,
                                weight_decay=s.weight_decay, prox_metric=s.prox_metric,
                                num_layers=len(self.groups))
        self.sched = build_scheduler(self.opt, s.lr_schedule, s.max_steps, s.warmup_steps)
        self.cost: BackboneCost | None = None  # budget mode: the pruned backbone's cost
        self.mult_on: torch.Tensor | None = None  # budget mode: the layers the multiplier moves
        self.lam_now: Any = s.lam  # the prox's λ (budget mode: the multiplier, [1] or [L])
        self.landing: dict[str, Any] | None = None
        self.projected = 0
        if s.budget is not None and self.groups is not None:
            x0 = self._example_input()
            self.cost = BackboneCost(self.model, x0, self.groups)
            lam = s.lam if isinstance(s.lam, list) else [s.lam]
            on = None
            if s.multiplier_on == "removable" and s.budget[0] != "groups":
                on = [g.group_weight > 0 for g in removable_layers(self.model, x0, self.groups)]
                self.mult_on = torch.tensor(on, device=self.device)
                lam = lam * len(on) if len(lam) == 1 else lam
            self.cost.check_target(self.model, *s.budget, key=s.budget_key, moved=on)
            self.lam_now = torch.tensor(lam, dtype=torch.float64, device=self.device)
        self.step = 0
        self.best_score = float("inf")
        self.reference_val: dict | None = None  # first validation: the baseline of selection
        self.best_step = -1
        self.history: list[dict] = []

        ck = self.session.restore(self._load_resume)
        if ck is None and s.recompute_bn_stats:
            # meta-trained weights come with unusable running statistics (DESIGN §2.4)
            recompute_bn_stats(self.model, self.stream, self.device)
            self.stream.load_state_dict({"epoch": 0, "pos": 0})
        # DDP broadcasts rank 0's parameters: it is also the point where every rank has read
        # the resumed checkpoint before rank 0 writes anything.
        self.net = collectives.data_parallel(self.model, self.dist)
        self.session.open(cfg.to_yaml(), snapshot=self._snapshot, model=self.model,
                          val_metrics=self._val_metrics)
        if ck is not None and self.main and self.best_step >= 0:
            # ``best`` must name the checkpoint the restored selection state calls best (after a
            # fallback to an older checkpoint the pointer may name a newer, abandoned one)
            if not repoint(self.run_dir, "best", self.best_step):
                print(f"note: {self.run_dir}: the best checkpoint (step {self.best_step}) is gone; "
                      "the best is chosen again from the next validations", file=sys.stderr)
                self.best_score, self.best_step = float("inf"), -1
        self.session.mark(self.step, stream=self.stream.state_dict())

    def _example_input(self) -> torch.Tensor:
        """The first training image as a batch of one: traces the backbone (groups, costs,
        removable channels, the cut check)."""
        return self.train_set[0][0].unsqueeze(0).to(self.device)

    def _build_model(self) -> torch.nn.Module:
        model_tasks = list(dict.fromkeys(self.init_tasks + list(self.tasks)))
        model = build_model(self.cfg, model_tasks)
        if self.init_state is not None:
            own = model.state_dict()
            shaped = [k for k, v in self.init_state.items() if k in own and own[k].shape != v.shape]
            if shaped:  # load_state_dict would raise a many-line RuntimeError
                raise UserError(f"source weights do not fit the model built from the config "
                                f"(were model.* overrides given, or the source's config.yaml "
                                f"changed?): {len(shaped)} tensors of another shape (e.g. "
                                f"{', '.join(shaped[:2])})")
            missing, unexpected = model.load_state_dict(self.init_state, strict=False)
            fresh = {f"heads.{t}." for t in model_tasks if t not in self.init_tasks}
            bad = [k for k in missing if not any(k.startswith(f) for f in fresh)]
            if bad or unexpected:
                raise UserError(f"source weights do not fit the model: missing {bad[:3]}, "
                                f"unexpected {list(unexpected)[:3]}")
        model.to(self.device)
        if self.dist.enabled:  # the global batch's statistics, as in one process
            model = convert_sync_batchnorm(model, self.device)
        return model

    def _check_resumed_source(self, m: dict[str, Any]) -> None:
        """A fine-tuning resumes only a fine-tuning; ``train`` never resumes one.  And a
        fine-tuning resumes from its own source: the one whose absolute path its checkpoint
        records (``source_path``), unless the run lies inside the source given (the default
        layout, also of a copied run or comparison) or the recorded source no longer exists."""
        mine, theirs = self.s.kind == "finetune", m.get("kind") == "finetune"
        if "kind" in m and mine != theirs:
            what = "a fine-tuning" if theirs else f"a {m.get('kind')} run, not a fine-tuning"
            raise UserError(f"--resume: {self.run_dir} is {what}; continue it with its own command")
        recorded = m.get("source_path")
        if not (mine and self.source and isinstance(recorded, str) and Path(recorded).is_dir()):
            return
        given = Path(self.source).resolve()
        if given in Path(self.run_dir).resolve().parents or os.path.samefile(recorded, given):
            return
        raise UserError(f"--resume: {self.run_dir} fine-tunes {recorded}, not {given}; give its "
                        f"own source: metasparsity finetune {recorded} --resume {self.run_dir}")

    def _load_resume(self, ck) -> None:
        s, m = self.s, ck.meta
        self._check_resumed_source(m)
        key = ("finetune.steps (or finetune.epochs)" if s.kind == "finetune"
               else "train.max_steps")
        check_resumed_steps(m, s.max_steps, key, self.run_dir)
        if (self.cost is not None) != ("budget_lambda" in m):  # before any state is loaded
            had = "with" if "budget_lambda" in m else "without"
            key = ("finetune.lam" if s.kind == "finetune"
                   else m.get("budget_key", s.budget_key) if "budget_lambda" in m
                   else s.budget_key)
            raise UserError(f"--resume: {self.run_dir} was trained {had} a budget; resume it "
                            f"{had} one, as it started ({key})")
        if self.cost is not None:
            self._check_resumed_budget(m)
        load_model_state(self.model, ck, self.run_dir)
        self.opt.load_state_dict(ck.state["opt"])
        if self.groups is not None:
            self.opt.set_group_weights(self.groups)
        self.sched.load_state_dict(ck.state["sched"])
        if "weighting" in ck.state:
            self.weighting.load_state_dict(ck.state["weighting"])
        set_rng_state(ck.state["rng"])
        self.step = int(m["step"])
        self.stream.load_state_dict(m["stream"])
        self.best_score = float(m["best_score"])
        self.best_step = int(m["best_step"])
        self.reference_val = m.get("reference_val")
        self.history = list(m.get("history", []))
        if self.cost is not None:
            self.lam_now = torch.tensor(m["budget_lambda"], dtype=torch.float64, device=self.device)
            self.landing, self.projected = m.get("landing"), int(m.get("projected_groups", 0))
            if self.step >= self._land_step():
                self._keep_landed_zeros()
        # The config of this invocation decides the LR schedule and weight decay from here on.
        self.sched.base_lrs = [s.lr for _ in self.opt.param_groups]
        for group in self.opt.param_groups:
            group["initial_lr"] = s.lr
            group["weight_decay"] = s.weight_decay
            group["lr"] = s.lr * lr_factor(s.lr_schedule, self.step, s.max_steps, s.warmup_steps)

    def _snapshot(self, b: dict[str, Any]) -> tuple[dict, dict, dict]:
        """What a checkpoint of boundary ``b`` holds (:meth:`RunSession.save`)."""
        state = {"opt": self.opt.state_dict(), "sched": self.sched.state_dict(),
                 "weighting": self.weighting.state_dict()}
        meta = {"kind": self.s.kind, "tasks": self.model.tasks, "train_tasks": list(self.tasks),
                "stream": b["stream"], "best_score": self.best_score, "best_step": self.best_step,
                "reference_val": self.reference_val, "history": self.history, "lam": self.s.lam,
                "source": self.source, "bn_stats": "running",
                "source_path": str(Path(self.source).resolve()) if self.source else None,
                "world_size": self.dist.world_size}
        if self.cost is not None:
            meta.update(budget_lambda=self.lam_now.tolist(), landing=self.landing,
                        projected_groups=self.projected, budget_key=self.s.budget_key,
                        landing_step=self._land_step(), multiplier_on=self._mult_on_list())
        return self.model.state_dict(), state, meta

    # ------------------------------------------------------------------ loop
    def train(self, stop_after: int | None = None) -> dict[str, Any] | None:
        """Train up to ``max_steps`` and return the results (also in ``results.json``).

        ``stop_after``: stop once this step is done, leaving a resumable checkpoint and no
        results (returns None); the schedule still follows ``max_steps``.  Ctrl-C and
        non-finite values: :meth:`RunSession.running`.
        """
        s, session = self.s, self.session
        self._set_train_mode()
        with session.running(s.max_steps, stop_after, desc=f"{s.kind} {'+'.join(self.tasks)}",
                             best_if_interrupted=lambda: self.best_step == self.step) as steps:
            for _ in steps:
                x, y = to_device(next(self.stream), self.device)
                with autocast(self.device, s.amp):
                    out = self.net(x, tasks=list(self.tasks))
                    losses = task_losses(self.tasks, out, y)
                    total = self.weighting(losses)
                total_g, losses_g = self._global_losses(total, losses)
                check_finite(losses_g, self.step + 1)
                self.opt.zero_grad(set_to_none=True)
                total.backward()
                # DDP averaged the model's gradients; learned loss weights are outside it
                collectives.average_gradients(self.weighting.parameters())
                with overflow_is_divergence(self.step + 1):
                    # the in-place update (an interrupt waits for the whole step: session.running)
                    if self.masks is not None:
                        mask_zero_group_grads_(self.model, self.masks)
                    lr_now = self.opt.param_groups[0]["lr"]
                    if self.groups is None:
                        self.opt.step()
                    elif self.cost is not None and self.step + 1 == self._land_step():
                        self.opt.step(lam=None)  # budget mode's landing step
                        self.landing, self.projected = land_prox(
                            self.model, self.opt, self.cost, *s.budget, self.lam_now,
                            self.mult_on)
                    elif self.cost is not None and self.step + 1 > self._land_step():
                        self.opt.step(lam=None)  # landed: the zero set is fixed, the rest trains
                    else:
                        self.opt.step(lam=self.lam_now)  # τ = lr_now·λ·w_g
                    self.sched.step()
                    if self.masks is not None:
                        apply_masks_(self.model, self.masks)
                    cost = None
                    if self.cost is not None:
                        if self.step + 1 >= self._land_step():
                            self._keep_landed_zeros()
                        # the multiplier's last move is the landing step's
                        cost = (self._dual_step() if self.step + 1 <= self._land_step()
                                else self.cost.fraction(self.model, s.budget[0]))
                    check_finite_params(self._all_tensors(), self.step + 1)
                    self.step += 1
                    session.mark(self.step, stream=self.stream.state_dict())
                if self.step % s.log_every == 0 or self.step == s.max_steps:
                    loss = float(total_g.detach())
                    rec = {"loss": loss, "lr": lr_now,
                           "losses": {t: float(v.detach()) for t, v in losses_g.items()}}
                    if self.groups is not None:
                        rec["group_sparsity"] = sparsity_stats(self.model).group_sparsity
                    if cost is not None:
                        rec.update(cost=cost, target=ramped_target(
                            s.budget[1], self.step, s.target_ramp_steps),
                                   **{"lambda": _floats(self.lam_now)})
                    if s.loss_weighting != "equal":
                        rec["weights"] = self.weighting.weights()
                    session.log("train", rec)
                    if hasattr(steps, "set_postfix"):
                        steps.set_postfix(loss=f"{loss:.3f}")
                if self.step % s.val_every == 0 or self.step == s.max_steps:
                    # rank 0 validates; every rank then saves (the others wait in its collective)
                    session.save(best=collectives.from_main(self._validate), validated=True)
                    self._set_train_mode()
                elif s.ckpt_every and self.step % s.ckpt_every == 0:
                    session.save()
        return session.finish(self._results)

    def _mult_on_list(self) -> list[bool] | None:
        return None if self.mult_on is None else self.mult_on.tolist()

    def _check_resumed_budget(self, m: dict[str, Any]) -> None:
        """``--resume`` of a budget run: refuse a change of ``sparsity.multiplier_on``, and a
        landing moved across the step the run stopped at (it would be skipped, or a landed run's
        fixed zero set released); a landing still ahead may move (e.g. with more steps)."""
        if "landing_step" not in m:  # a checkpoint from before these settings
            return
        step, old, new = int(m["step"]), int(m["landing_step"]), self._land_step()
        if new != old and not (step <= old and step < new):
            raise UserError(f"--resume: {self.run_dir} landed on its budget at step {old} "
                            f"and stopped at step {step}; this config lands at step {new} "
                            "(sparsity.target_land × train.max_steps): keep the landing step, "
                            "or start a new run")
        if m.get("multiplier_on") != self._mult_on_list():
            raise UserError(f"--resume: {self.run_dir} was trained with sparsity.multiplier_on="
                            f"{'all' if m.get('multiplier_on') is None else 'removable'}; "
                            "resume it with the same")

    def _land_step(self) -> int:
        """Budget mode: the step that lands on the budget (``land_step``, or the last)."""
        return self.s.land_step or self.s.max_steps

    def _keep_landed_zeros(self) -> None:
        """Budget mode from its landing on: the zero groups of the penalised layers are kept at
        zero (with those ``keep_zero_groups`` keeps), so the cost stays where it landed.
        Rebuilt from the weights, so a resumed run keeps the same set."""
        zeros = zero_group_masks(self.model, layers=self.groups)
        if self.masks is not None:
            zeros = {k: v | self.masks[k].to(v.device) if k in self.masks else v
                     for k, v in zeros.items()}
            zeros.update({k: v for k, v in self.masks.items() if k not in zeros})
        self.masks = zeros

    def _dual_step(self) -> float:
        """Budget mode, after the update: :func:`~metasparsity.meta.lam.dual_ascent` on the
        multiplier (every layer alike, as meta-training does; with ``multiplier_on=removable``
        only the layers it acts on) towards the target of this step
        (:func:`~metasparsity.meta.lam.ramped_target`).  Returns the cost."""
        measure, final = self.s.budget
        target = ramped_target(final, self.step + 1, self.s.target_ramp_steps)
        cost = self.cost.fraction(self.model, measure)
        lo, hi = (math.log(v) for v in self.s.lam_range)
        lam = dual_ascent(self.lam_now.log(), (cost - target) / target, self.s.dual_rate,
                          lo, hi).exp()
        self.lam_now = lam if self.mult_on is None else torch.where(self.mult_on, lam,
                                                                     self.lam_now)
        return cost

    def _zero_masks(self) -> dict[str, torch.Tensor] | None:
        """The groups fine-tuning keeps at zero (``keep_zero_groups``), from the initial weights."""
        keep = self.s.keep_zero_groups
        if not keep:
            return None
        if keep == "removed":
            x0 = self._example_input()
            return removed_zero_masks(self.model, x0)
        return zero_group_masks(self.model)

    def _set_train_mode(self) -> None:
        self.model.train()
        if self.s.freeze_backbone:
            self.model.backbone.eval()  # a frozen backbone keeps its BN statistics too

    def _global_losses(self, total: torch.Tensor, losses: dict[str, torch.Tensor]
                       ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The losses of the global batch: the mean over ranks of each rank's (detached)
        losses; this rank's own losses in a single process.  Every rank then sees the same
        values, so a non-finite loss stops all of them at the same step."""
        if not self.dist.enabled:
            return total, losses
        names = list(losses)
        acc = torch.promote_types(total.dtype, torch.float32)  # bf16 under autocast → float32
        v = collectives.mean_over_ranks(torch.stack([total.detach().to(acc)]
                                                    + [losses[t].detach().to(acc) for t in names]))
        return v[0], {t: v[i + 1] for i, t in enumerate(names)}

    def _all_tensors(self) -> dict[str, torch.Tensor]:
        """Parameters and buffers of the model and the loss weighting (checked for NaN / inf)."""
        return {**self.model.state_dict(),
                **{f"weighting.{k}": v for k, v in self.weighting.state_dict().items()}}

    def _val_metrics(self) -> dict[str, dict]:
        with preserved_rng():
            return evaluate(self.model, self.val_loader, self.tasks, self.device)

    def _validate(self) -> bool:
        """Rank 0: validate, log, and say whether this step is the best so far.  Non-finite
        results stop the run (on every rank) before anything is saved: a best checkpoint is
        only ever chosen on a finite score."""
        val = self._val_metrics()
        if nonfinite_metrics(val):
            self.session.log("val", {"val": val, "score": None})
            check_finite_metrics(val, self.step)
        if self.reference_val is None:
            self.reference_val = val
        score = selection_score(val, self.reference_val,
                                {t: task.type for t, task in self.tasks.items()})
        # budget mode: only the checkpoints from the landing on are within the budget
        best = (math.isfinite(score) and score < self.best_score
                and (self.cost is None or self.step >= self._land_step()))
        if best:
            self.best_score, self.best_step = score, self.step
        rec: dict[str, Any] = {"val": val, "score": score}
        if self.groups is not None or self.masks is not None:
            st = sparsity_stats(self.model)
            rec["sparsity"] = {"group": st.group_sparsity, "param": st.param_sparsity,
                               "per_layer": [layer["group_sparsity"] for layer in st.per_layer]}
            rec["backbone_cut"] = self.cut_watch(self.model, self._example_input(), self.step)
        self.history.append({"step": self.step, "score": score})
        self.session.log("val", rec)
        return best

    def _results(self) -> dict[str, Any]:
        """Rank 0: validate and test the best checkpoint."""
        ck = load_run_checkpoint(self.run_dir, "best")
        self.model.load_state_dict(ck.model)
        val = evaluate(self.model, self.val_loader, self.tasks, self.device)
        test = evaluate(self.model, self.test_loader, self.tasks, self.device, progress=False)
        check_finite_metrics(val, checkpoint_step(ck.path), "validation")
        try:
            check_finite_metrics(test, checkpoint_step(ck.path), "test")
        except NonFiniteError as e:  # not a divergence: this checkpoint validated finite
            raise UserError(f"{e}; the checkpoints are kept and their validation was finite, so a "
                            "smaller learning rate would not help: check the test data "
                            f"(metasparsity evaluate {self.run_dir} --split test)") from None
        results = {"kind": self.s.kind, "tasks": list(self.tasks), "best_step": self.best_step,
                   "steps": self.step, "lam": self.s.lam, "val": val, "test": test,
                   "sparsity": sparsity_stats(self.model).to_dict(),
                   "backbone_cut": report_cut(self.model, self._example_input(),
                                              str(self.run_dir)),
                   "params": sum(p.numel() for p in self.model.parameters()),
                   **self.s.extra_results}
        if self.cost is not None:
            measure, target = self.s.budget
            results["budget"] = {"measure": measure, "target": target,
                                 "cost": self.cost.summary(self.model),
                                 "lambda_final": _floats(self.lam_now), "landing": self.landing,
                                 "landing_step": self._land_step(),
                                 "multiplier_on": self._mult_on_list(),
                                 "projected_groups": self.projected}
        if self.source:
            results["source"] = self.source
        self.session.log("test", {"test": test})
        return results

    def cleanup(self) -> None:
        self.session.close()


def run_train(cfg: Config, run_dir: str | Path, *, resume: bool = False,
              overwrite: bool = False, tasks: list[str] | None = None) -> dict[str, Any]:
    """``metasparsity train``: STL when one task, MTL otherwise; fixed λ when ``sparsity.lam > 0``;
    budget mode when ``sparsity.target`` is set (:func:`train_settings`)."""
    return run_recipe(Trainer(cfg, run_dir, train_settings(cfg, tasks), resume=resume,
                              overwrite=overwrite))


def check_multiplier_start(lam: float, who: str) -> None:
    """Raise ``UserError`` unless ``lam`` (``sparsity.lam``, where budget mode's multiplier
    starts) lies in :attr:`TrainSettings.lam_range`; ``who`` opens the message."""
    lo, hi = TrainSettings.lam_range
    if not lo <= lam <= hi:
        raise UserError(f"{who} starts its multiplier at sparsity.lam, which is {lam:g}; give "
                        f"sparsity.lam a number in [{lo:g}, {hi:g}] (e.g. 1e-3)")


def train_settings(cfg: Config, tasks: list[str] | None = None) -> TrainSettings:
    """The settings of ``metasparsity train``: :func:`settings_from_config` and the kind of run;
    in budget mode (kind ``train_budget``, ``sparsity.target`` set) λ starts at ``sparsity.lam``
    and is the multiplier of "backbone cost ≤ target", as in meta-training's budget mode
    (DESIGN §2.4), moved by dual ascent after every step towards the ramped target."""
    settings = settings_from_config(cfg, tasks)
    sp = cfg.sparsity
    if sp.target is not None:
        check_multiplier_start(sp.lam, "sparsity.target: budget mode")
        settings.budget, settings.budget_key = (sp.target_measure, sp.target), "sparsity.target"
        settings.dual_rate = sp.dual_rate
        settings.target_ramp_steps = round(sp.target_ramp * settings.max_steps)
        settings.land_step = max(1, round(sp.target_land * settings.max_steps))
        settings.multiplier_on = sp.multiplier_on
        settings.kind = TRAIN_BUDGET
    else:
        settings.kind = ("fixed_lambda" if settings.lam > 0
                         else ("stl" if len(settings.tasks) == 1 else "mtl"))
    return settings


def final_multiplier(budget: dict[str, Any]) -> float:
    """A budget run's final multiplier from its results' ``budget``: its λ, or with
    ``sparsity.multiplier_on=removable`` the λ of the layers it moves (the others keep
    ``sparsity.lam``)."""
    lam, on = budget["lambda_final"], budget.get("multiplier_on")
    if not isinstance(lam, list):
        return lam
    return max(v for v, o in zip(lam, on or [True] * len(lam)) if o)


def _floats(lam: torch.Tensor) -> float | list[float]:
    v = lam.tolist()
    return v[0] if len(v) == 1 else v
