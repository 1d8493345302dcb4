"""Test-wide settings: one CPU thread per test process, deterministic seeds.

The property tests (Hypothesis) draw the same examples on every run (``derandomize``, no example
database), so that the suite passes or fails alike from every clone; ``HYPOTHESIS_PROFILE=explore``
draws new ones, for a developer hunting bugs.

The models in the tests are tiny: a second intra-op thread costs more in synchronisation than
it gains, and on a loaded 2-core machine it can slow a step down by an order of magnitude.
Recipes started by the tests read ``METASPARSITY_NUM_THREADS`` (see ``utils.env.env_num_threads``).
"""

import os

import pytest
import torch
from hypothesis import settings

os.environ.setdefault("METASPARSITY_NUM_THREADS", "1")
torch.set_num_threads(1)

settings.register_profile("ci", derandomize=True, database=None)
settings.register_profile("explore", database=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
