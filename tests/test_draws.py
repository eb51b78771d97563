"""``pyrovi._draws``: draws from a guide with their log densities."""

import pyro
import pyro.distributions as dist
import pytest
import torch

from pyrovi._draws import guide_draws, seeded_draws
from pyrovi._plates import site_shapes


def guide(x):
    loc = pyro.param("loc", torch.tensor([0.5, -1.0]))
    pyro.sample("w", dist.Normal(loc, 2.0).to_event(1))
    pyro.sample("s", dist.LogNormal(0.0, 0.5))


def test_guide_draws_carry_the_guides_log_density_vectorized_or_not():
    trace = pyro.poutine.trace(guide).get_trace(None)
    shapes = site_shapes(trace)
    for vectorized in (True, False):
        with seeded_draws(0):
            draws = guide_draws(guide, (None,), {}, 50, sites=("w", "s"), shapes=shapes,
                                max_plate_nesting=0, vectorized=vectorized)
        assert draws.values["w"].shape == (50, 2) and draws.values["s"].shape == (50,)
        expected = (dist.Normal(torch.tensor([0.5, -1.0]), 2.0).log_prob(draws.values["w"]).sum(-1)
                    + dist.LogNormal(0.0, 0.5).log_prob(draws.values["s"]))
        torch.testing.assert_close(draws.log_q, expected)


def test_vectorized_and_looped_draws_agree_in_distribution():
    trace = pyro.poutine.trace(guide).get_trace(None)
    shapes = site_shapes(trace)
    means = []
    for vectorized in (True, False):
        with seeded_draws(1):
            d = guide_draws(guide, (None,), {}, 4000, sites=("w",), shapes=shapes,
                            max_plate_nesting=0, vectorized=vectorized)
        means.append(d.values["w"].mean(0))
    for m in means:  # both estimate the guide's mean within 4 standard errors
        assert torch.all((m - torch.tensor([0.5, -1.0])).abs() < 4 * 2.0 / 4000**0.5)


# ------------------------------------------- marginal pointwise log-likelihood, coupled plates
TRANS = torch.tensor([[0.7, 0.3], [0.4, 0.6]])
EMIT = torch.tensor([[0.8, 0.3, 0.5], [0.1, 0.7, 0.4]])
YS = torch.tensor([[[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]], [[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]]])


def tones_hmm(ys):
    # hmm.py's model_1 shape: the state x_t (per sequence) emits three tones in a plate
    # the state lives outside of, so the tones of one step are coupled through x_t
    tones = pyro.plate("tones", ys.shape[2], dim=-1)
    with pyro.plate("sequences", ys.shape[0], dim=-2):
        x = 0
        for t in pyro.markov(range(ys.shape[1])):
            x = pyro.sample(f"x_{t}", dist.Categorical(TRANS[x]), infer={"enumerate": "parallel"})
            with tones:
                pyro.sample(f"y_{t}", dist.Bernoulli(EMIT[x.squeeze(-1)]), obs=ys[:, t])


def tones_bruteforce(ys):
    """log p(y_n) per sequence, summed over every hidden path."""
    import itertools

    out = []
    for seq in ys:
        paths = []
        for path in itertools.product(range(2), repeat=seq.shape[0]):
            lp, prev = 0.0, 0
            for t, x in enumerate(path):
                lp += float(TRANS[prev, x].log())
                lp += float(dist.Bernoulli(EMIT[x]).log_prob(seq[t]).sum())
                prev = x
            paths.append(lp)
        out.append(float(torch.logsumexp(torch.tensor(paths, dtype=torch.float64), 0)))
    return out


def test_marginal_log_lik_splits_coupled_plate_entries_by_the_chain_rule():
    from pyrovi._draws import enumerated_pointwise_log_lik

    shapes = site_shapes(pyro.poutine.trace(tones_hmm).get_trace(YS))
    observed = ("y_0", "y_1")
    terms = enumerated_pointwise_log_lik(tones_hmm, (YS,), {}, {}, n=2, observed=observed,
                                         shapes=shapes, max_plate_nesting=2)
    assert terms["y_0"].shape == (2, 2, 3)
    # the terms of one sequence add up to its exact evidence (each entry counted once)
    per_seq = (terms["y_0"] + terms["y_1"])[0].sum(-1)
    torch.testing.assert_close(per_seq.double(), torch.tensor(tones_bruteforce(YS), dtype=torch.float64),
                               rtol=1e-5, atol=1e-5)
    # the first entry is the marginal of one tone alone: a two-state mixture
    first = torch.logsumexp(TRANS[0].log() + dist.Bernoulli(EMIT[:, 0]).log_prob(YS[0, 0, 0]), 0)
    assert float(terms["y_0"][0, 0, 0]) == pytest.approx(float(first), rel=1e-6)
    # the second: p(y_{0,1} | y_{0,0}), the state's posterior after the first tone
    post = TRANS[0].log() + dist.Bernoulli(EMIT[:, 0]).log_prob(YS[0, 0, 0])
    second = torch.logsumexp(post + dist.Bernoulli(EMIT[:, 1]).log_prob(YS[0, 0, 1]), 0) - torch.logsumexp(post, 0)
    assert float(terms["y_0"][0, 0, 1]) == pytest.approx(float(second), rel=1e-6)


def test_marginal_log_lik_refuses_too_many_coupled_entries(monkeypatch):
    import pyrovi._draws as draws
    from pyrovi.errors import PyroviError

    monkeypatch.setattr(draws, "MAX_COUPLED_ENTRIES", 2)
    shapes = site_shapes(pyro.poutine.trace(tones_hmm).get_trace(YS))
    with pytest.raises(PyroviError, match=r"site 'y_0': its 3 entries along plate\(s\) .* "
                       r"pass log_likelihood=False"):
        draws.enumerated_pointwise_log_lik(tones_hmm, (YS,), {}, {}, n=1, observed=("y_0",),
                                           shapes=shapes, max_plate_nesting=2)
