"""The demo's data step: statistics of SynthScenes training samples, ``preview.png`` and
``data_summary.json`` (the rest of ``metasparsity demo`` is a compact ``compare``)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from metasparsity.data import build_dataset
from metasparsity.data.preview import preview_dataset
from metasparsity.training.logs import progress_bar
from metasparsity.utils.io import write_json


def summarize_data(cfg, samples: int, out: Path) -> None:
    """Statistics of ``samples`` training samples, ``preview.png`` and ``data_summary.json``."""
    dataset = build_dataset(cfg, "train")
    n = min(samples, len(dataset))
    names = list(getattr(dataset, "class_names", []))
    class_pixels = np.zeros(max(len(names), 1), np.int64)
    positives: dict[str, float] = {}
    start = time.perf_counter()
    for i in progress_bar(range(n), enabled=cfg.train.progress, desc="SynthScenes samples",
                          unit="img"):
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
