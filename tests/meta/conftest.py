"""Fixtures shared by the meta tests: the float64 toy multi-task net and its channel groups
(a test file with a ``model`` of its own overrides them)."""

import pytest
import torch
from tests.toy_models import ToyMultiTaskNet

from metasparsity.sparsity import channel_groups


@pytest.fixture
def model():
    torch.manual_seed(0)
    return ToyMultiTaskNet().double()


@pytest.fixture
def layers(model):
    return channel_groups(model)
