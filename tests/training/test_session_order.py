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
