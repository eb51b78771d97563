"""EM keeps its promises on awkward inputs (issue 16): a monotone log evidence with fewer
observations than features, a result on every failure after the first iteration, and an
exact continuation after Ctrl-C."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import pyrovi
from pyrovi.em import factor_analysis_model, ppca_model
from pyrovi.em.gmm import GaussianMixtureModel
from pyrovi.errors import FitError, InterruptedFitWarning


@pytest.mark.parametrize("make", [factor_analysis_model, ppca_model])
@pytest.mark.parametrize("n, d, k", [(5, 30, 3), (8, 50, 5), (12, 40, 3)])
@pytest.mark.parametrize("scale", [1e-3, 1e4])
def test_factor_analysis_with_fewer_observations_than_features_is_monotone(make, n, d, k, scale):
    g = torch.Generator().manual_seed(n)
    X = (torch.randn(n, 3, generator=g, dtype=torch.float64)
         @ torch.randn(3, d, generator=g, dtype=torch.float64)
         + 0.1 * torch.randn(n, d, generator=g, dtype=torch.float64)) * scale
    result = pyrovi.EM(make(k), num_steps=200, tol=0, seed=0, progress=False).run(X)
    trace = result.log_evidence_trace
    assert np.all(np.isfinite(trace))
    assert np.all(np.diff(trace) >= -1e-9 * np.abs(trace[1:])), np.diff(trace).min()


@pytest.mark.parametrize("make", [factor_analysis_model, ppca_model])
def test_factor_analysis_that_would_reproduce_the_data_is_refused(make):
    X = torch.randn(5, 30, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"n_components >= N - 1 .*Use n_components <= 3"):
        pyrovi.EM(make(4), progress=False).run(X)


class FailingFinalEStep(GaussianMixtureModel):
    """A mixture whose E-step fails once the iterations are done (the final E-step)."""

    calls = 0
    fail_at = 6

    def e_step(self, data, params):
        type(self).calls += 1
        if type(self).calls == self.fail_at:
            raise RuntimeError("the final E-step failed")
        return super().e_step(data, params)


def test_a_failure_in_the_final_e_step_carries_the_result():
    FailingFinalEStep.calls = 0
    X = torch.randn(40, 2, dtype=torch.float64)
    with pytest.raises(FitError, match=r"raised RuntimeError at iteration 5") as info:
        pyrovi.EM(FailingFinalEStep(2), num_steps=5, tol=0, seed=0, progress=False).run(X)
    assert info.value.result is not None
    assert info.value.result.num_steps == 5
    assert len(info.value.result.log_evidence_trace) == 5


class NoisyMixture(GaussianMixtureModel):
    """A mixture whose M-step draws random numbers (as a stochastic M-step would), and
    that is interrupted (Ctrl-C) after drawing them at M-step ``interrupt_at``."""

    calls = 0
    interrupt_at = None

    def m_step(self, data, stats):
        params = super().m_step(data, stats)
        params["means"] = params["means"] + 1e-3 * torch.randn_like(params["means"])
        type(self).calls += 1
        if type(self).calls == type(self).interrupt_at:
            raise KeyboardInterrupt
        return params


def test_em_resumed_after_ctrl_c_is_bit_identical(tmp_path):
    g = torch.Generator().manual_seed(0)
    X = torch.cat([torch.randn(30, 2, generator=g, dtype=torch.float64) + 3,
                   torch.randn(30, 2, generator=g, dtype=torch.float64) - 3])
    config = dict(num_steps=12, tol=0, seed=1, progress=False, checkpoint_every=100)
    NoisyMixture.calls, NoisyMixture.interrupt_at = 0, None
    full = pyrovi.EM(NoisyMixture(2), checkpoint=tmp_path / "full.ckpt", **config).run(X)
    NoisyMixture.calls, NoisyMixture.interrupt_at = 0, 7
    path = tmp_path / "run.ckpt"
    with pytest.warns(InterruptedFitWarning):
        pyrovi.EM(NoisyMixture(2), checkpoint=path, **config).run(X)
    NoisyMixture.interrupt_at = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        resumed = pyrovi.resume(path).run(X)
    np.testing.assert_array_equal(full.log_evidence_trace, resumed.log_evidence_trace)
    for name in full.params:
        assert torch.equal(full.params[name], resumed.params[name]), name
