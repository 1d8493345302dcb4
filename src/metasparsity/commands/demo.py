"""``metasparsity demo``: the main job on the built-in SynthScenes data, no download.

1. generates SynthScenes samples (progress bar), prints their statistics and writes
   ``preview.png`` / ``data_summary.json``;
2. runs a compact ``compare`` (every method, one seed, CPU-sized budgets from the packaged preset
   ``metasparsity/presets/synthscenes_demo.yaml``) and prints the comparison table;
3. says where the report (``report.md`` with its plots) is.

The output folder (default ``runs/demo``) is a compare run directory: running the demo again
continues / reuses it (finished runs are not retrained); ``--overwrite`` starts afresh.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from metasparsity.utils.errors import UserError, require_path

DEFAULT_OUT = Path("runs") / "demo"
PRESET = Path(__file__).resolve().parent.parent / "presets" / "synthscenes_demo.yaml"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo", help="the main job on SynthScenes: data preview + every method compared (2 CPU cores: 6–13 min)",
        description="Generate SynthScenes samples and a preview, then compare STL, dense MTL, "
        "fixed-λ sparse MTL over a λ grid, meta-learning with λ = 0, meta-sparsity in budget mode "
        "(also at the grid's costs) and budget mode without meta-learning under one "
        "CPU-sized budget; print the table and write report.md with plots into --out.")
    p.add_argument("--config", metavar="FILE", default=None,
                   help=f"config (default: the packaged preset {PRESET.name})")
    p.add_argument("--out", metavar="DIR", default=None, help=f"output folder (default {DEFAULT_OUT})")
    p.add_argument("--samples", type=int, default=200, metavar="N",
                   help="samples for the data statistics (default 200)")
    p.add_argument("--data-only", action="store_true", help="stop after the data preview")
    p.add_argument("--overwrite", action="store_true", help="discard a previous demo in --out")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from metasparsity.commands.common import command_inputs
    from metasparsity.config import load_config
    from metasparsity.utils.rundir import CONFIG_FILE, check_parents, check_run_dir, create_run_dir

    if args.samples < 1:
        raise UserError(f"--samples {args.samples}: must be at least 1")
    for opt in ("out", "config"):
        require_path(getattr(args, opt), f"--{opt}")
    out = Path(args.out) if args.out else DEFAULT_OUT
    check_parents(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a directory")
    resume = (out / CONFIG_FILE).is_file() and not args.overwrite
    if resume:
        if args.config:
            raise UserError(f"{out} holds a previous demo: drop --config to continue it, "
                            "or pass --overwrite to start again")
        cfg = load_config(out / CONFIG_FILE, args.overrides)
        check_run_dir(out, resume=True, inputs=command_inputs(args, cfg), label="--out",
                      layout="compare")
    else:
        cfg = load_config(args.config or PRESET, args.overrides)
        check_run_dir(out, overwrite=args.overwrite, inputs=command_inputs(args, cfg),
                      exists_hint="it holds no demo to continue; choose another --out, or pass "
                                  "--overwrite to replace a run directory metasparsity made")
    from metasparsity.recipes.compare import check_compare, equal_compute_config

    # a bad data or comparison setting stops here, before anything is written
    checked = check_compare(cfg, "demo")
    if not resume:  # the config its runs follow: with the equal-compute budget
        create_run_dir(out, equal_compute_config(cfg, checked[1]).to_yaml(),
                       overwrite=args.overwrite, layout="compare")
    from metasparsity.recipes.demo import summarize_data

    summarize_data(cfg, args.samples, out)
    if args.data_only:
        return 0

    from metasparsity.recipes.compare import run_compare
    from metasparsity.report.compare import summary_table

    if resume:
        print(f"continuing the demo in {out} (finished runs are reused; --overwrite starts again)")
    t0 = time.time()
    res = run_compare(cfg, out, resume=True, checked=checked)  # the run directory exists
    print()
    print(summary_table(res))
    print(f"\ndemo finished in {time.time() - t0:.0f} s. Report with plots: {out / 'report.md'}; "
          f"numbers: {out / 'results.json'}; data preview: {out / 'preview.png'}")
    return 0
