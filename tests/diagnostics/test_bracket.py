"""Bidirectional Monte Carlo: forward AIS (lower) and reverse AIS from exact posterior draws
(upper) bracket log p(x) (Grosse et al. 2015)."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch.distributions import MultivariateNormal

import pyrovi
from pyrovi.diagnostics.ais import AIS
from pyrovi.diagnostics.bracket import Bracket, bidirectional_ais, evidence_bracket
from pyrovi.diagnostics.simcheck import check_evidence, simulate
from pyrovi.models import linear_regression

F64 = torch.float64


def design(n=10, d=2, seed=0):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=F64)


def normal_normal(y=None, n=5):
    """mu ~ N(0, 2^2), y_i ~ N(mu, 1): conjugate, exact evidence."""
    mu = pyro.sample("mu", dist.Normal(torch.tensor(0.0, dtype=F64), 2.0))
    with pyro.plate("data", n):
        pyro.sample("y", dist.Normal(mu, 1.0), obs=y)


def exact_posterior(X, y, prior_scale=1.0, noise=0.7):
    prec = X.T @ X / noise**2 + torch.eye(X.shape[1], dtype=F64) / prior_scale**2
    cov = torch.linalg.inv(prec)
    return cov @ X.T @ y / noise**2, cov


def meanfield_guide(mean, cov):
    """The KL-optimal meanfield Gaussian of a Gaussian posterior (variances 1/precision_ii):
    the base a meanfield fit would give, without the cost of a fit."""
    scale = torch.linalg.inv(cov).diagonal().rsqrt()

    def guide(X, y=None):
        pyro.sample("w", dist.Normal(mean, scale).to_event(1))

    return guide


def gaussian_target(d=3, log_z=2.5, seed=0):
    gen = torch.Generator().manual_seed(seed)
    A = torch.randn(d, d, generator=gen, dtype=F64)
    cov = A @ A.T / d + 0.3 * torch.eye(d, dtype=F64)
    mean = torch.randn(d, generator=gen, dtype=F64)
    target = MultivariateNormal(mean, cov)

    def log_density(u):
        u = u.detach().requires_grad_(True)
        lp = target.log_prob(u) + log_z
        (g,) = torch.autograd.grad(lp.sum(), u)
        return lp.detach(), g

    return target, log_density


# ----------------------------------------------------------------------------- the sampler
def test_base_equal_to_posterior_gives_exact_evidence_on_both_sides():
    target, log_density = gaussian_target(log_z=2.5)
    L = torch.linalg.cholesky(target.covariance_matrix)
    torch.manual_seed(0)
    starts = target.sample((16,))
    run = bidirectional_ais(log_density, target.mean, L, options=AIS(num_temperatures=5,
                            num_runs=2, transition="mala"), chains_per_run=8,
                            posterior_starts=starts)
    # f = log p~ - log q0 = log Z everywhere: every forward weight is Z, every reverse 1/Z
    assert torch.allclose(run.log_w, torch.full_like(run.log_w, 2.5), atol=1e-9)
    assert torch.allclose(run.log_w_rev, torch.full_like(run.log_w_rev, -2.5), atol=1e-9)


def test_sides_straddle_the_evidence_on_average():
    target, log_density = gaussian_target(log_z=-1.0)
    base_L = 2.0 * torch.eye(3, dtype=F64)
    lows, ups = [], []
    for rep in range(6):
        torch.manual_seed(rep)
        starts = target.sample().expand(32, 3).clone()
        run = bidirectional_ais(log_density, torch.zeros(3, dtype=F64), base_L,
                                options=AIS(num_temperatures=8, num_runs=2, transition="mala"),
                                chains_per_run=16, posterior_starts=starts, rejuvenation=20)
        lows.append(float(torch.logsumexp(run.log_w.reshape(-1), 0) - math.log(32)))
        ups.append(-float(torch.logsumexp(run.log_w_rev.reshape(-1), 0) - math.log(32)))
    # few temperatures from a poor base: both sides biased away from log Z = -1
    assert sum(lows) / 6 < -1.0 < sum(ups) / 6


def test_posterior_starts_shape_is_checked():
    target, log_density = gaussian_target()
    with pytest.raises(ValueError, match="posterior_starts must have shape"):
        bidirectional_ais(log_density, target.mean, torch.eye(3, dtype=F64),
                          options=AIS(num_temperatures=3, num_runs=2), chains_per_run=4,
                          posterior_starts=torch.zeros(3, 3, dtype=F64))


# ------------------------------------------------------------------------ the public API
def test_bracket_from_exact_draws_is_a_bound_on_both_sides():
    X = design()
    latents, data = simulate(linear_regression, X, torch.zeros(10, dtype=F64), seed=1)
    y = data["y"]
    exact = pyrovi.log_evidence(linear_regression, X, y).value
    b = evidence_bracket(linear_regression, X, y, posterior_draws={"w": latents["w"][None]},
                         options=AIS(num_temperatures=30, num_runs=4, transition="mala",
                                     base_draws=500), num_chains=32, seed=0)
    assert isinstance(b, Bracket)
    assert b.lower_is_bound and b.upper_is_bound
    assert b.info["start"] == "exact" and b.info["base"] == "prior"
    assert b.num_chains == 32 and b.num_temperatures == 30
    assert b.contains(exact)
    lo, hi = b.interval(2.0)
    assert lo <= b.lower and hi >= b.upper
    assert "bound" in str(b) and "estimate" not in str(b)
    assert 0.2 < b.acceptance < 0.95
    assert b.position(b.lower) == pytest.approx(0.0) or b.width <= 0


def test_bracket_without_exact_draws_labels_the_upper_side_an_estimate():
    X = design()
    _, data = simulate(linear_regression, X, torch.zeros(10, dtype=F64), seed=2)
    b = evidence_bracket(linear_regression, X, data["y"],
                         options=AIS(num_temperatures=10, num_runs=2, transition="mala",
                                     base_draws=300), num_chains=16, seed=0)
    assert b.lower_is_bound and not b.upper_is_bound
    assert b.info["start"] == "resampled"
    assert "estimate" in b.method and "(estimate)" in str(b)


def test_bracket_is_reproducible_and_leaves_the_global_rng_alone():
    X = design()
    _, data = simulate(linear_regression, X, torch.zeros(10, dtype=F64), seed=3)
    opts = AIS(num_temperatures=5, num_runs=2, transition="mala", base_draws=200)
    state = torch.get_rng_state()
    a = evidence_bracket(linear_regression, X, data["y"], options=opts, num_chains=8, seed=5)
    assert torch.equal(state, torch.get_rng_state())
    b = evidence_bracket(linear_regression, X, data["y"], options=opts, num_chains=8, seed=5)
    assert (a.lower, a.upper) == (b.lower, b.upper)


def test_bad_arguments_are_refused():
    X = design()
    y = torch.zeros(10, dtype=F64)
    with pytest.raises(ValueError, match="num_chains"):
        evidence_bracket(linear_regression, X, y, num_chains=1)
    with pytest.raises(ValueError, match="lacks the latent site"):
        evidence_bracket(linear_regression, X, y, posterior_draws={"v": torch.zeros(1, 2)},
                         options=AIS(num_temperatures=3, num_runs=2, base_draws=50),
                         num_chains=4)
    with pytest.raises(ValueError, match="observed sites"):
        simulate(linear_regression, X)


def _coverage(make, reps, options, num_chains):
    """Bracket each of ``reps`` simulated data sets; return (hits, raw_hits, widths)."""
    hits = raw = 0
    widths = []
    for rep in range(reps):
        model, args, guide, latents = make(rep)
        exact = pyrovi.log_evidence(model, *args).value
        b = evidence_bracket(model, *args, guide=guide, posterior_draws=latents,
                             options=options, num_chains=num_chains, seed=rep)
        hits += b.contains(exact)
        raw += b.lower <= exact <= b.upper
        widths.append(b.width)
    return hits, raw, widths


@pytest.mark.slow
def test_bracket_covers_exact_evidence_linear_regression():
    X = design(n=10, d=2)
    y0 = torch.zeros(10, dtype=F64)

    def make(rep):
        latents, data = simulate(linear_regression, X, y0, seed=1000 + rep)
        guide = meanfield_guide(*exact_posterior(X, data["y"]))
        return linear_regression, (X, data["y"]), guide, {"w": latents["w"][None]}

    opts = AIS(num_temperatures=20, num_runs=4, transition="mala", base_draws=300)
    hits, raw, widths = _coverage(make, 40, opts, 32)
    print(f"linear regression: {hits}/40 inside +-2.5 se, {raw}/40 inside raw, "
          f"mean width {sum(widths) / 40:.4f}")
    assert hits >= 38


@pytest.mark.slow
def test_bracket_covers_exact_evidence_normal_normal():
    y0 = torch.zeros(5, dtype=F64)

    def make(rep):
        latents, data = simulate(normal_normal, y0, seed=2000 + rep)
        return normal_normal, (data["y"],), None, {"mu": latents["mu"][None]}

    opts = AIS(num_temperatures=20, num_runs=4, transition="mala", base_draws=500)
    hits, raw, widths = _coverage(make, 40, opts, 32)
    print(f"normal-normal: {hits}/40 inside +-2.5 se, {raw}/40 inside raw, "
          f"mean width {sum(widths) / 40:.4f}")
    assert hits >= 38


@pytest.mark.slow
def test_bracket_width_falls_as_the_schedule_grows():
    X = design(n=10, d=2)
    y0 = torch.zeros(10, dtype=F64)
    means = []
    for T in (3, 12, 48):
        widths = []
        for rep in range(4):
            latents, data = simulate(linear_regression, X, y0, seed=3000 + rep)
            b = evidence_bracket(linear_regression, X, data["y"],
                                 posterior_draws={"w": latents["w"][None]},
                                 options=AIS(num_temperatures=T, num_runs=4,
                                             transition="mala", base_draws=500),
                                 num_chains=64, seed=rep)
            widths.append(b.width)
        means.append(sum(widths) / len(widths))
    print("mean width by temperatures 3, 12, 48:", [round(w, 4) for w in means])
    assert means[0] > means[1] > means[2]
    assert abs(means[2]) < 0.25 * means[0]


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:VI stopped at num_steps")
def test_check_evidence_with_a_fitter():
    X = design(n=10, d=2)
    y0 = torch.zeros(10, dtype=F64)

    def fitter(model, *args):
        return pyrovi.VI(model, "fullrank", seed=0, progress=False, num_steps=600,
                         window=50, tol=1e-3).run(*args)

    chk = check_evidence(linear_regression, fitter, X, y0, num_simulations=2,
                         options=AIS(num_temperatures=20, num_runs=4, transition="mala",
                                     base_draws=500), num_chains=32, num_particles=500)
    assert chk.method == "fitter" and len(chk.rows) == 2
    assert chk.coverage == 1.0
    assert all(r.exact is not None and r.bracket.upper_is_bound for r in chk.rows)
    assert chk.elbo_below_upper == 1.0
    s = chk.summary()
    assert s["num_simulations"] == 2 and math.isfinite(s["mean_width"])
    assert "Evidence check of 'fitter'" in str(chk)


def test_bracket_of_a_fit_on_real_data(fullrank, exact):
    """The suite's shared fullrank fit: no exact draws, so the upper side is an estimate; the
    fit's CUBO_2 comes along."""
    b = evidence_bracket(fullrank, options=AIS(num_temperatures=20, num_runs=4,
                                                transition="mala", base_draws=500),
                         num_chains=32, seed=0)
    assert b.info["base"] == "guide" and not b.upper_is_bound
    assert b.lower - 2.5 * b.lower_se <= exact
    assert b.cubo is not None and b.cubo > exact - 3 * b.cubo_se
    assert abs(b.upper - exact) < 0.1  # a good guide: resampled starts are nearly exact
    with pytest.raises(TypeError, match="takes the model arguments from the result"):
        evidence_bracket(fullrank, torch.zeros(3))


def test_simulate_draws_latents_and_data_of_a_constrained_model():
    from pyrovi.datasets import eight_schools
    from pyrovi.models import eight_schools_noncentered

    y, sigma = eight_schools()
    latents, data = simulate(eight_schools_noncentered, sigma, y, seed=0)
    assert set(latents) == {"mu", "tau", "eta"} and set(data) == {"obs"}
    assert latents["eta"].shape == (8,) and float(latents["tau"]) > 0
    assert data["obs"].shape == y.shape and not torch.equal(data["obs"], y)
    again, _ = simulate(eight_schools_noncentered, sigma, y, seed=0)
    assert torch.equal(again["eta"], latents["eta"])
