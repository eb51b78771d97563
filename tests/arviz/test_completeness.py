"""Issue 13: what the export holds beyond the latent draws, and that ArviZ's tools take it.

Deterministic sites, fitted parameters, the marginal log-likelihood of summed-out discrete
latents, several chains, ``az.concat`` / ``to_dataframe`` / ``az.extract``, plain
attributes, ``predictions``, importance-corrected LOO, reserved names, subsampled and
sequential plates.
"""

import math
import warnings

import arviz as az
import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
import xarray as xr

import pyrovi
from pyrovi.arviz import loo as pyrovi_loo
from pyrovi.arviz import to_arviz
from pyrovi.arviz.attrs import JSON_PREFIX, MAX_DEPTH, decode_attrs, encode_attrs
from pyrovi.errors import ConvergenceWarning, ModelWarning, PyroviError
from pyrovi.models import eight_schools_noncentered

from ._lines import (
    LINE,
    compare,
    compare_column,
    concat_chains,
    elpd,
    extract,
    group_names,
    p_loo,
    pareto_k,
    to_dataframe,
)
from .conftest import SIGMA, Y


def _quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kwargs)


@pytest.fixture(scope="module")
def schools_nc():
    """The shipped non-centred eight schools (``theta`` a deterministic site)."""
    return _quiet(
        pyrovi.VI(eight_schools_noncentered, "meanfield", seed=0, progress=False,
                  num_steps=300).run, SIGMA, Y,
    )


@pytest.fixture(scope="module")
def gmm():
    """EM on two well-separated 2-D clusters."""
    from pyrovi.em import gaussian_mixture_model

    g = torch.Generator().manual_seed(0)
    x = torch.cat([
        torch.randn(60, 2, generator=g, dtype=torch.float64) * 0.5 - 3.0,
        torch.randn(40, 2, generator=g, dtype=torch.float64) * 0.7 + 3.0,
    ])
    result = _quiet(pyrovi.EM(gaussian_mixture_model(2), seed=0, progress=False).run, x)
    return result, x


# ------------------------------------------------------------------ 1. deterministic sites
def test_predictive_of_a_deterministic_site_in_a_plate(schools_nc):
    draws = schools_nc.predictive(5, seed=0)
    assert draws["theta"].shape == (5, 8) and draws["obs"].shape == (5, 8)
    torch.testing.assert_close(draws["theta"], draws["mu"][:, None] + draws["tau"][:, None]
                               * draws["eta"])


def test_deterministic_sites_go_to_the_posterior(schools_nc):
    idata = to_arviz(schools_nc, 400, prior=True)
    post = idata.posterior
    assert post["theta"].dims == ("chain", "draw", "schools")
    np.testing.assert_allclose(post["theta"], post["mu"] + post["tau"] * post["eta"],
                               rtol=1e-6, atol=1e-6)
    assert set(idata.posterior_predictive.data_vars) == {"obs"}
    assert idata.posterior_predictive["obs"].shape[2:] == idata.observed_data["obs"].shape
    assert idata.log_likelihood["obs"].shape[2:] == idata.observed_data["obs"].shape
    assert idata.prior["theta"].shape == (4, 100, 8)
    prior = idata.prior
    np.testing.assert_allclose(prior["theta"], prior["mu"] + prior["tau"] * prior["eta"],
                               rtol=1e-5, atol=1e-5)


def residual_model(y):
    mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
    with pyro.plate("data", y.shape[0]):
        obs = pyro.sample("obs", dist.Normal(mu, 1.0), obs=y)
        pyro.deterministic("resid", obs - mu)


def test_a_deterministic_of_the_data_is_also_predicted():
    y = torch.linspace(-1.0, 1.0, 6)
    fit = _quiet(pyrovi.VI(residual_model, seed=0, progress=False, num_steps=50).run, y)
    idata = to_arviz(fit, 40)
    post, pp = idata.posterior, idata.posterior_predictive
    np.testing.assert_allclose(post["resid"], y.numpy() - post["mu"].values[..., None],
                               atol=1e-6)  # the real data
    np.testing.assert_allclose(pp["resid"], pp["obs"] - post["mu"], atol=1e-6)  # replicated


# ------------------------------------------------------------------ 2. fitted parameters
def test_em_parameters_read_back_equal_the_result(gmm):
    result, _ = gmm
    idata = result.to_arviz(200)
    params = idata.fitted_params
    assert set(params.data_vars) == set(result.params)
    for name, value in result.params.items():
        assert params[name].dims[0] == "chain"
        for chain in range(params.sizes["chain"]):
            np.testing.assert_array_equal(params[name].sel(chain=chain), value.numpy())


def test_em_parameters_read_back_from_netcdf_equal_the_result(gmm, tmp_path):
    result, _ = gmm
    pyrovi.save_netcdf(result.to_arviz(40), tmp_path / "em.nc")
    back = pyrovi.load_netcdf(tmp_path / "em.nc")
    assert "fitted_params" in group_names(back)
    for name, value in result.params.items():
        stored = back.fitted_params[name]
        assert stored.dtype == value.numpy().dtype
        for chain in range(stored.sizes["chain"]):
            np.testing.assert_array_equal(stored.sel(chain=chain), value.numpy())


def test_vi_exports_the_model_params_not_the_guide_params():
    def model(x):
        loc = pyro.param("loc", torch.tensor(0.0))
        z = pyro.sample("z", dist.Normal(loc, 1.0))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("obs", dist.Normal(z, 1.0), obs=x)

    fit = _quiet(pyrovi.VI(model, seed=0, progress=False, num_steps=50).run,
                 torch.linspace(0.0, 2.0, 10))
    params = to_arviz(fit, 40).fitted_params
    assert list(params.data_vars) == ["loc"]
    np.testing.assert_allclose(params["loc"].sel(chain=0), fit.params["loc"].numpy())


# ------------------------------------------------------------------ 3. marginal log-likelihood
def test_em_mixture_marginal_log_likelihood_is_the_mixture_density(gmm):
    result, x = gmm
    idata = result.to_arviz(200)
    ll = idata.log_likelihood
    assert ll.attrs["log_likelihood"] == "marginal" and ll.attrs["summed_out"] == ["assignment"]
    p = result.params
    comp = dist.MultivariateNormal(p["means"], covariance_matrix=p["covariances"])
    by_hand = torch.logsumexp(p["weights"].log() + comp.log_prob(x[:, None, :]), dim=-1)
    np.testing.assert_allclose(ll["obs"].values, np.broadcast_to(by_hand.numpy(), (4, 50, 100)),
                               rtol=1e-6)
    # EM's parameters are point estimates: the marginal is the same at every draw, and sums
    # to the log evidence
    assert float(by_hand.sum()) == pytest.approx(result.log_evidence, rel=1e-6)


@pytest.mark.slow
def test_bayesian_mixture_marginal_loo_has_good_k():
    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(30, generator=g) - 4.0, torch.randn(30, generator=g) + 4.0])

    def model(x):
        loc = pyro.sample("loc", dist.Normal(torch.tensor([-1.0, 1.0]), 5.0).to_event(1))
        with pyro.plate("data", x.shape[0]):
            k = pyro.sample("k", dist.Categorical(torch.tensor([0.5, 0.5])))
            pyro.sample("obs", dist.Normal(loc[k], 1.0), obs=x)

    result = _quiet(pyrovi.VI(model, "fullrank", seed=0, progress=False, num_steps=200).run, x)
    idata = to_arviz(result, 160, posterior_predictive=False)
    loo = _quiet(az.loo, idata, pointwise=True)
    assert float(loo.pareto_k.max()) <= 0.7
    conditional = to_arviz(result, 8, posterior_predictive=False,
                           log_likelihood="conditional")
    assert conditional.log_likelihood.attrs["log_likelihood"] == "conditional"


def mixture(x):
    loc = pyro.sample("loc", dist.Normal(0.0, 5.0).expand([2]).to_event(1))
    with pyro.plate("data", x.shape[0]):
        k = pyro.sample("k", dist.Categorical(torch.tensor([0.3, 0.7])))
        pyro.sample("obs", dist.Normal(loc[k], 1.0), obs=x)


def test_vi_enumerated_marginal_log_likelihood():
    x = torch.tensor([-2.0, -1.5, 2.0, 2.5, 3.0])
    result = _quiet(pyrovi.VI(mixture, "meanfield", seed=0, progress=False, num_steps=5).run, x)
    idata = to_arviz(result, 16)
    assert idata.log_likelihood.attrs["log_likelihood"] == "marginal"
    loc = torch.as_tensor(idata.posterior["loc"].values.reshape(16, 2))
    comp = torch.log(torch.tensor([0.3, 0.7])) + dist.Normal(loc[:, None, :], 1.0).log_prob(
        x[None, :, None]
    )
    np.testing.assert_allclose(idata.log_likelihood["obs"].values.reshape(16, 5),
                               comp.logsumexp(-1), rtol=1e-5)
    # its sum over the data is lp less the prior of loc
    prior = dist.Normal(0.0, 5.0).log_prob(loc).sum(-1)
    np.testing.assert_allclose(idata.log_likelihood["obs"].values.reshape(16, 5).sum(-1),
                               idata.sample_stats["lp"].values.reshape(16) - prior.numpy(),
                               rtol=1e-5)


# ------------------------------------------------------------------ 4. ArviZ's tools
@pytest.fixture(scope="module")
def two_exports(meanfield, fullrank):
    return to_arviz(meanfield, 400), to_arviz(fullrank, 400)


def test_concat_along_chain(two_exports):
    mf, fr = two_exports
    both = concat_chains(mf, fr)  # az.concat on ArviZ 0.2x, xarray.concat per group on 1.x
    assert group_names(both) == group_names(mf)
    assert both.posterior.sizes["chain"] == 8
    assert both.vi_trace["elbo"].sizes["chain"] == 8
    np.testing.assert_array_equal(both.posterior["mu"].values[4:], fr.posterior["mu"].values)
    np.testing.assert_array_equal(both.posterior["mu"].values[:4], mf.posterior["mu"].values)
    np.testing.assert_array_equal(both.observed_data["obs"], mf.observed_data["obs"])


def test_to_dataframe_and_extract(two_exports):
    mf, _ = two_exports
    if LINE == 0:  # the whole InferenceData at once (ArviZ 1.x: one group at a time)
        df = mf.to_dataframe()
        assert len(df) == 400 and "chain" in df.columns and ("posterior", "mu") in df.columns
    df = to_dataframe(mf, "posterior")  # one row per draw, one column per scalar
    post = mf.posterior
    assert list(df.columns) == ["mu", "tau"] + [f"theta_tilde[{i}]" for i in range(8)]
    np.testing.assert_array_equal(df["mu"].values, post["mu"].values.ravel())
    np.testing.assert_array_equal(df["theta_tilde[3]"].values,
                                  post["theta_tilde"].values[..., 3].ravel())
    sample = extract(mf)
    assert sample.sizes["sample"] == 400
    np.testing.assert_array_equal(np.sort(sample["mu"].values),
                                  np.sort(post["mu"].values.ravel()))
    ll = extract(mf, group="log_likelihood")["obs"]
    assert ll.shape == (8, 400)
    np.testing.assert_array_equal(np.sort(ll.values, axis=1),
                                  np.sort(mf.log_likelihood["obs"].values.reshape(400, 8).T,
                                          axis=1))


# ------------------------------------------------------------------ 5. attributes
def test_attributes_are_plain_values_in_memory():
    def model(x):
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("obs", dist.Normal(z, 1.0), obs=x)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        fit = pyrovi.VI(model, seed=0, progress=False, num_steps=3).run(torch.zeros(3))
    assert fit.converged is False
    idata = to_arviz(fit, 8)
    groups = group_names(idata)
    assert {"posterior", "sample_stats", "log_likelihood", "vi_trace"} <= set(groups)
    for group in groups:
        attrs = idata[group].attrs
        assert attrs["converged"] is False and not attrs["converged"]
    assert isinstance(idata.vi_trace.attrs["notes"], list)
    assert not any(isinstance(v, str) and v.startswith(JSON_PREFIX)
                   for g in groups for v in idata[g].attrs.values())


def test_restarts_are_in_the_trace_attributes_as_for_em(tmp_path):
    def model(x):
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("obs", dist.Normal(z, 1.0), obs=x)

    fit = pyrovi.VI(model, seed=0, num_inits=3, progress=False).run(torch.arange(4.0))
    idata = to_arviz(fit, 8)
    attrs = idata.vi_trace.attrs
    assert attrs["best_init"] == fit.best_init and attrs["elbo_inits"] == list(fit.elbo_inits)
    assert attrs["elbo"] == max(attrs["elbo_inits"])
    path = tmp_path / "restarts.nc"
    pyrovi.save_netcdf(idata, path)
    back = decode_attrs(pyrovi.load_netcdf(path).vi_trace.attrs)
    assert back["elbo_inits"] == list(fit.elbo_inits) and back["best_init"] == fit.best_init


def test_a_string_with_the_prefix_round_trips_unaltered(tmp_path):
    text = JSON_PREFIX + "true"
    attrs = {"text": text, "other": "pyrovi-json:{not json", "plain": "x"}
    encoded = encode_attrs(attrs)
    assert encoded["plain"] == "x" and encoded["text"] != text
    assert decode_attrs(encoded) == attrs
    path = tmp_path / "a.nc"
    xr.Dataset(attrs=encoded).to_netcdf(path)
    with xr.open_dataset(path) as ds:
        assert decode_attrs(ds.attrs) == attrs


def test_malformed_or_deeply_nested_json_is_a_clear_error():
    with pytest.raises(PyroviError, match=r"attribute 'bad' starts with 'pyrovi-json:' but"):
        decode_attrs({"bad": JSON_PREFIX + "{not json"})
    deep = JSON_PREFIX + "[" * 100_000 + "]" * 100_000
    with pytest.raises(PyroviError, match=rf"attribute 'deep' holds JSON nested more than {MAX_DEPTH}"):
        decode_attrs({"deep": deep})
    nested: list = []
    for _ in range(MAX_DEPTH + 5):
        nested = [nested]
    with pytest.raises(PyroviError, match=r"attribute 'n' nests lists or dicts more than"):
        encode_attrs({"n": nested})


# ------------------------------------------------------------------ 6. predictions
def regression(X, y=None):
    w = pyro.sample("w", dist.Normal(torch.zeros(2), 1.0).to_event(1))
    with pyro.plate("data", X.shape[0]):
        mean = pyro.deterministic("mean", (X * w).sum(-1))
        return pyro.sample("y", dist.Normal(mean, 0.5), obs=y)


def test_predictions_group():
    g = torch.Generator().manual_seed(1)
    X = torch.randn(30, 2, generator=g)
    y = X @ torch.tensor([1.0, -2.0]) + 0.5 * torch.randn(30, generator=g)
    fit = _quiet(pyrovi.VI(regression, "fullrank", seed=0, progress=False, num_steps=300).run,
                 X, y)
    X_new = torch.randn(5, 2, generator=g)
    idata = to_arviz(fit, 400, predictions=((X_new,), {"y": None}))
    pred = idata.predictions
    assert set(pred.data_vars) == {"y", "mean"}
    assert pred["y"].dims == ("chain", "draw", "data") and pred["y"].shape == (4, 100, 5)
    w = idata.posterior["w"].values
    np.testing.assert_allclose(pred["mean"].values, w @ X_new.numpy().T, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(idata.predictions_constant_data["X"], X_new.numpy())
    assert idata.posterior_predictive["y"].shape == (4, 100, 30)  # the fit's own data
    with pytest.raises(TypeError, match="predictions must be"):
        to_arviz(fit, 40, predictions=X_new)


# ------------------------------------------------------------------ 7. corrected LOO
def test_corrected_loo_flags_fewer_bad_k_on_eight_schools(schools_nc):
    idata = to_arviz(schools_nc, 4000, posterior_predictive=False)
    plain = _quiet(az.loo, idata, pointwise=True)
    corrected = _quiet(pyrovi_loo, idata)
    bad_plain, bad_corrected = (int((pareto_k(x) > 0.7).sum()) for x in (plain, corrected))
    assert bad_corrected < bad_plain and bad_corrected <= 1
    assert np.isfinite(elpd(corrected))
    comparison = _quiet(compare, {"corrected": corrected, "plain": plain})
    assert set(comparison.index) == {"corrected", "plain"}
    assert comparison.loc["corrected", compare_column("elpd_loo")] == pytest.approx(elpd(corrected), rel=1e-12)


def test_corrected_loo_equals_plain_loo_on_an_exact_posterior(em_fit):
    idata = to_arviz(em_fit, 400, posterior_predictive=False)
    # pyrovi's loo takes the draws as independent (relative efficiency 1)
    plain = _quiet(az.loo, idata, pointwise=True, reff=1.0)
    corrected = _quiet(pyrovi_loo, idata)
    assert elpd(corrected) == pytest.approx(elpd(plain), rel=1e-6)
    assert p_loo(corrected) == pytest.approx(p_loo(plain), rel=1e-4, abs=1e-6)
    np.testing.assert_allclose(pareto_k(corrected), pareto_k(plain), atol=1e-5)  # float32


def test_corrected_loo_refuses_a_point_mass():
    fit = _quiet(pyrovi.VI(regression, "delta", seed=0, progress=False, num_steps=20).run,
                 torch.randn(10, 2), torch.randn(10))
    with pytest.raises(PyroviError, match="point mass"):
        pyrovi_loo(fit)


# ------------------------------------------------------------------ 8. names and plates
def reserved(y):
    c = pyro.sample("chain", dist.Normal(0.0, 1.0))
    with pyro.plate("draw", y.shape[0]):
        pyro.sample("obs", dist.Normal(c, 1.0), obs=y)


def test_reserved_names_are_renamed_with_a_warning():
    fit = _quiet(pyrovi.VI(reserved, seed=0, progress=False, num_steps=20).run, torch.zeros(5))
    with pytest.warns(ModelWarning, match=r"site 'chain' .* exported as 'chain_'"):
        idata = to_arviz(fit, 40)
    assert "posterior" in group_names(idata)
    assert idata.posterior["chain_"].shape == (4, 10)
    assert idata.log_likelihood["obs"].dims == ("chain", "draw", "draw_")


def subsampled(x):
    mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    with pyro.plate("data", x.shape[0], subsample_size=10) as idx:
        pyro.sample("obs", dist.Normal(mu, 1.0), obs=x[idx])


def test_subsampled_plate_is_covered_in_full():
    x = torch.linspace(-1.0, 3.0, 95)
    fit = _quiet(pyrovi.VI(subsampled, seed=0, progress=False, num_steps=50).run, x)
    idata = to_arviz(fit, 40)
    np.testing.assert_allclose(idata.observed_data["obs"], x.numpy())
    mu = torch.as_tensor(idata.posterior["mu"].values)
    np.testing.assert_allclose(idata.log_likelihood["obs"],
                               dist.Normal(mu[..., None], 1.0).log_prob(x), rtol=1e-5)
    assert idata.posterior_predictive["obs"].shape == (4, 10, 95)


def local_subsampled(x):
    with pyro.plate("data", x.shape[0], subsample_size=5) as idx:
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.sample("obs", dist.Normal(z, 1.0), obs=x[idx])


def test_subsampled_local_latents_say_why_not():
    from pyro.infer.autoguide import AutoNormal  # noqa: F401 - guide family below

    def guide(x):
        with pyro.plate("data", x.shape[0], subsample_size=5):
            pyro.sample("z", dist.Normal(0.0, 1.0))

    fit = _quiet(pyrovi.VI(local_subsampled, guide, seed=0, progress=False, num_steps=5).run,
                 torch.zeros(20))
    with pytest.raises(PyroviError, match=r"latent site\(s\) \['z'\] live in the subsampled"):
        to_arviz(fit, 8)
    idata = to_arviz(fit, 8, log_likelihood=False, posterior_predictive=False)
    assert "posterior" in group_names(idata) and "log_likelihood" not in group_names(idata)


def sequential(y):
    mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    for i in pyro.plate("steps", y.shape[0]):
        pyro.sample(f"obs_{i}", dist.Normal(mu, 1.0), obs=y[i])


def test_sequential_plate_sites_are_one_variable():
    y = torch.linspace(-1.0, 1.0, 10)
    fit = _quiet(pyrovi.VI(sequential, seed=0, progress=False, num_steps=30).run, y)
    idata = to_arviz(fit, 40)
    assert list(idata.log_likelihood.data_vars) == ["obs"]
    assert idata.log_likelihood["obs"].dims == ("chain", "draw", "steps")
    assert idata.observed_data["obs"].dims == ("steps",)
    np.testing.assert_allclose(idata.observed_data["obs"], y.numpy())
    assert idata.posterior_predictive["obs"].shape == (4, 10, 10)
    loo = _quiet(az.loo, idata)  # no var_name needed
    assert loo.n_data_points == 10


def varying(y):
    n = pyro.sample("n", dist.Categorical(torch.ones(3) / 3))
    mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    for i in pyro.plate("steps", int(n) + 1):
        pyro.sample(f"extra_{i}", dist.Normal(mu, 1.0))
    pyro.sample("obs", dist.Normal(mu, 1.0), obs=y)


def test_sites_that_vary_between_runs_are_not_a_key_error():
    from pyrovi._draws import model_draws
    from pyrovi._plates import site_shapes

    trace = pyro.poutine.trace(pyro.poutine.condition(varying, data={"n": torch.tensor(2)}))
    shapes = site_shapes(trace.get_trace(torch.tensor(0.0)))
    values = {"n": torch.tensor([0, 2]), "mu": torch.zeros(2)}
    out = model_draws(varying, (torch.tensor(0.0),), {}, values, n=2, shapes=shapes,
                      max_plate_nesting=0, vectorized=False)
    assert math.isnan(float(out["extra_2"][0])) and not math.isnan(float(out["extra_2"][1]))


# ------------------------------------------------------------------ 9. chains and r_hat
def test_r_hat_is_defined_and_about_one(meanfield):
    idata = to_arviz(meanfield, 1000, posterior_predictive=False)
    assert idata.posterior.sizes["chain"] == 4 and idata.posterior.sizes["draw"] == 250
    summary = _quiet(az.summary, idata)
    assert np.isfinite(summary["r_hat"]).all()
    assert (summary["r_hat"] < 1.02).all()


def test_num_chains_must_divide_num_samples(meanfield):
    with pytest.raises(ValueError, match=r"num_samples=10 draws do not split into num_chains=4"):
        to_arviz(meanfield, 10, num_chains=4)
    assert to_arviz(meanfield, 10, posterior_predictive=False).posterior.sizes["chain"] == 1


def test_hmm_marginal_terms_add_up_to_the_log_evidence():
    from pyro.infer import TraceEnum_ELBO, config_enumerate

    from pyrovi._draws import enumerated_pointwise_log_lik
    from pyrovi._plates import site_shapes

    trans = torch.tensor([[0.9, 0.1], [0.2, 0.8]])

    def hmm(ys):
        x = 0
        for t in pyro.markov(range(len(ys))):
            x = pyro.sample(f"x_{t}", dist.Categorical(trans[x]))
            pyro.sample(f"y_{t}", dist.Normal(torch.tensor([-1.0, 1.0])[x], 1.0), obs=ys[t])

    ys = torch.tensor([-1.2, -0.5, 1.3, 0.9, 1.1])
    shapes = site_shapes(pyro.poutine.trace(hmm).get_trace(ys))
    observed = tuple(f"y_{t}" for t in range(5))
    terms = enumerated_pointwise_log_lik(hmm, (ys,), {}, {}, n=3, observed=observed,
                                         shapes=shapes, max_plate_nesting=0)
    assert terms["y_0"].shape == (3,)
    evidence = -TraceEnum_ELBO(max_plate_nesting=0).loss(config_enumerate(hmm), lambda ys: None, ys)
    assert float(sum(terms[k][0] for k in observed)) == pytest.approx(evidence, rel=1e-6)
    # the first term is the marginal of y_0 alone: a mixture of the two emission densities
    first = torch.logsumexp(torch.log(trans[0]) + dist.Normal(torch.tensor([-1.0, 1.0]), 1.0)
                            .log_prob(ys[0]), 0)
    assert float(terms["y_0"][0]) == pytest.approx(float(first), rel=1e-6)
