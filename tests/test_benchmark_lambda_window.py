"""``benchmarks/lambda_window.py``: λ by paired windows of validation Δm (or loss), on micro
runs."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from tests.recipes.micro import MICRO

from metasparsity.config import load_config
from metasparsity.data import resolve_tasks
from metasparsity.eval.delta import default_spec, delta_m, usable_spec
from metasparsity.utils.io import read_json, read_jsonl

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import lambda_window as lw  # noqa: E402

SEEN = ["segment", "depth", "has_sphere"]


def _cfg(*extra: str):
    return load_config(None, [*MICRO, f"data.seen_tasks=[{','.join(SEEN)}]", "meta.steps=4",
                              "meta.lambda_init=0.004", "meta.final_zero_window=0",
                              *lw.window_overrides(), *extra])


def _recorded_search(cfg, run, score, monkeypatch):
    """A 2-window search decided by ``score``; its log, and each window's (down, up) branch
    calls as ``(args, result)``, in order."""
    real, seen = lw._branch, []

    def recording(*args, **kwargs):
        out = real(*args, **kwargs)
        seen.append((args, out))
        return out

    monkeypatch.setattr(lw, "_branch", recording)
    lw.window_meta_train(cfg, run, window=2, factor=2.0, score=score)
    monkeypatch.undo()
    log = read_json(run / lw.SEARCH)
    assert log["score"] == score and len(log["windows"]) == 2
    return log, list(zip(seen[::2], seen[1::2]))


def test_the_search_follows_the_paired_delta_m_and_reproduces(tmp_path):
    cfg = _cfg()
    res = lw.window_meta_train(cfg, tmp_path / "a" / "run", window=2, factor=2.0)
    log = read_json(tmp_path / "a" / "run" / lw.SEARCH)
    assert [w["step"] for w in log["windows"]] == [2, 4]
    center = 0.004
    for w in log["windows"]:
        assert w["center"] == pytest.approx(center)
        assert (w["lambda_down"], w["lambda_up"]) == (pytest.approx(center / 2),
                                                      pytest.approx(center * 2))
        assert w["winner"] == ("up" if w["delta_m_up_vs_down"] > 0 else "down")
        center = w["lambda"]
        assert center == w[f"lambda_{w['winner']}"]
    # the run is the winners' lineage: λ of each step is its window's winner
    lam = {r["step"]: r["lambda"] for r in res["lambda_trajectory"]}
    for w, steps in zip(log["windows"], ([1, 2], [3, 4])):
        assert [lam[s] for s in steps] == [pytest.approx(w["lambda"])] * 2
    assert res["lambda_final"] == pytest.approx(log["windows"][-1]["lambda"])
    assert not (tmp_path / "a" / "run.branches").exists()  # only the run folder is left
    # the same search elsewhere is the same search (common random numbers, no hidden state),
    # also when it is interrupted in its second window and continued
    real, calls = lw._branch, []

    def interrupted(*args, **kwargs):
        calls.append(args[3])
        if len(calls) == 3:  # window 1's first branch
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    b = tmp_path / "b" / "run"
    lw._branch = interrupted
    try:
        with pytest.raises(KeyboardInterrupt):
            lw.window_meta_train(cfg, b, window=2, factor=2.0)
    finally:
        lw._branch = real
    branches = b.parent / "run.branches"
    assert len(read_json(branches / lw.SEARCH)["windows"]) == 1
    assert not b.exists()
    (branches / "w01_up").mkdir()  # a branch left half-made: redone, not reused
    (branches / "w01_up" / "stale").write_text("x")
    lw.window_meta_train(cfg, b, window=2, factor=2.0)
    assert read_json(b / lw.SEARCH) == log
    assert read_json(b / "results.json")["lambda_trajectory"] == res["lambda_trajectory"]
    assert not branches.exists() and not (b / "stale").exists()


def test_the_branch_metrics_are_those_of_the_run_and_the_delta_is_delta_m(tmp_path):
    cfg = _cfg()
    held = [0, 3, 5]
    up = lw._branch(cfg, None, tmp_path / "up", 0.01, 2, held)
    down = lw._branch(cfg, None, tmp_path / "down", 0.001, 2, held)
    assert up["lambda"] == pytest.approx(0.01) and down["lambda"] == pytest.approx(0.001)
    assert not up["finished"]  # stopped at the window's end, resumable
    again = lw._branch(cfg, None, tmp_path / "again", 0.01, 2, held)
    assert again["metrics"] == up["metrics"]
    types = {t: task.type for t, task in resolve_tasks(cfg, SEEN).items()}
    spec, _ = usable_spec(default_spec(types), down["metrics"])
    want = delta_m({t: up["metrics"][t] for t in SEEN}, {t: down["metrics"][t] for t in SEEN},
                   spec)
    assert lw.paired_delta(up["metrics"], down["metrics"], types) == want


def test_the_loss_score_is_symmetric_and_decides_by_the_loss(tmp_path, monkeypatch):
    types = {"a": "x", "b": "y"}
    up = {"a": {"loss": 1.0, "miou": 0.0}, "b": {"loss": 4.0}}
    down = {"a": {"loss": 3.0, "miou": 99.0}, "b": {"loss": 2.0}}
    # a: (3 - 1) / 2 = +1, b: (2 - 4) / 3 = -2/3; mean +1/6, in %
    assert lw.paired_loss(up, down, types) == pytest.approx(100 / 6)
    assert lw.paired_loss(down, up, types) == pytest.approx(-100 / 6)
    cfg = _cfg()
    log, pairs = _recorded_search(cfg, tmp_path / "run", "loss", monkeypatch)
    types = {t: task.type for t, task in resolve_tasks(cfg, SEEN).items()}
    for w, (down, up) in zip(log["windows"], pairs):
        assert "delta_m_up_vs_down" not in w
        down, up = (down[0][3], down[1]["metrics"]), (up[0][3], up[1]["metrics"])
        assert down[0] < up[0] == pytest.approx(w["lambda_up"])
        # the logged score is the up branch's against the down branch's, as the rule says
        assert w["loss_up_vs_down"] == pytest.approx(lw.paired_loss(up[1], down[1], types))
        assert w["winner"] == ("up" if w["loss_up_vs_down"] > 0 else "down")
    # a search is continued only with the score it was started with

    def stop(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(lw, "_branch", stop)
    with pytest.raises(KeyboardInterrupt):
        lw.window_meta_train(cfg, tmp_path / "b", window=2, factor=2.0)
    monkeypatch.undo()
    with pytest.raises(ValueError, match="score delta_m"):
        lw.window_meta_train(cfg, tmp_path / "b", window=2, factor=2.0, score="loss")


def test_the_heldout_score_pairs_the_windows_logged_heldout_losses(tmp_path, monkeypatch):
    # (6 - 2 + 2 - 4) / ((2 + 4 + 6 + 2) / 2) = 2 / 7, in %; symmetric
    assert lw.paired_heldout([2.0, 4.0], [6.0, 2.0]) == pytest.approx(200 / 7)
    assert lw.paired_heldout([6.0, 2.0], [2.0, 4.0]) == pytest.approx(-200 / 7)
    with pytest.raises(ValueError, match="not the same"):
        lw.paired_heldout([1.0], [1.0, 2.0])
    log, pairs = _recorded_search(_cfg(), tmp_path / "run", "heldout", monkeypatch)
    pairs = [((d[0][2], d[1]["heldout"]), (u[0][2], u[1]["heldout"])) for d, u in pairs]
    for k, (w, (down, up)) in enumerate(zip(log["windows"], pairs)):
        assert (down[0].name, up[0].name) == (f"w{k:02d}_down", f"w{k:02d}_up")
        # the two losses the branch's own metrics.jsonl logged at the window's two meta-steps
        assert len(up[1]) == len(down[1]) == 2 and up[1] != down[1]
        assert w["heldout_up_vs_down"] == pytest.approx(lw.paired_heldout(up[1], down[1]))
        assert w["winner"] == ("up" if w["heldout_up_vs_down"] > 0 else "down")
    # the winners' lineage logged the same losses at those steps
    recs = [r for r in read_jsonl(tmp_path / "run" / "metrics.jsonl") if r["kind"] == "meta"]
    kept = [up if w["winner"] == "up" else down for w, (down, up) in zip(log["windows"], pairs)]
    assert [r["lambda_val_loss"] for r in recs] == kept[0][1] + kept[1][1]


def test_bad_settings_are_refused(tmp_path):
    with pytest.raises(ValueError, match="lambda_lr=0"):
        lw.window_meta_train(load_config(None, MICRO), tmp_path / "r", window=2, factor=2.0)
    with pytest.raises(ValueError, match="factor > 1"):
        lw.window_meta_train(_cfg(), tmp_path / "r", window=2, factor=1.0)
    with pytest.raises(ValueError, match="score must be one of"):
        lw.window_meta_train(_cfg(), tmp_path / "r", window=2, factor=2.0, score="accuracy")
    with pytest.raises(ValueError, match="meta.log_every is 2, use 1"):
        lw.window_meta_train(_cfg("meta.log_every=2"), tmp_path / "r", window=2, factor=2.0,
                             score="heldout")
    assert not (tmp_path / "r").exists() and not (tmp_path / "r.branches").exists()


@pytest.mark.parametrize("args, message", [
    (["--objectives", "heldout,windows"], "unknown objective(s) ['windows']"),
    (["--objectives", "window_loss", "--window-factor", "1"], "--window-factor > 1"),
    (["--objectives", "window", "--window", "0"], "--window must be ≥ 1")])
def test_lambda_inits_refuses_a_bad_rule_before_any_run(tmp_path, args, message):
    import subprocess

    root = Path(__file__).resolve().parents[1]
    p = subprocess.run([sys.executable, str(root / "benchmarks" / "lambda_inits.py"), *args,
                        "--runs", str(tmp_path / "runs"), "--grid-runs", str(tmp_path / "grid"),
                        "--out", str(tmp_path / "out")],
                       capture_output=True, text=True, timeout=300, cwd=root)
    assert p.returncode == 2 and message in p.stderr, p.stderr
    assert not any(tmp_path.iterdir())


def test_a_diverged_branch_loses_and_an_old_search_continues_as_delta_m(tmp_path, monkeypatch):
    cfg = _cfg()
    real = lw._branch

    def nan_loss(out):
        out["metrics"][SEEN[0]]["loss"] = float("nan")

    def inf_heldout(out):
        out["heldout"][-1] = float("inf")

    # window 0's branch at the larger λ diverges (Δm of the metrics, the loss score), or the
    # one at the smaller (the held-out score, at one of the window's steps): it loses
    for score, spoilt, spoil, winner in (("loss", "w00_up", nan_loss, "down"),
                                         ("heldout", "w00_down", inf_heldout, "up")):
        def diverging(*args, spoilt=spoilt, spoil=spoil, **kwargs):
            out = real(*args, **kwargs)
            if args[2].name == spoilt:
                spoil(out)
            return out

        monkeypatch.setattr(lw, "_branch", diverging)
        lw.window_meta_train(cfg, tmp_path / score, window=2, factor=2.0, score=score)
        monkeypatch.undo()
        w0 = read_json(tmp_path / score / lw.SEARCH)["windows"][0]
        assert w0["winner"] == winner and w0[f"{score}_up_vs_down"] is None
    # a search begun before the score existed (no "score" in its log) is a Δm search
    b = tmp_path / "old"
    branches = b.parent / "old.branches"
    branches.mkdir()
    from metasparsity.utils.io import write_json

    write_json(branches / lw.SEARCH, {"window": 2, "factor": 2.0, "lambda0": 0.004,
                                      "windows": []})
    with pytest.raises(ValueError, match="score delta_m"):
        lw.window_meta_train(cfg, b, window=2, factor=2.0, score="loss")
    lw.window_meta_train(cfg, b, window=2, factor=2.0)
    log = read_json(b / lw.SEARCH)
    assert log["score"] == "delta_m" and "delta_m_up_vs_down" in log["windows"][0]


def test_lambda_inits_reuses_a_window_search_only_with_its_settings(tmp_path):
    import subprocess

    from metasparsity.utils.io import write_json

    run = tmp_path / "runs" / "seed_0" / "window_loss_auto"
    run.mkdir(parents=True)
    write_json(run / "results.json", {"kind": "meta"})
    write_json(run / lw.SEARCH, {"window": 20, "factor": 2.0, "score": "delta_m",
                                 "windows": []})
    before = sorted(tmp_path.rglob("*"))
    root = Path(__file__).resolve().parents[1]
    p = subprocess.run([sys.executable, str(root / "benchmarks" / "lambda_inits.py"),
                        "--objectives", "window_loss", "--inits", "auto", "--seeds", "0",
                        "--target", "0", "--no-dense", "--grid", "0.001",
                        "--runs", str(tmp_path / "runs"), "--grid-runs", str(tmp_path / "grid"),
                        "--out", str(tmp_path / "out")],
                       capture_output=True, text=True, timeout=300, cwd=root)
    assert p.returncode == 2, p.stderr
    assert "score delta_m, not the asked 20, 2 and loss" in p.stderr
    assert sorted(tmp_path.rglob("*")) == before


def test_lambda_inits_reports_the_decisions_of_every_window_score():
    import lambda_inits as li

    assert set(li.SCORE_TEXT) == set(lw.SCORES) == set(li.WINDOW_SCORES.values())
    rows = [{"objective": o, "seed": 0, "init": "auto",
             "window_decisions": {"up_share": 0.25, "median_abs": 1.5, "max_abs": 3.0,
                                  "lambda_after": [2e-3, 1e-3]}} for o in li.WINDOW_SCORES]
    text = "\n".join(li.window_decisions_text(rows, ["heldout", *li.WINDOW_SCORES], 20, 2.0))
    for o, score in li.WINDOW_SCORES.items():
        assert f"## The {o} rule's decisions (20 meta-steps per window" in text
        assert f"median |{li.SCORE_TEXT[score][0]}|" in text
    assert text.count("| 0 | auto | 25 | 1.50 | 3.00 | 0.002 0.001 |") == len(li.WINDOW_SCORES)


def test_lambda_inits_gives_each_lambda0_its_own_colour():
    import lambda_inits as li

    c = li.init_colors(["auto", "0.0003", "0.01", "0.03", "0.0003", "0.0001"])
    assert list(c) == ["auto", "0.0003", "0.01", "0.03", "0.0001"]
    assert len(set(c.values())) == 5 and c["auto"] == "tab:blue" and c["0.01"] == "tab:green"


def test_lambda_inits_convergence_is_the_issues_test_and_needs_two_lambda0():
    import lambda_inits as li

    def row(o, s, init, lam, gs, clamp=False):
        return {"objective": o, "seed": s, "init": init, "lambda_final": lam,
                "group_sparsity": gs, "group_sparsity_deployed": gs + 1.0,
                "group_sparsity_last_step": None, "at_clamp": clamp}

    rows = [row("heldout", 0, "auto", 2e-3, 40.0), row("heldout", 0, "0.01", 5.9e-3, 49.0),
            row("heldout", 1, "auto", 2e-3, 40.0), row("heldout", 1, "0.01", 6.1e-3, 45.0),
            row("heldout", 2, "auto", 2e-3, 19.0), row("heldout", 2, "0.01", 2e-3, 25.0),
            row("heldout", 3, "auto", 2e-3, 40.0), row("heldout", 3, "1e-4", 1e-6, 40.0, True),
            row("heldout", 4, "auto", 2e-3, 40.0), row("heldout", 5, "auto", 2e-3, 40.0),
            row("heldout", 5, "0.01", 2e-3, 50.5)]
    conv = {c["seed"]: c for c in li.convergence(rows, ["heldout"], [0, 1, 2, 3, 4, 5])}
    assert 4 not in conv  # one λ0: nothing to converge
    assert conv[0]["converged"] and conv[0]["lambda_ratio"] == pytest.approx(2.95)
    assert not conv[1]["converged"]  # 3.05×
    assert not conv[2]["converged"] and conv[2]["min_group_sparsity"] == 19.0  # below 20 %
    assert not conv[3]["converged"] and conv[3]["any_at_clamp"]
    assert not conv[5]["converged"] and conv[5]["sparsity_spread"] == pytest.approx(10.5)
    assert conv[0]["deployed_spread"] == pytest.approx(9.0) and conv[0]["last_step_spread"] is None
    assert li.convergence(rows, ["query"], [0]) == []
