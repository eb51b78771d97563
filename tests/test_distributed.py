"""Fits on 2 local gloo processes (pyrovi.distributed): distributed EM equals one process on
the full data, every rank returns the same result, a failing rank stops every rank with its
error named and rank 0's checkpoint resumes; data-parallel VI reaches the posterior of one
process and of the closed form."""

import numpy as np
import pytest
import torch
import torch.distributed as tdist

import pyrovi
from pyrovi.distributed import shard_indices
from pyrovi.em import EM, chunked, ppca_model
from tests import _distributed_workers as workers

pytestmark = pytest.mark.skipif(
    not (tdist.is_available() and tdist.is_gloo_available()),
    reason="torch.distributed with the gloo backend is not available",
)


def _load(path):
    return torch.load(path, weights_only=True)


@pytest.fixture
def f64():
    dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(dtype)


def test_shard_indices_cover_the_plate_once():
    parts = [shard_indices(10, r, 3) for r in range(3)]
    assert torch.equal(torch.cat(parts), torch.arange(10))
    assert [len(p) for p in parts] == [3, 3, 4]
    with pytest.raises(ValueError, match="size must be an int of at least the number of ranks"):
        shard_indices(1, 0, 2)


def test_distributed_em_on_2_ranks(tmp_path, f64):
    workers.run_ranks(workers.em_rank, 2, str(tmp_path), timeout=150)
    r0, r1 = _load(tmp_path / "em_rank0.pt"), _load(tmp_path / "em_rank1.pt")
    # every rank returns the same result, bit for bit
    assert r0.keys() == r1.keys()
    for k in r0:
        assert torch.equal(r0[k], r1[k]), k
    # the same log-evidence trace and parameters as one process on the full data
    x = workers.blobs()
    ref = EM(workers.gmm(), num_steps=15, tol=0, seed=1, progress=False).run(x)
    np.testing.assert_allclose(r0["trace"].numpy(), ref.log_evidence_trace, rtol=1e-6)
    assert float(r0["log_evidence"]) == pytest.approx(ref.log_evidence, rel=1e-6)
    for k in ("weights", "means", "covariances"):
        np.testing.assert_allclose(r0[k].numpy(), ref.params[k].numpy(), rtol=1e-6, atol=1e-9)
    ppca = EM(ppca_model(1), num_steps=10, tol=0, seed=2, progress=False).run(x)
    np.testing.assert_allclose(r0["ppca_trace"].numpy(), ppca.log_evidence_trace, rtol=1e-6)

    # rank 1 raised at iteration 3: it names its error, rank 0 names rank 1 and the error,
    # both keep the 3 completed iterations (no rank hung: run_ranks has a timeout)
    err0 = (tmp_path / "em_err0.txt").read_text().split("|")
    err1 = (tmp_path / "em_err1.txt").read_text().split("|")
    assert err1[:2] == ["FitError", "3"]
    assert "raised ValueError at iteration 3: bad rows in shard 1" in err1[2]
    assert err0[:2] == ["RankError", "3"]
    assert "rank 1 of 2 raised ValueError: bad rows in shard 1" in err0[2]
    # rank 0's checkpoint holds iteration 3 and resumes (here on one process, full data)
    path = tmp_path / "em.ckpt"
    assert pyrovi.checkpoint.load_checkpoint(path).step == 3
    fit = pyrovi.resume(path, num_steps=15)
    fit.progress = False
    resumed = fit.stream(chunked(x, 500))
    np.testing.assert_allclose(resumed.log_evidence_trace, r0["trace"].numpy(), rtol=1e-6)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::pyrovi.errors.ConvergenceWarning")
def test_data_parallel_vi_on_2_ranks_matches_one_process_and_the_closed_form(tmp_path, f64):
    workers.run_ranks(workers.vi_rank, 2, str(tmp_path), timeout=240)
    r0, r1 = _load(tmp_path / "vi_rank0.pt"), _load(tmp_path / "vi_rank1.pt")
    for k in r0:  # global parameters, trace, ELBO and draws: the same on every rank
        assert torch.equal(r0[k], r1[k]), k
    one = workers.vi_fit()
    d1 = one.sample(4000, seed=3)["w"]
    X, y = workers.regression()
    prec = torch.eye(2) / workers.PRIOR_SD**2 + X.T @ X / workers.NOISE_SD**2
    cov = torch.linalg.inv(prec)
    mean, sd = cov @ X.T @ y / workers.NOISE_SD**2, cov.diagonal().sqrt()
    draws = r0["draws"]
    # posterior means within 0.3 posterior sd of the closed form and 0.15 of one process
    # (Monte Carlo error of 4000 draws: 0.016 sd; the rest is SGD's final-iterate noise)
    assert torch.all((draws.mean(0) - mean).abs() < 0.3 * sd)
    assert torch.all((draws.mean(0) - d1.mean(0)).abs() < 0.15 * sd)
    # posterior sds within 20% of the closed form and 10% of one process
    assert torch.all((draws.std(0) / sd - 1).abs() < 0.2)
    assert torch.all((draws.std(0) / d1.std(0) - 1).abs() < 0.1)
    # DADVI (method="auto") would fit each shard alone: refused, saying what to do
    assert "data-parallel VI runs the stochastic-gradient path" in (
        tmp_path / "vi_refused0.txt").read_text()
    assert "Pass method='sgd'" in (tmp_path / "vi_refused1.txt").read_text()
    # the ELBO is the full-data one: within 4 standard errors of one process
    se = float(torch.hypot(r0["elbo_se"], torch.tensor(one.elbo_se)))
    assert abs(float(r0["elbo"]) - one.elbo) < 4 * se + 0.05
