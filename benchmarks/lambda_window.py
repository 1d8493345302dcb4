"""λ by paired windows of validation Δm (or loss): a probe of the issue's last untried λ rule.

Instead of following a gradient of the held-out *loss*, λ follows the held-out *metrics*:
meta-training runs in windows of ``window`` outer steps; each window starts two branches from
the same state (θ, optimiser, sampler and data positions), one at ``λ·factor`` and one at
``λ/factor``, both with λ held fixed (``meta.lambda_lr=0``) and the same data order (common
random numbers), and keeps the branch whose validation Δm on the λ-validation ids (the
held-out share of the training set that θ never trains on, ``meta.lambda_objective=heldout``)
is higher (``score="loss"``: whose validation loss is lower, :func:`paired_loss`;
``score="heldout"``: whose adapted model's λ-validation loss over the window's meta-steps is
lower, :func:`paired_heldout`, what the held-out gradient descends), θ and λ both, as
population-based training does with two members.  The
comparison is paired, so training progress, which moves both branches alike, cancels; what is
left is the effect of λ over the window's horizon, on the metrics Δm is made of.

``window_meta_train`` writes an ordinary meta-training run directory (``results.json``,
``metrics.jsonl`` with the winners' λ trajectory, checkpoints) that ``finetune`` reads like any
other, plus ``window_search.json`` (every window's two λ, their score, the winner; a tie goes to
the smaller λ, a branch whose validation is not finite loses).  Branches live in
``<run>.branches/`` until the search ends; a finished window's decision is reused, an
unfinished one is redone.
Used by ``benchmarks/lambda_inits.py --objectives window`` (``window_loss``,
``window_heldout``).
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import Any

SEARCH = "window_search.json"


def window_overrides() -> list[str]:
    """λ held within a window, the held-out split of the training ids kept out of θ's data."""
    return ["meta.lambda_objective=heldout", "meta.lambda_lr=0", "meta.lambda_scope=global"]


def _branch(cfg, src: Path | None, dst: Path, lam: float, stop: int,
            held: list[int]) -> dict[str, Any]:
    """Continue ``src`` (a run directory at the window's start; None: from scratch) in ``dst``
    at λ = ``lam`` up to step ``stop``; the metrics on the λ-validation ids ``held`` after, and
    the logged λ-validation loss of the adapted model at each of the window's meta-steps
    (``heldout``)."""
    from torch.utils.data import Subset

    from metasparsity.recipes.meta_train import MetaTrainer
    from metasparsity.training.batches import eval_loader
    from metasparsity.utils.io import read_jsonl

    if dst.exists():
        shutil.rmtree(dst)  # an interrupted branch is redone from the window's start
    if src is not None:
        shutil.copytree(src, dst)
    tr = MetaTrainer(cfg, dst, resume=src is not None, overwrite=src is None)
    try:
        tr.setup()
        start = tr.step
        with_lam(tr, lam)
        done = tr.train(stop_after=None if stop >= cfg.meta.steps else stop)
        tr.val_loader = eval_loader(Subset(tr.train_set, held), cfg.train.eval_batch_size)
        metrics = tr.validate()
        heldout = [r["lambda_val_loss"] for r in read_jsonl(dst / "metrics.jsonl")
                   if r.get("kind") == "meta" and start < r["step"] <= stop]
        return {"lambda": float(tr.lam.value()), "metrics": metrics, "heldout": heldout,
                "finished": done is not None}
    finally:
        tr.cleanup()


def with_lam(tr, lam: float) -> None:
    """Set a (global) λ of a set-up trainer."""
    import torch

    with torch.no_grad():
        tr.lam.rho.fill_(math.log(lam))
        tr.lam.clamp_rho_()


def paired_delta(a: dict, b: dict, types: dict[str, str]) -> float:
    """Δm of ``a`` against ``b`` (DESIGN §4, primary metrics): > 0 when ``a`` is better."""
    from metasparsity.eval.delta import default_spec, delta_m, usable_spec

    spec, _ = usable_spec(default_spec(types), b)
    return delta_m({t: a[t] for t in types}, {t: b[t] for t in types}, spec)


def paired_loss(a: dict, b: dict, types: dict[str, str]) -> float:
    """The validation loss of ``a`` against ``b``: the mean over tasks of the loss difference
    relative to the pair's mean loss, in %, > 0 when ``a``'s loss is lower.  Symmetric:
    ``paired_loss(a, b) == -paired_loss(b, a)``, with no task left out."""
    rel = [(b[t]["loss"] - a[t]["loss"]) / ((a[t]["loss"] + b[t]["loss"]) / 2) for t in types]
    return 100 * sum(rel) / len(rel)


def paired_heldout(a: list[float], b: list[float]) -> float:
    """The held-out objective of branch ``a`` against ``b``: their λ-validation losses of the
    adapted model (``lambda_val_loss``, what the held-out gradient descends), logged at every
    meta-step of the window on the same batches, mean difference relative to the pair's mean
    loss, in %; > 0 when ``a``'s is lower.  Symmetric, like :func:`paired_loss`."""
    if len(a) != len(b) or not a:
        raise ValueError(f"the branches logged {len(a)} and {len(b)} λ-validation losses, "
                         "not the same positive number")
    mean = (sum(a) + sum(b)) / 2
    return 100 * (sum(b) - sum(a)) / mean


# what each score reads of a branch (_branch's result), and how it compares two of them
SCORES = {"delta_m": ("metrics", paired_delta), "loss": ("metrics", paired_loss),
          "heldout": ("heldout", lambda a, b, types: paired_heldout(a, b))}


def window_meta_train(cfg, run_dir: str | Path, *, window: int, factor: float,
                      score: str = "delta_m") -> dict[str, Any]:
    """Meta-train ``cfg`` (with :func:`window_overrides`) by paired windows, each decided by
    ``score`` (:data:`SCORES`: validation Δm, the validation loss, or the held-out objective
    over the window); returns the final
    ``results.json`` of the run at ``run_dir``."""
    from metasparsity.data import build_dataset, resolve_tasks
    from metasparsity.meta.sampler import meta_stream_split
    from metasparsity.utils.io import read_json, write_json

    if window < 1 or factor <= 1:
        raise ValueError(f"window must be ≥ 1 and factor > 1, got {window}, {factor}")
    if score not in SCORES:
        raise ValueError(f"score must be one of {list(SCORES)}, got {score!r}")
    m = cfg.meta
    if m.lambda_lr != 0 or m.lambda_objective != "heldout" or not m.learn_lambda:
        raise ValueError("window_meta_train needs meta.lambda_lr=0, meta.lambda_objective="
                         "heldout and meta.learn_lambda=true (window_overrides())")
    if score == "heldout" and m.log_every != 1:
        raise ValueError(f"score heldout reads the λ-validation loss of every meta-step; "
                         f"meta.log_every is {m.log_every}, use 1")
    run_dir = Path(run_dir)
    branches = run_dir.parent / f"{run_dir.name}.branches"
    if (run_dir / "results.json").is_file():
        shutil.rmtree(branches, ignore_errors=True)  # stopped between the last two lines below
        return read_json(run_dir / "results.json")
    branches.mkdir(parents=True, exist_ok=True)
    log_path = branches / SEARCH
    if log_path.is_file():
        log = read_json(log_path)
        log.setdefault("score", "delta_m")  # searches from before the loss score
        old = (log["window"], log["factor"], log["score"])
        if old != (window, factor, score):
            raise ValueError(f"{branches} holds a search with window {old[0]}, factor {old[1]} "
                             f"and score {old[2]}; remove it or use the same")
    else:
        log = {"window": window, "factor": factor, "score": score, "lambda0": _lambda0(cfg),
               "windows": []}
        write_json(log_path, log)
    types = {t: task.type for t, task in resolve_tasks(cfg, cfg.data.seen_tasks).items()}
    held = meta_stream_split(len(build_dataset(cfg, "train")), cfg.train.seed,
                             m.lambda_val_fraction)[2]
    bounds = list(range(window, m.steps, window)) + [m.steps]
    # an interrupted search continues from its last winner: every other branch folder goes
    done = len(log["windows"])
    keep = f"w{done - 1:02d}_{log['windows'][-1]['winner']}" if done else None
    for d in branches.glob("w[0-9][0-9]_*"):
        if d.is_dir() and d.name != keep:
            shutil.rmtree(d)
    for k, stop in enumerate(bounds):
        if k < done:
            continue
        prev = log["windows"][-1] if k else None
        src = branches / f"w{k - 1:02d}_{prev['winner']}" if prev else None
        center = prev["lambda"] if prev else log["lambda0"]
        res = {name: _branch(cfg, src, branches / f"w{k:02d}_{name}", center * f, stop, held)
               for name, f in (("down", 1 / factor), ("up", factor))}
        what, compare = SCORES[score]
        d = compare(res["up"][what], res["down"][what], types)
        if math.isfinite(d):
            winner = "up" if d > 0 else "down"
        else:  # a diverged branch loses; both diverged, or neither: nothing to decide by
            ok = {n: _finite(r[what], types) for n, r in res.items()}
            if ok["up"] == ok["down"]:
                raise ValueError(f"window {k} of {run_dir}: the {score} score of the branches "
                                 f"at λ {center:g}·{factor:g}^±1 is not finite")
            winner, d = ("up" if ok["up"] else "down"), None
        log["windows"].append({"step": stop, "center": center,
                               "lambda_down": res["down"]["lambda"],
                               "lambda_up": res["up"]["lambda"], f"{score}_up_vs_down": d,
                               "winner": winner, "lambda": res[winner]["lambda"]})
        write_json(log_path, log)
        # what no later window starts from: the previous winner and this window's loser
        if src is not None:
            shutil.rmtree(src, ignore_errors=True)
        shutil.rmtree(branches / f"w{k:02d}_{'down' if winner == 'up' else 'up'}",
                      ignore_errors=True)
    last = branches / f"w{len(bounds) - 1:02d}_{log['windows'][-1]['winner']}"
    write_json(last / SEARCH, log)
    if run_dir.exists():
        shutil.rmtree(run_dir)
    last.rename(run_dir)  # the run folder appears whole, with its results, or not at all
    shutil.rmtree(branches)
    return read_json(run_dir / "results.json")


def _finite(read: dict | list, types: dict[str, str]) -> bool:
    """Whether every number a score reads (metrics of the tasks ``types``, or a list of
    losses) is finite."""
    if isinstance(read, list):
        return all(math.isfinite(float(v)) for v in read)
    return all(math.isfinite(float(v)) for t in types for v in read[t].values()
               if isinstance(v, (int, float)))


def _lambda0(cfg) -> float:
    """λ0 of ``cfg``: the number, or ``auto`` measured as meta-training measures it."""
    if cfg.meta.lambda_init != "auto":
        return float(cfg.meta.lambda_init)
    import tempfile

    from metasparsity.recipes.meta_train import MetaTrainer

    with tempfile.TemporaryDirectory() as d:
        tr = MetaTrainer(cfg, Path(d) / "probe", overwrite=True)
        try:
            tr.setup()
            return float(tr.lambda0)
        finally:
            tr.cleanup()
