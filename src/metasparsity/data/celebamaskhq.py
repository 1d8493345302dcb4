"""CelebAMask-HQ (DESIGN §3.3): the :class:`CelebAMaskHQ` Dataset over a prepared folder (made
offline by :mod:`metasparsity.data.celebamaskhq_prepare`) and its task table.
"""

from __future__ import annotations

import csv
import dataclasses
import difflib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from metasparsity.data import DATASETS, DatasetSpec
from metasparsity.data.loading import (
    cap_ids,
    check_files,
    check_ids,
    read_label_png,
    read_lines,
    read_rgb,
)
from metasparsity.data.tasks import TASKS, Task
from metasparsity.data.transforms import IMAGE_KEY, SampleTransform, TransformedFiles
from metasparsity.utils.errors import UserError
from metasparsity.utils.io import load_json

PARTS = ["skin", "nose", "eye_g", "l_eye", "r_eye", "l_brow", "r_brow", "l_ear", "r_ear", "mouth",
         "u_lip", "l_lip", "hair", "hat", "ear_r", "neck_l", "neck", "cloth"]
CLASSES_19 = ["background", *PARTS]
CLASSES_3 = ["background", "hair", "face"]
# 19-class label -> its mirror image's label (left/right parts swap under a horizontal flip).
FLIP_19 = list(range(256))
for _a, _b in (("l_eye", "r_eye"), ("l_brow", "r_brow"), ("l_ear", "r_ear")):
    _ia, _ib = CLASSES_19.index(_a), CLASSES_19.index(_b)
    FLIP_19[_ia], FLIP_19[_ib] = _ib, _ia

IMG_DIR = "CelebA-HQ-img"  # of the raw release: named when a raw folder is given as data.root
META_FILE = "meta.json"
FORMAT_VERSION = 1
TRAIN_SCALE_RANGE = (1.0, 1.25)

PREPARED_LAYOUT = (
    "prepared CelebAMask-HQ folder (made by `metasparsity data prepare celebamaskhq "
    "--src RAW --out DIR`): <root>/images/<i>.jpg, <root>/labels/<i>.png, <root>/attributes.csv, "
    f"<root>/splits/{{train,val,test}}.txt, <root>/{META_FILE}")


META_SCHEMA = {"classes": int, "attributes": [str], "class_names?": [str], "size?": int}
"""Shape of ``meta.json`` that the data set relies on (other keys are informative only)."""


def read_meta(root: str | os.PathLike | None) -> dict[str, Any]:
    """``meta.json`` of a prepared folder; a missing folder or file explains the expected layout,
    a file of the wrong shape is named (one-line UserErrors)."""
    if root is None:
        raise UserError(f"data.root is not set: CelebAMask-HQ needs a {PREPARED_LAYOUT}")
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"CelebAMask-HQ data folder {root} does not exist; expected a "
                        + PREPARED_LAYOUT)
    path = root / META_FILE
    if not path.is_file():
        hint = (f"; {root} looks like the raw release: prepare it first with "
                f"`metasparsity data prepare celebamaskhq --src {root} --out DIR`"
                if (root / IMG_DIR).is_dir() else "")
        raise UserError(f"missing file: {path}; expected a {PREPARED_LAYOUT}{hint}")
    meta = load_json(path, META_SCHEMA, what="CelebAMask-HQ meta file")
    what = f"{path} is not a prepared CelebAMask-HQ meta file"
    if meta["classes"] not in (3, 19):
        raise UserError(f"{what}: classes is {meta['classes']!r}; expected 3 or 19")
    attrs = meta["attributes"]
    bad = [a for a in attrs if not a.strip() or a == "segment" or any(c.isspace() for c in a)]
    if bad or len(set(attrs)) != len(attrs):
        shown = bad[0] if bad else next(a for a in attrs if attrs.count(a) > 1)
        raise UserError(f"{what}: attribute name {shown[:40]!r} is empty, reserved, holds a space "
                        f"or is listed twice")
    names = meta.get("class_names")
    if names is not None and len(names) != meta["classes"]:
        raise UserError(f"{what}: {len(names)} class names for {meta['classes']} classes")
    return meta


def _selected_attributes(available: Sequence[str], wanted: Sequence[str] | None) -> list[str]:
    if not wanted:
        return list(available)
    bad = [a for a in wanted if a not in available]
    if bad:
        hints = [f"{a!r} (did you mean {m[0]!r}?)" if (m := difflib.get_close_matches(a, available, 1))
                 else repr(a) for a in bad]
        raise UserError(f"data.attributes: unknown attribute(s) {', '.join(hints)}; available: "
                        f"{', '.join(available)}")
    return list(wanted)


def _tasks_from_meta(meta: dict[str, Any], attributes: Sequence[str] | None) -> dict[str, Task]:
    c = int(meta["classes"])
    out = {"segment": dataclasses.replace(
        TASKS["segment"], channels=c, num_classes=c,
        description=f"CelebAMask-HQ face parsing, {c} classes: " + ", ".join(meta.get(
            "class_names", CLASSES_3 if c == 3 else CLASSES_19)))}
    for a in _selected_attributes(meta["attributes"], attributes):
        out[a] = Task(a, "image", "binary", 1, None, f"CelebA attribute {a} (1 = present)")
    return out


def celebamaskhq_tasks(data_cfg: Any) -> dict[str, Task]:
    """``segment`` (classes from ``meta.json``) and one binary task per selected attribute."""
    meta = read_meta(data_cfg.root)
    n = getattr(data_cfg, "num_classes", None)
    if n is not None and n != meta["classes"]:
        raise UserError(f"data.num_classes={n}, but {data_cfg.root} was prepared with "
                        f"{meta['classes']} classes; prepare it again with --classes {n} "
                        f"or set data.num_classes=null")
    return _tasks_from_meta(meta, getattr(data_cfg, "attributes", None))


def _read_attributes_csv(path: Path) -> tuple[list[str], dict[str, np.ndarray]]:
    if not path.is_file():
        raise UserError(f"missing file: {path}; expected a {PREPARED_LAYOUT}")
    try:
        with open(path, encoding="utf-8", newline="") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise UserError(f"cannot read {path}: {e}") from None
    if not rows or rows[0][:1] != ["image_id"]:
        raise UserError(f"{path}: the first line must be 'image_id,<attribute names>'")
    names = rows[0][1:]
    out: dict[str, np.ndarray] = {}
    for lineno, row in enumerate(rows[1:], start=2):
        if len(row) != len(names) + 1 or any(v not in ("0", "1") for v in row[1:]):
            raise UserError(f"{path}, line {lineno}: expected an image id and {len(names)} "
                            f"values in {{0, 1}}")
        out[row[0]] = np.array([float(v) for v in row[1:]], dtype=np.float32)
    return names, out


class CelebAMaskHQ(TransformedFiles):
    """A split of a prepared CelebAMask-HQ folder as ``(image, {task: target})``.

    **Prepared folder** (``data.root`` of the data set)::

        <out>/
          images/<i>.jpg        size×size RGB (bilinear, JPEG quality 95)
          labels/<i>.png        size×size class indices (nearest), 8-bit
          attributes.csv        image_id, then the 40 attributes as 0/1 (-1 -> 0, 1 -> 1)
          splits/{train,val,test}.txt
          meta.json             classes, class names, size, attributes, split rule and sizes

    The data set serves ``segment`` (3 or 19 classes, from ``meta.json``) and one binary image-level
    task per attribute, named as in the file (``Male``, ``Smiling``…); ``data.attributes`` restricts
    which (empty: all 40).  ``data.train_size`` / ``val_size`` / ``test_size`` cap the prepared splits
    (first ``n`` of a fixed seed-0 order).  Training augmentation (``data.augment``): a random zoom of
    1–1.25 (small, so hats, earrings and neckties that attributes describe stay in view) and a
    horizontal flip that swaps left/right classes of the 19-class map.

    Args:
        root: prepared folder (:func:`~metasparsity.data.celebamaskhq_prepare.prepare_celebamaskhq`).
        split: ``train``, ``val`` or ``test``.
        tasks: ``segment`` and/or attribute names.
        image_size: output side (square).
        train_size, val_size, test_size: caps on the prepared splits (None = all).
        augment: random zoom (``scale_range``) and a left/right-aware flip (``train`` only).
        attributes: the attributes that may be served (None or empty: all).

    Items: image float32 ``[3, S, S]`` (ImageNet-normalised); ``segment`` int64 ``[S, S]``;
    each attribute a float32 scalar tensor in {0, 1}.
    """

    def __init__(self, root: str | os.PathLike, split: str, tasks: Sequence[str],
                 image_size: int = 256, train_size: int | None = None,
                 val_size: int | None = None, test_size: int | None = None,
                 augment: bool = False, attributes: Sequence[str] | None = None,
                 scale_range: tuple[float, float] = TRAIN_SCALE_RANGE) -> None:
        self.root = Path(root)
        self.split = split
        self.meta = read_meta(self.root)
        self.num_classes = int(self.meta["classes"])
        served = _tasks_from_meta(self.meta, attributes)
        bad = [t for t in tasks if t not in served]
        if bad:
            raise UserError(f"CelebAMask-HQ does not serve {bad}; available: {', '.join(served)}")
        self.tasks = {t: served[t] for t in tasks}
        if split not in ("train", "val", "test"):
            raise UserError(f"unknown split {split!r}; choose train, val or test")
        split_file = self.root / "splits" / f"{split}.txt"
        if not split_file.is_file():
            raise UserError(f"missing split file: {split_file}; expected a {PREPARED_LAYOUT}")
        ids = check_ids(read_lines(split_file, "split file"), split_file)
        if not ids:
            raise UserError(f"split file {split_file} lists no images")
        cap = {"train": train_size, "val": val_size, "test": test_size}[split]
        self.ids = cap_ids(ids, cap)
        self.attr_names = [t for t in self.tasks if t != "segment"]
        self._attr_values: dict[str, np.ndarray] = {}
        if self.attr_names:
            names, values = _read_attributes_csv(self.root / "attributes.csv")
            cols = [names.index(a) for a in self.attr_names if a in names]
            if len(cols) != len(self.attr_names):
                raise UserError(f"{self.root / 'attributes.csv'} lacks attribute(s) "
                                f"{[a for a in self.attr_names if a not in names]}")
            missing = [i for i in self.ids if i not in values]
            if missing:
                raise UserError(f"{self.root / 'attributes.csv'} has no row for image(s) {missing[:5]}")
            self._attr_values = {i: values[i][cols] for i in self.ids}
        paths = [self.root / "images" / f"{i}.jpg" for i in self.ids]
        if "segment" in self.tasks:
            paths += [self.root / "labels" / f"{i}.png" for i in self.ids]
        check_files(paths, f"CelebAMask-HQ {split} split in {self.root}")
        types = {"segment": "segmentation"} if "segment" in self.tasks else {}
        luts = {"segment": FLIP_19} if "segment" in self.tasks and self.num_classes == 19 else {}
        self.transform = SampleTransform(types, image_size, train=augment and split == "train",
                                         scale_range=scale_range, flip_luts=luts)

    def __len__(self) -> int:
        return len(self.ids)

    def load(self, index: int) -> dict[str, Any]:
        """Sample ``index`` at the prepared resolution, before any transform."""
        i = self.ids[index]
        image = torch.from_numpy(read_rgb(self.root / "images" / f"{i}.jpg")).permute(2, 0, 1)
        sample: dict[str, Any] = {IMAGE_KEY: image.float() / 255.0}
        if "segment" in self.tasks:
            path = self.root / "labels" / f"{i}.png"
            label = read_label_png(path)
            if label.shape != tuple(image.shape[-2:]):
                raise UserError(f"label image {path} is {label.shape[1]}x{label.shape[0]} but its "
                                f"image is {image.shape[2]}x{image.shape[1]}; prepare the folder again")
            bad = (label < 0) | (label >= self.num_classes)
            if bad.any():
                raise UserError(f"segmentation label out of range in {path}: value(s) "
                                f"{sorted(set(label[bad].tolist()))[:5]}; expected 0..{self.num_classes - 1}")
            sample["segment"] = torch.from_numpy(label)
        for k, a in enumerate(self.attr_names):
            sample[a] = torch.tensor(self._attr_values[i][k], dtype=torch.float32)
        return sample

    def __repr__(self) -> str:
        return f"CelebAMaskHQ(split={self.split!r}, n={len(self)}, tasks={list(self.tasks)})"


def build_celebamaskhq(data_cfg: Any, split: str) -> CelebAMaskHQ:
    """``DatasetSpec.build`` for CelebAMask-HQ: the config's ``data`` section -> dataset."""
    celebamaskhq_tasks(data_cfg)  # class-count and attribute-name checks
    return CelebAMaskHQ(data_cfg.root, split, list(data_cfg.tasks), image_size=data_cfg.image_size,
                        train_size=data_cfg.train_size, val_size=data_cfg.val_size,
                        test_size=data_cfg.test_size, augment=data_cfg.augment,
                        attributes=data_cfg.attributes)


DATASETS.register("celebamaskhq", DatasetSpec(
    build=build_celebamaskhq, tasks=celebamaskhq_tasks,
    description="CelebAMask-HQ (prepared): face parsing (3 or 19 classes) + 40 binary attributes"))
