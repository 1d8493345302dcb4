"""Geometric transforms that keep an image and all of its dense targets aligned (evaluation view,
random scale-crop, flip, normalisation), composed per sample by :class:`SampleTransform`; and
:class:`TransformedFiles`, the base of the real data sets, whose items are samples so transformed.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from metasparsity.utils.errors import UserError

IMAGE_KEY = "image"
DENSE_TYPES = ("segmentation", "depth", "normal", "edge")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_SCALE_RANGE = (1.0, 1.5)

Sample = dict[str, Any]


def _as_tensor(x: Any) -> Any:
    if isinstance(x, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(x))
    return x


def _check_types(types: Mapping[str, str]) -> None:
    bad = {k: t for k, t in types.items() if t not in DENSE_TYPES}
    if bad:
        raise ValueError(f"unsupported dense target types {bad}; supported: {', '.join(DENSE_TYPES)}")


def _size_hw(sample: Sample) -> tuple[int, int]:
    h, w = sample[IMAGE_KEY].shape[-2:]
    return int(h), int(w)


def normalize_normals(n: torch.Tensor) -> torch.Tensor:
    """Scale every non-zero vector of ``[3, H, W]`` to unit length; all-zero stays zero."""
    # Not n.norm(dim=0): a norm over the leading dim of a [3, H, W] map is ~40× slower on the
    # CPU (33 ms against 0.7 ms at 480×640), and it ran twice per NYU-v2 sample.
    norm = n.square().sum(dim=0, keepdim=True).sqrt()
    return torch.where(norm > 0, n / norm.clamp_min(1e-12), torch.zeros_like(n))


def resize_target(t: torch.Tensor, kind: str, size: tuple[int, int]) -> torch.Tensor:
    """Resize one target (or the image, ``kind="image"``) to ``size = (H, W)``.

    Shapes: image ``[3, H, W]``, segmentation ``[H, W]`` (int64), depth/edge ``[1, H, W]``,
    normal ``[3, H, W]``.
    """
    t = _as_tensor(t)
    if tuple(t.shape[-2:]) == tuple(size):
        return t
    if kind == IMAGE_KEY:
        shrink = size[0] < t.shape[-2] or size[1] < t.shape[-1]
        return F.interpolate(t[None].float(), size=size, mode="bilinear", align_corners=False,
                             antialias=shrink)[0]
    if kind == "segmentation":
        out = F.interpolate(t[None, None].float(), size=size, mode="nearest-exact")[0, 0]
        return out.round().to(t.dtype)
    out = F.interpolate(t[None].float(), size=size, mode="nearest-exact")[0]
    if kind == "normal":
        out = normalize_normals(out)
    return out


def resize(sample: Sample, types: Mapping[str, str], size: tuple[int, int]) -> Sample:
    """Resize the image and every dense target to ``size = (H, W)``."""
    _check_types(types)
    out = dict(sample)
    out[IMAGE_KEY] = resize_target(sample[IMAGE_KEY], IMAGE_KEY, size)
    for k, kind in types.items():
        out[k] = resize_target(sample[k], kind, size)
    return out


def crop(sample: Sample, types: Mapping[str, str], top: int, left: int, height: int,
         width: int) -> Sample:
    """Crop rows ``top:top+height`` and columns ``left:left+width`` of the image and dense targets."""
    _check_types(types)
    h, w = _size_hw(sample)
    if not (0 <= top and 0 <= left and height > 0 and width > 0 and top + height <= h
            and left + width <= w):
        raise ValueError(f"crop ({top}, {left}, {height}, {width}) outside a {h}x{w} image")
    out = dict(sample)
    for k in (IMAGE_KEY, *types):
        out[k] = _as_tensor(sample[k])[..., top:top + height, left:left + width]
    return out


def hflip(sample: Sample, types: Mapping[str, str],
          flip_luts: Mapping[str, Sequence[int] | torch.Tensor] | None = None) -> Sample:
    """Mirror left-right: every dense target flips; normals' x component (channel 0) is negated.

    ``flip_luts[key]`` (optional, segmentation keys) maps each class to its mirror class
    (e.g. left eye -> right eye); the ignore label must map to itself.
    """
    _check_types(types)
    out = dict(sample)
    out[IMAGE_KEY] = _as_tensor(sample[IMAGE_KEY]).flip(-1)
    for k, kind in types.items():
        t = _as_tensor(sample[k]).flip(-1)
        if kind == "normal":
            t = t.clone()
            t[0] = -t[0]
        elif kind == "segmentation" and flip_luts and k in flip_luts:
            lut = torch.as_tensor(flip_luts[k], dtype=t.dtype)
            t = lut[t]
        out[k] = t
    return out


def scale_depth(sample: Sample, types: Mapping[str, str], zoom: float) -> Sample:
    """Divide every depth target by ``zoom`` (zero, i.e. invalid, stays zero)."""
    out = dict(sample)
    for k, kind in types.items():
        if kind == "depth":
            out[k] = _as_tensor(sample[k]) / zoom
    return out


def crop_resize(sample: Sample, types: Mapping[str, str], top: int, left: int, side: int,
                size: int) -> Sample:
    """Crop the square ``side × side`` window at ``(top, left)``, resize it to ``size × size``,
    and divide depth by the zoom ``min(H, W) / side`` relative to the full-frame view."""
    h, w = _size_hw(sample)
    out = crop(sample, types, top, left, side, side)
    out = resize(out, types, (size, size))
    zoom = min(h, w) / side
    return scale_depth(out, types, zoom) if zoom != 1.0 else out


def center_crop_resize(sample: Sample, types: Mapping[str, str], size: int) -> Sample:
    """Evaluation view: the centred square of side ``min(H, W)`` resized to ``size × size``."""
    h, w = _size_hw(sample)
    side = min(h, w)
    return crop_resize(sample, types, (h - side) // 2, (w - side) // 2, side, size)


def random_scale_crop(sample: Sample, types: Mapping[str, str], size: int,
                      scale_range: tuple[float, float] = DEFAULT_SCALE_RANGE,
                      generator: torch.Generator | None = None) -> Sample:
    """Zoom in by ``s ~ U[scale_range]`` at a random position, output ``size × size``.

    The window has side ``round(min(H, W) / s)``; depth is divided by the effective zoom
    ``min(H, W) / side`` (see :class:`SampleTransform`).
    """
    lo, hi = scale_range
    if not 1.0 <= lo <= hi:
        raise ValueError(f"scale_range must satisfy 1 <= low <= high, got {scale_range}")
    h, w = _size_hw(sample)
    s = lo + (hi - lo) * float(torch.rand((), generator=generator))
    side = max(1, min(min(h, w), round(min(h, w) / s)))
    top = int(torch.randint(0, h - side + 1, (), generator=generator))
    left = int(torch.randint(0, w - side + 1, (), generator=generator))
    return crop_resize(sample, types, top, left, side, size)


def random_hflip(sample: Sample, types: Mapping[str, str], p: float = 0.5,
                 generator: torch.Generator | None = None,
                 flip_luts: Mapping[str, Sequence[int] | torch.Tensor] | None = None) -> Sample:
    """:func:`hflip` with probability ``p``."""
    if float(torch.rand((), generator=generator)) < p:
        return hflip(sample, types, flip_luts)
    return dict(sample)


def normalize_image(image: torch.Tensor, mean: Sequence[float] = IMAGENET_MEAN,
                    std: Sequence[float] = IMAGENET_STD) -> torch.Tensor:
    """``(image − mean) / std`` per channel; ``image`` float ``[3, H, W]`` in ``[0, 1]``."""
    m = torch.as_tensor(mean, dtype=image.dtype).view(-1, 1, 1)
    s = torch.as_tensor(std, dtype=image.dtype).view(-1, 1, 1)
    return (image - m) / s


def denormalize_image(image: torch.Tensor, mean: Sequence[float] = IMAGENET_MEAN,
                      std: Sequence[float] = IMAGENET_STD) -> torch.Tensor:
    """Inverse of :func:`normalize_image` (for plots)."""
    m = torch.as_tensor(mean, dtype=image.dtype, device=image.device).view(-1, 1, 1)
    s = torch.as_tensor(std, dtype=image.dtype, device=image.device).view(-1, 1, 1)
    return image * s + m


@dataclass(frozen=True)
class SampleTransform:
    """The full per-sample pipeline of the real data sets.

    A *sample* is a dict: ``"image"`` float32 ``[3, H, W]`` with values in ``[0, 1]`` (not yet
    normalised) plus one entry per target.  ``types`` maps each **dense** target's key to its task
    type (``segmentation``, ``depth``, ``normal``, ``edge``); keys in neither are image-level targets
    and pass through untouched.  NumPy arrays are accepted and come back as tensors.

    How each target is resampled (so that nothing invalid is blended into something valid):

    =============  ==========================================================================
    image          bilinear (``align_corners=False``, antialiased when shrinking)
    segmentation   nearest (pixel centres, ``nearest-exact``); 255 stays 255
    depth          nearest; invalid zeros stay zero and are never averaged with valid depth
    normal         nearest, then every non-zero vector renormalised to unit length
    edge           nearest
    =============  ==========================================================================

    Every target goes through the same crop window and the same output grid as the image, so a pixel
    of any target lands exactly where the image pixel it annotates lands.

    Augmentation (training only):

    * **horizontal flip** flips every dense target and negates the x component of normals
      (channel 0, which points along the image columns);  segmentation classes that name a side
      (left eye / right eye) are swapped through a per-target lookup table (``flip_luts``).
    * **random scale-crop**: zoom in by ``s ~ U[s_min, s_max]`` (default ``[1, 1.5]``): a square window
      of side ``round(min(H, W) / s)`` at a uniformly random position is resized to the output size.
      Depth is divided by the effective zoom ``min(H, W) / window``: magnifying the image by ``s`` is
      what moving the camera ``s`` times closer would do to a fronto-parallel scene, the convention of
      MTAN and the NYUD loaders.  Normals are unchanged.

    Evaluation: the largest centred square (the shorter side) is resized to the output size, which is
    "resize the shorter side, then centre-crop"; square inputs are simply resized.

    Normalisation uses the ImageNet mean and standard deviation, the statistics every torchvision
    ImageNet checkpoint (loadable into our ResNets) was trained with.

    Randomness comes from the ``generator`` argument (a :class:`torch.Generator`; training's
    ``BatchStream`` passes one seeded by the run's seed, the epoch and the sample's index), or from
    torch's global generator when it is None; the same generator state gives the same output.

    Training (``train=True``): random scale-crop (``scale_range``) to ``size × size``, then a
    horizontal flip with probability ``flip_p``.  Evaluation: :func:`center_crop_resize`.  Then
    the image is normalised (``mean``/``std``) and the sample split into ``(image, targets)``.

    Args:
        types: dense target key -> task type.
        size: output side in pixels.
        train: augment (random) or the deterministic evaluation view.
        scale_range: ``(s_min, s_max)`` of the zoom, ``1 <= s_min <= s_max``.
        flip_p: probability of a horizontal flip (0 disables it).
        flip_luts: per segmentation key, the class -> mirrored class table used by flips.
    """

    types: Mapping[str, str]
    size: int
    train: bool = False
    scale_range: tuple[float, float] = DEFAULT_SCALE_RANGE
    flip_p: float = 0.5
    flip_luts: Mapping[str, Sequence[int]] = field(default_factory=dict)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __call__(self, sample: Sample, generator: torch.Generator | None = None
                 ) -> tuple[torch.Tensor, dict[str, Any]]:
        image = sample[IMAGE_KEY]
        if not (np.issubdtype(image.dtype, np.floating) if isinstance(image, np.ndarray)
                else torch.is_tensor(image) and image.is_floating_point()):  # uint8: 0–255
            raise UserError(f"SampleTransform: the image is {getattr(image, 'dtype', image)}; "
                            "load() must give a float image [3, H, W] in [0, 1] (e.g. divide a "
                            "uint8 image by 255)")
        hw = tuple(image.shape[-2:])
        untyped = [k for k, v in sample.items() if k != IMAGE_KEY and k not in self.types
                   and getattr(v, "ndim", 0) >= 2 and tuple(v.shape[-2:]) == hw]
        if untyped:  # image-sized: would pass through, not cropped or flipped with the image
            raise UserError(f"SampleTransform: the image-sized target(s) "
                            f"{', '.join(map(repr, untyped))} have no entry in types ({', '.join(map(repr, self.types))}); add "
                            "them, so that they follow the image's crop, resize and flip")
        if self.train:
            sample = random_scale_crop(sample, self.types, self.size, self.scale_range, generator)
            if self.flip_p > 0:
                sample = random_hflip(sample, self.types, self.flip_p, generator, self.flip_luts)
        else:
            sample = center_crop_resize(sample, self.types, self.size)
        image = normalize_image(_as_tensor(sample[IMAGE_KEY]).float(), self.mean, self.std)
        targets = {k: _as_tensor(v) for k, v in sample.items() if k != IMAGE_KEY}
        for k, kind in self.types.items():
            t = targets[k]
            targets[k] = t.long() if kind == "segmentation" else t.float().contiguous()
        return image.contiguous(), targets


class TransformedFiles(Dataset, abc.ABC):
    """Base of the real data sets: a subclass reads sample ``index`` with ``load(index)`` and
    holds its :class:`SampleTransform` as ``transform``; items are the transformed samples."""

    transform: SampleTransform

    @abc.abstractmethod
    def load(self, index: int) -> dict[str, Any]:
        """Sample ``index`` as read from its files, before the transform."""

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self.seeded_item(index)

    def seeded_item(self, index: int, generator: torch.Generator | None = None
                    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Sample ``index`` transformed; training augmentation draws from ``generator`` (None:
        torch's global generator).  ``BatchStream`` passes one seeded per sample and epoch."""
        if index < 0:
            index += len(self)
        return self.transform(self.load(index), generator)
