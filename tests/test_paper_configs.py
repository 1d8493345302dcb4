"""Every shipped config loads; the paper-scale configs keep the paper's set-up and run end to end.

The smoke runs take each paper config as it is and shrink only the compute (image size, width
multiplier, head channels, steps, batch sizes, split sizes) to run ``metasparsity train`` and
``metasparsity meta-train`` on tiny fixtures written in the real on-disk layouts.  Depth 50,
output stride 8, the ASPP rates and the seen/unseen split of tasks stay those of the paper.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from tests.data.fixtures import write_celebamaskhq_raw, write_mtan, write_nyud_mt

from metasparsity.cli import main
from metasparsity.config import load_config
from metasparsity.data import DATASETS
from metasparsity.data.celebamaskhq_prepare import prepare_celebamaskhq
from metasparsity.recipes.compare_methods import METHODS

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
CONFIGS = sorted(CONFIG_DIR.glob("*.yaml"))
PAPER = {
    "nyuv2_paper.yaml": {"image_size": 256, "batch_size": 16, "layout": "nyud_mt"},
    "nyuv2_mtan_paper.yaml": {"image_size": 288, "batch_size": 16, "layout": "mtan"},
    "celebamaskhq_paper.yaml": {"image_size": 256, "batch_size": 32, "layout": "auto"},
}

# What the smoke runs change: compute only.  One thread: on a busy 2-core machine two OpenMP
# threads spin-wait for each other and a tiny ResNet-50 step costs ~100× the CPU time.
SHRINK = [
    "data.image_size=32", "data.num_workers=0",
    "model.width=0.125", "model.head_channels=8",
    "train.max_steps=2", "train.batch_size=2", "train.eval_batch_size=2", "train.val_every=1",
    "train.log_every=1", "train.progress=false", "train.num_threads=1",
    "meta.steps=2", "meta.batch_size=2", "meta.meta_batch=2", "meta.val_every=1",
    "meta.log_every=1",
]
PRIMARY = {"segment": "miou", "depth": "abs_err", "normal": "mean", "edge": "ods_f"}


def test_configs_are_found_and_their_run_names_differ():
    assert {"synthscenes.yaml", "synthscenes_meta.yaml", *PAPER} <= {p.name for p in CONFIGS}
    names = [load_config(p).name for p in CONFIGS]
    assert len(set(names)) == len(names)  # the default run directory is runs/<name>


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_config_loads_and_names_registered_parts(path):
    cfg = load_config(path)
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert cfg.data.name in DATASETS
    for method in cfg.compare.methods:
        METHODS.get(method)  # raises for an unknown method
    if "optuna" in cfg.compare.methods:
        assert cfg.compare.optuna_trials > 0
    assert set(cfg.data.seen_tasks).isdisjoint(cfg.data.unseen_tasks)
    if "meta" in raw:  # a config that meta-trains must give λ a gradient and a start inside its range
        assert cfg.meta.meta_grad != "first_order"
        # auto: measured at the start and clamped into the range (tests/recipes/test_auto_lambda.py)
        assert cfg.meta.lambda_init == "auto" or (
            cfg.meta.lambda_min <= cfg.meta.lambda_init <= cfg.meta.lambda_max)


@pytest.mark.parametrize("name", sorted(PAPER))
def test_paper_configs_keep_the_paper_setup(name):
    cfg = load_config(CONFIG_DIR / name)
    want = PAPER[name]
    m = cfg.model
    assert (m.depth, m.width, m.output_stride) == (50, 1.0, 8)
    assert (m.dense_head, m.head_channels, m.aspp_rates) == ("aspp", 256, [12, 24, 36])
    assert m.pretrained is None  # a path is machine-specific: set it on the command line
    d = cfg.data
    assert d.image_size == want["image_size"] and d.layout == want["layout"]
    assert d.train_size is None and d.test_size is None  # all data
    assert d.unseen_tasks and d.augment
    assert cfg.train.batch_size == want["batch_size"] == cfg.finetune.batch_size
    assert cfg.sparsity.lam == 0.0
    me = cfg.meta
    assert (me.inner_steps, me.meta_grad, me.learn_lambda) == (1, "lambda_path", True)
    assert me.lambda_init > 0
    assert min(cfg.compare.lambda_grid) <= me.lambda_init <= max(cfg.compare.lambda_grid)
    assert cfg.compare.seeds == [0, 1, 2]
    assert {"stl", "mtl", "fixed_lambda", "meta_dense", "meta_sparsity"} <= set(cfg.compare.methods)


# ----------------------------------------------------------------------------- smoke runs


@pytest.fixture(autouse=True)
def _restore_threads():
    """The runs set torch's thread count for the whole process; put it back afterwards."""
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def _run(args: list[str], capsys) -> None:
    code = main(args)
    err = capsys.readouterr().err
    assert code == 0, err


def _check_run_config(run_dir: Path, tasks: list[str]) -> None:
    saved = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))
    assert saved["model"]["depth"] == 50 and saved["model"]["output_stride"] == 8
    assert saved["model"]["aspp_rates"] == [12, 24, 36]
    assert saved["data"]["seen_tasks"] == tasks


def _smoke(config: str, root: Path, extra: list[str], tmp_path: Path, capsys) -> dict:
    cfg = load_config(CONFIG_DIR / config)
    seen = list(cfg.data.seen_tasks)
    common = ["--config", str(CONFIG_DIR / config), f"data.root={root}", *SHRINK, *extra]

    _run(["train", *common, "--out", str(tmp_path / "mtl")], capsys)
    res = json.loads((tmp_path / "mtl" / "results.json").read_text())
    assert res["kind"] == "mtl" and res["tasks"] == seen and res["steps"] == 2
    assert set(res["test"]) == set(seen)
    _check_run_config(tmp_path / "mtl", seen)

    _run(["meta-train", *common, "--out", str(tmp_path / "meta")], capsys)
    meta = json.loads((tmp_path / "meta" / "results.json").read_text())
    assert meta["kind"] == "meta_sparsity" and meta["tasks"] == seen and meta["steps"] == 2
    assert meta["lambda_init"] == cfg.meta.lambda_init
    assert [r["step"] for r in meta["lambda_trajectory"]] == [1, 2]
    lam = meta["lambda_final"]
    assert cfg.meta.lambda_min <= lam <= cfg.meta.lambda_max
    assert set(meta["val"]) == set(seen)
    _check_run_config(tmp_path / "meta", seen)

    # Meta-testing on the unseen tasks: fresh heads on the sparse backbone, zero groups kept.
    unseen = list(cfg.data.unseen_tasks)
    _run(["finetune", str(tmp_path / "meta"), "finetune.steps=2", "finetune.batch_size=2",
          "finetune.val_every=1", "--tasks", ",".join(unseen), "--out", str(tmp_path / "unseen")],
         capsys)
    ft = json.loads((tmp_path / "unseen" / "results.json").read_text())
    assert ft["kind"] == "finetune" and ft["tasks"] == unseen and ft["steps"] == 2
    assert ft["new_heads"] == unseen and ft["unseen"] == unseen
    assert ft["source_kind"] == "meta_sparsity"
    assert ft["sparsity"]["group_sparsity"] >= meta["sparsity"]["group_sparsity"]
    return res


@pytest.mark.slow
def test_nyuv2_paper_config_runs_on_a_nyud_mt_fixture(tmp_path, capsys):
    fx = write_nyud_mt(tmp_path / "NYUD_MT", n_train=6, n_val=4)
    res = _smoke("nyuv2_paper.yaml", fx["root"], ["data.val_size=2"], tmp_path, capsys)
    for task in ("segment", "depth", "edge"):
        assert PRIMARY[task] in res["test"][task]
    assert 0.0 <= res["test"]["segment"]["miou"] <= 100.0
    assert res["test"]["depth"]["abs_err"] > 0.0


@pytest.mark.slow
def test_nyuv2_mtan_paper_config_runs_on_an_mtan_fixture(tmp_path, capsys):
    fx = write_mtan(tmp_path / "nyuv2_mtan", n_train=6, n_val=4)
    res = _smoke("nyuv2_mtan_paper.yaml", fx["root"], ["data.val_size=2"], tmp_path, capsys)
    assert set(res["test"]) == {"segment", "depth"}
    assert res["test"]["depth"]["abs_err"] > 0.0


@pytest.mark.slow
def test_celebamaskhq_paper_config_runs_on_a_prepared_fixture(tmp_path, capsys):
    raw = write_celebamaskhq_raw(tmp_path / "raw")
    prepared = prepare_celebamaskhq(raw["root"], tmp_path / "celebamaskhq3", classes=3, size=32,
                                    split="fixed", progress=False, workers=1)
    res = _smoke("celebamaskhq_paper.yaml", prepared, [], tmp_path, capsys)
    assert "miou" in res["test"]["segment"]
    for attr in ("Male", "Smiling", "High_Cheekbones", "Wearing_Lipstick"):
        assert 0.0 <= res["test"][attr]["accuracy"] <= 100.0
