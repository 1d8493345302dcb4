"""Physical pruning: MAC reduction against measured CPU latency speedup.

Models (default init; BN statistics do not affect cost):

* ``cpu-preset``: the CPU preset of ``configs/synthscenes.yaml`` (model and image size from the
  file, its seen tasks), or, without that file, ResNet-18 width 0.5 at 64 px, output stride 8,
  head channels 64, tasks segment / depth / has_sphere;
* ``resnet50-os8``: the paper-scale ResNet-50, width 1, dilated (output stride 8) at 256×256,
  ASPP heads of 256 channels (rates 12/24/36) for segment and depth, an mlp head for has_sphere.

Zero patterns, at group-sparsity levels ``--levels`` (default 0.25, 0.5, 0.75):

* ``random``: every backbone conv but the stem (whose groups are the RGB channels) gets a random
  share ``level`` of its input-channel groups zeroed, independently per layer.  A feature map that
  is read by several convs (a residual stream) survives unless all of them drop it, so these
  mostly free block-internal channels (single consumer);
* ``structured``: for every channel group whose readers are all backbone convs, the same random
  share ``level`` of its channels is zeroed in every reader: what learned sparsity produces (the
  layer4 stream, read by the heads, stays);
* ``learned``: the zeros of a trained run's best checkpoint (``--run RUN_DIR``).

For each variant: group sparsity, MAC ratio (dense / pruned, ``torch.utils.flop_counter``, per
image), latency (median of ``--repeats`` timed passes after one warm-up, ``torch.inference_mode``,
``torch.set_num_threads(--threads)``), speedup = dense / pruned latency and the quotient
speedup / MAC ratio.  Within one model and batch size, the dense model and every variant are timed
round-robin (one pass of each per round, order rotated), so background load hits them alike.
Target: at batch 16 and level 0.5, speedup ≥ 0.7 × MAC ratio.

On ResNet-50, batch 16 is timed only at level 0.5 (``--r50-batch16-levels``) to keep the default
run near 6–8 minutes on two cores; ``--quick`` runs the CPU preset only.

``--device cuda`` times on a GPU instead (fp32 weights, cuDNN's default TF32 convolutions, every
pass ended by ``torch.cuda.synchronize``); ``--threads`` then only sets the CPU threads of the
pruning itself.

    python benchmarks/pruning.py [--run RUN_DIR] [--levels 0.25,0.5,0.75] [--repeats 3] [--quick]
                                 [--device cpu|cuda]
    python benchmarks/pruning.py --render benchmarks/results/pruning_avx512.json   # markdown only

Writes ``benchmarks/results/pruning.json`` and ``pruning.md`` and prints the table.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from metasparsity.config import load_config
from metasparsity.data import TASKS
from metasparsity.export import model_cost
from metasparsity.models import build_model_from_tasks
from metasparsity.sparsity import prune_zero_channels, sparsity_stats
from metasparsity.sparsity.pruning import feature_map_groups
from metasparsity.utils.io import atomic_write_text, write_json

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
CPU_CONFIG = ROOT / "configs" / "synthscenes.yaml"
TARGET = 0.7


# ----------------------------------------------------------------------------- machine

def machine(device: torch.device) -> dict[str, Any]:
    from metasparsity.utils.provenance import machine_identity

    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        usable = os.cpu_count()
    return {**machine_identity(), "cpu_count": os.cpu_count(), "usable_cores": usable,
            "torch_threads": torch.get_num_threads(), "load_average_start": os.getloadavg(),
            "device": str(device),
            **({"gpu": torch.cuda.get_device_name(device)} if device.type == "cuda" else {})}


# ----------------------------------------------------------------------------- models

def cpu_preset() -> tuple[dict[str, Any], str]:
    if CPU_CONFIG.is_file():
        cfg = load_config(CPU_CONFIG)
        m = cfg.model
        spec = {"depth": m.depth, "width": m.width, "output_stride": m.output_stride,
                "head_channels": m.head_channels, "aspp_rates": list(m.aspp_rates),
                "image_size": cfg.data.image_size, "tasks": list(cfg.data.seen_tasks)}
        return spec, f"{CPU_CONFIG.relative_to(ROOT)}"
    spec = {"depth": 18, "width": 0.5, "output_stride": 8, "head_channels": 64,
            "aspp_rates": [1, 2, 3], "image_size": 64, "tasks": ["segment", "depth", "has_sphere"]}
    return spec, "built-in fallback (configs/synthscenes.yaml not found)"


R50 = {"depth": 50, "width": 1.0, "output_stride": 8, "head_channels": 256,
       "aspp_rates": [12, 24, 36], "image_size": 256, "tasks": ["segment", "depth", "has_sphere"]}


def build(spec: dict[str, Any]) -> nn.Module:
    torch.manual_seed(0)
    tasks = {t: TASKS.get(t) for t in spec["tasks"]}
    return build_model_from_tasks(tasks, depth=spec["depth"], width=spec["width"],
                                  output_stride=spec["output_stride"],
                                  head_channels=spec["head_channels"],
                                  aspp_rates=spec["aspp_rates"]).eval()


# ----------------------------------------------------------------------------- patterns

def random_pattern(model: nn.Module, level: float, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, m in model.backbone.named_modules():
            if isinstance(m, nn.Conv2d) and name != "conv1":
                m.weight[:, torch.rand(m.in_channels, generator=g) < level] = 0.0


def structured_pattern(model: nn.Module, level: float, seed: int, groups: list) -> None:
    g = torch.Generator().manual_seed(seed)
    modules = dict(model.named_modules())
    with torch.no_grad():
        for grp in groups:
            if grp.blocked or any(not c.name.startswith("backbone.") for c in grp.consumers):
                continue
            chosen = set(torch.randperm(grp.size, generator=g)[: round(level * grp.size)].tolist())
            for c in grp.consumers:
                cols = [loc for loc, root in c.pairs if root in chosen]
                modules[c.name].weight[:, cols] = 0.0


# ----------------------------------------------------------------------------- timing

def _sync(x: torch.Tensor) -> None:
    if x.device.type == "cuda":
        torch.cuda.synchronize(x.device)


def round_robin(models: dict[str, nn.Module], x: torch.Tensor, warmup: int,
                repeats: int) -> dict[str, dict[str, Any]]:
    """Median ms per model; one pass of every model per round, order rotated every round (the
    models and ``x`` on one device)."""
    names = list(models)
    times: dict[str, list[float]] = {k: [] for k in names}
    with torch.inference_mode():
        for r in range(warmup + repeats):
            shift = r % len(names)
            for k in names[shift:] + names[:shift]:
                _sync(x)
                start = time.perf_counter()
                models[k](x)
                _sync(x)
                ms = (time.perf_counter() - start) * 1e3
                if r >= warmup:
                    times[k].append(ms)
    return {k: {"median_ms": statistics.median(v), "min_ms": min(v), "runs_ms": v}
            for k, v in times.items()}


# ----------------------------------------------------------------------------- one model

def bench_model(label: str, dense: nn.Module, variants: dict[str, tuple[str, float, nn.Module]],
                size: int, batch_plan: dict[int, list[str]], repeats: int,
                warmup: int, device: torch.device | None = None) -> dict[str, Any]:
    """``variants``: key -> (pattern, level, masked dense model); ``batch_plan``: batch -> keys.
    Pruning and counting on the CPU; the latencies on ``device`` (default: the CPU)."""
    device = device or torch.device("cpu")
    x1 = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(1))
    example = torch.randn(1, 3, 64, 64)  # tracing / the exactness check need no large input
    dense_cost = model_cost(dense, x1)
    rows: dict[str, dict[str, Any]] = {}
    pruned: dict[str, nn.Module] = {}
    for key, (pattern, level, masked) in variants.items():
        t0 = time.perf_counter()
        pruned[key] = prune_zero_channels(masked, example)
        prune_s = time.perf_counter() - t0
        stats = sparsity_stats(masked)
        cost = model_cost(pruned[key], x1)
        rows[key] = {
            "pattern": pattern, "level": level, "group_sparsity": stats.group_sparsity,
            "param_sparsity": stats.param_sparsity, "prune_seconds": prune_s,
            "params": cost["total"]["params"], "macs": cost["total"]["macs"],
            "params_ratio": dense_cost["total"]["params"] / cost["total"]["params"],
            "mac_ratio": dense_cost["total"]["macs"] / cost["total"]["macs"],
            "mac_ratio_backbone": dense_cost["backbone"]["macs"] / cost["backbone"]["macs"],
            "latency_ms": {}, "latency_min_ms": {}, "speedup": {}, "speedup_min": {},
            "speedup_per_mac_ratio": {}, "speedup_min_per_mac_ratio": {},
        }
        print(f"  {label} {key}: group sparsity {stats.group_sparsity:.2f}, MAC ratio "
              f"{rows[key]['mac_ratio']:.2f} (backbone {rows[key]['mac_ratio_backbone']:.2f})",
              flush=True)
    dense_lat: dict[str, float] = {}
    dense_min: dict[str, float] = {}
    for b, keys in batch_plan.items():
        keys = [k for k in keys if k in pruned]
        x = torch.randn(b, 3, size, size, generator=torch.Generator().manual_seed(b)).to(device)
        t0 = time.perf_counter()
        timed = {k: m.to(device) for k, m in {"dense": dense, **{k: pruned[k] for k in keys}}.items()}
        lat = round_robin(timed, x, warmup, repeats)
        dense_lat[str(b)] = lat["dense"]["median_ms"]
        dense_min[str(b)] = lat["dense"]["min_ms"]
        for k in keys:
            r, bs = rows[k], str(b)
            r["latency_ms"][bs] = lat[k]["median_ms"]
            r["latency_min_ms"][bs] = lat[k]["min_ms"]
            r["speedup"][bs] = lat["dense"]["median_ms"] / lat[k]["median_ms"]
            r["speedup_min"][bs] = lat["dense"]["min_ms"] / lat[k]["min_ms"]
            r["speedup_per_mac_ratio"][bs] = r["speedup"][bs] / r["mac_ratio"]
            r["speedup_min_per_mac_ratio"][bs] = r["speedup_min"][bs] / r["mac_ratio"]
        print(f"  {label} batch {b}: dense {lat['dense']['median_ms']:.1f} ms; timed "
              f"{len(keys) + 1} models in {time.perf_counter() - t0:.0f} s", flush=True)
    return {"dense": {**dense_cost["total"], "backbone_macs": dense_cost["backbone"]["macs"],
                      "latency_ms": dense_lat, "latency_min_ms": dense_min},
            "variants": list(rows.values())}


def synthetic_variants(dense: nn.Module, levels: list[float]) -> dict[str, tuple]:
    groups = feature_map_groups(dense, torch.randn(1, 3, 64, 64))
    out: dict[str, tuple] = {}
    for i, level in enumerate(levels):
        for pattern in ("random", "structured"):
            m = copy.deepcopy(dense)
            if pattern == "random":
                random_pattern(m, level, seed=100 + i)
            else:
                structured_pattern(m, level, 200 + i, groups)
            out[f"{pattern}@{level:g}"] = (pattern, level, m)
    return out


def learned_case(run_dir: str, repeats: int, warmup: int,
                 device: torch.device | None = None) -> dict[str, Any]:
    from metasparsity.recipes.load_run import load_run_model

    cfg, model, _ = load_run_model(run_dir)
    model.eval()
    size = int(cfg.data.image_size)
    res = bench_model("learned", model, {"learned": ("learned", float("nan"), model)}, size,
                      {1: ["learned"], 16: ["learned"]}, repeats, warmup, device)
    res["config"] = {"run_dir": str(run_dir), "depth": cfg.model.depth, "width": cfg.model.width,
                     "output_stride": cfg.model.output_stride, "image_size": size,
                     "tasks": model.tasks}
    return res


# ----------------------------------------------------------------------------- report

def _pair(r: dict[str, Any], key: str, b: str) -> str:
    med, low = r[key].get(b), r[key.replace("speedup", "speedup_min")].get(b)
    return "—" if med is None else f"{med:.2f} / {low:.2f}"


def markdown(result: dict[str, Any]) -> str:
    m = result["machine"]
    load = ", ".join(f"{v:.1f}" for v in m["load_average_start"])
    load_end = ", ".join(f"{v:.1f}" for v in m.get("load_average_end", ()))
    lines = [
        "# Pruning: MAC reduction vs measured latency speedup", "",
        *([f"Timed on **{m['gpu']}** ({m['device']}, fp32 weights, cuDNN defaults); pruning and "
           "counting on the CPU.", ""] if m.get("gpu") else []),
        f"Machine: {m['cpu']}, {m['usable_cores']} usable cores ({m['cpu_count']} listed), "
        f"torch {m['torch']} with {m['torch_threads']} threads.  Load average {load} at the "
        f"start, {load_end} at the end (the end counts this benchmark's own threads).  Every "
        "speedup is given as *median / min* over the round-robin runs (the median is the "
        "specified statistic; the minimum is the least disturbed run).", "",
        "MAC ratio = dense / pruned MACs of the whole model (backbone + heads; heads are never "
        "pruned), per image; speedup = dense / pruned latency; speedup/MAC = speedup / MAC ratio.",
        "",
    ]
    for name, case in result["models"].items():
        c = case["config"]
        lat = ", ".join(f"batch {b}: {v:.1f} ms (min {case['dense']['latency_min_ms'][b]:.1f})"
                        for b, v in case["dense"]["latency_ms"].items())
        lines += [
            f"## {name}", "",
            f"ResNet-{c['depth']} width {c['width']:g}, output stride {c['output_stride']}, "
            f"{c['image_size']}×{c['image_size']}, tasks {', '.join(c['tasks'])} "
            f"({c.get('source', 'run ' + str(c.get('run_dir')))}).  Dense: "
            f"{case['dense']['params'] / 1e6:.2f} M parameters, "
            f"{case['dense']['macs'] / 1e9:.3f} GMACs per image; latency {lat}.", "",
            "| pattern | level | group sparsity | params ratio | MAC ratio | MAC ratio backbone "
            "| speedup b1 | speedup b16 | speedup/MAC b1 | speedup/MAC b16 |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in case["variants"]:
            lvl = "—" if r["level"] is None or r["level"] != r["level"] else f"{r['level']:g}"
            lines.append(
                f"| {r['pattern']} | {lvl} | {r['group_sparsity']:.2f} | {r['params_ratio']:.2f} "
                f"| {r['mac_ratio']:.2f} | {r['mac_ratio_backbone']:.2f} "
                f"| {_pair(r, 'speedup', '1')} | {_pair(r, 'speedup', '16')} "
                f"| {_pair(r, 'speedup_per_mac_ratio', '1')} "
                f"| {_pair(r, 'speedup_per_mac_ratio', '16')} |")
        lines.append("")
    t = result["target"]
    verdict = {True: "holds", False: "does not hold"}
    lines += ["## Target", "",
              f"{t['criterion']}: with the median, **{verdict[t['holds']]}**; with the minimum, "
              f"**{verdict[t['holds_min']]}**.", ""]
    for d in t["checked"]:
        lines.append(f"- {d['model']} {d['pattern']} (level {d['level']:.2g}): MAC ratio "
                     f"{d['mac_ratio']:.2f}; speedup {d['speedup']:.2f} (median) / "
                     f"{d['speedup_min']:.2f} (min) → quotient {d['quotient']:.2f} / "
                     f"{d['quotient_min']:.2f}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", metavar="RUN_DIR", help="also benchmark a trained run's zeros")
    ap.add_argument("--levels", default="0.25,0.5,0.75")
    ap.add_argument("--repeats", type=int, default=3, help="timed rounds (after --warmup)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--cpu-repeats", type=int, default=15, help="timed rounds for the CPU preset")
    ap.add_argument("--r50-batch16-levels", default="0.5",
                    help="levels timed at batch 16 on ResNet-50 (all: every level)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="CPU preset only")
    ap.add_argument("--out", type=Path, default=RESULTS / "pruning.json")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                    help="where the latencies are timed")
    ap.add_argument("--render", type=Path, metavar="JSON",
                    help="time nothing: write the markdown of a result JSON beside it (after a "
                         "change of this report's text)")
    args = ap.parse_args(argv)
    for opt, path in (("--out", args.out), ("--render", args.render)):
        if path is not None and path.suffix != ".json":  # the markdown goes beside it, as .md
            ap.error(f"{opt} {path}: give the .json file (its table is written beside it as .md)")
    if args.out.is_dir():
        ap.error(f"--out {args.out} is a folder; give the .json file to write")
    if args.threads < 1 or args.cpu_repeats < 1:
        ap.error(f"--threads and --cpu-repeats must be >= 1, got {args.threads} and "
                 f"{args.cpu_repeats}")
    if args.run is not None and not Path(args.run).is_dir():
        ap.error(f"--run {args.run}: no such run directory")
    if args.render is not None:
        import json

        try:
            result = json.loads(args.render.read_text(encoding="utf-8"))
            md = markdown(result)
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            ap.error(f"--render {args.render}: not a result of this benchmark ({type(e).__name__}: {e})")
        atomic_write_text(args.render.with_suffix(".md"), md)
        print(f"wrote {args.render.with_suffix('.md')}")
        return 0
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: CUDA is not available")
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    try:
        levels = [float(v) for v in args.levels.split(",") if v.strip()]
    except ValueError:
        ap.error(f"--levels: comma-separated fractions in (0, 1), got {args.levels!r}")
    if not levels or not all(0 < v < 1 for v in levels):
        ap.error(f"--levels: comma-separated fractions in (0, 1), got {args.levels!r}")
    started = time.perf_counter()
    result: dict[str, Any] = {"benchmark": "physical pruning: MACs vs latency",
                              "machine": machine(device), "models": {}}

    spec, source = cpu_preset()
    print(f"cpu-preset ({source})", flush=True)
    dense = build(spec)
    variants = synthetic_variants(dense, levels)
    every = list(variants)
    case = bench_model("cpu-preset", dense, variants, spec["image_size"], {1: every, 16: every},
                       args.cpu_repeats, max(args.warmup, 2), device)
    case["config"] = {**spec, "source": source}
    result["models"]["cpu-preset"] = case

    if not args.quick:
        print("resnet50-os8 (256×256)", flush=True)
        dense = build(R50)
        variants = synthetic_variants(dense, levels)
        b16 = (levels if args.r50_batch16_levels == "all"
               else [float(v) for v in args.r50_batch16_levels.split(",") if v.strip()])
        plan = {1: list(variants),
                16: [k for k, (_, lvl, _) in variants.items() if any(abs(lvl - v) < 1e-9 for v in b16)]}
        case = bench_model("resnet50-os8", dense, variants, R50["image_size"], plan, args.repeats,
                           args.warmup, device)
        case["config"] = {**R50, "source": "paper-scale preset"}
        result["models"]["resnet50-os8"] = case
        del dense, variants

    if args.run:
        print(f"learned ({args.run})", flush=True)
        result["models"]["learned"] = learned_case(args.run, args.repeats, args.warmup, device)

    checked = []
    for name, case in result["models"].items():
        for r in case["variants"]:
            near_half = r["pattern"] == "learned" or abs(r["level"] - 0.5) < 1e-9
            if near_half and "16" in r["speedup"]:
                q, q_min = r["speedup_per_mac_ratio"]["16"], r["speedup_min_per_mac_ratio"]["16"]
                checked.append({"model": name, "pattern": r["pattern"],
                                "level": r["level"] if r["level"] == r["level"] else r["group_sparsity"],
                                "speedup": r["speedup"]["16"], "speedup_min": r["speedup_min"]["16"],
                                "mac_ratio": r["mac_ratio"], "quotient": q, "quotient_min": q_min,
                                "ok": q >= TARGET, "ok_min": q_min >= TARGET})
    result["target"] = {
        "criterion": f"at batch 16 and level 0.5, latency speedup ≥ {TARGET} × MAC ratio",
        "holds": bool(checked) and all(d["ok"] for d in checked),
        "holds_min": bool(checked) and all(d["ok_min"] for d in checked), "checked": checked}
    result["machine"]["load_average_end"] = os.getloadavg()
    result["seconds"] = time.perf_counter() - started
    write_json(args.out, result)
    md = markdown(result)
    atomic_write_text(args.out.with_suffix(".md"), md)
    print(md)
    print(f"wrote {args.out} and {args.out.with_suffix('.md')} in {result['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
