r"""Exact evidence of a linear-Gaussian model, and the small pieces exact inference shares.

The one home of the Laplace identity, used by exact EM (:mod:`pyrovi.em.estep`) and by the
exact log evidence (:mod:`pyrovi.diagnostics.exact`).  When the log joint
:math:`g(z) = \log p(x, z)` is quadratic in the flattened vector ``z`` of real-valued
latents, the posterior is :math:`N(\mu, (-H)^{-1})` with ``H`` the (constant) Hessian of
``g`` and :math:`\mu = z_0 - H^{-1} \nabla g(z_0)` from any point :math:`z_0`, and

.. math:: \log p(x) = g(\mu) + \tfrac d2 \log 2\pi - \tfrac12 \log\det(-H)

holds exactly.  :func:`nonquadratic_site` checks the premise (a Hessian that does not
change, and a quadratic that predicts ``g`` away from the mode) and names the latent site
that breaks it.

All functions take the log joint as ``f(z) -> log p(x, z)`` over a batch of flat latent
vectors, shape ``(n, d) -> (n,)``; :func:`conditioned_log_joint` builds one from a model (one
model run per vector), :func:`pyrovi.em.estep.make_log_joint` a vectorized one.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping

import pyro.poutine as poutine
import torch
from torch.distributions import constraints

from pyrovi.errors import PyroviError

__all__ = [
    "is_real_support",
    "empty_guide",
    "Sites",
    "flat_sites",
    "unflatten",
    "site_of",
    "conditioned_log_joint",
    "grad_hessian",
    "LaplaceGaussian",
    "NotConcaveError",
    "laplace_gaussian",
    "nonquadratic_site",
]

#: The latent sites and their value shapes, in the order they are concatenated into ``z``.
Sites = tuple[tuple[str, tuple[int, ...]], ...]

#: A log joint over a batch of flat latent vectors, ``(n, d) -> (n,)``.
LogJoint = Callable[[torch.Tensor], torch.Tensor]


def is_real_support(support: constraints.Constraint) -> bool:
    """Whether ``support`` is the whole real line (``real``, possibly as ``independent``
    event dims, e.g. ``real_vector``)."""
    while hasattr(support, "base_constraint"):
        support = support.base_constraint
    return isinstance(support, type(constraints.real))


def empty_guide(*args, **kwargs) -> None:
    """A guide with no sample sites, for Pyro's enumeration of every latent of a model."""
    return None


def flat_sites(trace: poutine.Trace, names) -> tuple[Sites, torch.Tensor]:
    """The sites ``names`` of ``trace`` with their value shapes, and their values flattened
    (row-major) and concatenated, shape ``(d,)``."""
    sites, values = [], []
    for name in names:
        value = trace.nodes[name]["value"]
        sites.append((name, tuple(value.shape)))
        values.append(value.detach().reshape(-1))
    return tuple(sites), torch.cat(values)


def unflatten(flat: torch.Tensor, sites: Sites) -> dict[str, torch.Tensor]:
    """Split flat latent vectors of shape ``(n, d)`` into ``{site: (n, *shape)}``."""
    out, offset = {}, 0
    for name, shape in sites:
        size = math.prod(shape)
        out[name] = flat[:, offset : offset + size].reshape((flat.shape[0],) + tuple(shape))
        offset += size
    return out


def site_of(index: int, sites: Sites) -> str:
    """The site that entry ``index`` of the flat latent vector belongs to."""
    offset = 0
    for name, shape in sites:
        offset += math.prod(shape)
        if index < offset:
            return name
    return sites[-1][0]


def conditioned_log_joint(
    model: Callable, args: tuple, kwargs: Mapping, sites: Sites
) -> LogJoint:
    """``f(z)``: the log joint of ``model`` conditioned on flat latent vectors ``z``.

    One run of the model per vector (works for any model, vectorized or not); the model's
    ``pyro.param`` sites are used at their current values.
    """

    def f(flat: torch.Tensor) -> torch.Tensor:
        values = unflatten(flat, sites)
        rows = []
        for i in range(flat.shape[0]):
            data = {name: v[i] for name, v in values.items()}
            trace = poutine.trace(poutine.condition(model, data=data)).get_trace(*args, **kwargs)
            rows.append(trace.log_prob_sum())
        return torch.stack(rows)

    return f


def grad_hessian(f: LogJoint, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradient ``(d,)`` and Hessian ``(d, d)`` of ``f`` at one flat point ``z`` (detached).

    The Hessian's rows are computed in one vectorized backward pass, or one pass per row for
    a model with an operation that has no batching rule.
    """

    def scalar(v):
        return f(v.unsqueeze(0)).squeeze(0)

    with torch.enable_grad():
        z = z.detach().requires_grad_()
        (g,) = torch.autograd.grad(scalar(z), z)
        try:
            H = torch.autograd.functional.hessian(scalar, z.detach(), vectorize=True)
        except RuntimeError:  # a model op without a batching rule: one backward per row
            H = torch.autograd.functional.hessian(scalar, z.detach())
    return g.detach(), H.detach()


@dataclasses.dataclass(frozen=True)
class LaplaceGaussian:
    r"""The Gaussian posterior and log evidence of a quadratic log joint.

    Attributes
    ----------
    log_evidence : torch.Tensor
        Scalar :math:`\log p(x) = g(\mu) + \tfrac d2 \log 2\pi - \tfrac12 \log\det(-H)`, in
        nats, all constants included (exact when ``g`` is quadratic).
    mean : torch.Tensor
        Posterior mean :math:`\mu` (the mode of ``g``), shape ``(d,)``.
    covariance : torch.Tensor
        Posterior covariance :math:`(-H)^{-1}`, shape ``(d, d)``.
    precision : torch.Tensor
        :math:`-H`, symmetrized, shape ``(d, d)``.
    precision_tril : torch.Tensor
        Lower Cholesky factor of ``precision``, shape ``(d, d)``.
    log_joint_at_mean : torch.Tensor
        Scalar :math:`g(\mu)`.
    """

    log_evidence: torch.Tensor
    mean: torch.Tensor
    covariance: torch.Tensor
    precision: torch.Tensor
    precision_tril: torch.Tensor
    log_joint_at_mean: torch.Tensor


class NotConcaveError(PyroviError):
    """``-H`` is not positive definite: the log joint is not concave in the latents.

    ``index`` is the entry of the flat latent vector with the smallest diagonal of ``-H``
    (use :func:`site_of` to name its site).
    """

    def __init__(self, message: str, index: int):
        super().__init__(message)
        self.index = index


def laplace_gaussian(
    f: LogJoint,
    z0: torch.Tensor,
    *,
    grad: torch.Tensor | None = None,
    hessian: torch.Tensor | None = None,
) -> LaplaceGaussian:
    """The exact Gaussian posterior and log evidence of a log joint ``f`` quadratic in ``z``.

    Parameters
    ----------
    f : callable
        The log joint over flat latent vectors, ``(n, d) -> (n,)``.
    z0 : torch.Tensor
        The expansion point, shape ``(d,)`` (any point, for a quadratic ``f``).
    grad, hessian : torch.Tensor, optional
        ``f``'s gradient and Hessian at ``z0``, when already at hand.

    Raises
    ------
    NotConcaveError
        When ``-H`` is not positive definite.
    """
    if grad is None or hessian is None:
        grad, hessian = grad_hessian(f, z0)
    precision = -0.5 * (hessian + hessian.mT)
    chol, info = torch.linalg.cholesky_ex(precision)
    if int(info) != 0:
        raise NotConcaveError(
            "the posterior precision -H is not positive definite",
            index=int(torch.diagonal(precision).argmin()),
        )
    mean = (z0 + torch.cholesky_solve(grad.unsqueeze(-1), chol).squeeze(-1)).detach()
    d = mean.numel()
    with torch.no_grad():
        log_joint = f(mean.unsqueeze(0)).squeeze(0)
    log_ev = log_joint + 0.5 * d * math.log(2 * math.pi) - chol.diagonal().log().sum()
    return LaplaceGaussian(
        log_evidence=log_ev.detach(),
        mean=mean,
        covariance=torch.cholesky_inverse(chol),
        precision=precision,
        precision_tril=chol,
        log_joint_at_mean=log_joint.detach(),
    )


def nonquadratic_site(
    f: LogJoint,
    z0: torch.Tensor,
    z1: torch.Tensor,
    sites: Sites,
    *,
    rtol: float,
    hessian0: torch.Tensor | None = None,
    fit: LaplaceGaussian | None = None,
    predict_rtol: float | None = None,
) -> tuple[str, str] | None:
    """The first latent site that breaks the premise of the Laplace identity, if any.

    Two checks: the Hessian of ``f`` must be the same at ``z0`` and ``z1`` (entrywise, to
    ``rtol`` relative plus ``1e-8`` absolute; non-finite entries fail), and, when ``fit`` is
    given, the quadratic :math:`g(\\mu) - \\tfrac12 \\delta^\\top(-H)\\delta` must predict
    ``f(mu + delta)`` to ``predict_rtol * (1 + |g(mu)| + |quadratic term|)`` for ``delta``
    at :data:`PROBE_SCALES` posterior standard deviations, both signs, along a random
    direction (drawn from a private generator seeded with 0) in each site's block in turn
    and in all latents together.  A kink (``abs`` or ``relu`` of a latent) or a curvature
    that changes away from the mode has a constant Hessian near the mode, and only this
    second check catches it.

    Returns
    -------
    (str, str) or None
        The offending site and a phrase saying why, or ``None`` when ``f`` passes.
    """
    H0 = grad_hessian(f, z0)[1] if hessian0 is None else hessian0
    H1 = grad_hessian(f, z1)[1]
    diff = (H1 - H0).abs()
    bad = diff > rtol * (H0.abs() + H1.abs()).clamp_min(1e-8) + 1e-8
    bad = bad | ~torch.isfinite(H0) | ~torch.isfinite(H1)
    if bool(bad.any()):
        score = torch.where(bad, diff.nan_to_num(math.inf), torch.zeros_like(diff))
        row = int(score.max(-1).values.argmax())
        return site_of(row, sites), "its Hessian changes with z"
    if fit is None:
        return None
    rtol_p = predict_rtol if predict_rtol is not None else rtol
    d, dtype = fit.mean.numel(), fit.mean.dtype
    gen = torch.Generator().manual_seed(0)
    offset = 0
    blocks = []
    for name, shape in sites:  # each site's block alone, then all latents together
        size = math.prod(shape)
        blocks.append((name, offset, offset + size))
        offset += size
    if len(blocks) > 1:
        blocks.append((None, 0, d))
    with torch.no_grad():
        for name, start, stop in blocks:
            direction = torch.zeros(d, dtype=dtype)
            direction[start:stop] = torch.randn(stop - start, generator=gen, dtype=dtype)
            # one posterior standard deviation along a random direction of the block: a
            # unit whitened vector (an unnormalised draw could be short and never reach a
            # kink a few standard deviations out)
            direction = direction / direction.norm()
            direction = torch.linalg.solve_triangular(
                fit.precision_tril.T, direction.unsqueeze(-1), upper=True
            )[:, 0]
            deltas = torch.stack([sign * k * direction for k in PROBE_SCALES
                                  for sign in (1.0, -1.0)])
            predicted = fit.log_joint_at_mean - 0.5 * (
                (deltas @ fit.precision) * deltas).sum(-1)
            actual = f(fit.mean + deltas)
            tol = rtol_p * (1 + abs(float(fit.log_joint_at_mean))) + rtol_p * (
                predicted - fit.log_joint_at_mean).abs()
            err = (actual - predicted).abs()
            bad = ~(err <= tol)
            if bool(bad.any()):
                if name is None:
                    name = _worst_site(f, fit, sites)
                return name, (
                    "the quadratic at the mode does not predict log p(x, z) "
                    f"{PROBE_SCALES[int(bad.nonzero()[0, 0]) // 2]:g} posterior standard "
                    f"deviations away (off by {float(err[bad].max()):.3g} nats)"
                )
    return None


#: How far from the mode, in posterior standard deviations along a random direction, the
#: quadratic is checked against the log joint (both signs): a kink (``abs``, ``relu``) or
#: a curvature change within this range is caught; one beyond it changes the evidence by
#: less than the posterior mass there (about exp(-PROBE_SCALES[-1]**2 / 2)).
PROBE_SCALES = (0.5, 1.0, 2.0, 4.0, 8.0)


def _worst_site(f: LogJoint, fit: LaplaceGaussian, sites: Sites) -> str:
    """The site whose block alone, moved by the largest probe, breaks the quadratic most."""
    worst, name_of = -1.0, sites[0][0]
    offset = 0
    with torch.no_grad():
        for name, shape in sites:
            size = math.prod(shape)
            for sign in (1.0, -1.0):
                delta = torch.zeros_like(fit.mean)
                sd = fit.covariance.diagonal()[offset : offset + size].sqrt()
                delta[offset : offset + size] = sign * PROBE_SCALES[-1] * sd
                predicted = fit.log_joint_at_mean - 0.5 * delta @ (fit.precision @ delta)
                err = abs(float(f((fit.mean + delta).unsqueeze(0)).squeeze(0) - predicted))
                if err > worst:
                    worst, name_of = err, name
            offset += size
    return name_of
