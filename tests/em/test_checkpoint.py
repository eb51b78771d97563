"""EM checkpoints: resume continues exactly; Ctrl-C returns the result so far."""

import numpy as np
import pytest
import torch

import pyrovi
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
    full = EM(gmm, num_iters=30, tol=0, seed=1, progress=False).run(x)
    EM(gmm, num_iters=12, tol=0, seed=1, progress=False, checkpoint=tmp_path / "em.ckpt",
       checkpoint_every=12).run(x)
    resumed = pyrovi.resume(tmp_path / "em.ckpt", num_steps=30).run(x)
    assert isinstance(pyrovi.resume(tmp_path / "em.ckpt"), EM)
    np.testing.assert_allclose(resumed.log_evidence_trace, full.log_evidence_trace, rtol=0, atol=1e-9)
    for name in full.params:
        torch.testing.assert_close(resumed.params[name], full.params[name], rtol=0, atol=1e-10)


def test_ctrl_c_during_em_returns_the_result_so_far(gmm, monkeypatch):
    x = _data()
    calls = {"n": 0}
    m_step = type(gmm).m_step

    def interrupted(self, data, stats):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return m_step(self, data, stats)

    monkeypatch.setattr(type(gmm), "m_step", interrupted)
    with pytest.warns(InterruptedFitWarning, match=r"EM was interrupted in restart 1/1 after 4 iterations"):
        result = EM(gmm, num_iters=50, tol=0, seed=1, progress=False).run(x)
    assert result.n_iter == 4
    assert len(result.log_evidence_trace) == 5
    assert np.isfinite(result.log_evidence)
    assert np.all(np.diff(result.log_evidence_trace) >= -1e-9)
