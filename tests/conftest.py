"""Shared test set-up: one torch thread (the CI machine has two shared cores), quiet plots."""

import matplotlib
import pyro
import pytest
import torch

matplotlib.use("Agg")
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _clean_pyro_state():
    """Each test starts with an empty global parameter store and float32 default dtype."""
    pyro.clear_param_store()
    dtype = torch.get_default_dtype()
    yield
    torch.set_default_dtype(dtype)
    pyro.clear_param_store()
