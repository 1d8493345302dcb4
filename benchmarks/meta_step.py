"""Cost of one meta-step against one plain multi-task training step (issue 5; README, "The method").

Model: the SynthScenes CPU preset (``configs/synthscenes.yaml``: ResNet-18 width 0.25, output
stride 8, ASPP heads with 32 channels and rates 1/2/3) with its 5 seen tasks, in float32.
Batches: SynthScenes training images; the plain step and the support set use the same batch of
``--batch-size`` images, the query set the next ``--batch-size`` images.

Variants (each on its own copy of the same initial model, with its own optimizers):

* ``plain``: the MTL trainer's step (``recipes/train.py``): forward with all seen tasks, equal-weight
  sum of the task losses, ``backward``, ``Adam.step``.
* ``<mode> K=<K>``: the meta-trainer's step (``recipes/meta_train.py``): :func:`meta_step` on one
  meta-task (subset = all seen tasks, one support and one query batch) with a learnable global λ,
  then :func:`outer_update` (Adam on θ, proximal step, Adam on ρ).
* ``higher second_order K=<K>``: the same second-order step written with ``higher``
  (``innerloop_ctx`` with a differentiable SGD; Ω differentiated by autograd), then Adam on θ and
  ρ: a cross-check of speed for the hand-written unrolled loop.

Time: every variant is warmed up (``--warmup`` steps), then the variants are run in turn, one step
each, ``--repeats`` times, the order rotating every round, so that load from other processes falls
on all of them alike; the table gives the median wall-clock time per step and the median process
CPU time (``time.process_time``).  ``--threads`` (default 2, ``torch.set_num_threads``) takes
several values, one timing table each: on a machine shared with other jobs, wall-clock times with
2 threads swing by 10× and more (a thread that loses its core stalls the other at every parallel
region), while the CPU time of a 1-thread run does not count waiting for a core and stays within a
few percent.  On CUDA every step ends with ``torch.cuda.synchronize()``.

Peak memory: each variant runs in a fresh subprocess (``--memory-probe``) that builds the model,
batches and optimizers, then measures the growth above that state over ``--memory-steps`` steps.
On CPU that is the peak resident set size (``VmHWM`` after resetting it via
``/proc/self/clear_refs``; ``ru_maxrss`` where that is not possible) minus the resident size
before the first step, with glibc's mmap threshold fixed at 64 KiB (``MALLOC_MMAP_THRESHOLD_``),
so that freed tensors go back to the system and the high-water mark follows the live tensors
(activations, saved graph, gradients, optimizer state) instead of allocator caching.  On CUDA it
is ``torch.cuda.max_memory_allocated() − memory_allocated()`` before the first step.

    python benchmarks/meta_step.py [--batch-size 16] [--repeats 15] [--image-size 64]
                                   [--device cpu] [--threads 2 [1 ...]]

Writes ``benchmarks/results/meta_step.json`` and ``benchmarks/results/meta_step.md`` and prints
the table.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils.data import default_collate

from metasparsity.builders import build_model
from metasparsity.config import load_config
from metasparsity.data import build_dataset, resolve_tasks
from metasparsity.meta import LearnedLambda, meta_step, outer_update
from metasparsity.sparsity import channel_groups, penalty
from metasparsity.training.weighting import LossWeighting, task_losses
from metasparsity.utils.io import write_json

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "synthscenes.yaml"
DEFAULT_OUT = Path(__file__).resolve().parent / "results"
KS = (1, 3)
MMAP_THRESHOLD = "65536"

Step = Callable[[], None]


def variant_names() -> list[str]:
    names = ["plain"]
    for k in KS:
        names += [f"lambda_path K={k}", f"second_order K={k}", f"higher second_order K={k}"]
    return names


# ----------------------------------------------------------------------------- setup

class Bench:
    """The preset model, the batches and the loss, shared by every variant (each copies θ)."""

    def __init__(self, batch_size: int, image_size: int, device: torch.device) -> None:
        self.cfg = load_config(CONFIG, [f"data.image_size={image_size}"])
        self.device = device
        self.seen = list(self.cfg.data.seen_tasks)
        self.tasks = resolve_tasks(self.cfg, self.seen)
        torch.manual_seed(0)
        self.model = build_model(self.cfg, self.seen).to(device).train()
        self.layers = channel_groups(self.model)
        data = build_dataset(self.cfg, "train")
        support = default_collate([data[i] for i in range(batch_size)])
        query = default_collate([data[i] for i in range(batch_size, 2 * batch_size)])
        self.sx, self.sy = self._to(support)
        self.qx, self.qy = self._to(query)
        m = self.cfg.meta
        self.inner_lr, self.outer_lr, self.lambda_lr = m.inner_lr, m.outer_lr, m.lambda_lr
        self.lambda_init = m.lambda_init
        if self.lambda_init == "auto":  # the preset's default: λ0 from the gradient scale, as
            # meta-train computes it (here on the support and query batches)
            from metasparsity.meta.lambda_init import auto_lambda0

            weighting = LossWeighting(self.seen, "equal").to(device)
            self.lambda_init = auto_lambda0(self.model, self.layers, [(self.sx, self.sy),
                                                                      (self.qx, self.qy)],
                                            self.loss_fn(weighting), self.seen, m.lambda_min,
                                            m.lambda_max)

    def _to(self, batch):
        x, y = batch
        return x.to(self.device), {t: v.to(self.device) for t, v in y.items() if t in self.tasks}

    def fresh(self):
        """A copy of the initial model with its optimizer, loss weighting and λ (+ its Adam)."""
        model = copy.deepcopy(self.model)
        weighting = LossWeighting(self.seen, "equal").to(self.device)
        opt = torch.optim.Adam(list(model.parameters()) + list(weighting.parameters()),
                               lr=self.outer_lr)
        lam = LearnedLambda(self.lambda_init, scope="global", num_layers=len(self.layers),
                            lambda_min=self.cfg.meta.lambda_min,
                            lambda_max=self.cfg.meta.lambda_max).to(self.device)
        opt_rho = torch.optim.Adam(lam.parameters(), lr=self.lambda_lr)
        return model, weighting, opt, lam, opt_rho

    def loss_fn(self, weighting):
        def fn(outputs, targets, subset):
            losses = {t: self.tasks[t].loss(outputs[t], targets[t]) for t in subset}
            return weighting(losses), losses
        return fn


def plain_step(b: Bench) -> Step:
    model, weighting, opt, _, _ = b.fresh()
    tasks = b.seen

    def step() -> None:
        out = model(b.sx, tasks=tasks)
        total = weighting(task_losses(b.tasks, out, b.sy))
        opt.zero_grad(set_to_none=True)
        total.backward()
        opt.step()
    return step


def meta_variant(b: Bench, mode: str, k: int) -> Step:
    model, weighting, opt, lam, opt_rho = b.fresh()
    loss_fn = b.loss_fn(weighting)
    batches = [(tuple(b.seen), b.sx, b.sy, b.qx, b.qy)]
    extra = dict(weighting.named_parameters())

    def step() -> None:
        res = meta_step(model, lam, b.layers, batches, loss_fn, inner_lr=b.inner_lr,
                        inner_steps=k, mode=mode, extra_params=extra)
        outer_update(model, lam, res, opt, opt_rho, prox_step=b.outer_lr, layers=b.layers,
                     extra_params=extra)
    return step


def higher_variant(b: Bench, k: int) -> Step:
    import higher  # dev-only dependency, for this cross-check

    model, weighting, opt, lam, opt_rho = b.fresh()
    loss_fn = b.loss_fn(weighting)
    names = [n for n, _ in model.named_parameters()]
    tasks = b.seen

    dtype = next(model.parameters()).dtype

    def step() -> None:
        lam_t = lam().detach().to(dtype).requires_grad_()  # λ in the model's dtype, as meta_step
        inner_opt = torch.optim.SGD(model.parameters(), lr=b.inner_lr)
        opt.zero_grad(set_to_none=True)
        with higher.innerloop_ctx(model, inner_opt, copy_initial_weights=False,
                                  track_higher_grads=True) as (fmodel, diffopt):
            for _ in range(k):
                params = dict(zip(names, fmodel.parameters()))
                inner = loss_fn(fmodel(b.sx, tasks=tasks), b.sy, tasks)[0]
                diffopt.step(inner + lam_t.sum() * penalty(params, b.layers))
            query = loss_fn(fmodel(b.qx, tasks=tasks), b.qy, tasks)[0]
            query.backward()
        opt.step()
        lam.rho.grad = (lam_t.grad * lam_t.detach()).to(lam.rho.dtype)
        opt_rho.step()
        lam.rho.grad = None
        lam.clamp_rho_()
    return step


def build_variant(b: Bench, name: str) -> Step:
    if name == "plain":
        return plain_step(b)
    k = int(name.rsplit("K=", 1)[1])
    if name.startswith("higher "):
        return higher_variant(b, k)
    return meta_variant(b, name.split()[0], k)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ----------------------------------------------------------------------------- time

def time_variants(b: Bench, names: list[str], repeats: int,
                  warmup: int) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Wall-clock and process CPU milliseconds per step, ``repeats`` interleaved steps each."""
    steps = {n: build_variant(b, n) for n in names}
    for n in names:
        for _ in range(warmup):
            steps[n]()
    _sync(b.device)
    wall: dict[str, list[float]] = {n: [] for n in names}
    cpu: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        order = names[r % len(names):] + names[:r % len(names)]
        for n in order:
            _sync(b.device)
            c0, t0 = time.process_time(), time.perf_counter()
            steps[n]()
            _sync(b.device)
            wall[n].append(1000.0 * (time.perf_counter() - t0))
            cpu[n].append(1000.0 * (time.process_time() - c0))
    return wall, cpu


# ----------------------------------------------------------------------------- memory

def _status_kb(field: str) -> int | None:
    try:
        m = re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)
    except OSError:
        return None
    return int(m.group(1)) if m else None


def _reset_peak_rss() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def probe_memory(args: argparse.Namespace) -> dict:
    """In a fresh process: the peak memory growth of variant ``args.memory_probe`` (see above)."""
    device = torch.device(args.device)
    b = Bench(args.batch_size, args.image_size, device)
    step = build_variant(b, args.memory_probe)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        for _ in range(args.memory_steps):
            step()
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
        return {"peak_mb": (peak - base) / 2**20, "method": "torch.cuda.max_memory_allocated"}
    base_kb = _status_kb("VmRSS")
    hwm = _reset_peak_rss() and base_kb is not None
    if not hwm:
        base_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for _ in range(args.memory_steps):
        step()
    peak_kb = _status_kb("VmHWM") if hwm else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    method = "VmHWM (reset) − VmRSS" if hwm else "ru_maxrss delta"
    return {"peak_mb": (peak_kb - base_kb) / 1024, "method": f"{method}, MALLOC_MMAP_THRESHOLD_="
            f"{os.environ.get('MALLOC_MMAP_THRESHOLD_', 'unset')}"}


def memory_in_subprocess(name: str, args: argparse.Namespace) -> dict:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_=MMAP_THRESHOLD)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--memory-probe", name,
           "--batch-size", str(args.batch_size), "--image-size", str(args.image_size),
           "--device", args.device, "--threads", str(args.threads[0]),
           "--memory-steps", str(args.memory_steps)]
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- report

def machine(device: torch.device) -> dict:
    from metasparsity.utils.provenance import machine_identity

    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        cores = os.cpu_count()
    info = {**machine_identity(), "usable_cores": cores, "device": str(device)}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def table(rows: list[dict]) -> str:
    lines = ["| variant | median ms | × plain | CPU ms | × plain | peak memory MB | × plain |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        mem = "–" if r["peak_mb"] is None else f"{r['peak_mb']:.1f}"
        mem_ratio = "–" if r["peak_mb_ratio"] is None else f"{r['peak_mb_ratio']:.2f}"
        lines.append(f"| {r['variant']} | {r['median_ms']:.1f} | {r['time_ratio']:.2f} | "
                     f"{r['median_cpu_ms']:.1f} | {r['cpu_ratio']:.2f} | {mem} | {mem_ratio} |")
    return "\n".join(lines)


def summarize(names: list[str], wall: dict[str, list[float]], cpu: dict[str, list[float]],
              memory: dict[str, dict]) -> list[dict]:
    base_ms, base_cpu = statistics.median(wall["plain"]), statistics.median(cpu["plain"])
    base_mb = memory["plain"]["peak_mb"] if memory else None
    rows = []
    for n in names:
        med, cpu_med = statistics.median(wall[n]), statistics.median(cpu[n])
        mb = memory[n]["peak_mb"] if memory else None
        rows.append({"variant": n, "median_ms": med, "time_ratio": med / base_ms,
                     "min_ms": min(wall[n]), "min_ratio": min(wall[n]) / min(wall["plain"]),
                     "median_cpu_ms": cpu_med, "cpu_ratio": cpu_med / base_cpu,
                     "times_ms": wall[n], "cpu_times_ms": cpu[n],
                     "peak_mb": mb,
                     "peak_mb_ratio": None if mb is None or not base_mb else mb / base_mb})
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch-size", type=int, default=16,
                    help="images in the plain batch, the support batch and the query batch")
    ap.add_argument("--repeats", type=int, default=15, help="timed steps per variant")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps per variant first")
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, nargs="+", default=[2],
                    help="torch intra-op threads; several values give one timing table each")
    ap.add_argument("--variants", nargs="+", default=None,
                    help=f"subset of: {', '.join(variant_names())} (plain is always run)")
    ap.add_argument("--memory-steps", type=int, default=3, help="steps per memory probe")
    ap.add_argument("--no-memory", action="store_true", help="skip the memory subprocesses")
    ap.add_argument("--out-dir", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--memory-probe", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    from metasparsity.utils.limits import MAX_IMAGE_SIZE, MAX_THREADS, MIN_IMAGE_SIZE

    for t in args.threads:
        if not 1 <= t <= MAX_THREADS:
            ap.error(f"--threads must be between 1 and {MAX_THREADS}, got {t}")
    n = load_config(CONFIG).data.train_size  # the support and the query batch are disjoint
    if not 1 <= args.batch_size <= n // 2:
        ap.error(f"--batch-size must be between 1 and {n // 2} (two batches of the preset's {n} "
                 f"training images), got {args.batch_size}")
    if not MIN_IMAGE_SIZE <= args.image_size <= MAX_IMAGE_SIZE:
        ap.error(f"--image-size must be between {MIN_IMAGE_SIZE} and {MAX_IMAGE_SIZE}, got "
                 f"{args.image_size}")
    for opt, v, lo in (("--repeats", args.repeats, 1), ("--warmup", args.warmup, 0),
                       ("--memory-steps", args.memory_steps, 1)):
        if v < lo:
            ap.error(f"{opt} must be >= {lo}, got {v}")
    try:
        device = torch.device(args.device)
    except RuntimeError:
        ap.error(f"--device {args.device!r} is not a torch device")
    if device.type not in ("cpu", "cuda") or (
            device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count()):
        ap.error(f"--device {args.device}: give cpu or an available cuda device")

    if args.memory_probe:
        torch.set_num_threads(args.threads[0])
        print(json.dumps(probe_memory(args)))
        return 0

    names = variant_names() if args.variants is None else ["plain"] + list(dict.fromkeys(
        n for n in args.variants if n != "plain"))
    unknown = set(names) - set(variant_names())
    if unknown:
        ap.error(f"--variants: unknown {sorted(unknown)}; choose from {variant_names()}")
    if args.out_dir.exists() and not args.out_dir.is_dir():
        ap.error(f"--out-dir {args.out_dir} exists and is not a folder")
    for f in (args.out_dir / "meta_step.json", args.out_dir / "meta_step.md"):
        if f.exists() and not f.is_file():
            ap.error(f"--out-dir: {f} exists and is not a file")
    b = Bench(args.batch_size, args.image_size, device)
    memory = {} if args.no_memory else {n: memory_in_subprocess(n, args) for n in names}
    runs = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        load_before = os.getloadavg()[0]
        wall, cpu = time_variants(b, names, args.repeats, args.warmup)
        runs.append({"threads": threads, "load_average_1min": [load_before, os.getloadavg()[0]],
                     "results": summarize(names, wall, cpu, memory)})

    m = b.cfg.meta
    mc = machine(device)
    memory_method = memory["plain"]["method"] if memory else None
    result = {
        "benchmark": "one meta-step (meta_step + outer_update) vs one plain MTL step",
        "machine": mc,
        "settings": {"config": str(CONFIG.relative_to(ROOT)), "image_size": args.image_size,
                     "batch_size": args.batch_size, "seen_tasks": b.seen, "meta_batch": 1,
                     "subset": "all seen tasks", "inner_lr": m.inner_lr,
                     "lambda_init": m.lambda_init, "lambda_scope": "global",
                     "params": sum(p.numel() for p in b.model.parameters()),
                     "grouped_layers": len(b.layers), "repeats": args.repeats,
                     "warmup": args.warmup, "memory_steps": args.memory_steps,
                     "memory_threads": args.threads[0], "memory_method": memory_method},
        "runs": runs,
    }
    args.out_dir.mkdir(parents=True, exist_ok=True)
    write_json(args.out_dir / "meta_step.json", result)
    parts = [
        f"Meta-step vs plain MTL step: SynthScenes preset (ResNet-18 ×0.25, {args.image_size} px, "
        f"5 seen tasks), batch {args.batch_size} (support = query = plain batch), one subset = "
        f"all seen tasks, global learnable λ; a meta-step is `meta_step` + `outer_update`.",
        f"Machine: {mc['cpu']}, {mc['usable_cores']} usable cores, torch {mc['torch']}, device "
        f"{mc['device']}{', ' + mc['gpu'] if 'gpu' in mc else ''}.",
        f"Time: median of {args.repeats} interleaved steps after {args.warmup} warm-up steps; "
        "'median ms' is wall-clock, 'CPU ms' is the process's CPU time (on a shared machine it "
        "does not count time spent waiting for a core, but with several threads it counts their "
        "spin-waiting).",
        f"Memory: peak growth over {args.memory_steps} steps in a fresh process per variant "
        f"({memory_method}; {args.threads[0]} torch thread"
        f"{'s' if args.threads[0] > 1 else ''}).",
    ]
    for run in runs:
        lb, la = run["load_average_1min"]
        parts.append(f"\n### {run['threads']} torch thread{'s' if run['threads'] > 1 else ''} "
                     f"(1-min load average {lb:.1f} → {la:.1f})\n\n" + table(run["results"]))
    md = "\n".join(parts) + "\n"
    (args.out_dir / "meta_step.md").write_text(md)
    print(md)
    print(f"wrote {args.out_dir / 'meta_step.json'} and {args.out_dir / 'meta_step.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
