"""Linear-response covariances at a DADVI optimum (Giordano, Ingram & Broderick, JMLR 2024).

The covariance of the posterior means under a linear perturbation of the log density, from
the Hessian of DADVI's fixed-draw objective at its optimum; it corrects mean-field's
underestimated variances and equals the exact posterior covariance on a linear-Gaussian
model.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from pyrovi.families import gaussian_math
from pyrovi.fast.lbfgs import hessian
from pyrovi.fast.objective import neg_objective

if TYPE_CHECKING:
    from pyrovi.fast.dadvi import DadviOutcome
    from pyrovi.fast.objective import LogDensity

__all__ = ["linear_response_covariance"]


def linear_response_covariance(
    log_density: LogDensity,
    outcome: DadviOutcome,
    *,
    eps: torch.Tensor | None = None,
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    r"""The linear-response covariance ``(D, D)`` of the latents at a DADVI optimum.

    With :math:`F(\theta)` minus the fixed-draw ELBO and its Hessian :math:`H` at the
    optimum, perturbing :math:`\log p(u) \to \log p(u) + t^\top u` moves the optimum by
    :math:`d\theta^*/dt = H^{-1} J^\top` with :math:`J = \partial\,\mathrm{E}_q[u]/\partial
    \theta = [I_D, 0]`, so :math:`\mathrm{Cov}_{LR} = J H^{-1} J^\top`, the ``loc`` block of
    :math:`H^{-1}` (Giordano, Ingram & Broderick 2024, Sec. 4).  It is meant for
    ``meanfield`` (whose own variances are too small) and is the exact posterior covariance
    for a linear-Gaussian model.  Cost: one dense Hessian of ``theta``'s size.

    ``eps`` are the fixed draws, by default those of the outcome's final fit.
    """
    fam = gaussian_math(outcome.family, outcome.rank)
    dim = outcome.params.loc.shape[-1]
    if eps is None:
        eps = outcome.draws
    f = neg_objective(fam, log_density, eps, dim, dtype)
    h = hessian(f, outcome.theta)
    h = 0.5 * (h + h.T)
    inv = torch.linalg.inv(h)
    cov = inv[:dim, :dim]
    return 0.5 * (cov + cov.T)
