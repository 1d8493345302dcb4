"""``metasparsity data ACTION``: look at and prepare data sets.

Actions are nested sub-commands.  Each one is a function ``register_<action>(sub)`` that adds its
parser to ``sub`` (the ``data`` command's sub-parsers) and sets ``func``; adding an action is one
line: append it to :data:`DATA_SUBCOMMANDS` (or call :func:`add_data_subcommand` from another
module before the parser is built).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from metasparsity.commands.common import add_config_args
from metasparsity.commands.data_prepare import register_prepare_parser
from metasparsity.utils.errors import UserError, require_path

DEFAULT_PREVIEW = Path("runs") / "preview.png"


def register_preview(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "preview", help="write a PNG grid of samples with every ground truth",
        description="One row per sample: RGB, segmentation, depth, normals, edges and the "
        "image-level attributes of the configured data set's split.")
    add_config_args(p)
    p.add_argument("--out", metavar="PNG", default=None,
                   help=f"output image (default {DEFAULT_PREVIEW})")
    p.add_argument("-n", type=int, default=6, metavar="N", help="number of samples (default 6)")
    p.add_argument("--split", default="train", help="train, val or test (default train)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.set_defaults(func=run_preview)


DATA_SUBCOMMANDS: list[Callable[[argparse._SubParsersAction], object]] = [
    register_preview,
    register_prepare_parser,
]


def add_data_subcommand(register_fn: Callable[[argparse._SubParsersAction], object]) -> None:
    """Add an action to ``metasparsity data`` (``register_fn(sub)`` adds its parser)."""
    if register_fn not in DATA_SUBCOMMANDS:
        DATA_SUBCOMMANDS.append(register_fn)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="look at and prepare data sets (data preview, ...)",
                       description="Data-set actions; see `metasparsity data ACTION --help`.")
    actions = p.add_subparsers(dest="data_command", metavar="ACTION")
    actions.required = True
    for register_fn in DATA_SUBCOMMANDS:
        register_fn(actions)


def preview_path(out: str | None, overwrite: bool = False) -> Path:
    """Validate the ``--out`` of a preview (a ``.png`` file, not a folder); an existing file is
    replaced only with ``overwrite``."""
    require_path(out, "--out")
    path = Path(out) if out is not None else DEFAULT_PREVIEW
    if path.suffix.lower() != ".png":
        raise UserError(f"--out {path}: the preview is a PNG image; give a file name ending in .png")
    if path.is_dir():
        raise UserError(f"--out {path} is a directory; give a file name ending in .png")
    if (path.exists() or path.is_symlink()) and not overwrite:
        raise UserError(f"--out {path} already exists; pass --overwrite to replace it")
    return path


def run_preview(args: argparse.Namespace) -> int:
    from metasparsity.config import load_config
    from metasparsity.data import SPLITS, build_dataset
    from metasparsity.data.preview import preview_dataset

    if args.n < 1:
        raise UserError(f"-n {args.n}: the preview needs at least one sample")
    if args.split not in SPLITS:
        raise UserError(f"--split {args.split!r}: choose one of {', '.join(SPLITS)}")
    from metasparsity.commands.common import command_inputs
    from metasparsity.utils.rundir import check_outputs_vs_inputs, check_parents

    out = preview_path(args.out, args.overwrite)
    check_parents(out)
    cfg = load_config(args.config, args.overrides)
    check_outputs_vs_inputs([("--out", out)], command_inputs(args, cfg))
    dataset = build_dataset(cfg, args.split)
    n = min(args.n, len(dataset))
    d = cfg.data
    title = f"{d.name} {args.split}, seed {d.seed}, {d.image_size}px, samples 0-{n - 1}"
    path = preview_dataset(dataset, range(n), out, title=title)
    print(f"wrote {path}")
    return 0
