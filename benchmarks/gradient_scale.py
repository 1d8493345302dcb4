"""λ's natural scale for each config: ``||∇_g L|| / w_g`` over the backbone groups at the start.

With the group prox in Adam's metric (README, "The method") a zero group stays zero exactly while
``||∇_g L|| ≤ λ·w_g``: λ is in gradient units, and the distribution of ``||∇_g L||/w_g`` over the
groups says where λ starts to bite.  For every config this builds its model (from scratch, or
from ``model.pretrained`` if the file is there), takes ``--batches`` training batches of
``--batch-size`` images and reports the median and the 10th / 90th percentiles of the per-group
ratios of the equal-weight multi-task loss (gradients averaged over the batches), in train mode.

The paper configs' data (NYU-v2, CelebAMask-HQ) cannot be downloaded here; where the data folder
is missing, SynthScenes stands in at the config's image size with the same task types (segment,
depth, edge, normal; binary attributes for CelebA's), so the figure measures the architecture and
the losses, not the real images; a line on stderr says so.  The table says which data each row
used; re-run it where the data is to set the paper configs' λ from the real gradients, with the
data's folder (and the ImageNet weights) as overrides, ``--no-stand-in`` to refuse rather than
stand in, and an ``--out`` of your own (the default holds this repository's table):

    python benchmarks/gradient_scale.py [--batches 3] [--batch-size 4] [CONFIG ...] [key=value ...]
    python benchmarks/gradient_scale.py configs/nyuv2_paper.yaml data.root=/data/NYUD_MT \
        model.pretrained=/weights/resnet50-0676ba61.pth --no-stand-in --out runs/gradient_scale

Writes ``benchmarks/results/gradient_scale.{json,md}`` (``--out``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch
from torch.utils.data import default_collate

from metasparsity.builders import build_model
from metasparsity.config import load_config
from metasparsity.data import build_dataset, resolve_tasks
from metasparsity.sparsity import channel_groups, group_gradient_ratios
from metasparsity.training.weighting import task_losses
from metasparsity.utils.io import atomic_write_text, write_json

ROOT = Path(__file__).resolve().parents[1]
OUT = Path(__file__).resolve().parent / "results"
CONFIGS = ["configs/synthscenes.yaml", "configs/nyuv2_paper.yaml", "configs/nyuv2_mtan_paper.yaml",
           "configs/celebamaskhq_paper.yaml"]
SYNTH_ATTRIBUTES = ["has_sphere", "many_objects", "light_left"]


def _stand_in(cfg) -> tuple[list[str], str]:
    """Overrides that replace a missing real data set by SynthScenes with the same task types."""
    if cfg.data.name == "synthscenes" or (cfg.data.root and Path(cfg.data.root).is_dir()):
        return [], cfg.data.name
    seen = [t for t in cfg.data.seen_tasks if t in ("segment", "depth", "edge", "normal")]
    n_attr = len(cfg.data.seen_tasks) - len(seen)
    seen += SYNTH_ATTRIBUTES[:n_attr]
    tasks = seen + [t for t in ("normal",) if t not in seen]
    return ([
        "data.name=synthscenes", "data.root=null", f"data.tasks=[{','.join(tasks)}]",
        f"data.seen_tasks=[{','.join(seen)}]", "data.unseen_tasks=[]", "data.train_size=64",
        "data.val_size=8", "data.test_size=8", "data.num_classes=null", "data.attributes=[]",
        "data.augment=false", "data.num_workers=0"], f"SynthScenes stand-in ({', '.join(seen)})")


def resolve(config: str, overrides: list[str] = (), stand_in: bool = True):
    """The config as measured (``overrides`` on top; a missing data set stood in for, a missing
    pretrained file dropped, each said on stderr; without ``stand_in`` both are a UserError) and
    the data it uses."""
    from metasparsity.utils.errors import UserError

    overrides = list(overrides)
    cfg = load_config(ROOT / config, overrides)
    extra, data_used = _stand_in(cfg)
    if extra:
        if not stand_in:
            raise UserError(f"data.root {cfg.data.root!r} is not a folder here (--no-stand-in); "
                            f"give the data's folder as data.root=...")
        print(f"{config}: data.root {cfg.data.root!r} is not a folder here: {data_used}",
              file=sys.stderr, flush=True)
        cfg = load_config(ROOT / config, [*overrides, *extra])
    if cfg.model.pretrained and not Path(cfg.model.pretrained).is_file():
        if not stand_in:
            raise UserError(f"model.pretrained {cfg.model.pretrained!r} is not a file here "
                            f"(--no-stand-in)")
        print(f"{config}: model.pretrained {cfg.model.pretrained!r} is not a file here: from "
              f"scratch", file=sys.stderr, flush=True)
        cfg = load_config(ROOT / config, [*overrides, *extra, "model.pretrained=null"])
    return cfg, data_used


def measure(config: str, cfg, data_used: str, batches: int, batch_size: int) -> dict:
    names = list(cfg.data.seen_tasks)
    tasks = resolve_tasks(cfg, names)
    torch.manual_seed(0)
    model = build_model(cfg, names)
    model.train()
    layers = channel_groups(model)
    ds = build_dataset(cfg, "train")
    grads: dict[str, torch.Tensor] = {}
    for b in range(batches):
        x, y = default_collate([ds[i] for i in range(b * batch_size, (b + 1) * batch_size)])
        model.zero_grad(set_to_none=True)
        loss = sum(task_losses(tasks, model(x, tasks=names), y).values())
        loss.backward()
        for g in layers:
            p = model.get_parameter(g.name)
            grads[g.name] = grads.get(g.name, 0) + p.grad.detach() / batches
    r = group_gradient_ratios(grads, layers).tolist()
    q = statistics.quantiles(r, n=10)
    return {"config": config, "data": data_used, "image_size": cfg.data.image_size,
            "model": f"ResNet-{cfg.model.depth} width {cfg.model.width}",
            "pretrained": bool(cfg.model.pretrained), "groups": len(r),
            "median": statistics.median(r), "p10": q[0], "p90": q[-1]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("configs", nargs="*", default=CONFIGS, metavar="CONFIG | key=value",
                   help="config files (default: the four presets), then overrides applied to "
                        "each, e.g. data.root=/data/NYUD_MT")
    p.add_argument("--no-stand-in", action="store_true",
                   help="refuse a config whose data folder or model.pretrained file is missing "
                        "(default: SynthScenes stands in, from scratch, and stderr says so)")
    p.add_argument("--batches", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_intermixed_args()
    from fixed_lambda_grid import check_args

    check_args(p, args)  # --out a folder, --name a file stem, --jobs, --seeds
    from metasparsity.utils.errors import UserError
    from metasparsity.utils.limits import MAX_THREADS

    if not 1 <= args.threads <= MAX_THREADS:
        p.error(f"--threads must be between 1 and {MAX_THREADS}, got {args.threads}")
    if args.batches < 1 or args.batch_size < 1:
        p.error(f"--batches and --batch-size must be >= 1, got {args.batches} and "
                f"{args.batch_size}")
    for f in (args.out / "gradient_scale.json", args.out / "gradient_scale.md"):
        if f.exists() and not f.is_file():
            p.error(f"--out: {f} exists and is not a file")
    overrides = [c for c in args.configs if "=" in c]
    files = [c for c in args.configs if "=" not in c] or (CONFIGS if not overrides else [])
    if not files:
        p.error("give the config files the overrides are for")
    configs = []
    for c in files:
        if not (ROOT / c).is_file():
            p.error(f"no config file {c}")
        try:
            cfg, data_used = resolve(c, overrides, stand_in=not args.no_stand_in)
            n = len(build_dataset(cfg, "train"))
        except UserError as e:
            p.error(f"{c}: {e}")
        if args.batches * args.batch_size > n:
            p.error(f"--batches {args.batches} × --batch-size {args.batch_size} is more than the "
                    f"{n} training images of {c} ({data_used})")
        configs.append((c, cfg, data_used))
    torch.set_num_threads(args.threads)
    rows = []
    for c, cfg, data_used in configs:
        rows.append(measure(c, cfg, data_used, args.batches, args.batch_size))
        print(rows[-1], flush=True)
    from metasparsity.utils.provenance import machine_text

    machine = machine_text()
    command = " ".join(["python benchmarks/gradient_scale.py", "--batches", str(args.batches),
                        "--batch-size", str(args.batch_size),
                        *([*files, *overrides] if args.configs != CONFIGS else [])])
    lines = [f"`{command}`, {machine}: per-group `‖∇_g L‖/w_g` at initialisation "
             "(equal-weight loss of the seen tasks).", "",
             "| config | data | model | image | groups | median | 10th pct | 90th pct |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| `{Path(r['config']).name}` | {r['data']} | {r['model']}"
                     f"{' (pretrained)' if r['pretrained'] else ''} | {r['image_size']} | "
                     f"{r['groups']} | {r['median']:.2e} | {r['p10']:.2e} | {r['p90']:.2e} |")
    table = "\n".join(lines) + "\n"
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "gradient_scale.json", {"machine": machine, "rows": rows})
    atomic_write_text(args.out / "gradient_scale.md", table)
    print(table)


if __name__ == "__main__":
    main()
