"""``metasparsity demo``: a first look at the built-in data, with no download.

Generates a few hundred SynthScenes samples (progress bar), reports the generation speed, the
share of each class's pixels and of each attribute's positives, and writes ``preview.png`` and
``data_summary.json`` into the output folder (default ``runs/demo``).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from metasparsity.commands.common import add_config_args
from metasparsity.utils.errors import UserError

DEFAULT_OUT = Path("runs") / "demo"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="generate SynthScenes samples and write a preview (no download)",
                       description="Generate SynthScenes training samples, print statistics and "
                       "write preview.png and data_summary.json into --out.")
    add_config_args(p)
    p.add_argument("--out", metavar="DIR", default=None, help=f"output folder (default {DEFAULT_OUT})")
    p.add_argument("--samples", type=int, default=300, metavar="N",
                   help="samples to generate (default 300)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from metasparsity.config import load_config
    from metasparsity.data import build_dataset
    from metasparsity.data.preview import preview_dataset
    from metasparsity.utils.io import write_json

    if args.samples < 1:
        raise UserError(f"--samples {args.samples}: must be at least 1")
    out = Path(args.out) if args.out else DEFAULT_OUT
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a directory")
    cfg = load_config(args.config, args.overrides)
    dataset = build_dataset(cfg, "train")
    n = min(args.samples, len(dataset))

    names = list(getattr(dataset, "class_names", []))
    class_pixels = np.zeros(max(len(names), 1), np.int64)
    positives: dict[str, float] = {}
    start = time.perf_counter()
    for i in tqdm(range(n), desc="SynthScenes samples", unit="img", disable=not cfg.train.progress):
        _, targets = dataset[i]
        for task, target in targets.items():
            if target.ndim == 0:
                positives[task] = positives.get(task, 0.0) + float(target)
            elif task == "segment":
                counts = np.bincount(target.numpy().ravel(), minlength=len(class_pixels))
                class_pixels[: len(counts)] += counts[: len(class_pixels)]
    seconds = time.perf_counter() - start

    out.mkdir(parents=True, exist_ok=True)
    preview = preview_dataset(dataset, range(min(8, n)), out / "preview.png",
                              title=f"{cfg.data.name} train, seed {cfg.data.seed}, "
                              f"{cfg.data.image_size}px, samples 0-{min(8, n) - 1}")
    summary = {
        "data": cfg.data.name,
        "image_size": cfg.data.image_size,
        "samples": n,
        "seconds": seconds,
        "images_per_second": n / seconds,
        "class_pixel_share": {name: class_pixels[k] / max(class_pixels.sum(), 1)
                              for k, name in enumerate(names)},
        "attribute_positive_share": {k: v / n for k, v in positives.items()},
    }
    write_json(out / "data_summary.json", summary)

    print(f"generated {n} samples of {cfg.data.image_size}x{cfg.data.image_size} in {seconds:.1f} s "
          f"({n / seconds:.0f} images/s)")
    if names:
        print("class pixel share: " + ", ".join(
            f"{k} {100 * v:.1f} %" for k, v in summary["class_pixel_share"].items()))
    if positives:
        print("attribute positives: " + ", ".join(
            f"{k} {100 * v:.0f} %" for k, v in summary["attribute_positive_share"].items()))
    print(f"preview: {preview}")
    print(f"summary: {out / 'data_summary.json'}")
    return 0
