"""Shared test set-up: one torch thread (the CI machine has two shared cores), quiet plots."""

import os

import matplotlib
import pyro
import pytest
import torch

matplotlib.use("Agg")
torch.set_num_threads(1)
# The compiled VI path traces its step once per fit and, by default, compiles it with
# torch.compile after 2,000 steps (2-8 s). The suite runs the traced step uncompiled;
# tests/fast/test_step.py compiles it explicitly once.
os.environ.setdefault("PYROVI_COMPILE", "0")


@pytest.fixture(autouse=True)
def _clean_pyro_state():
    """Each test starts with an empty global parameter store and float32 default dtype."""
    pyro.clear_param_store()
    dtype = torch.get_default_dtype()
    yield
    torch.set_default_dtype(dtype)
    pyro.clear_param_store()
