"""Recipe: dense single-task (STL) / multi-task (MTL) training, and fixed-λ group-sparse MTL.

One plain loop, no callbacks:  forward all tasks once through the shared backbone → per-task
losses → weighting → Adam step → LR schedule → (fixed λ) proximal step on the shared groups
with threshold ``lr_t · λ · w_g`` → (fine-tuning) zero groups kept at zero.  Validation every
``val_every`` steps chooses the best checkpoint (lowest mean validation loss); the best weights
are evaluated on the test split at the end and written to ``results.json``.

Under ``torchrun`` the loop is data parallel (:mod:`metasparsity.train.distributed`):
``batch_size`` is per process, every process takes its slice of the global batch of
``batch_size × processes`` samples, DistributedDataParallel averages the gradients and BatchNorm
is synchronised; rank 0 alone validates, tests and writes the run directory.  ``amp``: bf16
autocast of the training forward passes on CUDA (evaluation stays in float32).
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from metasparsity.builders import build_model
from metasparsity.config import Config
from metasparsity.data import build_dataset, resolve_tasks
from metasparsity.models.sync_bn import convert_sync_batchnorm
from metasparsity.sparsity import (
    ProxAdam,
    apply_masks_,
    channel_groups,
    mask_zero_group_grads_,
    prox_param_groups,
    sparsity_stats,
    zero_group_masks,
)
from metasparsity.training import collectives as ddp
from metasparsity.training.batches import BatchStream, eval_loader, to_device
from metasparsity.training.checkpoint import checkpoint_step, save_checkpoint
from metasparsity.training.divergence import (
    NonFiniteError,
    check_finite,
    check_finite_metrics,
    check_finite_params,
    diverged_error,
    nonfinite_metrics,
)
from metasparsity.training.evaluation import evaluate, recompute_bn_stats, selection_score
from metasparsity.training.interrupt import DeferInterrupt
from metasparsity.training.logs import RunLogger, progress_bar
from metasparsity.training.rng import (
    gather_rng,
    preserved_rng,
    rng_state,
    seed_everything,
    seed_rank,
    set_rng_state,
)
from metasparsity.training.run_checkpoints import (
    keep_last_good,
    kept_checkpoint_note,
    load_model_state,
    load_run_checkpoint,
    point_last_at,
    repoint,
    resume_checkpoint,
)
from metasparsity.training.schedule import build_scheduler, lr_factor
from metasparsity.training.weighting import LossWeighting, task_losses
from metasparsity.utils.device import autocast, set_threads
from metasparsity.utils.errors import UserError
from metasparsity.utils.io import truncate_jsonl, write_json
from metasparsity.utils.rundir import RunInterrupted, create_run_dir, update_run_config


@dataclass
class TrainSettings:
    """Plain arguments of one training run (built from ``cfg.train`` or ``cfg.finetune``)."""

    tasks: list[str]
    max_steps: int
    batch_size: int
    lr: float
    val_every: int
    lam: float = 0.0
    prox_metric: str = "adam"
    weight_decay: float = 0.0
    lr_schedule: str = "cosine"
    warmup_steps: int = 0
    log_every: int = 10
    ckpt_every: int = 0
    loss_weighting: str = "equal"
    seed: int = 0
    data_fraction: float = 1.0
    keep_zero_groups: bool = False
    freeze_backbone: bool = False
    recompute_bn_stats: bool = False
    amp: bool = False
    kind: str = "train"
    extra_results: dict[str, Any] = field(default_factory=dict)


def settings_from_config(cfg: Config, tasks: list[str] | None = None) -> TrainSettings:
    t = cfg.train
    return TrainSettings(
        tasks=list(tasks or cfg.train_tasks), max_steps=t.max_steps, batch_size=t.batch_size,
        lr=t.lr, val_every=t.val_every, lam=cfg.sparsity.lam,
        prox_metric=cfg.sparsity.prox_metric, weight_decay=t.weight_decay,
        lr_schedule=t.lr_schedule, warmup_steps=t.warmup_steps, log_every=t.log_every,
        ckpt_every=t.ckpt_every, loss_weighting=t.loss_weighting, seed=t.seed, amp=t.amp)


class Trainer:
    """Train ``settings.tasks`` on the configured data; see the module docstring.

    ``init_state``/``init_tasks``: start from these weights (fine-tuning), with heads for the
    tasks in ``init_tasks`` taken from it and fresh heads for the others.

    ``resume=True`` continues the run in ``run_dir`` from its ``last`` checkpoint (or, when
    that names a missing or incomplete one, the newest complete checkpoint): weights,
    Adam and LR-schedule state, loss weights, the data order, the RNG states, the best score so
    far and the step.  The LR and weight decay of the (possibly changed) config are re-applied,
    so ``train.max_steps`` can be raised to train longer.  With the config unchanged, stopping
    after any step and resuming gives bit-identical weights on CPU (``num_workers = 0``); under
    torchrun, with the same number of processes.
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
        self.progress = cfg.train.progress

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        cfg, s = self.cfg, self.s
        set_threads(cfg.train.num_threads)
        self.dist = ddp.init_distributed(cfg.train.device)
        self.device = self.dist.device
        self.main = self.dist.is_main
        self.progress = self.progress and self.main
        seed_everything(s.seed)
        self.tasks = resolve_tasks(cfg, s.tasks)
        self.train_set = build_dataset(cfg, "train")
        self.val_set = build_dataset(cfg, "val")
        self.test_set = build_dataset(cfg, "test")
        n_train = len(self.train_set)
        n_use = max(1, int(round(s.data_fraction * n_train)))
        g = torch.Generator().manual_seed(10_007 + s.seed)
        indices = sorted(torch.randperm(n_train, generator=g)[:n_use].tolist()) if n_use < n_train else None
        world = self.dist.world_size
        self.stream = BatchStream(self.train_set, s.batch_size * world, s.seed,
                                  num_workers=cfg.data.num_workers, indices=indices,
                                  pin_memory=self.device.type == "cuda",
                                  shard=(self.dist.rank, world))
        self.val_loader = eval_loader(self.val_set, cfg.train.eval_batch_size, cfg.data.num_workers)
        self.test_loader = eval_loader(self.test_set, cfg.train.eval_batch_size, cfg.data.num_workers)

        model_tasks = list(dict.fromkeys(self.init_tasks + list(self.tasks)))
        self.model = build_model(cfg, model_tasks)
        if self.init_state is not None:
            missing, unexpected = self.model.load_state_dict(self.init_state, strict=False)
            fresh = {f"heads.{t}." for t in model_tasks if t not in self.init_tasks}
            bad = [k for k in missing if not any(k.startswith(f) for f in fresh)]
            if bad or unexpected:
                raise UserError(f"source weights do not fit the model: missing {bad[:3]}, "
                                f"unexpected {list(unexpected)[:3]}")
        self.model.to(self.device)
        if self.dist.enabled:  # the global batch's statistics, as in one process
            self.model = convert_sync_batchnorm(self.model, self.device)
        self.weighting = LossWeighting(list(self.tasks), s.loss_weighting).to(self.device)
        self.masks = zero_group_masks(self.model) if s.keep_zero_groups else None
        if s.freeze_backbone:
            for p in self.model.backbone.parameters():
                p.requires_grad_(False)
        params = [p for t in self.tasks for p in self.model.task_parameters(t)]
        if not s.freeze_backbone:
            params = list(self.model.shared_parameters()) + params
        params += list(self.weighting.parameters())
        self.groups = channel_groups(self.model) if s.lam > 0 else None
        if self.groups is None:
            self.opt = torch.optim.Adam(params, lr=s.lr, weight_decay=s.weight_decay)
        else:  # Adam, then the group prox in its metric (DESIGN §2.2.1)
            self.opt = ProxAdam(prox_param_groups(self.model, self.groups, params), lr=s.lr,
                                weight_decay=s.weight_decay, prox_metric=s.prox_metric,
                                num_layers=len(self.groups))
        self.sched = build_scheduler(self.opt, s.lr_schedule, s.max_steps, s.warmup_steps)
        self.step = 0
        self.best_score = float("inf")
        self.reference_val: dict | None = None  # first validation: the baseline of selection
        self.best_step = -1
        self.history: list[dict] = []
        self.train_time = 0.0

        ck = resume_checkpoint(self.run_dir) if self.resume else None
        if ck is not None:
            self._load_resume(ck)
        elif s.recompute_bn_stats:
            # meta-trained weights come with unusable running statistics (DESIGN §2.4)
            recompute_bn_stats(self.model, self.stream, self.device)
            self.stream.load_state_dict({"epoch": 0, "pos": 0})
        seed_rank(s.seed, self.dist, ck.state if ck is not None else None, self.step)
        # DDP broadcasts rank 0's parameters: it is also the point where every rank has read
        # the resumed checkpoint before rank 0 writes anything.
        self.net = ddp.data_parallel(self.model, self.dist)
        changed: dict = {}
        if self.main:
            if self.resume:
                changed = update_run_config(self.run_dir, cfg.to_yaml())
                if ck is not None:
                    point_last_at(self.run_dir, ck)
                # what was logged after the checkpoint is trained (and logged) again
                truncate_jsonl(self.run_dir / "metrics.jsonl", self.step)
            else:
                create_run_dir(self.run_dir, cfg.to_yaml(), overwrite=self.overwrite)
        self.logger = RunLogger(self.run_dir, enabled=self.main)
        if self.resume:
            self.logger.log(self.step, "resume", {"from_step": self.step, "changed": changed})
        if ck is not None and self.main and self.best_step >= 0:
            # ``best`` must name the checkpoint the restored selection state calls best (after a
            # fallback to an older checkpoint the pointer may name a newer, abandoned one)
            if not repoint(self.run_dir, "best", self.best_step):
                print(f"note: {self.run_dir}: the best checkpoint (step {self.best_step}) is gone; "
                      "the best is chosen again from the next validations", file=sys.stderr)
                self.best_score, self.best_step = float("inf"), -1
        self._saved_step = self.step if ck is not None else None
        self._mark_boundary()

    def _set_train_mode(self) -> None:
        self.model.train()
        if self.s.freeze_backbone:
            self.model.backbone.eval()  # a frozen backbone keeps its BN statistics too

    def _load_resume(self, ck) -> None:
        s = self.s
        load_model_state(self.model, ck, self.run_dir)
        try:
            self.opt.load_state_dict(ck.state["opt"])
            self.sched.load_state_dict(ck.state["sched"])
            if "weighting" in ck.state:
                self.weighting.load_state_dict(ck.state["weighting"])
            set_rng_state(ck.state["rng"])
            m = ck.meta
            self.step = int(m["step"])
            self.stream.load_state_dict(m["stream"])
            self.best_score = float(m["best_score"])
            self.best_step = int(m["best_step"])
            self.reference_val = m.get("reference_val")
        except (KeyError, ValueError, RuntimeError) as e:
            raise UserError(f"cannot resume from {ck.path}: its training state does not fit this "
                            f"run's config ({type(e).__name__}: {str(e).splitlines()[0]})") from None
        self.history = list(ck.meta.get("history", []))
        self.train_time = float(ck.meta.get("train_time", 0.0))
        # The config of this invocation decides the LR schedule and weight decay from here on.
        self.sched.base_lrs = [s.lr for _ in self.opt.param_groups]
        for group in self.opt.param_groups:
            group["initial_lr"] = s.lr
            group["weight_decay"] = s.weight_decay
            group["lr"] = s.lr * lr_factor(s.lr_schedule, self.step, s.max_steps, s.warmup_steps)

    # ------------------------------------------------------------------ checkpoints
    def _mark_boundary(self) -> None:
        """Remember the data-order and RNG state right after the last completed step."""
        self._boundary = {"step": self.step, "stream": self.stream.state_dict(), "rng": rng_state()}

    def _save(self, best: bool, gather: bool = True, validated: bool = False) -> None:
        """Rank 0 writes the checkpoint; with ``gather`` (a collective: every rank calls it at
        the same step) it holds every rank's RNG state too.  ``validated``: saved right after a
        validation with finite results (recorded as ``val_finite``)."""
        b = self._boundary
        assert b["step"] == self.step, "checkpoints are saved at step boundaries only"
        rngs = gather_rng(b["rng"]) if gather else None
        self._saved_step = self.step
        if not self.main:
            return
        state = {"opt": self.opt.state_dict(), "sched": self.sched.state_dict(),
                 "weighting": self.weighting.state_dict(), "rng": b["rng"]}
        if rngs is not None:
            state["rng_ranks"] = rngs
        meta = {"kind": self.s.kind, "tasks": self.model.tasks, "train_tasks": list(self.tasks),
                "stream": b["stream"], "best_score": self.best_score, "best_step": self.best_step,
                "reference_val": self.reference_val,
                "history": self.history, "train_time": self.train_time, "lam": self.s.lam,
                "source": self.source, "bn_stats": "running",
                "world_size": self.dist.world_size, "val_finite": validated}
        save_checkpoint(self.run_dir, self.step, self.model.state_dict(), state, meta, best=best)

    def _validate(self) -> None:
        """Rank 0 validates; every rank then saves (the others wait in the save's collective).

        Non-finite validation results stop the run on every rank (:class:`NonFiniteError`)
        before anything is saved; a best checkpoint is only ever chosen on a finite score.
        """
        best = ddp.from_main(self._validate_main)
        self._save(best, validated=True)

    def _validate_main(self) -> bool:
        with preserved_rng():
            val = evaluate(self.model, self.val_loader, self.tasks, self.device)
        if nonfinite_metrics(val):
            self.logger.log(self.step, "val", {"val": val, "score": None})
            check_finite_metrics(val, self.step)
        if self.reference_val is None:
            self.reference_val = val
        score = selection_score(val, self.reference_val,
                                {t: task.type for t, task in self.tasks.items()})
        best = math.isfinite(score) and score < self.best_score
        if best:
            self.best_score, self.best_step = score, self.step
        rec: dict[str, Any] = {"val": val, "score": score}
        if self.groups is not None or self.masks is not None:
            st = sparsity_stats(self.model)
            rec["sparsity"] = {"group": st.group_sparsity, "param": st.param_sparsity,
                               "per_layer": [layer["group_sparsity"] for layer in st.per_layer]}
        self.history.append({"step": self.step, "score": score})
        self.logger.log(self.step, "val", rec)
        return best

    def _all_tensors(self) -> dict[str, torch.Tensor]:
        """Parameters and buffers of the model and the loss weighting (checked for NaN / inf)."""
        return {**self.model.state_dict(),
                **{f"weighting.{k}": v for k, v in self.weighting.state_dict().items()}}

    def _diverged(self, e: NonFiniteError) -> NonFiniteError:
        """The error a divergence stops the run with: rank 0 first makes ``last`` name a
        checkpoint whose weights and validation are finite (:func:`keep_last_good`)."""
        self.logger.close()
        note = self._keep_last_good() if self.main else kept_checkpoint_note(self.run_dir)
        key = "finetune.lr" if self.s.kind == "finetune" else "train.lr"
        return diverged_error(e, note, self.run_dir, key, self.s.lr)

    def _keep_last_good(self) -> str:
        def finite_validation(ck) -> bool:
            try:
                load_model_state(self.model, ck, self.run_dir)
            except UserError:
                return False
            with preserved_rng():
                val = evaluate(self.model, self.val_loader, self.tasks, self.device)
            return not nonfinite_metrics(val)

        return keep_last_good(self.run_dir, finite_validation)

    # ------------------------------------------------------------------ loop
    def train(self, stop_after: int | None = None) -> dict[str, Any] | None:
        """Train up to ``max_steps`` and return :meth:`finish`'s results.

        ``stop_after``: stop once this step is done, leaving a resumable checkpoint and no
        results (returns None); the schedule still follows ``max_steps``.
        Ctrl-C saves a checkpoint of the last completed step and raises :class:`RunInterrupted`;
        a NaN / infinite loss, parameter or validation / test result raises
        :class:`NonFiniteError` and keeps the last checkpoint whose weights and validation are
        finite.
        """
        s = self.s
        end = s.max_steps if stop_after is None else max(self.step, min(s.max_steps, stop_after))
        self._set_train_mode()
        bar = progress_bar(range(self.step, end), enabled=self.progress,
                           desc=f"{s.kind} {'+'.join(self.tasks)}", initial=self.step,
                           total=s.max_steps)
        t_last = time.perf_counter()
        try:
            for _ in bar:
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
                ddp.average_gradients(self.weighting.parameters())
                with DeferInterrupt():  # the in-place update is all or nothing
                    if self.masks is not None:
                        mask_zero_group_grads_(self.model, self.masks)
                    lr_now = self.opt.param_groups[0]["lr"]
                    if self.groups is None:
                        self.opt.step()
                    else:
                        self.opt.step(lam=s.lam)  # τ = lr_now·λ·w_g
                    self.sched.step()
                    if self.masks is not None:
                        apply_masks_(self.model, self.masks)
                    check_finite_params(self._all_tensors(), self.step + 1)
                    self.step += 1
                    self._mark_boundary()
                now = time.perf_counter()
                self.train_time += now - t_last
                t_last = now
                if self.step % s.log_every == 0 or self.step == s.max_steps:
                    total_f = float(total_g.detach())
                    rec = {"loss": total_f, "lr": lr_now,
                           "losses": {t: float(v.detach()) for t, v in losses_g.items()}}
                    if self.groups is not None:
                        rec["group_sparsity"] = sparsity_stats(self.model).group_sparsity
                    if s.loss_weighting != "equal":
                        rec["weights"] = self.weighting.weights()
                    self.logger.log(self.step, "train", rec)
                    if hasattr(bar, "set_postfix"):
                        bar.set_postfix(loss=f"{total_f:.3f}")
                if self.step % s.val_every == 0 or self.step == s.max_steps:
                    self._validate()
                    self._set_train_mode()
                    t_last = time.perf_counter()
                elif s.ckpt_every and self.step % s.ckpt_every == 0:
                    self._save(best=False)
        except KeyboardInterrupt:
            if self._saved_step != self.step:
                # an interrupted validation save may have been the best one: keep it so.  No
                # collective here: the other ranks may be anywhere.
                self._save(best=self.best_step == self.step, gather=False)
            self.logger.close()
            raise RunInterrupted(self.step, self.run_dir) from None
        except NonFiniteError as e:
            raise self._diverged(e) from None
        finally:
            if hasattr(bar, "close"):
                bar.close()
        if self.step < s.max_steps:
            if self._saved_step != self.step:
                self._save(best=False)
            self.logger.close()
            return None
        try:
            return self.finish()
        except NonFiniteError as e:
            raise self._diverged(e) from None

    def _global_losses(self, total: torch.Tensor, losses: dict[str, torch.Tensor]
                       ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The losses of the global batch: the mean over ranks of each rank's (detached)
        losses; this rank's own losses in a single process.  Every rank then sees the same
        values, so a non-finite loss stops all of them at the same step."""
        if not self.dist.enabled:
            return total, losses
        names = list(losses)
        acc = torch.promote_types(total.dtype, torch.float32)  # bf16 under autocast → float32
        v = ddp.mean_over_ranks(torch.stack([total.detach().to(acc)]
                                            + [losses[t].detach().to(acc) for t in names]))
        return v[0], {t: v[i + 1] for i, t in enumerate(names)}

    def finish(self) -> dict[str, Any]:
        """Test the best checkpoint and write ``results.json`` (rank 0); every rank returns
        the results."""
        try:
            return ddp.from_main(self._finish)
        finally:
            self.logger.close()

    def _finish(self) -> dict[str, Any]:
        ck = load_run_checkpoint(self.run_dir, "best")
        self.model.load_state_dict(ck.model)
        val = evaluate(self.model, self.val_loader, self.tasks, self.device)
        test = evaluate(self.model, self.test_loader, self.tasks, self.device,
                        progress=False)
        check_finite_metrics(val, checkpoint_step(ck.path), "validation")
        try:
            check_finite_metrics(test, checkpoint_step(ck.path), "test")
        except NonFiniteError as e:  # not a divergence: this checkpoint validated finite
            raise UserError(f"{e}; the checkpoints are kept and their validation was finite, so a "
                            "smaller learning rate would not help: check the test data "
                            f"(metasparsity evaluate {self.run_dir} --split test)") from None
        st = sparsity_stats(self.model)
        results = {
            "kind": self.s.kind,
            "tasks": list(self.tasks),
            "best_step": self.best_step,
            "steps": self.step,
            "lam": self.s.lam,
            "val": val,
            "test": test,
            "sparsity": st.to_dict(),
            "params": sum(p.numel() for p in self.model.parameters()),
            "train_time_s": round(self.train_time, 2),
            **self.s.extra_results,
        }
        if self.source:
            results["source"] = self.source
        write_json(self.run_dir / "results.json", results)
        self.logger.log(self.step, "test", {"test": test})
        return results


def run_train(cfg: Config, run_dir: str | Path, *, resume: bool = False,
              overwrite: bool = False, tasks: list[str] | None = None) -> dict[str, Any]:
    """``metasparsity train``: STL when one task, MTL otherwise; fixed λ when ``sparsity.lam > 0``."""
    settings = settings_from_config(cfg, tasks)
    settings.kind = "fixed_lambda" if settings.lam > 0 else ("stl" if len(settings.tasks) == 1 else "mtl")
    trainer = Trainer(cfg, run_dir, settings, resume=resume, overwrite=overwrite)
    trainer.setup()
    return trainer.train()
