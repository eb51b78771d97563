"""VSBC calibration (pyrovi.calibration): the symmetry test's math, exact and fitted
posteriors that pass, a biased guide that fails, argument errors, result arrays and plot."""

import dataclasses
import itertools
import warnings

import matplotlib.pyplot as plt
import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.distributions import constraints
from pyro.infer.autoguide import AutoNormal

from pyrovi.calibration import (
    CalibrationResult,
    calibrate,
    plot_calibration,
    posterior_probability,
    symmetry_test,
)
from pyrovi.calibration.stats import walk_exceedance
from pyrovi.errors import ConvergenceWarning, ModelError

Y = torch.zeros(10)  # only its shape matters: calibrate simulates the data
FAST = {"num_steps": 100, "lr": 0.1, "window": 50}  # easy posterior: few steps suffice


def normal_normal(y):
    """mu ~ N(0, 1), y_i ~ N(mu, 1): posterior N(sum(y) / (n + 1), 1 / (n + 1))."""
    mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    with pyro.plate("data", y.shape[0]):
        pyro.sample("y", dist.Normal(mu, 1.0), obs=y)


def normal_normal_sigma(y):
    """Normal-Normal with the noise scale a parameter, so that pyrovi.EM can fit it."""
    sigma = pyro.param("sigma", torch.tensor(1.0), constraint=constraints.positive)
    mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    with pyro.plate("data", y.shape[0]):
        pyro.sample("y", dist.Normal(mu, sigma), obs=y)


def hierarchical(y):
    """mu -> theta (one per group) -> y; linear-Gaussian, so EM's posterior is exact."""
    sigma = pyro.param("sigma", torch.tensor(1.0), constraint=constraints.positive)
    mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    with pyro.plate("groups", y.shape[-1]):
        theta = pyro.sample("theta", dist.Normal(mu, 1.0))
        with pyro.plate("rows", y.shape[0], dim=-2):
            pyro.sample("y", dist.Normal(theta, sigma), obs=y)


def positive_loc_guide(y):
    """A guide with a wrong constraint: its location cannot go below 0, so for every
    true mu < 0 the fit sits above the truth (a bias in one direction)."""
    loc = pyro.param("q_loc", torch.tensor(0.5), constraint=constraints.positive)
    scale = pyro.param("q_scale", torch.tensor(0.3), constraint=constraints.positive)
    pyro.sample("mu", dist.Normal(loc, scale))


def _quiet_calibrate(*args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # FAST fits stop at 100 steps
        return calibrate(*args, **kwargs)


# ------------------------------------------------------------------------------- the math
def test_statistic_is_yaos_ks_distance_between_p_and_one_minus_p():
    scipy_stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    for p in (rng.random(7), rng.random(60), rng.beta(2.0, 1.0, 150)):
        statistic, _ = symmetry_test(p)
        assert statistic == pytest.approx(scipy_stats.ks_2samp(p, 1 - p).statistic, abs=1e-12)


@pytest.mark.parametrize("n", [1, 4, 9, 12])
def test_walk_exceedance_matches_enumeration_of_all_paths(n):
    paths = np.array(list(itertools.product((-1, 1), repeat=n)))
    running_max = np.abs(np.cumsum(paths, axis=1)).max(axis=1)
    for level in range(0, n + 2):
        exact = float(np.mean(running_max >= level))
        assert walk_exceedance(n, level) == pytest.approx(exact, abs=1e-12)


def test_symmetry_test_holds_its_level_and_rejects_asymmetry():
    rng = np.random.default_rng(1)
    null = np.array([symmetry_test(rng.random(50))[1] for _ in range(2000)])
    # exact test: P(p-value <= 0.05) <= 0.05 under symmetry (binomial s.e. 0.005)
    assert np.mean(null <= 0.05) < 0.05 + 3 * 0.005
    assert np.mean(null <= 0.05) > 0.02  # and not absurdly conservative
    skewed = np.array([symmetry_test(rng.beta(2.0, 1.0, 50))[1] for _ in range(200)])
    assert np.mean(skewed <= 0.05) > 0.8


def test_posterior_probability_is_exactly_uniform_with_few_draws_and_ties():
    rng = np.random.default_rng(2)
    n = 40_000
    truth = rng.normal(size=n)
    p = posterior_probability(rng.normal(size=(3, n)), truth, rng)  # L = 3 draws only
    counts = np.histogram(p, bins=8, range=(0, 1))[0]
    chi2 = float(((counts - n / 8) ** 2 / (n / 8)).sum())
    assert chi2 < 24.3  # 99.9% quantile of chi-square with 7 degrees of freedom
    # a discrete latent: draws and truth from the same Bernoulli -> still uniform
    truth = rng.integers(0, 2, size=n).astype(float)
    p = posterior_probability(rng.integers(0, 2, size=(5, n)).astype(float), truth, rng)
    counts = np.histogram(p, bins=8, range=(0, 1))[0]
    assert float(((counts - n / 8) ** 2 / (n / 8)).sum()) < 24.3


# ------------------------------------------------------------------- calibrated vs biased
def test_exact_em_posterior_passes():
    result = calibrate(
        normal_normal_sigma, Y, guide="exact", num_simulations=100, num_draws=200, seed=0,
        progress=False,
    )
    assert result.guide == "em"
    assert result.pvalue["mu"] > 0.01
    assert result.passed(alpha=0.01) == {"mu": True}
    assert result.converged.all()


@pytest.mark.slow
def test_fullrank_guide_passes_on_conjugate_model():
    result = _quiet_calibrate(
        normal_normal, Y, guide="fullrank", num_simulations=40, num_draws=200, seed=0,
        progress=False, fit_kwargs=FAST,
    )
    assert result.pvalue["mu"] > 0.01
    assert result.passed(alpha=0.01) == {"mu": True}


@pytest.mark.slow
def test_guide_biased_in_one_direction_fails():
    result = _quiet_calibrate(
        normal_normal, Y, guide=positive_loc_guide, num_simulations=80, num_draws=200,
        seed=0, progress=False, fit_kwargs=FAST,
    )
    assert result.guide == "positive_loc_guide"
    assert result.pvalue["mu"] < 0.01
    assert result.passed(alpha=0.01) == {"mu": False}
    # the direction of the bias: the fit sits above a negative truth, so p piles up near 0
    p, truth = result.probabilities["mu"], result.truth["mu"]
    assert np.median(p[truth < -0.3]) < 0.1
    assert "FAILED" in result.summary(alpha=0.01)


# --------------------------------------------------------------------- arrays and export
@pytest.fixture(scope="module")
def hier_result():
    return calibrate(
        hierarchical, torch.zeros(4, 3), guide="exact", num_simulations=12, num_draws=50,
        seed=3, progress=False,
    )


def test_result_arrays_shapes_and_dims(hier_result):
    r = hier_result
    assert isinstance(r, CalibrationResult)
    assert r.sites == ("mu", "theta")
    assert r.probabilities["mu"].shape == (12,)
    assert r.probabilities["theta"].shape == (12, 3)
    assert r.truth["theta"].shape == (12, 3)
    assert r.statistic["theta"].shape == (3,) and r.pvalue["theta"].shape == (3,)
    assert r.statistic["mu"].shape == () and r.pvalue["mu"].shape == ()
    assert r.dims == {"mu": [], "theta": ["groups"]}
    for p in r.probabilities.values():
        assert np.all((p > 0) & (p < 1))
    for site in r.sites:  # the stored tests are the tests of the stored probabilities
        flat = r.probabilities[site].reshape(12, -1)
        expected = [symmetry_test(flat[:, k]) for k in range(flat.shape[1])]
        np.testing.assert_allclose(r.statistic[site].ravel(), [e[0] for e in expected])
        np.testing.assert_allclose(r.pvalue[site].ravel(), [e[1] for e in expected])
    assert set(r.passed()) == {"mu", "theta"}
    assert any("sigma" in note for note in r.notes)  # the empirical-Bayes note
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.num_draws = 3


def test_passed_uses_bonferroni_within_a_site(hier_result):
    r = dataclasses.replace(
        hier_result, pvalue={"mu": np.array(0.03), "theta": np.array([0.5, 0.02, 0.9])}
    )
    # theta has K = 3 components: it passes at alpha when every p-value > alpha / 3
    assert r.passed(0.05) == {"mu": False, "theta": True}  # 0.02 > 0.05 / 3
    assert r.passed(0.07) == {"mu": False, "theta": False}  # 0.02 < 0.07 / 3
    assert r.passed(0.01) == {"mu": True, "theta": True}
    with pytest.raises(ValueError, match="alpha must be a significance level in"):
        r.passed(1.5)


def test_to_xarray_and_arviz_dict(hier_result):
    az = pytest.importorskip("arviz")
    r = hier_result
    ds = r.to_xarray()
    assert ds["theta"].dims == ("simulation", "groups")
    assert ds["mu"].dims == ("simulation",)
    assert ds["theta_pvalue"].dims == ("groups",)
    np.testing.assert_array_equal(ds["theta"].values, r.probabilities["theta"])
    np.testing.assert_array_equal(ds["mu_truth"].values, r.truth["mu"])
    assert ds.attrs["guide"] == "em" and ds.attrs["num_draws"] == 50
    arrays = r.to_arviz_dict()
    assert arrays["theta"].shape == (1, 12, 3)
    np.testing.assert_array_equal(arrays["theta"][0], r.probabilities["theta"])
    from tests.arviz._lines import from_dict, group_names

    # the layout ArviZ's from_dict takes (spelled per line), and pyrovi's own container
    for idata in (from_dict({"posterior": arrays}, dims=r.dims), r.to_arviz()):
        assert group_names(idata) == ["posterior"]
        posterior = idata.posterior
        assert posterior["theta"].dims == ("chain", "draw", "groups")
        assert posterior["mu"].dims == ("chain", "draw")
        np.testing.assert_array_equal(posterior["theta"].values[0], r.probabilities["theta"])
        np.testing.assert_array_equal(posterior["mu"].values[0], r.probabilities["mu"])
        # an ArviZ function reads it: the mean over the 12 simulations
        mean = az.summary(idata, var_names=["mu"], kind="stats", round_to="none")["mean"]
        assert float(mean.iloc[0]) == pytest.approx(r.probabilities["mu"].mean(), rel=1e-6)
    attrs = r.to_arviz().posterior.attrs
    assert attrs["guide"] == "em" and attrs["num_draws"] == 50 and attrs["seed"] == 3


def test_same_seed_same_result_and_caller_rng_untouched():
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a = calibrate(normal_normal_sigma, Y, guide="exact", num_simulations=5, num_draws=20,
                  seed=7, progress=False)
    assert torch.equal(torch.get_rng_state(), before)
    b = calibrate(normal_normal_sigma, Y, guide="exact", num_simulations=5, num_draws=20,
                  seed=7, progress=False)
    np.testing.assert_array_equal(a.probabilities["mu"], b.probabilities["mu"])
    np.testing.assert_array_equal(a.truth["mu"], b.truth["mu"])
    # the truths are prior draws, not the placeholder data's posterior
    assert len(np.unique(a.truth["mu"])) == 5


def test_unconverged_fits_warn_once_and_are_recorded():
    with pytest.warns(ConvergenceWarning, match=r"2 of 2 calibration fits .* num_steps"):
        r = calibrate(normal_normal, Y, guide="meanfield", num_simulations=2, num_draws=10,
                      seed=0, progress=False, fit_kwargs={"num_steps": 5, "method": "sgd"})
    assert r.converged.tolist() == [False, False]


# ---------------------------------------------------------------------------- the plot
def test_plot_one_panel_per_site(hier_result):
    axes = plot_calibration(hier_result)
    assert len(axes) == 2
    assert [ax.get_title().split(":")[0] for ax in axes] == ["mu", "theta"]
    # the histogram covers every probability: density integrates to one
    patches = axes[1].patches
    assert sum(p.get_height() * p.get_width() for p in patches) == pytest.approx(1.0)
    fig, given = plt.subplots(1, 2)
    assert list(plot_calibration(hier_result, ax=given)) == list(given)
    with pytest.raises(ValueError, match="ax holds 1 axes but the result has 2 latent"):
        plot_calibration(hier_result, ax=given[0])
    with pytest.raises(TypeError, match="result must be a pyrovi CalibrationResult"):
        plot_calibration({"mu": np.zeros(3)})
    plt.close("all")


# -------------------------------------------------------------------------- bad input
def no_obs_model(y):
    pyro.sample("mu", dist.Normal(0.0, 1.0))


def no_latent_model(y):
    with pyro.plate("data", y.shape[0]):
        pyro.sample("y", dist.Normal(0.0, 1.0), obs=y)


def subsampled_model(y):
    mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    with pyro.plate("data", y.shape[0], subsample_size=2):
        pyro.sample("y", dist.Normal(mu, 1.0), obs=y[:2])


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"num_simulations": 1}, ValueError, r"num_simulations must be an int >= 2.*got 1"),
        ({"num_simulations": 2.5}, TypeError, "num_simulations must be a positive int"),
        ({"num_simulations": True}, TypeError, "num_simulations must be a positive int"),
        ({"num_draws": 0}, ValueError, "num_draws must be a positive int"),
        ({"guide": "fulrank"}, ValueError, "guide"),
        ({"guide": AutoNormal(normal_normal)}, TypeError, r"AutoGuide instance.*guide=AutoNormal"),
        ({"fit_kwargs": {"seed": 1}}, ValueError, "fit_kwargs sets 'seed'.*remove it"),
        ({"fit_kwargs": {"num_stepz": 1}}, TypeError, "fit_kwargs=.*refused by pyrovi.VI"),
        ({"fit_kwargs": [1]}, TypeError, "fit_kwargs must be a dict"),
        ({"fit_kwargs": {"num_steps": 0}}, ValueError, "num_steps must be a positive int"),
        ({"guide": "exact"}, ModelError, r"guide='exact'.*'normal_normal' has none.*fullrank"),
        ({"seed": "a"}, TypeError, "seed must be an int"),
    ],
)
def test_bad_arguments_are_refused_before_any_fit(kwargs, error, match, monkeypatch):
    import pyrovi.calibration.driver as driver

    def no_fit(*a, **k):
        raise AssertionError("a fit started before the arguments were checked")

    monkeypatch.setattr(driver.poutine, "uncondition", no_fit)
    with pytest.raises(error, match=match):
        calibrate(normal_normal, Y, progress=False, **kwargs)


@pytest.mark.parametrize(
    "model, match",
    [
        (no_obs_model, "model 'no_obs_model' has no observed site.*obs="),
        (no_latent_model, "model 'no_latent_model' has no latent sample site"),
        (subsampled_model, "model 'subsampled_model' subsamples plate 'data'"),
    ],
)
def test_unusable_models_are_refused_naming_them(model, match):
    with pytest.raises(ModelError, match=match):
        calibrate(model, Y, num_simulations=3, progress=False)


def test_a_failing_fit_says_which_simulation():
    def exploding_guide(y):
        pyro.sample("mu", dist.Normal(0.0, 1.0))
        raise RuntimeError("boom")

    with pytest.raises(ModelError, match="exploding_guide") as info:
        calibrate(normal_normal, Y, guide=exploding_guide, num_simulations=3, progress=False)
    notes = getattr(info.value, "__notes__", ["simulation 0 of pyrovi.calibrate"])
    assert any("simulation 0 of pyrovi.calibrate" in n for n in notes)
