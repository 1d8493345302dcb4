"""Budget mode's path: the backbone's cost, the target and the multiplier over training, for
finished budget runs of ``lambda_inits.py`` or ``budget_train.py`` (no training; reads their logs).

Each ``--runs`` folder is a ``lambda_inits.py --runs`` or ``budget_train.py --runs`` folder; its
budget runs are ``seed_S/budget_<measure>_<target>/``.  Meta-training's are read from the ``meta``
records of ``metrics.jsonl`` and their ``finetune_seen/`` (``train`` records, logged every
``train.log_every`` steps), fine-tuning's steps following meta-training's on the x-axis; plain
training's (``sparsity.target``) from the ``train`` records.  One column per folder, one line per
seed.

It also prints, per folder, how the multiplier and the cost move over the second half of the
dual ascent (the logged records after half of it, up to, not including, the landing's record):
the multiplier's max/min ratio, the cost's mean distance from its target of that step and its
largest rise between two logged records, in points of the dense cost (means over seeds).

    python benchmarks/budget_paths.py --runs runs/bench_budget_all_avx2 runs/bench_budget_ramp_avx2 \\
        --labels "target from step 1" "meta.target_ramp=1" --out docs/images/budget_ramp.png
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


#: What is read of each record with a cost (budget mode's) of a run's ``metrics.jsonl``.
RECORD_SHAPE = {"step": int, "cost": float, "target": float, "lambda": (float, [float])}


def _records(path: Path, kind: str) -> list[dict]:
    """The ``kind`` records with a cost of a run log, checked: a damaged log, a record without
    what is read or a multiplier not > 0 is a one-line UserError naming the log."""
    from metasparsity.utils.errors import UserError
    from metasparsity.utils.io import check_json_shape, load_jsonl

    out = [r for r in load_jsonl(path, what="run log") if r.get("kind") == kind and "cost" in r]
    for r in out:
        problem = check_json_shape(r, RECORD_SHAPE, f"step {r.get('step')!r}")
        if not problem:
            lam = r["lambda"] if isinstance(r["lambda"], list) else [r["lambda"]]
            if not lam or min(lam) < 0 or sum(lam) <= 0:  # a layer kept at λ = 0 may be 0
                problem = (f"step {r['step']}['lambda']: expected multipliers >= 0, not all 0, "
                           f"got {lam}")
        if problem:
            raise UserError(f"run log {path} is malformed: {problem}")
    return out


def budget_paths(folder: Path) -> dict[str, dict[str, list]]:
    """``{seed_S: {step, cost, target, lambda, meta_steps}}`` of every budget run in ``folder``
    (``meta_steps`` is 0 for a plain ``train`` run: its dual ascent runs to its last step)."""
    out = {}
    for run in sorted(folder.glob("seed_*/budget_*")):
        if not (run / "metrics.jsonl").is_file():
            continue
        meta = _records(run / "metrics.jsonl", "meta")
        if meta:
            ft_log = run / "finetune_seen" / "metrics.jsonl"
            ft = _records(ft_log, "train") if ft_log.is_file() else []
            n = meta[-1]["step"]
        else:
            meta, ft, n = _records(run / "metrics.jsonl", "train"), [], 0
            if not meta:
                continue
        lam = [sum(v) / len(v) if isinstance(v, list) else v
               for v in (r["lambda"] for r in meta + ft)]
        target = [r["target"] for r in meta]
        out[run.parent.name] = {
            "step": [r["step"] for r in meta] + [n + r["step"] for r in ft],
            "cost": [r["cost"] for r in meta + ft],
            "target": target + [target[-1]] * len(ft),
            "lambda": lam, "meta_steps": n}
    return out


def held_phase(path: dict[str, list]) -> dict[str, float] | None:
    """How one run's multiplier and cost move over the second half of its dual ascent: the
    records after half of it and before the landing's, the landing being the last record of
    meta-training (``meta_steps``) or of a plain run.  ``None`` when fewer than two records are
    left.  ``ratio``: max/min multiplier; ``dev``: mean ``|cost − target|`` (the target of each
    record, ramped or not) and ``rise``: largest ``cost[i+1] − cost[i]``, both in points."""
    end = path["meta_steps"] or path["step"][-1]
    idx = [i for i, s in enumerate(path["step"]) if end / 2 < s < end]
    if len(idx) < 2:
        return None
    lam = [path["lambda"][i] for i in idx]
    cost = [path["cost"][i] for i in idx]
    return {"from_step": path["step"][idx[0]], "to_step": path["step"][idx[-1]],
            "ratio": max(lam) / min(lam),
            "dev": 100 * sum(abs(path["cost"][i] - path["target"][i]) for i in idx) / len(idx),
            "rise": 100 * max(b - a for a, b in zip(cost, cost[1:]))}


def held_summary(label: str, found: dict[str, dict[str, list]]) -> str:
    """One line: :func:`held_phase` of every seed, as a mean over seeds."""
    phases = [ph for ph in map(held_phase, found.values()) if ph is not None]
    if not phases:
        return f"{label}: fewer than two logged records in the second half of the dual ascent"

    def mean(key: str) -> float:
        return sum(ph[key] for ph in phases) / len(phases)

    steps = f"steps {min(ph['from_step'] for ph in phases)}–{max(ph['to_step'] for ph in phases)}"
    return (f"{label}: second half of the dual ascent ({steps}, {len(phases)} seeds): the "
            f"multiplier moves ×{mean('ratio'):.2f} (max/min), the cost sits {mean('dev'):.1f} "
            f"points from its target on average and rises by at most {mean('rise'):.1f} points "
            f"between two logged records (means over seeds)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=Path, nargs="+", required=True)
    p.add_argument("--labels", nargs="+", help="one title per --runs folder (default: its name)")
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "images" / "budget_paths.png")
    args = p.parse_args()
    labels = args.labels or [d.name for d in args.runs]
    if len(labels) != len(args.runs):
        p.error(f"--labels: {len(labels)} labels for {len(args.runs)} --runs folders")
    from metasparsity.utils.errors import UserError
    from metasparsity.utils.rundir import check_output_file

    try:
        check_output_file(args.out, (".png", ".pdf", ".svg"))
    except UserError as e:
        p.error(str(e))
    paths = []
    for d in args.runs:
        if not d.is_dir():
            p.error(f"--runs: {d} is not a folder")
        try:
            found = budget_paths(d)
        except UserError as e:
            p.error(f"--runs {d}: {e}")
        if not found:
            p.error(f"--runs: {d} holds no budget run with a logged cost (seed_*/budget_*)")
        paths.append(found)
    for label, found in zip(labels, paths):
        print(held_summary(label, found))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(paths), figsize=(5.2 * len(paths), 6.4), sharex="col",
                             sharey="row", squeeze=False)
    for col, (label, found) in enumerate(zip(labels, paths)):
        top, bottom = axes[0][col], axes[1][col]
        for k, (seed, tr) in enumerate(found.items()):
            c = f"C{k}"
            top.plot(tr["step"], tr["cost"], color=c, lw=0.8, alpha=0.8, label=f"cost, {seed}")
            bottom.semilogy(tr["step"], tr["lambda"], color=c, lw=1.0, label=seed)
        tr = next(iter(found.values()))
        top.plot(tr["step"], tr["target"], color="k", lw=1.6, ls="--", label="target")
        for ax in (top, bottom):
            if tr["meta_steps"]:
                ax.axvline(tr["meta_steps"], color="grey", lw=0.8, ls=":")
            ax.grid(alpha=0.3)
        top.set_title(label)
        top.set_ylim(0, 1.05)
        bottom.set_xlabel("meta-steps; fine-tuning under the budget, if any, after the dotted line"
                          if tr["meta_steps"] else "training steps")
        if col == 0:
            top.set_ylabel("backbone cost / dense")
            bottom.set_ylabel("multiplier λ")
        top.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    from metasparsity.utils.io import atomic_write

    try:
        atomic_write(args.out, lambda tmp: fig.savefig(tmp, format=args.out.suffix[1:], dpi=110))
    except OSError as e:
        p.error(f"--out {args.out}: cannot write it ({e.strerror or e})")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "src"))
    main()
