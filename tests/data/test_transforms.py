"""Augmentations keep every target aligned with the image and transformed consistently."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from metasparsity.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    SampleTransform,
    center_crop_resize,
    crop_resize,
    denormalize_image,
    hflip,
    normalize_image,
    random_scale_crop,
    resize,
)

TYPES = {"segment": "segmentation", "depth": "depth", "normal": "normal", "edge": "edge"}


def _unit(v):
    v = torch.as_tensor(v, dtype=torch.float32)
    return v / v.norm()


# label -> depth / normal / edge / image value: every target is a function of the label, so any
# misalignment between them shows up as a broken relation.
NORMAL_OF = torch.stack([_unit([k - 3.5, 1.0 + k % 3, 2.0]) for k in range(8)], 1)  # [3, 8]


def _labelled_sample(h: int = 48, w: int = 64, block: int = 8, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    small = torch.randint(0, 8, (h // block, w // block), generator=g)
    seg = small.repeat_interleave(block, 0).repeat_interleave(block, 1)
    depth = (seg.float() + 1.0)[None]
    depth[0, seg == 0] = 0.0  # class 0 has invalid depth
    normal = NORMAL_OF[:, seg]
    normal[:, seg == 7] = 0.0  # class 7 has invalid normals
    edge = (seg % 2).float()[None]
    image = torch.stack([seg.float() / 10.0, torch.zeros_like(seg, dtype=torch.float32),
                         torch.full(seg.shape, 0.5)])
    return {"image": image, "segment": seg, "depth": depth, "normal": normal, "edge": edge,
            "Smiling": torch.tensor(1.0)}


def _interior(seg: torch.Tensor, r: int = 2) -> torch.Tensor:
    """Pixels whose (2r+1)² neighbourhood has one label (bilinear cannot blend there)."""
    s = seg.float()[None, None]
    mx = torch.nn.functional.max_pool2d(s, 2 * r + 1, 1, r)
    mn = -torch.nn.functional.max_pool2d(-s, 2 * r + 1, 1, r)
    inner = (mx == mn)[0, 0]
    inner[:r], inner[-r:], inner[:, :r], inner[:, -r:] = False, False, False, False
    return inner


def _check_consistent(out: dict, zoom: float | None = None, flipped: bool | None = None) -> tuple:
    seg = out["segment"]
    assert seg.dtype == torch.int64
    # depth: f(label) / zoom on every valid pixel, invalid exactly where label 0
    valid = out["depth"][0] > 0
    assert torch.equal(valid, seg != 0)
    ratio = (seg[valid].float() + 1.0) / out["depth"][0][valid]
    assert torch.allclose(ratio, ratio[0].expand_as(ratio), rtol=1e-5)
    if zoom is not None:
        assert ratio[0].item() == pytest.approx(zoom, rel=1e-5)
    # normals: g(label), x negated iff flipped; all-zero exactly where label 7
    nvalid = out["normal"].abs().sum(0) > 0
    assert torch.equal(nvalid, seg != 7)
    expect = NORMAL_OF[:, seg][:, nvalid]
    got = out["normal"][:, nvalid]
    was_flipped = bool(torch.allclose(got[0], -expect[0], atol=1e-6)) and not bool(
        torch.allclose(got[0], expect[0], atol=1e-6))
    if flipped is not None:
        assert was_flipped == flipped
    sign = torch.tensor([-1.0 if was_flipped else 1.0, 1.0, 1.0])[:, None]
    assert torch.allclose(got, expect * sign, atol=1e-6)
    # edge and image follow the label
    assert torch.equal(out["edge"][0], (seg % 2).float())
    inner = _interior(seg)
    assert inner.sum() > 20
    assert torch.allclose(out["image"][0][inner] * 10.0, seg[inner].float(), atol=1e-4)
    return ratio[0].item(), was_flipped


def test_hflip_flips_everything_and_negates_normal_x():
    s = _labelled_sample()
    out = hflip(s, TYPES)
    assert torch.equal(out["segment"], s["segment"].flip(-1))
    assert torch.equal(out["image"], s["image"].flip(-1))
    assert torch.equal(out["depth"], s["depth"].flip(-1))
    assert torch.equal(out["edge"], s["edge"].flip(-1))
    assert torch.equal(out["normal"][0], -s["normal"][0].flip(-1))
    assert torch.equal(out["normal"][1:], s["normal"][1:].flip(-1))
    assert out["Smiling"] is s["Smiling"]  # image-level targets untouched
    _check_consistent(out, zoom=1.0, flipped=True)
    back = hflip(out, TYPES)
    for k in TYPES:
        assert torch.equal(back[k], s[k])


def test_hflip_lookup_swaps_left_right_classes():
    seg = torch.tensor([[1, 2, 3, 255]])
    lut = list(range(256))
    lut[1], lut[2] = 2, 1
    out = hflip({"image": torch.zeros(3, 1, 4), "segment": seg}, {"segment": "segmentation"},
                {"segment": lut})
    assert out["segment"].tolist() == [[255, 3, 1, 2]]


def test_crop_resize_divides_depth_by_zoom_and_keeps_alignment():
    s = _labelled_sample()
    out = crop_resize(s, TYPES, top=8, left=16, side=32, size=32)
    _check_consistent(out, zoom=48 / 32, flipped=False)
    assert torch.equal(out["segment"], s["segment"][8:40, 16:48])
    # zoomed in and resampled to another size
    out = crop_resize(s, TYPES, top=4, left=10, side=40, size=24)
    _check_consistent(out, zoom=48 / 40, flipped=False)


@pytest.mark.parametrize("seed", range(6))
def test_random_scale_crop_consistent(seed):
    s = _labelled_sample(seed=seed)
    g = torch.Generator().manual_seed(seed)
    out = random_scale_crop(s, TYPES, 32, (1.0, 1.5), generator=g)
    assert out["image"].shape == (3, 32, 32) and out["segment"].shape == (32, 32)
    assert out["depth"].shape == (1, 32, 32) and out["normal"].shape == (3, 32, 32)
    zoom, _ = _check_consistent(out, flipped=False)
    assert 1.0 - 1e-6 <= zoom <= 1.5 + 0.05  # the window side is rounded to whole pixels


def test_scale_crop_is_deterministic_given_generator():
    s = _labelled_sample()
    a = random_scale_crop(s, TYPES, 32, generator=torch.Generator().manual_seed(3))
    b = random_scale_crop(s, TYPES, 32, generator=torch.Generator().manual_seed(3))
    for k in ("image", *TYPES):
        assert torch.equal(a[k], b[k])
    outs = [random_scale_crop(s, TYPES, 32, generator=torch.Generator().manual_seed(i))["segment"]
            for i in range(5)]
    assert any(not torch.equal(outs[0], o) for o in outs[1:])


def test_train_transform_flips_and_crops_consistently():
    t = SampleTransform(TYPES, 32, train=True, scale_range=(1.0, 1.5))
    flips = set()
    for seed in range(12):
        s = _labelled_sample(seed=seed)
        image, targets = t(s, generator=torch.Generator().manual_seed(seed))
        targets["image"] = denormalize_image(image)
        _, flipped = _check_consistent(targets)
        flips.add(flipped)
        assert targets["Smiling"].dtype == torch.float32 and targets["Smiling"].shape == ()
    assert flips == {True, False}  # both branches were exercised


def test_center_crop_resize_is_shorter_side_centre_square():
    s = _labelled_sample(48, 64)
    out = center_crop_resize(s, TYPES, 48)
    assert torch.equal(out["segment"], s["segment"][:, 8:56])
    assert torch.equal(out["depth"], s["depth"][..., 8:56])  # no zoom, depth unchanged
    out = center_crop_resize(s, TYPES, 36)
    _check_consistent(out, zoom=1.0, flipped=False)


def test_resize_never_blends_invalid_and_renormalises_normals():
    g = torch.Generator().manual_seed(0)
    depth = torch.rand(1, 10, 14, generator=g) + 1.0
    depth[0, ::3, ::2] = 0.0
    normal = torch.randn(3, 10, 14, generator=g) * 3.0  # not unit
    normal[:, 1::4] = 0.0
    s = {"image": torch.rand(3, 10, 14, generator=g), "depth": depth, "normal": normal}
    for size in ((7, 9), (23, 31)):
        out = resize(s, {"depth": "depth", "normal": "normal"}, size)
        vals = set(depth.flatten().tolist())
        assert set(out["depth"].flatten().tolist()) <= vals  # only original values, zeros kept
        n = out["normal"].norm(dim=0)
        valid = n > 0
        assert torch.allclose(n[valid], torch.ones_like(n[valid]), atol=1e-5)
        assert (~valid).any()
        assert out["image"].min() >= 0 and out["image"].max() <= 1


def test_numpy_inputs_are_accepted():
    s = {k: (v.numpy() if isinstance(v, torch.Tensor) and v.ndim else v)
         for k, v in _labelled_sample().items()}
    image, targets = SampleTransform(TYPES, 16)(s)
    assert isinstance(image, torch.Tensor) and image.shape == (3, 16, 16)
    assert targets["segment"].dtype == torch.int64 and targets["depth"].dtype == torch.float32


def test_normalize_uses_imagenet_statistics():
    img = torch.rand(3, 4, 5)
    out = normalize_image(img)
    expect = (img - torch.tensor(IMAGENET_MEAN)[:, None, None]) / torch.tensor(IMAGENET_STD)[:, None, None]
    assert torch.allclose(out, expect)
    assert torch.allclose(denormalize_image(out), img, atol=1e-6)


def test_bad_arguments():
    s = _labelled_sample()
    with pytest.raises(ValueError, match="scale_range"):
        random_scale_crop(s, TYPES, 16, (0.5, 1.0))
    with pytest.raises(ValueError, match="outside"):
        crop_resize(s, TYPES, 40, 0, 16, 16)
    with pytest.raises(ValueError, match="unsupported"):
        resize(s, {"segment": "bogus"}, (8, 8))
    assert np.isclose(IMAGENET_MEAN[0], 0.485)
