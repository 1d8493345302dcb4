import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    """Recipe tests run on one thread: faster on a shared 2-core machine, and deterministic."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
