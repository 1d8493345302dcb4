"""Test-wide settings: one CPU thread per test process, deterministic seeds.

The models in the tests are tiny: a second intra-op thread costs more in synchronisation than
it gains, and on a loaded 2-core machine it can slow a step down by an order of magnitude.
Recipes started by the tests read ``METASPARSITY_NUM_THREADS`` (see ``utils.device.set_threads``).
"""

import os

import pytest
import torch

os.environ.setdefault("METASPARSITY_NUM_THREADS", "1")
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
