"""Trivial predictors (the floor every model must clear) and checkpoint selection."""

from __future__ import annotations

import numpy as np
import torch

from metasparsity.config import load_config
from metasparsity.data import build_dataset
from metasparsity.recipes.evaluate_run import trivial_results
from metasparsity.training.evaluation import selection_score

CFG = ["data.image_size=24", "data.train_size=40", "data.val_size=8", "data.test_size=20",
       "train.eval_batch_size=7"]


def test_trivial_predictors_score_what_a_constant_prediction_scores():
    cfg = load_config(None, CFG)
    res = trivial_results(cfg, ["segment", "depth", "normal", "edge", "has_sphere"], "test")
    train = build_dataset(cfg, "train")
    test = build_dataset(cfg, "test")
    ys = [test[i][1] for i in range(len(test))]
    # majority class of the training pixels; pixel accuracy = its share of the test pixels
    counts = np.bincount(np.concatenate([train[i][1]["segment"].numpy().ravel()
                                         for i in range(len(train))]), minlength=6)
    major = counts.argmax()
    seg = np.stack([y["segment"].numpy() for y in ys])
    assert np.isclose(res["segment"]["pixel_acc"], 100 * (seg == major).mean())
    # mean training depth; abs error against the test depths
    mean_depth = np.concatenate([train[i][1]["depth"].numpy().ravel() for i in range(len(train))]).mean()
    depth = np.stack([y["depth"].numpy() for y in ys])
    assert np.isclose(res["depth"]["abs_err"], np.abs(depth - mean_depth).mean(), rtol=1e-5)
    # all-zero edges find nothing; a constant normal has one angle error per test normal
    assert res["edge"]["ods_f"] == 0.0
    # the mean valid training normal, renormalised; its angle to every valid test normal
    tr_n = np.concatenate([train[i][1]["normal"].numpy().reshape(3, -1) for i in range(len(train))], 1)
    c = tr_n[:, np.abs(tr_n).sum(0) > 0].astype(np.float64).sum(1)
    c /= np.linalg.norm(c)
    te_n = np.concatenate([y["normal"].numpy().reshape(3, -1) for y in ys], 1).astype(np.float64)
    te_n = te_n[:, np.abs(te_n).sum(0) > 0]
    te_n /= np.linalg.norm(te_n, axis=0)
    angles = np.degrees(np.arccos(np.clip(c @ te_n, -1.0, 1.0)))
    assert np.isclose(res["normal"]["mean"], angles.mean(), rtol=1e-4)
    # majority attribute: accuracy is the share of that value in the test split
    tr = np.array([float(train[i][1]["has_sphere"]) for i in range(len(train))])
    te = np.array([float(y["has_sphere"]) for y in ys])
    maj = float(tr.mean() >= 0.5)
    assert np.isclose(res["has_sphere"]["accuracy"], 100 * (te == maj).mean())
    pos = te.mean()  # a constant 1 recalls every positive at precision `pos`; a constant 0 finds none
    assert np.isclose(res["has_sphere"]["f1"], 100 * 2 * pos / (pos + 1) if maj else 0.0)
    assert res["has_sphere"]["auroc"] != res["has_sphere"]["auroc"] or res["has_sphere"]["auroc"] == 50.0


def test_selection_prefers_better_metrics_not_lower_losses():
    types = {"segment": "segmentation", "has_sphere": "binary"}
    ref = {"segment": {"miou": 40.0, "pixel_acc": 70.0, "loss": 1.0},
           "has_sphere": {"accuracy": 60.0, "f1": 70.0, "loss": 0.6}}
    # better accuracy but an over-confident (higher) cross-entropy: still the better checkpoint
    later = {"segment": {"miou": 50.0, "pixel_acc": 80.0, "loss": 0.8},
             "has_sphere": {"accuracy": 70.0, "f1": 75.0, "loss": 1.2}}
    assert selection_score(ref, ref, types) == 0.0
    assert selection_score(later, ref, types) < 0.0
    # without a reference it is the mean loss
    assert np.isclose(selection_score(later), (0.8 + 1.2) / 2)
    # a reference metric of 0 (no edge found yet) is left out; none left: the mean loss
    ref0 = {"edge": {"ods_f": 0.0, "loss": 0.1}}
    assert np.isclose(selection_score({"edge": {"ods_f": 10.0, "loss": 0.2}}, ref0, {"edge": "edge"}), 0.2)
    assert torch.isfinite(torch.tensor(selection_score(later, ref, types)))
