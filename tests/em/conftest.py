"""Fixtures of the EM tests: one thread, float64 by default (parity tests need it)."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _float64_one_thread():
    dtype, threads = torch.get_default_dtype(), torch.get_num_threads()
    torch.set_default_dtype(torch.float64)
    torch.set_num_threads(1)
    yield
    torch.set_default_dtype(dtype)
    torch.set_num_threads(threads)


@pytest.fixture
def blobs():
    """Three well-separated 2-D Gaussian blobs, 300 points."""
    g = torch.Generator().manual_seed(0)
    parts = [
        torch.randn(100, 2, generator=g, dtype=torch.float64) + torch.tensor([4.0, 0.0]),
        0.5 * torch.randn(100, 2, generator=g, dtype=torch.float64),
        torch.randn(100, 2, generator=g, dtype=torch.float64)
        @ torch.tensor([[1.0, 0.5], [0.0, 0.7]])
        + torch.tensor([0.0, 5.0]),
    ]
    return torch.cat(parts)
