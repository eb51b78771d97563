r"""``log_evidence(method="ais")``: annealed importance sampling on a Pyro model.

The glue between a model and the sampler of :mod:`pyrovi.diagnostics.ais`: the flat
unconstrained potential (:func:`pyrovi._potential.potential_from_model`, Pyro's HMC
machinery), a Gaussian base matched to draws of the guide (or a fit, or the prior), and the
pooled estimate with its standard error over independent runs.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pyro.poutine as poutine
import torch

from pyrovi._model import inspect_model
from pyrovi._potential import potential_from_model
from pyrovi._result import FitResult
from pyrovi.diagnostics.ais import AIS, run_ais
from pyrovi.diagnostics.bounds import log_mean_exp
from pyrovi.diagnostics.estimate import Estimate
from pyrovi.diagnostics.exact import exact_log_evidence
from pyrovi.errors import ModelError

__all__ = ["ais_log_evidence"]


def _base_draws(model, args, kwargs, guide, n, names):
    """Constrained draws of the sites ``names`` from the guide (or a fit, or the prior)."""
    if isinstance(guide, FitResult):
        return dict(guide.posterior_draws(n).values), "guide"
    source = guide if guide is not None else model
    rows: dict = {k: [] for k in names}
    with torch.no_grad():
        for _ in range(n):
            tr = poutine.trace(source).get_trace(*args, **kwargs)
            for k in names:
                rows[k].append(tr.nodes[k]["value"])
    return {k: torch.stack(v) for k, v in rows.items()}, ("guide" if guide is not None else
                                                          "prior")


def ais_log_evidence(
    model: Callable,
    args: tuple,
    kwargs: dict,
    guide,
    options: AIS,
    num_particles: int,
) -> Estimate:
    """:math:`\\log p(x)` by AIS from a Gaussian matched to ``guide`` (default the prior).

    Parameters
    ----------
    model : callable
        The Pyro model, its parameters at their current values.
    args, kwargs
        The model's arguments.
    guide : callable or fit result or None
        Where the base is matched: draws of a guide, of a fit's posterior approximation, or
        (``None``) of the prior.
    options : AIS
        The AIS options.
    num_particles : int
        AIS chains over all runs (split evenly over ``options.num_runs``).

    Returns
    -------
    Estimate
        With the delta-method standard error over the independent runs; the exact value
        (:func:`~pyrovi.diagnostics.exact.exact_log_evidence`) when the model has no
        continuous latent.

    Raises
    ------
    ModelError
        A latent with infinite discrete support, or non-finite log-weights.
    """
    info = inspect_model(model, args, kwargs)
    if info.infinite_discrete:
        name = info.infinite_discrete[0]
        raise ModelError(
            f"method='ais' cannot handle site {name!r}: it is discrete with infinite support; "
            "AIS needs continuous latents (finite discrete ones are summed out)", site=name)
    potential = potential_from_model(model, args, kwargs, info.max_plate_nesting)
    d = potential.layout.dim
    if d == 0:
        return exact_log_evidence(model, args, kwargs)
    values, base = _base_draws(model, args, kwargs, guide, options.base_draws,
                               potential.layout.names)
    flat = potential.to_unconstrained(values, options.base_draws).to(torch.float64)
    mean = flat.mean(0)
    cov = torch.atleast_2d(torch.cov(flat.T))
    cov = cov + 1e-6 * cov.diagonal().mean().clamp_min(1e-12) * torch.eye(d, dtype=cov.dtype)
    dtype = next(iter(values.values())).dtype
    dtype = dtype if dtype.is_floating_point else torch.get_default_dtype()
    scale_tril = torch.linalg.cholesky(cov).to(dtype)
    chains = max(1, num_particles // options.num_runs)
    run = run_ais(potential.log_density_and_grad, mean.to(dtype), scale_tril, options=options,
                  chains_per_run=chains)
    # each run's Z estimate (mean of its chains' weights) is unbiased; the pooled log Z has
    # the delta-method standard error sd(Z_r) / (sqrt(R) mean(Z_r)) over independent runs.
    per_run = torch.logsumexp(run.log_w, 1) - math.log(chains)
    value, se = log_mean_exp(per_run)
    if not math.isfinite(value):
        raise ModelError(
            "AIS produced non-finite log-weights; expected finite log p(x, z) along the "
            "annealing path. Check the model for values outside a support, or lower "
            "AIS(step_size=...)")
    return Estimate(value, se, "ais", int(run.log_w.numel()), {
        "num_runs": options.num_runs, "num_temperatures": options.num_temperatures,
        "transition": options.transition, "acceptance": run.acceptance, "base": base,
    })
