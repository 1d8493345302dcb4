"""Recipe ``meta-train``: meta-sparsity, MAML over task combinations with a learned λ (DESIGN
§2.3–2.4); ``meta.lambda_init = 0`` gives meta-learning without sparsity (``meta_dense``) and
``meta.target`` budget mode.  Logs λ, the parts of dL/dλ and the losses every step.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from metasparsity.builders import build_model
from metasparsity.config import Config
from metasparsity.data import build_dataset, resolve_tasks
from metasparsity.meta import (
    LearnedLambda,
    RelativeClip,
    TaskSubsetSampler,
    meta_step,
    outer_update,
)
from metasparsity.meta.lam import ramped_target
from metasparsity.meta.lambda_init import auto_lambda0
from metasparsity.meta.meta_batch import (
    batch_filter,
    check_meta_batch,
    local_subsets,
    reduce_meta_result,
)
from metasparsity.meta.prox_path import ProxPath, make_prox_path
from metasparsity.meta.sampler import meta_stream_split, support_query_split
from metasparsity.recipes import run_recipe
from metasparsity.recipes.train import check_resumed_steps, refuse_train_budget
from metasparsity.sparsity import (
    BackboneCost,
    CutWatch,
    ProxAdam,
    channel_groups,
    land_prox,
    penalised_layers,
    prox_param_groups,
    report_cut,
    sparsity_stats,
)
from metasparsity.training import collectives
from metasparsity.training.batches import BatchStream, clamp_notice, eval_loader, to_device
from metasparsity.training.divergence import (
    NonFiniteError,
    check_finite,
    check_finite_metrics,
    check_finite_params,
    overflow_is_divergence,
)
from metasparsity.training.evaluation import evaluate, recompute_bn_stats
from metasparsity.training.rng import preserved_rng, set_rng_state
from metasparsity.training.run_checkpoints import has_checkpoints, load_model_state, repoint
from metasparsity.training.schedule import lr_factor
from metasparsity.training.session import RunSession
from metasparsity.training.weighting import LossWeighting
from metasparsity.utils.device import autocast
from metasparsity.utils.errors import UserError
from metasparsity.utils.io import read_jsonl

AUTO_LAMBDA_BATCHES = 3  # batches whose mean gradient sets λ0 = auto


class MetaTrainer:
    """Meta-training: ``setup()``, ``train()``, ``cleanup()``.

    Each outer step samples ``meta.meta_batch`` task subsets; every subset gets a support and a
    query batch and (λ learned with ``lambda_objective = heldout``) a λ-validation batch, from
    three disjoint streams of training ids.  :func:`~metasparsity.meta.meta_step` gives the
    meta-gradients, :func:`~metasparsity.meta.outer_update` applies them (ProxAdam on θ and the
    loss weights with the group prox at the current λ, Adam on ρ = log λ).  Budget mode: after
    each step λ follows dual ascent on the pruned backbone's cost; the last step lands on the
    budget.  Under torchrun every rank meta-steps its block of the meta-batch and the results
    are summed (:mod:`metasparsity.meta.meta_batch`).  ``train.amp``: bf16 autocast on CUDA.

    ``resume=True`` continues from the last complete checkpoint: θ, ρ, both Adam states, loss
    weights, the stream and sampler states, the RNG states and the step.  Validation
    re-estimates the BN statistics always from the same training batches and draws nothing from
    the global RNGs, so stopping after any step and resuming gives bit-identical θ and λ on CPU.
    ``best`` names the newest checkpoint saved at a validation (with finite results).  The data
    order does not depend on the number of processes.
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
        self.through_prox = self.heldout and m.lambda_through_prox

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        cfg, m = self.cfg, self.cfg.meta
        seed = cfg.train.seed
        self.session = RunSession(
            self.run_dir, seed=seed, device=cfg.train.device, num_threads=cfg.train.num_threads,
            resume=self.resume, overwrite=self.overwrite, progress=cfg.train.progress,
            lr_key="meta.outer_lr", lr=m.outer_lr)
        self.dist = self.session.dist
        self.cut_watch = CutWatch(str(self.run_dir))  # at every validation
        self.device = self.dist.device
        self.main = self.dist.is_main
        check_meta_batch(m.meta_batch, self.dist.world_size)
        self.tasks = resolve_tasks(cfg, cfg.data.seen_tasks)
        self.train_set = build_dataset(cfg, "train")
        if len(self.train_set) < 2:
            raise UserError("data.train_size: meta-training needs at least 2 training samples")
        nw, r = cfg.data.num_workers, self.dist.rank
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
        for stream, key in ((self.support, "meta.batch_size (support)"),
                            (self.query, "meta.batch_size (query)"),
                            (self.lambda_val, "meta.batch_size (λ-validation)"),
                            (self.bn_stream, "train.batch_size (BatchNorm statistics)")):
            notice = clamp_notice(stream, key) if stream is not None else None
            if notice and self.main:
                print(notice, flush=True)
        self.val_loader = eval_loader(build_dataset(cfg, "val"), cfg.train.eval_batch_size, nw)

        self.model = build_model(cfg, list(self.tasks)).to(self.device)
        self.layers = channel_groups(self.model)
        if cfg.sparsity.penalize != "all":
            x0 = self._example_input()
            self.layers = penalised_layers(self.model, x0, self.layers, cfg.sparsity.penalize)
        self.weighting = LossWeighting(list(self.tasks), cfg.train.loss_weighting).to(self.device)
        if not self.sparse:
            self.lambda0 = 0.0
        elif m.lambda_init != "auto":
            self.lambda0 = float(m.lambda_init)
        elif not (self.resume and has_checkpoints(self.run_dir)):  # resumed: from the checkpoint
            self.lambda0 = collectives.from_main(self._auto_lambda0)
            if self.main:
                print(f"λ0 = auto: {self.lambda0:.3g} (median ‖∇_g L‖/w_g over "
                      f"{sum(g.num_groups for g in self.layers if g.group_weight > 0)} penalised "
                      f"groups at the start, clamped to "
                      f"[{m.lambda_min:g}, {m.lambda_max:g}])", flush=True)
        self.lam = LearnedLambda(
            lambda_init=self.lambda0 if self.lambda0 is not None else m.lambda_min,
            scope=m.lambda_scope,
            num_layers=len(self.layers), lambda_min=m.lambda_min, lambda_max=m.lambda_max,
            learnable=self.learns).to(self.device)
        self.cost = None
        self.projected = 0  # groups the landing's last step zeroed after its prox (rounding)
        self.landing: dict[str, Any] | None = None  # the last step's prox: s, s·λ, groups
        # meta.final_zero_window: the group sparsity of the last N outer steps (not budget mode)
        self.window = m.final_zero_window if self.sparse and not self.budget else 0
        self.recent_zeros: list[int] = []  # zero groups after each of the last N steps
        if self.budget or self.window:
            x0 = self._example_input()
            self.cost = BackboneCost(self.model, x0, self.layers)
        if self.budget:
            self.cost.check_target(self.model, m.target_measure, m.target)
        # Adam on θ (and learned loss weights) with the group prox in its metric (DESIGN §2.2.1)
        self.opt_theta = ProxAdam(
            prox_param_groups(self.model, self.layers, extra=self.weighting.parameters()),
            lr=m.outer_lr, betas=(m.outer_beta1, 0.999), prox_metric=cfg.sparsity.prox_metric,
            num_layers=len(self.layers))
        self.clip = RelativeClip(m.clip_grad)  # meta.clip_grad = 0: measures the norm only
        rho = [p for p in self.lam.parameters() if p.requires_grad]
        self.opt_rho = torch.optim.Adam(rho, lr=m.lambda_lr) if rho else None
        self.sampler = TaskSubsetSampler(list(self.tasks), min_size=m.min_subset_size,
                                         subsets=m.subsets, seed=seed)
        self.step = 0
        self.session.restore(self._load_resume)
        self.mine = local_subsets(m.meta_batch, self.dist)
        if self.dist.enabled:
            # This rank loads the batches of its subsets only: positions j (its block) of each
            # step's M batches, counted from the step boundary where this run starts.
            for stream in self._meta_streams():
                stream.select(batch_filter(stream.count, m.meta_batch, self.mine))
        # rank 0's θ, λ and loss weights everywhere (equal already: same seed or checkpoint); also
        # the point where every rank has read the resumed checkpoint before rank 0 writes
        collectives.broadcast_state(self.model, self.lam, self.weighting)
        self.session.open(cfg.to_yaml(), snapshot=self._snapshot, model=self.model,
                          val_metrics=self.validate)
        ck = self.session.checkpoint
        if ck is not None and self.main and ck.meta.get("val_finite") is True:
            # ``best`` names the newest checkpoint saved at a validation: this one (a kill
            # between its ``last`` and ``best`` pointers left ``best`` at an older one)
            repoint(self.run_dir, "best", self.step)
        self._mark()

    def _example_input(self) -> torch.Tensor:
        """The first training image as a batch of one: traces the backbone (groups, costs,
        removable channels, the cut check)."""
        return self.train_set[0][0].unsqueeze(0).to(self.device)

    def _meta_streams(self) -> list[BatchStream]:
        """The streams that feed meta-steps, one batch per subset each."""
        return [self.support, self.query] + ([self.lambda_val] if self.lambda_val else [])

    def _auto_lambda0(self) -> float:
        """:func:`~metasparsity.meta.lambda_init.auto_lambda0` on the first
        ``AUTO_LAMBDA_BATCHES`` batches of the BN stream (rewound afterwards)."""
        self.bn_stream.load_state_dict({"epoch": 0, "pos": 0})
        batches = [to_device(next(self.bn_stream), self.device) for _ in range(AUTO_LAMBDA_BATCHES)]
        self.bn_stream.load_state_dict({"epoch": 0, "pos": 0})
        m = self.cfg.meta
        return auto_lambda0(self.model, self.layers, batches, self.loss_fn, list(self.tasks),
                            m.lambda_min, m.lambda_max)

    def loss_fn(self, outputs, targets, subset):
        losses = {t: self.tasks[t].loss(outputs[t], targets[t]) for t in subset}
        return self.weighting(losses), losses

    def _load_resume(self, ck) -> None:
        m = self.cfg.meta
        check_resumed_steps(ck.meta, m.steps, "meta.steps", self.run_dir)
        load_model_state(self.model, ck, self.run_dir)
        self.opt_theta.load_state_dict(ck.state["opt_theta"])
        self.opt_theta.set_group_weights(self.layers)
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
        if "clip" in ck.state:  # checkpoints before meta.clip_grad: no history yet
            self.clip.load_state_dict(ck.state["clip"])
        if self.window:  # a resume with a smaller window averages only its own N steps
            self.recent_zeros = [int(v) for v in ck.meta.get("recent_zeros", [])][-self.window:]
        self.landing = ck.meta.get("landing")  # a run stopped after its last step keeps them
        self.projected = int(ck.meta.get("projected_groups", 0))
        if self.lambda0 is None:  # auto, resumed: the λ0 measured when the run started
            self.lambda0 = float(ck.meta.get("lambda_init") or m.lambda_min)
        # the config of this invocation decides the learning rates from here on
        self._set_outer_lr()

    def _set_outer_lr(self) -> None:
        """The rates of the coming outer step, a function of the step alone: θ's Adam rate (and
        prox step size) ``meta.outer_lr`` and ρ's Adam rate ``meta.lambda_lr``, both times the
        factor of ``meta.lr_schedule`` with ``meta.warmup_steps``: a learned λ anneals with θ,
        so the last steps train θ at a settled λ.  Budget mode's dual step keeps its rate: the
        multiplier must follow the cost for as long as the zeros move."""
        m = self.cfg.meta
        f = lr_factor(m.lr_schedule, self.step, m.steps, m.warmup_steps)
        for group in self.opt_theta.param_groups:
            group["lr"] = m.outer_lr * f
            group["betas"] = (m.outer_beta1, group["betas"][1])
        if self.opt_rho is not None:
            held = self.step < round(m.lambda_hold * m.steps)  # meta.lambda_hold: λ stays λ0
            for group in self.opt_rho.param_groups:
                group["lr"] = 0.0 if held else m.lambda_lr * f

    def _mark(self) -> None:
        self.session.mark(self.step, support=self.support.state_dict(),
                          lambda_val=(self.lambda_val.state_dict()
                                      if self.lambda_val is not None else None),
                          query=self.query.state_dict(), sampler=self.sampler.state_dict())

    def _snapshot(self, b: dict[str, Any]) -> tuple[dict, dict, dict]:
        """What a checkpoint of boundary ``b`` holds (:meth:`RunSession.save`)."""
        state = {"opt_theta": self.opt_theta.state_dict(), "lam": self.lam.state_dict(),
                 "weighting": self.weighting.state_dict(), "clip": self.clip.state_dict()}
        if self.opt_rho is not None:
            state["opt_rho"] = self.opt_rho.state_dict()
        meta = {"kind": self.kind, "tasks": self.model.tasks, "support": b["support"],
                "query": b["query"], "lambda_val": b["lambda_val"], "sampler": b["sampler"],
                "lambda": self.lam.value(), "lambda_init": self.lambda0, "bn_stats": "recompute",
                "landing": self.landing, "projected_groups": self.projected,
                "recent_zeros": self.recent_zeros}
        return self.model.state_dict(), state, meta

    # ------------------------------------------------------------------ loop
    def train(self, stop_after: int | None = None) -> dict[str, Any] | None:
        """Meta-train up to ``meta.steps`` and return the results (also in ``results.json``).

        ``stop_after``: stop once this step is done, leaving a resumable checkpoint and no
        results (returns None).  Ctrl-C and non-finite values (query loss, λ, parameters,
        validation): :meth:`RunSession.running`.
        """
        cfg, m, session = self.cfg, self.cfg.meta, self.session
        self.model.train()
        with session.running(m.steps, stop_after, desc=f"meta-train ({self.kind})") as steps:
            for _ in steps:
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
                with overflow_is_divergence(self.step + 1):
                    # the in-place update (an interrupt waits for the whole step: session.running)
                    self._set_outer_lr()
                    grad_norm, clip_scale = self.clip(res.grads_theta)
                    lam_step = self.lam().detach().clone()  # the λ of this step's prox
                    try:
                        upd = outer_update(
                            self.model, self.lam, res, self.opt_theta, self.opt_rho,
                            prox_step=m.outer_lr if self.sparse else 0.0, layers=self.layers,
                            extra_params=dict(self.weighting.named_parameters()),
                            take_prox=not self._landing(),
                            prox_path=self._prox_path(batches, held) if self.through_prox
                            else None)
                    except NonFiniteError as e:  # λ's meta-gradient: the step is ours to name
                        raise NonFiniteError(f"{e.detail} at step {self.step + 1}; λ is "
                                             "not updated",
                                             step=self.step + 1, task=e.task) from None
                    cost = self._budget_step(lam_step) if self.budget else None
                    if self.window:
                        self._window_step(lam_step)
                    lam_now = self.lam.value()
                    lam_list = lam_now if isinstance(lam_now, list) else [lam_now]
                    if not all(math.isfinite(v) for v in lam_list):
                        raise NonFiniteError(f"λ became non-finite at step {self.step + 1} "
                                             f"({lam_now})", step=self.step + 1, task="λ")
                    check_finite_params(self._all_tensors(), self.step + 1)
                    self.step += 1
                    self._mark()
                if self.step % m.log_every == 0 or self.step == m.steps:
                    st = sparsity_stats(self.model)
                    rec = self._record(res, subsets, st, lam_now, cost)
                    rec["grad_lambda_prox"] = (None if upd["grad_lambda_prox"] is None
                                               else _scalar(upd["grad_lambda_prox"]))
                    session.log("meta", {**rec, "grad_norm": grad_norm, "clip_scale": clip_scale})
                    if hasattr(steps, "set_postfix"):
                        steps.set_postfix(lam=f"{sum(lam_list) / len(lam_list):.2e}",
                                          sparsity=f"{100 * st.group_sparsity:.0f}%")
                if self.step % m.val_every == 0 or self.step == m.steps:
                    collectives.from_main(self._validate)  # the others wait for rank 0
                    session.save(best=True, validated=True)
                    self.model.train()
                elif cfg.train.ckpt_every and self.step % cfg.train.ckpt_every == 0:
                    session.save()
        return session.finish(self._results)

    def _prox_path(self, batches, held) -> ProxPath:
        """``meta.lambda_through_prox``: λ's gradient through this outer step's prox, from the
        λ-validation batches of this process's subsets (:func:`make_prox_path`)."""
        path = make_prox_path(self.model, self.layers, self.opt_theta,
                              [(b[0], h) for b, h in zip(batches, held)], self.loss_fn)

        def under_autocast(before, lam):
            with autocast(self.device, self.cfg.train.amp):
                return path(before, lam)

        return under_autocast

    def _landing(self) -> bool:
        """Whether this outer step is the last one of budget mode or of
        ``meta.final_zero_window`` (it takes its own prox)."""
        return self.cost is not None and self.sparse and self.step + 1 == self.cfg.meta.steps

    def _land(self, lam: torch.Tensor, measure: str, target: float) -> dict[str, Any] | None:
        """The last step's prox at the multiple ``s·λ`` of the step's λ (``lam``, before ρ's
        update) that just brings the backbone's ``measure`` within ``target``
        (:func:`~metasparsity.sparsity.land_prox`).  Returns ``{scale, lambda,
        groups_vs_lambda}`` (None when out of reach: the prox at λ)."""
        landing, self.projected = land_prox(self.model, self.opt_theta, self.cost, measure,
                                            target, lam)
        return landing

    def _window_step(self, lam: torch.Tensor) -> None:
        """``meta.final_zero_window`` = N: remember this step's number of zero groups; on the last
        step (whose outer update left the prox out) land on the smallest zero set at least as
        large as the mean of the N steps before it.  One step's zero set is a sample of a
        sawtooth (docs/lambda_study.md, "Damping the sawtooth"); its mean over a window is what
        the learned λ keeps zero."""
        n = sum(g.num_groups for g in self.layers)
        if self._landing() and not self.recent_zeros:  # a one-step run: nothing to average
            self.opt_theta.apply_prox(lam)
        elif self._landing():
            k = -(-sum(self.recent_zeros) // len(self.recent_zeros))  # ⌈mean⌉ groups
            # the target as BackboneCost.fraction computes it for k zero groups: exact compare
            self.landing = self._land(lam, "groups", 1.0 - k / n)
            if self.landing is not None:
                self.landing.update(window=len(self.recent_zeros),
                                    mean_group_sparsity=sum(self.recent_zeros)
                                    / len(self.recent_zeros) / n, target_zero_groups=k)
        zeros = sparsity_stats(self.model, layers=self.layers).num_zero_groups
        self.recent_zeros = (self.recent_zeros + [zeros])[-self.window:]

    def _budget_step(self, lam: torch.Tensor) -> float:
        """Budget mode, after the outer update: on the last step, the prox at the multiple
        ``s·λ`` of the step's λ (``lam``, before ρ's update) that just meets the budget
        (:func:`land_on_budget`: from either side, groups revive or go); then dual ascent on
        the multiplier.  Returns the backbone's cost (a fraction of dense)."""
        m = self.cfg.meta
        if self._landing():
            self.landing = self._land(lam, m.target_measure, m.target)
        cost = self.cost.fraction(self.model, m.target_measure)
        target = self._target(self.step + 1)
        self.lam.dual_step_((cost - target) / target, m.lambda_lr)
        return cost

    def _target(self, step: int) -> float:
        """Budget mode's target after outer step ``step``: :func:`ramped_target`."""
        m = self.cfg.meta
        return ramped_target(m.target, step, round(m.target_ramp * m.steps))

    def _record(self, res, subsets, st, lam_now, cost) -> dict[str, Any]:
        """The ``meta`` record of ``metrics.jsonl`` for one step."""
        rec = {
            "lambda": lam_now,
            "grad_lambda_explicit": _scalar(res.grad_lambda_explicit),
            "grad_lambda_implicit": _scalar(res.grad_lambda_implicit),
            "lambda_objective": (self.cfg.meta.lambda_objective if self.learns else None),
            "lambda_val_loss": res.lambda_val_loss,
            "group_sparsity": st.group_sparsity,
            "param_sparsity": st.param_sparsity,
            "query_loss": {t: float(v) for t, v in res.query_loss.items()},
            "inner_loss": {t: float(v) for t, v in res.inner_loss.items()},
            "subsets": ["+".join(s) for s in subsets],
        }
        if cost is not None:
            rec["cost"] = cost
            rec["target"] = self._target(self.step)
        return rec

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

    def _validate(self) -> None:
        """Rank 0: validate, log, and stop the run (on every rank, through
        :func:`~metasparsity.training.collectives.from_main`) when the results are not finite."""
        val = self.validate()
        rec: dict[str, Any] = {"val": val}
        if self.sparse:
            rec["backbone_cut"] = self.cut_watch(self.model, self._example_input(), self.step)
        self.session.log("val", rec)
        check_finite_metrics(val, self.step)

    def _all_tensors(self) -> dict[str, torch.Tensor]:
        """θ with BN buffers, ρ and the loss weights (checked for NaN / inf every step)."""
        return {**self.model.state_dict(),
                **{f"lam.{k}": v for k, v in self.lam.state_dict().items()},
                **{f"weighting.{k}": v for k, v in self.weighting.state_dict().items()}}

    def _results(self) -> dict[str, Any]:
        """Rank 0: validate the final meta-parameters; write the λ and per-layer plots."""
        m = self.cfg.meta
        val = self.validate()
        check_finite_metrics(val, self.step)
        st = sparsity_stats(self.model)
        lam_final = self.lam.value()
        per_layer_lam = lam_final if isinstance(lam_final, list) else None
        for layer, v in zip(st.per_layer, per_layer_lam or []):
            layer["lambda"] = v
        records = [r for r in read_jsonl(self.run_dir / "metrics.jsonl") if r.get("kind") == "meta"]
        results = {
            "kind": self.kind, "tasks": list(self.tasks), "steps": self.step,
            "lambda_init": self.lambda0, "lambda_init_auto": m.lambda_init == "auto",
            "lambda_final": lam_final,
            "lambda_trajectory": [{"step": r["step"], "lambda": r["lambda"]} for r in records],
            "lambda_objective": m.lambda_objective if self.learns else None,
            "lambda_through_prox": self.through_prox,
            "budget": ({"measure": m.target_measure, "target": m.target,
                        "cost": self.cost.summary(self.model),
                        "landing": self.landing, "projected_groups": self.projected}
                       if self.budget else None),
            "final_zero_window": ({"window": m.final_zero_window, "landing": self.landing,
                                   "projected_groups": self.projected}
                                  if self.window else None),
            "val": val,
            "sparsity": st.to_dict(),
            "backbone_cut": report_cut(self.model, self._example_input(), str(self.run_dir)),
            "params": sum(p.numel() for p in self.model.parameters()),
        }
        if records:
            from metasparsity.report.plots import plot_meta_training, plot_per_layer_sparsity

            plot_meta_training(records, self.run_dir / "meta_training.png",
                               title=f"{self.kind}: λ0 = {self.lambda0:.3g}, "
                               f"{m.meta_grad}, K = {m.inner_steps}")
            plot_per_layer_sparsity(st.per_layer, self.run_dir / "per_layer_sparsity.png",
                                    title=f"{self.kind}: per-layer group sparsity"
                                    + (" and λ" if per_layer_lam else ""),
                                    lambdas=per_layer_lam)
        return results

    def cleanup(self) -> None:
        self.session.close()


def _scalar(v) -> float | list[float]:
    if v is None:
        return 0.0
    if isinstance(v, torch.Tensor):
        v = v.detach().cpu()
        return float(v.sum()) if v.numel() > 1 else float(v)
    return float(v)


def run_meta_train(cfg: Config, run_dir: str | Path, *, resume: bool = False,
                   overwrite: bool = False) -> dict[str, Any]:
    refuse_train_budget(cfg, "meta-train", "its budget mode is meta.target")
    return run_recipe(MetaTrainer(cfg, run_dir, resume=resume, overwrite=overwrite))
