r"""Pure Gaussian math of the guide families over one flat unconstrained vector.

Every function takes constrained parameters (a :class:`QParams`) and tensors, and returns
tensors; nothing here knows about Pyro.  The parameterizations are Pyro's, so that fitted
values go straight back into the autoguides:

==============  ===================================================  =============================
family          q(u) = N(loc, Sigma)                                  Pyro class
==============  ===================================================  =============================
``meanfield``   Sigma = diag(scale^2)                                 AutoNormal
``fullrank``    Sigma = R R^T, R = diag(scale) L, L unit lower-tri.   AutoMultivariateNormal
``lowrank``     Sigma = diag(scale) (W W^T + I) diag(scale), W: DxK   AutoLowRankMultivariateNormal
``delta``       a point mass at ``loc``                               AutoDelta
==============  ===================================================  =============================

Draws are :math:`u = \mathrm{loc} + A \epsilon` with standard-normal noise of shape
``(P, noise_dim)``, vectorized over the ``P`` particles; the entropy is closed-form,
:math:`H = \tfrac{D}{2}(1 + \log 2\pi) + \tfrac12 \log\det\Sigma`.  For the low-rank family
the determinant uses the matrix determinant lemma,
:math:`\det(I_D + W W^T) = \det(I_K + W^T W)`, so the cost is :math:`O(D K^2)`.
(Written by hand because torch's distributions hold no batched draw-from-given-noise for
these parameterizations and their entropies would rebuild dense factors each step.)
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

__all__ = ["QParams", "FAMILIES", "noise_dim", "draw", "entropy", "covariance"]

FAMILIES = ("meanfield", "lowrank", "fullrank", "delta")

_HALF_LOG_2PI_E = 0.5 * (1.0 + math.log(2.0 * math.pi))


class QParams(NamedTuple):
    """Constrained parameters of a family, flat over the ``D`` unconstrained latents.

    Attributes
    ----------
    loc : Tensor, shape (D,)
        Mean (the point itself for ``delta``).
    scale : Tensor, shape (D,), or None
        Positive per-coordinate scale (``None`` for ``delta``).
    factor : Tensor or None
        ``fullrank``: the unit lower-triangular ``L`` (D, D); ``lowrank``: the factor ``W``
        (D, K); ``None`` otherwise.
    """

    loc: torch.Tensor
    scale: torch.Tensor | None = None
    factor: torch.Tensor | None = None


def noise_dim(family: str, dim: int, rank: int = 0) -> int:
    """Standard-normal draws per particle: ``D`` (``D + K`` for lowrank, 0 for delta)."""
    if family == "delta":
        return 0
    if family == "lowrank":
        return dim + rank
    return dim


def draw(family: str, q: QParams, eps: torch.Tensor) -> torch.Tensor:
    """Draws ``loc + A eps`` of shape ``(P, D)`` from noise ``eps`` of shape ``(P, noise)``.

    For ``delta`` the result is ``loc`` repeated over the particles of ``eps`` (at least 1).
    """
    if family == "meanfield":
        return q.loc + q.scale * eps
    if family == "fullrank":
        # (scale[:, None] * L) @ eps_p for each particle p, written row-wise
        return q.loc + (eps @ q.factor.transpose(-1, -2)) * q.scale
    if family == "lowrank":
        k = q.factor.shape[-1]
        return q.loc + q.scale * (eps[..., :k] @ q.factor.transpose(-1, -2) + eps[..., k:])
    if family == "delta":
        return q.loc.expand(max(eps.shape[0], 1), q.loc.shape[-1])
    raise ValueError(f"unknown family {family!r}; expected one of {FAMILIES}")


def entropy(family: str, q: QParams) -> torch.Tensor:
    """Closed-form entropy of q in nats (0 for ``delta``, whose ELBO is the log joint)."""
    if family == "delta":
        return q.loc.new_zeros(())
    dim = q.loc.shape[-1]
    value = dim * _HALF_LOG_2PI_E + q.scale.log().sum(-1)
    if family == "lowrank":
        k = q.factor.shape[-1]
        eye = torch.eye(k, dtype=q.factor.dtype, device=q.factor.device)
        capacitance = eye + q.factor.transpose(-1, -2) @ q.factor
        chol = torch.linalg.cholesky(capacitance)
        value = value + chol.diagonal(dim1=-2, dim2=-1).log().sum(-1)
    elif family not in ("meanfield", "fullrank"):
        raise ValueError(f"unknown family {family!r}; expected one of {FAMILIES}")
    # fullrank: det(diag(scale) L) = prod(scale), L has a unit diagonal
    return value


def covariance(family: str, q: QParams) -> torch.Tensor:
    """The dense covariance Sigma (D, D); for tests and diagnostics, not the step."""
    if family == "meanfield":
        return torch.diag_embed(q.scale**2)
    if family == "fullrank":
        r = q.scale[:, None] * q.factor
        return r @ r.T
    if family == "lowrank":
        w = q.scale[:, None] * q.factor
        return w @ w.T + torch.diag_embed(q.scale**2)
    if family == "delta":
        dim = q.loc.shape[-1]
        return q.loc.new_zeros(dim, dim)
    raise ValueError(f"unknown family {family!r}; expected one of {FAMILIES}")
