"""Plots: λ and sparsity over meta-training, per-layer sparsity, Δm against sparsity with the
Pareto front, sample predictions.  matplotlib is imported lazily (Agg backend)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from metasparsity.utils.io import atomic_write


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | Path) -> Path:
    plt = _plt()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight"))
    plt.close(fig)
    return Path(path)


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of points not dominated when both coordinates are to be maximised, by x
    (:func:`~metasparsity.eval.delta.pareto_points`, as the gap to the front)."""
    from metasparsity.eval.delta import pareto_points

    front = set(pareto_points(points))
    return sorted((i for i, p in enumerate(points) if tuple(p) in front), key=lambda i: points[i][0])


def plot_delta_vs_sparsity(rows: Sequence[Mapping[str, Any]], path: str | Path,
                           title: str = "Δm against group sparsity",
                           extra: Sequence[Mapping[str, Any]] = (), *,
                           key: str = "group_sparsity") -> Path:
    """``rows``: dicts with ``label``, ``key`` (a share, 0–1) and ``delta_m`` (%) — the λ grid,
    joined by a line and with its Pareto front marked; ``extra``: other methods as single points.
    Optional ``xerr`` / ``yerr`` (in the plotted units, % and Δm points) draw error bars, e.g.
    the std over seeds."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4.2))
    pts = [(100 * r[key], r["delta_m"]) for r in rows]
    if pts:
        order = sorted(range(len(pts)), key=lambda i: pts[i][0])
        ax.errorbar([pts[i][0] for i in order], [pts[i][1] for i in order],
                    xerr=[rows[i].get("xerr", 0.0) for i in order],
                    yerr=[rows[i].get("yerr", 0.0) for i in order], fmt="o-", color="0.6",
                    capsize=3, label="fixed λ grid")
        for r, (x, y) in zip(rows, pts):
            ax.annotate(str(r["label"]), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
        front = pareto_front(pts)
        ax.plot([pts[i][0] for i in front], [pts[i][1] for i in front], "s--", color="tab:red",
                mfc="none", ms=10, label="Pareto front (grid)")
    markers = "D^v<>P*X"
    for k, r in enumerate(extra):
        ax.errorbar(100 * r[key], r["delta_m"], xerr=r.get("xerr", 0.0), yerr=r.get("yerr", 0.0),
                    fmt=markers[k % len(markers)], ms=9, capsize=3, label=str(r["label"]))
    ax.axhline(0, color="k", lw=0.6)
    what = "parameter" if key == "param_sparsity" else "group"
    ax.set_xlabel(f"{what} sparsity of the shared backbone (%)")
    ax.set_ylabel("Δm (%) — higher is better")
    ax.set_title(title)
    # beside the axes: inside, "best" can still sit on a method's point
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_per_layer_sparsity(per_layer: Sequence[Mapping[str, Any]] | Mapping[str, Sequence[Mapping[str, Any]]],
                            path: str | Path, title: str = "per-layer group sparsity",
                            lambdas: Sequence[float] | None = None) -> Path:
    """Bar chart of the share of zero input-channel groups in each backbone conv.

    ``per_layer``: the ``per_layer`` list of :func:`sparsity_stats`, or ``{label: list}`` to
    compare several models side by side.  ``lambdas``: a per-layer λ (one per layer), drawn
    beside the bars on a log axis of its own."""
    plt = _plt()
    series = per_layer if isinstance(per_layer, Mapping) else {"": per_layer}
    names = [layer["name"] for layer in next(iter(series.values()))]
    short = [n.replace("backbone.", "").replace(".weight", "") for n in names]
    fig, ax = plt.subplots(figsize=(max(6, 0.28 * len(names) * max(1, len(series)) ** 0.5), 4))
    width = 0.8 / len(series)
    for k, (label, layers) in enumerate(series.items()):
        xs = [i + k * width for i in range(len(layers))]
        ax.bar(xs, [100 * layer["group_sparsity"] for layer in layers], width=width, label=label or None)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(names))])
    ax.set_xticklabels(short, rotation=90, fontsize=7)
    ax.set_ylabel("zero groups (%)")
    ax.set_ylim(0, 100)
    ax.set_title(title)
    if len(series) > 1:
        ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    if lambdas is not None:
        ax2 = ax.twinx()
        ax2.semilogy([i + 0.4 - width / 2 for i in range(len(lambdas))], list(lambdas), "o-",
                     color="tab:red", ms=4, lw=1)
        ax2.set_ylabel("λ of the layer", color="tab:red")
    return _save(fig, path)


def _total(v) -> float:
    return float(sum(v)) if isinstance(v, list) else float(v or 0.0)


def _running_mean(xs: Sequence[float], window: int = 25) -> list[float]:
    """Trailing mean over ``window`` steps (fewer at the start)."""
    out, acc = [], 0.0
    for i, x in enumerate(xs):
        acc += x
        if i >= window:
            acc -= xs[i - window]
        out.append(acc / min(i + 1, window))
    return out


def plot_meta_training(records: Sequence[Mapping[str, Any]], path: str | Path,
                       title: str = "meta-training") -> Path:
    """λ (log scale), λ's gradient (explicit / implicit / prox-path parts) and group sparsity per
    step.

    ``records``: the ``kind == "meta"`` lines of ``metrics.jsonl`` (or several runs as
    ``{"label": ..., "records": [...]}`` dicts, drawn on the same axes)."""
    plt = _plt()
    runs = records if records and "records" in records[0] else [{"label": "", "records": records}]
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    for run in runs:
        rec = run["records"]
        steps = [r["step"] for r in rec]
        lam = [r["lambda"] if not isinstance(r["lambda"], list) else sum(r["lambda"]) / len(r["lambda"]) for r in rec]
        axes[0].plot(steps, lam, label=run["label"] or "λ")
        axes[2].plot(steps, [100 * r["group_sparsity"] for r in rec], label=run["label"] or None)
        if len(runs) == 1:
            imp = [_total(r["grad_lambda_implicit"]) for r in rec]
            exp_ = [_total(r["grad_lambda_explicit"]) for r in rec]
            axes[1].plot(steps, imp, lw=0.5, alpha=0.35, color="tab:blue")
            axes[1].plot(steps, _running_mean(imp), lw=1.6, color="tab:blue",
                         label="implicit (through the inner loop), running mean")
            if any(exp_):
                axes[1].plot(steps, _running_mean(exp_), lw=1.6, color="tab:orange",
                             label="explicit (outer penalty), running mean")
            prox_ = [_total(r.get("grad_lambda_prox") or 0.0) for r in rec]
            if any(prox_):
                axes[1].plot(steps, _running_mean(prox_), lw=1.6, color="tab:green",
                             label="through the outer prox, running mean")
        else:
            tot = [_total(r["grad_lambda_implicit"]) + _total(r["grad_lambda_explicit"])
                   + _total(r.get("grad_lambda_prox") or 0.0) for r in rec]
            axes[1].plot(steps, _running_mean(tot), lw=1.2, label=f"{run['label']} (running mean)")
    if all(line.get_ydata().min() > 0 for line in axes[0].get_lines()):
        axes[0].set_yscale("log")
        axes[0].set_title("λ (log scale)")
    else:
        axes[0].set_title("λ")
    objectives = {r.get("lambda_objective") for run in runs for r in run["records"]}
    loss = "L_val" if objectives == {"heldout"} else "L_query" if objectives <= {"query", None} else "L"
    axes[1].set_title(f"d{loss}/dλ (negative ⇒ λ grows)")
    axes[1].axhline(0, color="k", lw=0.5)
    axes[1].set_yscale("symlog", linthresh=1e-3)
    axes[2].set_title("group sparsity (%)")
    for ax in axes:
        ax.set_xlabel("meta step")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.suptitle(title)
    return _save(fig, path)


def read_samples(npz_path: str | Path) -> dict[str, Any]:
    """The arrays of a ``samples.npz`` (:func:`plot_samples`), checked: a damaged file, a missing
    array or one of another shape is a one-line :class:`UserError` naming the file."""
    import zipfile

    import numpy as np

    from metasparsity.utils.errors import UserError

    p = Path(npz_path)
    try:
        with np.load(p, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise UserError(f"samples file {p} cannot be read ({type(e).__name__}: "
                        f"{str(e).splitlines()[0] if str(e) else 'damaged'})") from None
    problem = None
    if any(k not in data for k in ("image", "tasks", "types")):
        problem = "it lacks one of the arrays image, tasks, types"
    elif data["image"].ndim != 4 or data["image"].shape[-1] != 3:
        problem = f"image has shape {data['image'].shape}, not [N, H, W, 3]"
    elif data["tasks"].ndim != 1 or data["tasks"].shape != data["types"].shape:
        problem = "tasks and types are not two lists of the same length"
    else:
        n = data["image"].shape[0]
        for t in (str(t) for t in data["tasks"]):
            arrays = [data.get(f"{w}_{t}") for w in ("gt", "pred")]
            if any(a is None or a.ndim not in (3, 4) or a.shape[0] != n for a in arrays):
                problem = f"gt_{t} / pred_{t} are missing or not one map per sample"
                break
    if problem:
        raise UserError(f"samples file {p} is malformed: {problem}")
    return data


def plot_samples(samples: str | Path | Mapping[str, Any], path: str | Path) -> Path:
    """Grid: one row per sample; input, then ground truth / prediction pairs per dense task.

    ``samples``: a ``samples.npz`` or its arrays (:func:`read_samples`): ``image`` [N, H, W, 3]
    in [0, 1], ``tasks`` names, and per task ``gt_<t>`` / ``pred_<t>`` arrays ([N, H, W] labels
    or values, or [N, H, W, 3] normals)."""
    import numpy as np

    plt = _plt()
    data = samples if isinstance(samples, Mapping) else read_samples(samples)
    tasks = [str(t) for t in data["tasks"]]
    kinds = {str(t): str(k) for t, k in zip(data["tasks"], data["types"])}
    n = data["image"].shape[0]
    cols = 1 + 2 * len(tasks)
    fig, axes = plt.subplots(n, cols, figsize=(1.6 * cols, 1.7 * n), squeeze=False)
    for i in range(n):
        axes[i, 0].imshow(data["image"][i])
        if i == 0:
            axes[i, 0].set_title("input", fontsize=8)
        for j, t in enumerate(tasks):
            for k, which in enumerate(("gt", "pred")):
                ax = axes[i, 1 + 2 * j + k]
                arr = data[f"{which}_{t}"][i]
                kind = kinds[t]
                if kind == "segmentation":
                    ax.imshow(arr, cmap="tab10", vmin=0, vmax=9, interpolation="nearest")
                elif kind == "normal":
                    ax.imshow(np.clip((arr + 1) / 2, 0, 1))
                elif kind == "depth":
                    g = data[f"gt_{t}"][i]
                    ax.imshow(arr, cmap="viridis", vmin=float(g[g > 0].min()) if (g > 0).any() else None,
                              vmax=float(g.max()))
                else:
                    ax.imshow(arr, cmap="gray", vmin=0, vmax=1)
                if i == 0:
                    ax.set_title(f"{t} {'GT' if which == 'gt' else 'pred'}", fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    return _save(fig, path)
