"""``metasparsity finetune RUN_DIR --tasks ...``: meta-testing on seen / unseen tasks."""

from __future__ import annotations

import argparse
from pathlib import Path

from metasparsity.utils.args import split_list
from metasparsity.utils.errors import UserError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "finetune", help="fine-tune a (meta-)trained run on seen or unseen tasks, zero groups kept",
        description="Fine-tune RUN_DIR's best checkpoint on --tasks (default: its seen tasks "
        "together). Unseen tasks get fresh heads; zero groups of the backbone stay zero. "
        "Options via finetune.* overrides: steps, epochs, lr, fraction (few-shot), freeze_backbone, "
        "lam, lam_unseen, keep_zeros (removed: only the zeros pruning removes stay zero; "
        "none: the prox alone decides, zeros may revive).")
    p.add_argument("source", metavar="RUN_DIR", help="run to start from")
    p.add_argument("--tasks", default=None, help="comma-separated tasks (seen or unseen)")
    p.add_argument("--out", metavar="OUT_DIR", help="run directory (default RUN_DIR/finetune_<tasks>)")
    p.add_argument("--resume", metavar="OUT_DIR", help="continue an interrupted fine-tuning run")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="overrides of the source run's config, e.g. finetune.fraction=0.1")
    p.set_defaults(func=run)


def parse_tasks(text: str) -> list[str]:
    """``"normal,depth"`` -> ``["normal", "depth"]``; an empty entry (``normal,``,
    ``normal,,depth``) or a task named twice is a UserError naming --tasks."""
    return split_list(text, "--tasks", "task name", "normal,depth")


def run(args: argparse.Namespace) -> int:
    from metasparsity.commands.common import budget_line, check_run_options
    from metasparsity.config import load_config
    from metasparsity.recipes.finetune import run_finetune
    from metasparsity.report.tables import metrics_table
    from metasparsity.utils.rundir import (
        CONFIG_FILE,
        check_run_dir,
        config_inputs,
        require_run_dir,
        run_inputs,
    )

    tasks = None if args.tasks is None else parse_tasks(args.tasks)
    check_run_options(args)
    src = require_run_dir(args.source)
    if args.resume:
        if args.out and Path(args.out) != Path(args.resume):
            raise UserError("--out and --resume name different directories; give only --resume")
        check_run_dir(args.resume, resume=True, inputs=run_inputs(src), layout="training")
        out = Path(args.resume)
        # the interrupted run's own resolved config (it records the tasks), new overrides on top
        cfg = load_config(out / CONFIG_FILE, args.overrides)
        tasks = tasks or cfg.train.tasks
        check_run_dir(out, resume=True, inputs=config_inputs(cfg))
    else:
        cfg = load_config(Path(src) / CONFIG_FILE, args.overrides)
        out = Path(args.out) if args.out else Path(src) / f"finetune_{'+'.join(tasks or ['seen'])}"
        # the source run's config.yaml and checkpoints are inputs: --out may be a new folder
        # inside the source run (the default), never the run itself or a folder holding it
        check_run_dir(out, overwrite=args.overwrite,
                      inputs=[*run_inputs(src), *config_inputs(cfg)])
    args.out = str(out)  # where an interrupted run can be resumed from
    res = run_finetune(src, tasks, out, cfg=cfg, resume=bool(args.resume), overwrite=args.overwrite)
    print(metrics_table(res["test"]))
    if res.get("budget"):
        print(budget_line(res["budget"]))
    print(f"group sparsity {100 * res['sparsity']['group_sparsity']:.1f} % kept; results in {out / 'results.json'}")
    return 0
