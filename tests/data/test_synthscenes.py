"""SynthScenes: geometry, ground truth, attributes, determinism, splits and cache."""

from __future__ import annotations

import hashlib
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from metasparsity.config import load_config
from metasparsity.data import DATASETS, TASKS, build_dataset, resolve_tasks
from metasparsity.data.render import (
    CEILING,
    EDGE_DEPTH_JUMP,
    EDGE_NORMAL_ANGLE,
    FLOOR,
    ROOM_SURFACES,
    edge_map,
    intrinsics,
    render_sample,
    sample_scene,
)
from metasparsity.data.synthscenes import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    SPLIT_OFFSET,
    SYNTH_TASKS,
    SynthScenes,
)
from metasparsity.data.tasks import SYNTH_CLASSES
from metasparsity.utils.errors import UserError

SPHERE = SYNTH_CLASSES.index("sphere")
SIZE = 40


@pytest.fixture(scope="module")
def samples() -> list[dict[str, np.ndarray]]:
    return [render_sample(7, i, SIZE) for i in range(12)]


def backproject(depth: np.ndarray, K: np.ndarray) -> np.ndarray:
    """Camera-frame points ``[H, W, 3]`` from z-depth ``[H, W]`` and intrinsics ``K``."""
    h, w = depth.shape
    v, u = np.mgrid[0:h, 0:w].astype(np.float64)
    x = (u - K[0, 2]) / K[0, 0] * depth
    y = (v - K[1, 2]) / K[1, 1] * depth
    return np.stack([x, y, depth.astype(np.float64)], -1)


def angle_deg(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    cos = (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))
    return np.degrees(np.arccos(np.clip(cos, -1, 1)))


def digest(sample: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for k in sorted(sample):
        a = np.asarray(sample[k])
        h.update(k.encode() + str(a.dtype).encode() + str(a.shape).encode() + a.tobytes())
    return h.hexdigest()


# ----------------------------------------------------------------------------- arrays

def test_shapes_types_and_ranges(samples):
    for s in samples:
        assert s["image"].shape == (3, SIZE, SIZE) and s["image"].dtype == np.float32
        assert 0 <= s["image"].min() and s["image"].max() <= 1
        assert s["segment"].shape == (SIZE, SIZE) and s["segment"].dtype == np.int64
        assert set(np.unique(s["segment"])) <= set(range(len(SYNTH_CLASSES)))
        assert s["depth"].shape == (1, SIZE, SIZE) and s["depth"].dtype == np.float32
        assert s["depth"].min() > 0 and np.isfinite(s["depth"]).all()
        assert s["normal"].shape == (3, SIZE, SIZE) and s["normal"].dtype == np.float32
        assert s["edge"].shape == (1, SIZE, SIZE) and set(np.unique(s["edge"])) <= {0.0, 1.0}
        for a in ("has_sphere", "many_objects", "light_left"):
            assert s[a].shape == () and s[a].dtype == np.float32 and float(s[a]) in (0.0, 1.0)
    # the scenes vary: several classes and all room classes appear over the batch
    seen = set(np.unique(np.concatenate([s["segment"].ravel() for s in samples])))
    assert {0, 1, 2} <= seen and len(seen & {3, 4, 5}) >= 2


def test_normals_are_unit_and_face_the_camera(samples):
    K = intrinsics(SIZE)
    for s in samples:
        n = s["normal"].transpose(1, 2, 0)
        np.testing.assert_allclose(np.linalg.norm(n, axis=-1), 1.0, atol=1e-5)
        rays = backproject(np.ones((SIZE, SIZE)), K)
        assert ((n * rays).sum(-1) < 1e-6).all()


def test_geometry_backprojects_onto_the_scene_surfaces():
    """Depth + intrinsics + camera pose put every room pixel on its plane and every sphere pixel
    on its sphere (an independent check of the camera model and of the depth map)."""
    checked = 0
    for i in range(6):
        s = render_sample(3, i, SIZE)
        scene = sample_scene(np.random.default_rng([3, i]))
        X = backproject(s["depth"][0], s["intrinsics"]).reshape(-1, 3)
        world = X @ scene.cam_rot.T.astype(np.float64) + scene.cam_pos
        surf = s["surface"].ravel()
        planes = {FLOOR: (1, 0.0), CEILING: (1, scene.room_height), 2: (2, scene.room_depth),
                  3: (0, -scene.left), 4: (0, scene.right)}
        for sid, (axis, value) in planes.items():
            pts = world[surf == sid]
            np.testing.assert_allclose(pts[:, axis], value, atol=1e-3)
            checked += len(pts)
        for k, obj in enumerate(scene.objects):
            pts = world[surf == ROOM_SURFACES + k]
            if obj.kind == "sphere" and len(pts):
                r = np.linalg.norm(pts - obj.center, axis=1)
                np.testing.assert_allclose(r, obj.size[0], atol=1e-3)
                checked += len(pts)
    assert checked > 6 * SIZE * SIZE * 0.7


def test_normals_agree_with_depth_on_planar_regions(samples):
    """Normals from the cross product of finite differences of the back-projected depth map
    match the rendered normals inside flat regions (one surface, no edge, in a 3×3 window)."""
    K = intrinsics(SIZE)
    errors = []
    for s in samples:
        X = backproject(s["depth"][0], K)
        du = X[1:-1, 2:] - X[1:-1, :-2]
        dv = X[2:, 1:-1] - X[:-2, 1:-1]
        n_est = np.cross(du, dv)
        n_gt = s["normal"].transpose(1, 2, 0)[1:-1, 1:-1].astype(np.float64)
        # orient the estimate towards the camera (independently of the rendered normal)
        n_est *= np.where((n_est * X[1:-1, 1:-1]).sum(-1, keepdims=True) > 0, -1, 1)
        surf, edge = s["surface"], s["edge"][0]
        flat = np.ones((SIZE - 2, SIZE - 2), bool)
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                win = (slice(1 + dy, SIZE - 1 + dy), slice(1 + dx, SIZE - 1 + dx))
                flat &= (surf[win] == surf[1:-1, 1:-1]) & (edge[win] == 0)
        # room planes and box faces are planar
        planar = surf[1:-1, 1:-1] < ROOM_SURFACES
        errors.append(angle_deg(n_est, n_gt)[flat & planar])
    errors = np.concatenate(errors)
    assert errors.size > 5000
    assert errors.max() < 1.0, errors.max()


# ----------------------------------------------------------------------------- edges

def reference_edges(seg, surf, depth, normal):
    """Per-pixel loop implementation of the edge definition in ``docs/synthscenes.md``."""
    h, w = seg.shape
    out = np.zeros((h, w), np.float32)
    cos_t = math.cos(math.radians(EDGE_NORMAL_ANGLE))
    for y in range(h):
        for x in range(w):
            for qy, qx in ((y + 1, x), (y, x + 1)):
                if qy >= h or qx >= w:
                    continue
                zp, zq = depth[y, x], depth[qy, qx]
                cut = (seg[y, x] != seg[qy, qx]
                       or (surf[y, x] != surf[qy, qx]
                           and abs(zp - zq) > EDGE_DEPTH_JUMP * min(zp, zq))
                       or float(normal[:, y, x] @ normal[:, qy, qx]) < cos_t)
                if cut:
                    if zp <= zq:
                        out[y, x] = 1
                    else:
                        out[qy, qx] = 1
    return out


def test_edges_match_a_per_pixel_reference():
    for i in range(3):
        s = render_sample(11, i, 24)
        ref = reference_edges(s["segment"], s["surface"], s["depth"][0], s["normal"])
        np.testing.assert_array_equal(s["edge"][0], ref)


def test_edges_lie_on_discontinuities_and_cover_class_boundaries(samples):
    cos_t = math.cos(math.radians(EDGE_NORMAL_ANGLE))
    for s in samples:
        seg, surf, z, n, e = s["segment"], s["surface"], s["depth"][0], s["normal"], s["edge"][0]
        assert e.sum() > 0
        # every edge pixel has a 4-neighbour across a class, occlusion or crease discontinuity
        for y, x in zip(*np.nonzero(e)):
            found = False
            for qy, qx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                if not (0 <= qy < SIZE and 0 <= qx < SIZE):
                    continue
                jump = abs(z[y, x] - z[qy, qx]) > EDGE_DEPTH_JUMP * min(z[y, x], z[qy, qx])
                found |= bool(seg[y, x] != seg[qy, qx] or (surf[y, x] != surf[qy, qx] and jump)
                              or n[:, y, x] @ n[:, qy, qx] < cos_t)
            assert found, (y, x)
        # pixels whose 3×3 window is one surface with smooth normals carry no edge
        inner = np.ones((SIZE - 2, SIZE - 2), bool)
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                win = (slice(1 + dy, SIZE - 1 + dy), slice(1 + dx, SIZE - 1 + dx))
                cos = (n[(slice(None), *win)] * n[:, 1:-1, 1:-1]).sum(0)
                inner &= (surf[win] == surf[1:-1, 1:-1]) & (cos > 0.9)
        assert inner.sum() > SIZE * SIZE / 2
        assert e[1:-1, 1:-1][inner].sum() == 0
        # every class boundary is marked, on the pixel nearer to the camera
        for axis in (0, 1):
            p = (slice(None, -1), slice(None)) if axis == 0 else (slice(None), slice(None, -1))
            q = (slice(1, None), slice(None)) if axis == 0 else (slice(None), slice(1, None))
            diff = seg[p] != seg[q]
            nearer = np.where(z[p] <= z[q], e[p], e[q])
            assert (nearer[diff] == 1).all()


def test_edge_map_on_a_synthetic_step():
    """A depth step between two surfaces is marked on the near side only; a single surface with
    a steep but smooth depth ramp is not an edge."""
    seg = np.zeros((6, 6), np.int64)
    surf = np.zeros((6, 6), np.int64)
    surf[:, 3:] = 1
    depth = np.full((6, 6), 5.0, np.float32)
    depth[:, 3:] = 2.0
    normal = np.zeros((3, 6, 6), np.float32)
    normal[2] = -1
    e = edge_map(seg, surf, depth, normal)
    assert e[:, 3].all() and e.sum() == 6
    ramp = np.linspace(1, 9, 6, dtype=np.float32)[None].repeat(6, 0)
    assert edge_map(seg, np.zeros_like(surf), ramp, normal).sum() == 0


# ----------------------------------------------------------------------------- attributes

def test_attributes_agree_with_what_is_visible():
    values = {"has_sphere": set(), "many_objects": set(), "light_left": set()}
    for i in range(30):
        s = render_sample(5, i, 32)
        seg, oid = s["segment"], s["object_id"]
        visible = np.unique(oid[oid >= 0])
        assert float(s["has_sphere"]) == float((seg == SPHERE).any())
        assert float(s["many_objects"]) == float(len(visible) >= 3)
        # the object-id map is consistent with the segmentation
        obj_pix = oid >= 0
        np.testing.assert_array_equal(seg[obj_pix], s["object_class"][oid[obj_pix]])
        assert set(np.unique(seg[~obj_pix])) <= {0, 1, 2}
        # the light position in the camera frame, recomputed from the scene
        scene = sample_scene(np.random.default_rng([5, i]))
        light_cam = scene.cam_rot.T.astype(np.float64) @ (scene.light_pos - scene.cam_pos)
        np.testing.assert_allclose(s["light_cam"], light_cam, atol=1e-5)
        assert float(s["light_left"]) == float(light_cam[0] < 0)
        assert abs(light_cam[0]) >= 0.4 - 1e-5
        for k in values:
            values[k].add(float(s[k]))
    assert all(v == {0.0, 1.0} for v in values.values()), values


# ----------------------------------------------------------------------------- determinism

_CHILD = """
import hashlib, sys
import numpy as np
from metasparsity.data.synthscenes import SynthScenes
ds = SynthScenes(size=32, length=10, split="val", seed=4)
for i in (6, 2):
    s = ds.raw(i)
    h = hashlib.sha256()
    for k in sorted(s):
        a = np.asarray(s[k])
        h.update(k.encode() + str(a.dtype).encode() + str(a.shape).encode() + a.tobytes())
    print(h.hexdigest())
"""


def test_same_sample_in_a_fresh_process_a_worker_and_any_order():
    ds = SynthScenes(size=32, length=10, split="val", seed=4)
    expected = {i: digest(ds.raw(i)) for i in (2, 6)}
    out = subprocess.run([sys.executable, "-c", _CHILD], capture_output=True, text=True,
                         check=True, timeout=120)
    assert out.stdout.split() == [expected[6], expected[2]]
    # out of order and in any position: the digest of sample i is its own
    assert digest(ds.raw(6)) == expected[6]
    # DataLoader workers, reversed order
    direct = {i: ds[i] for i in range(10)}
    order = list(reversed(range(10)))
    loader = DataLoader(torch.utils.data.Subset(ds, order), batch_size=3, num_workers=2)
    got = []
    for images, targets in loader:
        for b in range(images.shape[0]):
            got.append((images[b], {k: v[b] for k, v in targets.items()}))
    for i, (image, targets) in zip(order, got):
        assert torch.equal(image, direct[i][0])
        for k in SYNTH_TASKS:
            assert torch.equal(targets[k], direct[i][1][k]), k


def test_sample_does_not_depend_on_split_length_or_other_samples():
    a = SynthScenes(size=24, length=5, split="train", seed=1)
    b = SynthScenes(size=24, length=500, split="train", seed=1)
    assert digest(a.raw(3)) == digest(b.raw(3))
    c = SynthScenes(size=24, length=5, split="train", seed=2)
    assert not np.array_equal(a.raw(3)["image"], c.raw(3)["image"])


# ----------------------------------------------------------------------------- splits and cache

def test_splits_are_disjoint_and_sized_by_the_config():
    cfg = load_config(None, ["data.image_size=24", "data.train_size=30", "data.val_size=7",
                             "data.test_size=9"])
    splits = {s: build_dataset(cfg, s) for s in ("train", "val", "test")}
    assert {s: len(d) for s, d in splits.items()} == {"train": 30, "val": 7, "test": 9}
    ranges = {s: {d.global_index(i) for i in range(len(d))} for s, d in splits.items()}
    assert not ranges["train"] & ranges["val"]
    assert not ranges["train"] & ranges["test"]
    assert not ranges["val"] & ranges["test"]
    assert min(ranges["val"]) == SPLIT_OFFSET["val"] and min(ranges["test"]) == SPLIT_OFFSET["test"]
    images = [splits[s].raw(0)["image"] for s in ("train", "val", "test")]
    assert not np.array_equal(images[0], images[1]) and not np.array_equal(images[1], images[2])
    with pytest.raises(IndexError):
        splits["val"].raw(7)
    with pytest.raises(UserError):
        SynthScenes(size=24, length=10_000_001)


def test_cache_returns_identical_arrays(tmp_path, monkeypatch):
    monkeypatch.setenv("METASPARSITY_SYNTH_MEMO_MB", "0")  # exercise the disk, not the memory
    cached = SynthScenes(size=24, length=4, split="test", seed=9, cache_dir=tmp_path)
    fresh = SynthScenes(size=24, length=4, split="test", seed=9)
    first = cached.raw(1)
    files = list(tmp_path.rglob("*.npz"))
    assert len(files) == 1 and "seed9" in str(files[0]) and "24px" in str(files[0])
    assert not list(tmp_path.rglob("*.tmp"))
    second = cached.raw(1)  # from disk
    ref = fresh.raw(1)
    for s in (first, second):
        assert set(s) == set(ref)
        for k in ref:
            assert s[k].dtype == ref[k].dtype and s[k].shape == ref[k].shape, k
            np.testing.assert_array_equal(s[k], ref[k])
    x1, t1 = cached[1]
    x2, t2 = fresh[1]
    assert torch.equal(x1, x2) and all(torch.equal(t1[k], t2[k]) for k in t2)
    # a damaged file is re-rendered and replaced
    files[0].write_bytes(b"not an npz")
    np.testing.assert_array_equal(cached.raw(1)["depth"], ref["depth"])
    np.testing.assert_array_equal(np.load(files[0])["depth"], ref["depth"])


# ----------------------------------------------------------------------------- registry / items

def test_registered_and_built_from_the_config():
    spec = DATASETS.get("synthscenes")
    cfg = load_config(None, ["data.image_size=24", "data.tasks=[segment,depth,has_sphere]",
                             "data.seen_tasks=[segment,depth]", "data.unseen_tasks=[has_sphere]"])
    assert list(spec.tasks(cfg.data)) == list(SYNTH_TASKS)
    assert all(spec.tasks(cfg.data)[t] is TASKS.get(t) for t in SYNTH_TASKS)
    assert list(resolve_tasks(cfg)) == ["segment", "depth", "has_sphere"]
    ds = build_dataset(cfg.data, "train")
    image, targets = ds[0]
    assert set(targets) == {"segment", "depth", "has_sphere"}
    raw = ds.raw(0)
    mean = np.asarray(IMAGENET_MEAN, np.float32)[:, None, None]
    std = np.asarray(IMAGENET_STD, np.float32)[:, None, None]
    np.testing.assert_allclose(image.numpy(), (raw["image"] - mean) / std, rtol=1e-6, atol=1e-6)
    assert targets["segment"].dtype == torch.int64 and targets["segment"].shape == (24, 24)
    assert targets["depth"].shape == (1, 24, 24)
    assert targets["has_sphere"].shape == () and targets["has_sphere"].dtype == torch.float32
    batch = next(iter(DataLoader(ds, batch_size=4)))
    assert batch[0].shape == (4, 3, 24, 24) and batch[1]["has_sphere"].shape == (4,)


def test_in_process_memory_serves_the_same_sample_once_rendered(monkeypatch):
    from metasparsity.data import synthscenes

    calls = []
    real = synthscenes.render_sample
    monkeypatch.setattr(synthscenes, "render_sample",
                        lambda *a, **k: calls.append(a) or real(*a, **k))
    monkeypatch.setattr(synthscenes, "_MEMO", synthscenes._Memo())
    ds = SynthScenes(size=16, length=3, split="val", seed=123)
    a, b = ds.raw(2), ds.raw(2)
    assert len(calls) == 1 and a is b
    assert not a["depth"].flags.writeable  # shared arrays cannot be changed by a consumer
    x, t = ds[2]
    t["depth"] += 1.0  # tensors handed out are copies
    np.testing.assert_array_equal(ds.raw(2)["depth"], real(123, ds.global_index(2), 16)["depth"])
    monkeypatch.setenv("METASPARSITY_SYNTH_MEMO_MB", "0")
    ds.raw(2)
    assert len(calls) == 2
