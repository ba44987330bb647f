"""One intra-op thread for these tests: the tensors are tiny, and on a shared 2-core machine
OpenMP threads waiting on each other cost far more than they save."""
import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
