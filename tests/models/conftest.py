"""The model tests run torch on one thread (small tensors: more threads only add overhead and
contend with the other tests on a 2-core machine); the thread count is restored afterwards."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
