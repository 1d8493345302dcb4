"""``finetune.lam``: fine-tuning with the group prox at a fixed or the source run's λ."""

from __future__ import annotations

import pytest
from tests.recipes.micro import MICRO, cli, interrupt_on_call, same_tensors

from metasparsity.recipes.finetune import finetune_lambda
from metasparsity.training.run_checkpoints import load_run_checkpoint
from metasparsity.utils.errors import UserError
from metasparsity.utils.io import read_json, read_jsonl

SEEN = "segment,depth,edge,has_sphere,many_objects"
UNSEEN = "normal,light_left"


def _zero_sets(state) -> dict[str, list[bool]]:
    return {k: (v.flatten(2).abs().sum(dim=(0, 2)) == 0).tolist() for k, v in state.items()
            if k.startswith("backbone.") and v.dim() == 4}


@pytest.fixture(scope="module")
def meta_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("ft_lam")
    runs = {}
    for name, extra in (("global", []), ("layer", ["meta.lambda_scope=layer"]),
                        ("dense", ["meta.lambda_init=0"])):
        d = root / name
        lam = [] if name == "dense" else ["meta.lambda_init=0.01"]
        assert cli("meta-train", "--out", d, *MICRO, *lam, "meta.outer_lr=0.05", *extra) == 0
        runs[name] = d
    return runs


@pytest.mark.parametrize("scope", ["global", "layer"])
def test_source_lambda_is_the_meta_runs_final_lambda_and_the_prox_is_on(meta_runs, scope):
    src = meta_runs[scope]
    out = src / "ft_source"
    assert cli("finetune", src, "--tasks", SEEN, "--out", out, "finetune.lam=source") == 0
    res, mres = read_json(out / "results.json"), read_json(src / "results.json")
    assert res["lam"] == mres["lambda_final"]
    assert isinstance(res["lam"], list) == (scope == "layer")
    # the prox ran (ProxAdam logs the group sparsity), and the source's zeros stayed zero
    assert all("group_sparsity" in r for r in read_jsonl(out / "metrics.jsonl")
               if r["kind"] == "train")
    before = _zero_sets(load_run_checkpoint(src, "best").model)
    assert any(any(z) for z in before.values())
    for which in ("best", "last"):
        after = _zero_sets(load_run_checkpoint(out, which).model)
        assert all(a for k in before for b, a in zip(before[k], after[k]) if b)


def test_a_large_lambda_zeroes_more_groups_than_the_source_kept(meta_runs):
    src = meta_runs["global"]
    out = src / "ft_big"
    assert cli("finetune", src, "--tasks", SEEN, "--out", out, "finetune.lam=10") == 0
    res, mres = read_json(out / "results.json"), read_json(src / "results.json")
    assert res["lam"] == 10.0
    assert res["sparsity"]["group_sparsity"] > mres["sparsity"]["group_sparsity"]
    # λ = 0 (the default) keeps exactly the source's zero set
    out0 = src / "ft_zero"
    assert cli("finetune", src, "--tasks", SEEN, "--out", out0) == 0
    assert read_json(out0 / "results.json")["sparsity"]["group_sparsity"] == \
        mres["sparsity"]["group_sparsity"]


def test_keep_zeros_removed_revives_only_the_zero_groups_pruning_keeps(meta_runs):
    """``finetune.keep_zeros=removed``: the zero groups whose channel pruning removes stay zero
    (the pruned cost is the source's), the others train again."""
    import torch

    from metasparsity.recipes.load_run import load_run_model
    from metasparsity.sparsity import BackboneCost, channel_groups, removed_zero_masks

    src = meta_runs["global"]
    out = src / "ft_removed"
    assert cli("finetune", src, "--tasks", SEEN, "--out", out, "finetune.keep_zeros=removed") == 0
    cfg, model, _ = load_run_model(src, "best")
    x = torch.zeros(1, 3, cfg.data.image_size, cfg.data.image_size)
    removed = removed_zero_masks(model, x)
    before = _zero_sets(load_run_checkpoint(src, "best").model)
    kept = {k: [z and not bool(removed[k][i]) for i, z in enumerate(zs)] for k, zs in before.items()}
    assert any(any(v) for v in removed.values()) and any(any(v) for v in kept.values())
    layers = channel_groups(model)
    cost = BackboneCost(model, x, layers).summary(model)
    for which in ("best", "last"):
        _, tuned, _ = load_run_model(out, which)
        after = _zero_sets({k: v for k, v in tuned.state_dict().items()})
        assert all(after[k][i] for k, m in removed.items() for i in m.nonzero().flatten().tolist())
        # the others are free to train (a group whose block is dead has no gradient and stays 0)
        revived = [(k, i) for k, v in kept.items() for i, z in enumerate(v) if z and not after[k][i]]
        assert len(revived) >= 10, revived
        assert BackboneCost(tuned, x, layers).summary(tuned)["macs"] == cost["macs"]


def test_source_lambda_of_a_dense_run_is_zero(meta_runs):
    src = meta_runs["dense"]
    out = src / "ft_dense"
    assert cli("finetune", src, "--tasks", SEEN, "--out", out, "finetune.lam=source") == 0
    res = read_json(out / "results.json")
    assert res["lam"] == 0.0 and res["sparsity"]["group_sparsity"] == 0.0


def test_lam_unseen_replaces_lam_when_every_task_is_unseen(meta_runs):
    src = meta_runs["global"]
    mres = read_json(src / "results.json")

    def lam_of(name, tasks, *over):
        assert cli("finetune", src, "--tasks", tasks, "--out", src / name, *over) == 0
        return read_json(src / name / "results.json")

    # unseen tasks only, lam_unseen=0: no penalty, exactly the source's zero set
    res = lam_of("ft_u0", UNSEEN, "finetune.lam=source", "finetune.lam_unseen=0")
    assert res["lam"] == 0.0
    assert res["sparsity"]["group_sparsity"] == mres["sparsity"]["group_sparsity"]
    # lam_unseen=source: the learned λ on the unseen tasks, while finetune.lam says 0
    assert lam_of("ft_us", UNSEEN, "finetune.lam_unseen=source")["lam"] == mres["lambda_final"]
    # null (the default): finetune.lam, here large enough to zero more groups
    res = lam_of("ft_un", UNSEEN, "finetune.lam=10")
    assert res["lam"] == 10.0
    assert res["sparsity"]["group_sparsity"] > mres["sparsity"]["group_sparsity"]
    # a seen task among them: finetune.lam
    assert lam_of("ft_mix", "segment,normal", "finetune.lam=10", "finetune.lam_unseen=0")["lam"] == 10.0


@pytest.fixture(scope="module")
def budget_run(tmp_path_factory):
    src = tmp_path_factory.mktemp("ft_budget") / "budget"
    assert cli("meta-train", "--out", src, *MICRO, "meta.lambda_init=0.01", "meta.outer_lr=0.05",
               "meta.target=0.8") == 0
    return src


def test_a_budget_run_keeps_its_budget_while_fine_tuning_with_its_multiplier(budget_run):
    src, out = budget_run, budget_run / "ft_source"
    mres = read_json(src / "results.json")
    assert mres["budget"]["cost"]["macs"] <= 0.8
    ft = ["finetune.steps=6", "finetune.val_every=2"]
    assert cli("finetune", src, "--tasks", SEEN, "--out", out, "finetune.lam=source", *ft) == 0
    res = read_json(out / "results.json")
    assert res["lam"] == mres["lambda_final"]
    b = res["budget"]
    assert b["measure"] == "macs" and b["target"] == 0.8 and b["cost"]["macs"] <= 0.8
    assert res["best_step"] == res["steps"] == 6  # only the last step has landed
    recs = [r for r in read_jsonl(out / "metrics.jsonl") if r["kind"] == "train"]
    # dual ascent: λ follows the cost, down while it is below the target, up while above
    for a, r in zip(recs, recs[1:]):
        assert (r["lambda"] < a["lambda"]) == (r["cost"] < 0.8) or r["cost"] == 0.8
    assert b["lambda_final"] == recs[-1]["lambda"]


def test_a_budget_fine_tune_with_a_huge_lambda_gives_back_what_the_budget_allows(budget_run):
    """λ = 10 zeroes every group it reaches; the landing gives back all but the source's zeros
    (kept zero), so the cost ends where the source's did, not far below the target."""
    src, out = budget_run, budget_run / "ft_huge"
    ft = ["finetune.steps=4", "finetune.val_every=2"]
    assert cli("finetune", src, "--tasks", SEEN, "--out", out, "finetune.lam=10", *ft) == 0
    res, mres = read_json(out / "results.json"), read_json(src / "results.json")
    recs = [r for r in read_jsonl(out / "metrics.jsonl") if r["kind"] == "train"]
    assert min(r["cost"] for r in recs[:-1]) < mres["budget"]["cost"]["macs"]  # the prox bit
    assert res["budget"]["cost"]["macs"] == pytest.approx(mres["budget"]["cost"]["macs"])
    assert res["sparsity"]["num_zero_groups"] == mres["sparsity"]["num_zero_groups"]
    assert res["budget"]["landing"]["scale"] < 1


@pytest.mark.parametrize("lam", ["source", "10"])
def test_a_frozen_backbone_takes_no_prox_and_keeps_the_budget_sources_weights(budget_run, lam):
    """With ``finetune.freeze_backbone`` the backbone does not move: no prox, no budget hold,
    whatever ``finetune.lam`` says (the heads train)."""
    out = budget_run / f"ft_frozen_{lam}"
    assert cli("finetune", budget_run, "--tasks", SEEN, "--out", out, f"finetune.lam={lam}",
               "finetune.freeze_backbone=true", "finetune.steps=3", "finetune.val_every=3") == 0
    res = read_json(out / "results.json")
    assert "budget" not in res
    a, b = load_run_checkpoint(budget_run, "best").model, load_run_checkpoint(out, "best").model
    backbone = [k for k in a if k.startswith("backbone.") and "running" not in k
                and "num_batches" not in k]
    assert backbone and same_tensors({k: a[k] for k in backbone}, {k: b[k] for k in backbone}) == []
    assert same_tensors({k: a[k] for k in a if k.startswith("heads.")},
                        {k: b[k] for k in b if k.startswith("heads.")}) != []


@pytest.mark.parametrize("keep", ["all", "removed"])
def test_a_budget_fine_tune_interrupted_and_resumed_is_bit_identical(budget_run, tmp_path,
                                                                     monkeypatch, keep):
    # the kept zeros come from the source's weights, also on resume
    ft = ["finetune.lam=source", "finetune.steps=4", "finetune.val_every=2",
          f"finetune.keep_zeros={keep}"]
    straight, out = tmp_path / "straight", tmp_path / "resumed"
    assert cli("finetune", budget_run, "--tasks", SEEN, "--out", straight, *ft) == 0
    interrupt_on_call(monkeypatch, "metasparsity.recipes.train", 2)  # during step 2
    assert cli("finetune", budget_run, "--tasks", SEEN, "--out", out, *ft) == 130
    monkeypatch.undo()
    assert load_run_checkpoint(out, "last").meta["step"] == 1
    assert cli("finetune", budget_run, "--resume", out) == 0
    a, b = load_run_checkpoint(straight, "last"), load_run_checkpoint(out, "last")
    assert same_tensors(a.model, b.model) == []
    assert a.meta["budget_lambda"] == b.meta["budget_lambda"]
    assert read_json(straight / "results.json")["budget"] == read_json(out / "results.json")["budget"]


@pytest.mark.parametrize("key", ["lam", "lam_unseen"])
@pytest.mark.parametrize("bad", ["learned", "-1", "nan"])
def test_bad_finetune_lam_is_a_config_error(meta_runs, key, bad, capsys):
    src = meta_runs["global"]
    assert cli("finetune", src, "--tasks", UNSEEN, "--out", src / "ft_bad",
               f"finetune.{key}={bad}") == 2
    assert f"finetune.{key}" in capsys.readouterr().err
    assert not (src / "ft_bad").exists()


def test_finetune_lambda_resolution():
    assert finetune_lambda(0.003, {}, "x") == 0.003
    assert finetune_lambda("source", {"kind": "meta_sparsity", "lambda": 0.002}, "x") == 0.002
    assert finetune_lambda("source", {"kind": "meta_sparsity", "lambda": [1e-3, 2e-3]}, "x") \
        == [1e-3, 2e-3]
    assert finetune_lambda("source", {"kind": "fixed_lambda", "lam": 3e-4}, "x") == 3e-4
    assert finetune_lambda("source", {"kind": "mtl", "lam": 0.0}, "x") == 0.0
    assert finetune_lambda("source", {"kind": "meta_dense", "lambda": 0.0}, "x") == 0.0
    # a `train` run in budget mode: its final multiplier, not the λ0 it started from
    assert finetune_lambda("source", {"kind": "train_budget", "lam": 1e-3,
                                      "budget_lambda": [4e-4]}, "x") == 4e-4
    for meta in ({}, {"lambda": float("nan")}, {"lambda": [1e-3, -1.0]}):
        with pytest.raises(UserError, match="no usable λ"):
            finetune_lambda("source", meta, "x")
    with pytest.raises(UserError, match="finetune.lam_unseen=source"):
        finetune_lambda("source", {}, "x", "finetune.lam_unseen")


def test_keep_zeros_none_without_a_penalty_trains_the_zero_groups_again(meta_runs):
    src = meta_runs["global"]
    out = src / "ft_none"
    assert cli("finetune", src, "--tasks", SEEN, "--out", out, "finetune.keep_zeros=none",
               "finetune.steps=2", "finetune.val_every=2") == 0
    before = _zero_sets(load_run_checkpoint(src, "best").model)
    after = _zero_sets(load_run_checkpoint(out, "last").model)
    zeros = [(k, i) for k, v in before.items() for i, z in enumerate(v) if z]
    revived = [(k, i) for k, i in zeros if not after[k][i]]
    assert zeros and len(revived) >= len(zeros) // 2, (len(zeros), len(revived))


def test_a_budget_fine_tune_with_keep_zeros_none_lets_zero_groups_revive_and_lands(budget_run):
    """Without the mask the prox alone decides: the cost can rise above the source's (zero groups
    revive where the multiplier is too small to hold them), and the last step lands on the
    budget as ever.  With the mask (``all``) the cost never rises above the source's."""
    mres = read_json(budget_run / "results.json")
    src_cost = mres["budget"]["cost"]["macs"]
    costs = {}
    for keep in ("all", "none"):
        out = budget_run / f"ft_keep_{keep}"
        assert cli("finetune", budget_run, "--tasks", SEEN, "--out", out, "finetune.lam=source",
                   f"finetune.keep_zeros={keep}", "finetune.steps=6", "finetune.val_every=2") == 0
        recs = [r for r in read_jsonl(out / "metrics.jsonl") if r["kind"] == "train"]
        costs[keep] = [r["cost"] for r in recs]
        assert read_json(out / "results.json")["budget"]["cost"]["macs"] <= 0.8
    assert max(costs["all"]) <= src_cost + 1e-12
    assert max(costs["none"]) > src_cost, (src_cost, costs)


def test_fine_tuning_takes_the_prox_metric_of_its_config(meta_runs, tmp_path):
    """``sparsity.prox_metric`` chooses the prox of fine-tuning too: the same fine-tuning in
    the two metrics gives different weights (and the same metric the same ones)."""
    src = meta_runs["global"]
    states = {}
    for name, metric in (("adam", "adam"), ("euclid", "euclidean"), ("euclid2", "euclidean")):
        out = tmp_path / name
        assert cli("finetune", src, "--tasks", SEEN, "--out", out, "finetune.lam=0.05",
                   "finetune.steps=2", "finetune.val_every=2",
                   f"sparsity.prox_metric={metric}") == 0
        states[name] = load_run_checkpoint(out, "last").model
    assert same_tensors(states["euclid"], states["euclid2"]) == []
    changed = same_tensors(states["adam"], states["euclid"])
    assert any(k.startswith("backbone.") for k in changed)


def test_a_budget_fine_tuning_of_a_meta_run_refuses_a_train_budget(budget_run, tmp_path, capsys):
    """A budget fine-tuning is a budget-mode source of its own source's kind (meta.target
    here): a sparsity.target asked of it is refused, as of the meta-trained run itself."""
    first = tmp_path / "first"
    assert cli("finetune", budget_run, "--tasks", SEEN, "--out", first, "finetune.lam=source",
               "finetune.steps=2", "finetune.val_every=2") == 0
    assert read_json(first / "results.json")["budget"]["target"] == 0.8
    capsys.readouterr()
    out = tmp_path / "again"
    assert cli("finetune", first, "--tasks", SEEN, "--out", out, "finetune.lam=source",
               "sparsity.target=0.6") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "sparsity.target" in err[0], err
    assert not out.exists()
    # without it, the meta budget is kept again
    assert cli("finetune", first, "--tasks", SEEN, "--out", out, "finetune.lam=source",
               "finetune.steps=2", "finetune.val_every=2") == 0
    assert read_json(out / "results.json")["budget"]["target"] == 0.8
