"""Pieces every recipe shares: resumable batch streams, LR schedules, loss weighting,
evaluation over a split, the run logger and the progress bar."""

from __future__ import annotations

import math
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from metasparsity.utils.errors import UserError
from metasparsity.utils.io import JsonlWriter

# ----------------------------------------------------------------------------- data


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)


class BatchStream:
    """Endless batches over ``dataset``: every epoch a permutation drawn from ``(seed, epoch)``.

    Its whole state is ``(epoch, batch position)``, so a resumed run sees exactly the batches
    that the uninterrupted run would have seen (``state_dict`` / ``load_state_dict``).

    Several processes (:mod:`metasparsity.train.distributed`):

    * ``shard=(rank, world)``: ``batch_size`` is the *global* batch, drawn exactly as in one
      process, and this process loads only its slice (the ``rank``-th of ``world`` contiguous,
      near-equal parts).
    * :meth:`select` / :meth:`skip`: this process loads only the batches it is given, while its
      position still advances over every batch (so its state is the single-process state).

    ``rank`` only salts the seed of the loader's worker processes (rank 0: the single-process
    seed), so that random augmentation in workers differs between ranks.
    """

    def __init__(self, dataset: Dataset, batch_size: int, seed: int, *, num_workers: int = 0,
                 shuffle: bool = True, indices: Sequence[int] | None = None,
                 pin_memory: bool = False, shard: tuple[int, int] = (0, 1),
                 rank: int | None = None) -> None:
        self.dataset = dataset
        self.indices = list(range(len(dataset))) if indices is None else list(indices)
        if not self.indices:
            raise UserError("the training split is empty")
        self.batch_size = min(batch_size, len(self.indices))
        self.seed = seed
        self.num_workers = num_workers
        self.shuffle = shuffle
        self.pin_memory = pin_memory
        self.shard = (int(shard[0]), int(shard[1]))
        if not 0 <= self.shard[0] < self.shard[1]:
            raise ValueError(f"shard=(rank, world) needs 0 <= rank < world, got {shard}")
        if self.batch_size < self.shard[1]:
            raise UserError(f"a global batch of {self.batch_size} samples cannot be split over "
                            f"{self.shard[1]} processes")
        self.rank = self.shard[0] if rank is None else int(rank)
        self.epoch = 0
        self.pos = 0
        self._it: Iterator | None = None
        self._keep: Callable[[int], bool] | None = None

    @property
    def batches_per_epoch(self) -> int:
        return len(self.indices) // self.batch_size

    @property
    def count(self) -> int:
        """Running number of the next batch over all epochs: ``epoch · batches_per_epoch + pos``."""
        return self.epoch * self.batches_per_epoch + self.pos

    def select(self, keep: Callable[[int], bool] | None) -> None:
        """Load only the batches whose running number :attr:`count` satisfies ``keep``; the others
        must be passed over with :meth:`skip` (None: load every batch again)."""
        self._keep = keep
        self._it = None

    def _order(self) -> list[int]:
        if not self.shuffle:
            return self.indices
        g = torch.Generator()
        g.manual_seed(self.seed * 1_000_003 + self.epoch)
        perm = torch.randperm(len(self.indices), generator=g).tolist()
        return [self.indices[i] for i in perm]

    def _mine(self, batch: list[int]) -> list[int]:
        r, w = self.shard
        return batch[r * len(batch) // w:(r + 1) * len(batch) // w]

    def _start(self) -> None:
        order = self._order()
        n = self.batches_per_epoch
        first = self.epoch * n
        batches = [self._mine(order[b * self.batch_size:(b + 1) * self.batch_size])
                   for b in range(self.pos, n) if self._keep is None or self._keep(first + b)]
        # The loader's own generator (a function of the stream state) seeds its workers, so
        # starting an iterator never draws from the global RNG that training uses.
        seed = (self.seed * 1_000_003 + self.epoch) * 100_003 + self.pos
        if self.rank:
            seed = hash((seed, self.rank)) % (2**63)
        g = torch.Generator()
        g.manual_seed(seed)
        loader = DataLoader(self.dataset, batch_sampler=batches, num_workers=self.num_workers,
                            worker_init_fn=_worker_init if self.num_workers else None,
                            pin_memory=self.pin_memory, generator=g,
                            persistent_workers=False)
        self._it = iter(loader)

    def _wrap(self) -> None:
        if self.pos >= self.batches_per_epoch:
            self.epoch += 1
            self.pos = 0
            self._it = None

    def __iter__(self) -> BatchStream:
        return self

    def __next__(self):
        self._wrap()
        if self._keep is not None and not self._keep(self.count):
            raise RuntimeError(f"batch {self.count} of the stream is not selected; skip() it")
        if self._it is None:
            self._start()
        batch = next(self._it)
        self.pos += 1
        return batch

    def skip(self) -> None:
        """Advance over one batch without loading it (a batch :meth:`select` left out)."""
        self._wrap()
        if self._keep is not None and self._keep(self.count):
            raise RuntimeError(f"batch {self.count} of the stream is selected; load it with next()")
        if self._keep is None:
            self._it = None  # the running loader would yield the skipped batch
        self.pos += 1

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "pos": self.pos}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        self.epoch, self.pos = int(state["epoch"]), int(state["pos"])
        self._it = None


def eval_loader(dataset: Dataset, batch_size: int, num_workers: int = 0) -> DataLoader:
    """In-order batches of a whole split; iterating it leaves the global RNG untouched."""
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                      worker_init_fn=_worker_init if num_workers else None,
                      generator=torch.Generator().manual_seed(0))


def to_device(batch, device: torch.device):
    x, y = batch
    return x.to(device, non_blocking=True), {k: v.to(device, non_blocking=True) for k, v in y.items()}


# ----------------------------------------------------------------------------- optimisation


def lr_factor(schedule: str, step: int, max_steps: int, warmup: int) -> float:
    """Multiplier of the base LR at ``step`` (0-based): linear warm-up then the schedule."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    t = (step - warmup) / max(1, max_steps - warmup)
    t = min(max(t, 0.0), 1.0)
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * t))
    if schedule == "poly":
        return (1.0 - t) ** 0.9
    if schedule == "step":
        return 0.1 ** int(t * 3)  # /10 at 1/3 and 2/3 of training
    raise UserError(f"unknown lr schedule {schedule!r}")


def build_scheduler(opt: torch.optim.Optimizer, schedule: str, max_steps: int, warmup: int):
    return torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_factor(schedule, s, max_steps, warmup))


class LossWeighting(nn.Module):
    """Combine per-task losses: ``equal`` (Σ L_t) or ``uncertainty`` (Kendall et al.):

        L = Σ_t exp(−s_t)·L_t + s_t,   s_t = log σ_t² learned (initialised at 0).
    """

    def __init__(self, tasks: Sequence[str], method: str = "equal") -> None:
        super().__init__()
        if method not in ("equal", "uncertainty"):
            raise UserError(f"train.loss_weighting: {method!r}; choose equal or uncertainty")
        self.method = method
        self.log_vars = nn.ParameterDict(
            {t: nn.Parameter(torch.zeros(())) for t in tasks} if method == "uncertainty" else {})

    def add_task(self, task: str) -> None:
        if self.method == "uncertainty" and task not in self.log_vars:
            self.log_vars[task] = nn.Parameter(torch.zeros((), device=self._device()))

    def _device(self) -> torch.device:
        for p in self.log_vars.values():
            return p.device
        return torch.device("cpu")

    def forward(self, losses: Mapping[str, torch.Tensor]) -> torch.Tensor:
        if self.method == "equal":
            return sum(losses.values())
        return sum(torch.exp(-self.log_vars[t]) * v + self.log_vars[t] for t, v in losses.items())

    def weights(self) -> dict[str, float]:
        if self.method == "equal":
            return {}
        return {t: float(torch.exp(-v.detach())) for t, v in self.log_vars.items()}


def task_losses(tasks: Mapping[str, Any], outputs: Mapping[str, torch.Tensor],
                targets: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {t: tasks[t].loss(outputs[t], targets[t]) for t in outputs}


def check_finite(losses: Mapping[str, torch.Tensor], step: int, what: str = "loss") -> None:
    """Raise :class:`NonFiniteError` naming the step and task when a loss is NaN or infinite."""
    for t, v in losses.items():
        v = torch.as_tensor(v).detach()
        if not torch.isfinite(v).all():
            raise NonFiniteError(f"non-finite {what} at step {step} for task {t!r} "
                                 f"({float(v.float().sum())})", step=step, task=t)


def nonfinite_metrics(results: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """``task.key`` of the evaluation results that show a diverged model: a per-task loss that
    is not a finite number (NaN, ±inf, or missing as JSON null), or any metric that is infinite.

    A NaN *metric* alone is not divergence: metrics are NaN where undefined on a split (no
    valid pixel, a single class for AUROC, no predicted positive for a precision), while every
    task loss is finite for finite predictions.
    """
    bad = []
    for t, values in results.items():
        loss = values.get("loss")
        if not isinstance(loss, (int, float)) or not math.isfinite(loss):
            bad.append(f"{t}.loss")
        bad += [f"{t}.{k}" for k, v in values.items()
                if k != "loss" and isinstance(v, float) and math.isinf(v)]
    return bad


def check_finite_metrics(results: Mapping[str, Mapping[str, Any]], step: int,
                         what: str = "validation") -> None:
    """Raise :class:`NonFiniteError` when evaluation results show a diverged model."""
    bad = nonfinite_metrics(results)
    if bad:
        raise NonFiniteError(f"non-finite {what} metrics at step {step} ({', '.join(bad[:4])}"
                             + (f" and {len(bad) - 4} more" if len(bad) > 4 else "") + ")",
                             step=step, task=bad[0].split(".")[0])


def check_finite_params(tensors: Mapping[str, torch.Tensor], step: int) -> None:
    """Raise :class:`NonFiniteError` when a parameter or buffer holds a NaN or an infinity."""
    from metasparsity.train.checkpoint import nonfinite_tensors

    bad = nonfinite_tensors(dict(tensors))
    if bad:
        raise NonFiniteError(f"non-finite parameters at step {step} ({', '.join(bad[:3])}"
                             + (f" and {len(bad) - 3} more" if len(bad) > 3 else "") + ")",
                             step=step, task=None)


def divergence_message(error: Exception, note: str, run_dir: str | Path, lr_key: str,
                       lr: float) -> str:
    """The one-line message of a run stopped by a divergence: what, where, what is kept, and
    the resume with a smaller learning rate."""
    if note.startswith("the last good checkpoint"):
        hint = f"resume with a smaller learning rate: --resume {run_dir} {lr_key}={lr / 10:g}"
    else:
        hint = f"start again with a smaller learning rate ({lr_key}={lr / 10:g})"
    return f"{error}; {note}; {hint}"


def diverged_error(error: NonFiniteError, note: str, run_dir: str | Path, lr_key: str,
                   lr: float) -> NonFiniteError:
    """The error a diverged run stops with (:func:`divergence_message`), carrying what a caller
    that ran it as a sub-run (``sweep-lambda``, ``compare``) needs to point at its own resume."""
    out = NonFiniteError(divergence_message(error, note, run_dir, lr_key, lr), step=error.step,
                         task=error.task)
    out.detail = f"{error}; {note}"
    out.resume = (str(run_dir), lr_key, lr)
    return out


class NonFiniteError(UserError):
    """A NaN / infinite loss or λ; the run stops, keeping its last good checkpoint.

    ``step``: the (1-based) step whose loss was not finite; ``task``: the task (or ``"λ"``).
    """

    def __init__(self, message: str, *, step: int | None = None, task: str | None = None) -> None:
        super().__init__(message)
        self.step = step
        self.task = task
        self.detail = message  # the message without its resume hint
        self.resume: tuple[str, str, float] | None = None  # (run dir, LR key, LR) of the run

    def message_for(self, command: str, top: str | Path | None) -> str:
        """The message for ``metasparsity COMMAND``: when the run that diverged is a sub-run of
        ``top`` (a sweep or comparison), the hint resumes ``top`` (whose overrides reach the
        sub-runs; finished sub-runs are kept), not the sub-run, whose config.yaml the parent
        rewrites on its next resume."""
        if self.resume is None or top is None:
            return str(self)
        run_dir, key, lr = self.resume
        if Path(run_dir).resolve() == Path(top).resolve():
            return str(self)
        return (f"{self.detail}; resume the whole {command} with a smaller learning rate: "
                f"metasparsity {command} --resume {top} {key}={lr / 10:g}")


class DeferInterrupt:
    """Hold Ctrl-C (SIGINT) back while a block runs, and raise it when the block is done.

    Used around the in-place update of a training step (optimizer, scheduler, prox, masks and
    the step counter), so that an interrupt never leaves the parameters half-updated: the
    checkpoint saved after it describes exactly the last completed step.  Outside the main
    thread (where signal handlers cannot be set), or where SIGINT is ignored, it does nothing.
    """

    def __init__(self) -> None:
        self._old = None
        self._pending = False

    def _handler(self, signum, frame) -> None:
        self._pending = True

    def __enter__(self) -> DeferInterrupt:
        self._pending = False
        self._old = None
        if threading.current_thread() is threading.main_thread():
            old = signal.getsignal(signal.SIGINT)
            # None: a handler set outside Python (cannot be restored); SIG_IGN: Ctrl-C is
            # ignored on purpose (e.g. a background job), and must stay so.
            if old is not None and old is not signal.SIG_IGN:
                self._old = old
                signal.signal(signal.SIGINT, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        old, self._old = self._old, None
        if old is not None:
            signal.signal(signal.SIGINT, old)
        if self._pending and exc[0] is None:
            # delivered through the handler it was held back from, so that handler's own
            # policy applies (the program's ignores every Ctrl-C after the first, which keeps a
            # second one from cutting the checkpoint save short)
            if callable(old):
                old(signal.SIGINT, None)
            raise KeyboardInterrupt


# ----------------------------------------------------------------------------- evaluation


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, tasks: Mapping[str, Any],
             device: torch.device, progress: bool = False, desc: str = "eval") -> dict[str, dict]:
    """Per-task metrics (DESIGN §4) and mean loss over a whole split, in eval mode."""
    from metasparsity.eval.metrics import build_metrics

    was_training = model.training
    model.eval()
    metrics = build_metrics(tasks)
    loss_sum = {t: 0.0 for t in tasks}
    n = 0
    for batch in progress_bar(loader, desc=desc, enabled=progress, leave=False):
        x, y = to_device(batch, device)
        out = model(x, tasks=list(tasks))
        for t in tasks:
            metrics[t].update(out[t], y[t])
            loss_sum[t] += float(tasks[t].loss(out[t], y[t])) * x.shape[0]
        n += x.shape[0]
    model.train(was_training)
    res = {t: metrics[t].compute() for t in tasks}
    for t in tasks:
        res[t]["loss"] = loss_sum[t] / max(n, 1)
    return res


BN_STATS_BATCHES = 20
"""Training batches over which BatchNorm's running statistics are re-estimated."""


def bn_stats_to_recompute(meta: Mapping[str, Any]) -> bool:
    """Whether a checkpoint's BatchNorm running statistics must be re-estimated before the model
    is evaluated: its ``state.json`` says ``"bn_stats": "recompute"`` (meta-training never
    updates them; ``"running"``: usable as saved).  Checkpoints written before that field say
    ``"needs_bn_recalibration": true``."""
    if "bn_stats" in meta:
        return meta["bn_stats"] == "recompute"
    return bool(meta.get("needs_bn_recalibration"))


@torch.no_grad()
def recompute_bn_stats(model: nn.Module, stream: BatchStream, device: torch.device,
                       batches: int = BN_STATS_BATCHES) -> None:
    """Recompute BatchNorm running statistics on training batches (no gradients).

    A meta-trained model never updates its running statistics (the inner loop uses batch
    statistics), so before evaluating it without fine-tuning we re-estimate them with a
    cumulative moving average over the next ``batches`` batches of ``stream``.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    saved = [m.momentum for m in bns]
    was_training = model.training
    try:
        for m in bns:
            m.reset_running_stats()
            m.momentum = None
        model.train()
        for _ in range(batches):
            x, _y = to_device(next(stream), device)
            model.forward_features(x)
    finally:
        for m, mom in zip(bns, saved):
            m.momentum = mom
        model.train(was_training)


def selection_score(val: Mapping[str, Mapping[str, float]],
                    reference: Mapping[str, Mapping[str, float]] | None = None,
                    task_types: Mapping[str, str] | None = None) -> float:
    """Lower is better; chooses the best checkpoint.

    With ``reference`` (the run's first validation) and the tasks' types: ``−Δm`` of the
    validation metrics against the reference, over each task's primary metrics (those whose
    reference value is 0 or undefined left out).  Metrics, not losses, because a classifier's
    cross-entropy can rise from over-confidence while its accuracy still improves.  Without a
    reference, or when no metric is usable: the mean validation loss over tasks.
    """
    if reference is not None and task_types:
        from metasparsity.eval.delta import default_spec, delta_m, usable_spec

        spec, _ = usable_spec(default_spec(task_types), reference)
        if spec:
            return -float(delta_m(val, reference, spec))
    return float(sum(v["loss"] for v in val.values()) / max(len(val), 1))


# ----------------------------------------------------------------------------- logging


def progress_enabled(requested: bool = True) -> bool:
    """Whether to draw a progress bar: asked for, and stderr (where tqdm draws) is a terminal.

    Redirected to a file or a pipe, a bar would write a carriage-return line per update.
    """
    if not requested:
        return False
    stream = sys.stderr
    try:
        return stream is not None and stream.isatty()
    except (AttributeError, ValueError):  # replaced or closed stream
        return False


def progress_bar(it, *, enabled: bool = True, **kw):
    """``tqdm(it)`` when :func:`progress_enabled` (``enabled`` and stderr a terminal), else ``it``."""
    if not progress_enabled(enabled):
        return it
    from tqdm.auto import tqdm

    return tqdm(it, dynamic_ncols=True, **kw)


class RunLogger:
    """``metrics.jsonl`` (always) and TensorBoard (when installed) for one run."""

    def __init__(self, run_dir: str | Path, enabled: bool = True, tensorboard: bool = True) -> None:
        self.enabled = enabled
        self.jsonl = JsonlWriter(Path(run_dir) / "metrics.jsonl", enabled=enabled)
        self.tb = None
        self.t0 = time.time()
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(Path(run_dir) / "tb"))
            except Exception:  # tensorboard is optional
                self.tb = None

    def log(self, step: int, kind: str, values: Mapping[str, Any]) -> None:
        rec = {"step": step, "kind": kind, "time": round(time.time() - self.t0, 3), **values}
        self.jsonl.write(rec)
        if self.tb is not None:
            for k, v in _flatten(values).items():
                if isinstance(v, (int, float)) and v is not None:
                    self.tb.add_scalar(f"{kind}/{k}", v, step)

    def close(self) -> None:
        self.jsonl.close()
        if self.tb is not None:
            self.tb.close()


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flatten(v, key + "/"))
        else:
            out[key] = v
    return out
