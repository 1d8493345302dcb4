"""One run's lifecycle, written once for every recipe: process set-up, the run directory
(created, resumed or overwritten), the step boundary that checkpoints describe, Ctrl-C and
divergence, and the end, where rank 0 writes ``results.json`` once, with the run's training and
wall time.  A recipe holds a :class:`RunSession` and keeps its own loop; :func:`sub_run` is the
one rule by which sweeps and comparisons reuse, continue or start their sub-runs.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import torch

from metasparsity.training import collectives, interrupt
from metasparsity.training.checkpoint import Checkpoint, save_checkpoint
from metasparsity.training.collectives import DistInfo, from_main, init_distributed
from metasparsity.training.divergence import NonFiniteError, diverged_error, nonfinite_metrics
from metasparsity.training.interrupt import DeferInterrupt, OneStepAtATime
from metasparsity.training.logs import RunLogger, progress_bar
from metasparsity.training.reuse import (
    RESULTS,
    checkpoint_codes,
    read_run_results,
    reuse_note,
    run_code,
)
from metasparsity.training.rng import gather_rng, rng_state, seed_everything, seed_rank
from metasparsity.training.run_checkpoints import (
    has_checkpoints,
    keep_last_good,
    kept_checkpoint_note,
    load_model_state,
    point_last_at,
    resume_checkpoint,
)
from metasparsity.utils.device import set_threads
from metasparsity.utils.errors import UserError
from metasparsity.utils.io import truncate_jsonl, write_json
from metasparsity.utils.provenance import code_identity, machine_identity, same_code
from metasparsity.utils.rundir import (
    RunInterrupted,
    RunLock,
    create_run_dir,
    is_run_dir,
    remove_leftovers,
    update_run_config,
)

Snapshot = Callable[[Mapping[str, Any]],
                    tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, Any]]]
"""``snapshot(boundary) -> (model state, training state, meta)``: what a recipe checkpoints at a
step boundary (:meth:`RunSession.mark`); the session adds the RNG state, the training time and
``val_finite``."""


STOPPING = ("interrupt received: the current step finishes (with its validation and checkpoint, "
            "if due), then the run stops")
"""What rank 0 prints when Ctrl-C (or SIGTERM) arrives during a step."""
AT_ONCE = "; press Ctrl-C again, a second or more later, to stop at once without this step"
"""Added to :data:`STOPPING` in one process (under torchrun a second Ctrl-C does not stop)."""


class RunSession:
    """The lifecycle of the run in ``run_dir``; a recipe calls, in this order::

        session = RunSession(run_dir, ...)     # threads, process group, seed
        ...                                    # data, model, optimizers
        session.restore(load)                  # resuming: load(checkpoint)
        ...                                    # DDP / broadcast: every rank has read the checkpoint
        session.open(config_yaml, ...)         # each rank's RNG; run directory and log
        session.mark(step, **data_order)       # after setup and after every step
        with session.running(total, stop_after) as steps:
            for _ in steps: ...                # the recipe's step; session.save() at validations
        return session.finish(results)         # rank 0 writes results.json once

    ``lr_key`` / ``lr``: the config key and value a divergence message suggests lowering.
    """

    def __init__(self, run_dir: str | Path, *, seed: int, device: str,
                 num_threads: int | None, resume: bool = False, overwrite: bool = False,
                 progress: bool = True, lr_key: str = "train.lr", lr: float = 0.0) -> None:
        self.started = time.time()
        self.run_dir = Path(run_dir)
        self.resume = resume
        self.overwrite = overwrite
        self.seed = seed
        self.lr_key, self.lr = lr_key, lr
        set_threads(num_threads)
        self.dist: DistInfo = init_distributed(device)
        self.main = self.dist.is_main
        self.progress = progress and self.main
        seed_everything(seed)
        self.step = 0  # the last step boundary (mark)
        self.total = 0
        self.train_time = 0.0  # seconds in training steps, over every attempt of the run
        self.checkpoint: Checkpoint | None = None
        self.codes: list[dict[str, Any] | None] = []  # the code that trained earlier attempts
        code_identity()  # this run's code is the one imported now, not after a later edit
        self.logger: RunLogger | None = None
        self._lock = RunLock()  # rank 0's, from open() to close()
        self._boundary: dict[str, Any] = {}
        self._saved_step: int | None = None
        self._clock: float | None = None
        self._steps: OneStepAtATime | None = None  # the loop running() yields, while it runs

    # ------------------------------------------------------------------ start
    def restore(self, load: Callable[[Checkpoint], None]) -> Checkpoint | None:
        """Resuming: the checkpoint the run continues from (``last``, or the newest complete one)
        is given to ``load``, which restores the recipe's state (one that does not fit this run's
        config is a one-line :class:`UserError`), and the training time is restored.  Returns
        the checkpoint, or None when the run starts at step 0."""
        ck = resume_checkpoint(self.run_dir) if self.resume else None
        if ck is not None:
            try:
                load(ck)
                self.step = int(ck.meta["step"])
            except (KeyError, ValueError, RuntimeError) as e:
                raise UserError(f"cannot resume from {ck.path}: its training state does not fit "
                                f"this run's config ({type(e).__name__}: "
                                f"{str(e).splitlines()[0]})") from None
            self.train_time = float(ck.meta.get("train_time", 0.0))
            self.codes = checkpoint_codes(ck.meta)
        self.checkpoint = ck
        return ck

    def open(self, config_yaml: str, *, snapshot: Snapshot, model: torch.nn.Module,
             val_metrics: Callable[[], dict[str, dict]]) -> None:
        """Ranks ≥ 1 get their own RNG streams (:func:`~metasparsity.training.rng.seed_rank`:
        everything that must agree across ranks is drawn by now).  Rank 0 creates the run
        directory (``overwrite``: emptied first) or, resuming, updates its ``config.yaml``,
        repairs the ``last`` pointer it fell back from and cuts ``metrics.jsonl`` back to the
        checkpoint (what came after is trained and logged again); the log opens, with a
        ``resume`` record.  Call it once every rank has read the checkpoint.  ``snapshot``: what
        a checkpoint holds; ``model`` / ``val_metrics``: how a checkpoint is checked after a
        divergence (loaded into ``model``, then validated)."""
        ck = self.checkpoint
        seed_rank(self.seed, self.dist, ck.state if ck is not None else None, self.step)
        self._snapshot, self._model, self._val_metrics = snapshot, model, val_metrics
        try:
            changed = self._open_dir(config_yaml)
        except BaseException:
            self.close()  # the log and the run lock, where taken
            raise
        if self.resume:
            self.log("resume", {"from_step": self.step, "changed": changed})
            if changed and self.main:
                print(f"resuming {self.run_dir} at step {self.step} with changed settings: "
                      + ", ".join(f"{k} {old!r} → {new!r}" for k, (old, new) in changed.items()),
                      flush=True)
        self._saved_step = self.step if self.checkpoint is not None else None

    def _open_dir(self, config_yaml: str) -> dict[str, list[Any]]:
        """:meth:`open`'s writes, rank 0's under the run lock; returns the config changes."""
        changed: dict[str, list[Any]] = {}
        if self.main and self.resume:
            self._lock.acquire(self.run_dir)  # not while another process writes it
            remove_leftovers(self.run_dir)  # of a process killed while it wrote
            # the log first: a damaged one (or one this process may not append to) is refused
            # before the config changes
            truncate_jsonl(self.run_dir / "metrics.jsonl", self.step)
            self.logger = RunLogger(self.run_dir, enabled=True)
            changed = update_run_config(self.run_dir, config_yaml)
            if self.checkpoint is not None:
                point_last_at(self.run_dir, self.checkpoint)
        elif self.main:
            create_run_dir(self.run_dir, config_yaml, overwrite=self.overwrite,
                           layout="training", lock=self._lock)
        if self.logger is None:
            self.logger = RunLogger(self.run_dir, enabled=self.main)
        return changed

    def log(self, kind: str, values: Mapping[str, Any]) -> None:
        """A ``metrics.jsonl`` record of kind ``kind`` at the current step (rank 0 writes)."""
        if self.logger is None:
            raise RuntimeError(f"RunSession.log({kind!r}) before open(): the run directory and "
                               f"its metrics.jsonl are made by open()")
        self.logger.log(self.step, kind, values)

    # ------------------------------------------------------------------ steps
    def mark(self, step: int, **data_order: Any) -> None:
        """The step boundary after ``step``: the data order (stream and sampler states) and the
        RNG state right after it, which a checkpoint of this step holds.  Inside
        :meth:`running` it also counts the step's time as training time."""
        self.step = step
        self._boundary = {"step": step, **data_order, "rng": rng_state()}
        if self._clock is not None:
            now = time.perf_counter()
            self.train_time += now - self._clock
            self._clock = now

    def save(self, *, best: bool = False, validated: bool = False, gather: bool = True) -> None:
        """Checkpoint the last boundary: rank 0 writes the recipe's snapshot with the RNG state,
        the training time and ``val_finite = validated`` (saved right after a validation with
        finite results); ``best`` points ``best`` at it.  With ``gather`` (a collective: every
        rank calls it at the same step) it holds every rank's RNG state too.  A validation and
        its save are not training time: the clock restarts after it."""
        b = self._boundary
        rngs = gather_rng(b["rng"]) if gather else None
        if self.main:
            model_state, state, meta = self._snapshot(b)
            state = {**state, "rng": b["rng"]}
            if rngs is not None:
                state["rng_ranks"] = rngs
            meta = {**meta, "train_time": self.train_time, "val_finite": validated,
                    "code": self._codes()}
            # a second Ctrl-C waits for the files and the last/best pointers: cut between
            # them, a resume would keep a stale best, and the message name a stale step
            with self._steps.whole() if self._steps is not None else nullcontext():
                save_checkpoint(self.run_dir, b["step"], model_state, state, meta, best=best)
        self._saved_step = b["step"]  # once written: a save cut short is not a saved step
        if validated and self._clock is not None:
            self._clock = time.perf_counter()

    @contextmanager
    def running(self, total: int, stop_after: int | None = None, *, desc: str = "",
                best_if_interrupted: Callable[[], bool] = lambda: False) -> Iterator[Any]:
        """The frame of a recipe's loop: yields the steps still to run up to ``total`` (or
        ``stop_after``), as a progress bar on a terminal.

        Ctrl-C (held back until the step is complete: :class:`OneStepAtATime`) saves a
        checkpoint of the last completed step, unless it is saved already (no collective: the
        other ranks may be anywhere; ``best_if_interrupted()``: whether it is the best), and
        raises :class:`RunInterrupted`; a second Ctrl-C during the step raises it at once,
        with nothing saved (the run resumes from its last checkpoint).  A
        :class:`NonFiniteError` becomes :meth:`diverged`'s error.
        """
        self.total = total
        end = total if stop_after is None else max(self.step, min(total, stop_after))
        bar = progress_bar(range(self.step, end), enabled=self.progress, desc=desc,
                           initial=self.step, total=total)
        agree = ((lambda stop: collectives.any_rank(stop, self.dist.device))
                 if self.dist.world_size > 1 else None)
        # under torchrun a second Ctrl-C is not a stop at once: a rank would leave the others
        # waiting in a collective, and torchrun passes each Ctrl-C on (a second copy, also to
        # one process), then kills the processes 30 s after the first one
        single = self.dist.world_size == 1 and "TORCHELASTIC_RUN_ID" not in os.environ
        steps = OneStepAtATime(bar, (STOPPING + (AT_ONCE if single else "")) if self.main else None,
                               agree, interrupt.SECOND_AFTER_S if single else None)
        self._clock = time.perf_counter()
        self._steps = steps
        try:
            yield steps
            steps.settle()  # a loop left by break: the interrupt its last step held back
        except KeyboardInterrupt:
            cut_short = steps.cut_short  # a second Ctrl-C: the step is half done
            steps.close()
            self._steps = None
            try:
                if not cut_short and self._saved_step != self.step:
                    # called from Python, Python's Ctrl-C handler is back: one more Ctrl-C
                    # waits for this save (the program ignores it by now)
                    guard = DeferInterrupt().__enter__()
                    try:
                        self.save(best=best_if_interrupted(), gather=False)
                    finally:
                        guard.restore()  # held back: the run stops anyway
            finally:
                self.close()
            if cut_short:  # nothing of the step is saved: the last checkpoint stays the last
                raise RunInterrupted(self._saved_step, self.run_dir, cut_short=True) from None
            raise RunInterrupted(self.step, self.run_dir) from None
        except NonFiniteError as e:
            steps.close()  # first: a Ctrl-C while the checkpoints are checked is not held back
            raise self.diverged(e) from None
        finally:
            steps.close()  # the signal handlers back (a loop left by an exception)
            self._steps = None
            self._clock = None
            if hasattr(bar, "close"):
                bar.close()

    # ------------------------------------------------------------------ end
    def finish(self, results: Callable[[], dict[str, Any]]) -> dict[str, Any] | None:
        """After the loop.  Stopped before ``total`` (``stop_after``): the last step is saved
        (unless it is already) and None returned, nothing written.  Otherwise rank 0 computes
        ``results()`` and writes ``results.json``, the only write of that file, with
        ``train_time_s`` and ``wall_time_s`` added; every rank returns them.  A non-finite
        result stops the run as a divergence does."""
        if self.step < self.total:
            if self._saved_step != self.step:
                self.save()
            self.close()
            return None
        try:
            try:
                return from_main(lambda: self._write_results(results()))
            finally:
                self.close()
        except NonFiniteError as e:
            raise self.diverged(e) from None

    def _codes(self) -> list[dict[str, Any] | None]:
        """Every code that trained this run so far, oldest first (this process's last)."""
        here = code_identity()
        return [c for c in self.codes if not same_code(c, here)] + [here]

    def _write_results(self, results: dict[str, Any]) -> dict[str, Any]:
        results = {**results, "train_time_s": round(self.train_time, 2),
                   "wall_time_s": round(time.time() - self.started, 2), "code": code_identity(),
                   "machine": machine_identity()}
        before = self._codes()[:-1]
        if before:  # resumed from a checkpoint of other code: both made this result
            results["code_before_resume"] = before
        write_json(self.run_dir / RESULTS, results)
        return results

    def diverged(self, error: NonFiniteError) -> NonFiniteError:
        """The error a divergence stops the run with.  Rank 0 first makes ``last`` name the
        newest checkpoint whose weights and validation are finite (one saved at a validation
        says so; any other is loaded into the model and validated), and the message says which
        is kept and suggests a smaller learning rate."""
        if self.logger is not None:
            self.logger.close()
        try:
            note = kept_checkpoint_note(self.run_dir)
            if self.main:
                def finite_validation(ck: Checkpoint) -> bool:
                    try:
                        load_model_state(self._model, ck, self.run_dir)
                    except UserError:
                        return False
                    return not nonfinite_metrics(self._val_metrics())

                note = keep_last_good(self.run_dir, finite_validation)  # under the run lock
        finally:
            self.close()
        return diverged_error(error, note, self.run_dir, self.lr_key, self.lr)

    def close(self) -> None:
        """Close the log and release the run directory (idempotent)."""
        if self.logger is not None:
            self.logger.close()
        self._lock.release()


def sub_run(run_dir: str | Path, note: bool = True) -> tuple[dict[str, Any] | None, bool]:
    """What a sweep or comparison does with one of its sub-runs, decided on rank 0:
    ``(results, False)`` when it finished (its ``results.json`` is reused as it is), else
    ``(None, resume)``: continue it when it is a run directory with a checkpoint (never restart
    over one), start it afresh otherwise (nothing a restart could lose).  A run made or
    started by other code (or before runs recorded theirs) is reused or continued with a note
    on stderr (:func:`~metasparsity.training.reuse.reuse_note`), unless ``note`` is False (a
    caller that reported every reused run at once: :func:`~metasparsity.training.reuse.check_reuse`)."""
    run_dir = Path(run_dir)

    def decide() -> tuple[dict[str, Any] | None, bool]:
        finished = (run_dir / RESULTS).is_file()
        resume = not finished and is_run_dir(run_dir) and has_checkpoints(run_dir)
        if finished or resume:
            made = read_run_results(run_dir) if finished else run_code(run_dir)
            text = reuse_note(run_dir, made) if note else ""
            if text:
                print(text, file=sys.stderr, flush=True)
            if finished:
                return made, False
        return None, resume

    return from_main(decide)
