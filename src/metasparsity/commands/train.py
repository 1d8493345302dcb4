"""``metasparsity train``: dense STL / MTL, fixed-λ group-sparse MTL when ``sparsity.lam > 0``,
or budget mode when ``sparsity.target`` is set."""

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
        "train", help="train a dense STL/MTL model, fixed-λ sparse MTL (sparsity.lam > 0), or "
        "sparse MTL at a cost budget (sparsity.target)",
        description="Train on data.seen_tasks (or train.tasks). One task = single-task (STL); "
        "sparsity.lam > 0 adds the proximal group-lasso step after every optimizer step; "
        "sparsity.target (budget mode) makes λ the multiplier that holds the backbone at that "
        "fraction of its dense cost, starting from sparsity.lam.")
    add_run_args(p, default_config=None)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    run_dir = run_dir_from_args(args, cfg)
    from metasparsity.recipes.train import final_multiplier, run_train
    from metasparsity.report.tables import metrics_table

    res = run_train(cfg, run_dir, resume=bool(args.resume), overwrite=args.overwrite)
    print(metrics_table(res["test"]))
    if res.get("budget"):
        b = res["budget"]
        print(f"{budget_line(b)}; λ {res['lam']:.3g} → {final_multiplier(b):.3g}")
    print(f"group sparsity {100 * res['sparsity']['group_sparsity']:.1f} %  "
          f"(best step {res['best_step']}); results in {run_dir / 'results.json'}")
    return 0
