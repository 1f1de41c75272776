"""Shared fixtures for the unit tests."""

import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    """Run each test on one torch thread.

    The tests are thousands of small tensor operations: a second intra-op thread only adds
    overhead, and on a busy 2-core machine it stalls (single tests swung from 0.1 s to 9 s).
    """
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
