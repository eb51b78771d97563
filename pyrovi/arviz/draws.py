"""The numbers behind the export that do not depend on the kind of result: ``lp`` and
pointwise log-likelihoods at given draws, posterior predictive draws and prior draws.

Everything here is torch in, torch out; :mod:`pyrovi.arviz.adapters` picks the posterior
draws of each kind of result and :mod:`pyrovi.arviz.converter` turns it all into xarray.
The heavy lifting is :mod:`pyrovi._draws` (shared with the results' ``sample`` and the
diagnostics); each function here runs vectorized over the draws where the model allows it
and one draw at a time otherwise (:func:`pyrovi._plates.vectorize_else_loop`).
"""

from __future__ import annotations

import dataclasses

import pyro.poutine as poutine
import torch

from pyrovi._draws import SiteShape, model_draws, model_log_density, predictive_draws
from pyrovi._plates import vectorize_else_loop
from pyrovi._result import FitResult
from pyrovi._runtime import seeded

__all__ = ["ExportDraws", "log_density", "posterior_predictive", "prior_draws"]


@dataclasses.dataclass(frozen=True)
class ExportDraws:
    """Posterior draws and their densities, all with a leading draw dimension ``n``.

    Attributes
    ----------
    values : dict of str to torch.Tensor
        Latent site -> ``(n, *site_shape)`` in constrained space.
    lp : torch.Tensor
        ``(n,)``: log joint density of the model at each draw (see
        :mod:`pyrovi.arviz.adapters` for enumerated models).
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


def log_density(
    result: FitResult, values: dict, shapes: dict[str, SiteShape], vectorize: bool
) -> tuple[torch.Tensor, dict]:
    """``log p(x, z)`` and pointwise log-likelihoods at ``values`` (see
    :func:`pyrovi._draws.model_log_density`), inside the fit's scope."""
    with result.scope(), torch.no_grad():
        return vectorize_else_loop(
            lambda vectorized: model_log_density(
                result.model, result.args, result.kwargs, values, shapes=shapes,
                max_plate_nesting=result.max_plate_nesting, vectorized=vectorized,
            ),
            vectorize,
        )


def posterior_predictive(
    result: FitResult, values: dict, seed: int, observed: tuple, vectorize: bool
) -> dict:
    """Observed sites drawn from the model at each posterior draw in ``values``."""
    with seeded(seed, result.device), result.scope():
        out = vectorize_else_loop(
            lambda vectorized: predictive_draws(
                result.model, result.args, result.kwargs, values,
                max_plate_nesting=result.max_plate_nesting, vectorized=vectorized,
            ),
            vectorize,
        )
    return {k: out[k] for k in observed}


def prior_draws(
    result: FitResult, n: int, seed: int, shapes: dict[str, SiteShape], vectorize: bool
) -> dict:
    """``n`` draws of every sample site from the prior (the model with its observations
    removed, at the fitted ``pyro.param`` values), as ``(n, *site_shape)``.

    Drawn under the draw plate (one model run) and reshaped site by site from
    :func:`pyrovi._plates.site_shapes`; a model that does not broadcast over the extra plate
    is run ``n`` times instead.
    """
    model = poutine.uncondition(result.model)
    with seeded(seed, result.device), result.scope():
        return vectorize_else_loop(
            lambda vectorized: model_draws(
                model, result.args, result.kwargs, {}, n=n, shapes=shapes,
                max_plate_nesting=result.max_plate_nesting, vectorized=vectorized,
            ),
            vectorize,
        )
