"""Step times and GPU memory of the paper-scale configs, and the run times they imply.

The paper configs (``configs/nyuv2_paper.yaml``, ``nyuv2_mtan_paper.yaml``,
``celebamaskhq_paper.yaml``) are run as they are (dilated ResNet-50 at output stride 8,
256-channel ASPP heads, the configs' image sizes, batch sizes and meta-batches) by the real
commands, ``metasparsity train`` and ``metasparsity meta-train``, for a few steps each.  No real
data set can be downloaded here, so each runs on a fixture written in the data set's real on-disk
layout at its real resolution (``tests/data/fixtures.py``: NYUD_MT at 480×640, MTAN's ``.npy``
at 288×384, the raw CelebAMask-HQ release at 1024² with 512² masks, prepared by
``metasparsity data prepare`` at 256²); the only data options changed are the root and the
validation size the tiny fixture allows.  Compute per step does not depend on the pixels.

Time per step: the runs log their elapsed time (``metrics.jsonl``'s ``time``) every
``--log-every`` steps; the median over the logged intervals after the first
(warm-up: cuDNN's algorithm search, the first batches) of elapsed time / steps.  The loader's
workers (the configs' ``data.num_workers``) prepare batches beside the GPU, as in a real run.
Peak memory: ``torch.cuda.max_memory_allocated`` over the command, reset before it.  Full-run
estimates: the measured time per step × the config's ``train.max_steps`` / ``meta.steps`` /
``finetune.steps``; validation, checkpoints and evaluation come on top.

``--amp`` runs each command with ``train.amp=false`` and/or ``true`` (bf16 autocast).  After the
timings, ``--end-to-end`` takes the first config's meta-trained model through the rest of the
pipeline on the GPU: ``finetune`` on its unseen tasks, ``prune`` and ``evaluate`` of the pruned
model (checks that these paths run on CUDA at paper scale; no time is reported for them).

    python benchmarks/paper_scale.py [--configs nyuv2_paper ...] [--train-steps 60]
        [--meta-steps 16] [--amp false true] [--budget-s 420] [--end-to-end] [--name paper_scale]

Runs on the device ``train.device=auto`` picks (CUDA where there is one); ``KEY=VALUE``
overrides apply to every run (the report lists them).  Stops starting new runs once ``--budget-s`` seconds have passed and writes
what it has.  Writes ``benchmarks/results/<--name>.{json,md}``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
OUT = Path(__file__).resolve().parent / "results"
CONFIGS = ("nyuv2_paper", "nyuv2_mtan_paper", "celebamaskhq_paper")


def _fixture(name: str, work: Path, n: int) -> tuple[Path, list[str]]:
    """A fixture of ``name``'s data set in its real layout and resolution, and the data
    overrides it needs (root; a validation size the fixture holds)."""
    sys.path.insert(0, str(ROOT))
    from tests.data.fixtures import write_celebamaskhq_raw, write_mtan, write_nyud_mt

    if name == "nyuv2_paper":
        fx = write_nyud_mt(work / "NYUD_MT", n_train=n, n_val=max(4, n // 4), size=(480, 640))
        return fx["root"], ["data.val_size=4"]
    if name == "nyuv2_mtan_paper":
        fx = write_mtan(work / "nyuv2_mtan", n_train=n, n_val=max(4, n // 4), size=(288, 384))
        return fx["root"], ["data.val_size=4"]
    from metasparsity.data.celebamaskhq_prepare import prepare_celebamaskhq

    raw = write_celebamaskhq_raw(work / "celeba_raw", ids=tuple(range(n + n // 2)),
                                 mask_size=512, image_size=1024)
    out = prepare_celebamaskhq(raw["root"], work / "celebamaskhq3", classes=3, size=256,
                               split="auto", progress=False)
    return out, []


def _per_step(metrics: Path, kind: str) -> tuple[float, int]:
    """Median seconds per step over the logged intervals after the first, and their count."""
    recs = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    recs = [r for r in recs if r.get("kind") == kind and "time" in r]
    rates = [(b["time"] - a["time"]) / (b["step"] - a["step"])
             for a, b in zip(recs[1:], recs[2:]) if b["step"] > a["step"]]
    if not rates:
        raise RuntimeError(f"{metrics}: fewer than three logged '{kind}' records")
    return statistics.median(rates), len(rates)


def _run(args: list[str]) -> None:
    from metasparsity.cli import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(args)
    if code != 0:
        raise RuntimeError(f"metasparsity {' '.join(args)} exited {code}: {err.getvalue()[-2000:]}")


def _timed(cmd: str, common: list[str], extra: list[str], out: Path, kind: str) -> dict[str, Any]:
    import torch

    gpu = torch.cuda.is_available()
    if gpu:
        torch.cuda.reset_peak_memory_stats()
    t0 = time.time()
    _run([cmd, *common, *extra, "--out", str(out)])
    sec, n = _per_step(out / "metrics.jsonl", kind)
    return {"s_per_step": sec, "intervals": n, "wall_s": time.time() - t0,
            "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if gpu else None}


def measure(name: str, args: argparse.Namespace, work: Path, rows: list[dict],
            t_start: float) -> Path | None:
    """Time ``train`` and ``meta-train`` of one paper config (each ``--amp``); returns the last
    meta-training's run folder."""
    from metasparsity.config import load_config

    config = ROOT / "configs" / f"{name}.yaml"
    root, data = _fixture(name, work / "data", args.fixture_size)
    cfg = load_config(config, [*data, *args.overrides])
    common = ["--config", str(config), f"data.root={root}", *data, "train.progress=false",
              *args.overrides]
    last_meta = None
    for amp in args.amp:
        for cmd in ("train", "meta-train"):
            if time.time() - t_start > args.budget_s:
                print(f"budget of {args.budget_s} s spent: {name} {cmd} amp={amp} not run",
                      flush=True)
                continue
            out = work / "runs" / f"{name}_{cmd}_amp{amp}"
            if cmd == "train":
                s, le = args.train_steps, args.log_every
                extra = [f"train.max_steps={s}", f"train.log_every={le}", f"train.val_every={s}",
                         "train.warmup_steps=0"]
                full = {"train": cfg.train.max_steps, "finetune": cfg.finetune.steps}
                kind = "train"
            else:
                s = args.meta_steps
                extra = [f"meta.steps={s}", "meta.log_every=2", f"meta.val_every={s}"]
                full = {"meta-train": cfg.meta.steps}
                kind = "meta"
            r = _timed(cmd, common, [*extra, f"train.amp={amp}"], out, kind)
            r.update(config=name, command=cmd, amp=amp, steps=s,
                     batch=cfg.meta.batch_size if cmd == "meta-train" else cfg.train.batch_size,
                     meta_batch=cfg.meta.meta_batch if cmd == "meta-train" else None,
                     estimates_min={k: v * r["s_per_step"] / 60 for k, v in full.items()})
            rows.append(r)
            print(json.dumps(r), flush=True)
            if cmd == "meta-train":
                last_meta = out
    return last_meta


def end_to_end(meta_run: Path, name: str, work: Path) -> list[str]:
    """``finetune`` (unseen tasks), ``evaluate``, ``prune`` and ``predict`` of ``meta_run``."""
    from metasparsity.config import load_config

    cfg = load_config(ROOT / "configs" / f"{name}.yaml")
    unseen = ",".join(cfg.data.unseen_tasks)
    done = []
    _run(["finetune", str(meta_run), "--tasks", unseen, "finetune.steps=6",
          "finetune.val_every=6", "--out", str(work / "e2e_unseen")])
    done.append(f"finetune {name} --tasks {unseen}: 6 steps")
    _run(["evaluate", str(meta_run), "--split", "test"])
    done.append("evaluate (test split)")
    _run(["prune", str(meta_run), "--out", str(work / "e2e_pruned")])
    done.append("prune (with its latency table)")
    import numpy as np
    from PIL import Image

    image = work / "e2e_image.png"  # a photo-sized input (MTAN's fixture holds .npy arrays)
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)).save(image)
    _run(["predict", str(work / "e2e_pruned"), str(image), "--out", str(work / "e2e_predict")])
    done.append("predict (pruned model, one image)")
    return done


def table(rows: list[dict]) -> str:
    lines = ["| config | command | bf16 autocast | batch × subsets | s / step | peak GPU memory GiB "
             "| full run, from the measured step (min) |",
             "|---|---|---|---|---:|---:|---|"]
    for r in rows:
        batch = f"{r['batch']}" + (f" × {r['meta_batch']}" if r["meta_batch"] else "")
        est = ", ".join(f"{k} {v:.0f}" for k, v in r["estimates_min"].items())
        mem = "—" if r["peak_gib"] is None else f"{r['peak_gib']:.1f}"
        lines.append(f"| {r['config']} | {r['command']} | {'on' if r['amp'] else 'off'} | {batch} "
                     f"| {r['s_per_step']:.3f} | {mem} | {est} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from metasparsity.utils.provenance import command_line

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=CONFIGS)
    p.add_argument("--train-steps", type=int, default=60)
    p.add_argument("--meta-steps", type=int, default=16)
    p.add_argument("--log-every", type=int, default=5,
                   help="train.log_every of the timed trainings (meta-training logs every 2 steps)")
    p.add_argument("--amp", nargs="+", default=["false", "true"], choices=["false", "true"])
    p.add_argument("--fixture-size", type=int, default=40, help="training images of a fixture")
    p.add_argument("--budget-s", type=float, default=420.0)
    p.add_argument("--end-to-end", action="store_true")
    p.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temp dir)")
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--name", default="paper_scale")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="config overrides of every run (e.g. to shrink the model for a CPU check; "
                        "the report then no longer measures the paper configs as they are)")
    from fixed_lambda_grid import check_args, parse_args

    args = parse_args(p, argv)

    check_args(p, args)  # --out a folder, --name a file stem, --jobs, --seeds
    if args.budget_s <= 0 or args.log_every < 1 or args.fixture_size < 1:
        p.error(f"--budget-s must be > 0, --log-every and --fixture-size >= 1; got "
                f"{args.budget_s}, {args.log_every} and {args.fixture_size}")
    if args.train_steps < 4 * args.log_every or args.meta_steps < 8:
        p.error("--train-steps must be at least 4 × --log-every and --meta-steps at least 8 "
                "(meta-training logs every 2 steps): the median needs 2 intervals after the first")

    import torch

    args.amp = [a == "true" for a in args.amp]
    t_start = time.time()
    rows: list[dict] = []
    e2e: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        first_meta = None
        for name in args.configs:
            meta = measure(name, args, work, rows, t_start)
            first_meta = first_meta or (meta, name)
        if args.end_to_end and first_meta and first_meta[0]:
            e2e = end_to_end(first_meta[0], first_meta[1], work)
    from metasparsity.utils.provenance import machine_identity

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU (CPU)"
    mach = dict(machine_identity(), gpu=gpu, cudnn=torch.backends.cudnn.version(),
                cudnn_allow_tf32=torch.backends.cudnn.allow_tf32,
                matmul_allow_tf32=torch.backends.cuda.matmul.allow_tf32)
    cmd = command_line("benchmarks/paper_scale.py", sys.argv[1:] if argv is None else argv, ROOT)
    result = {"command": cmd, "machine": mach, "rows": rows, "end_to_end": e2e,
              "wall_time_s": time.time() - t_start}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps(result, indent=2) + "\n")
    md = [f"# Paper-scale configs on {mach['gpu']}: step times, memory, run times", "",
          f"`{cmd}`; {'overrides: ' + ' '.join(args.overrides) + '; ' if args.overrides else ''}"
          f"torch {torch.__version__}, cuDNN {mach['cudnn']} (TF32 convolutions "
          f"{'on' if mach['cudnn_allow_tf32'] else 'off'}, TF32 matmul "
          f"{'on' if mach['matmul_allow_tf32'] else 'off'}). Fixture data in the real layouts at "
          "the real resolutions; the configs' models, image sizes, batches, meta-batches and "
          "loader workers. s / step: median over the logged intervals after the first. Full run: "
          "that × the config's steps, without validation, checkpoints and evaluation.", "",
          table(rows), ""]
    if e2e:
        md += [f"End to end on {gpu}, from the first config's meta-trained model: "
               + "; ".join(e2e) + ".", ""]
    (args.out / f"{args.name}.md").write_text("\n".join(md))
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
