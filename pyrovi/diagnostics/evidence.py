r"""``log_evidence``: :math:`\log p(x)` of a Pyro model, exactly where it is tractable,
else by importance sampling from a guide or by annealed importance sampling.

Methods
-------
``"exact"``
    All latents discrete with finite support: Pyro's enumeration (``TraceEnum_ELBO`` with
    an empty guide sums every assignment out).  Linear-Gaussian (``log p(x, z)`` quadratic
    in unconstrained, real-valued latents): the Laplace identity
    :math:`\log p(x) = \log p(x, z^*) + \tfrac d2 \log 2\pi - \tfrac12 \log\det(-H)`, exact
    for a quadratic log joint, after checking that the Hessian is the same at two points and
    that the quadratic predicts the log joint elsewhere.  An EM result: its exact
    :math:`\log p(x \mid \hat\theta)`.
``"importance"``
    :math:`\log \frac1S \sum_s p(x, z_s) / q(z_s)` with a fitted guide as proposal, with a
    delta-method standard error (reliable when PSIS k-hat < 0.7).
``"ais"`` or :class:`~pyrovi.diagnostics.ais.AIS`
    Annealed importance sampling (Neal, 2001) from a Gaussian matched to the guide (or the
    prior) to the posterior, standard error over independent runs.

This module is the dispatcher; the estimators live in :mod:`pyrovi.diagnostics.exact` and
:mod:`pyrovi.diagnostics.ais_evidence` (beside the sampler, :mod:`pyrovi.diagnostics.ais`),
the importance weights in :mod:`pyrovi.diagnostics.weights`.
"""

from __future__ import annotations

import contextlib

from pyrovi._result import FitResult
from pyrovi._runtime import resolve_seed, seeded
from pyrovi.diagnostics.ais import AIS
from pyrovi.diagnostics.ais_evidence import ais_log_evidence
from pyrovi.diagnostics.bounds import ess, log_mean_exp
from pyrovi.diagnostics.estimate import Estimate, IntractableError
from pyrovi.diagnostics.exact import exact_log_evidence
from pyrovi.diagnostics.weights import (
    _check_particles,
    importance_log_weights,
    result_log_weights,
)

__all__ = ["Estimate", "log_evidence", "exact_log_evidence", "IntractableError", "METHODS"]

METHODS = ("exact", "importance", "ais")


def log_evidence(
    model,
    *args,
    method: str | AIS = "exact",
    guide=None,
    num_particles: int | None = None,
    seed: int | None = None,
    **kwargs,
) -> Estimate:
    """The log evidence :math:`\\log p(x)` of ``model(*args, **kwargs)``.

    Parameters
    ----------
    model : callable or fit result
        A Pyro model, its ``pyro.param`` parameters at their current values; or a
        ``VIResult`` / ``EMResult``, whose model, arguments, fitted parameters and posterior
        approximation are used (then pass no model arguments).
    *args, **kwargs
        The model's arguments.
    method : {"exact", "importance", "ais"} or AIS
        See the module docstring; pass :class:`~pyrovi.diagnostics.ais.AIS` to set the AIS
        options.
    guide : callable or fit result, optional
        The importance proposal (``"importance"``, required) or the AIS starting point
        (``"ais"``; default the prior).  A fit result's guide is evaluated inside its
        ``scope()``, so that its fitted parameters (and the model's) are used.
    num_particles : int, optional
        Importance draws (default 10,000) or AIS chains over all runs (default 64); >= 2.
    seed : int, optional
        Seed of the draws (the caller's random state is left untouched).

    Returns
    -------
    Estimate

    Raises
    ------
    IntractableError
        ``method="exact"`` on a model without an exact form; names the site.
    ValueError
        Unknown method, ``num_particles`` < 2, importance without a guide.
    """
    if isinstance(method, str):
        if method not in METHODS:
            raise ValueError(
                f"method={method!r} is not known; expected one of {METHODS} or an AIS(...)"
            )
        options = AIS() if method == "ais" else None
    elif isinstance(method, AIS):
        options, method = method, "ais"
    else:
        raise TypeError(f"method must be one of {METHODS} or an AIS(...), got {method!r}")
    if num_particles is not None:
        _check_particles(num_particles)
    if isinstance(model, FitResult):
        if args or kwargs:
            raise TypeError(
                "log_evidence(result, ...) takes the model arguments from the result; got "
                f"extra arguments {args or ''}{kwargs or ''}. Pass either a result or a model "
                "with its arguments."
            )
        result = model
        model, args, kwargs = result.model, tuple(result.args), dict(result.kwargs)
        guide = result if guide is None else guide
        if method == "exact" and result.exact_posterior:
            return Estimate(float(result.elbo), 0.0, "exact", 0, {"how": "em"})
    if not callable(model):
        raise TypeError(f"model must be a Pyro model or a fit result, got {type(model).__name__}")
    scope = guide.scope() if isinstance(guide, FitResult) else contextlib.nullcontext()
    seed = resolve_seed(seed)
    with scope, seeded(seed):
        if method == "exact":
            return exact_log_evidence(model, args, kwargs)
        if method == "importance":
            if guide is None:
                raise ValueError(
                    "method='importance' needs a proposal: pass guide=<fitted guide or "
                    "VIResult>; got guide=None. Without a guide use method='ais'."
                )
            n = num_particles or 10_000
            if isinstance(guide, FitResult) and guide.exact_posterior:  # q = the exact posterior
                lw = result_log_weights(guide, n, seed=seed)
            elif isinstance(guide, FitResult):
                lw = importance_log_weights(model, guide.guide, args, kwargs, num_particles=n)
            else:
                lw = importance_log_weights(model, guide, args, kwargs, num_particles=n)
            value, se = log_mean_exp(lw.log_w)
            return Estimate(value, se, "importance", n, {"ess": ess(lw.log_w)})
        return ais_log_evidence(model, args, kwargs, guide, options, num_particles or 64)


