"""``meta.lambda_hold``: λ stays at λ0 for a share of the meta-steps, then learns; a resumed run
holds and learns as the straight one does; refused where λ is not learned by meta-gradient."""

from __future__ import annotations

import pytest
import torch
from tests.recipes.micro import MICRO, cli

from metasparsity.config import load_config
from metasparsity.recipes.meta_train import MetaTrainer
from metasparsity.utils.io import read_json

HOLD = [*MICRO, "meta.steps=6", "meta.lambda_init=0.01", "meta.lambda_lr=0.2",
        "meta.val_every=100", "meta.lambda_hold=0.5"]


def _lams(res):
    return [r["lambda"] for r in res["lambda_trajectory"]]


def _run(run, cfg, stop=None):
    mt = MetaTrainer(cfg, run, overwrite=stop is not None or not run.exists(),
                     resume=stop is None and run.exists())
    mt.setup()
    try:
        return mt.train(stop_after=stop)
    finally:
        mt.cleanup()


def test_lambda_stays_at_lambda0_for_the_held_steps_then_learns(tmp_path):
    torch.set_num_threads(1)
    res = _run(tmp_path / "hold", load_config(None, HOLD))
    lams = _lams(res)
    lam0 = lams[0]  # exp(log 0.01), to rounding
    assert lam0 == pytest.approx(0.01, rel=1e-12)
    assert lams[:3] == [lam0] * 3  # steps 1-3 of 6: round(0.5 · 6) held, exactly
    assert all(abs(v / lam0 - 1) > 1e-3 for v in lams[3:])
    free = _run(tmp_path / "free", load_config(None, HOLD[:-1]))
    assert abs(_lams(free)[0] / lam0 - 1) > 1e-3  # without the hold, the first step moves λ
    # stopped inside the hold and resumed: the same trajectory
    cfg = load_config(None, HOLD)
    assert _run(tmp_path / "cut", cfg, stop=2) is None
    resumed = _run(tmp_path / "cut", cfg)
    assert _lams(resumed) == lams
    assert read_json(tmp_path / "cut" / "results.json")["lambda_final"] == res["lambda_final"]


@pytest.mark.parametrize("extra", [["meta.learn_lambda=false"], ["meta.lambda_init=0"],
                                   ["meta.target=0.5"]])
def test_lambda_hold_refused_where_lambda_is_not_learned(tmp_path, capsys, extra):
    out = tmp_path / "run"
    assert cli("meta-train", "--out", out, *HOLD, *extra) == 2
    assert "meta.lambda_hold" in capsys.readouterr().err and not out.exists()
