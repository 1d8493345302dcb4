"""NYU-v2 in both layouts, read from tiny fixtures written exactly like the real files."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from metasparsity.config import load_config
from metasparsity.data import build_dataset, resolve_tasks
from metasparsity.data.loading import cap_ids, carve_validation, fixed_order
from metasparsity.data.nyuv2 import NYUv2, detect_layout, split_ids
from metasparsity.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from metasparsity.utils.errors import UserError

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root, for tests.*
from tests.data.fixtures import write_mtan, write_nyud_mt  # noqa: E402


def _cfg(root, *extra, tasks="[segment,depth,normal,edge]", unseen="[normal]"):
    return load_config(None, [
        "data.name=nyuv2", f"data.root={root}", f"data.tasks={tasks}",
        "data.seen_tasks=[segment,depth]", f"data.unseen_tasks={unseen}", "data.image_size=24",
        "data.train_size=null", "data.val_size=2", "data.test_size=null", *extra])


@pytest.fixture(scope="module")
def nyud(tmp_path_factory):
    return write_nyud_mt(tmp_path_factory.mktemp("nyud") / "NYUD_MT")


@pytest.fixture(scope="module")
def mtan(tmp_path_factory):
    return write_mtan(tmp_path_factory.mktemp("mtan") / "nyuv2")


def _unnormalise(image):
    return image * torch.tensor(IMAGENET_STD)[:, None, None] + torch.tensor(IMAGENET_MEAN)[:, None, None]


def test_nyud_mt_serves_the_file_values(nyud):
    cfg = _cfg(nyud["root"])
    ds = build_dataset(cfg, "test")
    assert ds.layout == "nyud_mt"
    assert ds.ids == nyud["val_ids"]  # the official test list
    c0, c1 = 4, 28  # 24x32 -> centre 24x24 square, no resampling at image_size=24
    for k, id_ in enumerate(ds.ids):
        image, t = ds[k]
        assert image.shape == (3, 24, 24) and image.dtype == torch.float32
        rgb = torch.from_numpy(nyud["image"][id_][:, c0:c1]).permute(2, 0, 1).float() / 255
        assert torch.allclose(_unnormalise(image), rgb, atol=1e-5)
        raw = nyud["segmentation"][id_][:, c0:c1].astype(np.int64)
        seg = t["segment"]
        assert seg.dtype == torch.int64 and seg.shape == (24, 24)
        assert torch.equal(seg == 255, torch.from_numpy(raw == 0))  # void -> ignore
        assert torch.equal(seg[raw > 0], torch.from_numpy(raw[raw > 0] - 1))  # k -> k - 1
        assert int(seg[seg != 255].max()) <= 39
        d = nyud["depth"][id_][:, c0:c1]
        assert t["depth"].shape == (1, 24, 24) and t["depth"].dtype == torch.float32
        ok = np.isfinite(d) & (d > 0)
        assert torch.equal(t["depth"][0] == 0, torch.from_numpy(~ok))  # zeros and NaN invalid
        assert torch.allclose(t["depth"][0][torch.from_numpy(ok)], torch.from_numpy(d[ok]))
        n = nyud["normals"][id_][:, c0:c1]
        nz = np.linalg.norm(n, axis=-1) > 0
        assert t["normal"].shape == (3, 24, 24)
        got = t["normal"].permute(1, 2, 0).numpy()
        assert np.all(got[~nz] == 0)
        np.testing.assert_allclose(got[nz], n[nz] / np.linalg.norm(n[nz], axis=-1, keepdims=True),
                                   atol=1e-6)
        e = nyud["edge"][id_][:, c0:c1]
        assert torch.equal(t["edge"][0], torch.from_numpy((e > 0).astype(np.float32)))
    # void and invalid pixels are really present in the fixture
    assert any((nyud["segmentation"][i] == 0).any() for i in ds.ids)


def test_nyud_mt_tasks_have_40_classes(nyud):
    tasks = resolve_tasks(_cfg(nyud["root"]))
    assert tasks["segment"].num_classes == 40 and tasks["segment"].channels == 40
    assert tasks["edge"].type == "edge" and tasks["normal"].channels == 3


def test_mtan_serves_the_file_values(mtan):
    cfg = _cfg(mtan["root"], tasks="[segment,depth,normal]")
    assert resolve_tasks(cfg)["segment"].num_classes == 13
    ds = build_dataset(cfg, "test")
    assert ds.layout == "mtan" and len(ds) == len(mtan["val"])
    c0, c1 = 4, 28
    for k, id_ in enumerate(ds.ids):
        raw = mtan["val"][int(id_)]
        image, t = ds[k]
        img = torch.from_numpy(raw["image"][:, c0:c1]).permute(2, 0, 1)
        assert torch.allclose(_unnormalise(image), img, atol=1e-5)
        lab = raw["label"][:, c0:c1]
        assert torch.equal(t["segment"] == 255, torch.from_numpy(lab == -1))
        assert torch.equal(t["segment"][torch.from_numpy(lab >= 0)],
                           torch.from_numpy(lab[lab >= 0].astype(np.int64)))
        d = raw["depth"][:, c0:c1, 0]
        assert torch.equal(t["depth"][0], torch.from_numpy(d))
        assert (t["depth"] == 0).any() or not (d == 0).any()
        n = raw["normal"][:, c0:c1]
        nz = np.linalg.norm(n, axis=-1) > 0
        got = t["normal"].permute(1, 2, 0).numpy()
        assert np.all(got[~nz] == 0)
        np.testing.assert_allclose(np.linalg.norm(got[nz], axis=-1), 1.0, atol=1e-5)


def test_layout_auto_detection_and_explicit_choice(nyud, mtan, tmp_path):
    assert detect_layout(nyud["root"]) == "nyud_mt"
    assert detect_layout(mtan["root"]) == "mtan"
    assert detect_layout(mtan["root"], "mtan") == "mtan"
    with pytest.raises(UserError, match="does not match") as e:
        detect_layout(nyud["root"], "mtan")
    assert "train/image" in str(e.value)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError) as e:
        build_dataset(_cfg(empty), "train")
    msg = str(e.value)
    for part in ("images/<id>.jpg", "gt_sets/train.txt", "segmentation/<id>.png",
                 "train/image/<i>.npy", "val/"):
        assert part in msg


def test_missing_root_lists_expected_layout(tmp_path):
    with pytest.raises(UserError, match="does not exist") as e:
        build_dataset(_cfg(tmp_path / "nope"), "train")
    assert "normals/<id>.npy" in str(e.value) and "MTAN" in str(e.value)
    cfg = _cfg(tmp_path)
    cfg.data.root = None
    with pytest.raises(UserError, match="data.root is not set"):
        build_dataset(cfg, "train")


def test_splits_val_carved_from_train_and_test_is_official(nyud):
    cfg = _cfg(nyud["root"])
    train, val, test = (build_dataset(cfg, s).ids for s in ("train", "val", "test"))
    assert len(val) == 2 and len(train) == len(nyud["train_ids"]) - 2
    assert set(train).isdisjoint(val)
    assert set(train) | set(val) == set(nyud["train_ids"])
    assert test == nyud["val_ids"]
    # independent of data.seed; train_size caps to a subset
    assert build_dataset(_cfg(nyud["root"], "data.seed=7"), "val").ids == val
    capped = build_dataset(_cfg(nyud["root"], "data.train_size=2"), "train").ids
    assert len(capped) == 2 and set(capped) <= set(train)
    assert len(build_dataset(_cfg(nyud["root"], "data.test_size=3"), "test").ids) == 3


def test_split_rule_functions():
    ids = [str(i) for i in range(100)]
    tr, va = carve_validation(ids, 10)
    assert len(va) == 10 and len(tr) == 90 and not set(tr) & set(va)
    assert carve_validation(list(reversed(ids)), 10) == (tr, va)  # order-independent
    assert carve_validation(ids, None)[1] == va  # default 10 %
    assert va == sorted(va, key=int)
    assert va != ids[:10] and va != ids[-10:]  # spread, not a contiguous block
    assert fixed_order(ids) == fixed_order(list(reversed(ids)))
    assert set(cap_ids(ids, 5)) <= set(cap_ids(ids, 20))
    assert cap_ids(ids, None) == ids and cap_ids(ids, 1000) == ids
    with pytest.raises(UserError, match="val_size"):
        carve_validation(ids[:3], 3)
    train, test = ["a", "b", "c", "d"], ["x", "y"]
    assert split_ids(train, test, "test") == ["x", "y"]
    assert sorted(split_ids(train, test, "train", 1) + split_ids(train, test, "val", 1)) == train


def test_a_cap_takes_the_first_ids_of_the_fixed_order_whatever_the_list_order():
    """``cap_ids(ids, n)`` = the first ``n`` of :func:`fixed_order`, sorted: a spread-out subset,
    not the first ``n`` of the list (sorted or not)."""
    ids = [str(i) for i in range(100)]
    for n in (3, 10, 40):
        capped = cap_ids(ids, n)
        assert capped == sorted(fixed_order(ids)[:n], key=int)
        assert capped != ids[:n]
        assert cap_ids(list(reversed(ids)), n) == capped


def test_augmented_training_items(nyud):
    cfg = _cfg(nyud["root"], "data.augment=true", "data.image_size=16")
    ds = build_dataset(cfg, "train")
    assert ds.transform.train
    assert not build_dataset(cfg, "val").transform.train
    torch.manual_seed(5)
    a = [ds[i] for i in range(len(ds))]
    torch.manual_seed(5)
    b = [ds[i] for i in range(len(ds))]
    for (ia, ta), (ib, tb) in zip(a, b):
        assert ia.shape == (3, 16, 16) and torch.equal(ia, ib)
        assert all(torch.equal(ta[k], tb[k]) for k in ta)
        assert set(ta["segment"].unique().tolist()) <= set(range(40)) | {255}
        n = ta["normal"].norm(dim=0)
        assert torch.allclose(n[n > 0], torch.ones_like(n[n > 0]), atol=1e-5)


def test_missing_file_is_named(tmp_path):
    fx = write_nyud_mt(tmp_path / "d", 3, 2)
    victim = tmp_path / "d" / "depth" / f"{fx['val_ids'][0]}.npy"
    victim.unlink()
    with pytest.raises(UserError) as e:
        build_dataset(_cfg(fx["root"]), "test")
    assert str(victim) in str(e.value)
    # segment alone does not need the depth files
    assert len(NYUv2(fx["root"], "test", ["segment", "normal"])) == 2


def test_label_out_of_range_names_file_and_value(tmp_path):
    fx = write_nyud_mt(tmp_path / "d", 3, 2)
    path = tmp_path / "d" / "segmentation" / f"{fx['val_ids'][1]}.png"
    seg = fx["segmentation"][fx["val_ids"][1]].copy()
    seg[5, 5] = 41
    Image.fromarray(seg).save(path)
    ds = build_dataset(_cfg(fx["root"]), "test")
    ds[0]
    with pytest.raises(UserError, match="out of range") as e:
        ds[1]
    assert str(path) in str(e.value) and "41" in str(e.value)

    mt = write_mtan(tmp_path / "m", 3, 2)
    lab = mt["val"][0]["label"].copy()
    lab[0, 0] = 13
    lpath = tmp_path / "m" / "val" / "label" / "0.npy"
    np.save(lpath, lab)
    with pytest.raises(UserError, match="out of range") as e:  # item 0: read when built
        build_dataset(_cfg(mt["root"], tasks="[segment,depth,normal]"), "test")
    assert str(lpath) in str(e.value) and "13" in str(e.value)


def test_corrupt_image_and_array_are_named(tmp_path):
    fx = write_nyud_mt(tmp_path / "d", 3, 2)
    arr = tmp_path / "d" / "normals" / f"{fx['val_ids'][1]}.npy"
    arr.write_bytes(b"garbage")
    ds = build_dataset(_cfg(fx["root"]), "test")
    with pytest.raises(UserError, match="cannot read") as e:
        ds[1]
    assert str(arr) in str(e.value)
    img = tmp_path / "d" / "images" / f"{fx['val_ids'][0]}.jpg"
    img.write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    with pytest.raises(UserError, match="cannot read image") as e:  # item 0: read when built
        build_dataset(_cfg(fx["root"]), "test")
    assert str(img) in str(e.value)


def test_edge_on_mtan_is_a_clear_error(mtan):
    with pytest.raises(UserError, match="MTAN") as e:
        build_dataset(_cfg(mtan["root"]), "train")
    assert "edge" in str(e.value)
    with pytest.raises(UserError, match="does not serve"):
        NYUv2(mtan["root"], "train", ["segment", "edge"])


def test_num_classes_mismatch(nyud):
    with pytest.raises(UserError, match="40 classes"):
        resolve_tasks(_cfg(nyud["root"], "data.num_classes=13"))
