"""``metasparsity evaluate RUN_DIR [--split test]``: re-score a run's best checkpoint."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="evaluate a run's best checkpoint on a split")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("--which", default="best", choices=["best", "last"], help="checkpoint to load")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="overrides of the run's config (e.g. data.num_workers=2)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from metasparsity.report.tables import metrics_table
    from metasparsity.train.evaluate import evaluate_run
    from metasparsity.utils.io import write_json

    res = evaluate_run(Path(args.run_dir), args.split, which=args.which, overrides=args.overrides)
    out = Path(args.run_dir) / f"eval_{args.split}.json"
    write_json(out, res)
    print(metrics_table(res["metrics"]))
    print(f"written {out}")
    return 0
