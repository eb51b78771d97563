# ruff: noqa: UP031, UP032, E501
# (models are kept as Pyro wrote them: "x_{}".format(t), "%s" % name, long lines)
"""Models ported as written from Pyro's own examples and tutorials (issue 12).

Each model names the file it comes from (Pyro 1.9, ``examples/`` or ``tutorial/source/``).
The model bodies are copied as written; what changes is only the data: shrunk, and generated
from the model (with fixed seeds) where the original downloads a data set.  Where a model
had to be adapted to exercise a feature that no Pyro example uses (``obs_mask``, a latent
named ``chain``), the comment says so.
"""

from __future__ import annotations

from types import SimpleNamespace

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.contrib.autoname import scope
from pyro.distributions import constraints
from pyro.ops.indexing import Vindex
from pyro.ops.special import sparse_multinomial_likelihood
from torch import nn

# ---------------------------------------------------------------------------------------
# Coin fairness: tutorial/source/svi_part_i.ipynb, svi_part_ii.ipynb, mle_map.ipynb
# ---------------------------------------------------------------------------------------

# "create some data with 6 observed heads and 4 observed tails" (svi_part_i.ipynb)
COIN_DATA = torch.tensor([1.0] * 6 + [0.0] * 4)
COIN_PRIOR = (10.0, 10.0)


def coin_posterior() -> tuple[float, float]:
    """The conjugate posterior Beta(10 + heads, 10 + tails) = Beta(16, 14)."""
    heads = float(COIN_DATA.sum())
    return COIN_PRIOR[0] + heads, COIN_PRIOR[1] + len(COIN_DATA) - heads


# tutorial/source/mle_map.ipynb: original_model (the vectorized plate of svi_part_ii.ipynb)
def coin_original_model(data):
    f = pyro.sample("latent_fairness", dist.Beta(10.0, 10.0))
    with pyro.plate("data", data.size(0)):
        pyro.sample("obs", dist.Bernoulli(f), obs=data)


# tutorial/source/svi_part_i.ipynb: guide (Beta guide with positive-constrained params)
def coin_svi_part_i_guide(data):
    alpha_q = pyro.param("alpha_q", torch.tensor(15.0), constraint=constraints.positive)
    beta_q = pyro.param("beta_q", torch.tensor(15.0), constraint=constraints.positive)
    pyro.sample("latent_fairness", dist.Beta(alpha_q, beta_q))


# tutorial/source/mle_map.ipynb: guide_map (a Delta at a pyro.param on the unit interval)
def coin_guide_map(data):
    f_map = pyro.param("f_map", torch.tensor(0.5), constraint=constraints.unit_interval)
    pyro.sample("latent_fairness", dist.Delta(f_map))


# tutorial/source/svi_part_ii.ipynb: "Sequential plate"
def coin_sequential_model(data):
    alpha0 = torch.tensor(10.0)
    beta0 = torch.tensor(10.0)
    f = pyro.sample("latent_fairness", dist.Beta(alpha0, beta0))
    for i in pyro.plate("data_loop", len(data)):
        pyro.sample("obs_{}".format(i), dist.Bernoulli(f), obs=data[i])


# tutorial/source/svi_part_ii.ipynb: "Automatic subsampling with plate" (sequential form)
def coin_sequential_subsample_model(data):
    alpha0 = torch.tensor(10.0)
    beta0 = torch.tensor(10.0)
    f = pyro.sample("latent_fairness", dist.Beta(alpha0, beta0))
    for i in pyro.plate("data_loop", len(data), subsample_size=5):
        pyro.sample("obs_{}".format(i), dist.Bernoulli(f), obs=data[i])


# tutorial/source/svi_part_ii.ipynb: "Automatic subsampling with plate" (vectorized form)
def coin_subsample_model(data):
    alpha0 = torch.tensor(10.0)
    beta0 = torch.tensor(10.0)
    f = pyro.sample("latent_fairness", dist.Beta(alpha0, beta0))
    with pyro.plate("observe_data", size=10, subsample_size=5) as ind:
        pyro.sample("obs", dist.Bernoulli(f), obs=data.index_select(0, ind))


# tutorial/source/mle_map.ipynb: model_mle (a constrained pyro.param inside the model)
def coin_model_mle(data):
    f = pyro.param("latent_fairness", torch.tensor(0.5), constraint=constraints.unit_interval)
    with pyro.plate("data", data.size(0)):
        pyro.sample("obs", dist.Bernoulli(f), obs=data)


# tutorial/source/mle_map.ipynb: guide_mle
def coin_guide_mle(data):
    pass


# Adapted from mle_map.ipynb: original_model with the prior's pseudo-counts as a
# constrained pyro.param (empirical Bayes), so that a model has a pyro.param *and* a latent.
def coin_empirical_bayes_model(data):
    a = pyro.param("a", torch.tensor(10.0), constraint=constraints.positive)
    f = pyro.sample("latent_fairness", dist.Beta(a, a))
    with pyro.plate("data", data.size(0)):
        pyro.sample("obs", dist.Bernoulli(f), obs=data)


# Adapted from mle_map.ipynb original_model: no Pyro example uses obs_mask, so two of
# the ten flips are marked missing; they become Bernoulli latents ("obs_unobserved").
COIN_OBS_MASK = torch.tensor([True] * 5 + [False] + [True] * 3 + [False])


def coin_obs_mask_model(data):
    f = pyro.sample("latent_fairness", dist.Beta(10.0, 10.0))
    with pyro.plate("data", data.size(0)):
        pyro.sample("obs", dist.Bernoulli(f), obs=data, obs_mask=COIN_OBS_MASK)


def coin_obs_mask_posterior() -> tuple[float, float]:
    seen = COIN_DATA[COIN_OBS_MASK]
    heads = float(seen.sum())
    return COIN_PRIOR[0] + heads, COIN_PRIOR[1] + len(seen) - heads


# Adapted from mle_map.ipynb original_model with the latent renamed "chain": ArviZ uses
# `chain` and `draw` as the dimensions of every posterior variable.
def coin_named_chain_model(data):
    f = pyro.sample("chain", dist.Beta(10.0, 10.0))
    with pyro.plate("data", data.size(0)):
        pyro.sample("obs", dist.Bernoulli(f), obs=data)


# Adapted (no Pyro example does this in a model fit by VI): stochastic control flow, the
# site "w" exists only when z > 0.  Evidence by quadrature in tests/gallery/test_gallery.py.
def branching_model(y):
    z = pyro.sample("z", dist.Normal(0.0, 1.0))
    loc = z
    if z > 0:
        w = pyro.sample("w", dist.Normal(0.0, 1.0))
        loc = z + w
    pyro.sample("y", dist.Normal(loc, 1.0), obs=y)


BRANCH_Y = torch.tensor(1.5)

# ---------------------------------------------------------------------------------------
# Eight schools: examples/eight_schools/mcmc.py (non-centred) and its centred form
# ---------------------------------------------------------------------------------------

EIGHT_Y = torch.tensor([28, 8, -3, 7, -1, 1, 18, 12]).float()  # examples/eight_schools/data.py
EIGHT_SIGMA = torch.tensor([15, 10, 16, 11, 9, 11, 10, 18]).float()
J = 8


# examples/eight_schools/mcmc.py: model (non-centred: theta = mu + tau * eta)
def eight_schools_model(sigma):
    eta = pyro.sample("eta", dist.Normal(torch.zeros(J), torch.ones(J)))
    mu = pyro.sample("mu", dist.Normal(torch.zeros(1), 10 * torch.ones(1)))
    tau = pyro.sample("tau", dist.HalfCauchy(scale=25 * torch.ones(1)))

    theta = mu + tau * eta

    return pyro.sample("obs", dist.Normal(theta, sigma))


# examples/eight_schools/mcmc.py: conditioned_model(model, sigma, y), bound to the model
def eight_schools_noncentered(sigma, y):
    return poutine.condition(eight_schools_model, data={"obs": y})(sigma)


# The centred form of the same model (theta sampled directly), written in the style of
# examples/eight_schools/mcmc.py.
def eight_schools_centered(sigma, y):
    mu = pyro.sample("mu", dist.Normal(torch.zeros(1), 10 * torch.ones(1)))
    tau = pyro.sample("tau", dist.HalfCauchy(scale=25 * torch.ones(1)))
    theta = pyro.sample("theta", dist.Normal(mu * torch.ones(J), tau * torch.ones(J)))
    return pyro.sample("obs", dist.Normal(theta, sigma), obs=y)


# ---------------------------------------------------------------------------------------
# Baseball: examples/baseball.py (Efron and Morris 1975: 18 players, 45 at-bats each)
# ---------------------------------------------------------------------------------------

BASEBALL_HITS = torch.tensor(
    [18, 17, 16, 15, 14, 14, 13, 12, 11, 11, 10, 10, 10, 10, 10, 9, 8, 7]
).float()
BASEBALL_AT_BATS = torch.full((18,), 45.0)


def scalar_like(array, value):  # examples/baseball.py
    return torch.zeros((), dtype=array.dtype, device=array.device).fill_(value)


# examples/baseball.py: partially_pooled
def partially_pooled(at_bats, hits):
    num_players = at_bats.shape[0]
    m = pyro.sample("m", dist.Uniform(scalar_like(at_bats, 0), scalar_like(at_bats, 1)))
    kappa = pyro.sample("kappa", dist.Pareto(scalar_like(at_bats, 1), scalar_like(at_bats, 1.5)))
    with pyro.plate("num_players", num_players):
        phi_prior = dist.Beta(m * kappa, (1 - m) * kappa)
        phi = pyro.sample("phi", phi_prior)
        return pyro.sample("obs", dist.Binomial(at_bats, phi), obs=hits)


# examples/baseball.py: partially_pooled_with_logit
def partially_pooled_with_logit(at_bats, hits):
    num_players = at_bats.shape[0]
    loc = pyro.sample("loc", dist.Normal(scalar_like(at_bats, -1), scalar_like(at_bats, 1)))
    scale = pyro.sample("scale", dist.HalfCauchy(scale=scalar_like(at_bats, 1)))
    with pyro.plate("num_players", num_players):
        alpha = pyro.sample("alpha", dist.Normal(loc, scale))
        return pyro.sample("obs", dist.Binomial(at_bats, logits=alpha), obs=hits)


# ---------------------------------------------------------------------------------------
# Sparse gamma DEF: examples/sparse_gamma_def.py, shrunk (widths 3-2-2, 6 "pixels")
# ---------------------------------------------------------------------------------------


class SparseGammaDEF:
    def __init__(self):
        # shrunk from 100, 40, 15 and 64 * 64
        self.top_width = 3
        self.mid_width = 2
        self.bottom_width = 2
        self.image_size = 6
        self.alpha_z = torch.tensor(0.1)
        self.beta_z = torch.tensor(0.1)
        self.alpha_w = torch.tensor(0.1)
        self.beta_w = torch.tensor(0.3)
        self.alpha_init = 0.5
        self.mean_init = 0.0
        self.sigma_init = 0.1

    # examples/sparse_gamma_def.py: SparseGammaDEF.model, as written
    def model(self, x):
        x_size = x.size(0)
        with pyro.plate("w_top_plate", self.top_width * self.mid_width):
            w_top = pyro.sample("w_top", dist.Gamma(self.alpha_w, self.beta_w))
        with pyro.plate("w_mid_plate", self.mid_width * self.bottom_width):
            w_mid = pyro.sample("w_mid", dist.Gamma(self.alpha_w, self.beta_w))
        with pyro.plate("w_bottom_plate", self.bottom_width * self.image_size):
            w_bottom = pyro.sample("w_bottom", dist.Gamma(self.alpha_w, self.beta_w))
        with pyro.plate("data", x_size):
            z_top = pyro.sample(
                "z_top",
                dist.Gamma(self.alpha_z, self.beta_z).expand([self.top_width]).to_event(1),
            )
            w_top = (
                w_top.reshape(self.top_width, self.mid_width)
                if w_top.dim() == 1
                else w_top.reshape(-1, self.top_width, self.mid_width)
            )
            mean_mid = torch.matmul(z_top, w_top)
            z_mid = pyro.sample("z_mid", dist.Gamma(self.alpha_z, self.beta_z / mean_mid).to_event(1))
            w_mid = (
                w_mid.reshape(self.mid_width, self.bottom_width)
                if w_mid.dim() == 1
                else w_mid.reshape(-1, self.mid_width, self.bottom_width)
            )
            mean_bottom = torch.matmul(z_mid, w_mid)
            z_bottom = pyro.sample(
                "z_bottom", dist.Gamma(self.alpha_z, self.beta_z / mean_bottom).to_event(1)
            )
            w_bottom = (
                w_bottom.reshape(self.bottom_width, self.image_size)
                if w_bottom.dim() == 1
                else w_bottom.reshape(-1, self.bottom_width, self.image_size)
            )
            mean_obs = torch.matmul(z_bottom, w_bottom)
            pyro.sample("obs", dist.Poisson(mean_obs).to_event(1), obs=x)

    # examples/sparse_gamma_def.py: SparseGammaDEF.guide, as written (mean-field Gamma)
    def guide(self, x):
        x_size = x.size(0)

        def sample_zs(name, width):
            alpha_z_q = pyro.param(
                "alpha_z_q_%s" % name,
                lambda: rand_tensor((x_size, width), self.alpha_init, self.sigma_init),
            )
            mean_z_q = pyro.param(
                "mean_z_q_%s" % name,
                lambda: rand_tensor((x_size, width), self.mean_init, self.sigma_init),
            )
            alpha_z_q, mean_z_q = nn.functional.softplus(alpha_z_q), nn.functional.softplus(mean_z_q)
            pyro.sample("z_%s" % name, dist.Gamma(alpha_z_q, alpha_z_q / mean_z_q).to_event(1))

        def sample_ws(name, width):
            alpha_w_q = pyro.param(
                "alpha_w_q_%s" % name,
                lambda: rand_tensor((width), self.alpha_init, self.sigma_init),
            )
            mean_w_q = pyro.param(
                "mean_w_q_%s" % name,
                lambda: rand_tensor((width), self.mean_init, self.sigma_init),
            )
            alpha_w_q, mean_w_q = nn.functional.softplus(alpha_w_q), nn.functional.softplus(mean_w_q)
            pyro.sample("w_%s" % name, dist.Gamma(alpha_w_q, alpha_w_q / mean_w_q))

        with pyro.plate("w_top_plate", self.top_width * self.mid_width):
            sample_ws("top", self.top_width * self.mid_width)
        with pyro.plate("w_mid_plate", self.mid_width * self.bottom_width):
            sample_ws("mid", self.mid_width * self.bottom_width)
        with pyro.plate("w_bottom_plate", self.bottom_width * self.image_size):
            sample_ws("bottom", self.bottom_width * self.image_size)
        with pyro.plate("data", x_size):
            sample_zs("top", self.top_width)
            sample_zs("mid", self.mid_width)
            sample_zs("bottom", self.bottom_width)


def rand_tensor(shape, mean, sigma):  # examples/sparse_gamma_def.py
    return mean * torch.ones(shape) + sigma * torch.randn(shape)


SGDEF = SparseGammaDEF()


def sparse_gamma_def_model(x):
    return SGDEF.model(x)


def sparse_gamma_def_guide(x):
    return SGDEF.guide(x)


def sparse_gamma_def_data(n: int = 5) -> torch.Tensor:
    """Counts drawn from the model's own likelihood at fixed, moderate weights."""
    g = torch.Generator().manual_seed(3)
    z = torch.rand(n, SGDEF.bottom_width, generator=g) * 2 + 0.5
    w = torch.rand(SGDEF.bottom_width, SGDEF.image_size, generator=g) * 3
    return torch.poisson(z @ w, generator=g)


# ---------------------------------------------------------------------------------------
# Hidden Markov model: examples/hmm.py model_1 (shrunk: 2 states, 3 tones, 4 sequences)
# ---------------------------------------------------------------------------------------

HMM_ARGS = SimpleNamespace(hidden_dim=2, jit=False)


def ignore_jit_warnings():  # pyro.util.ignore_jit_warnings, as hmm.py uses it
    return pyro.util.ignore_jit_warnings()


# examples/hmm.py: model_1, as written
def hmm_model_1(sequences, lengths, args, batch_size=None, include_prior=True):
    with ignore_jit_warnings():
        num_sequences, max_length, data_dim = map(int, sequences.shape)
        assert lengths.shape == (num_sequences,)
        assert lengths.max() <= max_length
    with poutine.mask(mask=include_prior):
        probs_x = pyro.sample(
            "probs_x",
            dist.Dirichlet(0.9 * torch.eye(args.hidden_dim) + 0.1).to_event(1),
        )
        probs_y = pyro.sample(
            "probs_y",
            dist.Beta(0.1, 0.9).expand([args.hidden_dim, data_dim]).to_event(2),
        )
    tones_plate = pyro.plate("tones", data_dim, dim=-1)
    with pyro.plate("sequences", num_sequences, batch_size, dim=-2) as batch:
        lengths = lengths[batch]
        x = 0
        for t in pyro.markov(range(max_length if args.jit else lengths.max())):
            with poutine.mask(mask=(t < lengths).unsqueeze(-1)):
                x = pyro.sample(
                    "x_{}".format(t),
                    dist.Categorical(probs_x[x]),
                    infer={"enumerate": "parallel"},
                )
                with tones_plate:
                    pyro.sample(
                        "y_{}".format(t),
                        dist.Bernoulli(probs_y[x.squeeze(-1)]),
                        obs=sequences[batch, t],
                    )


def hmm_data():
    """Four sequences of three tones, lengths 4, 3, 4, 2 (padded with zeros)."""
    g = torch.Generator().manual_seed(1)
    probs_x = torch.tensor([[0.8, 0.2], [0.3, 0.7]])
    probs_y = torch.tensor([[0.9, 0.1, 0.5], [0.2, 0.8, 0.4]])
    lengths = torch.tensor([4, 3, 4, 2])
    seqs = torch.zeros(4, 4, 3)
    for n in range(4):
        x = 0
        for t in range(int(lengths[n])):
            x = int(torch.multinomial(probs_x[x], 1, generator=g))
            seqs[n, t] = torch.bernoulli(probs_y[x], generator=g)
    return seqs, lengths


def hmm_loglik_bruteforce(probs_x, probs_y, sequences, lengths) -> float:
    """log p(y | probs) summed over every hidden path, path by path (no recursion)."""
    import itertools

    total = 0.0
    for n in range(sequences.shape[0]):
        T = int(lengths[n])
        terms = []
        for path in itertools.product(range(probs_x.shape[0]), repeat=T):
            lp, prev = 0.0, 0
            for t, x in enumerate(path):
                lp += float(torch.log(probs_x[prev, x]))
                y = sequences[n, t]
                py = probs_y[x]
                lp += float((y * py.log() + (1 - y) * (1 - py).log()).sum())
                prev = x
            terms.append(lp)
        total += float(torch.logsumexp(torch.tensor(terms, dtype=torch.float64), 0))
    return total


# ---------------------------------------------------------------------------------------
# Capture-recapture: examples/capture_recapture/cjs.py model_1 (8 animals, 5 periods)
# ---------------------------------------------------------------------------------------


# examples/capture_recapture/cjs.py: model_1, as written
def cjs_model_1(capture_history, sex):
    N, T = capture_history.shape
    phi = pyro.sample("phi", dist.Uniform(0.0, 1.0))  # survival probability
    rho = pyro.sample("rho", dist.Uniform(0.0, 1.0))  # recapture probability

    with pyro.plate("animals", N, dim=-1):
        z = torch.ones(N)
        first_capture_mask = torch.zeros(N).bool()
        for t in pyro.markov(range(T)):
            with poutine.mask(mask=first_capture_mask):
                mu_z_t = first_capture_mask.float() * phi * z + (1 - first_capture_mask.float())
                z = pyro.sample(
                    "z_{}".format(t),
                    dist.Bernoulli(mu_z_t),
                    infer={"enumerate": "parallel"},
                )
                mu_y_t = rho * z
                pyro.sample("y_{}".format(t), dist.Bernoulli(mu_y_t), obs=capture_history[:, t])
            first_capture_mask |= capture_history[:, t].bool()


CJS_HISTORY = torch.tensor(
    [
        [1, 1, 0, 1, 0],
        [1, 0, 1, 0, 0],
        [1, 1, 1, 1, 1],
        [0, 1, 1, 0, 0],
        [0, 1, 0, 0, 0],
        [1, 0, 0, 0, 0],
        [0, 0, 1, 1, 1],
        [1, 1, 0, 0, 1],
    ]
).float()
CJS_SEX = torch.zeros(8)


def cjs_loglik_bruteforce(phi: torch.Tensor, rho: torch.Tensor) -> torch.Tensor:
    """log p(history | phi, rho) for a batch of (phi, rho), by summing over every alive/dead
    path after first capture (alive at first capture; once dead, dead)."""
    hist = CJS_HISTORY
    total = torch.zeros_like(phi)
    T = hist.shape[1]
    for row in hist:
        first = int(row.nonzero()[0])
        # the animal dies after period d (d = first..T-1, d = T-1: alive throughout)
        terms = []
        for d in range(first, T):
            lp = torch.zeros_like(phi)
            for t in range(first + 1, T):
                alive = t <= d
                lp = lp + (phi.log() if alive else 0.0)
                if t == d + 1:
                    lp = lp + (1 - phi).log()
                if alive:
                    lp = lp + (rho.log() if row[t] else (1 - rho).log())
                elif row[t]:
                    lp = lp + float("-inf")
            terms.append(lp)
        total = total + torch.logsumexp(torch.stack(terms), 0)
    return total


# ---------------------------------------------------------------------------------------
# examples/toy_mixture_model_discrete_enumeration.py (8 observations)
# ---------------------------------------------------------------------------------------


# examples/toy_mixture_model_discrete_enumeration.py: model, as written
def toy_mixture_model(prior, obs, num_obs):
    p_A = pyro.sample("p_A", dist.Beta(1, 1))
    p_B = pyro.sample("p_B", dist.Beta(torch.ones(2), torch.ones(2)).to_event(1))
    p_C = pyro.sample("p_C", dist.Beta(torch.ones(2), torch.ones(2)).to_event(1))
    with pyro.plate("data_plate", num_obs):
        A = pyro.sample("A", dist.Bernoulli(p_A.expand(num_obs)), obs=obs["A"])
        B = pyro.sample(
            "B",
            dist.Bernoulli(Vindex(p_B)[A.type(torch.long)]),
            infer={"enumerate": "parallel"},
        )
        pyro.sample("C", dist.Bernoulli(Vindex(p_C)[B.type(torch.long)]), obs=obs["C"])


# examples/toy_mixture_model_discrete_enumeration.py: guide, as written
def toy_mixture_guide(prior, obs, num_obs):
    a = pyro.param("a", prior["A"], constraint=constraints.positive)
    pyro.sample("p_A", dist.Beta(a[0], a[1]))
    b = pyro.param("b", prior["B"], constraint=constraints.positive)
    pyro.sample("p_B", dist.Beta(b[:, 0], b[:, 1]).to_event(1))
    c = pyro.param("c", prior["C"], constraint=constraints.positive)
    pyro.sample("p_C", dist.Beta(c[:, 0], c[:, 1]).to_event(1))


TOY_OBS = {
    "A": torch.tensor([1.0, 1.0, 0.0, 1.0, 0.0, 1.0, 1.0, 0.0]),
    "C": torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 0.0]),
}
# examples/toy_mixture_model_discrete_enumeration.py: main's prior for the guide
TOY_PRIOR = {
    "A": torch.ones(2),
    "B": torch.ones(2, 2),
    "C": torch.ones(2, 2),
}


def toy_mixture_exact() -> dict:
    """Exact log evidence and posterior means by enumerating all 2^N values of B: given B,
    each of p_A, p_B[a], p_C[b] has a conjugate Beta(1 + ones, 1 + zeros) posterior."""
    import itertools
    import math

    A, C = TOY_OBS["A"].long(), TOY_OBS["C"].long()
    n = len(A)

    def log_beta_ratio(ones, zeros):  # log B(1 + ones, 1 + zeros) - log B(1, 1)
        return math.lgamma(1 + ones) + math.lgamma(1 + zeros) - math.lgamma(2 + ones + zeros)

    logs, means = [], []
    for bits in itertools.product((0, 1), repeat=n):
        B = torch.tensor(bits)
        lp = log_beta_ratio(int(A.sum()), int(n - A.sum()))
        mean = {"p_A": (1 + A.sum().item()) / (2 + n), "p_B": [], "p_C": []}
        for a in (0, 1):
            sel = A == a
            ones, zeros = int(B[sel].sum()), int(sel.sum() - B[sel].sum())
            lp += log_beta_ratio(ones, zeros)
            mean["p_B"].append((1 + ones) / (2 + ones + zeros))
        for b in (0, 1):
            sel = B == b
            ones, zeros = int(C[sel].sum()), int(sel.sum() - C[sel].sum())
            lp += log_beta_ratio(ones, zeros)
            mean["p_C"].append((1 + ones) / (2 + ones + zeros))
        logs.append(lp)
        means.append(mean)
    logs = torch.tensor(logs, dtype=torch.float64)
    log_ev = float(torch.logsumexp(logs, 0))
    w = (logs - log_ev).exp()
    post = {
        "p_A": float(sum(wi * m["p_A"] for wi, m in zip(w, means))),
        "p_B": [float(sum(wi * m["p_B"][k] for wi, m in zip(w, means))) for k in (0, 1)],
        "p_C": [float(sum(wi * m["p_C"][k] for wi, m in zip(w, means))) for k in (0, 1)],
    }
    return {"log_evidence": log_ev, "mean": post}


# ---------------------------------------------------------------------------------------
# Gaussian mixture: tutorial/source/gmm.ipynb
# ---------------------------------------------------------------------------------------

GMM_DATA = torch.tensor([0.0, 1.0, 10.0, 11.0, 12.0])  # gmm.ipynb
K = 2  # Fixed number of components.


# tutorial/source/gmm.ipynb: model, as written
@pyro.infer.config_enumerate
def gmm_model(data):
    weights = pyro.sample("weights", dist.Dirichlet(0.5 * torch.ones(K)))
    scale = pyro.sample("scale", dist.LogNormal(0.0, 2.0))
    with pyro.plate("components", K):
        locs = pyro.sample("locs", dist.Normal(0.0, 10.0))

    with pyro.plate("data", len(data)):
        assignment = pyro.sample("assignment", dist.Categorical(weights))
        pyro.sample("obs", dist.Normal(locs[assignment], scale), obs=data)


def gmm_log_joint_bruteforce(weights, scale, locs, data=GMM_DATA) -> torch.Tensor:
    """log p(data, weights, scale, locs) with the assignments summed over all K^N values,
    for a batch of global draws (weights (S, K), scale (S,), locs (S, K))."""
    import itertools

    data = data.double()
    weights, scale, locs = weights.double(), scale.double(), locs.double()
    lp = dist.Dirichlet(0.5 * torch.ones(K, dtype=torch.float64)).log_prob(weights)
    lp = lp + dist.LogNormal(0.0, 2.0).log_prob(scale)
    lp = lp + dist.Normal(0.0, 10.0).log_prob(locs).sum(-1)
    terms = []
    for assign in itertools.product(range(K), repeat=len(data)):
        a = torch.tensor(assign)
        t = weights[:, a].log().sum(-1)
        t = t + dist.Normal(locs[:, a], scale[:, None]).log_prob(data).sum(-1)
        terms.append(t)
    return lp + torch.logsumexp(torch.stack(terms), 0)


# ---------------------------------------------------------------------------------------
# Bayesian regression: tutorial/source/bayesian_regression.ipynb (PyroModule)
# ---------------------------------------------------------------------------------------


# tutorial/source/bayesian_regression.ipynb: BayesianRegression, as written
class BayesianRegression(pyro.nn.PyroModule):
    def __init__(self, in_features, out_features):
        super().__init__()
        self.linear = pyro.nn.PyroModule[nn.Linear](in_features, out_features)
        self.linear.weight = pyro.nn.PyroSample(
            dist.Normal(0.0, 1.0).expand([out_features, in_features]).to_event(2)
        )
        self.linear.bias = pyro.nn.PyroSample(
            dist.Normal(0.0, 10.0).expand([out_features]).to_event(1)
        )

    def forward(self, x, y=None):
        sigma = pyro.sample("sigma", dist.Uniform(0.0, 10.0))
        mean = self.linear(x).squeeze(-1)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("obs", dist.Normal(mean, sigma), obs=y)
        return mean


def rugged_like_data(n: int = 40):
    """Data shaped like the tutorial's (cont_africa, rugged, interaction) -> log GDP,
    generated from the model at the tutorial's fitted values (the CSV is a download)."""
    g = torch.Generator().manual_seed(2)
    africa = (torch.rand(n, generator=g) < 0.3).float()
    rugged = torch.rand(n, generator=g) * 4
    x = torch.stack([africa, rugged, africa * rugged], -1)
    w = torch.tensor([-1.9, -0.2, 0.4])
    y = 9.2 + x @ w + 0.9 * torch.randn(n, generator=g)
    return x, y


REGRESSION_SIGMA = 0.9


# The tutorial's model with the noise known (sigma fixed at its generating value), written
# `x @ w` as the tutorial's linear layer computes it: the posterior of (weight, bias) is
# Gaussian in closed form.
def regression_known_noise(x, y=None):
    weight = pyro.sample("weight", dist.Normal(0.0, 1.0).expand([3]).to_event(1))
    bias = pyro.sample("bias", dist.Normal(0.0, 10.0))
    mean = x @ weight + bias
    with pyro.plate("data", x.shape[0]):
        pyro.sample("obs", dist.Normal(mean, REGRESSION_SIGMA), obs=y)


def regression_known_noise_posterior(x, y):
    """Exact Gaussian posterior of [weight, bias] (mean (4,), cov (4, 4))."""
    X = torch.cat([x, torch.ones(x.shape[0], 1)], -1).double()
    prior_prec = torch.diag(torch.tensor([1.0, 1.0, 1.0, 0.01], dtype=torch.float64))
    prec = prior_prec + X.T @ X / REGRESSION_SIGMA**2
    cov = torch.linalg.inv(prec)
    mean = cov @ (X.T @ y.double()) / REGRESSION_SIGMA**2
    return mean, cov


def regression_known_noise_evidence(x, y) -> float:
    X = torch.cat([x, torch.ones(x.shape[0], 1)], -1).double()
    prior_cov = torch.diag(torch.tensor([1.0, 1.0, 1.0, 100.0], dtype=torch.float64))
    cov = X @ prior_cov @ X.T + REGRESSION_SIGMA**2 * torch.eye(x.shape[0], dtype=torch.float64)
    return float(dist.MultivariateNormal(torch.zeros(x.shape[0], dtype=torch.float64), cov).log_prob(y.double()))


# ---------------------------------------------------------------------------------------
# VAE: tutorial/source/vae.ipynb (shrunk: 6 "pixels", z_dim 2, 4 hidden units)
# ---------------------------------------------------------------------------------------

PIXELS = 6


class Decoder(nn.Module):  # tutorial/source/vae.ipynb, 784 -> PIXELS
    def __init__(self, z_dim, hidden_dim):
        super().__init__()
        self.fc1 = nn.Linear(z_dim, hidden_dim)
        self.fc21 = nn.Linear(hidden_dim, PIXELS)
        self.softplus = nn.Softplus()
        self.sigmoid = nn.Sigmoid()

    def forward(self, z):
        hidden = self.softplus(self.fc1(z))
        loc_img = self.sigmoid(self.fc21(hidden))
        return loc_img


class Encoder(nn.Module):  # tutorial/source/vae.ipynb, 784 -> PIXELS
    def __init__(self, z_dim, hidden_dim):
        super().__init__()
        self.fc1 = nn.Linear(PIXELS, hidden_dim)
        self.fc21 = nn.Linear(hidden_dim, z_dim)
        self.fc22 = nn.Linear(hidden_dim, z_dim)
        self.softplus = nn.Softplus()

    def forward(self, x):
        x = x.reshape(-1, PIXELS)
        hidden = self.softplus(self.fc1(x))
        z_loc = self.fc21(hidden)
        z_scale = torch.exp(self.fc22(hidden))
        return z_loc, z_scale


class VAE(nn.Module):  # tutorial/source/vae.ipynb
    def __init__(self, z_dim=2, hidden_dim=4):
        super().__init__()
        torch.manual_seed(0)  # the networks' initial weights, so fits are reproducible
        self.encoder = Encoder(z_dim, hidden_dim)
        self.decoder = Decoder(z_dim, hidden_dim)
        self.z_dim = z_dim

    def model(self, x):
        pyro.module("decoder", self.decoder)
        with pyro.plate("data", x.shape[0]):
            z_loc = x.new_zeros(torch.Size((x.shape[0], self.z_dim)))
            z_scale = x.new_ones(torch.Size((x.shape[0], self.z_dim)))
            z = pyro.sample("latent", dist.Normal(z_loc, z_scale).to_event(1))
            loc_img = self.decoder(z)
            pyro.sample("obs", dist.Bernoulli(loc_img).to_event(1), obs=x.reshape(-1, PIXELS))

    def guide(self, x):
        pyro.module("encoder", self.encoder)
        with pyro.plate("data", x.shape[0]):
            z_loc, z_scale = self.encoder(x)
            pyro.sample("latent", dist.Normal(z_loc, z_scale).to_event(1))


def vae_data(n: int = 16) -> torch.Tensor:
    g = torch.Generator().manual_seed(4)
    proto = torch.tensor([[1.0, 1, 1, 0, 0, 0], [0, 0, 0, 1, 1, 1]])
    x = proto[torch.randint(0, 2, (n,), generator=g)]
    flip = torch.rand(n, PIXELS, generator=g) < 0.1
    return (x + flip.float()) % 2


# ---------------------------------------------------------------------------------------
# LKJ: examples/lkj.py (d = 2, 40 observations)
# ---------------------------------------------------------------------------------------


# examples/lkj.py: model, as written
def lkj_model(y):
    d = y.shape[1]
    N = y.shape[0]
    options = dict(dtype=y.dtype, device=y.device)
    theta = pyro.sample("theta", dist.HalfCauchy(torch.ones(d, **options)))
    concentration = torch.ones((), **options)
    L_omega = pyro.sample("L_omega", dist.LKJCholesky(d, concentration))
    L_Omega = torch.mm(torch.diag(theta.sqrt()), L_omega)
    mu = torch.zeros(d, **options)
    with pyro.plate("observations", N):
        obs = pyro.sample("obs", dist.MultivariateNormal(mu, scale_tril=L_Omega), obs=y)
    return obs


def lkj_data(n: int = 40) -> torch.Tensor:
    g = torch.Generator().manual_seed(5)
    cov = torch.tensor([[1.0, 0.6], [0.6, 2.0]])
    return torch.randn(n, 2, generator=g) @ torch.linalg.cholesky(cov).T


# ---------------------------------------------------------------------------------------
# tutorial/source/workflow.ipynb: the logistic-growth model (nested plates,
# pyro.deterministic inside a plate) and its pyro.factor version (shrunk: 4 times,
# 2 places, 3 strains, 2 mutations)
# ---------------------------------------------------------------------------------------


# tutorial/source/workflow.ipynb: first model, as written
def workflow_model(dataset):
    features = dataset["features"]
    counts = dataset["counts"]
    assert features.shape[0] == counts.shape[-1]
    S, M = features.shape
    T, P, S = counts.shape
    time = torch.arange(float(T)) * dataset["time_step_days"] / 5.5
    time -= time.mean()
    strain_plate = pyro.plate("strain", S, dim=-1)
    place_plate = pyro.plate("place", P, dim=-2)
    time_plate = pyro.plate("time", T, dim=-3)

    rate_scale = pyro.sample("rate_scale", dist.LogNormal(-4, 2))
    init_scale = pyro.sample("init_scale", dist.LogNormal(0, 2))
    with pyro.plate("mutation", M, dim=-1):
        coef = pyro.sample("coef", dist.Laplace(0, 0.5))
    with strain_plate:
        rate_loc = pyro.deterministic("rate_loc", 0.01 * coef @ features.T)
    with place_plate, strain_plate:
        rate = pyro.sample("rate", dist.Normal(rate_loc, rate_scale))
        init = pyro.sample("init", dist.Normal(0, init_scale))
    logits = init + rate * time[:, None, None]

    with time_plate, place_plate:
        pyro.sample(
            "obs",
            dist.Multinomial(logits=logits.unsqueeze(-2), validate_args=False),
            obs=counts.unsqueeze(-2),
        )


# tutorial/source/workflow.ipynb: the pyro.factor model, as written
def workflow_factor_model(dataset, predict=None):
    features = dataset["features"]
    counts = dataset["counts"]
    sparse_counts = dataset["sparse_counts"]
    assert features.shape[0] == counts.shape[-1]
    S, M = features.shape
    T, P, S = counts.shape
    time = torch.arange(float(T)) * dataset["time_step_days"] / 5.5
    time -= time.mean()

    rate_scale = pyro.sample("rate_scale", dist.LogNormal(-4, 2))
    init_scale = pyro.sample("init_scale", dist.LogNormal(0, 2))
    with pyro.plate("mutation", M, dim=-1):
        coef = pyro.sample("coef", dist.Laplace(0, 0.5))
    with pyro.plate("strain", S, dim=-1):
        rate_loc = pyro.deterministic("rate_loc", 0.01 * coef @ features.T)
        with pyro.plate("place", P, dim=-2):
            rate = pyro.sample("rate", dist.Normal(rate_loc, rate_scale))
            init = pyro.sample("init", dist.Normal(0, init_scale))
    if predict is not None:
        probs = (init + rate * time[predict]).softmax(-1)
        return probs
    logits = (init + rate * time[:, None, None]).log_softmax(-1)

    t, p, s = sparse_counts["index"]
    pyro.factor(
        "obs",
        sparse_multinomial_likelihood(sparse_counts["total"], logits[t, p, s], sparse_counts["value"]),
    )


def workflow_dataset() -> dict:
    g = torch.Generator().manual_seed(6)
    T, P, S = 4, 2, 3
    features = torch.tensor([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0]])
    time = torch.arange(float(T)) * 14 / 5.5
    time -= time.mean()
    rate = torch.tensor([0.0, 0.3, 0.6]) + 0.05 * torch.randn(P, S, generator=g)
    init = torch.tensor([1.0, 0.0, -1.0]) + 0.5 * torch.randn(P, S, generator=g)
    logits = init + rate * time[:, None, None]
    counts = torch.stack(
        [
            torch.stack([torch.multinomial(logits[t, p].softmax(-1), 20, True, generator=g).bincount(minlength=S) for p in range(P)])
            for t in range(T)
        ]
    ).float()
    nnz = counts.nonzero(as_tuple=True)
    return {
        "features": features,
        "counts": counts,
        "time_step_days": 14,
        "sparse_counts": {"index": torch.stack(nnz), "total": counts.sum(-1), "value": counts[nnz]},
    }


# ---------------------------------------------------------------------------------------
# tutorial/source/predictive_deterministic.ipynb (pyro.deterministic outside a plate)
# ---------------------------------------------------------------------------------------


# tutorial/source/predictive_deterministic.ipynb: model, as written
def predictive_deterministic_model(features, counts):
    N, P = features.shape
    scale = pyro.sample("scale", dist.LogNormal(0, 1))
    coef = pyro.sample("coef", dist.Normal(0, scale).expand([P]).to_event(1))
    rate = pyro.deterministic("rate", torch.nn.functional.softplus(coef @ features.T))
    concentration = pyro.sample("concentration", dist.LogNormal(0, 1))
    with pyro.plate("bins", N):
        return pyro.sample("counts", dist.GammaPoisson(concentration, rate), obs=counts)


def predictive_deterministic_data(n: int = 30):
    g = torch.Generator().manual_seed(7)
    features = torch.randn(n, 2, generator=g)
    mean = torch.nn.functional.softplus(features @ torch.tensor([1.0, -0.5])) * 3
    counts = torch.poisson(mean, generator=g)
    return features, counts


# ---------------------------------------------------------------------------------------
# Models whose parameters are pyro.param sites (constrained), for EM and VI
# ---------------------------------------------------------------------------------------


# examples/contrib/autoname/scoping_mixture.py: model, as written (scope prefix "local")
def scoping_mixture_model(K, data):
    weights = pyro.param("weights", torch.ones(K) / K, constraint=constraints.simplex)
    locs = pyro.param("locs", 10 * torch.randn(K))
    scale = pyro.param("scale", torch.tensor(0.5), constraint=constraints.positive)

    with pyro.plate("data"):
        return scoping_local_model(weights, locs, scale, data)


@scope(prefix="local")
def scoping_local_model(weights, locs, scale, data):
    assignment = pyro.sample("assignment", dist.Categorical(weights).expand_by([len(data)]))
    return pyro.sample("obs", dist.Normal(locs[assignment], scale), obs=data)


SCOPING_DATA = torch.tensor([0.0, 1.0, 2.0, 20.0, 30.0, 40.0])  # scoping_mixture.py main


def scoping_mixture_evidence(params, data=SCOPING_DATA) -> float:
    """log p(data | params), each point's assignment summed over K by hand."""
    w, locs, scale = params["weights"].double(), params["locs"].double(), params["scale"].double()
    per_point = torch.logsumexp(w.log() + dist.Normal(locs, scale).log_prob(data.double()[:, None]), -1)
    return float(per_point.sum())


# examples/hmm.py: model_6 (second-order HMM, parameters as pyro.param), as written
HMM6_ARGS = SimpleNamespace(hidden_dim=2, raftery_parameterization=False)


def hmm_model_6(sequences, lengths, args, batch_size=None, include_prior=False):
    num_sequences, max_length, data_dim = sequences.shape
    assert lengths.shape == (num_sequences,)
    assert lengths.max() <= max_length
    hidden_dim = args.hidden_dim

    if not args.raftery_parameterization:
        probs_x = pyro.param(
            "probs_x",
            torch.rand(hidden_dim, hidden_dim, hidden_dim),
            constraint=constraints.simplex,
        )
    else:
        probs_x1 = pyro.param(
            "probs_x1", torch.rand(hidden_dim, hidden_dim), constraint=constraints.simplex
        )
        probs_x2 = pyro.param(
            "probs_x2", torch.rand(hidden_dim, hidden_dim), constraint=constraints.simplex
        )
        mix_lambda = pyro.param("mix_lambda", torch.tensor(0.5), constraint=constraints.unit_interval)
        probs_x = mix_lambda * probs_x1 + (1.0 - mix_lambda) * probs_x2.unsqueeze(-2)

    probs_y = pyro.param(
        "probs_y",
        torch.rand(hidden_dim, data_dim),
        constraint=constraints.unit_interval,
    )
    tones_plate = pyro.plate("tones", data_dim, dim=-1)
    with pyro.plate("sequences", num_sequences, batch_size, dim=-2) as batch:
        lengths = lengths[batch]
        x_curr, x_prev = torch.tensor(0), torch.tensor(0)
        for t in pyro.markov(range(lengths.max()), history=2):
            with poutine.mask(mask=(t < lengths).unsqueeze(-1)):
                probs_x_t = Vindex(probs_x)[x_prev, x_curr]
                x_prev, x_curr = x_curr, pyro.sample(
                    "x_{}".format(t),
                    dist.Categorical(probs_x_t),
                    infer={"enumerate": "parallel"},
                )
                with tones_plate:
                    probs_y_t = probs_y[x_curr.squeeze(-1)]
                    pyro.sample("y_{}".format(t), dist.Bernoulli(probs_y_t), obs=sequences[batch, t])


def hmm6_loglik_bruteforce(probs_x, probs_y, sequences, lengths) -> float:
    """log p(y | probs) of the second-order chain, summed path by path."""
    import itertools

    probs_x, probs_y = probs_x.double(), probs_y.double()
    total = 0.0
    for n in range(sequences.shape[0]):
        T = int(lengths[n])
        terms = []
        for path in itertools.product(range(probs_x.shape[0]), repeat=T):
            lp, prev, curr = 0.0, 0, 0
            for t, x in enumerate(path):
                lp += float(probs_x[prev, curr, x].log())
                y = sequences[n, t].double()
                py = probs_y[x]
                lp += float((y * py.log() + (1 - y) * (1 - py).log()).sum())
                prev, curr = curr, x
            terms.append(lp)
        total += float(torch.logsumexp(torch.tensor(terms, dtype=torch.float64), 0))
    return total
