"""CelebAMask-HQ's offline ``prepare`` step (DESIGN §3.3): the raw release -> the prepared folder that
:mod:`metasparsity.data.celebamaskhq` reads (``metasparsity data prepare celebamaskhq``); the
raw layout, the merging of part masks and the split rules are described on
:func:`prepare_celebamaskhq`.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from metasparsity.data.celebamaskhq import (
    CLASSES_3,
    CLASSES_19,
    FORMAT_VERSION,
    IMG_DIR,
    META_FILE,
    PARTS,
)
from metasparsity.data.loading import natural_key, read_mask_png
from metasparsity.utils.errors import UserError
from metasparsity.utils.limits import MAX_IMAGE_SIZE, MAX_THREADS, MIN_IMAGE_SIZE

FACE_PARTS = PARTS[:12]
# 19-class label -> 3-class label.
TO_THREE = np.array([0] + [2] * len(FACE_PARTS) + [1] + [0] * 5, dtype=np.uint8)

ATTRIBUTES = [
    "5_o_Clock_Shadow", "Arched_Eyebrows", "Attractive", "Bags_Under_Eyes", "Bald", "Bangs",
    "Big_Lips", "Big_Nose", "Black_Hair", "Blond_Hair", "Blurry", "Brown_Hair", "Bushy_Eyebrows",
    "Chubby", "Double_Chin", "Eyeglasses", "Goatee", "Gray_Hair", "Heavy_Makeup", "High_Cheekbones",
    "Male", "Mouth_Slightly_Open", "Mustache", "Narrow_Eyes", "No_Beard", "Oval_Face", "Pale_Skin",
    "Pointy_Nose", "Receding_Hairline", "Rosy_Cheeks", "Sideburns", "Smiling", "Straight_Hair",
    "Wavy_Hair", "Wearing_Earrings", "Wearing_Hat", "Wearing_Lipstick", "Wearing_Necklace",
    "Wearing_Necktie", "Young",
]

MASK_DIR = "CelebAMask-HQ-mask-anno"
ATTR_FILE = "CelebAMask-HQ-attribute-anno.txt"
MAPPING_FILE = "CelebA-HQ-to-CelebA-mapping.txt"
SPLIT_RULES = ("auto", "celeba", "fixed")
# Last CelebA file number of its official train and val partitions.
CELEBA_TRAIN_END, CELEBA_VAL_END = 162770, 182637

# Output side (pixels): the bounds of data.image_size, at which the prepared images are read.
MIN_SIZE, MAX_SIZE = MIN_IMAGE_SIZE, MAX_IMAGE_SIZE

RAW_LAYOUT = (
    f"CelebAMask-HQ raw release: <src>/{IMG_DIR}/<i>.jpg, "
    f"<src>/{MASK_DIR}/<i // 2000>/<i:05d>_<part>.png, <src>/{ATTR_FILE} and optionally "
    f"<src>/{MAPPING_FILE} (the standard CelebA split)")


def read_attribute_file(path: str | os.PathLike) -> tuple[list[str], dict[str, np.ndarray]]:
    """Parse ``CelebAMask-HQ-attribute-anno.txt`` -> ``(names, {image id: int8 values in {-1, 1}})``.

    Line 1 is the number of images, line 2 the attribute names, then one line per image:
    ``<i>.jpg`` and one value per name.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"missing attribute file: {path}; expected the {RAW_LAYOUT}")
    try:
        lines = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read attribute file {path}: {e}") from None
    if len(lines) < 2:
        raise UserError(f"attribute file {path}: expected a count line and a names line")
    try:
        count = int(lines[0].split()[0])
    except ValueError:
        raise UserError(f"attribute file {path}, line 1: expected the number of images, "
                        f"got {lines[0]!r}") from None
    names = lines[1].split()
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise UserError(f"attribute file {path}, line 2: attribute {dup!r} is named twice")
    rows: dict[str, np.ndarray] = {}
    for lineno, line in enumerate(lines[2:], start=3):
        tok = line.split()
        if len(tok) != len(names) + 1:
            raise UserError(f"attribute file {path}, line {lineno}: expected an image name and "
                            f"{len(names)} values, got {len(tok)} fields")
        image_id = Path(tok[0]).stem
        if image_id in rows:
            raise UserError(f"attribute file {path}, line {lineno}: image {tok[0]!r} is listed twice")
        try:
            vals = np.array([int(v) for v in tok[1:]], dtype=np.int8)
        except ValueError:
            raise UserError(f"attribute file {path}, line {lineno}: values must be -1 or 1") from None
        bad = ~np.isin(vals, (-1, 1))
        if bad.any():
            raise UserError(f"attribute file {path}, line {lineno}: value {int(vals[bad][0])} for "
                            f"{names[int(np.flatnonzero(bad)[0])]}; values must be -1 or 1")
        rows[image_id] = vals
    if count != len(rows):
        raise UserError(f"attribute file {path}: line 1 announces {count} images but "
                        f"{len(rows)} are listed")
    return names, rows


def read_mapping_file(path: str | os.PathLike) -> dict[str, int]:
    """Parse ``CelebA-HQ-to-CelebA-mapping.txt`` -> ``{HQ image id: original CelebA file number}``.

    Columns ``idx orig_idx orig_file``; the number is taken from ``orig_file`` (``119614.jpg``).
    """
    path = Path(path)
    out: dict[str, int] = {}
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read mapping file {path}: {e}") from None
    for lineno, line in enumerate(lines, start=1):
        tok = line.split()
        if not tok or (lineno == 1 and not tok[0].isdigit()):
            continue
        if len(tok) < 3 or not tok[0].isdigit() or not Path(tok[2]).stem.isdigit():
            raise UserError(f"mapping file {path}, line {lineno}: expected 'idx orig_idx orig_file', "
                            f"got {line!r}")
        out[tok[0]] = int(Path(tok[2]).stem)
    return out


def celeba_partition(file_number: int) -> str:
    """The official CelebA partition of original image ``<file_number>.jpg``."""
    if file_number <= CELEBA_TRAIN_END:
        return "train"
    return "val" if file_number <= CELEBA_VAL_END else "test"


def mask_path(src: str | os.PathLike, image_id: int, part: str) -> Path:
    """``<src>/CelebAMask-HQ-mask-anno/<i // 2000>/<i:05d>_<part>.png``."""
    return Path(src) / MASK_DIR / str(image_id // 2000) / f"{image_id:05d}_{part}.png"


def merge_part_masks(masks: dict[str, np.ndarray], shape: tuple[int, int] | None = None) -> np.ndarray:
    """Paint part masks (bool ``[H, W]`` by part name) into a 19-class uint8 map, in :data:`PARTS`
    order (later parts win).  Parts not in ``masks`` are absent."""
    if shape is None:
        if not masks:
            raise ValueError("merge_part_masks: no masks and no shape")
        shape = next(iter(masks.values())).shape
    label = np.zeros(shape, dtype=np.uint8)
    for idx, part in enumerate(PARTS, start=1):
        m = masks.get(part)
        if m is not None:
            label[m] = idx
    return label


def to_three_classes(label19: np.ndarray) -> np.ndarray:
    """19-class map -> background 0 / hair 1 / face 2 (see :func:`prepare_celebamaskhq`)."""
    return TO_THREE[label19]


def make_splits(ids: Sequence[str], rule: str = "fixed", mapping: dict[str, int] | None = None,
                val_fraction: float = 0.1, test_fraction: float = 0.1) -> dict[str, list[str]]:
    """``{"train", "val", "test": ids}`` by ``rule`` (``celeba`` or ``fixed``, :func:`prepare_celebamaskhq`)."""
    ordered = sorted(ids, key=natural_key)
    if rule == "celeba":
        if mapping is None:
            raise UserError("split rule 'celeba' needs CelebA-HQ-to-CelebA-mapping.txt")
        missing = [i for i in ordered if i not in mapping]
        if missing:
            raise UserError(f"{MAPPING_FILE} has no entry for image(s) {missing[:5]}")
        out: dict[str, list[str]] = {"train": [], "val": [], "test": []}
        for i in ordered:
            out[celeba_partition(mapping[i])].append(i)
        return out
    if rule != "fixed":
        raise UserError(f"unknown split rule {rule!r}; choose {', '.join(SPLIT_RULES)}")
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise UserError(f"val_fraction={val_fraction} and test_fraction={test_fraction} must be in "
                        f"[0, 1) with a sum below 1")
    n = len(ordered)
    n_test = max(1, round(test_fraction * n)) if test_fraction > 0 else 0
    n_val = max(1, round(val_fraction * n)) if val_fraction > 0 else 0
    if n - n_test - n_val < 1:
        raise UserError(f"{n} images are too few for a {val_fraction:.0%} val / {test_fraction:.0%} "
                        f"test split with at least one training image")
    return {"train": ordered[:n - n_val - n_test], "val": ordered[n - n_val - n_test:n - n_test],
            "test": ordered[n - n_test:]}


def _resized_rgb(path: Path, size: int) -> Image.Image:
    try:
        with Image.open(path) as im:
            im.draft("RGB", (size, size))  # JPEG: decode at a reduced scale >= size (fast)
            im = im.convert("RGB")
            return im.resize((size, size), Image.Resampling.BILINEAR)
    except FileNotFoundError:
        raise UserError(f"missing image file: {path}") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise UserError(f"cannot read image {path}: corrupt or not an image ({e})") from None


def _prepare_one(src: Path, tmp: Path, image_id: str, classes: int, size: int,
                 mask_files: dict[str, set[str]]) -> bool:
    """Write ``images/<i>.jpg`` and ``labels/<i>.png`` for one image; return whether it had masks."""
    i = int(image_id)
    _resized_rgb(src / IMG_DIR / f"{image_id}.jpg", size).save(
        tmp / "images" / f"{image_id}.jpg", quality=95)
    masks: dict[str, np.ndarray] = {}
    folder = str(i // 2000)
    for part in PARTS:
        name = f"{i:05d}_{part}.png"
        if name in mask_files.get(folder, ()):
            path = src / MASK_DIR / folder / name
            m = read_mask_png(path)
            if masks and m.shape != next(iter(masks.values())).shape:
                raise UserError(f"mask {path} is {m.shape[1]}x{m.shape[0]}, unlike the other masks "
                                f"of image {image_id}")
            masks[part] = m
    label = merge_part_masks(masks, None if masks else (size, size))
    if classes == 3:
        label = to_three_classes(label)
    Image.fromarray(label).resize((size, size), Image.Resampling.NEAREST).save(
        tmp / "labels" / f"{image_id}.png")
    return bool(masks)


def prepare_celebamaskhq(src: str | os.PathLike, out: str | os.PathLike, classes: int = 3,
                         size: int = 256, split: str = "auto", val_fraction: float = 0.1,
                         test_fraction: float = 0.1, overwrite: bool = False,
                         progress: bool = True, workers: int | None = None) -> Path:
    """Turn the raw CelebAMask-HQ release at ``src`` into the prepared folder ``out``.

    **Raw release**::

        <src>/
          CelebA-HQ-img/<i>.jpg                          1024×1024 RGB, i = 0..29999
          CelebAMask-HQ-mask-anno/<k>/<i:05d>_<part>.png  512×512 binary part masks, k = i // 2000
          CelebAMask-HQ-attribute-anno.txt               line 1: count; line 2: 40 attribute names;
                                                         then "<i>.jpg" and 40 values in {-1, 1}
          CelebA-HQ-to-CelebA-mapping.txt                (optional) idx, orig_idx, orig_file

    **Merging part masks.** A part's mask is its non-zero pixels (an absent file: the part is not
    there).  The 19-class map is painted in the order of the official ``g_mask.py``, later parts
    overwriting earlier ones: ``skin, nose, eye_g, l_eye, r_eye, l_brow, r_brow, l_ear, r_ear, mouth,
    u_lip, l_lip, hair, hat, ear_r, neck_l, neck, cloth`` -> labels 1..18, background 0.  The
    3-class map (background 0, hair 1, face 2), the background/hair/face-skin split of the authors'
    work, is derived from the 19-class map: face = skin, nose, eye_g (eyeglasses), both eyes, both
    brows, both ears, mouth, upper and lower lip; hair = hair; everything else (hat, earring ``ear_r``,
    necklace ``neck_l``, neck, cloth) is background.  So overlaps follow the same priority (hair over
    skin, hat over hair).

    **Splits** (``split=``):

    * ``celeba`` — the standard split (24,183 / 2,993 / 2,824 on the full release): each image
      follows its original CelebA image's official partition, read from
      ``CelebA-HQ-to-CelebA-mapping.txt`` (CelebA files ``000001``–``162770`` train,
      ``162771``–``182637`` val, ``182638``–``202599`` test);
    * ``fixed`` — ids sorted numerically: the last ``test_fraction`` (10 %) test, the
      ``val_fraction`` (10 %) before them val, the rest train;
    * ``auto`` (default) — ``celeba`` when the mapping file is there, else ``fixed``.

    Args:
        src: the raw release (above).
        out: output folder; must not exist or be empty, unless ``overwrite``; never the same
            as ``src``, inside it or around it.
        classes: 3 (background / hair / face) or 19 (background + 18 parts).
        size: output side of images and label maps (pixels), ``MIN_SIZE`` to ``MAX_SIZE``
            (16 to 4096, as ``data.image_size``).
        split: ``auto``, ``celeba`` or ``fixed`` (above).
        val_fraction, test_fraction: shares of the ``fixed`` rule.
        overwrite: replace a non-empty ``out`` that an earlier call prepared (it holds the
            marker ``.metasparsity.json``); any other folder is refused.
        progress: show a tqdm progress bar.
        workers: threads reading and writing images, 1 to ``MAX_THREADS`` (default: CPU
            count, at most 8).

    Everything is written into a temporary folder beside ``out`` that is renamed to ``out`` only
    when complete, so an interrupted run leaves no half-prepared data set.  Returns ``out``.
    """
    from metasparsity.utils.rundir import check_parents

    src = Path(src)
    check_parents(out)  # a link to nothing cannot be resolved
    out = Path(out).resolve()
    if classes not in (3, 19):
        raise UserError(f"classes={classes}; choose 3 (background/hair/face) or 19")
    if not MIN_SIZE <= size <= MAX_SIZE:
        raise UserError(f"size={size} is out of range; it must be between {MIN_SIZE} and "
                        f"{MAX_SIZE} pixels (the range of data.image_size)")
    if workers is not None and not 1 <= workers <= MAX_THREADS:
        raise UserError(f"workers={workers} is out of range; it must be between 1 and "
                        f"{MAX_THREADS} (or None: the cores, at most 8)")
    if split not in SPLIT_RULES:
        raise UserError(f"split={split!r}; choose {', '.join(SPLIT_RULES)}")
    if not src.is_dir() or not (src / IMG_DIR).is_dir():
        raise UserError(f"{src} is not the raw CelebAMask-HQ release; expected the {RAW_LAYOUT}")
    from metasparsity.utils.rundir import PREPARED_DATA, check_output_dir, write_marker

    # the source is never touched: --out may not equal, contain or lie inside --src, and
    # overwrite replaces only a folder that this function prepared (its marker)
    check_output_dir(out, PREPARED_DATA, overwrite=overwrite, inputs=[("--src", src)],
                     what="output folder")

    ids = sorted((p.stem for p in (src / IMG_DIR).glob("*.jpg") if p.stem.isdigit()),
                 key=natural_key)
    if not ids:
        raise UserError(f"no <i>.jpg images in {src / IMG_DIR}; expected the {RAW_LAYOUT}")
    names, attrs = read_attribute_file(src / ATTR_FILE)
    no_attr = [i for i in ids if i not in attrs]
    if no_attr:
        raise UserError(f"{src / ATTR_FILE} has no row for image(s) {no_attr[:5]}"
                        + (f" and {len(no_attr) - 5} more" if len(no_attr) > 5 else ""))
    mapping_path = src / MAPPING_FILE
    rule = ("celeba" if mapping_path.is_file() else "fixed") if split == "auto" else split
    if rule == "celeba" and not mapping_path.is_file():
        raise UserError(f"split='celeba' needs {mapping_path}")
    mapping = read_mapping_file(mapping_path) if rule == "celeba" else None
    splits = make_splits(ids, rule, mapping, val_fraction, test_fraction)

    mask_root = src / MASK_DIR
    if not mask_root.is_dir():
        raise UserError(f"missing mask folder {mask_root}; expected the {RAW_LAYOUT}")
    mask_files = {d.name: set(os.listdir(d)) for d in mask_root.iterdir() if d.is_dir()}

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        (tmp / "images").mkdir()
        (tmp / "labels").mkdir()
        (tmp / "splits").mkdir()
        from tqdm.auto import tqdm

        n_workers = workers if workers is not None else min(8, os.cpu_count() or 1)
        pool = ThreadPoolExecutor(max_workers=max(1, n_workers))
        try:
            results = pool.map(lambda i: _prepare_one(src, tmp, i, classes, size, mask_files), ids)
            had_masks = list(tqdm(results, total=len(ids), desc="celebamaskhq", unit="img",
                                  disable=None if progress else True))  # None: off unless a terminal
        except BaseException:
            # Fail at the first bad file instead of after every queued image has been processed.
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        pool.shutdown()
        without = [i for i, ok in zip(ids, had_masks) if not ok]
        if without:
            warnings.warn(f"{len(without)} image(s) have no part mask at all and are labelled "
                          f"background everywhere, e.g. {without[:5]}", stacklevel=2)

        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["image_id", *names])
        for i in ids:
            writer.writerow([i, *((attrs[i] > 0).astype(int).tolist())])
        (tmp / "attributes.csv").write_text(buf.getvalue(), encoding="utf-8")
        for name, members in splits.items():
            (tmp / "splits" / f"{name}.txt").write_text("".join(f"{i}\n" for i in members),
                                                         encoding="utf-8")
        meta = {
            "dataset": "celebamaskhq",
            "format_version": FORMAT_VERSION,
            "classes": classes,
            "class_names": CLASSES_3 if classes == 3 else CLASSES_19,
            "size": size,
            "attributes": names,
            "num_images": len(ids),
            "split_rule": rule,
            "split_sizes": {k: len(v) for k, v in splits.items()},
            "merge_order": PARTS,
            "images_without_masks": without,
            "source": str(src),
        }
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        write_marker(tmp, PREPARED_DATA)
        _swap_in(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _swap_in(tmp: Path, out: Path) -> None:
    """Rename the finished ``tmp`` to ``out``, replacing whatever ``out`` was."""
    if not out.exists():
        os.replace(tmp, out)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
    old.rmdir()
    os.replace(out, old)
    try:
        os.replace(tmp, out)
    except BaseException:
        os.replace(old, out)
        raise
    if old.is_dir():
        shutil.rmtree(old, ignore_errors=True)
    else:
        old.unlink()
