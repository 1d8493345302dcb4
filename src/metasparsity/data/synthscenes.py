"""SynthScenes: the built-in procedural data set (DESIGN §3.1; full definition in
``docs/synthscenes.md``).

Sample ``i`` of a split is the scene drawn from ``np.random.default_rng([seed, offset + i])``
(``offset`` = 0, 10⁷, 2·10⁷ for train, val, test), rendered by the vectorised ray caster in
:mod:`metasparsity.data.render`.  It depends on nothing else, so it is the same in any process,
DataLoader worker or order, and the three splits never share a scene.

>>> ds = SynthScenes(size=64, length=100, split="train", seed=0)
>>> image, targets = ds[0]          # image float32 [3, 64, 64], normalised; targets per task
>>> raw = ds.raw(0)                 # numpy arrays: raw RGB in [0, 1], GT, object ids, K, light
"""

from __future__ import annotations

import os
import tempfile
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from metasparsity.data import DATASETS, DatasetSpec
from metasparsity.data.render import GENERATOR_VERSION, intrinsics, render_sample
from metasparsity.data.tasks import SYNTH_CLASSES, TASKS, Task

# Images are normalised per channel as (rgb − mean) / std with ImageNet's statistics (one
# definition, in transforms, shared with the real data sets) so that torchvision weights fit.
from metasparsity.data.transforms import IMAGENET_MEAN, IMAGENET_STD  # noqa: F401 (re-exported)
from metasparsity.utils.env import MEMO_DEFAULT_MB, MEMO_ENV, memo_limit  # noqa: F401 (re-exported)
from metasparsity.utils.errors import UserError

SYNTH_TASKS = ("segment", "depth", "normal", "edge", "has_sphere", "many_objects", "light_left")
"""Every task SynthScenes serves."""

SPLIT_OFFSET = {"train": 0, "val": 10_000_000, "test": 20_000_000}
"""Global index of a split's sample 0; a split holds at most 10⁷ samples, so splits are disjoint."""
MAX_SPLIT_SIZE = 10_000_000

# Cached arrays are stored in compact dtypes and restored on load (values are identical).
_CACHE_DTYPES = {"segment": np.int8, "object_id": np.int8, "surface": np.int8, "edge": np.uint8}
_LOAD_DTYPES = {"segment": np.int64, "object_id": np.int64, "surface": np.int64, "edge": np.float32}


def normalize(rgb: np.ndarray) -> np.ndarray:
    """``[3, H, W]`` RGB in [0, 1] -> ImageNet-normalised float32."""
    mean = np.asarray(IMAGENET_MEAN, np.float32)[:, None, None]
    std = np.asarray(IMAGENET_STD, np.float32)[:, None, None]
    return ((rgb - mean) / std).astype(np.float32)


def denormalize(image: np.ndarray | torch.Tensor) -> np.ndarray:
    """Inverse of :func:`normalize`: ``[3, H, W]`` -> RGB in [0, 1] (clipped)."""
    x = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    mean = np.asarray(IMAGENET_MEAN, np.float32)[:, None, None]
    std = np.asarray(IMAGENET_STD, np.float32)[:, None, None]
    return np.clip(x * std + mean, 0, 1)


class SynthScenes(Dataset):
    """One split of SynthScenes.

    Args:
        size: image side ``S`` (pixels); every array is rendered directly at ``S × S``.
        length: number of samples in the split (at most 10⁷).
        split: ``train``, ``val`` or ``test`` (selects the disjoint index range).
        seed: data seed; sample ``i`` depends only on ``(seed, SPLIT_OFFSET[split] + i, size)``.
        tasks: tasks served by ``__getitem__`` (default: all of :data:`SYNTH_TASKS`).
        cache_dir: optional folder for an on-disk cache of rendered samples (one ``.npz`` per
            sample, written atomically, keyed by generator version, seed, size and index).

    ``ds[i]`` returns ``(image, targets)``: ``image`` float32 ``[3, S, S]`` normalised with
    :data:`IMAGENET_MEAN` / :data:`IMAGENET_STD`; ``targets[task]`` as in
    :mod:`metasparsity.data.tasks` (segment int64 ``[S, S]``, depth ``[1, S, S]``, normal
    ``[3, S, S]``, edge ``[1, S, S]``, attributes float32 scalars).
    """

    class_names = list(SYNTH_CLASSES)

    def __init__(self, size: int = 64, length: int = 2000, *, split: str = "train", seed: int = 0,
                 tasks: Sequence[str] = SYNTH_TASKS, cache_dir: str | os.PathLike | None = None
                 ) -> None:
        if split not in SPLIT_OFFSET:
            raise UserError(f"unknown split {split!r}; choose one of {', '.join(SPLIT_OFFSET)}")
        if not 1 <= int(length) <= MAX_SPLIT_SIZE:
            raise UserError(f"SynthScenes {split} size must be in [1, {MAX_SPLIT_SIZE}], got {length}")
        if int(size) < 8:
            raise UserError(f"SynthScenes image size must be at least 8 pixels, got {size}")
        memo_limit()  # a bad $METASPARSITY_SYNTH_MEMO_MB is refused now, not at the first sample
        bad = [t for t in tasks if t not in SYNTH_TASKS]
        if bad:
            raise UserError(f"SynthScenes does not serve {bad}; available: {', '.join(SYNTH_TASKS)}")
        self.size = int(size)
        self.length = int(length)
        self.split = split
        self.seed = int(seed)
        self.tasks = list(tasks)
        self.offset = SPLIT_OFFSET[split]
        self.cache_dir = None
        if cache_dir is not None:
            self.cache_dir = (Path(cache_dir)
                              / f"synthscenes-v{GENERATOR_VERSION}-seed{self.seed}-{self.size}px")

    def __len__(self) -> int:
        return self.length

    def global_index(self, i: int) -> int:
        """Index of local sample ``i`` in the seed's stream (what the sample's RNG is keyed on)."""
        if not 0 <= i < self.length:
            raise IndexError(f"sample {i} out of range for a split of {self.length}")
        return self.offset + int(i)

    def intrinsics(self) -> np.ndarray:
        """Pinhole matrix ``K`` ``[3, 3]`` of this split's images (pixel centres at integers)."""
        return intrinsics(self.size)

    def raw(self, i: int) -> dict[str, np.ndarray]:
        """Sample ``i`` as numpy arrays.

        ``image`` float32 ``[3, S, S]`` raw RGB in [0, 1]; ``segment`` int64 ``[S, S]``; ``depth``
        float32 ``[1, S, S]``; ``normal`` float32 ``[3, S, S]``; ``edge`` float32 ``[1, S, S]``;
        ``object_id`` int64 ``[S, S]`` (−1 = room); ``surface`` int64 ``[S, S]``;
        ``has_sphere`` / ``many_objects`` / ``light_left`` float32 scalars; ``intrinsics``
        ``[3, 3]``; ``light_cam`` ``[3]`` (light in the camera frame); ``object_class``
        ``[n_objects]`` (class index of every object placed, visible or not).
        """
        g = self.global_index(i)
        key = (self.seed, g, self.size)
        hit = _MEMO.get(key)
        if hit is not None:
            return hit
        sample = self._render_or_load(g)
        _MEMO.put(key, sample)
        return sample

    def _render_or_load(self, g: int) -> dict[str, np.ndarray]:
        if self.cache_dir is None:
            return render_sample(self.seed, g, self.size)
        path = self.cache_dir / f"{g:08d}.npz"
        if path.is_file():
            try:
                return _checked(_load(path), self.size)
            except Exception:  # a damaged or foreign file (e.g. disk full) is re-rendered and replaced
                pass
        sample = render_sample(self.seed, g, self.size)
        _save(path, sample)
        return sample

    def __getitem__(self, i: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        s = self.raw(i)
        image = torch.from_numpy(normalize(s["image"]))
        return image, {t: torch.from_numpy(np.array(s[t])) for t in self.tasks}


class _Memo:
    """In-process memory of rendered samples, bounded in bytes (oldest first out).

    Training revisits every sample once per epoch and a comparison trains many models on the
    same splits, so each process renders a sample once.  The bound is :func:`memo_limit`
    (``$METASPARSITY_SYNTH_MEMO_MB``, default 2048; 0 turns the memory off).  Samples are pure
    functions of ``(seed, index, size)``, so what is remembered is exactly what would be rendered.
    """

    def __init__(self) -> None:
        self.items: OrderedDict[tuple, dict[str, np.ndarray]] = OrderedDict()
        self.bytes = 0

    @property
    def limit(self) -> int:
        return memo_limit()

    def get(self, key: tuple) -> dict[str, np.ndarray] | None:
        return self.items.get(key) if self.limit > 0 else None

    def put(self, key: tuple, sample: dict[str, np.ndarray]) -> None:
        limit = self.limit
        size = sum(np.asarray(v).nbytes for v in sample.values())
        if size > limit or key in self.items:
            return
        for v in sample.values():
            if isinstance(v, np.ndarray):
                v.setflags(write=False)  # shared: nobody may change a remembered sample
        self.items[key] = sample
        self.bytes += size
        while self.bytes > limit:
            _, old = self.items.popitem(last=False)
            self.bytes -= sum(np.asarray(v).nbytes for v in old.values())


_MEMO = _Memo()


def _save(path: Path, sample: dict[str, np.ndarray]) -> None:
    """Write atomically: a temporary file in the same folder, then ``os.replace``; parallel
    workers writing the same sample write identical bytes, so the last rename simply wins."""
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {k: v.astype(_CACHE_DTYPES[k]) if k in _CACHE_DTYPES else v
              for k, v in sample.items()}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


_DENSE_KEYS = ("image", "segment", "depth", "normal", "edge", "object_id", "surface")


def _checked(sample: dict[str, np.ndarray], size: int) -> dict[str, np.ndarray]:
    """``sample`` if it has every array a rendered sample has, numeric, each ``size × size`` where
    dense, with a finite image; otherwise ValueError (the cache entry is then rendered again)."""
    for k in (*_DENSE_KEYS, "has_sphere", "many_objects", "light_left", "intrinsics"):
        if k not in sample:
            raise ValueError(f"cached sample lacks {k}")
        v = np.asarray(sample[k])
        if v.dtype.kind not in "biuf" or (k == "image" and not np.isfinite(v).all()):
            raise ValueError(f"cached {k} is not an array of (finite) numbers")
        if k in _DENSE_KEYS and tuple(v.shape[-2:]) != (size, size):
            raise ValueError(f"cached {k} has shape {v.shape}")
    return sample


def _load(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        out = {k: z[k] for k in z.files}
    for k, dt in _LOAD_DTYPES.items():
        out[k] = out[k].astype(dt)
    return out


# ----------------------------------------------------------------------------- registry

def synth_tasks(data_cfg: Any = None) -> dict[str, Task]:
    """``{name: Task}`` for every SynthScenes task (from the ``TASKS`` registry)."""
    return {name: TASKS.get(name) for name in SYNTH_TASKS}


def build_synthscenes(data_cfg: Any, split: str) -> SynthScenes:
    """Builder used by :func:`metasparsity.data.build_dataset` (takes the ``data`` section)."""
    length = getattr(data_cfg, f"{split}_size")
    if length is None:
        raise UserError(f"data.{split}_size: SynthScenes needs a number of samples, not null")
    return SynthScenes(size=data_cfg.image_size, length=length, split=split, seed=data_cfg.seed,
                       tasks=data_cfg.tasks, cache_dir=data_cfg.cache_dir)


DATASETS.register("synthscenes", DatasetSpec(
    build=build_synthscenes, tasks=synth_tasks,
    description="procedural indoor scenes rendered by ray casting (built in, no download)"))
