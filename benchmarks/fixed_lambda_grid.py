"""The fixed-λ baseline over a λ grid, with both prox metrics side by side (README, "The method").

For each seed: one dense MTL model (λ = 0) and one fixed-λ group-sparse MTL model per λ of
``--grid-adam`` (``sparsity.prox_metric=adam``, the group prox in Adam's metric, λ in gradient
units) and of ``--grid-euclidean`` (``sparsity.prox_metric=euclidean``, the first version's block
soft-threshold after Adam).  Every run is the ``metasparsity train`` recipe on ``--config``
(default ``configs/synthscenes.yaml``) with ``train.seed`` = the seed, the same data.

Δm is taken **against the dense MTL model of the same seed** (the formula of the README's
"Metrics", the primary metrics of the seen tasks, on the test split and on the validation split):
"Δm vs dense" below.
Rows carry ``prox_metric``, ``lam``, ``seed``, ``group_sparsity``, ``param_sparsity``, Δm; the
summary gives mean ± std over the seeds.  The dense model's train and validation losses (last
logged training losses against the best checkpoint's validation losses) say whether it
over-fits.  For the sparsest adam-metric point whose mean test Δm is within 1 point of dense
(≥ −1 %) at ≥ 40 % parameter sparsity, the pruned model's parameters, MACs and CPU latency
(batch 1, one thread) are measured against the dense model's.

Runs go to ``--runs`` (default ``runs/bench_fixed_lambda_grid``); a finished run is reused, an
interrupted one continues from its checkpoint, so the benchmark is resumable.  ``--jobs`` runs
that many trainings at once, one CPU thread each.

    python benchmarks/fixed_lambda_grid.py [--seeds 0 1 2] [--jobs 2]
        [--grid-adam 3e-4 1e-3 3e-3 1e-2 3e-2] [--grid-euclidean 0.1 0.3 0.5]

Writes ``benchmarks/results/fixed_lambda_grid.{json,md,png}``.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import contextlib
import math
import os
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
OUT = Path(__file__).resolve().parent / "results"


MAX_JOBS = 64
JOBS_HELP = f"trainings at once, one CPU thread each (1 to {MAX_JOBS})"
INTERRUPTED = "interrupted; run the same command again to continue: finished runs are reused"


class Number:
    """``type=`` of an option with several numbers (``--seeds 0 1``, ``--grid 1e-3 1e-2``): a
    key=value override right after its values is taken for one of them; say where it goes."""

    def __init__(self, kind: type) -> None:
        self.kind, self.__name__ = kind, kind.__name__

    def __call__(self, v: str):
        try:
            return self.kind(v)
        except ValueError:
            hint = (" (a key=value override cannot follow the values of an option that takes "
                    "several: give it before that option)" if "=" in v else "")
            raise argparse.ArgumentTypeError(f"invalid {self.__name__} value: {v!r}{hint}"
                                             ) from None


INT, FLOAT = Number(int), Number(float)


def parse_args(p: argparse.ArgumentParser, argv: list[str] | None = None) -> argparse.Namespace:
    """``p``'s arguments; the trailing key=value overrides may also come before or between the
    options (``parse_intermixed_args``)."""
    return p.parse_intermixed_args(argv)


def add_reuse_options(p: argparse.ArgumentParser) -> None:
    """The options of every benchmark that reuses finished runs (this one, lambda_inits.py,
    budget_train.py): ``--current-code-only`` and the trailing config overrides."""
    p.add_argument("--current-code-only", action="store_true",
                   help="refuse (exit 2) to reuse finished runs made by other code than this "
                        "(their results.json records the package digest); by default they are reused "
                        "and the report says how many")
    p.add_argument("overrides", nargs="*", help="config overrides (key=value)")


def check_jobs(p: argparse.ArgumentParser, jobs: int) -> None:
    if not 1 <= jobs <= MAX_JOBS:
        p.error(f"--jobs must be in 1..{MAX_JOBS}, got {jobs}")


def check_folder(p: argparse.ArgumentParser, option: str, path: Path | None) -> None:
    """An output folder option (``--out``, ``--runs``): a folder or none yet, not below a
    file, and one that can be written where it is (or would be) made: a temporary folder is
    made there and removed (``/proc``, a read-only mount)."""
    from metasparsity.utils.errors import UserError
    from metasparsity.utils.rundir import check_parents

    if path is None:
        return
    path = Path(path)
    try:
        check_parents(path, option)
    except UserError as e:
        p.error(str(e))
    if path.exists() and not path.is_dir():
        p.error(f"{option} {path} exists and is not a folder")
    base = next(q for q in (path, *path.parents) if q.is_dir())
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".writable-", dir=base))
    except OSError as e:
        p.error(f"{option} {path}: cannot write in {base} ({e.strerror})")


def check_grid(p: argparse.ArgumentParser, option: str, grid: list[float],
               note: str = "") -> None:
    """λ of a grid: finite, > 0, and distinct also as the run folders' names (``f"{λ:g}"``:
    0.05 and 0.050000001 would share one)."""
    names = [f"{g:g}" for g in grid]
    if any(not 0 < g < math.inf for g in grid) or len(set(names)) != len(names):
        p.error(f"{option}: give distinct finite λ > 0{note}, distinct in 6 significant digits "
                f"(the run folders' names), got {grid}")


def check_args(p: argparse.ArgumentParser, args: argparse.Namespace,
               configs: list[tuple[str, list[str]]] = (),
               folders: tuple[str, ...] = ("out", "runs", "grid_runs")) -> None:
    """What every benchmark that trains checks before its first training (``p.error``: one
    line, exit 2): ``--jobs`` in 1..:data:`MAX_JOBS`, ``--seeds`` given once each, ``--name`` a
    plain file stem, the output ``folders`` (``--out``, ``--runs``, ``--grid-runs``) writable
    folders or none yet (:func:`check_folder`), and each ``(config, overrides)`` of ``configs``
    loadable; found in a worker, any of these would come after the other trainings, or train
    one run folder twice at once."""
    if hasattr(args, "jobs"):
        check_jobs(p, args.jobs)
    seeds = getattr(args, "seeds", None)
    if isinstance(seeds, list) and len(set(seeds)) != len(seeds):
        p.error(f"--seeds: each seed once, got {' '.join(map(str, seeds))}")
    name = getattr(args, "name", None)
    if name is not None and (not name or name.startswith(".") or "/" in name or "\\" in name):
        p.error(f"--name must be a file stem (no folder, not hidden), got {name!r}")
    for f in folders:
        check_folder(p, "--" + f.replace("_", "-"), getattr(args, f, None))
    from metasparsity.config import load_config
    from metasparsity.utils.errors import UserError

    for config, overrides in configs:
        try:
            load_config(config, overrides)
        except UserError as e:
            p.error(str(e))


_worker = {"busy": False, "stop": False}


def _on_interrupt(signum, frame) -> None:
    """A pool worker's Ctrl-C: the first stops the job it runs (a training saves its last step
    first) and every job after; an idle worker, or a second Ctrl-C, just waits to be closed."""
    first, _worker["stop"] = not _worker["stop"], True
    if first and _worker["busy"]:
        raise KeyboardInterrupt


def _init_worker() -> None:
    from metasparsity.training import interrupt

    signal.signal(signal.SIGINT, _on_interrupt)
    # the pool passes each Ctrl-C on to its workers, which may have had it from the terminal
    # too: a second one in a training's step is not a request to stop it unsaved
    interrupt.SECOND_AFTER_S = None


def _job(fn, *args, **kwargs):
    if _worker["stop"]:  # queued before the interrupt
        raise KeyboardInterrupt
    _worker["busy"] = True
    try:
        return fn(*args, **kwargs)
    finally:
        _worker["busy"] = False


class Pool(cf.ProcessPoolExecutor):
    """The benchmarks' process pool of ``jobs`` workers; as a context manager, Ctrl-C ends
    the program with one line (:data:`INTERRUPTED`) and exit code 130 once every worker has
    stopped (a training saves its last step, a queued job does not start)."""

    def __init__(self, jobs: int) -> None:
        super().__init__(max_workers=jobs, initializer=_init_worker)

    def submit(self, fn, /, *args, **kwargs) -> cf.Future:
        return super().submit(_job, fn, *args, **kwargs)

    def __exit__(self, kind, exc, tb):
        if kind is None or not issubclass(kind, KeyboardInterrupt):
            return super().__exit__(kind, exc, tb)
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # wait for the workers' saves
        for proc in list((getattr(self, "_processes", None) or {}).values()):
            with contextlib.suppress(OSError):  # a signal to this process alone: pass it on
                os.kill(proc.pid, signal.SIGINT)
        self.shutdown(wait=True, cancel_futures=True)
        print(INTERRUPTED, file=sys.stderr)
        raise SystemExit(130)


def run_main(main: Callable[[], None]) -> None:
    """A training benchmark's entry point: a Ctrl-C outside its pool (reading runs, measuring,
    writing the tables) also ends with :data:`INTERRUPTED` and exit code 130, not a
    traceback."""
    try:
        main()
    except KeyboardInterrupt:
        print(INTERRUPTED, file=sys.stderr)
        raise SystemExit(130) from None


def _run_dir(runs: Path, seed: int, metric: str, lam: float) -> Path:
    return runs / f"seed_{seed}" / ("dense" if lam == 0 else f"{metric}_{lam:g}")


def _config(config: str, overrides: list[str], metric: str):
    from metasparsity.config import load_config

    return load_config(config, [*overrides, f"sparsity.prox_metric={metric}",
                                "train.progress=false", "train.num_threads=1"])


def expected_configs(config: str, overrides: list[str], runs: Path,
                     jobs: list[tuple[int, str, float]]) -> dict[Path, Any]:
    """The config each grid run (seed, metric, λ) is trained with: for
    :func:`~metasparsity.recipes.reused.check_reused_settings`."""
    from metasparsity.recipes.sweep import sub_run_config

    return {_run_dir(runs, s, m, lam): sub_run_config(_config(config, overrides, m), lam, s)
            for s, m, lam in jobs}


def _train(config: str, overrides: list[str], run_dir: str, seed: int, metric: str,
           lam: float) -> dict[str, Any]:
    """One training (in a worker process, one thread); returns its results.json."""
    import torch

    torch.set_num_threads(1)
    from metasparsity.recipes.sweep import train_or_load

    cfg = _config(config, overrides, metric)
    kind = "fixed_lambda" if lam > 0 else "mtl"
    t0 = time.time()
    res = train_or_load(cfg, Path(run_dir), lam, kind, seed=seed,
                        note_reuse=False)  # check_reuse reported them all
    res.setdefault("wall_time_s", round(time.time() - t0, 2))
    return res


def _dense_fit(run_dir: Path) -> dict[str, Any]:
    """Last logged training losses and the best checkpoint's validation losses, per task."""
    from metasparsity.utils.io import read_json, read_jsonl

    train = [r for r in read_jsonl(run_dir / "metrics.jsonl") if r.get("kind") == "train"]
    res = read_json(run_dir / "results.json")
    last = train[-1]["losses"] if train else {}
    return {t: {"train_loss": last.get(t), "val_loss": res["val"][t].get("loss")}
            for t in res["val"]}


def _mean_std(xs: list[float]) -> tuple[float, float]:
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def _pruned(run_dir: Path, image_size: int) -> dict[str, Any]:
    import torch

    from metasparsity.eval.cost import count_macs, count_parameters, measure_latency
    from metasparsity.recipes.load_run import load_run_model
    from metasparsity.sparsity import prune_zero_channels

    torch.set_num_threads(1)
    _, model, _ = load_run_model(run_dir)
    model.eval()
    x = torch.zeros(1, 3, image_size, image_size)
    pruned = prune_zero_channels(model, x)
    lat_d = measure_latency(model, x, warmup=5, repeats=30)
    lat_p = measure_latency(pruned, x, warmup=5, repeats=30)
    return {"params_dense": count_parameters(model), "params": count_parameters(pruned),
            "macs_dense": count_macs(model, x), "macs": count_macs(pruned, x),
            "latency_ms_dense": lat_d["median_ms"], "latency_ms": lat_p["median_ms"]}


def main() -> None:
    from metasparsity.utils.provenance import command_line

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default=str(ROOT / "configs" / "synthscenes.yaml"))
    p.add_argument("--seeds", type=INT, nargs="+", default=[0, 1, 2])
    p.add_argument("--grid-adam", type=FLOAT, nargs="+", default=[3e-4, 1e-3, 3e-3, 1e-2, 3e-2])
    p.add_argument("--grid-euclidean", type=FLOAT, nargs="*", default=[0.1, 0.3, 0.5],
                   help="λ of the Euclidean-metric prox (none given: no Euclidean runs)")
    p.add_argument("--jobs", type=int, default=2, help=JOBS_HELP)
    p.add_argument("--runs", type=Path, default=ROOT / "runs" / "bench_fixed_lambda_grid")
    p.add_argument("--out", type=Path, default=OUT)
    add_reuse_options(p)
    args = parse_args(p)
    os.environ.setdefault("METASPARSITY_NUM_THREADS", "1")
    check_args(p, args, [(args.config, args.overrides)])
    for opt, grid in (("--grid-adam", args.grid_adam), ("--grid-euclidean", args.grid_euclidean)):
        check_grid(p, opt, grid, " (λ = 0 is the dense run)")

    from metasparsity.config import load_config
    from metasparsity.data import resolve_tasks
    from metasparsity.eval.delta import default_spec, delta_m, usable_spec
    from metasparsity.recipes.reused import check_reused_settings
    from metasparsity.training.reuse import check_reuse
    from metasparsity.utils.io import atomic_write_text, write_json
    from metasparsity.utils.provenance import code_identity, code_label, machine_text

    cfg = load_config(args.config, args.overrides)
    seen = list(cfg.data.seen_tasks)
    types = {t: task.type for t, task in resolve_tasks(cfg, seen).items()}
    jobs = []  # seed by seed, so that the first seeds' rows come early
    for s in args.seeds:
        jobs += [(s, "adam", 0.0)] + [(s, m, lam) for m, grid in (
            ("adam", args.grid_adam), ("euclidean", args.grid_euclidean)) for lam in grid]
    dirs = [_run_dir(args.runs, s, m, lam) for s, m, lam in jobs]
    check_reused_settings(expected_configs(args.config, args.overrides, args.runs, jobs), p.error)
    other, code_note = check_reuse(dirs, refuse=args.current_code_only, error=p.error, root=ROOT)
    results: dict[tuple, dict] = {}
    t0 = time.time()
    with Pool(args.jobs) as pool:
        futs = {pool.submit(_train, args.config, args.overrides,
                            str(_run_dir(args.runs, s, m, lam)), s, m, lam): (s, m, lam)
                for s, m, lam in jobs}
        for i, fut in enumerate(cf.as_completed(futs), 1):
            key = futs[fut]
            results[key] = fut.result()
            print(f"[{i}/{len(jobs)}] seed {key[0]} {key[1]} λ={key[2]:g} "
                  f"({time.time() - t0:.0f} s)", flush=True)

    rows = []
    for (s, m, lam), res in sorted(results.items(), key=lambda kv: (kv[0][1], kv[0][2], kv[0][0])):
        dense = results[(s, "adam", 0.0)]
        row = {"prox_metric": "none" if lam == 0 else m, "lam": lam, "seed": s,
               "group_sparsity": res["sparsity"]["group_sparsity"],
               "param_sparsity": res["sparsity"]["param_sparsity"],
               "wall_time_s": res.get("wall_time_s")}
        for split in ("test", "val"):
            spec, _ = usable_spec(default_spec(types), dense[split])
            row[f"delta_m_{split}"] = delta_m(res[split], dense[split], spec)
        rows.append(row)

    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["prox_metric"], r["lam"]), []).append(r)
    summary = []
    for (m, lam), rs in groups.items():
        agg = {"prox_metric": m, "lam": lam, "seeds": len(rs)}
        for k in ("group_sparsity", "param_sparsity", "delta_m_test", "delta_m_val"):
            agg[k], agg[k + "_std"] = _mean_std([r[k] for r in rs])
        summary.append(agg)

    fit = {s: _dense_fit(_run_dir(args.runs, s, "adam", 0.0)) for s in args.seeds}
    ok = [a for a in summary if a["prox_metric"] == "adam" and a["param_sparsity"] >= 0.40
          and a["delta_m_test"] >= -1.0]
    best = max(ok, key=lambda a: a["param_sparsity"]) if ok else None
    pruned = None
    if best is not None:
        pruned = {s: _pruned(_run_dir(args.runs, s, "adam", best["lam"]), cfg.data.image_size)
                  for s in args.seeds}


    machine = f"{machine_text()}, {args.jobs} trainings at once, 1 thread each"
    lines = ["Fixed-λ grid, `" + command_line("benchmarks/fixed_lambda_grid.py", sys.argv[1:], ROOT)
             + f"` on `{Path(args.config).name}`; {machine}; seeds {args.seeds}; "
             "Δm vs the dense MTL model of the same seed (mean ± std over seeds).", "",
             code_note or f"Every run was made by this code ({code_label(code_identity())}).", "",
             "| prox metric | λ | group sparsity | param sparsity | Δm test | Δm val |",
             "|---|---|---|---|---|---|"]
    for a in sorted(summary, key=lambda a: (a["prox_metric"] != "none", a["prox_metric"], a["lam"])):
        lines.append(
            f"| {a['prox_metric']} | {a['lam']:g} | {100 * a['group_sparsity']:.1f} ± "
            f"{100 * a['group_sparsity_std']:.1f} % | {100 * a['param_sparsity']:.1f} ± "
            f"{100 * a['param_sparsity_std']:.1f} % | {a['delta_m_test']:+.2f} ± "
            f"{a['delta_m_test_std']:.2f} % | {a['delta_m_val']:+.2f} ± {a['delta_m_val_std']:.2f} % |")
    lines += ["", "Dense model, last training loss → best-checkpoint validation loss (per task, "
              "seed " + str(args.seeds[0]) + "): " + ", ".join(
                  f"{t} {v['train_loss']:.3g} → {v['val_loss']:.3g}"
                  for t, v in fit[args.seeds[0]].items()
                  if v["train_loss"] is not None and v["val_loss"] is not None)]
    if best is not None:
        ps = list(pruned.values())
        lines += ["", f"Sparsest adam-metric point with Δm ≥ −1 % at ≥ 40 % parameter sparsity: "
                  f"λ = {best['lam']:g} ({100 * best['param_sparsity']:.1f} % parameter sparsity, "
                  f"Δm {best['delta_m_test']:+.2f} %). Pruned (mean over seeds): parameters "
                  f"{statistics.fmean(q['params'] for q in ps) / 1e3:.0f} k vs "
                  f"{ps[0]['params_dense'] / 1e3:.0f} k, MACs "
                  f"{statistics.fmean(q['macs'] for q in ps) / 1e6:.1f} M vs "
                  f"{ps[0]['macs_dense'] / 1e6:.1f} M, latency (batch 1, 1 thread) "
                  f"{statistics.fmean(q['latency_ms'] for q in ps):.2f} ms vs "
                  f"{statistics.fmean(q['latency_ms_dense'] for q in ps):.2f} ms."]
    else:
        lines += ["", "No adam-metric grid point reached Δm ≥ −1 % at ≥ 40 % parameter sparsity."]
    table = "\n".join(lines) + "\n"
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "fixed_lambda_grid.json", {
        "machine": machine, "config": Path(args.config).name, "overrides": args.overrides,
        "rows": rows, "summary": summary, "dense_fit": fit, "best": best, "pruned": pruned,
        "code": {"this": code_identity(), "runs_from_other_code": other}})
    atomic_write_text(args.out / "fixed_lambda_grid.md", table)
    _plot(summary, args.out / "fixed_lambda_grid.png")
    print(table)


def _plot(summary: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for m, style in (("adam", "o-"), ("euclidean", "s--")):
        pts = sorted((a for a in summary if a["prox_metric"] == m), key=lambda a: a["param_sparsity"])
        if not pts:
            continue
        ax.errorbar([100 * a["param_sparsity"] for a in pts], [a["delta_m_test"] for a in pts],
                    xerr=[100 * a["param_sparsity_std"] for a in pts],
                    yerr=[a["delta_m_test_std"] for a in pts], fmt=style, capsize=3,
                    label=f"prox in {m} metric")
        for a in pts:
            ax.annotate(f"{a['lam']:g}", (100 * a["param_sparsity"], a["delta_m_test"]),
                        textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.axhline(0.0, color="grey", lw=0.8)
    ax.axhline(-1.0, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("backbone parameter sparsity (%)")
    ax.set_ylabel("Δm vs dense MTL, test (%)")
    ax.set_title("Fixed-λ group-sparse MTL (labels: λ; mean ± std over seeds)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    run_main(main)
