"""Is λ's collapse what the held-out loss asks for?  Reads the held-out meta-trainings of
``benchmarks/lambda_inits.py`` (no training) and compares, seed by seed, the runs from each λ0
with the run from ``--reference`` (default ``auto``) on the quantity λ descends: the loss of
the adapted model on the λ-validation batch, ``lambda_val_loss`` in ``metrics.jsonl``.

Runs of one seed draw the same task subsets and the same λ-validation batches at every
meta-step (the streams are seeded by the seed alone; the subsets are checked, and a pair that
differs is refused), so the difference of their logged λ-validation losses, step by step, is
paired: what is left is θ and λ.  Per run: the final λ and group sparsity, the share of the last
``--tail`` steps whose λ-gradient pushed λ down, and the mean paired difference over those
steps with a 95 % Student-t interval over blocks of ``--block`` steps (consecutive steps share
θ's history, so the blocks, not the steps, are the samples).  A run whose λ fell while its
λ-validation loss ended *above* the reference's sits in a local minimum of the objective, not
at its best.  Writes ``benchmarks/results/<name>.{json,md,png}``.

    python benchmarks/heldout_trap.py --runs runs/bench_lambda_window_avx512 \\
        --seeds 0 1 2 3 4 5 6 [--inits 0.0001,auto,0.01] [--tail 80] [--name heldout_trap]

The same pairing reads ``benchmarks/lambda_continue.py``'s continuations at a held λ
(``--inits own,0.001,… --reference own --label "held λ"``: ``--label`` names the folders'
suffix in the report).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
OUT = Path(__file__).resolve().parent / "results"
sys.path.insert(0, str(Path(__file__).resolve().parent))


REQUIRED = ("step", "subsets", "lambda", "group_sparsity", "grad_lambda_explicit",
            "grad_lambda_implicit")


def _grad(r: dict[str, Any]) -> float:
    """dL/dλ of one step, all logged parts (a per-layer λ's parts summed)."""
    def total(v) -> float:
        return float(sum(v)) if isinstance(v, list) else float(v or 0.0)

    return (total(r["grad_lambda_explicit"]) + total(r["grad_lambda_implicit"])
            + total(r.get("grad_lambda_prox")))


def _lam(v) -> float:
    return float(statistics.fmean(v)) if isinstance(v, list) else float(v)


def meta_records(run: Path) -> list[dict[str, Any]]:
    """The meta-steps of a held-out meta-training run, in order."""
    from metasparsity.utils.io import read_jsonl

    recs = [r for r in read_jsonl(run / "metrics.jsonl") if r.get("kind") == "meta"]
    if not recs or any(r.get("lambda_val_loss") is None for r in recs):
        raise ValueError(f"{run}: not a meta-training run with a λ-validation loss per step "
                         "(meta.lambda_objective=heldout)")
    missing = sorted({k for r in recs for k in REQUIRED if k not in r})
    if missing:
        raise ValueError(f"{run}/metrics.jsonl: meta-steps without {missing}")
    if [r["step"] for r in recs] != list(range(1, len(recs) + 1)):
        raise ValueError(f"{run}/metrics.jsonl: the meta-steps are not logged one by one "
                         "(meta.log_every=1)")
    return recs


def paired(run: list[dict[str, Any]], ref: list[dict[str, Any]], tail: int,
           block: int) -> dict[str, Any]:
    """``run`` against ``ref`` (two runs of one seed) over the last ``tail`` meta-steps."""
    from budget_front_plot import t_interval

    if len(run) != len(ref) or any(a["step"] != b["step"] or a["subsets"] != b["subsets"]
                                   for a, b in zip(run, ref)):
        raise ValueError("the two runs did not draw the same steps and task subsets, so their "
                         "λ-validation losses are not paired")
    if not 0 < tail <= len(run) or not 0 < block <= tail or tail % block:
        raise ValueError(f"need 0 < block ≤ tail ≤ {len(run)} steps and tail a multiple of "
                         f"block, got tail {tail}, block {block}")
    diff = [a["lambda_val_loss"] - b["lambda_val_loss"] for a, b in zip(run[-tail:], ref[-tail:])]
    blocks = [statistics.fmean(diff[k:k + block]) for k in range(0, tail, block)]
    ci = t_interval(blocks)
    return {"mean": statistics.fmean(diff), "half_width": None if ci is None else ci[1],
            "blocks": len(blocks), "per_step": [a["lambda_val_loss"] - b["lambda_val_loss"]
                                                for a, b in zip(run, ref)]}


def main() -> None:
    from metasparsity.report.tables import markdown_table
    from metasparsity.utils.io import atomic_write_text, write_json
    from metasparsity.utils.provenance import command_line

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=Path, required=True,
                   help="a lambda_inits.py runs folder (seed_<s>/heldout_<λ0>/)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--inits", default="0.0001,auto,0.01")
    p.add_argument("--reference", default="auto", help="the λ0 the others are compared with")
    p.add_argument("--objective", default="heldout")
    p.add_argument("--tail", type=int, default=80)
    p.add_argument("--block", type=int, default=10)
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--name", default="heldout_trap")
    p.add_argument("--label", default="λ0",
                   help="what the folders' suffix is, for the report (lambda_continue.py's "
                        "continuations: held λ)")
    args = p.parse_args()
    from fixed_lambda_grid import check_args

    check_args(p, args, folders=("out",))  # --out a folder, --name a file stem, --seeds
    for f in (args.out / f"{args.name}.{ext}" for ext in ("json", "md", "png")):  # before any
        if f.exists() and not f.is_file():
            p.error(f"--out: {f} exists and is not a file")
    inits = list(dict.fromkeys(v.strip() for v in args.inits.split(",") if v.strip()))
    args.seeds = list(dict.fromkeys(args.seeds))
    if args.reference not in inits or len(inits) < 2:
        p.error(f"--inits {inits} must hold --reference {args.reference} and another "
                f"{args.label}")
    if not 0 < args.block <= args.tail or args.tail % args.block:
        p.error(f"--tail ({args.tail}) must be a positive multiple of --block ({args.block})")
    runs: dict[tuple[int, str], list[dict[str, Any]]] = {}
    for s in args.seeds:
        for i in inits:
            d = args.runs / f"seed_{s}" / f"{args.objective}_{i}"
            if not (d / "metrics.jsonl").is_file():
                p.error(f"no meta-training run at {d}")
            try:
                runs[s, i] = meta_records(d)
            except json.JSONDecodeError as e:
                p.error(f"{d}/metrics.jsonl: a line is not JSON ({e})")
            except ValueError as e:
                p.error(str(e))
            if len(runs[s, i]) < args.tail:
                p.error(f"{d}: {len(runs[s, i])} meta-steps, fewer than --tail {args.tail}")
    rows = []
    for s in args.seeds:
        ref = runs[s, args.reference]
        for i in inits:
            recs = runs[s, i]
            try:
                pair = None if i == args.reference else paired(recs, ref, args.tail, args.block)
            except ValueError as e:
                p.error(f"seed {s}, {args.label} {i}: {e}")
            grads = [_grad(r) for r in recs[-args.tail:]]
            rows.append({"seed": s, "init": i, "lambda_final": _lam(recs[-1]["lambda"]),
                         "group_sparsity": 100 * recs[-1]["group_sparsity"],
                         "tail_val_loss": statistics.fmean(r["lambda_val_loss"]
                                                           for r in recs[-args.tail:]),
                         "tail_share_pushing_down": sum(g > 0 for g in grads) / len(grads),
                         "vs_reference": pair})

    from metasparsity.utils.io import read_json
    from metasparsity.utils.provenance import machine_identity

    machine = machine_identity()  # of this reading; the runs record their own
    made_on = sorted({" ".join(str(m.get(k)) for k in ("cpu", "cpu_capability"))
                      for m in (read_json(args.runs / f"seed_{s}" / f"{args.objective}_{i}" /
                                          "results.json").get("machine") or {}
                                for s in args.seeds for i in inits
                                if (args.runs / f"seed_{s}" / f"{args.objective}_{i}" /
                                    "results.json").is_file())})
    args.out.mkdir(parents=True, exist_ok=True)
    cmd = command_line("benchmarks/heldout_trap.py", sys.argv[1:], ROOT)
    write_json(args.out / f"{args.name}.json", {
        "command": cmd, "machine": machine, "runs_made_on": made_on,
        "runs": os.path.relpath(args.runs, ROOT),
        "label": args.label, "reference": args.reference, "tail": args.tail,
        "block": args.block, "rows": rows})

    def f(v, d=3):
        return "–" if v is None else f"{v:.{d}f}"

    lab = args.label
    lines = [f"# The held-out loss of runs at different {lab}, paired ({args.objective})", "",
             f"`{cmd}`; the runs were made on: {'; '.join(made_on) or 'unrecorded'}.", "",
             f"λ-val loss: the logged `lambda_val_loss` (the adapted model's loss on the "
             f"λ-validation batch, what λ descends), mean over the last {args.tail} meta-steps. "
             f"Paired: this run minus the run at {lab} = {args.reference} of the same seed, on "
             f"the same batches and task subsets, mean over the last {args.tail} steps ± the "
             f"half-width of a 95 % t interval over blocks of {args.block} steps; > 0: this "
             "run's held-out loss is higher. Pushing down: share of those steps whose "
             "dL/dλ > 0 (all logged parts, the outer prox's too where it was on).", ""]
    lines.append(markdown_table(
        ["seed", lab, "final λ", "group sp. %", f"λ-val loss (last {args.tail})",
         f"minus {lab} = {args.reference}'s (paired)", "steps pushing λ down %"],
        [[r["seed"], r["init"], f"{r['lambda_final']:.2g}", f(r["group_sparsity"], 1),
          f(r["tail_val_loss"]),
          "reference" if r["vs_reference"] is None else
          f"{r['vs_reference']['mean']:+.3f} ± {f(r['vs_reference']['half_width'])}",
          f(100 * r["tail_share_pushing_down"], 0)] for r in rows]))
    atomic_write_text(args.out / f"{args.name}.md", "\n".join(lines) + "\n")
    _plot(rows, args, args.out / f"{args.name}.png")
    print((args.out / f"{args.name}.md").read_text())


def _plot(rows: list[dict[str, Any]], args, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    others = [i for i in dict.fromkeys(r["init"] for r in rows) if i != args.reference]
    fig, axes = plt.subplots(1, len(others), figsize=(6 * len(others), 4), squeeze=False)
    w = 20
    for ax, i in zip(axes[0], others):
        for r in (r for r in rows if r["init"] == i):
            d = r["vs_reference"]["per_step"]
            smooth = [statistics.fmean(d[max(0, k - w + 1):k + 1]) for k in range(len(d))]
            ax.plot(range(1, len(d) + 1), smooth,
                    label=f"seed {r['seed']} (final λ {r['lambda_final']:.1g})")
            steps = len(d)
        ax.axvspan(steps - args.tail + 0.5, steps + 0.5, color="0.85", zorder=0,
                   label=f"the last {args.tail} steps (the table's mean)")
        ax.axhline(0, color="k", lw=0.6)
        ax.set_title(f"λ-val loss, {args.label} = {i} minus {args.reference} ({w}-step mean)")
        ax.set_xlabel("meta-step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
