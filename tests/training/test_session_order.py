"""RunSession used out of order gets a message naming the call, not an AttributeError."""

from __future__ import annotations

import pytest
import torch

from metasparsity.training.session import RunSession


def test_log_before_open_names_the_missing_open(tmp_path):
    state = torch.get_rng_state()
    try:
        session = RunSession(tmp_path / "run", seed=0, device="cpu", num_threads=None)
    finally:
        torch.set_rng_state(state)
    with pytest.raises(RuntimeError, match=r"RunSession.log\('train'\) before open\(\)"):
        session.log("train", {"loss": 1.0})
    assert not (tmp_path / "run").exists()


def test_a_recipe_loop_left_by_break_still_stops_for_the_interrupt_its_last_step_held(
        tmp_path):
    """Asking for the next step delivers a held-back Ctrl-C; a loop that breaks asks for none,
    and the interrupt was dropped: the run went on to write its results."""
    import os
    import signal

    from metasparsity.training.checkpoint import checkpoint_step
    from metasparsity.utils.rundir import RunInterrupted

    state = torch.get_rng_state()
    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        model = torch.nn.Linear(2, 1)
        session = RunSession(tmp_path / "run", seed=0, device="cpu", num_threads=None,
                             progress=False)
        session.restore(lambda ck: None)
        session.open("seed: 0\n", snapshot=lambda b: (model.state_dict(), {}, {}), model=model,
                     val_metrics=dict)
        with pytest.raises(RunInterrupted) as e:
            with session.running(10) as steps:
                for step in steps:
                    session.mark(step + 1)
                    if step == 2:
                        os.kill(os.getpid(), signal.SIGINT)  # held back until the step is done
                        break
    finally:
        signal.signal(signal.SIGINT, inherited)
        torch.set_rng_state(state)
    assert e.value.step == 3 and not e.value.cut_short
    assert [checkpoint_step(p) for p in (tmp_path / "run" / "checkpoints").glob("step_*")] == [3]
