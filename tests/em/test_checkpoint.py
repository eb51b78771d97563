"""EM checkpoints: resume continues exactly; Ctrl-C returns the result so far."""

import warnings

import numpy as np
import pytest
import torch

import pyrovi
import pyrovi.checkpoint
from pyrovi.em import EM, gaussian_mixture_model
from pyrovi.errors import InterruptedFitWarning


def _data():
    g = torch.Generator().manual_seed(0)
    centers = torch.tensor([[-3.0, 0.0], [3.0, 1.0], [0.0, 4.0]], dtype=torch.float64)
    idx = torch.randint(0, 3, (300,), generator=g)
    return centers[idx] + torch.randn(300, 2, generator=g, dtype=torch.float64)


@pytest.fixture(scope="module")
def gmm():
    return gaussian_mixture_model(3, covariance_type="full")


def test_em_resumed_from_a_checkpoint_matches_the_uninterrupted_fit(tmp_path, gmm):
    x = _data()
    full = EM(gmm, num_steps=30, tol=0, seed=1, progress=False).run(x)
    EM(gmm, num_steps=12, tol=0, seed=1, progress=False, checkpoint=tmp_path / "em.ckpt",
       checkpoint_every=12).run(x)
    resumed = pyrovi.resume(tmp_path / "em.ckpt", num_steps=30).run(x)
    assert isinstance(pyrovi.resume(tmp_path / "em.ckpt"), EM)
    np.testing.assert_allclose(resumed.log_evidence_trace, full.log_evidence_trace, rtol=0, atol=1e-9)
    for name in full.params:
        torch.testing.assert_close(resumed.params[name], full.params[name], rtol=0, atol=1e-10)


def _interrupt_m_step(gmm, monkeypatch, at_calls):
    """Make the closed-form M-step raise KeyboardInterrupt at the given (1-based) calls."""
    calls = {"n": 0}
    m_step = type(gmm).m_step

    def interrupted(self, data, stats):
        calls["n"] += 1
        if calls["n"] in at_calls:
            raise KeyboardInterrupt
        return m_step(self, data, stats)

    monkeypatch.setattr(type(gmm), "m_step", interrupted)


def test_ctrl_c_during_em_returns_the_result_so_far(gmm, monkeypatch):
    """Ctrl-C in the fifth M-step: four iterations completed, one trace entry each; the log
    evidence is that of the parameters the fit stopped at (the fifth E-step's)."""
    x = _data()
    full = EM(gmm, num_steps=10, tol=0, seed=1, progress=False).run(x)
    _interrupt_m_step(gmm, monkeypatch, {5})
    with pytest.warns(InterruptedFitWarning, match=r"EM was interrupted in restart 1/1 after 4 iterations"):
        result = EM(gmm, num_steps=50, tol=0, seed=1, progress=False).run(x)
    assert result.num_steps == 4
    assert len(result.log_evidence_trace) == result.num_steps
    np.testing.assert_array_equal(result.log_evidence_trace, full.log_evidence_trace[:4])
    assert result.log_evidence == full.log_evidence_trace[4]
    assert np.all(np.diff(result.log_evidence_trace) >= -1e-9)


def test_em_resumed_after_ctrl_c_matches_the_uninterrupted_fit(tmp_path, gmm, monkeypatch):
    """The checkpoint written on Ctrl-C holds the completed iterations only, so resuming
    it repeats none of them."""
    x = _data()
    full = EM(gmm, num_steps=12, tol=0, seed=1, progress=False).run(x)
    path = tmp_path / "em.ckpt"
    _interrupt_m_step(gmm, monkeypatch, {5})
    with pytest.warns(InterruptedFitWarning, match=r"after 4 iterations.*checkpoint .* written"):
        EM(gmm, num_steps=12, tol=0, seed=1, progress=False, checkpoint=path,
           checkpoint_every=100).run(x)
    saved = pyrovi.checkpoint.load_checkpoint(path)
    assert saved.step == len(saved.trace) == 4
    resumed = pyrovi.resume(path).run(x)
    assert resumed.num_steps == len(resumed.log_evidence_trace) == 12
    np.testing.assert_allclose(resumed.log_evidence_trace, full.log_evidence_trace, rtol=0,
                               atol=1e-9)


def test_a_second_run_after_ctrl_c_is_a_full_independent_run(gmm, monkeypatch):
    """The EM object holds configuration only: an interrupted run leaves nothing behind."""
    x = _data()
    config = dict(num_steps=15, tol=0, num_inits=3, seed=1, progress=False)
    reference = EM(gmm, **config).run(x)
    _interrupt_m_step(gmm, monkeypatch, {3})
    em = EM(gmm, **config)
    with pytest.warns(InterruptedFitWarning, match=r"restart 1/3 after 2 iterations"):
        first = em.run(x)
    assert len(first.log_evidence_inits) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error", InterruptedFitWarning)
        second = em.run(x)
    assert len(second.log_evidence_inits) == 3
    assert second.log_evidence_inits == reference.log_evidence_inits
    assert second.num_steps == len(second.log_evidence_trace) == 15
