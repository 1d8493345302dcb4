"""A registered data set's first sample is checked against the task table when a split is built
(``metasparsity.data.checks``): each wrong layout below trained silently, failed deep inside
torch at the first step, or only at the first validation or at test time, leaving a run
folder behind; now it is a one-line UserError at set-up, and nothing is written."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from tests.recipes.micro import MICRO, cli

from metasparsity.config import load_config
from metasparsity.data import DATASETS, TASKS, DatasetSpec, build_dataset
from metasparsity.data.checks import check_first_sample
from metasparsity.utils.errors import UserError

S = 32
SERVED = {t: TASKS[t] for t in ("segment", "depth", "has_sphere")}
WHERE = "data set 'x', split 'val'"


def _good() -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    return torch.rand(3, S, S), {"segment": torch.zeros(S, S, dtype=torch.long),
                                 "depth": torch.rand(1, S, S) + 0.1,
                                 "has_sphere": torch.tensor(1.0)}


def _with(image=None, **targets):
    img, ys = _good()
    ys.update(targets)
    return img if image is None else image, {k: v for k, v in ys.items() if v is not None}


C = TASKS["segment"].num_classes
CASES = {
    "empty": ([], ["is empty"]),
    "numpy": ([tuple(np.asarray(t) if i == 0 else t for i, t in enumerate(_good()))],
              ["image is a ndarray", "torch tensor"]),
    "not a pair": ([_good()[0]], ["must be (image, {task: target})"]),
    "uint8 image": ([_with((torch.rand(3, S, S) * 255).to(torch.uint8))], ["torch.uint8"]),
    "0-255 image": ([_with(torch.rand(3, S, S) * 255)], ["values up to", "not 0–255"]),
    "channels last": ([_with(torch.rand(S, S, 3))], ["(32, 32, 3)", "[3, H, W]"]),
    "other size": ([_with(torch.rand(3, 48, 48))], ["48×48", "data.image_size is 32"]),
    "nan image": ([_with(torch.full((3, S, S), float("nan")))], ["NaN"]),
    "missing target": ([_with(depth=None)], ["no target for task 'depth'"]),
    "depth [H, W]": ([_with(depth=torch.rand(S, S))], ["task 'depth'", "[1, H, W]"]),
    "float labels": ([_with(segment=torch.zeros(S, S))], ["task 'segment'", "integer labels"]),
    "labels out of range": ([_with(segment=torch.full((S, S), C, dtype=torch.long))],
                            [f"labels from {C} to {C}", f"0 to {C - 1}"]),
    "numpy target": ([_with(depth=np.ones((1, S, S), np.float32))],
                     ["task 'depth'", "ndarray"]),
    "binary [1]": ([_with(has_sphere=torch.tensor([1.0]))], ["task 'has_sphere'", "[]"]),
}


@pytest.mark.parametrize("case", CASES)
def test_a_wrong_first_sample_is_named(case):
    items, words = CASES[case]
    with pytest.raises(UserError) as e:
        check_first_sample(items, SERVED, WHERE, S)
    msg = str(e.value)
    assert msg.startswith(WHERE) and "\n" not in msg, msg
    for w in words:
        assert w in msg, (w, msg)


def test_a_good_sample_passes_ignore_labels_included_and_no_len_is_named():
    img, ys = _good()
    ys["segment"][0, 0] = 255
    check_first_sample([(img, ys)], SERVED, WHERE, S)
    check_first_sample([(img, ys)], SERVED, WHERE)  # no size asked for
    with pytest.raises(UserError, match="has no len"):
        check_first_sample(iter([(img, ys)]), SERVED, WHERE, S)


class _Random(torch.utils.data.Dataset):
    """Draws from the global generators, as a data set without seeded_item may."""

    def __len__(self):
        return 4

    def __getitem__(self, i):
        torch.rand(1), np.random.rand(), random.random()
        return _good()


def test_reading_the_first_sample_leaves_the_global_generators_as_they_were():
    torch.manual_seed(1), np.random.seed(1), random.seed(1)
    expected = torch.rand(2), np.random.rand(2), random.random()
    torch.manual_seed(1), np.random.seed(1), random.seed(1)
    check_first_sample(_Random(), SERVED, WHERE, S)
    got = torch.rand(2), np.random.rand(2), random.random()
    assert torch.equal(got[0], expected[0]) and np.array_equal(got[1], expected[1])
    assert got[2] == expected[2]


@pytest.fixture
def registered():
    """A data set 'first-sample-test' whose splits serve what ``served[split]`` holds."""
    served = {}
    DATASETS.register("first-sample-test", DatasetSpec(
        build=lambda d, split: served.get(split, [_good()] * 8), tasks=lambda d: SERVED),
        overwrite=True)
    return served


def _cfg_args():
    return [*MICRO, "data.name=first-sample-test", "data.tasks=[segment,depth,has_sphere]",
            "data.seen_tasks=[segment,depth]", "data.unseen_tasks=[has_sphere]"]


def test_build_dataset_checks_every_split(registered):
    cfg = load_config(None, _cfg_args())
    assert len(build_dataset(cfg, "test")) == 8
    registered["test"] = [_with(depth=torch.rand(S, S))]
    with pytest.raises(UserError, match=r"^data set 'first-sample-test', split 'test'"):
        build_dataset(cfg, "test")


@pytest.mark.parametrize("split", ["val", "test"])
def test_train_refuses_a_bad_split_before_writing_anything(registered, tmp_path, capsys, split):
    """A bad test split used to train to the end, then fail with no results.json; an empty
    validation split finished with exit 0, every validation scoring 0."""
    registered[split] = [] if split == "val" else [_with(depth=torch.rand(S, S))]
    out = tmp_path / "run"
    assert cli("train", "--out", out, *_cfg_args()) == 2
    err = capsys.readouterr().err
    assert f"split '{split}'" in err and "Traceback" not in err, err
    assert not out.exists()


# the other extension points: tasks, registries, a data set's task table, SampleTransform

@pytest.mark.parametrize(("kwargs", "words"), [
    ({"name": ""}, "non-empty string"),
    ({"channels": 0}, "whole number >= 1"),
    ({"channels": 1.5}, "whole number >= 1"),
    ({"channels": 4, "num_classes": 3}, "one channel per class"),
    ({"num_classes": None}, "one channel per class"),
])
def test_a_task_that_cannot_be_trained_is_refused_when_made(kwargs, words):
    """channels=0 failed inside conv2d; a segmentation task with 4 channels and 3 classes
    trained, then failed at the first validation."""
    from metasparsity.data import Task

    args = {"name": "parts", "kind": "dense", "type": "segmentation", "channels": 3,
            "num_classes": 3, **kwargs}
    with pytest.raises(ValueError, match=words):
        Task(**args)


def test_register_task_needs_the_type_s_loss_first():
    from metasparsity.data import Task, register_task

    with pytest.raises(ValueError, match=r"no loss for type 'l2'.*register_loss\('l2', fn\)"):
        register_task(Task("height", "dense", "l2", 1))
    assert "height" not in TASKS


def test_a_registry_refuses_a_bare_decorator_and_names_that_are_not_strings():
    """A bare @R.register replaced the class with a closure and registered nothing; an int
    name broke every later 'unknown name' message."""
    from metasparsity.utils.registry import Registry

    r = Registry("head")
    with pytest.raises(TypeError, match=r"@registry.register\('name'\)"):
        @r.register
        class Head:
            pass
    for name in (3, "", None):
        with pytest.raises(TypeError, match="non-empty strings"):
            r.register(name, object())
    assert len(r) == 0


def test_a_numpy_class_count_is_a_whole_number():
    from metasparsity.data import Task

    t = Task("parts", "dense", "segmentation", np.int64(5), np.int64(5))
    assert type(t.channels) is int and type(t.num_classes) is int


def test_image_level_targets_may_be_scalars_and_a_normalised_bright_image_passes():
    img, ys = _good()
    for y in (np.float32(1.0), 1.0, 1):
        check_first_sample([(img, {**ys, "has_sphere": y})], SERVED, WHERE, S)
    bright = torch.full((3, S, S), 2.2)  # 0.99 normalised with ImageNet's mean and std
    check_first_sample([(bright, ys)], SERVED, WHERE, S)
    with pytest.raises(UserError, match="not 0–255"):  # whole numbers >= 0 up to 3
        check_first_sample([(torch.full((3, S, S), 3.0), ys)], SERVED, WHERE, S)


class _LazyHandle(torch.utils.data.Dataset):
    """Opens its 'file' on the first read, as HDF5 / LMDB data sets do in each worker."""

    def __init__(self):
        self.handle = None

    def __len__(self):
        return 2

    def __getitem__(self, i):
        if self.handle is None:
            self.handle = object()
        return _good()


def test_the_check_reads_through_a_copy_so_a_lazy_handle_stays_closed():
    ds = _LazyHandle()
    check_first_sample(ds, SERVED, WHERE, S)
    assert ds.handle is None


def test_a_task_table_keyed_by_another_name_is_named():
    DATASETS.register("first-sample-key", DatasetSpec(
        build=lambda d, split: [_good()], tasks=lambda d: {"seg": TASKS["segment"]}),
        overwrite=True)
    cfg = load_config(None, [*_cfg_args(), "data.name=first-sample-key"])
    with pytest.raises(UserError, match="the key 'seg' holds the Task named 'segment'"):
        build_dataset(cfg, "val")


def test_a_task_table_that_is_not_name_to_task_is_named():
    DATASETS.register("first-sample-test", DatasetSpec(
        build=lambda d, split: [_good()], tasks=lambda d: list(SERVED.values())), overwrite=True)
    with pytest.raises(UserError, match=r"must return \{name: Task\}.*got list"):
        build_dataset(load_config(None, _cfg_args()), "val")


def test_sample_transform_refuses_a_uint8_image_and_a_dense_target_without_a_type():
    """A uint8 image trained on 0–255; a depth map missing from types was neither cropped nor
    flipped with the image (silently misaligned)."""
    from metasparsity.data.transforms import SampleTransform

    t = SampleTransform({"segment": "segmentation"}, S, train=True)
    seg = np.zeros((S, S), np.int64)
    with pytest.raises(UserError, match="image is uint8"):
        t({"image": np.zeros((3, S, S), np.uint8), "segment": seg})
    with pytest.raises(UserError, match=r"image-sized target\(s\) 'depth' have no entry in "):
        t({"image": np.zeros((3, S, S), np.float32), "segment": seg,
           "depth": np.ones((1, S, S), np.float32)})
    image, ys = t({"image": np.zeros((3, S, S), np.float32), "segment": seg,
                   "has_sphere": np.float32(1.0), "landmarks": np.zeros((5, 2), np.float32)},
                  torch.Generator().manual_seed(0))  # not image-sized: passes through
    assert image.shape == (3, S, S) and set(ys) == {"segment", "has_sphere", "landmarks"}
    check_first_sample([(image, ys)], {"segment": TASKS["segment"],
                                       "has_sphere": TASKS["has_sphere"]}, WHERE, S)


def test_a_data_set_declares_its_normalisation_on_its_spec():
    """export.input_normalization read mean/std off the DatasetSpec, which had no such fields:
    a data set could not declare them, and predict normalised with ImageNet's."""
    from types import SimpleNamespace

    from metasparsity.export import input_normalization

    DATASETS.register("first-sample-norm", DatasetSpec(
        build=lambda d, split: [_good()], tasks=lambda d: SERVED, mean=(0.5, 0.5, 0.5),
        std=(0.25, 0.25, 0.25)), overwrite=True)
    cfg = SimpleNamespace(data=SimpleNamespace(name="first-sample-norm"))
    assert input_normalization(cfg) == {"mean": [0.5] * 3, "std": [0.25] * 3}
    spec = DatasetSpec(build=lambda d, s: [], tasks=lambda d: SERVED, mean=np.array([0.5] * 3))
    assert spec.mean == (0.5, 0.5, 0.5)  # stored as floats (a NumPy array broke export's `or`)
    for bad in [(1.0, float("nan"), 1.0), 0.5]:
        with pytest.raises(ValueError, match="std must be 3 finite numbers"):
            DatasetSpec(build=lambda d, s: [], tasks=lambda d: SERVED, std=bad)
    with pytest.raises(ValueError, match="std must be 3 finite numbers"):
        DatasetSpec(build=lambda d, s: [], tasks=lambda d: SERVED, std=(1.0, 0.0, 1.0))
    with pytest.raises(TypeError, match="must be functions"):
        DatasetSpec(build=None, tasks=lambda d: SERVED)


def test_compare_refuses_a_bad_test_split_before_writing_anything(registered, tmp_path, capsys):
    """compare checked the training split only: a bad test split stopped the first STL sub-run,
    after the comparison's folder and config.yaml were written."""
    registered["test"] = [_with(depth=torch.rand(S, S))]
    out = tmp_path / "cmp"
    assert cli("compare", "--out", out, *_cfg_args(), "compare.methods=[mtl]") == 2
    err = capsys.readouterr().err
    assert "split 'test'" in err and "Traceback" not in err, err
    assert not out.exists()


def test_a_registered_data_set_of_the_documented_layout_trains(registered, tmp_path):
    """The positive side of the checks: the README's extension path runs end to end."""
    out = tmp_path / "run"
    assert cli("train", "--out", out, *_cfg_args()) == 0
    assert (out / "results.json").is_file()


def test_a_head_of_one_s_own_that_misses_the_size_is_named_when_the_model_is_built():
    """A dense head that forgot to upsample (or gave other channels) trained into a shape error
    in the loss at the first step, after the run folder was written."""
    from torch import nn

    from metasparsity.builders import build_model
    from metasparsity.models import HEADS

    @HEADS.register("first-sample-no-upsample", overwrite=True)
    class NoUpsample(nn.Module):
        def __init__(self, in_channels, out_channels, channels):
            super().__init__()
            self.conv = nn.Conv2d(in_channels, out_channels, 1)

        def forward(self, features, size):
            return self.conv(features)  # at the features' size, not `size`

    cfg = load_config(None, [*MICRO, "model.dense_head=first-sample-no-upsample"])
    with pytest.raises(UserError, match=r"head of task 'segment' \(NoUpsample\) gives \[1, 6, 4, 4\]"):
        build_model(cfg, ["segment"])
    assert build_model(load_config(None, MICRO), ["segment", "has_sphere"]).training


class _Failing(torch.utils.data.Dataset):
    def __init__(self, error: Exception) -> None:
        self.error = error

    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int):
        raise self.error


def test_an_unreadable_file_of_item_0_names_the_split_and_the_file(registered, tmp_path, capsys):
    registered["val"] = _Failing(FileNotFoundError(2, "No such file or directory",
                                                   "/data/mine/val/0.png"))
    out = tmp_path / "run"
    assert cli("train", "--out", out, *_cfg_args()) == 2
    err = capsys.readouterr().err
    assert ("data set 'first-sample-test', split 'val': item 0 could not be read: No such file "
            "or directory: /data/mine/val/0.png") in err and "Traceback" not in err, err
    assert not out.exists()


def test_a_bug_in_a_data_set_s_own_code_keeps_its_traceback_and_says_where():
    with pytest.raises(KeyError) as e:
        check_first_sample(_Failing(KeyError("depth")), SERVED, WHERE, S)
    assert f"(raised reading item 0 of {WHERE})" in e.value.__notes__


@pytest.mark.parametrize("split, what", [("train", "segmentation loss"),
                                         ("val", "segmentation metric")])
def test_a_bad_label_after_item_0_stops_the_run_with_one_line_naming_the_task(
        registered, tmp_path, capsys, split, what):
    """Only item 0 is checked at set-up; a later label out of range was an IndexError traceback
    from cross_entropy (a device-side assert on a GPU) or the metric's ValueError."""
    registered[split] = [_good()] * 7 + [_with(segment=torch.full((S, S), C + 3))]
    assert cli("train", "--out", tmp_path / "run", *_cfg_args(), "train.max_steps=2",
               "train.val_every=2") == 2
    err = capsys.readouterr().err
    assert f"task 'segment': {what}" in err and f"[0, {C})" in err, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_the_losses_and_metrics_refuse_targets_they_cannot_take_as_target_errors():
    from metasparsity.eval.metrics import build_metrics, update_all
    from metasparsity.utils.errors import TargetError, UserError

    seg = TASKS["segment"]
    logits = torch.randn(2, C, 4, 4)
    labels = torch.zeros(2, 4, 4, dtype=torch.long)
    labels[0, 0, 0] = 255  # the ignore label
    assert torch.isfinite(seg.loss(logits, labels))
    for bad in (C, -1):
        labels[1, 2, 2] = bad
        with pytest.raises(TargetError, match=rf"^task 'segment': segmentation loss: labels must "
                                              rf"lie in \[0, {C}\) .* got {bad}"):
            seg.loss(logits, labels)
        with pytest.raises(TargetError, match=r"^task 'segment': segmentation metric"):
            update_all(build_metrics({"segment": seg}), {"segment": logits}, {"segment": labels})
    assert issubclass(TargetError, ValueError) and issubclass(TargetError, UserError)
    with pytest.raises(TargetError, match=r"^task 'has_sphere': binary loss: target values"):
        TASKS["has_sphere"].loss(torch.zeros(2, 1), torch.tensor([0.0, 2.0]))
