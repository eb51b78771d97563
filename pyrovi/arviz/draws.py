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

import torch

from pyrovi._draws import (
    SiteShape,
    enumerated_pointwise_log_lik,
    model_draws,
    model_log_density,
    predictive_draws,
    uncondition_data,
)
from pyrovi._plates import vectorize_else_loop
from pyrovi._result import FitResult
from pyrovi._runtime import seeded

__all__ = [
    "ExportDraws",
    "log_density",
    "posterior_predictive",
    "prior_draws",
    "deterministic_draws",
    "marginal_log_likelihood",
]


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
    result: FitResult, values: dict, shapes: dict[str, SiteShape], vectorize: bool,
    model=None,
) -> tuple[torch.Tensor, dict]:
    """``log p(x, z)`` and pointwise log-likelihoods at ``values`` (see
    :func:`pyrovi._draws.model_log_density`), inside the fit's scope; ``model`` defaults
    to the fit's."""
    model = result.model if model is None else model
    with result.scope(), torch.no_grad():
        return vectorize_else_loop(
            lambda vectorized: model_log_density(
                model, result.args, result.kwargs, values, shapes=shapes,
                max_plate_nesting=result.max_plate_nesting, vectorized=vectorized,
            ),
            vectorize,
        )


def posterior_predictive(
    result: FitResult, values: dict, seed: int, observed: tuple | None, vectorize: bool,
    args: tuple | None = None, kwargs: dict | None = None, model=None,
) -> dict:
    """The model run at each posterior draw in ``values`` with its observed sites drawn
    anew; the ``observed`` sites (every sample site when None).  ``args`` and ``kwargs``
    default to the fit's (other ones: predictions at new inputs)."""
    args = result.args if args is None else tuple(args)
    kwargs = result.kwargs if kwargs is None else dict(kwargs)
    model = result.model if model is None else model
    with seeded(seed, result.device), result.scope():
        out = vectorize_else_loop(
            lambda vectorized: predictive_draws(
                model, args, kwargs, values,
                max_plate_nesting=result.max_plate_nesting, vectorized=vectorized,
            ),
            vectorize,
        )
    return dict(out) if observed is None else {k: out[k] for k in observed if k in out}


def deterministic_draws(
    result: FitResult, values: dict, shapes: dict[str, SiteShape], names: tuple,
    vectorize: bool,
) -> dict:
    """The ``pyro.deterministic`` sites ``names`` at each posterior draw in ``values``,
    the model conditioned on its data (``(n, *site_shape)`` each)."""
    if not names or not values:
        return {}
    n = next(iter(values.values())).shape[0]
    with result.scope(), torch.no_grad():
        return vectorize_else_loop(
            lambda vectorized: model_draws(
                result.model, result.args, result.kwargs, values, n=n, shapes=shapes,
                max_plate_nesting=result.max_plate_nesting, vectorized=vectorized,
                sites=tuple(names),
            ),
            vectorize,
        )


def marginal_log_likelihood(
    result: FitResult, values: dict, n: int, observed: tuple, shapes: dict[str, SiteShape],
    model=None,
) -> dict:
    """Pointwise log-likelihood of the ``observed`` sites with the model's finite discrete
    latents summed out, conditioned on the continuous latents in ``values`` (see
    :func:`pyrovi._draws.enumerated_pointwise_log_lik`)."""
    model = result.model if model is None else model
    with result.scope(), torch.no_grad():
        return enumerated_pointwise_log_lik(
            model, result.args, result.kwargs, values, n=n, observed=observed,
            shapes=shapes, max_plate_nesting=result.max_plate_nesting,
        )


def prior_draws(
    result: FitResult, n: int, seed: int, shapes: dict[str, SiteShape], vectorize: bool
) -> dict:
    """``n`` draws of every sample site from the prior (the model with its observations
    removed, at the fitted ``pyro.param`` values), as ``(n, *site_shape)``.

    Drawn under the draw plate (one model run) and reshaped site by site from
    :func:`pyrovi._plates.site_shapes`; a model that does not broadcast over the extra plate
    is run ``n`` times instead.
    """
    model = uncondition_data(result.model)
    with seeded(seed, result.device), result.scope():
        return vectorize_else_loop(
            lambda vectorized: model_draws(
                model, result.args, result.kwargs, {}, n=n, shapes=shapes,
                max_plate_nesting=result.max_plate_nesting, vectorized=vectorized,
            ),
            vectorize,
        )
