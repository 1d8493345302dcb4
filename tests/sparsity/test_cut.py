"""A backbone cut off from its input by zero groups is found, named, and reported by runs."""

from __future__ import annotations

import torch
from tests.recipes.micro import MICRO, cli

from metasparsity.builders import build_model
from metasparsity.config import load_config
from metasparsity.sparsity import backbone_cut
from metasparsity.utils.io import read_json


def _model():
    torch.manual_seed(0)
    cfg = load_config(None, MICRO)
    return build_model(cfg, list(cfg.data.seen_tasks))


X = torch.rand(1, 3, 32, 32)


def test_a_removed_residual_branch_is_no_cut_a_cut_transition_block_is():
    m = _model().train()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    assert backbone_cut(m, X) is None
    with torch.no_grad():  # an identity block without its branch: the shortcut carries on
        m.backbone.layer3[1].conv1.weight.zero_()
    assert backbone_cut(m, X) is None
    with torch.no_grad():  # the branch of a transition block alone: its downsample carries on
        m.backbone.layer4[0].conv1.weight.zero_()
    assert backbone_cut(m, X) is None
    with torch.no_grad():  # and its shortcut: nothing reaches layer4
        m.backbone.layer4[0].downsample[0].weight.zero_()
    assert backbone_cut(m, X) == "layer4.0"
    with torch.no_grad():  # one nonzero input group of one of the two is a path again
        m.backbone.layer4[0].downsample[0].weight[:, 3] = 0.1
    assert backbone_cut(m, X) is None
    with torch.no_grad():
        m.backbone.conv1.weight.zero_()
    assert backbone_cut(m, X) == "conv1"
    # the model is left as it was: train mode, its weights
    assert m.training and m.backbone.training
    assert torch.equal(m.backbone.layer2[0].conv1.weight, before["backbone.layer2.0.conv1.weight"])


def test_runs_record_the_cut_and_warn(tmp_path, capsys):
    ok = tmp_path / "ok"
    assert cli("train", "--out", ok, *MICRO, "sparsity.lam=1e-4") == 0
    assert read_json(ok / "results.json")["backbone_cut"] is None
    assert "no longer depends on the image" not in capsys.readouterr().err
    cut = tmp_path / "cut"
    assert cli("train", "--out", cut, *MICRO, "sparsity.lam=1e3") == 0
    res = read_json(cut / "results.json")
    assert res["sparsity"]["group_sparsity"] == 1.0 and res["backbone_cut"] == "conv1"
    err = capsys.readouterr().err
    assert "no longer depends on the image: from conv1 on" in err and str(cut) in err


def test_meta_training_records_the_cut(tmp_path, capsys):
    run = tmp_path / "meta"
    assert cli("meta-train", "--out", run, *MICRO, "meta.lambda_init=1",
               "meta.lambda_max=10", "meta.learn_lambda=false") == 0
    assert read_json(run / "results.json")["backbone_cut"] is not None
    assert "no longer depends on the image" in capsys.readouterr().err


def test_a_constant_stream_without_zero_groups_is_not_blamed_on_them(capsys):
    from metasparsity.sparsity import report_cut

    m = _model()
    with torch.no_grad():  # every BN of layer4.0's output kills its channels for any input
        m.backbone.layer4[0].bn2.weight.zero_()
        m.backbone.layer4[0].bn2.bias.fill_(-1.0)
        m.backbone.layer4[0].downsample[1].weight.zero_()
        m.backbone.layer4[0].downsample[1].bias.fill_(-1.0)
    assert report_cut(m, X, "run") == "layer4.0"
    err = capsys.readouterr().err
    assert "not the zero groups" in err and "zero groups cut every path" not in err


def test_a_run_warns_at_the_validation_where_the_cut_appears(tmp_path, capsys):
    from metasparsity.utils.io import read_jsonl

    run = tmp_path / "cut"
    assert cli("train", "--out", run, *MICRO, "sparsity.lam=1e3") == 0
    vals = [r for r in read_jsonl(run / "metrics.jsonl") if r["kind"] == "val"]
    assert [r["backbone_cut"] for r in vals] == ["conv1"] * len(vals) and vals[0]["step"] == 2
    err = capsys.readouterr().err
    assert err.count("at step 2 the backbone's output no longer depends") == 1  # once
    assert "at step 4" not in err
    meta = tmp_path / "meta"
    assert cli("meta-train", "--out", meta, *MICRO, "meta.lambda_init=1e-4") == 0
    vals = [r for r in read_jsonl(meta / "metrics.jsonl") if r["kind"] == "val"]
    assert vals and all(r["backbone_cut"] is None for r in vals)


def test_cut_watch_warns_when_the_cut_appears_and_notes_when_it_heals(capsys):
    from metasparsity.sparsity import CutWatch

    m, watch = _model(), CutWatch("run")
    assert watch(m, X, 1) is None and capsys.readouterr().err == ""
    w = m.backbone.layer4[0].downsample[0].weight
    kept = w[:, 2].clone()
    with torch.no_grad():
        m.backbone.layer4[0].conv1.weight.zero_()
        w.zero_()
    assert watch(m, X, 2) == "layer4.0" and watch(m, X, 3) == "layer4.0"
    err = capsys.readouterr().err
    assert err.count("no longer depends") == 1 and "at step 2" in err
    with torch.no_grad():  # one group revives
        w[:, 2] = kept
    assert watch(m, X, 4) is None
    assert "at step 4 the backbone depends on the image again" in capsys.readouterr().err
