"""Reading the files of the real data sets, and the fixed rules that cut them into splits.

Every reader raises :class:`~metasparsity.utils.errors.UserError` naming the file: a missing file,
an unreadable or corrupt one, an array of the wrong shape.  The split helpers never depend on
``data.seed``: which images are used for training, validation and testing is a property of the
data set, not of the run, so that model selection is comparable across seeds.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from metasparsity.utils.errors import UserError
from metasparsity.utils.io import read_text_file

# The split order is a permutation drawn with this seed, whatever data.seed says.
SPLIT_SEED = 0


def missing_files_error(paths: Sequence[Path], what: str) -> UserError:
    """A one-line UserError naming (up to five of) the missing ``paths``."""
    shown = ", ".join(str(p) for p in paths[:5])
    more = f" … and {len(paths) - 5} more" if len(paths) > 5 else ""
    return UserError(f"{what}: {len(paths)} missing file(s): {shown}{more}")


def check_files(paths: Sequence[Path], what: str) -> None:
    """Raise a UserError listing every path of ``paths`` that is not a file."""
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise missing_files_error(missing, what)


def read_rgb(path: str | os.PathLike) -> np.ndarray:
    """An image file as uint8 ``[H, W, 3]`` RGB; a missing or corrupt file is named."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"missing image file: {path}")
    try:
        with Image.open(path) as im:
            im.load()
            return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise UserError(f"cannot read image {path}: corrupt or not an image ({e})") from None


def read_label_png(path: str | os.PathLike) -> np.ndarray:
    """A single-channel label image (modes L, P, I, I;16) as int64 ``[H, W]``."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"missing label file: {path}")
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode not in ("L", "P", "I", "I;16", "I;16B", "I;16L", "1"):
                raise UserError(
                    f"label image {path} has mode {im.mode}; expected one channel of class indices "
                    f"(mode L, P or I)")
            return np.asarray(im, dtype=np.int64).copy()
    except UserError:
        raise
    except (OSError, ValueError, SyntaxError) as e:
        raise UserError(f"cannot read label image {path}: corrupt or not an image ({e})") from None


def read_mask_png(path: str | os.PathLike) -> np.ndarray:
    """A binary part mask as bool ``[H, W]``: any non-zero value of the first channel is the part."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()
            arr = np.asarray(im)
    except (OSError, ValueError, SyntaxError) as e:
        raise UserError(f"cannot read mask image {path}: corrupt or not an image ({e})") from None
    if arr.ndim == 3:
        arr = arr[..., 0]
    return arr != 0


def load_npy(path: str | os.PathLike) -> np.ndarray:
    """``np.load`` of a ``.npy`` file (no pickles) holding a non-empty array of numbers (bool,
    integer or float); a missing, unreadable or malformed file is named in a one-line UserError."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"missing file: {path}")
    try:
        arr = np.load(path, allow_pickle=False)
    except Exception as e:  # OSError, ValueError, EOFError, UnpicklingError, zipfile errors…
        first = next((ln.strip() for ln in str(e).splitlines() if ln.strip()), type(e).__name__)
        raise UserError(f"cannot read array file {path}: {first[:200]}") from None
    if not isinstance(arr, np.ndarray):  # an .npz archive
        if hasattr(arr, "close"):
            arr.close()
        raise UserError(f"array file {path}: expected one .npy array, found an .npz archive")
    if arr.dtype.kind not in "biuf":
        raise UserError(f"array file {path}: expected numbers (bool, integer or float), got dtype "
                        f"{arr.dtype}")
    if arr.size == 0:
        raise UserError(f"array file {path}: the array is empty (shape {tuple(arr.shape)})")
    return arr


def read_lines(path: str | os.PathLike, what: str) -> list[str]:
    """The non-blank lines of a UTF-8 text file, stripped; a missing, unreadable or binary file is
    a one-line UserError naming ``what`` and the path."""
    text = read_text_file(path, what)
    return [ln.strip() for ln in text.splitlines() if ln.strip()]


def check_ids(ids: Sequence[str], path: str | os.PathLike, what: str = "split file") -> list[str]:
    """Sample ids read from ``path``: each a plain file name stem (no path separator, not starting
    with a dot, no whitespace inside), each listed once; anything else is a one-line UserError."""
    seen: set[str] = set()
    for i in ids:
        if ("/" in i or "\\" in i or i.startswith(".") or any(c.isspace() for c in i)
                or any(ord(c) < 32 for c in i)):
            raise UserError(f"{what} {path}: {i[:60]!r} is not an image id (expected a file name "
                            f"stem such as 0001, one per line)")
        if i in seen:
            raise UserError(f"{what} {path}: id {i[:60]!r} is listed more than once")
        seen.add(i)
    return list(ids)


def to_hw(arr: np.ndarray, path: Path) -> np.ndarray:
    """``[H, W]``, ``[H, W, 1]`` or ``[1, H, W]`` -> ``[H, W]``."""
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    elif arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 2:
        raise UserError(f"{path}: expected an [H, W] array, got shape {tuple(arr.shape)}")
    return arr


def to_chw(arr: np.ndarray, channels: int, path: Path) -> np.ndarray:
    """``[H, W, C]`` (preferred: how the files store it) or ``[C, H, W]`` -> ``[C, H, W]``."""
    if arr.ndim == 3 and arr.shape[-1] == channels:
        return np.moveaxis(arr, -1, 0)
    if arr.ndim == 3 and arr.shape[0] == channels:
        return arr
    raise UserError(
        f"{path}: expected an [H, W, {channels}] (or [{channels}, H, W]) array, "
        f"got shape {tuple(arr.shape)}")


# ----------------------------------------------------------------------------- split rules

def natural_key(name: str) -> tuple:
    """Sort key: purely numeric ids by value (``2 < 10``), then the others as text."""
    return (0, int(name), name) if name.isdigit() else (1, 0, name)


def fixed_order(ids: Sequence[str], seed: int = SPLIT_SEED) -> list[str]:
    """The ids sorted (:func:`natural_key`), then permuted by ``np.random.default_rng(seed)``.

    The result depends only on the set of ids, never on their order or on the run's seed.
    """
    ordered = sorted(set(ids), key=natural_key)
    perm = np.random.default_rng(seed).permutation(len(ordered))
    return [ordered[i] for i in perm]


def cap_ids(ids: Sequence[str], n: int | None) -> list[str]:
    """All ids (``n`` None or ``n >= len(ids)``), else the first ``n`` of :func:`fixed_order`.

    Returned sorted by :func:`natural_key`.  A cap therefore takes a spread-out subset of the
    split rather than its first (often same-scene) files, and a smaller cap is a subset of a
    larger one.
    """
    chosen = list(ids) if n is None or n >= len(ids) else fixed_order(ids)[:n]
    return sorted(chosen, key=natural_key)


def carve_validation(train_ids: Sequence[str], val_size: int | None,
                     default_fraction: float = 0.1) -> tuple[list[str], list[str]]:
    """Split the official training ids into ``(train, val)`` by a fixed rule.

    Rule: order the ids by :func:`fixed_order` (sorted, then a permutation with seed 0); the first
    ``val_size`` of that order are the validation ids, the rest the training ids.  ``val_size``
    None means ``round(default_fraction · n)`` (at least 1).  Both lists come back sorted.
    """
    order = fixed_order(train_ids)
    n = len(order)
    k = max(1, round(default_fraction * n)) if val_size is None else int(val_size)
    if k >= n:
        raise UserError(
            f"data.val_size={k} leaves no training images: the official training split has only {n}; "
            f"choose data.val_size < {n}")
    return sorted(order[k:], key=natural_key), sorted(order[:k], key=natural_key)
