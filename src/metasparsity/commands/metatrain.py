"""``metasparsity meta-train``: MAML over task subsets with a learned λ."""

from __future__ import annotations

import argparse

from metasparsity.commands.common import (
    add_run_args,
    budget_line,
    config_from_args,
    run_dir_from_args,
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "meta-train", help="meta-sparsity: MAML over task subsets with learned λ",
        description="Meta-train the shared backbone on data.seen_tasks with a learned group-lasso "
        "strength λ (meta.lambda_init = 0: meta-learning without sparsity). Writes λ / sparsity "
        "plots into the run directory.")
    add_run_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    run_dir = run_dir_from_args(args, cfg)
    from metasparsity.recipes.meta_train import run_meta_train
    from metasparsity.report.tables import metrics_table

    res = run_meta_train(cfg, run_dir, resume=bool(args.resume), overwrite=args.overwrite)
    print(metrics_table(res["val"]))
    lam = res["lambda_final"]
    if isinstance(lam, list):  # per-layer λ beside per-layer sparsity
        from metasparsity.report.tables import markdown_table

        print(markdown_table(["layer", "λ", "zero groups %"], [
            [layer["name"].replace("backbone.", "").replace(".weight", ""),
             f"{layer['lambda']:.3g}", f"{100 * layer['group_sparsity']:.1f}"]
            for layer in res["sparsity"]["per_layer"]]))
    if res.get("budget"):
        print(budget_line(res["budget"]))
    lam_s = f"{lam:.3g}" if not isinstance(lam, list) else "[" + ", ".join(f"{v:.2g}" for v in lam) + "]"
    print(f"λ: {res['lambda_init']:g} → {lam_s};  group sparsity "
          f"{100 * res['sparsity']['group_sparsity']:.1f} %;  plots in {run_dir}")
    return 0
