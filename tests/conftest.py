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
    """Each test starts with an empty global parameter store, float32 default dtype and
    seeded global RNGs: under pytest-xdist the order of tests on a worker changes from run to
    run, and a test drawing from an unseeded global RNG would see a different stream each time."""
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    dtype = torch.get_default_dtype()
    yield
    torch.set_default_dtype(dtype)
    pyro.clear_param_store()


# Tests that fail on the ArviZ 1.x line (`make test-py312`) because of code outside the
# ArviZ backend (the test itself or an example still uses an ArviZ 0.2x API). Each is marked
# xfail there (not strict: a fix shows as XPASS; then delete its entry here) with the cause
# and the fix. "norun" entries are not run at all: they fail only after minutes of work.
# The ArviZ export tests (tests/arviz) run and assert on both lines through
# tests/arviz/_lines.py, and so do the calibration tests and every example: both lists are
# empty now, kept for the next API change of either line.
_ARVIZ1_XFAIL: dict[str, str] = {}
_ARVIZ1_NORUN: dict[str, str] = {}


def pytest_collection_modifyitems(config, items):
    from pyrovi.arviz.backend import arviz_line

    if arviz_line() != 1:
        return
    for item in items:
        test = item.nodeid.split("[", 1)[0]
        if test in _ARVIZ1_XFAIL:
            item.add_marker(pytest.mark.xfail(reason=f"ArviZ 1.x: {_ARVIZ1_XFAIL[test]}"))
        elif test in _ARVIZ1_NORUN:
            item.add_marker(pytest.mark.xfail(reason=f"ArviZ 1.x: {_ARVIZ1_NORUN[test]}",
                                              run=False))
