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


def _opened_session(tmp_path, model):
    session = RunSession(tmp_path / "run", seed=0, device="cpu", num_threads=None,
                         progress=False)
    session.restore(lambda ck: None)
    session.open("seed: 0\n", snapshot=lambda b: (model.state_dict(), {}, {}), model=model,
                 val_metrics=dict)
    return session


def test_under_torchrun_a_second_ctrl_c_does_not_stop_a_step_and_is_not_offered(tmp_path,
                                                                                monkeypatch):
    """A rank that stopped mid-step would leave the others waiting in a collective, and
    torchrun passes each Ctrl-C on again, to one process too."""
    import dataclasses

    from metasparsity.training.session import AT_ONCE, STOPPING

    monkeypatch.delenv("TORCHELASTIC_RUN_ID", raising=False)
    state = torch.get_rng_state()
    try:
        session = _opened_session(tmp_path, torch.nn.Linear(2, 1))
        for world, elastic, after, notice in [(1, False, 1.0, STOPPING + AT_ONCE),
                                              (2, True, None, STOPPING),
                                              (1, True, None, STOPPING)]:
            if elastic:
                monkeypatch.setenv("TORCHELASTIC_RUN_ID", "none")
            session.dist = dataclasses.replace(session.dist, world_size=world)
            with session.running(1) as steps:
                assert (steps.second_after, steps.notice) == (after, notice)
                # the agreement at a step's end (an all-reduce) in one process
                steps.agree = (lambda stop: stop) if world > 1 else None
                for _ in steps:
                    pass
        session.close()
    finally:
        torch.set_rng_state(state)


def test_from_python_a_ctrl_c_during_the_interrupt_s_save_waits_for_it(tmp_path, monkeypatch):
    """Called from Python, the handler back after the first Ctrl-C is Python's: a second one
    during the checkpoint the first asked for cut the save, and left the run locked."""
    import os
    import signal

    import metasparsity.training.session as session_mod
    from metasparsity.training.checkpoint import checkpoint_step
    from metasparsity.utils.rundir import RunInterrupted, RunLock

    real = session_mod.save_checkpoint

    def save_with_a_ctrl_c(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)
        return real(*args, **kwargs)

    state = torch.get_rng_state()
    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        session = _opened_session(tmp_path, torch.nn.Linear(2, 1))
        with pytest.raises(KeyboardInterrupt) as e:  # RunInterrupted is one
            with session.running(10) as steps:
                for step in steps:
                    session.mark(step + 1)
                    if step == 1:
                        os.kill(os.getpid(), signal.SIGINT)  # delivered once the step is done
                        monkeypatch.setattr(session_mod, "save_checkpoint", save_with_a_ctrl_c)
    finally:
        signal.signal(signal.SIGINT, inherited)
        torch.set_rng_state(state)
    assert isinstance(e.value, RunInterrupted) and e.value.step == 2 and not e.value.cut_short
    assert [checkpoint_step(p) for p in (tmp_path / "run" / "checkpoints").glob("step_*")] == [2]
    lock = RunLock()
    lock.acquire(tmp_path / "run")  # released: the session was closed
    lock.release()
