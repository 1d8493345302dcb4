"""Every training command end to end on micro SynthScenes configs, checking what they write."""

from __future__ import annotations

import pytest
import torch
import yaml
from tests.recipes.micro import MICRO, cli

from metasparsity.config import load_config
from metasparsity.recipes.finetune import finetune_settings
from metasparsity.recipes.train import Trainer, TrainSettings
from metasparsity.training.run_checkpoints import load_run_checkpoint
from metasparsity.utils.io import read_json, read_jsonl

SEEN = ["segment", "depth", "edge", "has_sphere", "many_objects"]
UNSEEN = ["normal", "light_left"]


def _train_losses(run_dir) -> list[dict[str, float]]:
    return [r["losses"] for r in read_jsonl(run_dir / "metrics.jsonl") if r["kind"] == "train"]


def _zero_groups(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``{conv weight: bool [I]}``: which input-channel groups of each backbone conv are zero."""
    return {k: v.flatten(2).abs().sum(dim=(0, 2)) == 0 for k, v in state.items()
            if k.startswith("backbone.") and v.dim() == 4}


@pytest.fixture(scope="module")
def train_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("train") / "mtl"
    torch.set_num_threads(1)
    assert cli("train", "--out", run, *MICRO) == 0
    return run


def test_train_writes_results_checkpoints_and_logs(train_run):
    res = read_json(train_run / "results.json")
    assert res["kind"] == "mtl" and res["tasks"] == SEEN and res["steps"] == 4
    assert res["best_step"] in (2, 4) and res["lam"] == 0.0
    assert set(res["test"]) == set(SEEN) == set(res["val"])
    assert {"miou", "pixel_acc", "loss"} <= set(res["test"]["segment"])
    assert {"abs_err", "rel_err", "rmse"} <= set(res["test"]["depth"])
    assert {"accuracy", "f1", "auroc"} <= set(res["test"]["has_sphere"])
    assert 0 <= res["test"]["segment"]["miou"] <= 100 and res["test"]["depth"]["abs_err"] > 0  # (%)
    assert res["sparsity"]["group_sparsity"] == 0.0 and res["params"] > 0
    # the resolved config is what a reload gives
    assert yaml.safe_load((train_run / "config.yaml").read_text()) == load_config(None, MICRO).to_dict()
    recs = read_jsonl(train_run / "metrics.jsonl")
    assert [r["step"] for r in recs if r["kind"] == "train"] == [1, 2, 3, 4]
    assert [r["step"] for r in recs if r["kind"] == "val"] == [2, 4]
    assert load_run_checkpoint(train_run, "last").meta["step"] == 4
    assert load_run_checkpoint(train_run, "best").meta["step"] == res["best_step"]


def test_evaluate_rescores_the_best_checkpoint(train_run, capsys):
    assert cli("evaluate", train_run, "--split", "test") == 0
    ev = read_json(train_run / "eval_test.json")
    res = read_json(train_run / "results.json")
    for t in SEEN:
        for m, v in res["test"][t].items():
            assert ev["metrics"][t][m] == pytest.approx(v, rel=1e-5, abs=1e-6), (t, m)
    assert str(train_run / "eval_test.json") in capsys.readouterr().out


def test_sweep_lambda_table_and_sparsity(tmp_path, capsys):
    out = tmp_path / "sweep"
    assert cli("sweep-lambda", "--out", out, "--grid", "0.01,30", *MICRO) == 0
    summary = read_json(out / "sweep.json")
    rows = {r["lam"]: r for r in summary["rows"]}
    assert list(rows) == [0.01, 30.0] and summary["selected"] in rows
    assert rows[0.01]["group_sparsity"] == 0.0 < rows[30.0]["group_sparsity"]  # λ bites
    assert rows[30.0]["param_sparsity"] > 0
    table = (out / "sweep.md").read_text().splitlines()
    body = [line for line in table if line.startswith("|") and "---" not in line][1:]
    assert [line.split("|")[1].strip().rstrip(" ←") for line in body] == ["dense MTL", "0.01", "30"]
    assert sum("←" in line for line in body) == 1
    for name in ("delta_vs_sparsity.png", "per_layer_sparsity.png"):
        assert (out / name).stat().st_size > 1000
    assert "selected λ" in capsys.readouterr().out


def test_meta_train_then_finetune_on_unseen_tasks(tmp_path):
    meta = tmp_path / "meta"
    # λ (gradient units) and a large outer step, so that 4 meta-steps already zero many groups
    assert cli("meta-train", "--out", meta, *MICRO, "meta.lambda_init=0.01", "meta.outer_lr=0.05") == 0
    mres = read_json(meta / "results.json")
    assert mres["kind"] == "meta_sparsity" and mres["steps"] == 4
    assert [r["step"] for r in mres["lambda_trajectory"]] == [1, 2, 3, 4]
    assert 0 < mres["sparsity"]["group_sparsity"] < 1
    assert (meta / "meta_training.png").is_file()

    # fine-tune on the unseen tasks: 8 steps on one fixed batch of 8 images
    ft = ["finetune.steps=8", "finetune.fraction=0.25", "finetune.val_every=4",
          "finetune.lr=3e-3"]
    assert cli("finetune", meta, "--tasks", ",".join(UNSEEN), *ft) == 0
    out = meta / "finetune_normal+light_left"
    res = read_json(out / "results.json")
    assert res["tasks"] == UNSEEN and res["new_heads"] == UNSEEN and res["unseen"] == UNSEEN
    assert res["source_kind"] == "meta_sparsity" and set(res["test"]) == set(UNSEEN)
    assert {"mean", "median"} <= set(res["test"]["normal"])

    # fine-tuning never revives a zero group, while the rest of the backbone does train
    src = load_run_checkpoint(meta, "best").model
    zero_src = _zero_groups(src)
    assert sum(int(z.sum()) for z in zero_src.values()) > 0
    for which in ("best", "last"):
        tuned = load_run_checkpoint(out, which).model
        zero_now = _zero_groups(tuned)
        assert all(bool(zero_now[k][zero_src[k]].all()) for k in zero_src)
    assert any(not torch.equal(src[k], tuned[k]) for k in zero_src)
    assert res["sparsity"]["group_sparsity"] == mres["sparsity"]["group_sparsity"]

    # the unseen heads are new and trained: moved away from their initialisation, loss down
    cfg = load_config(out / "config.yaml")
    settings: TrainSettings = finetune_settings(cfg, UNSEEN)
    init = Trainer(cfg, tmp_path / "init", settings,
                   init_state={k: v for k, v in src.items() if k.startswith("backbone.")})
    init.setup()
    init_heads = {k: v for k, v in init.model.state_dict().items() if k.startswith("heads.")}
    assert {k.split(".")[1] for k in init_heads} == set(UNSEEN)
    assert all(not torch.equal(v, tuned[k]) for k, v in init_heads.items()
               if k.endswith(".weight") and v.dim() > 1)
    losses = _train_losses(out)
    assert len(losses) == 8
    for t in UNSEEN:
        assert losses[-1][t] < losses[0][t], t


def test_a_few_steps_of_mtl_lower_every_task_loss(tmp_path):
    cfg = load_config(None, MICRO + ["data.train_size=8", "train.max_steps=30",
                                      "train.val_every=30", "train.lr=3e-3",
                                      "train.lr_schedule=constant"])
    tr = Trainer(cfg, tmp_path / "run", TrainSettings(
        tasks=SEEN, max_steps=30, batch_size=8, lr=3e-3, val_every=30, lr_schedule="constant",
        log_every=1))
    tr.setup()
    tr.train()
    losses = _train_losses(tmp_path / "run")
    assert len(losses) == 30
    for t in SEEN:  # the same 8 images every step: each task's loss must come down
        first = sum(r[t] for r in losses[:3]) / 3
        last = sum(r[t] for r in losses[-3:]) / 3
        assert last < 0.95 * first, (t, first, last)


# DESIGN §4's primary metrics of the SynthScenes seen tasks: higher is better (True) or lower
PRIMARY = {"segment": {"miou": True, "pixel_acc": True}, "depth": {"abs_err": False, "rel_err": False},
           "edge": {"ods_f": True}, "has_sphere": {"accuracy": True, "f1": True},
           "many_objects": {"accuracy": True, "f1": True}}


def test_evaluate_against_a_reference_run_gives_design_delta_m(train_run, tmp_path, capsys):
    import numpy as np

    sparse = tmp_path / "sparse"
    assert cli("train", "--out", sparse, *MICRO, "sparsity.lam=0.05") == 0
    capsys.readouterr()
    assert cli("evaluate", sparse, "--against", train_run) == 0
    out = capsys.readouterr().out
    ev = read_json(sparse / "eval_test.json")
    a = ev["against"]
    ref = read_json(train_run / "results.json")["test"]
    for t in SEEN:  # the reference is re-scored on the same split: its results.json values
        for m, v in ref[t].items():
            assert a["metrics"][t][m] == pytest.approx(v, rel=1e-5, abs=1e-6), (t, m)
    per_task = {}
    for t, ms in PRIMARY.items():
        rel = [(1 if hib else -1) * (ev["metrics"][t][m] - a["metrics"][t][m]) / a["metrics"][t][m]
               for m, hib in ms.items()]
        per_task[t] = 100 * float(np.mean(rel))
    assert a["tasks"] == SEEN and a["left_out"] == []
    assert a["per_task"] == pytest.approx(per_task, rel=1e-9, abs=1e-12)
    assert a["delta_m"] == pytest.approx(float(np.mean(list(per_task.values()))), rel=1e-9, abs=1e-12)
    assert f"Δm {a['delta_m']:+.2f} % over 5 tasks" in out
    # against itself: 0 for every task
    assert cli("evaluate", train_run, "--against", train_run) == 0
    assert read_json(train_run / "eval_test.json")["against"]["delta_m"] == 0.0


def test_evaluate_against_refuses_other_data_or_a_missing_run(train_run, tmp_path, capsys):
    other = tmp_path / "other"
    assert cli("train", "--out", other, *MICRO, "data.seed=1", "train.max_steps=2") == 0
    (other / "eval_test.json").unlink(missing_ok=True)
    capsys.readouterr()
    assert cli("evaluate", other, "--against", train_run) == 2
    err = capsys.readouterr().err
    assert "data.seed: 1 vs 0" in err and "other samples" in err
    assert not (other / "eval_test.json").exists()
    assert cli("evaluate", other, "--against", tmp_path / "missing") == 2
    assert "missing" in capsys.readouterr().err
    assert not (other / "eval_test.json").exists()


def test_evaluate_against_checks_the_scored_split_and_the_tasks_before_scoring(
        train_run, tmp_path, capsys):
    # other training and validation data, the same test split: compared, over the tasks both
    # models have
    mixed = tmp_path / "mixed"
    assert cli("train", "--out", mixed, *MICRO, "data.train_size=16", "data.val_size=8",
               "train.max_steps=2", "train.tasks=[segment,normal]") == 0
    capsys.readouterr()
    assert cli("evaluate", mixed, "--against", train_run) == 0
    out = capsys.readouterr().out
    a = read_json(mixed / "eval_test.json")["against"]
    assert a["tasks"] == ["segment"] and list(a["per_task"]) == ["segment"]
    assert a["spec"] == {"segment": {"miou": True, "pixel_acc": True}}  # higher is better
    assert a["only_run"] == ["normal"] and a["only_reference"] == [t for t in SEEN if t != "segment"]
    assert "over 1 tasks: segment (miou, pixel_acc)" in out
    assert f"not in Δm, only {mixed} has: normal" in out
    # ... but not on the validation split, whose size differs
    assert cli("evaluate", mixed, "--split", "val", "--against", train_run) == 2
    assert "the two runs' val splits hold other samples (data.val_size: 8 vs 16)" \
        in capsys.readouterr().err
    assert not (mixed / "eval_val.json").exists()
    # no task in common: refused before anything is scored or written
    lone = tmp_path / "lone"
    assert cli("train", "--out", lone, *MICRO, "train.max_steps=2", "train.tasks=[normal]") == 0
    (lone / "eval_test.json").unlink(missing_ok=True)
    capsys.readouterr()
    assert cli("evaluate", lone, "--against", train_run) == 2
    assert "no task in common (normal vs " in capsys.readouterr().err
    assert not (lone / "eval_test.json").exists()


def test_delta_against_names_a_non_finite_metric_and_a_zero_reference():
    from metasparsity.recipes.evaluate_run import delta_against
    from metasparsity.utils.errors import UserError

    cfg = load_config(None, MICRO)
    ref = {"run_dir": "ref", "checkpoint": "c", "metrics": {
        "segment": {"miou": 50.0, "pixel_acc": 0.0}, "depth": {"abs_err": 0.5, "rel_err": 0.1}}}
    res = {"run_dir": "run", "split": "test", "metrics": {
        "segment": {"miou": 55.0, "pixel_acc": 80.0}, "depth": {"abs_err": 0.4, "rel_err": 0.1}}}
    d = delta_against(cfg, res, cfg, ref)
    assert d["left_out"] == ["segment.pixel_acc"]
    assert d["per_task"] == pytest.approx({"segment": 10.0, "depth": 10.0})
    res["metrics"]["depth"]["abs_err"] = float("nan")
    with pytest.raises(UserError, match="depth.abs_err is not a finite number"):
        delta_against(cfg, res, cfg, ref)
