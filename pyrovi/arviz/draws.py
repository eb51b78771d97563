"""The numbers behind the export: posterior draws with ``lp``, ``log_q`` and pointwise
log-likelihoods, predictive draws and prior draws, for a ``VIResult`` or an ``EMResult``.

Everything here is torch in, torch out; :mod:`pyrovi.arviz.converter` turns it into xarray.
The heavy lifting is :mod:`pyrovi._draws` (shared with ``VIResult.sample`` and the
diagnostics); this module only picks the right source for each kind of result:

* VI without enumerated sites: guide draws and their ``log q`` (``VIResult.draws``),
  ``log p(x, z)`` and pointwise ``log p(x_i | z)`` from the model conditioned on them.
* VI whose discrete latents are enumerated: ``lp`` is :math:`\\log p(x, z_c)` with the
  discrete latents summed out and ``log_q`` is :math:`\\log q(z_c)` (the importance weight
  of the continuous latents, as the fit's ELBO sees it); the discrete latents in the
  posterior are drawn from their exact conditional :math:`p(z_d \\mid x, z_c)` (Pyro's
  ``infer_discrete``) and the pointwise log-likelihood is conditional on them.
* EM: exact posterior draws (``EMResult.sample``), ``log_q`` the exact
  :math:`\\log p(z \\mid x, \\hat\\theta)` (``EMResult.log_posterior``), so ``log_weight``
  equals the log evidence at every draw.
"""

from __future__ import annotations

import dataclasses

import pyro
import pyro.poutine as poutine
import torch
from pyro.infer import TraceEnum_ELBO, config_enumerate, infer_discrete

from pyrovi._draws import DRAW_PLATE, SiteShape, model_log_density, predictive_draws

__all__ = ["ExportDraws", "is_em", "posterior_draws", "posterior_predictive", "prior_draws"]


@dataclasses.dataclass(frozen=True)
class ExportDraws:
    """Posterior draws and their densities, all with a leading draw dimension ``n``.

    Attributes
    ----------
    values : dict of str to torch.Tensor
        Latent site -> ``(n, *site_shape)`` in constrained space.
    lp : torch.Tensor
        ``(n,)``: log joint density of the model at each draw (see the module docstring for
        enumerated models).
    log_q : torch.Tensor
        ``(n,)``: log density of the approximation (guide or exact posterior) at each draw.
    log_lik : dict of str to torch.Tensor
        Observed site -> ``(n, *batch_shape)``, one log-likelihood term per observation.
    """

    values: dict
    lp: torch.Tensor
    log_q: torch.Tensor
    log_lik: dict

    @property
    def log_weight(self) -> torch.Tensor:
        """``lp - log_q``: the log importance weight of each draw."""
        return self.lp - self.log_q


def is_em(result) -> bool:
    """Whether ``result`` is an EM result (duck-typed, so pyrovi.em need not be imported)."""
    return getattr(result, "family", None) == "em" or hasattr(result, "log_evidence_trace")


def _log_density(result, values, shapes, nesting, vectorized):
    """``model_log_density`` vectorized where possible, else one draw at a time."""
    if vectorized:
        try:
            return model_log_density(
                result.model, result.args, result.kwargs, values,
                shapes=shapes, nesting=nesting, vectorized=True,
            )
        except (RuntimeError, ValueError):  # a model that does not broadcast over draws
            pass
    return model_log_density(
        result.model, result.args, result.kwargs, values,
        shapes=shapes, nesting=nesting, vectorized=False,
    )


def _enumerated(result, values: dict, log_q: torch.Tensor, shapes) -> ExportDraws:
    """Discrete draws, ``lp`` and log-likelihoods of a VI fit with enumerated latents,
    one continuous draw at a time (``infer_discrete`` and ``TraceEnum_ELBO`` per draw)."""
    nesting = result.max_plate_nesting
    model = config_enumerate(result.model, default="parallel")
    elbo = TraceEnum_ELBO(max_plate_nesting=nesting)
    n = log_q.shape[0]
    discrete: dict[str, list] = {k: [] for k in result.enumerated_sites}
    lps = []

    def no_guide(*args, **kwargs):
        return None

    with torch.no_grad():
        for i in range(n):
            data = {k: v[i] for k, v in values.items()}
            conditioned = poutine.condition(model, data=data)
            lps.append(-float(elbo.loss(conditioned, no_guide, *result.args, **result.kwargs)))
            sampler = infer_discrete(conditioned, first_available_dim=-nesting - 1)
            trace = poutine.trace(sampler).get_trace(*result.args, **result.kwargs)
            for k in discrete:
                discrete[k].append(trace.nodes[k]["value"].reshape(shapes[k].shape))
    full = dict(values)
    full.update({k: torch.stack(v) for k, v in discrete.items()})
    full = {k: full[k] for k in result.latent_sites if k in full}
    _, log_lik = _log_density(result, full, shapes, nesting, vectorized=False)
    return ExportDraws(full, torch.tensor(lps, dtype=log_q.dtype), log_q, log_lik)


def posterior_draws(result, n: int, seed: int, shapes: dict[str, SiteShape]) -> ExportDraws:
    """``n`` posterior draws of ``result`` with ``lp``, ``log_q`` and log-likelihoods.

    Parameters
    ----------
    result : VIResult or EMResult
        The fit.
    n : int
        Number of draws.
    seed : int
        Seed of the draws.
    shapes : dict
        Site -> :class:`pyrovi._draws.SiteShape` of one draw, for every sample site.
    """
    nesting = result.max_plate_nesting
    if is_em(result):
        values = result.sample(n, seed=seed)
        with result.scope(), torch.no_grad():
            log_q = result.log_posterior(values)
            lp, log_lik = _log_density(result, values, shapes, nesting, vectorized=True)
        return ExportDraws(values, lp, log_q.to(lp.dtype), log_lik)
    draws = result.draws(n, seed=seed)
    with result.scope(), torch.no_grad():
        if result.enumerated_sites:
            return _enumerated(result, draws.values, draws.log_q, shapes)
        lp, log_lik = _log_density(result, draws.values, shapes, nesting, result.vectorized)
    return ExportDraws(dict(draws.values), lp, draws.log_q, log_lik)


def posterior_predictive(result, values: dict, seed: int, observed: tuple) -> dict:
    """Observed sites drawn from the model at each posterior draw in ``values``."""
    from pyrovi._runtime import seeded

    vectorized = getattr(result, "vectorized", True) and not getattr(
        result, "enumerated_sites", ()
    )
    with seeded(seed, result.device), result.scope():
        kwargs = dict(model=result.model, args=result.args, kwargs=result.kwargs,
                      values=values, nesting=result.max_plate_nesting)
        try:
            out = predictive_draws(**kwargs, vectorized=vectorized)
        except (RuntimeError, ValueError):
            if not vectorized:
                raise
            out = predictive_draws(**kwargs, vectorized=False)
    return {k: out[k] for k in observed}


def prior_draws(result, n: int, seed: int, shapes: dict[str, SiteShape]) -> dict:
    """``n`` draws of every sample site from the prior (the model with its observations
    removed, at the fitted ``pyro.param`` values), as ``(n, *site_shape)``.

    Drawn under an outermost plate of size ``n`` (one model run) and reshaped site by site
    from :func:`pyrovi._draws.site_shapes`, not with ``Predictive(parallel=True)``, which
    mis-shapes event dimensions outside every plate; a model that does not broadcast over
    the extra plate is run ``n`` times instead.
    """
    from pyrovi._runtime import seeded

    model = poutine.uncondition(result.model)
    nesting = result.max_plate_nesting
    with seeded(seed, result.device), result.scope(), torch.no_grad():
        if getattr(result, "vectorized", True):
            try:
                with pyro.plate(DRAW_PLATE, n, dim=-(nesting + 1)):
                    trace = poutine.trace(model).get_trace(*result.args, **result.kwargs)
                out = {}
                for k, s in shapes.items():
                    pad = (1,) * (nesting - s.batch_ndim)
                    value = trace.nodes[k]["value"]
                    out[k] = value.expand((n,) + pad + s.shape).reshape((n,) + s.shape)
                return out
            except (RuntimeError, ValueError):  # not vectorizable: fall through to a loop
                pass
        rows: dict[str, list] = {k: [] for k in shapes}
        for _ in range(n):
            trace = poutine.trace(model).get_trace(*result.args, **result.kwargs)
            for k in shapes:
                rows[k].append(trace.nodes[k]["value"])
    return {k: torch.stack(v) for k, v in rows.items()}
