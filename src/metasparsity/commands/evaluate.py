"""``metasparsity evaluate RUN_DIR [--split test] [--trivial] [--against REF_RUN]``: re-score a
run's best checkpoint, and its Δm against another run."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="evaluate a run's best checkpoint on a split")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("--which", default="best", choices=["best", "last"], help="checkpoint to load")
    p.add_argument("--trivial", action="store_true",
                   help="also score the trivial predictors (majority class, mean depth, mean "
                   "normal, all-zero edges, majority attribute; statistics from the train split)")
    p.add_argument("--against", metavar="REF_RUN",
                   help="also score REF_RUN's best checkpoint on the split and print Δm (each "
                   "task's primary metrics, README's Metrics, relative to REF_RUN's) over the tasks both "
                   "have, e.g. a sparse model against the dense MTL model of the same seed")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="overrides of the run's config (e.g. data.num_workers=2; with --against, "
                   "of both runs' configs)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from metasparsity.config import load_config
    from metasparsity.recipes.evaluate_run import (
        check_against,
        delta_against,
        evaluate_run,
        trivial_results,
    )
    from metasparsity.recipes.load_run import unfinished_note
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
    ref_cfg = None
    if args.against is not None:
        ref_cfg = load_config(require_run_dir(args.against) / CONFIG_FILE, args.overrides)
        check_against(args.run_dir, cfg, args.against, ref_cfg, args.split, args.which)
    check_outputs_vs_inputs([("the evaluation file", out)], config_inputs(cfg))
    res = evaluate_run(Path(args.run_dir), args.split, which=args.which, overrides=args.overrides)
    if args.trivial:
        res["trivial"] = trivial_results(cfg, list(res["metrics"]), args.split)
    if ref_cfg is not None:
        ref = evaluate_run(Path(args.against), args.split, overrides=args.overrides)
        res["against"] = delta_against(cfg, res, ref_cfg, ref)
    write_json(out, res)
    if args.trivial:
        rows = [[t, k, v, res["trivial"][t].get(k)]
                for t, ms in res["metrics"].items() for k, v in ms.items() if k != "loss"]
        print(markdown_table(["task", "metric", "model", "trivial predictor"], rows))
    else:
        print(metrics_table(res["metrics"]))
    if ref_cfg is not None:
        d = res["against"]
        print()
        print(markdown_table(["task", f"Δ_t % against {args.against}"],
                             [[t, f"{v:+.2f}"] for t, v in d["per_task"].items()]))
        print(f"Δm {d['delta_m']:+.2f} % over {len(d['tasks'])} tasks: "
              + "; ".join(f"{t} ({', '.join(ms)})" for t, ms in d["spec"].items()))
        if d["left_out"]:
            print(f"left out (reference value 0 or not finite): {', '.join(d['left_out'])}")
        for key, whose in (("only_run", args.run_dir), ("only_reference", args.against)):
            if d[key]:
                print(f"not in Δm, only {whose} has: {', '.join(d[key])}")
    print(f"written {out}")
    notes = [unfinished_note(args.run_dir, res["checkpoint"])]
    if ref_cfg is not None:
        notes.append(unfinished_note(args.against, ref["checkpoint"]))
    for note in filter(None, notes):  # last: an error before them stays one line
        print(note, file=sys.stderr)
    return 0
