"""Fixtures of the compiled-path tests: fits of one model by both backends, cached."""

from __future__ import annotations

import pytest

import pyrovi
from tests.fast.models import MODELS, data

#: Settings that converge in well under 1,000 steps on the test models, so that the SVI
#: reference fits stay cheap; both backends get the same ones.  These tests compare the
#: stochastic-gradient loops of the two backends, so they ask for method="sgd" (the default
#: would fit the Gaussian families by DADVI).
FAST = dict(window=50, tol=1e-3, num_particles=8, progress=False, elbo_particles=2000,
            method="sgd")


def fit(model_name: str, family: str, backend: str, seed: int = 0, **kwargs):
    """Fit a test model with one backend."""
    options = dict(FAST, **kwargs)
    vi = pyrovi.VI(MODELS[model_name], family, backend=backend, seed=seed, **options)
    return vi.run(*data(model_name))


_CACHE: dict = {}


@pytest.fixture
def fit_pair():
    """``fit_pair(model, family)`` -> (compiled result, SVI result), computed once."""

    def get(model_name: str, family: str):
        key = (model_name, family)
        if key not in _CACHE:
            _CACHE[key] = (
                fit(model_name, family, "compiled"),
                fit(model_name, family, "svi"),
            )
        return _CACHE[key]

    return get
