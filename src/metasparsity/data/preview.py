"""A PNG grid of samples and their ground truth: one row per sample.

Columns (those the samples have): RGB, segmentation (colour-coded, legend at the top), depth
(colour map with a colour bar; invalid pixels black), normals shown as ``(n + 1) / 2`` in RGB,
edges, and the image-level attributes as text.  matplotlib is imported lazily and only its
object-oriented API is used, so the caller's pyplot backend is left alone.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from metasparsity.data.tasks import IGNORE_INDEX
from metasparsity.utils.io import atomic_write

DENSE_KEYS = ("segment", "depth", "normal", "edge")
_TITLES = {"image": "RGB", "segment": "segmentation", "depth": "depth", "normal": "normal",
           "edge": "edges"}


def _numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def sample_for_preview(dataset: Any, i: int) -> dict[str, np.ndarray]:
    """Sample ``i`` as a dict of numpy arrays with ``image`` = RGB in [0, 1] ``[3, H, W]``.

    Uses ``dataset.raw(i)`` when the data set has it (SynthScenes), otherwise ``dataset[i]``
    with the image de-normalised by ImageNet's mean / std.  Only the data set's tasks are kept
    (``dataset.tasks`` when present).
    """
    from metasparsity.data.synthscenes import denormalize

    if hasattr(dataset, "raw"):
        sample = dict(dataset.raw(i))
    else:
        image, targets = dataset[i]
        sample = {"image": denormalize(image), **{k: _numpy(v) for k, v in targets.items()}}
    tasks = getattr(dataset, "tasks", None)
    keep = set(tasks) if tasks is not None else {k for k in sample if k != "image"}
    return {k: _numpy(v) for k, v in sample.items() if k == "image" or k in keep}


def write_preview(samples: Sequence[Mapping[str, np.ndarray]], out: str | os.PathLike,
                  class_names: Sequence[str] | None = None, title: str | None = None) -> Path:
    """Draw ``samples`` (dicts as from :func:`sample_for_preview`) into the PNG ``out``.

    Dense entries are recognised by name (``segment`` ``[H, W]``, ``depth`` ``[1, H, W]``,
    ``normal`` ``[3, H, W]``, ``edge`` ``[1, H, W]``); every 0-d entry is an attribute.  The file
    is written atomically.  Returns its path.
    """
    from matplotlib.colors import ListedColormap
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    if not samples:
        raise ValueError("write_preview needs at least one sample")
    cols = ["image"] + [k for k in DENSE_KEYS if k in samples[0]]
    attrs = [k for k, v in samples[0].items() if np.ndim(v) == 0]
    ncols = len(cols) + (1 if attrs else 0)
    rows = len(samples)
    fig = Figure(figsize=(2.1 * ncols + 0.4, 2.1 * rows + 0.9), dpi=100)

    n_classes = 0
    if class_names:
        n_classes = len(class_names)
    elif "segment" in cols:
        n_classes = 1 + max(int(np.where(s["segment"] == IGNORE_INDEX, 0, s["segment"]).max())
                            for s in samples)
    base = np.array([(0.12, 0.47, 0.71), (0.6, 0.6, 0.6), (0.74, 0.74, 0.13), (0.84, 0.15, 0.16),
                     (0.17, 0.63, 0.17), (0.09, 0.75, 0.81), (0.58, 0.40, 0.74),
                     (1.0, 0.5, 0.05), (0.55, 0.34, 0.29), (0.89, 0.47, 0.76)])
    palette = np.array([base[k % len(base)] * (1 - 0.35 * (k // len(base) % 2))
                        for k in range(max(n_classes, 1))])
    seg_cmap = ListedColormap(palette)

    axes = fig.subplots(rows, ncols, squeeze=False)
    for r, s in enumerate(samples):
        for c, key in enumerate(cols):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(_TITLES[key], fontsize=9)
            v = s[key]
            if key == "image":
                ax.imshow(np.clip(v.transpose(1, 2, 0), 0, 1), interpolation="nearest")
            elif key == "segment":
                lab = np.ma.masked_equal(v.astype(np.int64), IGNORE_INDEX)
                ax.imshow(lab, cmap=seg_cmap, vmin=-0.5, vmax=len(palette) - 0.5,
                          interpolation="nearest")
                ax.set_facecolor("black")
            elif key == "depth":
                d = np.ma.masked_less_equal(v[0], 0)
                im = ax.imshow(d, cmap="viridis", interpolation="nearest")
                ax.set_facecolor("black")
                cb = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03)
                cb.ax.tick_params(labelsize=6)
            elif key == "normal":
                ax.imshow(np.clip((v.transpose(1, 2, 0) + 1) / 2, 0, 1), interpolation="nearest")
            elif key == "edge":
                ax.imshow(v[0], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        if attrs:
            ax = axes[r, -1]
            ax.axis("off")
            text = "\n".join(f"{k}: {float(s[k]):g}" for k in attrs)
            ax.text(0.02, 0.5, text, fontsize=8, va="center", family="monospace",
                    transform=ax.transAxes)
    if "segment" in cols:
        names = list(class_names) if class_names else [f"class {k}" for k in range(n_classes)]
        handles = [Patch(color=palette[k], label=name) for k, name in enumerate(names)]
        fig.legend(handles=handles, loc="upper center", ncol=min(len(handles), 8), fontsize=8,
                   frameon=False, bbox_to_anchor=(0.5, 1.0))
    if title:
        fig.text(0.01, 0.995, title, fontsize=8, va="top")
    fig.subplots_adjust(left=0.02, right=0.97, bottom=0.02, top=1 - 0.75 / fig.get_figheight(),
                        wspace=0.25, hspace=0.08)
    return atomic_write(out, lambda tmp: fig.savefig(tmp, format="png"))


def preview_dataset(dataset: Any, indices: Iterable[int], out: str | os.PathLike,
                    title: str | None = None) -> Path:
    """Write a preview PNG of ``dataset``'s samples ``indices`` to ``out``; returns the path."""
    samples = [sample_for_preview(dataset, i) for i in indices]
    return write_preview(samples, out, getattr(dataset, "class_names", None), title)
