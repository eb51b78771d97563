"""Findings of issue 16 in the VI loop, the export and the diagnostics: a failing final
estimate keeps the result, Pyro's validation errors on NaN parameters are skipped steps,
Ctrl-C resumes bit-identically, an explicit seed leaves the caller's random state alone,
and scope() hands out copies."""

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch

import pyrovi
import pyrovi.vi.fit as fit_module
from pyrovi.errors import FitError, InterruptedFitWarning
from tests.vi import models

FAST = dict(seed=0, num_steps=200, progress=False, backend="svi")


class Interrupting:
    """normal_normal, with Ctrl-C inside step `at` after the particles were drawn."""
    def __init__(self, at):
        self.at, self.calls = at, 0
    def __call__(self, y):
        self.calls += 1
        models.normal_normal(y)
        if self.calls == self.at:
            raise KeyboardInterrupt


@pytest.mark.filterwarnings("ignore::pyrovi.errors.ConvergenceWarning")
def test_ctrl_c_resume_is_bit_identical(tmp_path):
    y = models.normal_normal_data()
    full = pyrovi.VI(models.normal_normal, checkpoint=tmp_path / "f.ckpt", **FAST).run(y)
    # calls: 1 inspect + a few checks ...; interrupt well inside training
    model = Interrupting(60)
    with pytest.warns(InterruptedFitWarning):
        pyrovi.VI(model, checkpoint=tmp_path / "r.ckpt", **FAST).run(y)
    resumed = pyrovi.resume(tmp_path / "r.ckpt", model=models.normal_normal).run(y)
    np.testing.assert_array_equal(full.elbo_trace, resumed.elbo_trace)


@pytest.mark.filterwarnings("ignore::pyrovi.errors.ConvergenceWarning")
def test_final_estimate_failure_carries_result(monkeypatch):
    def boom(*a, **k):
        raise RuntimeError("final estimate failed")
    monkeypatch.setattr(fit_module, "estimate_elbo", boom)
    y = models.normal_normal_data()
    with pytest.raises(FitError, match="final ELBO estimate raised RuntimeError") as info:
        pyrovi.VI(models.normal_normal, **FAST).run(y)
    assert info.value.result is not None and info.value.result.num_steps == 200


CALLS = [0]


def nan_at(y):
    CALLS[0] += 1
    mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    scale = torch.tensor(float("nan") if CALLS[0] == 50 else 1.0)
    with pyro.plate("data", y.shape[0]):
        pyro.sample("y", dist.Normal(mu, scale), obs=y)


@pytest.mark.filterwarnings("ignore::pyrovi.errors.ConvergenceWarning")
def test_nan_parameter_with_validation_is_skipped():
    y = models.normal_normal_data()
    CALLS[0] = 0
    with pyro.validation_enabled(True):  # Pyro's default
        r = pyrovi.VI(nan_at, vectorize_particles=False, num_particles=1, **FAST).run(y)
    assert r.num_skipped > 0


@pytest.fixture(scope="module")
def fitted():
    X, y = models.regression_data()
    return pyrovi.VI(models.regression, seed=0, num_steps=100, progress=False).run(X, y)


def test_to_arviz_with_a_seed_leaves_the_global_rng_alone(fitted):
    state = torch.get_rng_state()
    fitted.to_arviz(20, seed=1)
    assert torch.equal(state, torch.get_rng_state())


def test_diagnose_with_a_seed_leaves_the_global_rng_alone(fitted):
    state = torch.get_rng_state()
    pyrovi.diagnose(fitted, num_particles=50, seed=1, evidence="importance")
    assert torch.equal(state, torch.get_rng_state())


def test_an_in_place_edit_inside_scope_does_not_change_the_result(fitted):
    name = next(iter(fitted.param_state["params"]))
    before = fitted.param_state["params"][name].clone()
    with fitted.scope(), torch.no_grad():
        pyro.get_param_store()[name].unconstrained().add_(1.0)
    assert torch.equal(fitted.param_state["params"][name], before)
