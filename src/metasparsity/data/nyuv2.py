"""NYU-v2 (DESIGN §3.2) in either of the two layouts in circulation (NYUD_MT, MTAN): layout
detection, the split rule and the :class:`NYUv2` Dataset (which describes both layouts).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from metasparsity.data import DATASETS, DatasetSpec
from metasparsity.data.loading import (
    cap_ids,
    carve_validation,
    check_files,
    check_ids,
    load_npy,
    natural_key,
    read_label_png,
    read_lines,
    read_rgb,
    to_chw,
    to_hw,
)
from metasparsity.data.tasks import IGNORE_INDEX, TASKS, Task
from metasparsity.data.transforms import (
    DEFAULT_SCALE_RANGE,
    IMAGE_KEY,
    SampleTransform,
    TransformedFiles,
    normalize_normals,
    resize_target,
)
from metasparsity.utils.errors import UserError

# Gupta et al.'s 40-class NYU-v2 labels (NYUD_MT), in label order 0..39.
NYU40_CLASSES = [
    "wall", "floor", "cabinet", "bed", "chair", "sofa", "table", "door", "window", "bookshelf",
    "picture", "counter", "blinds", "desk", "shelves", "curtain", "dresser", "pillow", "mirror",
    "floor mat", "clothes", "ceiling", "books", "refrigerator", "television", "paper", "towel",
    "shower curtain", "box", "whiteboard", "person", "night stand", "toilet", "sink", "lamp",
    "bathtub", "bag", "otherstructure", "otherfurniture", "otherprop",
]
# Couprie et al.'s 13 classes (MTAN layout), in label order 0..12.
NYU13_CLASSES = [
    "bed", "books", "ceiling", "chair", "floor", "furniture", "objects", "picture", "sofa",
    "table", "tv", "wall", "window",
]

LAYOUTS = ("nyud_mt", "mtan")
LAYOUT_NAMES = {"nyud_mt": "NYUD_MT", "mtan": "MTAN"}
LAYOUT_CLASSES = {"nyud_mt": NYU40_CLASSES, "mtan": NYU13_CLASSES}
LAYOUT_TASKS = {"nyud_mt": ("segment", "depth", "normal", "edge"),
                "mtan": ("segment", "depth", "normal")}
LAYOUT_TREES = {
    "nyud_mt": (
        "NYUD_MT layout: <root>/images/<id>.jpg, <root>/segmentation/<id>.png (40 classes, "
        "0 = void), <root>/depth/<id>.npy (metres), <root>/normals/<id>.npy (H x W x 3), "
        "<root>/edge/<id>.npy, <root>/gt_sets/train.txt and <root>/gt_sets/val.txt"),
    "mtan": (
        "MTAN layout: <root>/train/image/<i>.npy (288 x 384 x 3, in [0, 1]), "
        "<root>/train/label/<i>.npy (13 classes, -1 = ignore), <root>/train/depth/<i>.npy, "
        "<root>/train/normal/<i>.npy, <root>/val/{image,label,depth,normal}/<i>.npy"),
}
# Sub-folder and file extension of each task in the NYUD_MT layout.
_NYUD_FILES = {"segment": ("segmentation", ".png"), "depth": ("depth", ".npy"),
               "normal": ("normals", ".npy"), "edge": ("edge", ".npy")}
_MTAN_DIRS = {"segment": "label", "depth": "depth", "normal": "normal"}


def expected_layouts(layout: str = "auto") -> str:
    """The folder tree(s) of ``layout`` (both for ``auto``) in one line, for error messages."""
    keys = LAYOUTS if layout == "auto" else (layout,)
    return "; or ".join(LAYOUT_TREES[k] for k in keys)


def detect_layout(root: str | os.PathLike | None, layout: str = "auto") -> str:
    """``nyud_mt`` or ``mtan``: ``layout`` checked against the folder, or detected when ``auto``.

    NYUD_MT is recognised by ``images/`` and ``gt_sets/``, MTAN by ``train/image/`` and
    ``val/image/``.  Anything else raises a UserError showing the expected tree(s).
    """
    if layout not in ("auto", *LAYOUTS):
        raise UserError(f"data.layout={layout!r}; choose auto, {', '.join(LAYOUTS)}")
    if root is None:
        raise UserError("data.root is not set: NYU-v2 needs its data folder in the "
                        + expected_layouts(layout))
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"NYU-v2 data folder {root} does not exist; expected the "
                        + expected_layouts(layout))
    found = {
        "nyud_mt": (root / "images").is_dir() and (root / "gt_sets").is_dir(),
        "mtan": (root / "train" / "image").is_dir() and (root / "val" / "image").is_dir(),
    }
    if layout == "auto":
        if found["nyud_mt"]:
            return "nyud_mt"
        if found["mtan"]:
            return "mtan"
        raise UserError(f"{root} is not a NYU-v2 folder in a known layout; expected the "
                        + expected_layouts())
    if not found[layout]:
        raise UserError(f"data.layout={layout} but {root} does not match it; expected the "
                        + expected_layouts(layout))
    return layout


def layout_tasks(layout: str) -> dict[str, Task]:
    """``{name: Task}`` for the tasks a layout serves, with that layout's classes."""
    classes = LAYOUT_CLASSES[layout]
    name = LAYOUT_NAMES[layout]
    out = {
        "segment": dataclasses.replace(
            TASKS["segment"], channels=len(classes), num_classes=len(classes),
            description=f"NYU-v2 {len(classes)}-class semantic segmentation ({name} layout)"),
        "depth": dataclasses.replace(TASKS["depth"], description="NYU-v2 depth in metres"),
        "normal": dataclasses.replace(
            TASKS["normal"], description="NYU-v2 unit surface normals in the camera frame"),
    }
    if "edge" in LAYOUT_TASKS[layout]:
        out["edge"] = dataclasses.replace(
            TASKS["edge"], description="NYU-v2 semantic boundaries (NYUD_MT edge maps)")
    return out


def nyuv2_tasks(data_cfg: Any) -> dict[str, Task]:
    """The tasks served in the layout that ``data_cfg`` (``root``, ``layout``) points at."""
    layout = detect_layout(data_cfg.root, data_cfg.layout)
    wanted = list(getattr(data_cfg, "tasks", []) or [])
    if layout == "mtan" and "edge" in wanted:
        raise UserError(
            f"task 'edge' is not available in the MTAN layout of NYU-v2 ({data_cfg.root} has no edge "
            f"maps); remove edge from data.tasks or use the NYUD_MT layout")
    n = getattr(data_cfg, "num_classes", None)
    if n is not None and n != len(LAYOUT_CLASSES[layout]):
        raise UserError(
            f"data.num_classes={n}, but the {LAYOUT_NAMES[layout]} layout of NYU-v2 has "
            f"{len(LAYOUT_CLASSES[layout])} classes (NYUD_MT: 40, MTAN: 13); set data.num_classes=null")
    return layout_tasks(layout)


def _read_id_list(path: Path) -> list[str]:
    if not path.is_file():
        raise UserError(f"missing split file: {path}; expected the " + expected_layouts("nyud_mt"))
    ids = check_ids(read_lines(path, "split file"), path)
    if not ids:
        raise UserError(f"split file {path} lists no ids")
    return ids


def _mtan_ids(folder: Path) -> list[str]:
    ids = [p.stem for p in folder.glob("*.npy")]
    if not ids:
        raise UserError(f"no .npy files in {folder}; expected the " + expected_layouts("mtan"))
    return sorted(ids, key=natural_key)


def official_ids(root: str | os.PathLike, layout: str) -> tuple[list[str], list[str]]:
    """``(train_ids, test_ids)`` of the official split (795 / 654 on the full data set)."""
    root = Path(root)
    if layout == "nyud_mt":
        return (_read_id_list(root / "gt_sets" / "train.txt"),
                _read_id_list(root / "gt_sets" / "val.txt"))
    return _mtan_ids(root / "train" / "image"), _mtan_ids(root / "val" / "image")


def split_ids(train_ids: Sequence[str], test_ids: Sequence[str], split: str,
              val_size: int | None = None, train_size: int | None = None,
              test_size: int | None = None) -> list[str]:
    """The ids of ``split`` (``train``, ``val``, ``test``) under the fixed rule.

    ``test`` = the official test ids; ``val`` / ``train`` = :func:`carve_validation` of the official
    training ids with ``val_size``; then ``train_size`` / ``test_size`` caps
    (:func:`~metasparsity.data.loading.cap_ids`).  ``val_size`` only chooses how many are carved.
    """
    if split == "test":
        return cap_ids(list(test_ids), test_size)
    train, val = carve_validation(list(train_ids), val_size)
    if split == "val":
        return val
    if split == "train":
        return cap_ids(train, train_size)
    raise UserError(f"unknown split {split!r}; choose train, val or test")


def _bad_values(values: np.ndarray) -> str:
    uniq = np.unique(values)
    shown = ", ".join(f"{v:g}" for v in uniq[:5].tolist())
    return shown + (f" (and {len(uniq) - 5} more)" if len(uniq) > 5 else "")


def decode_nyud_segmentation(raw: np.ndarray, path: Path | str = "<array>") -> np.ndarray:
    """NYUD_MT PNG values -> labels: 0 (void) -> 255, k in 1..40 -> k - 1. int64 ``[H, W]``."""
    raw = np.asarray(raw).astype(np.int64)
    bad = (raw < 0) | (raw > len(NYU40_CLASSES))
    if bad.any():
        raise UserError(
            f"segmentation label out of range in {path}: value(s) {_bad_values(raw[bad])}; expected "
            f"0 (void) or 1..{len(NYU40_CLASSES)}")
    return np.where(raw == 0, IGNORE_INDEX, raw - 1)


def decode_mtan_segmentation(raw: np.ndarray, path: Path | str = "<array>") -> np.ndarray:
    """MTAN label array -> labels: -1 -> 255, k in 0..12 kept. int64 ``[H, W]``."""
    raw = np.asarray(raw, dtype=np.float64)
    ok = np.isfinite(raw) & (raw == np.round(raw)) & (raw >= -1) & (raw < len(NYU13_CLASSES))
    if not ok.all():
        raise UserError(
            f"segmentation label out of range in {path}: value(s) {_bad_values(raw[~ok])}; expected "
            f"-1 (ignore) or integers 0..{len(NYU13_CLASSES) - 1}")
    lab = raw.astype(np.int64)
    return np.where(lab < 0, IGNORE_INDEX, lab)


def clean_depth(raw: np.ndarray) -> np.ndarray:
    """Depth ``[H, W]`` -> float32 ``[1, H, W]``; zero, negative and non-finite become 0 (invalid)."""
    d = np.asarray(raw, dtype=np.float32)
    d = np.where(np.isfinite(d) & (d > 0), d, 0.0).astype(np.float32)
    return d[None]


def clean_normals(chw: np.ndarray) -> np.ndarray:
    """Normals ``[3, H, W]`` -> float32 unit vectors; non-finite or all-zero pixels become 0."""
    n = np.asarray(chw, dtype=np.float32)
    finite = np.isfinite(n).all(axis=0, keepdims=True)
    n = np.where(finite, n, 0.0)
    return normalize_normals(torch.from_numpy(np.ascontiguousarray(n))).numpy()


class NYUv2(TransformedFiles):
    """NYU-v2 split as ``(image, {task: target})``.

    ``data.layout`` picks one; ``auto`` (default) detects it from the folder.

    **NYUD_MT** (Vandenhende et al.'s multi-task survey, the authors' code), 40 classes, with edges::

        <root>/
          images/<id>.jpg          RGB
          segmentation/<id>.png    class + 1 per pixel; 0 = void          -> 255 (ignore), k -> k - 1
          depth/<id>.npy           [H, W] metres; 0 or non-finite          -> 0 (invalid)
          normals/<id>.npy         [H, W, 3] unit normals; all-zero        -> invalid (kept all-zero)
          edge/<id>.npy            [H, W]; > 0                             -> 1
          gt_sets/train.txt        795 ids, one a line
          gt_sets/val.txt          654 ids: the official test images

    **MTAN** (MTAN, Auto-Lambda, Nash-MTL, LibMTL), 13 classes, no edges; every file is a ``.npy``
    array stored channel-last, 288×384::

        <root>/
          train/image/<i>.npy      [H, W, 3] RGB in [0, 1]
          train/label/<i>.npy      [H, W] class index as float; -1         -> 255 (ignore)
          train/depth/<i>.npy      [H, W, 1] metres; 0                     -> invalid
          train/normal/<i>.npy     [H, W, 3] unit normals; all-zero        -> invalid
          val/...                  the same for the 654 official test images

    (Channel-first ``[C, H, W]`` arrays are accepted too.)

    Normals are served as the files store them, as ``[3, H, W]`` camera-frame unit vectors
    ``(n_x, n_y, n_z)`` with ``n_x`` along the image columns (which is why a horizontal flip negates
    channel 0, as the reference loaders do); we change no sign, only renormalise non-zero vectors to
    unit length after loading and after resizing.

    **Splits.** The official test images (``gt_sets/val.txt``, MTAN ``val/``) are the ``test`` split.
    The ``val`` split (model selection) is carved out of the official training ids by
    :func:`~metasparsity.data.loading.carve_validation`: the ids sorted, permuted with a fixed seed 0
    (independent of ``data.seed``), the first ``data.val_size`` of that order (default 10 % when
    null) are ``val``, the rest ``train``.  ``data.train_size`` / ``data.test_size`` cap a split to
    the first ``n`` of the same fixed order (null = all): :func:`split_ids`.

    **Size.** Output is ``data.image_size`` square.  Evaluation resizes the shorter side and takes the
    centre square; training with ``data.augment`` takes a random zoom-in window (scale 1–1.5, depth
    divided by the zoom) and a random horizontal flip (:mod:`metasparsity.data.transforms`).  Targets
    whose size differs from their image are first resized to it (nearest), as the reference loader does.

    Args:
        root: data folder.
        split: ``train``, ``val`` or ``test``.
        tasks: task names to serve (subset of the layout's).
        layout: ``auto``, ``nyud_mt`` or ``mtan``.
        image_size: output side (square).
        train_size, val_size, test_size: split sizes (see :func:`split_ids`).
        augment: random scale-crop and flip (only applied to ``train``).
        scale_range: zoom range of the scale-crop.

    Items: image float32 ``[3, S, S]`` (ImageNet-normalised); ``segment`` int64 ``[S, S]``
    (255 = ignore); ``depth`` float32 ``[1, S, S]`` (0 = invalid); ``normal`` float32 ``[3, S, S]``
    (all-zero = invalid); ``edge`` float32 ``[1, S, S]`` in {0, 1}.
    """

    def __init__(self, root: str | os.PathLike, split: str, tasks: Sequence[str],
                 layout: str = "auto", image_size: int = 256, train_size: int | None = None,
                 val_size: int | None = None, test_size: int | None = None,
                 augment: bool = False,
                 scale_range: tuple[float, float] = DEFAULT_SCALE_RANGE) -> None:
        self.layout = detect_layout(root, layout)
        self.root = Path(root)
        self.split = split
        served = layout_tasks(self.layout)
        bad = [t for t in tasks if t not in served]
        if bad:
            raise UserError(
                f"NYU-v2 ({LAYOUT_NAMES[self.layout]} layout) does not serve {bad}; available: "
                f"{', '.join(served)}")
        self.tasks = {t: served[t] for t in tasks}
        self.types = {t: task.type for t, task in self.tasks.items()}
        train_ids, test_ids = official_ids(self.root, self.layout)
        self.ids = split_ids(train_ids, test_ids, split, val_size, train_size, test_size)
        self._folder = self.root if self.layout == "nyud_mt" else (
            self.root / ("val" if split == "test" else "train"))
        check_files([p for i in self.ids for p in self._paths(i).values()],
                    f"NYU-v2 {split} split ({LAYOUT_NAMES[self.layout]} layout) in {self.root}")
        self.transform = SampleTransform(self.types, image_size, train=augment and split == "train",
                                         scale_range=scale_range)

    def _paths(self, id_: str) -> dict[str, Path]:
        if self.layout == "nyud_mt":
            paths = {IMAGE_KEY: self.root / "images" / f"{id_}.jpg"}
            for t in self.tasks:
                sub, ext = _NYUD_FILES[t]
                paths[t] = self.root / sub / f"{id_}{ext}"
            return paths
        paths = {IMAGE_KEY: self._folder / "image" / f"{id_}.npy"}
        for t in self.tasks:
            paths[t] = self._folder / _MTAN_DIRS[t] / f"{id_}.npy"
        return paths

    def __len__(self) -> int:
        return len(self.ids)

    def _load_image(self, path: Path) -> torch.Tensor:
        if self.layout == "nyud_mt":
            return torch.from_numpy(read_rgb(path)).permute(2, 0, 1).float() / 255.0
        arr = to_chw(load_npy(path), 3, path).astype(np.float32)
        if not np.isfinite(arr).all() or arr.min() < -1e-3 or arr.max() > 1.0 + 1e-3:
            raise UserError(f"image {path}: values must be finite and in [0, 1] (MTAN layout), got "
                            f"range [{np.nanmin(arr):g}, {np.nanmax(arr):g}]")
        return torch.from_numpy(np.clip(arr, 0.0, 1.0))

    def _load_target(self, task: str, path: Path) -> np.ndarray:
        if task == "segment":
            if self.layout == "nyud_mt":
                return decode_nyud_segmentation(read_label_png(path), path)
            return decode_mtan_segmentation(to_hw(load_npy(path), path), path)
        if task == "depth":
            return clean_depth(to_hw(load_npy(path), path))
        if task == "normal":
            return clean_normals(to_chw(load_npy(path), 3, path))
        edge = np.asarray(to_hw(load_npy(path), path), dtype=np.float32)
        return (np.nan_to_num(edge, nan=0.0) > 0).astype(np.float32)[None]

    def load(self, index: int) -> dict[str, Any]:
        """Sample ``index`` at the files' own resolution, before any transform.

        ``{"image": float32 [3, H, W] in [0, 1], task: target, ...}`` with the target conventions.
        """
        paths = self._paths(self.ids[index])
        sample: dict[str, Any] = {IMAGE_KEY: self._load_image(paths[IMAGE_KEY])}
        hw = tuple(sample[IMAGE_KEY].shape[-2:])
        for t in self.tasks:
            target = torch.from_numpy(np.ascontiguousarray(self._load_target(t, paths[t])))
            if tuple(target.shape[-2:]) != hw:
                target = resize_target(target, self.types[t], hw)
            sample[t] = target
        return sample

    def __repr__(self) -> str:
        return (f"NYUv2(split={self.split!r}, layout={self.layout!r}, n={len(self)}, "
                f"tasks={list(self.tasks)})")


def build_nyuv2(data_cfg: Any, split: str) -> NYUv2:
    """``DatasetSpec.build`` for NYU-v2: the config's ``data`` section -> :class:`NYUv2`."""
    nyuv2_tasks(data_cfg)  # layout / class-count checks with the config's own messages
    return NYUv2(data_cfg.root, split, list(data_cfg.tasks), layout=data_cfg.layout,
                 image_size=data_cfg.image_size, train_size=data_cfg.train_size,
                 val_size=data_cfg.val_size, test_size=data_cfg.test_size,
                 augment=data_cfg.augment)


DATASETS.register("nyuv2", DatasetSpec(
    build=build_nyuv2, tasks=nyuv2_tasks,
    description="NYU-v2 (NYUD_MT 40 classes + edges, or MTAN 13 classes): segment, depth, normal, edge"))
