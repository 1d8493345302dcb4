"""CelebAMask-HQ: preparing the raw release (mask merging, attributes, splits) and serving it."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from metasparsity.commands.data_prepare import register_prepare_parser
from metasparsity.config import load_config
from metasparsity.data import build_dataset, resolve_tasks
from metasparsity.data.celebamaskhq import CLASSES_19, FLIP_19
from metasparsity.data.celebamaskhq_prepare import (
    TO_THREE,
    make_splits,
    prepare_celebamaskhq,
    read_attribute_file,
)
from metasparsity.data.transforms import denormalize_image, hflip
from metasparsity.utils.errors import UserError

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root, for tests.*
from tests.data.fixtures import PALETTE, write_celebamaskhq_raw  # noqa: E402

HAIR, HAT, SKIN, NOSE, NECK, CLOTH = (CLASSES_19.index(c) for c in
                                      ("hair", "hat", "skin", "nose", "neck", "cloth"))


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    return write_celebamaskhq_raw(tmp_path_factory.mktemp("celeba") / "CelebAMask-HQ")


@pytest.fixture(scope="module")
def prepared19(raw, tmp_path_factory):
    out = tmp_path_factory.mktemp("p19") / "celeba19"
    prepare_celebamaskhq(raw["root"], out, classes=19, size=64, progress=False, workers=2)
    return out


@pytest.fixture(scope="module")
def prepared3(raw, tmp_path_factory):
    out = tmp_path_factory.mktemp("p3") / "celeba3"
    prepare_celebamaskhq(raw["root"], out, classes=3, size=32, progress=False, workers=1)
    return out


def _cfg(root, *extra, tasks="[segment,Male,Smiling]"):
    return load_config(None, [
        "data.name=celebamaskhq", f"data.root={root}", f"data.tasks={tasks}",
        "data.seen_tasks=[segment,Male]", "data.unseen_tasks=[Smiling]", "data.image_size=32",
        "data.train_size=null", "data.val_size=null", "data.test_size=null", *extra])


def _label(root, i):
    return np.asarray(Image.open(root / "labels" / f"{i}.png"))


def test_19_class_maps_follow_the_official_priority(raw, prepared19):
    for i in raw["ids"]:
        lab = _label(prepared19, i)
        assert lab.shape == (64, 64) and lab.dtype == np.uint8
        np.testing.assert_array_equal(lab, raw["expected19"][i])
    lab0 = _label(prepared19, "0")
    assert lab0[10, 30] == HAIR   # skin ∩ hair -> hair (later in the order)
    assert lab0[2, 30] == HAT     # hair ∩ hat -> hat
    assert lab0[62, 30] == CLOTH  # neck ∩ cloth -> cloth
    assert lab0[55, 30] == NECK   # skin ∩ neck -> neck; neck_l (under neck) never shows
    assert lab0[35, 32] == NOSE and lab0[30, 20] == SKIN
    assert lab0[30, 1] == 0
    assert _label(prepared19, "1")[2, 30] == HAIR  # image 1 has no hat
    assert CLASSES_19.index("neck_l") not in lab0


def test_3_class_maps_and_resize(raw, prepared3):
    for i in raw["ids"]:
        lab = _label(prepared3, i)
        assert lab.shape == (32, 32)
        # nearest resize of the 64² map: PIL samples the pixel centres (odd rows / columns)
        np.testing.assert_array_equal(lab, TO_THREE[raw["expected19"][i]][1::2, 1::2])
    lab0 = TO_THREE[raw["expected19"]["0"]]
    assert lab0[10, 30] == 1 and lab0[2, 30] == 0  # hair; hat -> background
    assert lab0[35, 32] == 2 and lab0[30, 20] == 2 and lab0[28, 26] == 2  # nose, skin, eye -> face
    assert lab0[62, 30] == 0 and lab0[55, 30] == 0  # cloth, neck -> background
    assert TO_THREE.tolist() == [0] + [2] * 12 + [1] + [0] * 5


def test_images_are_resized_and_aligned_with_labels(raw, prepared19):
    img = np.asarray(Image.open(prepared19 / "images" / "3.jpg"))
    assert img.shape == (64, 64, 3)
    lab = _label(prepared19, "3")
    # each pixel's colour is nearest to its own label's palette colour (JPEG blurs thin parts,
    # so only pixels inside a uniform 3x3 neighbourhood are scored)
    dist = ((img[:, :, None, :].astype(float) - PALETTE[None, None].astype(float)) ** 2).sum(-1)
    pad = np.pad(lab, 1, mode="edge")
    inner = np.all([pad[1 + dy:65 + dy, 1 + dx:65 + dx] == lab
                    for dy in (-1, 0, 1) for dx in (-1, 0, 1)], axis=0)
    assert inner.sum() > 1000
    assert (dist.argmin(-1) == lab)[inner].mean() > 0.95


def test_attributes_splits_and_meta(raw, prepared19):
    meta = json.loads((prepared19 / "meta.json").read_text())
    assert meta["classes"] == 19 and meta["class_names"] == CLASSES_19 and meta["size"] == 64
    assert meta["attributes"] == raw["attributes"] and meta["num_images"] == len(raw["ids"])
    assert meta["split_rule"] == "fixed"  # no mapping file in this fixture
    rows = (prepared19 / "attributes.csv").read_text().splitlines()
    assert rows[0].split(",") == ["image_id", *raw["attributes"]]
    assert len(rows) == 1 + len(raw["ids"])  # the attribute row without an image is dropped
    for row in rows[1:]:
        i, *vals = row.split(",")
        np.testing.assert_array_equal(np.array(vals, int), (raw["attr_values"][i] > 0).astype(int))
    split = {s: (prepared19 / "splits" / f"{s}.txt").read_text().split() for s in ("train", "val", "test")}
    # ids sorted numerically: last 10 % test, the 10 % before val
    assert split == {"train": ["0", "1", "2", "3", "4", "5", "6", "7"], "val": ["2000"],
                     "test": ["2001"]}
    assert not list(prepared19.parent.glob(".*tmp*"))  # no temporary folder left behind


def test_celeba_split_from_mapping_file(tmp_path):
    fx = write_celebamaskhq_raw(tmp_path / "raw", ids=tuple(range(10)), mask_size=16,
                                image_size=16, with_mapping=True)
    out = prepare_celebamaskhq(fx["root"], tmp_path / "out", classes=3, size=16, progress=False)
    assert json.loads((out / "meta.json").read_text())["split_rule"] == "celeba"
    for s in ("train", "val", "test"):
        got = (out / "splits" / f"{s}.txt").read_text().split()
        assert got == [i for i in fx["ids"] if fx["partition"][i] == s]
    assert {"train", "val", "test"} == set(fx["partition"].values())
    parts = make_splits([str(i) for i in range(20)], "fixed", val_fraction=0.2, test_fraction=0.1)
    assert [len(parts[s]) for s in ("train", "val", "test")] == [14, 4, 2]
    assert parts["test"] == ["18", "19"]


def test_existing_output_needs_overwrite(raw, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(UserError, match="not empty"):
        prepare_celebamaskhq(raw["root"], out, classes=3, size=16, progress=False)
    assert (out / "keep.txt").exists()
    # overwrite replaces only a folder that prepare made (its marker), never a folder of the user's
    with pytest.raises(UserError, match="not a prepared data folder made by metasparsity"):
        prepare_celebamaskhq(raw["root"], out, classes=3, size=16, progress=False, overwrite=True)
    assert (out / "keep.txt").read_text() == "x"
    (out / "keep.txt").unlink()
    prepare_celebamaskhq(raw["root"], out, classes=3, size=16, progress=False)
    (out / "keep.txt").write_text("x")
    prepare_celebamaskhq(raw["root"], out, classes=3, size=16, progress=False, overwrite=True)
    assert not (out / "keep.txt").exists() and (out / "meta.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_prepare_errors_name_the_problem(raw, tmp_path):
    with pytest.raises(UserError, match="CelebA-HQ-img"):
        prepare_celebamaskhq(tmp_path, tmp_path / "o", progress=False)
    with pytest.raises(UserError, match="classes"):
        prepare_celebamaskhq(raw["root"], tmp_path / "o", classes=5, progress=False)
    bad = tmp_path / "attr.txt"
    bad.write_text("3\nMale Smiling\n0.jpg 1 -1\n1.jpg -1 1\n")
    with pytest.raises(UserError, match="announces 3"):
        read_attribute_file(bad)
    bad.write_text("1\nMale Smiling\n0.jpg 1 2\n")
    with pytest.raises(UserError, match="line 3") as e:
        read_attribute_file(bad)
    assert str(bad) in str(e.value)
    names, rows = read_attribute_file(raw["root"] / "CelebAMask-HQ-attribute-anno.txt")
    assert names == raw["attributes"] and len(names) == 40
    np.testing.assert_array_equal(rows["2000"], raw["attr_values"]["2000"])


def test_corrupt_raw_image_is_named(tmp_path):
    fx = write_celebamaskhq_raw(tmp_path / "raw", ids=(0, 1, 2), mask_size=16, image_size=16)
    victim = fx["root"] / "CelebA-HQ-img" / "1.jpg"
    victim.write_bytes(b"not an image")
    with pytest.raises(UserError, match="cannot read image") as e:
        prepare_celebamaskhq(fx["root"], tmp_path / "out", size=16, progress=False)
    assert str(victim) in str(e.value)
    assert not (tmp_path / "out").exists()


def test_dataset_serves_segment_and_attributes(raw, prepared19):
    cfg = _cfg(prepared19)
    tasks = resolve_tasks(cfg)
    assert tasks["segment"].num_classes == 19
    assert tasks["Male"].kind == "image" and tasks["Male"].type == "binary"
    ds = build_dataset(cfg, "train")
    assert len(ds) == 8
    male, smiling = raw["attributes"].index("Male"), raw["attributes"].index("Smiling")
    for k, i in enumerate(ds.ids):
        image, t = ds[k]
        assert image.shape == (3, 32, 32) and image.dtype == torch.float32
        assert t["segment"].shape == (32, 32) and t["segment"].dtype == torch.int64
        np.testing.assert_array_equal(t["segment"].numpy(), raw["expected19"][i][1::2, 1::2])
        assert t["Male"].shape == () and t["Male"].dtype == torch.float32
        assert t["Male"].item() == float(raw["attr_values"][i][male] > 0)
        assert t["Smiling"].item() == float(raw["attr_values"][i][smiling] > 0)
    assert build_dataset(cfg, "test").ids == ["2001"]
    assert len(build_dataset(_cfg(prepared19, "data.train_size=3"), "train")) == 3


def test_attribute_selection_and_class_checks(prepared3, prepared19):
    assert resolve_tasks(_cfg(prepared3))["segment"].num_classes == 3
    cfg = _cfg(prepared3, "data.attributes=[Male,Smiling]")
    assert set(resolve_tasks(cfg)) == {"segment", "Male", "Smiling"}
    with pytest.raises(UserError, match="did you mean 'Smiling'"):
        resolve_tasks(_cfg(prepared3, "data.attributes=[Male,Smilng]"))
    with pytest.raises(UserError, match="not served"):
        resolve_tasks(_cfg(prepared3, "data.attributes=[Male,Young]"))
    with pytest.raises(UserError, match="prepared with 19 classes"):
        resolve_tasks(_cfg(prepared19, "data.num_classes=3"))


def test_folder_errors(raw, tmp_path):
    with pytest.raises(UserError, match="does not exist") as e:
        build_dataset(_cfg(tmp_path / "none"), "train")
    assert "labels/<i>.png" in str(e.value) and "meta.json" in str(e.value)
    with pytest.raises(UserError, match="raw release: prepare it first"):
        build_dataset(_cfg(raw["root"]), "train")


def test_label_out_of_range_and_corrupt_image(raw, tmp_path):
    out = prepare_celebamaskhq(raw["root"], tmp_path / "p", classes=3, size=16, progress=False)
    img = out / "images" / "1.jpg"
    img.write_bytes(b"broken")
    ds = build_dataset(_cfg(out, "data.image_size=16"), "train")
    with pytest.raises(UserError, match="cannot read image") as e:
        ds[1]
    assert str(img) in str(e.value)
    lab = out / "labels" / "0.png"
    Image.fromarray(np.full((16, 16), 7, np.uint8)).save(lab)
    with pytest.raises(UserError, match="out of range") as e:  # item 0: read when built
        build_dataset(_cfg(out, "data.image_size=16"), "train")
    assert str(lab) in str(e.value) and "7" in str(e.value)
    (out / "labels" / "2.png").unlink()
    with pytest.raises(UserError, match="missing") as e:
        build_dataset(_cfg(out, "data.image_size=16"), "train")
    assert str(out / "labels" / "2.png") in str(e.value)


def test_flip_swaps_left_and_right_parts(raw, prepared19):
    ds = build_dataset(_cfg(prepared19, "data.augment=true"), "train")
    assert ds.transform.train and ds.transform.flip_luts["segment"] is FLIP_19
    s = ds.load(0)
    out = hflip(s, {"segment": "segmentation"}, {"segment": FLIP_19})
    l_eye, r_eye = CLASSES_19.index("l_eye"), CLASSES_19.index("r_eye")
    assert (s["segment"] == l_eye).sum() == (out["segment"] == r_eye).sum() > 0
    assert torch.equal(out["segment"].flip(-1)[s["segment"] == l_eye],
                       torch.full_like(out["segment"][out["segment"] == r_eye], r_eye))
    torch.manual_seed(0)
    image, t = ds[0]
    assert image.shape == (3, 32, 32) and denormalize_image(image).min() > -0.01


def test_prepare_command_parser(raw, tmp_path):
    parser = argparse.ArgumentParser(prog="metasparsity data")
    register_prepare_parser(parser.add_subparsers(dest="sub"))
    out = tmp_path / "cli"
    args = parser.parse_args(["prepare", "celebamaskhq", "--src", str(raw["root"]), "--out",
                              str(out), "--classes", "19", "--size", "16", "--no-progress"])
    assert args.func(args) == 0
    meta = json.loads((out / "meta.json").read_text())
    assert meta["classes"] == 19 and meta["size"] == 16
    with pytest.raises(SystemExit):
        parser.parse_args(["prepare", "celebamaskhq", "--src", "x", "--out", "y", "--classes", "4"])
