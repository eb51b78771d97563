r"""Exact log evidence :math:`\log p(x)` of a Pyro model, where it is tractable.

All latents discrete with finite support: Pyro's enumeration (``TraceEnum_ELBO`` with an
empty guide sums every assignment out).  Linear-Gaussian (``log p(x, z)`` quadratic in
unconstrained, real-valued latents): the Laplace identity
:math:`\log p(x) = \log p(x, z^*) + \tfrac d2 \log 2\pi - \tfrac12 \log\det(-H)`
(:mod:`pyrovi._exact`), exact for a quadratic log joint, after checking that the Hessian is
the same at two points and that the quadratic predicts the log joint elsewhere (the proof
EM's Gaussian E-step makes too: :func:`pyrovi.em.estep.prove_quadratic`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from pyro.infer import TraceEnum_ELBO, config_enumerate

from pyrovi._exact import (
    NotConcaveError,
    conditioned_log_joint,
    empty_guide,
    flat_sites,
    is_real_support,
    site_of,
)
from pyrovi._model import ModelInfo, inspect_model
from pyrovi.diagnostics.estimate import Estimate, IntractableError
from pyrovi.em.estep import prove_quadratic

__all__ = ["exact_log_evidence", "gaussian_log_evidence", "MAX_GAUSSIAN_DIM"]

#: The largest latent dimension for which the exact Gaussian evidence forms a d x d Hessian.
MAX_GAUSSIAN_DIM = 5000


def _refuse(site: str, why: str) -> IntractableError:
    return IntractableError(
        f"method='exact' is not tractable for this model: site {site!r} {why}. Exact "
        "evidence needs all latents discrete with finite support, or a linear-Gaussian "
        "model (real-valued latents, log p(x, z) quadratic in them). Use method='ais' "
        "(annealed importance sampling), or method='importance' with a fitted guide.",
        site=site,
    )


def gaussian_log_evidence(
    model: Callable, args: tuple, kwargs: Mapping, info: ModelInfo
) -> float:
    """Exact :math:`\\log p(x)` of a linear-Gaussian model (its latents all continuous).

    The log joint is expanded at the prototype values of ``info.trace``.

    Raises
    ------
    IntractableError
        Naming the site: a latent whose support is not the real line, more than
        :data:`MAX_GAUSSIAN_DIM` latent dimensions, a log joint that is not concave or not
        quadratic.
    """
    for name in info.latent:
        fn = info.trace.nodes[name]["fn"]
        if not is_real_support(fn.support):
            raise _refuse(name, f"has support {fn.support} (not the whole real line), so "
                                "log p(x, z) is not Gaussian in it")
    sites, z0 = flat_sites(info.trace, info.latent)
    d = z0.numel()
    if d > MAX_GAUSSIAN_DIM:
        raise _refuse(sites[0][0], f"is one of {d} latent dimensions; the exact Gaussian "
                                   f"evidence needs a d x d Hessian (d <= {MAX_GAUSSIAN_DIM})")
    f = conditioned_log_joint(model, args, kwargs, sites)
    try:  # the same proof as EM's Gaussian E-step
        fit, bad = prove_quadratic(f, z0, sites)
    except NotConcaveError as err:
        raise _refuse(site_of(err.index, sites), "makes -Hessian of log p(x, z) not positive "
                                                 "definite (the posterior is not Gaussian)"
                      ) from None
    if bad is not None:
        raise _refuse(bad[0], f"enters log p(x, z) non-quadratically ({bad[1]})")
    return float(fit.log_evidence)


def exact_log_evidence(
    model: Callable, args: tuple = (), kwargs: Mapping | None = None
) -> Estimate:
    """Exact :math:`\\log p(x)` with the model's parameters at their current values.

    Raises
    ------
    IntractableError
        Naming the site that makes the evidence intractable (and suggesting ``"ais"``).
    """
    kwargs = dict(kwargs or {})
    # the prototype trace draws from the prior: in a forked RNG, so the caller's random
    # state is untouched
    with torch.random.fork_rng():
        info = inspect_model(model, args, kwargs)
        return _exact_log_evidence(model, args, kwargs, info)


def _exact_log_evidence(
    model: Callable, args: tuple, kwargs: dict, info: ModelInfo
) -> Estimate:
    if info.infinite_discrete:
        name = info.infinite_discrete[0]
        raise _refuse(name, "is discrete with infinite support "
                            f"({type(info.trace.nodes[name]['fn']).__name__}) and cannot be "
                            "enumerated")
    if not info.latent:
        with torch.no_grad():
            return Estimate(float(info.trace.log_prob_sum()), 0.0, "exact", 0, {"how": "none"})
    if info.discrete and not info.continuous:
        elbo = TraceEnum_ELBO(max_plate_nesting=info.max_plate_nesting)
        with torch.no_grad():
            loss = elbo.loss(config_enumerate(model, default="parallel"), empty_guide,
                             *args, **kwargs)
        return Estimate(-float(loss), 0.0, "exact", 0, {"how": "enumeration"})
    if info.discrete:
        raise _refuse(info.continuous[0], f"is continuous while {info.discrete[0]!r} is "
                                          "discrete (a mixed model has no exact form here)")
    return Estimate(gaussian_log_evidence(model, args, kwargs, info), 0.0, "exact", 0,
                    {"how": "gaussian"})
