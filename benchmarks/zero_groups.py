"""Where finished runs put their zero groups: per backbone stage, in the convs that alone read
their input (a zero group there removes a channel) and in those that share it (the residual
stream's readers: a zero group there removes nothing), with the pruned backbone's MACs.
No training: each run's kept model is loaded (``best``, the model its results report).

Each ``--runs`` pattern is a glob of run folders, one per seed, averaged:

    python benchmarks/zero_groups.py \\
        --runs "runs/bench_fixed_lambda_grid_avx2/seed_*/adam_0.001" \\
               "runs/bench_budget_ramp_source_avx2/seed_*/budget_macs_0.5/finetune_seen" \\
        --labels "grid λ=1e-3" "budget, ramp" --out benchmarks/results/zero_groups.md
"""

from __future__ import annotations

import argparse
import glob
import re
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def zero_groups(run: str) -> dict[str, float]:
    """``{stage/own, stage/shared: zero groups, stage/own_total, …, macs}`` of one run."""
    import torch

    from metasparsity.recipes.load_run import load_run_model
    from metasparsity.sparsity import BackboneCost, channel_groups, group_norms, removable_layers

    cfg, model, _ = load_run_model(run)
    model.eval()
    x = torch.zeros(1, 3, cfg.data.image_size, cfg.data.image_size)
    layers = channel_groups(model)
    params = dict(model.named_parameters())
    out: dict[str, float] = {}
    for g in removable_layers(model, x, layers):
        m = re.match(r"backbone\.(layer\d+)", g.module_name)
        key = f"{m.group(1) if m else 'stem'}/{'own' if g.group_weight > 0 else 'shared'}"
        zeros = int((group_norms(params[g.name].detach()) == 0).sum())
        out[key] = out.get(key, 0) + zeros
        out[key + "_total"] = out.get(key + "_total", 0) + g.num_groups
    out["macs"] = BackboneCost(model, x, layers).fraction(model, "macs")
    return out


def table(rows: list[tuple[str, list[dict[str, float]]]]) -> str:
    """One markdown row per label: mean zero groups per stage and kind over its runs."""
    keys = sorted({k for _, runs in rows for r in runs for k in r
                   if not k.endswith("_total") and k != "macs"},
                  key=lambda k: (k.split("/")[0] == "stem", k))
    first = rows[0][1][0]
    head = [f"{k.replace('/own', ' own').replace('/shared', ' shared')} (of {first.get(k + '_total', 0):g})"
            for k in keys]
    lines = ["| runs | seeds | " + " | ".join(head) + " | backbone MACs % |",
             "|---" * (len(keys) + 3) + "|"]
    for label, runs in rows:
        cells = [f"{statistics.mean(r.get(k, 0) for r in runs):.0f}" for k in keys]
        macs = statistics.mean(r["macs"] for r in runs) * 100
        lines.append(f"| {label} | {len(runs)} | " + " | ".join(cells) + f" | {macs:.1f} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", nargs="+", required=True,
                   help="one glob of finished run folders per row (quote it)")
    p.add_argument("--labels", nargs="+", help="one label per --runs pattern (default: the pattern)")
    p.add_argument("--out", type=Path, help="also write the table to this markdown file (.md)")
    args = p.parse_args()
    labels = args.labels or args.runs
    if len(labels) != len(args.runs):
        p.error(f"--labels: {len(labels)} labels for {len(args.runs)} --runs patterns")
    sys.path.insert(0, str(ROOT / "src"))
    from metasparsity.training.reuse import read_run_results
    from metasparsity.utils.errors import UserError
    from metasparsity.utils.io import atomic_write_text
    from metasparsity.utils.provenance import command_line
    from metasparsity.utils.rundir import check_output_file

    if args.out is not None:
        try:
            check_output_file(args.out, (".md",))
        except UserError as e:
            p.error(str(e))
    found = []  # every pattern's runs, their results checked, before the first model is loaded
    for pattern in args.runs:
        found.append(sorted(d for d in glob.glob(pattern) if (Path(d) / "results.json").is_file()))
        if not found[-1]:
            p.error(f"--runs {pattern!r}: no finished run folder (with a results.json) matches")
        try:
            for d in found[-1]:
                read_run_results(d)
        except UserError as e:
            p.error(f"--runs {pattern!r}: {e}")
    rows = []
    for label, pattern, runs in zip(labels, args.runs, found):
        try:
            rows.append((label, [zero_groups(d) for d in runs]))
        except UserError as e:
            p.error(f"--runs {pattern!r}: {e}")
    text = table(rows)
    print(text)
    if args.out:
        try:
            atomic_write_text(args.out, "# Zero groups per stage\n\n`"
                              + command_line("benchmarks/zero_groups.py", sys.argv[1:], ROOT)
                              + f"`\n\n{text}\n")
        except OSError as e:
            p.error(f"--out {args.out}: cannot write it ({e.strerror or e})")


if __name__ == "__main__":
    main()
