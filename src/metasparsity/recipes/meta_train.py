"""Recipe: meta-sparsity — MAML over task combinations with a learned λ (DESIGN §2.3–2.4).

Each outer step samples ``meta.meta_batch`` task subsets S; every S gets a support batch and a
query batch, and (``meta.lambda_objective = heldout``, λ learned) a λ-validation batch, from
three disjoint streams of training ids (the λ-validation share never updates θ).  The inner
loop adapts θ by K SGD steps on ``L_S(support) + λ·Ω``; θ's gradient is that of the query
losses after adaptation, λ's that of the λ-validation losses (or the query losses with
``lambda_objective = query``); ProxAdam updates θ (and learned loss weights) with the group prox
at the current λ, Adam updates ρ = log λ.  Budget mode (``meta.target``): after each step the
pruned backbone's cost is read off the zeros and λ follows dual ascent; the last step lands on
the budget.

Logged every step to ``metrics.jsonl`` (``kind: "meta"``): λ, the explicit and implicit parts of
dL/dλ, the λ-validation loss, group sparsity, the cost in budget mode, inner and query losses
per task.  ``meta.lambda_init = 0`` gives meta-learning without sparsity ("meta_dense").

Under torchrun (:mod:`metasparsity.train.distributed`) every process samples the same
meta-batch, meta-steps its share of the subsets (a contiguous block of the meta-batch) on the
support / query batches the single process would give them, and the meta-gradients are summed
over processes before the identical outer update on every process; rank 0 alone validates and
writes.  ``train.amp``: bf16 autocast of the meta-step on CUDA.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import torch
from torch.func import functional_call

from metasparsity.builders import build_model
from metasparsity.config import Config
from metasparsity.data import build_dataset, resolve_tasks
from metasparsity.meta import LearnedLambda, TaskSubsetSampler, meta_step, outer_update
from metasparsity.meta.inner import batch_stat_buffers
from metasparsity.meta.meta_batch import (
    batch_filter,
    check_meta_batch,
    local_subsets,
    reduce_meta_result,
)
from metasparsity.sparsity import (
    BackboneCost,
    ProxAdam,
    channel_groups,
    group_gradient_ratios,
    group_norms,
    project_to_budget,
    prox_param_groups,
    sparsity_stats,
)
from metasparsity.training import collectives as ddp
from metasparsity.training.batches import BatchStream, eval_loader, to_device
from metasparsity.training.checkpoint import save_checkpoint
from metasparsity.training.divergence import (
    NonFiniteError,
    check_finite,
    check_finite_metrics,
    check_finite_params,
    diverged_error,
    nonfinite_metrics,
)
from metasparsity.training.evaluation import evaluate, recompute_bn_stats
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
    has_checkpoints,
    keep_last_good,
    kept_checkpoint_note,
    load_model_state,
    point_last_at,
    resume_checkpoint,
)
from metasparsity.training.weighting import LossWeighting
from metasparsity.utils.device import autocast, set_threads
from metasparsity.utils.errors import UserError
from metasparsity.utils.io import read_jsonl, truncate_jsonl, write_json
from metasparsity.utils.rundir import RunInterrupted, create_run_dir, update_run_config

AUTO_LAMBDA_BATCHES = 3  # batches whose mean gradient sets λ0 = auto


def support_query_split(n: int, seed: int) -> tuple[list[int], list[int]]:
    """Disjoint halves of the training indices: support draws from one, query from the other."""
    g = torch.Generator().manual_seed(20_011 + seed)
    perm = torch.randperm(n, generator=g).tolist()
    half = n // 2
    return sorted(perm[:half]), sorted(perm[half:])


def meta_stream_split(n: int, seed: int,
                      lambda_val_fraction: float) -> tuple[list[int], list[int], list[int]]:
    """Three disjoint sets of training indices: support, query and λ-validation (DESIGN §2.4).

    The λ-validation share (``round(fraction·n)``, at least 1) is drawn first; support and query
    split the rest in halves.  Raises ``UserError`` when some set would be empty.
    """
    k = max(1, round(lambda_val_fraction * n))
    if n - k < 2:
        raise UserError(f"data.train_size: {n} training samples cannot feed disjoint support, "
                        f"query and λ-validation streams ({k} held out for λ); use more data "
                        "or meta.lambda_objective=query")
    g = torch.Generator().manual_seed(30_011 + seed)
    perm = torch.randperm(n, generator=g).tolist()
    held, rest = perm[:k], perm[k:]
    sup, qry = support_query_split(len(rest), seed)
    return sorted(rest[i] for i in sup), sorted(rest[i] for i in qry), sorted(held)


class MetaTrainer:
    """Meta-training recipe (``setup`` / ``train`` / ``finish``); see the module docstring.

    ``resume=True`` continues from the run's ``last`` checkpoint (or, when that names a missing
    or incomplete one, the newest complete checkpoint): θ, ρ (λ), both Adam states,
    loss weights, the support / query data order, the subset sampler, the RNG states and the
    step.  Validation re-estimates the BN statistics always from the same training batches and
    draws nothing from the global RNGs, so stopping after any step and resuming gives
    bit-identical θ and λ on CPU.  ``train.ckpt_every`` adds checkpoints between validations.
    ``best`` names the newest checkpoint saved at a validation (with finite results).
    The data order does not depend on the number of processes, so a run may be resumed with
    another number of processes; with the same number, the RNG states of ranks ≥ 1 are restored
    too.
    """

    def __init__(self, cfg: Config, run_dir: str | Path, *, resume: bool = False,
                 overwrite: bool = False, kind: str | None = None) -> None:
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.resume = resume
        self.overwrite = overwrite
        m = cfg.meta
        self.sparse = m.lambda_init == "auto" or m.lambda_init > 0
        self.lambda0: float | None = None  # λ0, resolved (``auto`` is measured in setup)
        self.kind = kind or ("meta_sparsity" if self.sparse else "meta_dense")
        self.budget = self.sparse and m.target is not None
        # λ learns by meta-gradient unless budget mode makes a global λ the multiplier alone
        self.learns = m.learn_lambda and self.sparse and not (
            self.budget and m.lambda_scope == "global")
        self.heldout = self.learns and m.lambda_objective == "heldout"

    def setup(self) -> None:
        cfg, m = self.cfg, self.cfg.meta
        set_threads(cfg.train.num_threads)
        self.dist = ddp.init_distributed(cfg.train.device)
        self.device = self.dist.device
        self.main = self.dist.is_main
        check_meta_batch(m.meta_batch, self.dist.world_size)
        seed = cfg.train.seed
        seed_everything(seed)
        self.tasks = resolve_tasks(cfg, cfg.data.seen_tasks)
        self.train_set = build_dataset(cfg, "train")
        if len(self.train_set) < 2:
            raise UserError("data.train_size: meta-training needs at least 2 training samples")
        nw = cfg.data.num_workers
        r = self.dist.rank
        self.lambda_val: BatchStream | None = None
        if self.heldout:
            sup, qry, held = meta_stream_split(len(self.train_set), seed, m.lambda_val_fraction)
            self.lambda_val = BatchStream(self.train_set, m.batch_size, seed + 3, num_workers=nw,
                                          indices=held, rank=r)
        else:
            sup, qry = support_query_split(len(self.train_set), seed)
        self.support = BatchStream(self.train_set, m.batch_size, seed, num_workers=nw, indices=sup,
                                   rank=r)
        self.query = BatchStream(self.train_set, m.batch_size, seed + 1, num_workers=nw,
                                 indices=qry, rank=r)
        self.bn_stream = BatchStream(self.train_set, cfg.train.batch_size, seed + 2, num_workers=nw)
        self.val_loader = eval_loader(build_dataset(cfg, "val"), cfg.train.eval_batch_size, nw)

        self.model = build_model(cfg, list(self.tasks)).to(self.device)
        self.layers = channel_groups(self.model)
        self.weighting = LossWeighting(list(self.tasks), cfg.train.loss_weighting).to(self.device)
        if not self.sparse:
            self.lambda0 = 0.0
        elif m.lambda_init != "auto":
            self.lambda0 = float(m.lambda_init)
        elif not (self.resume and has_checkpoints(self.run_dir)):  # resumed: from the checkpoint
            self.lambda0 = ddp.from_main(self._auto_lambda0)
            if self.main:
                print(f"λ0 = auto: {self.lambda0:.3g} (median ‖∇_g L‖/w_g over "
                      f"{sum(g.num_groups for g in self.layers)} groups at the start, clamped to "
                      f"[{m.lambda_min:g}, {m.lambda_max:g}])", flush=True)
        self.lam = LearnedLambda(
            lambda_init=self.lambda0 if self.lambda0 is not None else m.lambda_min,
            scope=m.lambda_scope,
            num_layers=len(self.layers), lambda_min=m.lambda_min, lambda_max=m.lambda_max,
            learnable=self.learns).to(self.device)
        self.cost = None
        self.projected = 0  # groups budget mode's last step zeroed
        if self.budget:
            x0 = self.train_set[0][0].unsqueeze(0).to(self.device)
            self.cost = BackboneCost(self.model, x0, self.layers)
        # Adam on θ (and learned loss weights) with the group prox in its metric (DESIGN §2.2.1)
        self.opt_theta = ProxAdam(
            prox_param_groups(self.model, self.layers, extra=self.weighting.parameters()),
            lr=m.outer_lr, prox_metric=cfg.sparsity.prox_metric, num_layers=len(self.layers))
        rho = [p for p in self.lam.parameters() if p.requires_grad]
        self.opt_rho = torch.optim.Adam(rho, lr=m.lambda_lr) if rho else None
        self.sampler = TaskSubsetSampler(list(self.tasks), min_size=m.min_subset_size,
                                         subsets=m.subsets, seed=seed)
        self.step = 0
        self.train_time = 0.0
        ck = resume_checkpoint(self.run_dir) if self.resume else None
        if ck is not None:
            self._load_resume(ck)
        seed_rank(seed, self.dist, ck.state if ck is not None else None, self.step)
        self.mine = local_subsets(m.meta_batch, self.dist)
        if self.dist.enabled:
            # This rank loads the batches of its subsets only: positions j (its block) of each
            # step's M batches, counted from the step boundary where this run starts.
            for stream in self._meta_streams():
                stream.select(batch_filter(stream.count, m.meta_batch, self.mine))
        # rank 0's θ, λ and loss weights everywhere (equal already: same seed or checkpoint); also
        # the point where every rank has read the resumed checkpoint before rank 0 writes
        ddp.broadcast_state(self.model, self.lam, self.weighting)
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
        self._saved_step = self.step if ck is not None else None
        self._mark_boundary()

    # ------------------------------------------------------------------ pieces
    def _prox_scores(self) -> dict[str, torch.Tensor]:
        """``‖D_g ⊙ θ_g‖/w_g`` per group: how large λ must be for the prox in Adam's metric to
        zero the group (η aside), the order in which budget mode's last step removes groups."""
        group_of = {id(p): grp for grp in self.opt_theta.param_groups for p in grp["params"]}
        params = dict(self.model.named_parameters())
        out = {}
        with torch.no_grad():
            for g in self.layers:
                w = params[g.name]
                d = (self.opt_theta.denominator(w, group_of[id(w)])
                     if self.opt_theta.state.get(w) else torch.ones_like(w))
                out[g.name] = group_norms(d * w) / g.group_weight
        return out

    def _meta_streams(self) -> list[BatchStream]:
        """The streams that feed meta-steps, one batch per subset each."""
        return [self.support, self.query] + ([self.lambda_val] if self.lambda_val else [])

    def _auto_lambda0(self) -> float:
        """λ0 = the median over backbone groups of ``‖∇_g L‖/w_g`` at the initial θ (DESIGN
        §2.3): the λ at which the prox in Adam's metric would hold half the groups at zero.
        ``L``: the loss of all seen tasks on ``AUTO_LAMBDA_BATCHES`` batches of the BN stream
        (gradients averaged); batch statistics, no running statistic touched; clamped into
        ``[lambda_min, lambda_max]``."""
        params = dict(self.model.named_parameters())
        buffers = batch_stat_buffers(self.model)
        names = [g.name for g in self.layers]
        tasks = list(self.tasks)
        grads: dict[str, torch.Tensor] = {}
        self.bn_stream.load_state_dict({"epoch": 0, "pos": 0})
        for _ in range(AUTO_LAMBDA_BATCHES):
            x, y = to_device(next(self.bn_stream), self.device)
            out = functional_call(self.model, (params, buffers), (x,), {"tasks": tasks})
            total, _ = self.loss_fn(out, y, tasks)
            for n, g in zip(names, torch.autograd.grad(total, [params[n] for n in names],
                                                       allow_unused=True)):
                if g is not None:
                    grads[n] = grads.get(n, 0) + g.detach() / AUTO_LAMBDA_BATCHES
        self.bn_stream.load_state_dict({"epoch": 0, "pos": 0})
        lam0 = float(group_gradient_ratios(grads, self.layers).median())
        m = self.cfg.meta
        if not math.isfinite(lam0):
            raise UserError(f"meta.lambda_init=auto: the initial gradient scale is {lam0}; "
                            "give meta.lambda_init a number")
        return min(max(lam0, m.lambda_min), m.lambda_max)

    def loss_fn(self, outputs, targets, subset):
        losses = {t: self.tasks[t].loss(outputs[t], targets[t]) for t in subset}
        return self.weighting(losses), losses

    def _mark_boundary(self) -> None:
        """Remember the data-order, sampler and RNG state right after the last completed step."""
        self._boundary = {"step": self.step, "support": self.support.state_dict(),
                          "lambda_val": (self.lambda_val.state_dict()
                                         if self.lambda_val is not None else None),
                          "query": self.query.state_dict(), "sampler": self.sampler.state_dict(),
                          "rng": rng_state()}

    def _state(self, validated: bool = False) -> tuple[dict, dict]:
        b = self._boundary
        assert b["step"] == self.step, "checkpoints are saved at step boundaries only"
        state = {"opt_theta": self.opt_theta.state_dict(), "lam": self.lam.state_dict(),
                 "weighting": self.weighting.state_dict(), "rng": b["rng"]}
        if self.opt_rho is not None:
            state["opt_rho"] = self.opt_rho.state_dict()
        meta = {"kind": self.kind, "tasks": self.model.tasks, "support": b["support"],
                "query": b["query"], "lambda_val": b["lambda_val"], "sampler": b["sampler"],
                "train_time": self.train_time, "lambda": self.lam.value(),
                "lambda_init": self.lambda0,
                "bn_stats": "recompute", "val_finite": validated}
        return state, meta

    def _save(self, gather: bool = True, validated: bool = False) -> None:
        """Rank 0 writes the checkpoint; with ``gather`` (a collective: every rank calls it at
        the same step) it holds every rank's RNG state too.  ``validated``: saved right after a
        validation with finite results; it becomes ``best``."""
        rngs = gather_rng(self._boundary["rng"]) if gather else None
        self._saved_step = self.step
        if not self.main:
            return
        state, meta = self._state(validated)
        if rngs is not None:
            state["rng_ranks"] = rngs
        save_checkpoint(self.run_dir, self.step, self.model.state_dict(), state, meta,
                        best=validated)

    def _load_resume(self, ck) -> None:
        m = self.cfg.meta
        load_model_state(self.model, ck, self.run_dir)
        try:
            self.opt_theta.load_state_dict(ck.state["opt_theta"])
            self.lam.load_state_dict(ck.state["lam"])
            self.weighting.load_state_dict(ck.state["weighting"])
            if self.opt_rho is not None:
                self.opt_rho.load_state_dict(ck.state["opt_rho"])
            set_rng_state(ck.state["rng"])
            self.step = int(ck.meta["step"])
            self.support.load_state_dict(ck.meta["support"])
            self.query.load_state_dict(ck.meta["query"])
            if self.lambda_val is not None:
                self.lambda_val.load_state_dict(ck.meta["lambda_val"])
            self.sampler.load_state_dict(ck.meta["sampler"])
        except (KeyError, ValueError, RuntimeError) as e:
            raise UserError(f"cannot resume from {ck.path}: its training state does not fit this "
                            f"run's config ({type(e).__name__}: {str(e).splitlines()[0]})") from None
        self.train_time = float(ck.meta.get("train_time", 0.0))
        if self.lambda0 is None:  # auto, resumed: the λ0 measured when the run started
            self.lambda0 = float(ck.meta.get("lambda_init") or m.lambda_min)
        # the config of this invocation decides the learning rates from here on
        for group in self.opt_theta.param_groups:
            group["lr"] = m.outer_lr
        if self.opt_rho is not None:
            for group in self.opt_rho.param_groups:
                group["lr"] = m.lambda_lr

    def validate(self) -> dict[str, Any]:
        """Validation metrics of the meta-parameters, BN statistics re-estimated first.

        The statistics always come from the first ``BN_STATS_BATCHES`` batches of the
        same stream, and the global RNGs are left as they were, so validating changes nothing
        that later training uses and its result depends only on the weights.
        """
        self.bn_stream.load_state_dict({"epoch": 0, "pos": 0})
        with preserved_rng():
            recompute_bn_stats(self.model, self.bn_stream, self.device)
            return evaluate(self.model, self.val_loader, self.tasks, self.device)

    def _validate_and_log(self) -> None:
        """Rank 0: validate, log, and stop the run (on every rank, through
        :func:`~metasparsity.train.distributed.from_main`) when the results are not finite."""
        val = self.validate()
        self.logger.log(self.step, "val", {"val": val})
        check_finite_metrics(val, self.step)

    def _all_tensors(self) -> dict[str, torch.Tensor]:
        """θ with BN buffers, ρ and the loss weights (checked for NaN / inf every step)."""
        return {**self.model.state_dict(),
                **{f"lam.{k}": v for k, v in self.lam.state_dict().items()},
                **{f"weighting.{k}": v for k, v in self.weighting.state_dict().items()}}

    def _diverged(self, e: NonFiniteError) -> NonFiniteError:
        """The error a divergence stops the run with: rank 0 first makes ``last`` name a
        checkpoint whose weights and validation are finite (:func:`keep_last_good`)."""
        self.logger.close()
        note = kept_checkpoint_note(self.run_dir)
        if self.main:
            def finite_validation(ck) -> bool:
                try:
                    load_model_state(self.model, ck, self.run_dir)
                except UserError:
                    return False
                return not nonfinite_metrics(self.validate())

            note = keep_last_good(self.run_dir, finite_validation)
        return diverged_error(e, note, self.run_dir, "meta.outer_lr", self.cfg.meta.outer_lr)

    # ------------------------------------------------------------------ loop
    def train(self, stop_after: int | None = None) -> dict[str, Any] | None:
        """Meta-train up to ``meta.steps`` and return :meth:`finish`'s results.

        ``stop_after``: stop once this step is done, leaving a resumable checkpoint and no
        results (returns None).  Ctrl-C saves a checkpoint of the last completed step and raises
        :class:`RunInterrupted`; a non-finite query loss, λ, parameter or validation result
        raises :class:`NonFiniteError`, keeping the last checkpoint whose weights and validation
        are finite.
        """
        cfg, m = self.cfg, self.cfg.meta
        ckpt_every = cfg.train.ckpt_every
        end = m.steps if stop_after is None else max(self.step, min(m.steps, stop_after))
        self.model.train()
        bar = progress_bar(range(self.step, end), enabled=cfg.train.progress and self.main,
                           desc=f"meta-train ({self.kind})", initial=self.step, total=m.steps)
        t_last = time.perf_counter()
        try:
            for _ in bar:
                subsets = self.sampler.sample(m.meta_batch)
                batches, held = [], []
                for j, s in enumerate(subsets):
                    if j not in self.mine:  # another rank's subset: its batches are not loaded
                        for stream in self._meta_streams():
                            stream.skip()
                        continue
                    sx, sy = to_device(next(self.support), self.device)
                    qx, qy = to_device(next(self.query), self.device)
                    batches.append((tuple(s), sx, sy, qx, qy))
                    if self.lambda_val is not None:
                        held.append(to_device(next(self.lambda_val), self.device))
                extra = dict(self.weighting.named_parameters())
                with autocast(self.device, cfg.train.amp):
                    res = meta_step(self.model, self.lam, self.layers, batches, self.loss_fn,
                                    inner_lr=m.inner_lr, inner_steps=m.inner_steps,
                                    mode=m.meta_grad, outer_penalty=m.outer_penalty,
                                    extra_params=extra,
                                    lambda_batches=held if self.heldout else None)
                # the sum over every rank's subsets (the identity in one process)
                res = reduce_meta_result(res, subsets, self.model, self.lam, extra)
                check_finite(res.query_loss, self.step + 1, "query loss")
                with DeferInterrupt():  # the in-place update is all or nothing
                    outer_update(self.model, self.lam, res, self.opt_theta, self.opt_rho,
                                 prox_step=m.outer_lr if self.sparse else 0.0, layers=self.layers,
                                 extra_params=dict(self.weighting.named_parameters()))
                    cost = None
                    if self.cost is not None:  # budget mode: dual ascent on the multiplier
                        cost = self.cost.fraction(self.model, m.target_measure)
                        self.lam.dual_step_((cost - m.target) / m.target, m.lambda_lr)
                        if self.step + 1 == m.steps:  # the last step lands on the budget
                            self.projected = project_to_budget(
                                self.model, self.cost, m.target_measure, m.target,
                                self._prox_scores())
                            cost = self.cost.fraction(self.model, m.target_measure)
                    lam_now = self.lam.value()
                    lam_list = lam_now if isinstance(lam_now, list) else [lam_now]
                    if not all(math.isfinite(v) for v in lam_list):
                        raise NonFiniteError(f"λ became non-finite at step {self.step + 1} "
                                             f"({lam_now})", step=self.step + 1, task="λ")
                    check_finite_params(self._all_tensors(), self.step + 1)
                    self.step += 1
                    self._mark_boundary()
                now = time.perf_counter()
                self.train_time += now - t_last
                t_last = now
                if self.step % m.log_every == 0 or self.step == m.steps:
                    st = sparsity_stats(self.model)
                    rec = {
                        "lambda": lam_now,
                        "grad_lambda_explicit": _scalar(res.grad_lambda_explicit),
                        "grad_lambda_implicit": _scalar(res.grad_lambda_implicit),
                        "lambda_objective": (m.lambda_objective if self.learns else None),
                        "lambda_val_loss": res.lambda_val_loss,
                        "group_sparsity": st.group_sparsity,
                        "param_sparsity": st.param_sparsity,
                        "query_loss": {t: float(v) for t, v in res.query_loss.items()},
                        "inner_loss": {t: float(v) for t, v in res.inner_loss.items()},
                        "subsets": ["+".join(s) for s in subsets],
                    }
                    if cost is not None:
                        rec["cost"] = cost
                        rec["target"] = m.target
                    self.logger.log(self.step, "meta", rec)
                    if hasattr(bar, "set_postfix"):
                        bar.set_postfix(lam=f"{_mean(lam_list):.2e}",
                                        sparsity=f"{100 * st.group_sparsity:.0f}%")
                if self.step % m.val_every == 0 or self.step == m.steps:
                    ddp.from_main(self._validate_and_log)  # the others wait for rank 0
                    self._save(validated=True)
                    self.model.train()
                    t_last = time.perf_counter()
                elif ckpt_every and self.step % ckpt_every == 0:
                    self._save()
        except KeyboardInterrupt:
            if self._saved_step != self.step:
                self._save(gather=False)  # no collective: the other ranks may be anywhere
            self.logger.close()
            raise RunInterrupted(self.step, self.run_dir) from None
        except NonFiniteError as e:
            raise self._diverged(e) from None
        finally:
            if hasattr(bar, "close"):
                bar.close()
        if self.step < m.steps:
            if self._saved_step != self.step:
                self._save()
            self.logger.close()
            return None
        try:
            return self.finish()
        except NonFiniteError as e:
            raise self._diverged(e) from None

    def finish(self) -> dict[str, Any]:
        """Validate, write ``results.json`` and the plots (rank 0); every rank returns the
        results."""
        try:
            return ddp.from_main(self._finish)
        finally:
            self.logger.close()

    def _finish(self) -> dict[str, Any]:
        val = self.validate()
        check_finite_metrics(val, self.step)
        st = sparsity_stats(self.model)
        lam_final = self.lam.value()
        per_layer_lam = lam_final if isinstance(lam_final, list) else None
        for layer, v in zip(st.per_layer, per_layer_lam or []):
            layer["lambda"] = v
        records = [r for r in read_jsonl(self.run_dir / "metrics.jsonl") if r.get("kind") == "meta"]
        lam_traj = [{"step": r["step"], "lambda": r["lambda"]} for r in records]
        results = {
            "kind": self.kind,
            "tasks": list(self.tasks),
            "steps": self.step,
            "lambda_init": self.lambda0,
            "lambda_init_auto": self.cfg.meta.lambda_init == "auto",
            "lambda_final": lam_final,
            "lambda_trajectory": lam_traj,
            "lambda_objective": self.cfg.meta.lambda_objective if self.learns else None,
            "budget": ({"measure": self.cfg.meta.target_measure, "target": self.cfg.meta.target,
                        "cost": self.cost.summary(self.model),
                        "projected_groups": self.projected} if self.cost is not None else None),
            "val": val,
            "sparsity": st.to_dict(),
            "params": sum(p.numel() for p in self.model.parameters()),
            "train_time_s": round(self.train_time, 2),
        }
        write_json(self.run_dir / "results.json", results)
        if records:
            from metasparsity.report.plots import plot_meta_training, plot_per_layer_sparsity

            plot_meta_training(records, self.run_dir / "meta_training.png",
                               title=f"{self.kind}: λ0 = {self.lambda0:.3g}, "
                               f"{self.cfg.meta.meta_grad}, K = {self.cfg.meta.inner_steps}")
            plot_per_layer_sparsity(st.per_layer, self.run_dir / "per_layer_sparsity.png",
                                    title=f"{self.kind}: per-layer group sparsity"
                                    + (" and λ" if per_layer_lam else ""),
                                    lambdas=per_layer_lam)
        return results


def _scalar(v) -> float | list[float]:
    if v is None:
        return 0.0
    if isinstance(v, torch.Tensor):
        v = v.detach().cpu()
        return float(v.sum()) if v.numel() > 1 else float(v)
    return float(v)


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def run_meta_train(cfg: Config, run_dir: str | Path, *, resume: bool = False,
                   overwrite: bool = False) -> dict[str, Any]:
    trainer = MetaTrainer(cfg, run_dir, resume=resume, overwrite=overwrite)
    trainer.setup()
    return trainer.train()
