"""``metasparsity data prepare DATASET``: turn a raw data set release into the layout we read.

Hooked into ``metasparsity data`` by :func:`register_prepare_parser`::

    metasparsity data prepare celebamaskhq --src CelebAMask-HQ --out data/celebamaskhq \\
        --classes 3 --size 256
"""

from __future__ import annotations

import argparse

from metasparsity.commands.common import positive_int, threads
from metasparsity.utils.limits import MAX_IMAGE_SIZE as MAX_SIZE
from metasparsity.utils.limits import MAX_THREADS
from metasparsity.utils.limits import MIN_IMAGE_SIZE as MIN_SIZE

PREPARABLE = ("celebamaskhq",)
# --size: the bounds of data.image_size, at which the prepared images are read (from
# utils.limits, not metasparsity.data.celebamaskhq_prepare: --help must not import torch)


def _size(text: str) -> int:
    """``--size N``: an integer in [``MIN_SIZE``, ``MAX_SIZE``]."""
    v = positive_int(text)
    if not MIN_SIZE <= v <= MAX_SIZE:
        raise argparse.ArgumentTypeError(f"must be between {MIN_SIZE} and {MAX_SIZE}, got {v}")
    return v


def register_prepare_parser(data_subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``prepare`` sub-command to the ``data`` command's sub-parsers; return its parser."""
    p = data_subparsers.add_parser(
        "prepare", help="convert a raw data set release (CelebAMask-HQ) into a prepared folder",
        description="Merge CelebAMask-HQ part masks into label maps (3 classes: background/hair/"
                    "face, or all 19), resize images and labels, write attributes, splits and "
                    "meta.json. The output appears only when complete.")
    p.add_argument("dataset", choices=PREPARABLE, help="data set to prepare")
    p.add_argument("--src", required=True, metavar="DIR", help="the raw release folder")
    p.add_argument("--out", required=True, metavar="DIR", help="the prepared folder to write")
    p.add_argument("--classes", type=int, choices=[3, 19], default=3,
                   help="3 = background/hair/face (the authors' setting), 19 = all parts (default 3)")
    p.add_argument("--size", type=_size, default=256,
                   help=f"output side in pixels, {MIN_SIZE} to {MAX_SIZE} (default 256)")
    p.add_argument("--split", choices=["auto", "celeba", "fixed"], default="auto",
                   help="celeba: the standard split from CelebA-HQ-to-CelebA-mapping.txt; fixed: "
                        "ids sorted, last 10%% test, previous 10%% val; auto: celeba when the "
                        "mapping file exists (default)")
    p.add_argument("--workers", type=threads, default=None,
                   help=f"threads, 1 to {MAX_THREADS} (default: cores, at most 8)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run_prepare)
    return p


def run_prepare(args: argparse.Namespace) -> int:
    from metasparsity.data.celebamaskhq_prepare import prepare_celebamaskhq
    from metasparsity.utils.errors import require_path

    for opt in ("src", "out"):
        require_path(getattr(args, opt), f"--{opt}")
    out = prepare_celebamaskhq(args.src, args.out, classes=args.classes, size=args.size,
                               split=args.split, overwrite=args.overwrite,
                               progress=not args.no_progress, workers=args.workers)
    print(f"prepared {args.dataset} in {out}")
    return 0
