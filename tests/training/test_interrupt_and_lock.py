"""The step-level interrupt guard and the run lock: their corner cases."""

from __future__ import annotations

import multiprocessing
import os
import signal

import pytest
import torch

from metasparsity.training.interrupt import DeferInterrupt, OneStepAtATime
from metasparsity.utils.errors import UserError
from metasparsity.utils.rundir import (
    LOCK_FILE,
    RunLock,
    create_run_dir,
    release_inherited_locks,
    remove_leftovers,
)


@pytest.fixture
def handlers():
    """SIGINT and SIGTERM as they were after the test (a suite in the background inherits
    SIGINT ignored)."""
    old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    for s, h in old.items():
        signal.signal(s, h)


def test_a_handler_of_one_s_own_that_only_logs_lets_the_work_go_on(handlers):
    """Held back, SIGTERM is delivered to the handler it was held from, which decides: this one
    logs and returns, so no KeyboardInterrupt (it was raised whatever the handler did)."""
    seen = []
    signal.signal(signal.SIGTERM, lambda signum, frame: seen.append(signum))
    with DeferInterrupt():
        os.kill(os.getpid(), signal.SIGTERM)
        assert seen == []  # held back
    assert seen == [signal.SIGTERM]
    steps = OneStepAtATime(range(3))
    for i in steps:
        if i == 0:
            os.kill(os.getpid(), signal.SIGTERM)
    assert i == 2 and seen == [signal.SIGTERM] * 2


def test_the_ranks_stop_after_the_same_step(handlers):
    """``agree`` (an all-reduce under torchrun) stops a rank that was not signalled after the
    step at which another one was; a rank that was is told so."""
    asked = []

    def others_stop_after_step_1(stop: bool) -> bool:
        asked.append(stop)
        return stop or len(asked) == 2

    done = []
    with pytest.raises(KeyboardInterrupt):
        for i in OneStepAtATime(range(5), agree=others_stop_after_step_1):
            done.append(i)
    assert done == [0, 1] and asked == [False, False]
    asked.clear()
    done.clear()
    with pytest.raises(KeyboardInterrupt):
        for i in OneStepAtATime(range(5), agree=lambda stop: asked.append(stop) or stop):
            done.append(i)
            if i == 2:
                os.kill(os.getpid(), signal.SIGINT)
    assert done == [0, 1, 2] and asked == [False, False, True]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_loop_left_by_an_exception_puts_the_handlers_back(handlers):
    steps = OneStepAtATime(range(3))
    with pytest.raises(ValueError):
        for _ in steps:
            os.kill(os.getpid(), signal.SIGINT)  # held back, then gives way to the error
            raise ValueError
    steps.close()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


@pytest.fixture
def clock(monkeypatch):
    """The interrupt guard's clock, moved by hand: ``clock.append(t)`` sets the time."""
    from metasparsity.training import interrupt

    times = [0.0]
    monkeypatch.setattr(interrupt, "_now", lambda: times[-1])
    return times


def test_a_second_interrupt_in_a_step_stops_it_at_once(handlers, clock):
    """The first is held until the step is done; one that comes within SECOND_AFTER_S of it
    (passed on by a launcher, as torchrun and the benchmarks' pool do) is the same Ctrl-C; a
    second one later goes at once to the handler the first was held from, where the step has
    got to: ``cut_short`` says it is half done."""
    from metasparsity.training.interrupt import SECOND_AFTER_S

    steps = OneStepAtATime(range(3))
    done = []
    with pytest.raises(KeyboardInterrupt):
        for i in steps:
            os.kill(os.getpid(), signal.SIGINT)
            clock.append(SECOND_AFTER_S * 0.9)
            os.kill(os.getpid(), signal.SIGINT)  # passed on: dropped
            done.append((i, "held"))
            clock.append(SECOND_AFTER_S * 1.1)
            os.kill(os.getpid(), signal.SIGINT)
            done.append((i, "after the second"))
    assert done == [(0, "held")] and steps.cut_short
    steps.close()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    # without second_after, later ones are dropped whenever they come
    done.clear()
    with pytest.raises(KeyboardInterrupt):
        for i in OneStepAtATime(range(3), second_after=None):
            os.kill(os.getpid(), signal.SIGINT)
            clock.append(clock[-1] + 100.0)
            os.kill(os.getpid(), signal.SIGINT)
            done.append(i)
    assert done == [0]


def test_a_second_interrupt_to_a_handler_that_only_logs_lets_the_step_go_on(handlers, clock):
    seen = []
    signal.signal(signal.SIGINT, lambda signum, frame: seen.append(signum))
    steps = OneStepAtATime(range(2))
    for i in steps:
        if i == 0:
            os.kill(os.getpid(), signal.SIGINT)
            clock.append(10.0)
            os.kill(os.getpid(), signal.SIGINT)
            assert seen == [signal.SIGINT] and not steps.cut_short
    assert i == 1 and seen == [signal.SIGINT]  # the held one was delivered: nothing is left


def test_a_ctrl_c_during_a_save_does_not_cut_the_step(handlers, clock):
    """Not a checkpoint save (its files and pointers together): the step goes on, and the
    first interrupt stops the loop after it."""
    steps = OneStepAtATime(range(3))
    done = []
    with pytest.raises(KeyboardInterrupt):
        for i in steps:
            os.kill(os.getpid(), signal.SIGINT)
            clock.append(clock[-1] + 10.0)
            with steps.whole():
                os.kill(os.getpid(), signal.SIGINT)
                done.append(i)
            assert not steps.cut_short
    assert done == [0]


@pytest.mark.parametrize("first", [signal.SIGINT, signal.SIGTERM])
def test_a_scheduler_s_sigterm_does_not_cut_the_step(handlers, clock, first):
    """Only a person's second Ctrl-C cuts: a SIGTERM after the first interrupt waits."""
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    done = []
    with pytest.raises(KeyboardInterrupt):
        for i in OneStepAtATime(range(3)):
            os.kill(os.getpid(), first)
            clock.append(clock[-1] + 10.0)
            os.kill(os.getpid(), signal.SIGTERM)
            done.append(i)
    assert done == [0]


@pytest.mark.parametrize("when", ["before", "after"])
def test_a_signal_while_the_handlers_go_back_is_neither_lost_nor_a_silent_save(handlers, clock,
                                                                             monkeypatch, when):
    """A third Ctrl-C while a cut puts the handlers back (``when``: before or after the first
    is put back) is still a cut (it was lost, or a plain interrupt whose session saved the
    half-done step), and one while a step ends is still delivered (it was lost)."""
    from metasparsity.training import interrupt

    real = interrupt.signal.signal
    sent = []

    def signal_and_send(sig, handler):
        if when == "before" and not sent:
            sent.append(sig)
            os.kill(os.getpid(), signal.SIGINT)
        out = real(sig, handler)
        if when == "after" and not sent:
            sent.append(sig)
            os.kill(os.getpid(), signal.SIGINT)
        return out

    steps = OneStepAtATime(range(3))
    with pytest.raises(KeyboardInterrupt):
        for _ in steps:
            os.kill(os.getpid(), signal.SIGINT)
            clock.append(clock[-1] + 10.0)
            monkeypatch.setattr(interrupt.signal, "signal", signal_and_send)
            os.kill(os.getpid(), signal.SIGINT)
    assert steps.cut_short and sent
    steps.close()
    monkeypatch.setattr(interrupt.signal, "signal", real)
    sent.clear()
    done = []
    steps = OneStepAtATime(range(3))
    with pytest.raises(KeyboardInterrupt):
        for i in steps:
            done.append(i)
            os.kill(os.getpid(), signal.SIGINT)
            clock.append(clock[-1] + 10.0)
            monkeypatch.setattr(interrupt.signal, "signal", signal_and_send)
    assert done == [0] and sent and not steps.cut_short


def _child(ready, go):
    release_inherited_locks()  # as a DataLoader worker does
    ready.set()
    go.wait(30)


def test_a_forked_worker_does_not_keep_the_run_locked(tmp_path):
    """flock belongs to the open file, which a forked loader worker shares: a killed training
    process's workers kept its run locked while they lived."""
    held = RunLock()
    held.acquire(tmp_path)
    ctx = multiprocessing.get_context("fork")
    ready, go = ctx.Event(), ctx.Event()
    child = ctx.Process(target=_child, args=(ready, go))
    child.start()
    try:
        assert ready.wait(30)
        held.release()
        again = RunLock()
        again.acquire(tmp_path)  # the child still lives, and holds nothing
        again.release()
    finally:
        go.set()
        child.join(30)


def test_overwriting_a_folder_refuses_while_a_run_inside_it_is_trained(tmp_path):
    """A sweep's or comparison's --overwrite deleted a sub-run another process was training."""
    top = create_run_dir(tmp_path / "sweep", "x: 1\n")
    sub = create_run_dir(top / "lam_0.1", "x: 1\n")
    held = RunLock()
    held.acquire(sub)
    try:
        with pytest.raises(UserError, match=f"{sub} is in use"):
            create_run_dir(top, "x: 2\n", overwrite=True)
        assert (sub / "config.yaml").is_file()
    finally:
        held.release()
    create_run_dir(top, "x: 2\n", overwrite=True)  # released: replaced
    assert not sub.exists() and (top / "config.yaml").read_text() == "x: 2\n"


def test_a_resume_removes_only_its_own_leftovers(tmp_path):
    run = create_run_dir(tmp_path / "run", "x: 1\n")
    (run / "checkpoints").mkdir()
    own = [run / ".results.json.a1.tmp", run / ".config.yaml.b2.tmp",
           run / "checkpoints" / ".last.c3.tmp", run / "checkpoints" / ".step_0000012.tmp"]
    others = [run / ".eval_test.json.d4.tmp", run / ".pruned.e5.tmp", run / ".mine.tmp",
              run / "checkpoints" / ".step_0000012.old", run / LOCK_FILE]
    for p in own + others:
        if "step_" in p.name or "pruned" in p.name:
            p.mkdir()
        else:
            p.write_text("")
    assert sorted(remove_leftovers(run)) == sorted(p.name for p in own)
    assert not any(p.exists() for p in own) and all(p.exists() for p in others)


def test_labels_of_a_narrow_integer_type_are_checked_as_the_numbers_they_are():
    from metasparsity.data.tasks import segmentation_loss

    logits = torch.zeros(1, 200, 2, 2)
    labels = torch.full((1, 2, 2), 100, dtype=torch.int8)  # 200 wraps to -56 in int8
    assert torch.isfinite(segmentation_loss(logits, labels))
    assert torch.isfinite(segmentation_loss(torch.zeros(1, 300, 2, 2),
                                            torch.full((1, 2, 2), 254, dtype=torch.uint8)))
