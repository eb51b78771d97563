"""Gradient estimators for a discrete latent: enumeration, score function, relaxation.

The model is a two-component mixture with a shared unknown shift ``mu``::

    mu ~ N(0, 3^2);   z_n ~ Bernoulli(1/2);   x_n ~ N(mu + 2 (2 z_n - 1), 1),   n = 1..20

The ELBO's expectation over the discrete ``z`` can be handled three ways, and this script
does each twice: once to *train* with ``pyrovi.VI``, once to measure the *variance of the
gradient* that each estimator gives at the same, fixed parameters.

* **Enumeration.**  ``z`` is summed out exactly.  ``pyrovi.VI(model, "meanfield")`` does it
  automatically (the guide covers only ``mu``; ``result.enumerated_sites == ("z",)``).  For
  the gradient study the guide's ``q(z)`` is enumerated instead (``infer={"enumerate":
  "parallel"}`` with ``TraceEnum_ELBO``): the sum over ``z`` is exact and only ``mu``'s
  reparameterized draw is random.
* **Score function** (REINFORCE).  A guide that samples ``z ~ Bernoulli(logits)``: Pyro's
  ``Trace_ELBO`` sees a non-reparameterizable site and adds the term
  ``log q(z) * (log p - log q)`` to its surrogate loss.  Unbiased, but noisy.
* **Continuous relaxation** (straight-through Gumbel-softmax, Jang et al. 2017).  The guide
  samples ``RelaxedBernoulliStraightThrough``: the forward value is a hard 0/1, the gradient
  flows through the relaxed sample (the draw is scored by its Bernoulli mass, so the
  objective stays the discrete ELBO).  Reparameterized, but biased: its mean is not the
  ELBO's gradient.

The gradient study draws ``R`` single-sample gradients of the ELBO with Pyro's
``differentiable_loss`` at the guide's starting parameters and reports their variance
(summed over the 20 logits of ``q(z)``, and for ``q(mu)``'s location) and, for the
relaxation, its bias: the squared distance of the mean gradient from the exact one in units
of its Monte Carlo variance, averaged over the parameters (about 1 for an unbiased
estimator, far above 1 for a biased one).  The fits are compared by their true
ELBO (the relaxed fit's parameters evaluated under the discrete guide) and the exact
``log p(x)``, by quadrature over the one-dimensional ``mu``.

Run ``python examples/07_gradient_estimators.py`` (about a minute) or with ``--quick``.
"""

from __future__ import annotations

import math
import sys

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from pyro.infer import Trace_ELBO, TraceEnum_ELBO

import pyrovi

N, SEP, TEMPERATURE = 20, 2.0, 0.5


def load_data(seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    z = torch.rand(N, generator=gen, dtype=torch.float64) < 0.5
    return 0.7 + SEP * (2 * z.double() - 1) + torch.randn(N, generator=gen, dtype=torch.float64)


def mixture_model(x: torch.Tensor):
    mu = pyro.sample("mu", dist.Normal(x.new_zeros(()), 3.0))
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Bernoulli(x.new_full((), 0.5)))
        pyro.sample("x", dist.Normal(mu + SEP * (2 * z - 1), 1.0), obs=x)


def _q_mu(x: torch.Tensor):
    loc = pyro.param("mu_loc", lambda: x.new_zeros(()))
    scale = pyro.param("mu_scale", lambda: x.new_ones(()), constraint=constraints.positive)
    pyro.sample("mu", dist.Normal(loc, scale))
    return pyro.param("z_logits", lambda: x.new_zeros(x.shape[0]))


def guide_score_function(x: torch.Tensor):
    """q(mu) q(z): z sampled from a Bernoulli -> score-function gradient."""
    logits = _q_mu(x)
    with pyro.plate("data", x.shape[0]):
        pyro.sample("z", dist.Bernoulli(logits=logits))


class StraightThroughBernoulli(dist.RelaxedBernoulliStraightThrough):
    """A hard 0/1 draw whose gradient is that of a relaxed (Concrete) draw, scored by the
    Bernoulli mass of the hard value.

    Pyro's ``RelaxedBernoulliStraightThrough`` scores a draw by the *relaxed density* of its
    soft value, which mixed with the model's Bernoulli mass gives a number that is no ELBO
    (and pulls the logits astray); scoring the hard value keeps the objective the discrete
    ELBO and leaves the straight-through pathwise gradient.
    """

    def log_prob(self, value):
        return dist.Bernoulli(logits=self.logits).log_prob(value)


def guide_relaxed(x: torch.Tensor):
    """The same family, z drawn by the straight-through relaxation."""
    logits = _q_mu(x)
    with pyro.plate("data", x.shape[0]):
        pyro.sample("z", StraightThroughBernoulli(x.new_tensor(TEMPERATURE), logits=logits))


def guide_enumerated(x: torch.Tensor):
    """The same family, q(z) summed out exactly (with TraceEnum_ELBO)."""
    logits = _q_mu(x)
    with pyro.plate("data", x.shape[0]):
        pyro.sample("z", dist.Bernoulli(logits=logits), infer={"enumerate": "parallel"})


PARAMS = ("mu_loc", "mu_scale", "z_logits")


def gradient_draws(elbo, guide, x: torch.Tensor, num_draws: int, seed: int) -> torch.Tensor:
    """``num_draws`` single-sample gradients of the ELBO (not the loss) with respect to
    ``(mu_loc, log mu_scale, z_logits)`` at the guide's initial parameters, shape
    ``(num_draws, 2 + N)``."""
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    guide(x)  # creates the parameters at their initial values
    store = pyro.get_param_store()
    unconstrained = [store[name].unconstrained() for name in PARAMS]  # the leaf tensors
    draws = []
    for _ in range(num_draws):
        loss = elbo.differentiable_loss(mixture_model, guide, x)
        grads = torch.autograd.grad(loss, unconstrained)
        draws.append(-torch.cat([g.reshape(-1) for g in grads]))
    pyro.clear_param_store()
    return torch.stack(draws)


def exact_log_evidence(x: torch.Tensor) -> float:
    """``log p(x)`` by the trapezoid rule over ``mu`` on a fine grid (z summed exactly)."""
    mu = torch.linspace(-15.0, 15.0, 30001, dtype=torch.float64)
    comp = torch.stack([dist.Normal(mu[:, None] - SEP, 1.0).log_prob(x),
                        dist.Normal(mu[:, None] + SEP, 1.0).log_prob(x)])
    log_lik = (torch.logsumexp(comp, 0) + math.log(0.5)).sum(-1)
    log_joint = dist.Normal(0.0, 3.0).log_prob(mu) + log_lik
    step = float(mu[1] - mu[0])
    return float(torch.logsumexp(log_joint, 0) + math.log(step))


def true_elbo(fit, x: torch.Tensor, num_particles: int = 4000) -> float:
    """The ELBO of a fitted q(mu) q(z) (z enumerated exactly under q), in nats."""
    elbo = TraceEnum_ELBO(num_particles=num_particles, vectorize_particles=True,
                          max_plate_nesting=1)
    with fit.scope(), torch.no_grad():
        pyro.set_rng_seed(0)
        return -float(elbo.loss(mixture_model, guide_enumerated, x))


def main(quick: bool = False) -> dict:
    x = load_data()
    log_px = exact_log_evidence(x)

    # ---- the gradient study, at the guides' common starting point
    R = 200 if quick else 1000
    estimators = {
        "enumeration": (TraceEnum_ELBO(max_plate_nesting=1), guide_enumerated),
        "score function": (Trace_ELBO(), guide_score_function),
        "relaxed (ST)": (Trace_ELBO(), guide_relaxed),
    }
    grads = {k: gradient_draws(e, g, x, R, seed=1) for k, (e, g) in estimators.items()}
    exact_mean = grads["enumeration"].mean(0)
    print(f"Two-component mixture, {N} points; gradient of the ELBO at the initial parameters,"
          f" {R} single-sample draws")
    print(f"  {'estimator':15s} {'var, z logits (sum)':>20s} {'var, mu loc':>12s} "
          f"{'bias (~1: unbiased)':>20s}")
    var_logits, var_loc, bias = {}, {}, {}
    for name, g in grads.items():
        var_logits[name] = float(g[:, 2:].var(0).sum())
        var_loc[name] = float(g[:, 0].var())
        if name == "enumeration":
            bias[name] = float("nan")  # the reference itself
        else:  # squared error of the mean over its Monte Carlo variance (the exact mean's too)
            mc_var = (g.var(0) + grads["enumeration"].var(0)) / R
            bias[name] = float(((g.mean(0) - exact_mean).square() / mc_var).mean())
        print(f"  {name:15s} {var_logits[name]:20.4g} {var_loc[name]:12.4g} "
              f"{bias[name]:20.2f}")
    print(f"  variance ratio score function / enumeration (logits): "
          f"{var_logits['score function'] / var_logits['enumeration']:.0f}x")

    # ---- training with each estimator through pyrovi.VI
    steps = 400 if quick else 3000
    fits = {
        "enumeration": pyrovi.VI(mixture_model, "meanfield", num_steps=steps, seed=0,
                                 progress=False).run(x),
        "score function": pyrovi.VI(mixture_model, guide_score_function, num_steps=steps,
                                    seed=0, progress=False).run(x),
        "relaxed (ST)": pyrovi.VI(mixture_model, guide_relaxed, num_steps=steps, seed=0,
                                  progress=False).run(x),
    }
    print(f"\nTraining with pyrovi.VI; exact log p(x) = {log_px:.3f} (quadrature over mu)")
    print(f"  {'estimator':15s} {'ELBO':>9s} {'gap':>7s} {'E_q[mu]':>8s} {'steps':>6s}  note")
    elbos, mu_means = {}, {}
    for name, fit in fits.items():
        if name == "enumeration":
            elbo = fit.elbo  # q(mu) only: z summed out in the model, a tighter bound
            note = f"enumerated sites {fit.enumerated_sites}, q(z) exact"
        else:
            elbo = true_elbo(fit, x)
            note = "q(mu) q(z) factorized"
        elbos[name] = elbo
        mu_means[name] = float(fit.sample(4000, seed=0)["mu"].mean())
        print(f"  {name:15s} {elbo:9.3f} {log_px - elbo:7.3f} {mu_means[name]:8.3f} "
              f"{fit.num_steps:6d}  {note}")
    return {
        "log_evidence": log_px,
        "grad_var_logits": var_logits,
        "grad_var_mu_loc": var_loc,
        "grad_bias": bias,
        "elbo": elbos,
        "mu_mean": mu_means,
        "gradient_estimators": {k: pyrovi.diagnose(f, num_particles=200, seed=0)
                                .gradient_estimators for k, f in fits.items()},
    }


if __name__ == "__main__":
    main(quick="--quick" in sys.argv)
