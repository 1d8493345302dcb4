"""Micro budgets for end-to-end recipe tests (a few seconds each on one CPU thread)."""

from __future__ import annotations

import torch

from metasparsity.cli import main

# 32 px SynthScenes, ResNet-18 at width 0.125 (8 base channels), 8-channel heads.
MICRO = [
    "data.image_size=32", "data.train_size=32", "data.val_size=16", "data.test_size=16",
    "model.width=0.125", "model.head_channels=8", "model.aspp_rates=[1,2,3]",
    "train.batch_size=8", "train.eval_batch_size=16", "train.max_steps=4", "train.val_every=2",
    "train.log_every=1", "train.progress=false", "train.num_threads=1",
    "meta.steps=4", "meta.val_every=2", "meta.meta_batch=2", "meta.batch_size=4",
    "finetune.steps=4", "finetune.batch_size=8", "finetune.val_every=2",
]


def cli(*args: str) -> int:
    """``metasparsity ARGS`` in-process; argparse's own errors come back as their exit code."""
    try:
        return main([str(a) for a in args])
    except SystemExit as e:
        return int(e.code or 0)


def same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> list[str]:
    """Names whose tensors are not bit-identical (empty list: identical state dicts)."""
    assert a.keys() == b.keys()
    return [k for k in a if not torch.equal(a[k], b[k])]


def start_long_training(run, *extra: str, group: bool = False):
    """``python -m metasparsity train`` on MICRO with a near-endless budget in a subprocess,
    returned once it has logged 3 records (so that a signal lands mid-training); ``group``: in
    a process group of its own (with its loader workers), for ``os.killpg``."""
    import os
    import signal
    import subprocess
    import sys
    import time

    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    # A suite started in the background (`make test &`) inherits SIGINT ignored, and Python then
    # installs no Ctrl-C handler in the child: give the child the default, as a terminal would.
    proc = subprocess.Popen(
        [sys.executable, "-m", "metasparsity", "train", "--out", str(run), *MICRO,
         "train.max_steps=100000", "train.val_every=100000", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        start_new_session=group)
    log = run / "metrics.jsonl"
    deadline = time.time() + 300  # generous: a loaded machine starts Python and torch slowly
    while time.time() < deadline and proc.poll() is None:
        if log.is_file() and sum(1 for _ in log.open()) >= 3:
            return proc
        time.sleep(0.05)
    ended = proc.poll() is not None
    if not ended:
        proc.kill()
    _, err = proc.communicate()
    raise AssertionError(f"the training never logged 3 records ({'it ended' if ended else 'killed after 300 s'}, "
                         f"exit code {proc.returncode}):\n{err[-3000:]}")


def finish(proc, timeout: float = 120):
    """``proc.communicate(timeout)``; a child still running after it is killed (a training of
    100000 steps must not outlive a failed test)."""
    import subprocess

    try:
        return proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise


def interrupt_on_call(monkeypatch, module: str, k: int):
    """Make the recipe's k-th batch transfer raise KeyboardInterrupt (Ctrl-C mid-step)."""
    import importlib

    mod = importlib.import_module(module)
    real = mod.to_device
    calls = {"n": 0}

    def flaky(batch, device):
        calls["n"] += 1
        if calls["n"] == k:
            raise KeyboardInterrupt
        return real(batch, device)

    monkeypatch.setattr(mod, "to_device", flaky)
