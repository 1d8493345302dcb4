"""``metasparsity evaluate RUN_DIR [--split test] [--trivial]``: re-score a run's best checkpoint."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="evaluate a run's best checkpoint on a split")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("--which", default="best", choices=["best", "last"], help="checkpoint to load")
    p.add_argument("--trivial", action="store_true",
                   help="also score the trivial predictors (majority class, mean depth, mean "
                   "normal, all-zero edges, majority attribute; statistics from the train split)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="overrides of the run's config (e.g. data.num_workers=2)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from metasparsity.config import load_config
    from metasparsity.recipes.evaluate_run import evaluate_run, trivial_results
    from metasparsity.report.tables import markdown_table, metrics_table
    from metasparsity.utils.io import write_json
    from metasparsity.utils.rundir import (
        CONFIG_FILE,
        check_outputs_vs_inputs,
        config_inputs,
        require_run_dir,
    )

    out = require_run_dir(args.run_dir) / f"eval_{args.split}.json"
    cfg = load_config(Path(args.run_dir) / CONFIG_FILE, args.overrides)
    check_outputs_vs_inputs([("the evaluation file", out)], config_inputs(cfg))
    res = evaluate_run(Path(args.run_dir), args.split, which=args.which, overrides=args.overrides)
    if args.trivial:
        res["trivial"] = trivial_results(cfg, list(res["metrics"]), args.split)
    write_json(out, res)
    if args.trivial:
        rows = [[t, k, v, res["trivial"][t].get(k)]
                for t, ms in res["metrics"].items() for k, v in ms.items() if k != "loss"]
        print(markdown_table(["task", "metric", "model", "trivial predictor"], rows))
    else:
        print(metrics_table(res["metrics"]))
    print(f"written {out}")
    return 0
