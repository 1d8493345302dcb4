"""Plots: λ and sparsity over meta-training, per-layer sparsity, Δm against sparsity with the
Pareto front, sample predictions.  matplotlib is imported lazily (Agg backend)."""

from __future__ import annotations

import math
import numbers
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
    """Write ``fig`` in the format of the suffix of ``path`` (``.png``, ``.pdf``, ``.svg`` …); a
    suffix matplotlib cannot write is a ValueError."""
    from matplotlib.backend_bases import FigureCanvasBase

    plt = _plt()
    fmt = Path(path).suffix.lower()[1:]
    if fmt not in FigureCanvasBase.get_supported_filetypes():
        plt.close(fig)
        raise ValueError(f"plot path {path}: cannot write a picture as "
                         f"{Path(path).suffix or 'a file without a suffix'!r}; name a file ending in "
                         ".png, .pdf or .svg")
    atomic_write(path, lambda tmp: fig.savefig(tmp, format=fmt, dpi=110, bbox_inches="tight"))
    plt.close(fig)
    return Path(path)


def _rows(rows: object, what: str) -> Sequence[Any]:
    """``rows`` as given when it is a list / tuple (not a string, a path or a mapping), else a
    TypeError naming ``what``."""
    if isinstance(rows, (str, bytes, Path, Mapping)) or not isinstance(rows, Sequence):
        raise TypeError(f"{what} must be a list, got {type(rows).__name__} {rows!r:.80}")
    return rows


def _point(r: Mapping[str, Any], key: str, what: str) -> tuple[float, float] | None:
    """``(100·share, Δm)`` of one row of :func:`plot_delta_vs_sparsity`, or None when either is
    None or not finite (a method whose Δm is undefined for every seed: left out of the plot)."""
    if not isinstance(r, Mapping) or key not in r or "delta_m" not in r:
        raise ValueError(f"plot_delta_vs_sparsity: {what} must be a dict with label, {key!r} and "
                         f"'delta_m', got {r!r:.120}")
    x, y = r[key], r["delta_m"]
    if x is None or y is None or not (math.isfinite(x) and math.isfinite(y)):
        return None
    if not 0 <= x <= 1:
        raise ValueError(f"plot_delta_vs_sparsity: {what} ({r.get('label')!r}) has {key} = {x!r}; "
                         "expected a share in [0, 1], not a percentage")
    return 100 * x, y


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of points not dominated when both coordinates are to be maximised, by x
    (:func:`~metasparsity.eval.delta.pareto_points`, as the gap to the front; a point with a NaN
    coordinate is never on it)."""
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
    the std over seeds.  A row whose share or Δm is None or not finite is left out (a method
    with no defined Δm); a share outside [0, 1] is a ValueError."""
    kept = [(r, pt) for i, r in enumerate(_rows(rows, "plot_delta_vs_sparsity: rows"))
            if (pt := _point(r, key, f"rows[{i}]")) is not None]
    rows, pts = [r for r, _ in kept], [pt for _, pt in kept]
    others = [(k, r, pt) for k, r in enumerate(_rows(extra, "plot_delta_vs_sparsity: extra"))
              if (pt := _point(r, key, f"extra[{k}]")) is not None]
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4.2))
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
    for k, r, (x, y) in others:
        ax.errorbar(x, y, xerr=r.get("xerr", 0.0), yerr=r.get("yerr", 0.0),
                    fmt=markers[k % len(markers)], ms=9, capsize=3, label=str(r["label"]))
    ax.axhline(0, color="k", lw=0.6)
    what = "parameter" if key == "param_sparsity" else "group"
    ax.set_xlabel(f"{what} sparsity of the shared backbone (%)")
    ax.set_ylabel("Δm (%) — higher is better")
    ax.set_title(title)
    if pts or others:
        # beside the axes: inside, "best" can still sit on a method's point
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
    else:  # e.g. a sweep whose Δm is undefined for every λ: say so rather than draw empty axes
        ax.text(0.5, 0.5, "no point to draw: Δm is undefined for every run", ha="center",
                va="center", transform=ax.transAxes, fontsize=9, color="0.3")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_per_layer_sparsity(per_layer: Sequence[Mapping[str, Any]] | Mapping[str, Sequence[Mapping[str, Any]]],
                            path: str | Path, title: str = "per-layer group sparsity",
                            lambdas: Sequence[float] | None = None) -> Path:
    """Bar chart of the share of zero input-channel groups in each backbone conv.

    ``per_layer``: the ``per_layer`` list of :func:`sparsity_stats`, or ``{label: list}`` to
    compare several models side by side (the same layers in each).  ``lambdas``: a per-layer λ
    (one per layer), drawn beside the bars on a log axis of its own."""
    series = per_layer if isinstance(per_layer, Mapping) else {"": per_layer}
    if not series:
        raise ValueError("plot_per_layer_sparsity: per_layer is an empty mapping: give "
                         "sparsity_stats(model).per_layer or {label: such a list}")
    names = None
    for label, layers in series.items():
        what = f"plot_per_layer_sparsity: per_layer{f'[{label!r}]' if label else ''}"
        if not isinstance(layers, (list, tuple)):
            raise TypeError(f"{what} must be the list of per-layer dicts of sparsity_stats(model) "
                            f"(its .per_layer), got {type(layers).__name__}")
        for j, layer in enumerate(layers):
            g = layer.get("group_sparsity") if isinstance(layer, Mapping) else None
            if not (isinstance(g, numbers.Real) and 0 <= g <= 1 and "name" in layer):
                raise ValueError(f"{what}[{j}] must be a dict with 'name' and a 'group_sparsity' "
                                 f"in [0, 1], got {layer!r:.120}")
        layer_names = [layer["name"] for layer in layers]
        if not layer_names:
            raise ValueError(f"{what} holds no layer")
        if names is not None and layer_names != names:
            raise ValueError(f"{what} has other layers than the first series")
        names = layer_names
    if lambdas is not None and len(lambdas) != len(names):
        raise ValueError(f"plot_per_layer_sparsity: lambdas has {len(lambdas)} values for "
                         f"{len(names)} layers (one λ per layer)")
    plt = _plt()
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
    records = _rows(records, "plot_meta_training: records")
    runs = (records if records and isinstance(records[0], Mapping) and "records" in records[0]
            else [{"label": "", "records": records}])
    for run in runs:
        what = (f"plot_meta_training: records of run {run.get('label')!r}"
                if isinstance(run, Mapping) and run.get("label") else "plot_meta_training: records")
        rec = _rows(run.get("records") if isinstance(run, Mapping) else run, what)
        if not rec:
            raise ValueError(f"{what}: none given (the 'meta' records of a metrics.jsonl)")
        for r in rec:
            if not isinstance(r, Mapping):
                raise TypeError(f"{what}: a record must be a dict, got {type(r).__name__}")
            if r.get("lambda") == []:
                raise ValueError(f"{what}: step {r.get('step')!r} has an empty 'lambda' list")
    plt = _plt()
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


def _samples_problem(data: Mapping[str, Any]) -> str | None:
    """What is wrong with the arrays of a ``samples.npz`` (:func:`plot_samples`), or None."""
    import numpy as np

    if any(k not in data for k in ("image", "tasks", "types")):
        return "it lacks one of the arrays image, tasks, types"
    if np.ndim(data["image"]) != 4 or np.shape(data["image"])[-1] != 3:
        return f"image has shape {np.shape(data['image'])}, not [N, H, W, 3]"
    n = np.shape(data["image"])[0]
    if n == 0:
        return "it holds no sample (image has shape [0, H, W, 3])"
    if np.ndim(data["tasks"]) != 1 or np.shape(data["tasks"]) != np.shape(data["types"]):
        return "tasks and types are not two lists of the same length"
    for t in (str(t) for t in data["tasks"]):
        arrays = [data.get(f"{w}_{t}") for w in ("gt", "pred")]
        if any(a is None or np.ndim(a) not in (3, 4) or np.shape(a)[0] != n for a in arrays):
            return f"gt_{t} / pred_{t} are missing or not one map per sample"
    return None


def read_samples(npz_path: str | Path) -> dict[str, Any]:
    """The arrays of a ``samples.npz`` (:func:`plot_samples`), checked: a damaged file, a missing
    array, one of another shape or no sample is a one-line :class:`UserError` naming the file."""
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
    problem = _samples_problem(data)
    if problem:
        raise UserError(f"samples file {p} is malformed: {problem}")
    return data


def voc_palette(n: int = 256) -> list[int]:
    """The PASCAL VOC colour map: ``3·n`` values, class ``k`` -> bits of ``k`` spread over RGB."""
    pal = []
    for k in range(n):
        r = g = b = 0
        c = k
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal += [r, g, b]
    return pal


#: The label of pixels without a class (``metasparsity.data.IGNORE_INDEX``; report may not import
#: data), drawn in white where the classes have a palette of their own.
_IGNORE = 255


def _class_colours(data: Mapping[str, Any], task: str) -> dict[str, Any]:
    """``imshow`` colours of the labels of segmentation task ``task``: tab10 up to 10 classes, else
    the VOC palette of as many classes as the shown labels need (max label + 1, ignored pixels
    left out), so that no two classes share a colour."""
    import numpy as np
    from matplotlib.colors import ListedColormap

    labels = np.concatenate([np.ravel(data[f"{w}_{task}"]) for w in ("gt", "pred")])
    labels = labels[(labels != _IGNORE) & np.isfinite(labels)]
    n = int(labels.max()) + 1 if labels.size else 0
    if n <= 10:
        return {"cmap": "tab10", "vmin": 0, "vmax": 9}
    cmap = ListedColormap(np.reshape(voc_palette(n), (n, 3)) / 255.0).with_extremes(over="white")
    return {"cmap": cmap, "vmin": -0.5, "vmax": n - 0.5}


def plot_samples(samples: str | Path | Mapping[str, Any], path: str | Path) -> Path:
    """Grid: one row per sample; input, then ground truth / prediction pairs per dense task.

    ``samples``: a ``samples.npz`` or its arrays (:func:`read_samples`): ``image`` [N, H, W, 3]
    in [0, 1] (N >= 1), ``tasks`` names, and per task ``gt_<t>`` / ``pred_<t>`` arrays ([N, H, W]
    labels or values, or [N, H, W, 3] normals).  Class labels get one colour each (tab10 up to
    10 classes, else the VOC palette)."""
    import numpy as np

    if isinstance(samples, Mapping):
        problem = _samples_problem(samples)
        if problem:
            raise ValueError(f"plot_samples: the samples are malformed: {problem}")
    data = samples if isinstance(samples, Mapping) else read_samples(samples)
    plt = _plt()
    tasks = [str(t) for t in data["tasks"]]
    kinds = {str(t): str(k) for t, k in zip(data["tasks"], data["types"])}
    colours = {t: _class_colours(data, t) for t in tasks if kinds[t] == "segmentation"}
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
                    ax.imshow(arr, **colours[t], interpolation="nearest")
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
