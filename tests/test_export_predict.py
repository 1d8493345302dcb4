"""Compact models: save / load without the config, ``metasparsity prune`` and ``predict``."""

from __future__ import annotations

import io
import json
import shutil
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from metasparsity.builders import build_model
from metasparsity.cli import main
from metasparsity.config import load_config
from metasparsity.export import load_compact_model, save_compact_model
from metasparsity.sparsity import prune_zero_channels, sparsity_stats
from metasparsity.training.checkpoint import save_checkpoint
from metasparsity.utils.errors import UserError

TASKS = ["segment", "depth", "normal", "edge", "has_sphere"]
OVERRIDES = ["model.depth=18", "model.width=0.125", "model.output_stride=16",
             "model.head_channels=8", "model.aspp_rates=[1,2,3]", "data.image_size=32",
             "train.num_threads=2"]


def sparse_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = build_model(load_config(None, OVERRIDES), TASKS)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, m in model.named_modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.2)
            if isinstance(m, nn.Conv2d) and name.startswith("backbone.layer"):
                m.weight[:, torch.rand(m.in_channels, generator=g) < 0.5] = 0.0
    return model.eval()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("runs") / "tiny"
    d.mkdir()
    (d / "config.yaml").write_text(load_config(None, OVERRIDES).to_yaml())
    model = sparse_model()
    save_checkpoint(d, 7, model.state_dict(), {}, {"tasks": TASKS}, best=True)
    return d


@pytest.fixture(scope="module")
def pruned_dir(run_dir):
    rc = main(["prune", str(run_dir), "--batch-sizes", "1,2", "--repeats", "1", "--warmup", "0",
               "--threads", "1"])
    assert rc == 0
    return run_dir / "pruned"


def images(tmp_path, n=2):
    paths = []
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate([(40, 56), (32, 32), (20, 24)][:n]):
        p = tmp_path / f"img{i}.png"
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(p)
        paths.append(p)
    return paths


def test_compact_model_round_trip(tmp_path):
    dense = sparse_model()
    x = torch.randn(2, 3, 32, 32)
    pruned = prune_zero_channels(dense, x[:1])
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in dense.parameters())
    meta = {"tasks": [{"name": t} for t in TASKS], "image_size": 32}
    save_compact_model(pruned, tmp_path / "m", meta)
    loaded, got = load_compact_model(tmp_path / "m")
    assert got["image_size"] == 32 and [t["name"] for t in got["tasks"]] == TASKS
    assert not loaded.training
    with torch.no_grad():
        a, b = pruned.eval()(x), loaded(x)
    for t in TASKS:
        assert torch.equal(a[t], b[t]), t
    # the rebuilt modules have the pruned (non-standard) widths
    assert loaded.backbone.layer1[0].conv1.out_channels == pruned.backbone.layer1[0].conv1.out_channels
    with pytest.raises(UserError, match="already exists"):
        save_compact_model(pruned, tmp_path / "m", meta)


def test_load_refuses_unknown_classes_and_missing_files(tmp_path):
    save_compact_model(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()), tmp_path / "m", {})
    doc = json.loads((tmp_path / "m" / "model.json").read_text())
    doc["architecture"]["children"]["1"]["class"] = "os.system"
    (tmp_path / "m" / "model.json").write_text(json.dumps(doc))
    with pytest.raises(UserError, match=r"model.json: architecture.children.1.class must be a "
                                        r"supported module class .*got 'os.system'"):
        load_compact_model(tmp_path / "m")
    (tmp_path / "m" / "model.safetensors").unlink()
    with pytest.raises(UserError, match="model.safetensors is missing"):
        load_compact_model(tmp_path / "m")


def test_prune_command_writes_compact_model_and_costs(run_dir, pruned_dir):
    assert sorted(p.name for p in pruned_dir.iterdir()) == [
        ".metasparsity.json", "cost.json", "cost.md", "model.json", "model.safetensors"]
    cost = json.loads((pruned_dir / "cost.json").read_text())
    assert cost["pruned"]["backbone"]["params"] < cost["dense"]["backbone"]["params"]
    assert cost["pruned"]["backbone"]["macs"] < cost["dense"]["backbone"]["macs"]
    assert cost["pruned"]["heads"] == cost["dense"]["heads"]  # heads are never pruned
    assert cost["ratio"]["total"]["macs"] > 1.0
    assert set(cost["latency"]) == {"1", "2"}
    assert all(v["dense_ms"] > 0 and v["pruned_ms"] > 0 for v in cost["latency"].values())
    md = (pruned_dir / "cost.md").read_text()
    assert "latency, batch 2" in md
    stages = {r["name"]: r for r in cost["backbone_stages"]}
    assert {"conv1", "layer1", "layer4"} <= set(stages)
    for v in ("dense", "pruned"):  # the stages add up to the backbone
        for q in ("params", "macs"):
            assert sum(r[v][q] for r in stages.values()) == cost[v]["backbone"][q], (v, q)
    assert stages["layer1"]["pruned"]["macs"] < stages["layer1"]["dense"]["macs"]
    assert "| layer1 |" in md and "Backbone by stage" in md
    assert 0.0 <= cost["max_abs_output_difference"] <= 1e-5
    rows = {r["name"]: r for r in cost["layers"]}
    assert rows["backbone.layer1.0.conv1"]["out_after"] < rows["backbone.layer1.0.conv1"]["out_before"]
    assert not [p for p in run_dir.iterdir() if p.name.startswith(".pruned")]  # no temp left

    model, meta = load_compact_model(pruned_dir)
    assert meta["image_size"] == 32
    assert meta["normalization"]["mean"] == pytest.approx([0.485, 0.456, 0.406])
    assert {t["name"]: t["type"] for t in meta["tasks"]}["normal"] == "normal"
    dense = sparse_model()
    assert meta["sparsity"]["group_sparsity"] == pytest.approx(sparsity_stats(dense).group_sparsity)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        a, b = dense(x), model(x)
    for t in TASKS:
        assert (a[t] - b[t]).abs().max().item() <= 1e-5, t


def test_prune_command_refuses_bad_inputs(run_dir, pruned_dir, tmp_path, capsys):
    assert main(["prune", str(tmp_path / "nope")]) == 2
    empty = tmp_path / "empty_run"
    empty.mkdir()
    (empty / "config.yaml").write_text(load_config(None, OVERRIDES).to_yaml())
    assert main(["prune", str(empty), "--out", str(tmp_path / "o")]) == 2
    assert "no checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    stamp = (pruned_dir / "model.safetensors").stat().st_mtime_ns
    assert main(["prune", str(run_dir)]) == 2  # exists, no --overwrite
    assert "--overwrite" in capsys.readouterr().err
    assert (pruned_dir / "model.safetensors").stat().st_mtime_ns == stamp
    out = tmp_path / "again"
    out.mkdir()
    (out / "old.txt").write_text("previous content")
    assert main(["prune", str(run_dir), "--out", str(out), "--no-latency"]) == 2
    # --overwrite replaces only a compact model folder that prune made (its marker)
    assert main(["prune", str(run_dir), "--out", str(out), "--no-latency", "--overwrite",
                 "--threads", "1"]) == 2
    assert "not a compact model folder made by metasparsity" in capsys.readouterr().err
    assert (out / "old.txt").read_text() == "previous content"
    out = tmp_path / "again2"
    assert main(["prune", str(run_dir), "--out", str(out), "--no-latency", "--threads", "1"]) == 0
    (out / "old.txt").write_text("previous content")
    assert main(["prune", str(run_dir), "--out", str(out), "--no-latency", "--overwrite",
                 "--threads", "1"]) == 0
    assert not (out / "old.txt").exists()
    assert "latency" not in json.loads((out / "cost.json").read_text())


def test_predict_writes_every_task(pruned_dir, tmp_path):
    paths = images(tmp_path, 3)
    out = tmp_path / "pred"
    assert main(["predict", str(pruned_dir), *map(str, paths), "--out", str(out),
                 "--batch-size", "2", "--threads", "1"]) == 0
    names = {p.name for p in out.iterdir()}
    for i in range(3):
        for t in ("segment", "depth", "normal", "edge"):
            assert f"img{i}_{t}.png" in names
        assert f"img{i}_depth.npy" in names
    seg = Image.open(out / "img0_segment.png")
    assert seg.mode == "P" and seg.size == (32, 32)
    assert np.asarray(seg).max() < 6  # class ids of SynthScenes
    depth = Image.open(out / "img0_depth.png")
    assert depth.mode.startswith("I") and depth.size == (32, 32)
    assert np.load(out / "img0_depth.npy").shape == (32, 32)
    assert Image.open(out / "img1_normal.png").mode == "RGB"
    assert Image.open(out / "img2_edge.png").mode == "L"
    pred = json.loads((out / "predictions.json").read_text())
    assert [r["image"] for r in pred["images"]] == [str(p) for p in paths]
    prob = pred["images"][0]["outputs"]["has_sphere"]["probability"]
    assert 0.0 <= prob <= 1.0

    # same result as running the model on the preprocessed image directly
    from metasparsity.recipes.predict import read_image

    model, meta = load_compact_model(pruned_dir)
    x = read_image(paths[0], 32, meta["normalization"]["mean"], meta["normalization"]["std"])
    with torch.no_grad():
        logit = model(x[None])["has_sphere"].reshape(-1)[0]
    assert prob == pytest.approx(torch.sigmoid(logit).item(), abs=1e-6)
    labels = model(x[None])["segment"].argmax(1)[0].numpy()
    assert np.array_equal(np.asarray(seg), labels)


def test_predict_bad_image_writes_nothing(pruned_dir, tmp_path, capsys):
    good = images(tmp_path, 1)[0]
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image at all")
    out = tmp_path / "pred"
    assert main(["predict", str(pruned_dir), str(good), str(bad), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "broken.png" in err
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".pred")]
    assert main(["predict", str(pruned_dir), str(tmp_path / "missing.jpg"), "--out", str(out)]) == 2
    assert "missing.jpg" in capsys.readouterr().err
    assert main(["predict", str(tmp_path / "no_model"), str(good), "--out", str(out)]) == 2
    assert not out.exists()


@pytest.mark.parametrize("value", ["0", "-1", "1025", "2000", "100000", "two"])
def test_prune_and_predict_take_the_same_thread_counts(pruned_dir, run_dir, tmp_path, capsys,
                                                       value):
    """``--threads 100000`` crashed torch (2000 hung); ``predict --threads 0`` was accepted."""
    from tests.recipes.micro import cli

    img = images(tmp_path, 1)[0]
    stamp = (pruned_dir / "model.safetensors").stat().st_mtime_ns
    for args in (["prune", run_dir, "--out", tmp_path / "m", "--no-latency"],
                 ["predict", pruned_dir, img, "--out", tmp_path / "p"]):
        assert cli(*args, "--threads", value) == 2
        err = capsys.readouterr().err
        assert "--threads" in err and value in err and "Traceback" not in err
    assert not (tmp_path / "m").exists() and not (tmp_path / "p").exists()
    assert (pruned_dir / "model.safetensors").stat().st_mtime_ns == stamp


def test_thread_counts_up_to_1024_are_taken_and_the_recipe_checks_them_too(run_dir, tmp_path):
    from metasparsity.cli import build_parser
    from metasparsity.recipes.prune import prune_run

    parser = build_parser()
    for command in (["prune", "RUN"], ["predict", "MODEL", "img.png"]):
        for n in (1, 1024):
            assert parser.parse_args([*command, "--threads", str(n)]).threads == n
    with pytest.raises(UserError, match="--threads must be between 1 and 1024, got 5000"):
        prune_run(run_dir, tmp_path / "m", threads=5000, latency=False)
    with pytest.raises(UserError, match="--batch-sizes: each batch size may appear only once"):
        prune_run(run_dir, tmp_path / "m", batch_sizes=(2, 2))
    with pytest.raises(UserError, match="--batch-sizes must be between 1 and 4096, got 1,100000"):
        prune_run(run_dir, tmp_path / "m", batch_sizes=(1, 100000))
    assert parser.parse_args(["prune", "RUN", "--batch-sizes", "1,4096"]).batch_sizes == [1, 4096]
    for bad in ("1,,16", "1,", "", "a,1"):
        with pytest.raises(SystemExit):
            parser.parse_args(["prune", "RUN", "--batch-sizes", bad])
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("options, message", [
    (["--batch-sizes", "4097"], "--batch-sizes must be between 1 and 4096, got 4097"),
    (["--batch-sizes", "0,1"], "--batch-sizes must be between 1 and 4096, got 0,1"),
    (["--warmup", "-1"], "--warmup must be an integer between 0 and 100000, got -1"),
    (["--warmup", "1000000"], "--warmup must be an integer between 0 and 100000, got 1000000"),
    (["--repeats", "1000000"], "--repeats must be an integer between 1 and 100000, got 1000000"),
])
def test_prune_cli_refuses_latency_options_out_of_range_in_one_line(run_dir, tmp_path, capsys,
                                                                    options, message):
    from tests.recipes.micro import cli

    assert cli("prune", run_dir, "--out", tmp_path / "m", *options) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("sizes", ["1,1", "1,16,1", "4,4"])
def test_prune_refuses_a_batch_size_given_twice(run_dir, tmp_path, capsys, sizes):
    from tests.recipes.micro import cli

    assert cli("prune", run_dir, "--out", tmp_path / "m", "--batch-sizes", sizes) == 2
    err = capsys.readouterr().err
    assert "--batch-sizes" in err and "more than once" in err
    assert not (tmp_path / "m").exists()


def bomb_png(path):
    """A valid 1×1 PNG whose header claims 30000×30000 pixels (Pillow's decompression bomb)."""
    buf = io.BytesIO()
    Image.new("RGB", (1, 1)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    data[16:24] = struct.pack(">II", 30000, 30000)  # IHDR: signature, length, type, width, height
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))  # the CRC of type + data
    path.write_bytes(bytes(data))
    return path


def test_predict_refuses_a_decompression_bomb(pruned_dir, tmp_path, capsys):
    """A header claiming 30000×30000 pixels was Pillow's DecompressionBombError (exit 1)."""
    good, bomb = images(tmp_path, 1)[0], bomb_png(tmp_path / "bomb.png")
    out = tmp_path / "pred"
    assert main(["predict", str(pruned_dir), str(good), str(bomb), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"cannot read image {bomb}" in err and "Traceback" not in err
    assert not out.exists()


def _deep(depth):
    value = 1
    for _ in range(depth):
        value = [value]
    return value


def _set(path, value):
    """A model.json edit: set the field at ``path`` (keys / indices) to ``value``."""
    def edit(doc):
        for key in path[:-1]:
            doc = doc[key]
        doc[path[-1]] = value
    return edit


def _drop(key):
    return lambda doc: doc.pop(key)


CONV1 = ("architecture", "children", "backbone", "children", "conv1")
NORM = ("normalization",)


@pytest.mark.parametrize("edit, field", [
    (_set(("version",), "abc"), "version must be a positive integer, got 'abc'"),
    (_set(("version",), None), "version must be a positive integer, got null"),
    # a newer format is named as such, before any field it may have changed
    (lambda doc: (doc.update(version=2), doc["architecture"].update({"class": "Future"})),
     "has format version 2; this metasparsity reads up to 1"),
    (_drop("architecture"), "architecture is missing"),
    (_set(("architecture",), "resnet"), "architecture must be a module object"),
    (_drop("image_size"), "image_size is missing"),
    (_set(("image_size",), "big"), "image_size must be an integer from 16 to 4096, got 'big'"),
    (_set(("image_size",), 0), "image_size must be an integer from 16 to 4096, got 0"),
    (_set(("image_size",), -5), "image_size must be an integer from 16 to 4096, got -5"),
    (_drop("tasks"), "tasks is missing"),
    (_set(("tasks",), "segment"), "tasks must be a list of task objects"),
    (_set(("tasks", 0), 5), "tasks[0] must be a task object"),
    (_set(("tasks", 1, "name"), "segment"), "tasks[1].name must be unique"),
    (_set(("tasks", 0, "kind"), "pixels"), 'tasks[0].kind must be "dense" or "image"'),
    (_set(NORM, "imagenet"), "normalization must be an object with mean and std"),
    (_set(NORM, None), "normalization must be an object with mean and std, got null"),
    (_set((*NORM, "std"), [0.2, 0, 0.2]), "normalization.std must be positive"),
    (_set((*NORM, "std"), [0.2, 0.2]), "normalization.std must be a list of 3 finite numbers"),
    (_set((*NORM, "mean"), [0.5]), "normalization.mean must be a list of 3 finite numbers"),
    (_set((*CONV1, "args"), [1, 2]), "conv1.args must be an object of Conv2d arguments"),
    (_set((*CONV1, "args", "in_channels"), "x"), "conv1.args.in_channels must be a non-negative"),
    (_set((*CONV1, "args", "padding"), "bogus"), "invalid arguments for Conv2d at backbone.conv1"),
    (_set((*CONV1, "class"), ["Conv2d"]), "conv1.class must be a supported module class"),
    (_set(("architecture", "children"), [1]), "architecture.children must be an object, got [1]"),
    (_set(("architecture", "attrs", "forward"), 1), "architecture.attrs.forward: a MultiTaskNet "
                                                    "cannot take 'forward'"),
    (_set(("architecture", "attrs", "tasks"), 1), "architecture.attrs.tasks: a MultiTaskNet "
                                                  "cannot take 'tasks'"),  # a property
    (_set(("tasks", 0, "scale"), float("nan")), "model.json: NaN is not a JSON value"),
    (_set(("architecture", "attrs", "deep"), _deep(50)), "architecture.attrs.deep must be null, a "
                                                         "boolean, number or string, or a list"),
    (_set(("architecture", "children", "heads", "children", "../x"), None),
     "architecture.children.heads.children must be keyed by a non-empty name without '.', '/'"),
    # builds, but does not run / does not match its tasks
    (lambda doc: doc["architecture"]["children"]["backbone"]["children"]["layer1"]["children"][
        "0"]["attrs"].pop("downsample"), "does not run on 32×32 images"),
    (_set(("tasks", 0, "kind"), "image"), "task 'segment' (image, segmentation, 6 channels) does "
                                          "not match the model's output of shape [1, 6, 32, 32]"),
    # sizes that would allocate terabytes if the modules were built with their tensors
    (_set((*CONV1, "args", "out_channels"), 10**12), "model.safetensors does not fit the "
                                                     "architecture in "),
])
def test_predict_refuses_a_malformed_model_json(pruned_dir, tmp_path, capsys, edit, field):
    """Each of these was a traceback (exit 1), or for std 0 exit 0 with NaN in predictions.json."""
    model = tmp_path / "model"
    shutil.copytree(pruned_dir, model)
    doc = json.loads((model / "model.json").read_text())
    edit(doc)
    (model / "model.json").write_text(json.dumps(doc))
    out = tmp_path / "pred"
    assert main(["predict", str(model), str(images(tmp_path, 1)[0]), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert str(model / "model.json") in err and field in err, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_predict_refuses_model_json_nested_too_deeply(pruned_dir, tmp_path, capsys):
    """Nesting that Python's JSON parser (RecursionError) or the rebuild would choke on."""
    model = tmp_path / "model"
    shutil.copytree(pruned_dir, model)
    (model / "model.json").write_text("[" * 100000 + "]" * 100000)
    img = str(images(tmp_path, 1)[0])
    assert main(["predict", str(model), img, "--out", str(tmp_path / "p")]) == 2
    assert f"cannot read {model / 'model.json'}" in capsys.readouterr().err
    doc = json.loads((pruned_dir / "model.json").read_text())
    spec = {"class": "Identity", "args": {}}
    for _ in range(200):
        spec = {"class": "Sequential", "attrs": {}, "children": {"0": spec}}
    doc["architecture"]["children"]["extra"] = spec
    (model / "model.json").write_text(json.dumps(doc))
    assert main(["predict", str(model), img, "--out", str(tmp_path / "p")]) == 2
    assert "model.json: architecture: modules are nested more than 32 deep" in (
        capsys.readouterr().err)
    assert not (tmp_path / "p").exists()


def test_predict_refuses_weights_or_outputs_that_are_not_finite(pruned_dir, tmp_path, capsys):
    """predictions.json never holds a bare NaN (invalid JSON): such a model is refused instead."""
    from safetensors.torch import load_file, save_file

    model = tmp_path / "model"
    shutil.copytree(pruned_dir, model)
    state = load_file(str(pruned_dir / "model.safetensors"))
    img, out = str(images(tmp_path, 1)[0]), tmp_path / "pred"
    bad = dict(state)
    bad["heads.depth.classifier.bias"] = torch.full_like(state["heads.depth.classifier.bias"],
                                                         float("nan"))
    save_file(bad, str(model / "model.safetensors"))
    assert main(["predict", str(model), img, "--out", str(out)]) == 2
    assert "tensor heads.depth.classifier.bias holds NaN" in capsys.readouterr().err
    # finite weights whose outputs overflow to infinity
    bad = dict(state)
    bad["heads.depth.classifier.weight"] = torch.full_like(
        state["heads.depth.classifier.weight"], 1e38)
    bad["heads.depth.classifier.bias"] = torch.full_like(state["heads.depth.classifier.bias"],
                                                         3e38)
    save_file(bad, str(model / "model.safetensors"))
    assert main(["predict", str(model), img, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"gives NaN or infinite values for task 'depth' on {img}" in err
    assert not out.exists()


def test_predict_checks_every_output_path_before_replacing_any(pruned_dir, tmp_path, capsys):
    """A folder where an output file goes: the error named a temporary path, after some outputs
    (img0_depth.*) had been replaced and others stayed stale."""
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    second.mkdir()
    old = images(first, 2)
    new = [second / p.name for p in old]  # same names (same outputs), other pixels
    for p in new:
        Image.fromarray(255 - np.asarray(Image.open(first / p.name))).save(p)
    out = tmp_path / "pred"
    assert main(["predict", str(pruned_dir), *map(str, old), "--out", str(out)]) == 0
    (out / "img1_edge.png").unlink()
    (out / "img1_edge.png").mkdir()
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    assert main(["predict", str(pruned_dir), *map(str, new), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{out / 'img1_edge.png'} is a directory" in err and ".tmp" not in err
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".pred")]


def test_predict_out_of_memory_advises_a_smaller_batch_not_a_damaged_model(pruned_dir, tmp_path,
                                                                           capsys, monkeypatch):
    from metasparsity.models.multitask import MultiTaskNet

    def starved(self, x, *a, **k):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't "
                           "allocate memory: you tried to allocate 9999999999 bytes")

    monkeypatch.setattr(MultiTaskNet, "forward", starved)
    out = tmp_path / "pred"
    assert main(["predict", str(pruned_dir), str(images(tmp_path, 1)[0]), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "out of memory" in err and "--batch-size" in err and "damaged" not in err, err
    assert not out.exists()
