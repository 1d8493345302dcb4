"""Recipe ``predict``: a compact model (from ``prune``) run on image files; the files it writes are
described on :func:`predict_files`.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from metasparsity.report.plots import voc_palette
from metasparsity.utils.errors import UserError, require_path

DEPTH_PNG_SCALE = 1000.0
PREDICTIONS_FILE = "predictions.json"


def _rgb(im: Any, p: Path) -> Any:
    """``[H, W, 3]`` float32 in [0, 1] of the Pillow image ``im`` (read from ``p``): 8-bit modes
    through ``convert("RGB")``; 16- and 32-bit integer grey (``I;16``, ``I``) divided by 65535 and
    float grey (``F``) as it is, refused where a value lies outside that range or is not finite
    (Pillow's own conversion would clip or zero them)."""
    import numpy as np

    if not (im.mode.startswith("I;16") or im.mode in ("I", "F")):
        return np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    grey, top = np.asarray(im), 1.0 if im.mode == "F" else 65535.0
    if not np.isfinite(grey).all():
        raise UserError(f"cannot read image {p}: its pixels (mode {im.mode}, floating-point "
                        "grey) hold NaN or infinite values")
    if grey.size and not 0 <= grey.min() <= grey.max() <= top:
        raise UserError(f"cannot read image {p}: its pixels (mode {im.mode}) range from "
                        f"{grey.min():g} to {grey.max():g}; predict reads grey values from 0 to "
                        f"{top:g} (give an 8-bit image, or one rescaled to that range)")
    return np.repeat((grey.astype(np.float32) / np.float32(top))[..., None], 3, axis=2)


def read_image(path: str | Path, size: int, mean: Sequence[float], std: Sequence[float]):
    """``[3, size, size]`` float32 normalised image (centred square, resized), or UserError.

    8-bit images are converted to RGB by Pillow; 16-bit grey ones (Pillow modes ``I;16``, ``I``)
    are scaled from [0, 65535] and floating-point grey ones (``F``) taken in [0, 1] (a value
    outside, or a NaN, is refused)."""
    import torch
    from PIL import Image, UnidentifiedImageError

    from metasparsity.data.transforms import center_crop_resize, normalize_image

    p = Path(path)
    require_path(path, "IMAGE")
    if p.is_dir():
        raise UserError(f"cannot read image {p}: it is a directory, not an image file")
    try:
        with Image.open(p) as im:
            rgb = _rgb(im, p)
    except FileNotFoundError:
        raise UserError(f"cannot read image {p}: no such file") from None
    except IsADirectoryError:
        raise UserError(f"cannot read image {p}: it is a directory, not an image file") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError,
            Image.DecompressionBombError) as e:  # the bomb: a header claiming a giant image
        raise UserError(f"cannot read image {p}: {e}") from None
    img = torch.from_numpy(rgb).permute(2, 0, 1).contiguous()
    img = center_crop_resize({"image": img}, {}, size)["image"]
    return normalize_image(img.clamp(0, 1).float(), mean, std)


def _stems(paths: Sequence[str]) -> list[str]:
    stems = [Path(p).stem for p in paths]
    if len(set(stems)) == len(stems):
        return stems
    return [f"{i:04d}_{s}" for i, s in enumerate(stems)]


def _write_dense(out: Any, task: Mapping[str, Any], stem: str, d: Path) -> dict[str, Any]:
    import numpy as np
    import torch
    from PIL import Image

    name, ttype = task["name"], task["type"]
    base = f"{stem}_{name}"
    if ttype == "segmentation" and out.shape[0] > 256:  # too many classes for a palette
        Image.fromarray(out.argmax(0).to(torch.int32).numpy().astype(np.uint16)).save(
            d / f"{base}.png")
        return {"png": f"{base}.png"}
    if ttype == "segmentation":
        labels = out.argmax(0).to(torch.uint8).numpy()
        im = Image.fromarray(labels)  # "L"; putpalette turns it into "P"
        im.putpalette(voc_palette())
        im.save(d / f"{base}.png")
        return {"png": f"{base}.png"}
    if ttype == "depth":
        depth = out[0].numpy().astype(np.float32)
        np.save(d / f"{base}.npy", depth)
        scaled = np.clip(np.round(depth * DEPTH_PNG_SCALE), 0, 65535).astype(np.uint16)
        Image.fromarray(scaled).save(d / f"{base}.png")
        return {"png": f"{base}.png", "npy": f"{base}.npy", "png_scale": DEPTH_PNG_SCALE}
    if ttype == "normal":
        n = torch.nn.functional.normalize(out, dim=0, eps=1e-12)
        rgb = ((n + 1.0) * 0.5 * 255.0).round().clamp(0, 255).to(torch.uint8)
        Image.fromarray(rgb.permute(1, 2, 0).contiguous().numpy()).save(d / f"{base}.png")
        return {"png": f"{base}.png"}
    if ttype == "edge":
        prob = torch.sigmoid(out[0])
        grey = (prob * 255.0).round().clamp(0, 255).to(torch.uint8).numpy()
        Image.fromarray(grey).save(d / f"{base}.png")
        return {"png": f"{base}.png"}
    np.save(d / f"{base}.npy", out.numpy().astype(np.float32))
    return {"npy": f"{base}.npy"}


def _output_task(name: str, y: Any, batch: int, tasks: Mapping[str, Mapping[str, Any]],
                 spec_file: Path) -> dict[str, Any]:
    """The task of the model's output ``name`` (``y``: dense ``[B, C, H, W]`` or image-level
    ``[B, C]``): its entry in ``model.json`` (``kind`` / ``type`` taken from ``y`` where it has
    none, as for an output it does not list), refused where it does not match ``y``."""
    import torch

    if not isinstance(y, torch.Tensor) or y.ndim not in (2, 4) or y.shape[0] != batch:
        raise UserError(f"{spec_file}: the model's output {name!r} is not a [B, C] or "
                        "[B, C, H, W] tensor")
    task = {"name": name, "kind": "dense" if y.ndim == 4 else "image", "type": "raw",
            **tasks.get(name, {})}
    channels = 3 if task["type"] == "normal" else task.get("channels")
    if (task["kind"] == "dense") != (y.ndim == 4) or channels not in (None, y.shape[1]):
        raise UserError(f"{spec_file}: task {name!r} ({task['kind']}, {task['type']}, "
                        f"{channels or 'any'} channels) does not match the model's output of "
                        f"shape {list(y.shape)}")
    return task


def _check_targets(out_dir: Path, names: Sequence[str]) -> None:
    """Refuse, before any file in ``out_dir`` is replaced, a folder where a file will go."""
    from metasparsity.utils.rundir import MARKER_FILE

    for name in (MARKER_FILE, *names):
        p = out_dir / name
        if p.is_dir() and not p.is_symlink():  # a link is replaced, not followed
            raise UserError(f"--out {out_dir}: {p} is a directory, where predict writes the file "
                            f"{name}; nothing was replaced (move that directory away)")


def _image_value(out: Any, task: Mapping[str, Any]) -> Any:
    import torch

    if task["type"] == "binary":
        return {"probability": float(torch.sigmoid(out.reshape(-1)[0]))}
    return {"output": [float(v) for v in out.reshape(-1)]}


def check_predictions_dir(out_dir: str | Path) -> None:
    """Refuse an ``--out`` that is a file, or a non-empty folder that is not a predictions folder
    made by this command (no ``.metasparsity.json`` marker of kind ``predictions``)."""
    from metasparsity.utils.rundir import KIND_NAMES, MARKER_FILE, PREDICTIONS, read_marker

    p = Path(out_dir)
    if p.exists() and not p.is_dir():
        raise UserError(f"--out {p} exists and is not a directory")
    if not p.is_dir() or not any(p.iterdir()):
        return
    doc = read_marker(p)
    if doc is None:
        raise UserError(f"--out {p} is not empty and is not a predictions folder made by "
                        f"metasparsity (no valid {MARKER_FILE} marker); choose a new or empty --out")
    if doc["kind"] != PREDICTIONS:
        theirs = KIND_NAMES.get(doc["kind"], doc["kind"])
        raise UserError(f"--out {p} is a {theirs}, not a predictions folder; choose a new or "
                        "empty --out")


def predict_files(model_dir: str | Path, images: Sequence[str], out_dir: str | Path,
                  batch_size: int = 16) -> dict[str, Any]:
    """Predict every task for every image; returns the content of ``predictions.json``.

    Each image is read with Pillow (any format it opens), converted to RGB (16-bit and
    floating-point grey scaled to [0, 1]: :func:`read_image`), cropped to its centred square and
    resized to the model's input size (the evaluation view of training), and normalised with the
    model's mean / std.  Predictions are at the model's input resolution; for image
    ``<stem>`` and task ``<t>`` the files are:

    ==============  =============================================================================
    segmentation    ``<stem>_<t>.png``: palette PNG, pixel value = class id, colours = VOC palette
                    (16-bit grey class ids beyond 256 classes)
    depth           ``<stem>_<t>.png``: 16-bit grey, value = depth · ``DEPTH_PNG_SCALE`` (clipped to
                    65535); ``<stem>_<t>.npy``: float32 ``[H, W]`` depth in the data's units
    normal          ``<stem>_<t>.png``: RGB = (n + 1) / 2 of the unit normal
    edge            ``<stem>_<t>.png``: grey = edge probability · 255
    other dense     ``<stem>_<t>.npy``: float32 ``[C, H, W]`` raw output
    image-level     in ``predictions.json``: the probability (binary tasks) or raw outputs
    ==============  =============================================================================

    ``predictions.json`` lists, per image, its path and every task's file or value.  Images are all
    read before anything runs: an unreadable one is an error (exit 2) naming the file, and nothing is
    written for the batch; so is a model that does not run, or gives outputs that do not match the
    tasks of its ``model.json`` or are not finite (NaN / inf: refused, never written).  Files are
    staged in a temporary directory and moved into DIR at the end, once every path they replace is
    known to be a file (a folder in the way is refused before anything is replaced).
    DIR may not equal, contain or lie inside MODEL_DIR or hold an input image, and must be new,
    empty, or a predictions folder this command made (its ``.metasparsity.json`` marker of kind
    ``predictions``; its files of the same names are replaced): any other non-empty folder is
    refused before anything is written.
    """
    import torch

    from metasparsity.export import SPEC_FILE, load_compact_model
    from metasparsity.utils.rundir import (
        PREDICTIONS,
        check_outputs_vs_inputs,
        check_parents,
        write_marker,
    )

    if isinstance(images, (str, bytes, os.PathLike)) or not isinstance(images, Iterable):
        raise UserError(f"IMAGE: give a list of image paths, got {images!r} (one path: wrap it "
                        "in a list)")
    images = list(images)
    if not images:
        raise UserError("no images given: give at least one IMAGE; nothing was written")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise UserError(f"--batch-size must be an integer >= 1, got {batch_size!r}")
    for label, path in [("MODEL_DIR", model_dir), ("--out", out_dir),
                        *(("IMAGE", p) for p in images)]:
        require_path(path, label)
    check_outputs_vs_inputs([("--out", out_dir)],
                            [("MODEL_DIR", model_dir), *(("IMAGE", p) for p in images)])
    check_parents(out_dir)
    check_predictions_dir(out_dir)
    # model.json's fields are checked there (types, ranges, std > 0)
    model, meta = load_compact_model(model_dir, require=("tasks", "image_size", "normalization"))
    spec_file = Path(model_dir) / SPEC_FILE
    size, mean, std = meta["image_size"], meta["normalization"]["mean"], meta["normalization"]["std"]
    tasks = {t["name"]: t for t in meta["tasks"]}
    # Read every image first: a bad file stops the batch before anything is written.
    inputs = [read_image(p, size, mean, std) for p in images]
    out_dir = Path(out_dir)
    stems = _stems(images)
    records: list[dict[str, Any]] = []
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        with torch.inference_mode():
            for start in range(0, len(inputs), batch_size):
                x = torch.stack(inputs[start:start + batch_size])
                try:
                    outputs = model(x)
                except torch.OutOfMemoryError:
                    raise UserError(f"out of memory predicting batches of {x.shape[0]} images: "
                                    "give a smaller --batch-size") from None
                except (RuntimeError, TypeError, ValueError, AttributeError, KeyError,
                        IndexError) as e:  # an architecture that builds but does not run
                    if "can't allocate memory" in str(e) or "out of memory" in str(e):
                        raise UserError(f"out of memory predicting batches of {x.shape[0]} "
                                        "images: give a smaller --batch-size") from None
                    raise UserError(f"the model in {model_dir} does not run on {size}×{size} "
                                    f"images (is {spec_file} damaged?): "
                                    f"{(str(e).splitlines() or [type(e).__name__])[0]}") from None
                if not isinstance(outputs, dict):
                    raise UserError(f"{spec_file}: the model returns no {{task: output}} dict "
                                    "(its architecture is not a MultiTaskNet)")
                checked = {name: _output_task(name, y, x.shape[0], tasks, spec_file)
                           for name, y in outputs.items()}
                for j in range(x.shape[0]):
                    i = start + j
                    rec: dict[str, Any] = {"image": str(images[i]), "outputs": {}}
                    for name, y in outputs.items():
                        out, task = y[j].float().cpu(), checked[name]
                        if not bool(torch.isfinite(out).all()):  # never a NaN in the files
                            raise UserError(f"the model in {model_dir} gives NaN or infinite "
                                            f"values for task {name!r} on {images[i]}; nothing "
                                            "was written")
                        if task["kind"] == "dense":
                            rec["outputs"][name] = _write_dense(out, task, stems[i], tmp)
                        else:
                            rec["outputs"][name] = _image_value(out, task)
                    records.append(rec)
        result = {"model_dir": str(model_dir), "image_size": size,
                  "tasks": list(tasks.values()), "images": records}
        (tmp / PREDICTIONS_FILE).write_text(json.dumps(result, indent=1, allow_nan=False) + "\n",
                                            encoding="utf-8")
        staged = sorted(tmp.iterdir())
        _check_targets(out_dir, [f.name for f in staged])
        out_dir.mkdir(parents=True, exist_ok=True)
        write_marker(out_dir, PREDICTIONS)
        for f in staged:
            try:
                f.replace(out_dir / f.name)
            except OSError as e:  # name the user's path, not the temporary one
                raise UserError(f"cannot write {out_dir / f.name}: {e.strerror or e}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return result
