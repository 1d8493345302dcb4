"""Data loading alone: seconds per training step and per meta-step of a paper config's batches.

What ``train`` and ``meta-train`` draw per step, without any model: ``train`` one batch of
``train.batch_size`` from its stream; ``meta-train`` ``meta.meta_batch`` batches of
``meta.batch_size`` from each of its support, query and λ-validation streams (held-out
objective), each a :class:`~metasparsity.training.batches.BatchStream` over the split the
recipe uses (:func:`~metasparsity.meta.sampler.meta_stream_split`), with ``data.num_workers``
loader workers per stream as in the recipes.  The data: a fixture of ``--config``'s data set in
its real layout and resolution (``benchmarks/paper_scale.py``: NYUD_MT at 480×640 by default),
``--fixture-size`` training images, the config's augmentation.

The paper-scale meta-training on an H200 took 13 s per meta-step with the loaders of the time
(``benchmarks/results/paper_scale_h200.md``); this isolates the loading.  Time per step: the
median over ``--steps`` steps after ``--warmup`` steps (the workers' start).

    python benchmarks/stream_throughput.py [--config nyuv2_paper] [--workers 2]
        [--fixture-size 200] [--steps 12] [--name stream_throughput]

Writes ``benchmarks/results/<--name>.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = Path(__file__).resolve().parent / "results"
sys.path.insert(0, str(Path(__file__).resolve().parent))


def _time(draw, steps: int, warmup: int) -> list[float]:
    out = []
    for k in range(warmup + steps):
        t0 = time.perf_counter()
        draw()
        if k >= warmup:
            out.append(time.perf_counter() - t0)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="nyuv2_paper",
                   choices=["nyuv2_paper", "nyuv2_mtan_paper", "celebamaskhq_paper"])
    p.add_argument("--workers", type=int, default=2, help="data.num_workers (per stream)")
    p.add_argument("--fixture-size", type=int, default=200)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--name", default="stream_throughput")
    args = p.parse_args(argv)
    from fixed_lambda_grid import check_args

    check_args(p, args)  # --out a folder, --name a file stem, --jobs, --seeds
    if args.workers < 0 or args.steps < 1 or args.warmup < 0 or args.fixture_size < 8:
        p.error("--workers >= 0, --steps >= 1, --warmup >= 0 and --fixture-size >= 8")

    import torch

    torch.set_num_threads(1)
    from metasparsity.config import load_config
    from metasparsity.data import build_dataset
    from metasparsity.meta.sampler import meta_stream_split
    from metasparsity.training.batches import BatchStream
    from metasparsity.utils.provenance import code_identity, command_line, machine_identity
    from paper_scale import _fixture

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root, data = _fixture(args.config, Path(tmp), args.fixture_size)
        cfg = load_config(ROOT / "configs" / f"{args.config}.yaml",
                          [f"data.root={root}", *data, f"data.num_workers={args.workers}"])
        train_set = build_dataset(cfg, "train")
        m, nw = cfg.meta, args.workers
        stream = BatchStream(train_set, cfg.train.batch_size, 0, num_workers=nw)
        rows.append(("train", f"1 × {cfg.train.batch_size}",
                     _time(lambda: next(stream), args.steps, args.warmup)))
        stream.close()
        sup, qry, held = meta_stream_split(len(train_set), 0, m.lambda_val_fraction)
        streams = [BatchStream(train_set, m.batch_size, 0 + k, num_workers=nw, indices=ix)
                   for k, ix in ((0, sup), (1, qry), (3, held))]

        def meta_draw() -> None:
            for _ in range(m.meta_batch):
                for s in streams:
                    next(s)

        rows.append(("meta-train", f"{m.meta_batch} × 3 × {m.batch_size}",
                     _time(meta_draw, args.steps, args.warmup)))
        sizes = {"train": len(train_set), "support": len(sup), "query": len(qry),
                 "lambda_val": len(held)}
        for s in streams:
            s.close()
    ci = code_identity()
    code = f"{(ci['commit'] or 'unknown')[:7]}{' (uncommitted changes)' if ci['dirty'] else ''}"
    result = {"command": command_line("benchmarks/stream_throughput.py",
                                         sys.argv[1:] if argv is None else argv, ROOT),
              "machine": machine_identity(), "code": code, "config": args.config,
              "workers": args.workers, "sizes": sizes,
              "rows": [{"command": c, "batches": b, "median_s": statistics.median(t), "times_s": t}
                       for c, b, t in rows]}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps(result, indent=2) + "\n")
    mach = result["machine"]
    md = [f"# Data loading alone: {args.config}, {args.workers} workers per stream", "",
          f"`{result['command']}`; {mach['cpu']} ({mach['cpu_capability']}, {mach['cores']} "
          f"cores), torch {mach['torch']}; code {code}. Fixture: {sizes['train']} training "
          f"images (support {sizes['support']}, query {sizes['query']}, λ-validation "
          f"{sizes['lambda_val']}). Median over {args.steps} steps after {args.warmup}.", "",
          "| command | batches per step | s / step (median) |", "|---|---|---:|"]
    md += [f"| {r['command']} | {r['batches']} | {r['median_s']:.3f} |" for r in result["rows"]]
    (args.out / f"{args.name}.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
