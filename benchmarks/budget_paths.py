"""Budget mode's path: the backbone's cost, the target and the multiplier over meta-training and
fine-tuning, for finished ``lambda_inits.py`` budget runs (no training; reads their logs).

Each ``--runs`` folder is a ``lambda_inits.py --runs`` folder; its budget runs are
``seed_S/budget_<measure>_<target>/`` (meta-training, ``meta`` records of ``metrics.jsonl``) and
their ``finetune_seen/`` (``train`` records, logged every ``train.log_every`` steps).  One column
per folder, one line per seed; fine-tuning's steps follow meta-training's on the x-axis.

    python benchmarks/budget_paths.py --runs runs/bench_budget_all_avx2 runs/bench_budget_ramp_avx2 \\
        --labels "target from step 1" "meta.target_ramp=1" --out docs/images/budget_ramp.png
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _records(path: Path, kind: str) -> list[dict]:
    from metasparsity.utils.io import read_jsonl

    return [r for r in read_jsonl(path) if r.get("kind") == kind and "cost" in r]


def budget_paths(folder: Path) -> dict[str, dict[str, list]]:
    """``{seed_S: {step, cost, target, lambda, meta_steps}}`` of every budget run in ``folder``."""
    out = {}
    for run in sorted(folder.glob("seed_*/budget_*")):
        meta = _records(run / "metrics.jsonl", "meta")
        if not meta:
            continue
        ft_log = run / "finetune_seen" / "metrics.jsonl"
        ft = _records(ft_log, "train") if ft_log.is_file() else []
        n = meta[-1]["step"]
        lam = [sum(v) / len(v) if isinstance(v, list) else v
               for v in (r["lambda"] for r in meta + ft)]
        target = [r["target"] for r in meta]
        out[run.parent.name] = {
            "step": [r["step"] for r in meta] + [n + r["step"] for r in ft],
            "cost": [r["cost"] for r in meta + ft],
            "target": target + [target[-1]] * len(ft),
            "lambda": lam, "meta_steps": n}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=Path, nargs="+", required=True)
    p.add_argument("--labels", nargs="+", help="one title per --runs folder (default: its name)")
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "images" / "budget_paths.png")
    args = p.parse_args()
    labels = args.labels or [d.name for d in args.runs]
    if len(labels) != len(args.runs):
        p.error(f"--labels: {len(labels)} labels for {len(args.runs)} --runs folders")
    paths = []
    for d in args.runs:
        if not d.is_dir():
            p.error(f"--runs: {d} is not a folder")
        found = budget_paths(d)
        if not found:
            p.error(f"--runs: {d} holds no budget run with a logged cost (seed_*/budget_*)")
        paths.append(found)

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
            ax.axvline(tr["meta_steps"], color="grey", lw=0.8, ls=":")
            ax.grid(alpha=0.3)
        top.set_title(label)
        top.set_ylim(0, 1.05)
        bottom.set_xlabel("meta-steps; fine-tuning under the budget, if any, after the dotted line")
        if col == 0:
            top.set_ylabel("backbone cost / dense")
            bottom.set_ylabel("multiplier λ")
        top.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "src"))
    main()
