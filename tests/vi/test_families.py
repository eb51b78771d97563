"""Every guide family against closed-form posteriors and evidence."""

import math

import pytest
import torch

import pyrovi
from tests.vi import models

FAMILIES = ["meanfield", "lowrank", "fullrank", "delta", "laplace"]


@pytest.fixture(scope="module")
def y():
    return models.normal_normal_data()


@pytest.fixture(scope="module")
def fits(y):
    return {
        fam: pyrovi.VI(models.normal_normal, fam, seed=0, progress=False).run(y)
        for fam in FAMILIES
    }


@pytest.mark.parametrize("family", ["meanfield", "lowrank", "fullrank", "laplace"])
def test_gaussian_families_match_the_conjugate_posterior(fits, y, family):
    mean, sd = models.normal_normal_posterior(y)
    result = fits[family]
    draws = result.sample(4000, seed=1)["mu"]
    # 4,000 draws: MC error of the mean ~ sd/63, of the sd ~ 1.1%
    assert float(draws.mean()) == pytest.approx(mean, abs=0.06 * sd)
    assert float(draws.std()) == pytest.approx(sd, rel=0.06)
    assert float(result.median()["mu"]) == pytest.approx(mean, abs=0.05 * sd)


def test_delta_family_finds_the_map(fits, y):
    mean, _ = models.normal_normal_posterior(y)  # Gaussian posterior: MAP == mean
    assert float(fits["delta"].params["AutoDelta.mu"]) == pytest.approx(mean, abs=1e-3)


@pytest.mark.parametrize("family", ["meanfield", "lowrank", "fullrank", "laplace"])
def test_elbo_never_exceeds_the_exact_log_evidence(fits, y, family):
    log_ev = models.normal_normal_evidence(y)
    result = fits[family]
    assert result.elbo <= log_ev + 3 * result.elbo_se + 1e-6
    # with a Gaussian posterior every Gaussian family can reach it: the gap is tiny
    assert log_ev - result.elbo < 0.05


def test_result_fields(fits):
    result = fits["fullrank"]
    assert result.family == "fullrank"
    assert result.converged
    assert result.num_steps == len(result.elbo_trace)
    assert result.elbo_trace.dtype.name == "float64"
    assert result.elbo_particles == 1000
    assert math.isfinite(result.elbo_se) and result.elbo_se > 0
    assert result.wall_time > 0
    assert set(result.params) == {
        "AutoMultivariateNormal.loc",
        "AutoMultivariateNormal.scale",
        "AutoMultivariateNormal.scale_tril",
    }
    assert all(not p.requires_grad for p in result.params.values())
    with pytest.raises(dataclasses_error()):
        result.elbo = 0.0


def dataclasses_error():
    import dataclasses

    return dataclasses.FrozenInstanceError


def test_quantiles_match_the_normal_quantiles(fits, y):
    mean, sd = models.normal_normal_posterior(y)
    q = fits["meanfield"].quantiles([0.05, 0.5, 0.95])["mu"]
    expected = torch.tensor([mean - 1.6449 * sd, mean, mean + 1.6449 * sd])
    assert torch.allclose(q.double().reshape(-1), expected.double(), atol=0.05 * sd)


def test_predictive_has_the_posterior_predictive_spread(fits, y):
    mean, sd = models.normal_normal_posterior(y)
    pred = fits["fullrank"].predictive(4000, y, seed=2)
    assert pred["y"].shape == (4000, len(y))
    # y_new ~ N(mean, sd^2 + noise^2)
    assert float(pred["y"][:, 0].std()) == pytest.approx(
        math.sqrt(sd**2 + models.NOISE**2), rel=0.06
    )


def test_fullrank_beats_meanfield_on_a_correlated_posterior():
    X, y = models.regression_data()
    mean, cov = models.regression_posterior(X, y)
    log_ev = models.regression_evidence(X, y)
    mf = pyrovi.VI(models.regression, "meanfield", seed=0, progress=False).run(X, y)
    fr = pyrovi.VI(models.regression, "fullrank", seed=0, progress=False).run(X, y)
    assert fr.elbo > mf.elbo + 3 * math.hypot(fr.elbo_se, mf.elbo_se)
    assert fr.elbo <= log_ev + 3 * fr.elbo_se
    # the meanfield optimum has the diagonal of the precision: its ELBO gap is closed form
    prec = torch.linalg.inv(cov)
    q_var = 1 / prec.diagonal()
    kl = 0.5 * (
        (prec.diagonal() * q_var).sum() - 2 + torch.logdet(cov) - torch.log(q_var).sum()
    )
    assert mf.elbo == pytest.approx(log_ev - float(kl), abs=0.1)
    draws = fr.sample(4000, seed=3)["w"].double()
    corr = torch.corrcoef(draws.T)[0, 1]
    exact_corr = cov[0, 1] / cov.diagonal().sqrt().prod()
    assert float(exact_corr) < -0.5  # the test model really is correlated
    assert float(corr) == pytest.approx(float(exact_corr), abs=0.04)
    assert torch.allclose(draws.mean(0), mean, atol=0.05 * float(cov.diagonal().sqrt().min()) + 0.01)


def test_every_registered_family_is_checked_here():
    """A family added to the registry gets the closed-form checks above."""
    assert tuple(FAMILIES) == pyrovi.FAMILIES
