"""Minibatch VI from a DataLoader (issue 18, item 4): each step on the next batch, the
likelihood scaled by N / B through the model's subsampled plate, the plateau rule on the
minibatch ELBO, and the final ELBO from one pass over the batches.

Reference: a conjugate Bayesian linear regression, w ~ N(0, I_3), y ~ N(X w, SIGMA^2),
N = 2,000 rows in batches of 100: its posterior and log evidence are closed forms."""

from __future__ import annotations

import math

import numpy as np
import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import pyrovi
from pyrovi._steps import window_mean
from pyrovi.vi.minibatch import Batches, pass_elbo, subsample_fraction
from pyrovi.vi.objective import estimate_elbo

N, D, B, SIGMA = 2000, 3, 100, 0.5


def regression(num_rows, idx, x, y):
    w = pyro.sample("w", dist.Normal(torch.zeros(D), 1.0).to_event(1))
    with pyro.plate("data", num_rows, subsample=idx):
        pyro.sample("y", dist.Normal((x * w).sum(-1), SIGMA), obs=y)


def unscaled(num_rows, idx, x, y):  # the plate is the batch's own: nothing is scaled
    w = pyro.sample("w", dist.Normal(torch.zeros(D), 1.0).to_event(1))
    with pyro.plate("data", len(idx)):
        pyro.sample("y", dist.Normal((x * w).sum(-1), SIGMA), obs=y)


@pytest.fixture(scope="module")
def problem():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(N, D, generator=gen) + 0.5 * torch.randn(N, 1, generator=gen)  # correlated
    w_true = torch.tensor([1.0, -0.5, 0.25])
    y = (x * w_true).sum(-1) + SIGMA * torch.randn(N, generator=gen)
    X, Y = x.double(), y.double()
    prec = torch.eye(D, dtype=torch.float64) + X.T @ X / SIGMA**2
    cov = torch.linalg.inv(prec)
    mean = cov @ X.T @ Y / SIGMA**2
    # log p(y) = log p(y | m) + log p(m) - log p(m | y) at the posterior mean m
    log_ev = (
        dist.Normal(X @ mean, SIGMA).log_prob(Y).sum()
        + dist.Normal(0.0, 1.0).log_prob(mean).sum()
        - dist.MultivariateNormal(mean, cov).log_prob(mean)
    )
    loader = DataLoader(
        TensorDataset(torch.arange(N), x, y), batch_size=B, shuffle=True,
        generator=torch.Generator().manual_seed(1),
    )
    return loader, mean.float(), cov.diagonal().sqrt().float(), float(log_ev)


def test_minibatch_fullrank_fit_reaches_the_closed_form_posterior(problem):
    loader, mean, sd, log_ev = problem
    result = pyrovi.VI(regression, "fullrank", method="sgd", seed=0, progress=False).run(
        N, batches=loader
    )
    # the plateau rule on the minibatch ELBO stopped by itself, and not early: the fullrank
    # family holds the exact posterior, so at its optimum the ELBO is log p(y)
    assert result.converged
    assert result.num_steps < 20_000
    assert result.elbo < log_ev + 3 * result.elbo_se  # ELBO <= log evidence
    assert log_ev - result.elbo < 0.5 + 3 * result.elbo_se
    # posterior moments from 20,000 draws (their own Monte Carlo error: 0.007 sd for the
    # means, 0.5% for the sds): means within 0.25 posterior sd, sds within 10%.  The fit
    # keeps the jitter of Adam's last step size (seeds 0 and 1: means within 0.15 sd, sds
    # within 6.1%); a shift of 0.25 sd or 10% costs under 0.04 nats of KL, below what a
    # window of minibatch ELBOs resolves (0.7 nats here), so the rule rightly stops
    draws = result.sample(20_000, seed=2)["w"]
    assert float(((draws.mean(0) - mean).abs() / sd).max()) < 0.25
    assert float(((draws.std(0) - sd).abs() / sd).max()) < 0.10
    assert any("minibatch VI" in note for note in result.notes)
    # the windows (100 steps) hold 5 passes of 20 batches: the rule's standard error is
    # that of the pass means, free of the batch-to-batch spread (a batch's log likelihood
    # is scaled by N / B = 20: one step's ELBO spreads by ~130 nats, which would make the
    # steps' se of a window ~13 nats and the rule blind to anything below ~37 nats)
    [noise] = [note for note in result.notes if note.startswith("minibatch noise")]
    assert float(noise.split("error of ")[1].split(" nats")[0]) < 1.0
    steps = result.elbo_trace[-100:]
    assert steps.std() / 10 > 5.0


def test_restarts_each_fit_on_the_batches_and_keep_the_best(problem):
    loader, _, _, log_ev = problem
    result = pyrovi.VI(regression, "meanfield", method="sgd", seed=3, num_inits=2,
                       progress=False).run(N, batches=loader)
    # each restart ran from the first batch to the optimum (the final ELBOs of seeds 3 and
    # 4 are 0.17 and 0.05 nats under log p(y), standard error 0.28), and the best was kept
    assert len(result.elbo_inits) == 2 and result.elbo == max(result.elbo_inits)
    assert result.seed == 3 + result.best_init
    for elbo in result.elbo_inits:
        assert -3 * result.elbo_se < log_ev - elbo < 0.5 + 3 * result.elbo_se
    assert any("minibatch VI" in note for note in result.notes)


def test_the_steps_see_minibatch_elbos_scaled_to_the_whole_data_set(problem):
    loader, _, _, log_ev = problem
    result = pyrovi.VI(
        regression, "meanfield", method="sgd", seed=0, progress=False, num_steps=300, tol=0
    ).run(N, batches=loader)
    # unscaled batches of 100 rows would sit near log_ev / 20; scaled ones near log_ev
    late = result.elbo_trace[-100:]
    assert abs(late.mean() - log_ev) < 0.1 * abs(log_ev)


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({}, r"batches= runs minibatch .* method='auto' \(DADVI .*pass method='sgd'\)"),
        ({"method": "sgd", "backend": "compiled"},
         r"cannot take backend='compiled' \(the compiled path traces one fixed data set"),
        ({"method": "sgd", "guide": "laplace"}, r"guide='laplace' \(its Hessian"),
    ],
)
def test_incompatible_options_are_refused_before_any_work(problem, options, match):
    loader = problem[0]
    with pytest.raises(ValueError, match=match):
        pyrovi.VI(regression, progress=False, **options).run(N, batches=loader)


def test_a_model_without_a_subsampled_plate_is_refused(problem):
    loader = problem[0]
    with pytest.raises(ValueError, match=r"model 'unscaled' subsamples no plate .*"
                       r"pyro.plate\('data', N, subsample=idx\)"):
        pyrovi.VI(unscaled, method="sgd", progress=False).run(N, batches=loader)


def test_a_one_pass_iterator_is_refused(problem):
    loader = problem[0]
    with pytest.raises(TypeError, match=r"batches must be re-iterable .* got an iterator"):
        pyrovi.VI(regression, method="sgd", progress=False).run(N, batches=iter(loader))


def test_the_final_pass_weights_batches_by_their_share_of_the_rows(problem):
    # batches of 150 leave a last batch of 50 rows: weighted by B_k / N, one pass still
    # counts every row once, and gives the full-data ELBO of the same guide
    loader = problem[0]
    result = pyrovi.VI(regression, "fullrank", method="sgd", seed=0, progress=False,
                       num_steps=300, tol=0).run(N, batches=loader)
    idx, x, y = loader.dataset.tensors
    options = dict(vectorize=True, max_plate_nesting=1, enumerate=False)

    def fraction(args, kwargs):
        return subsample_fraction(poutine.trace(regression).get_trace(*args, **kwargs))

    pyro.set_rng_seed(0)  # the estimates below: not dependent on what ran before
    with result.scope(), torch.no_grad():
        full = estimate_elbo(regression, result.guide, (N, idx, x, y), {},
                             num_particles=4000, **options)
        uneven, covered = pass_elbo(
            Batches(DataLoader(loader.dataset, batch_size=150), torch.device("cpu"), (N,)),
            regression, result.guide, fraction, num_particles=200, **options,
        )
    assert covered == pytest.approx(1.0)
    assert abs(uneven.value - full.value) < 3 * math.hypot(uneven.se, full.se)
    assert uneven.num_particles == 14 * 200


def test_a_window_of_whole_passes_has_the_standard_error_of_its_pass_means():
    rng = np.random.default_rng(0)
    batch_offsets = rng.normal(0.0, 100.0, 20)
    batch_offsets -= batch_offsets.mean()  # a pass sees every row once: they sum to zero
    steps = np.concatenate([rng.permutation(batch_offsets) for _ in range(5)])
    steps = -1000.0 + steps + rng.normal(0.0, 0.5, steps.size)
    grouped, plain = window_mean(steps, 20), window_mean(steps)
    assert float(grouped) == pytest.approx(float(plain))
    passes = steps.reshape(5, 20).mean(1)
    assert grouped.se == pytest.approx(passes.std(ddof=1) / math.sqrt(5))
    assert grouped.se < 0.5 < 5.0 < plain.se
    # not whole passes: the steps' spread, as for full-data VI
    assert window_mean(steps[:90], 20).se == pytest.approx(window_mean(steps[:90]).se)
