"""SynthScenes generation throughput: images per second through a DataLoader.

Settings: image size 64 and 128; ``num_workers`` 0 (generation in the main process, one core)
and 2 (two worker processes); batch 32; ``--images`` images per setting (default 320) after one
warm-up batch.  Every process runs torch with one thread.  No cache: every image is rendered.

    python benchmarks/data_throughput.py [--images 320] [--out benchmarks/results/data_throughput.json]

Writes the JSON (settings, images/s, machine) and prints one markdown table row per setting.
"""

from __future__ import annotations

import os

# Measure generation, not the in-process memory of rendered samples (which forked workers
# would inherit from the single-process measurement before them).
os.environ["METASPARSITY_SYNTH_MEMO_MB"] = "0"

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from metasparsity.data.synthscenes import SynthScenes
from metasparsity.utils.io import write_json
from metasparsity.utils.provenance import machine_identity

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "data_throughput.json"


def _one_thread(_worker_id: int) -> None:
    torch.set_num_threads(1)


def measure(size: int, workers: int, images: int, batch_size: int = 32) -> dict:
    """Images/s of ``images`` SynthScenes samples at ``size`` through a DataLoader."""
    ds = SynthScenes(size=size, length=images + batch_size, split="train", seed=0)
    loader = DataLoader(ds, batch_size=batch_size, num_workers=workers,
                        worker_init_fn=_one_thread if workers else None,
                        persistent_workers=False)
    it = iter(loader)
    next(it)  # warm-up: worker start-up and first batch are not timed
    n = 0
    start = time.perf_counter()
    for images_batch, _ in it:
        n += images_batch.shape[0]
    seconds = time.perf_counter() - start
    return {"image_size": size, "num_workers": workers, "batch_size": batch_size, "images": n,
            "seconds": seconds, "images_per_second": n / seconds}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=320, help="timed images per setting")
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args(argv)
    if args.images < 1 or min(args.sizes) < 8 or min(args.workers) < 0:
        ap.error(f"--images must be >= 1, --sizes >= 8 and --workers >= 0; got {args.images}, "
                 f"{args.sizes} and {args.workers}")
    if args.out.suffix != ".json" or args.out.is_dir():
        ap.error(f"--out {args.out}: give the .json file to write")
    torch.set_num_threads(1)

    rows = [measure(size, w, args.images) for size in args.sizes for w in args.workers]
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        cores = os.cpu_count()
    result = {
        "benchmark": "SynthScenes DataLoader throughput (no cache)",
        "machine": {**machine_identity(), "cpu_count": os.cpu_count(), "usable_cores": cores,
                    "numpy": np.__version__, "torch_threads_per_process": 1},
        "results": rows,
    }
    write_json(args.out, result)
    print("| image size | DataLoader workers | images | images/s |")
    print("|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['image_size']} | {r['num_workers']} | {r['images']} | "
              f"{r['images_per_second']:.0f} |")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
