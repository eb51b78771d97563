r"""DADVI's objective: minus the fixed-draw ELBO of a Gaussian family, as a function of its
flat coordinates ``theta`` (or of coordinates whitened by a reference q).

.. math::

    -\hat L(\theta) = -\Big(\frac1M \sum_m \log p\big(u(\theta, \epsilon_m)\big)
    + H[q_\theta]\Big),

with the draws :math:`u` and the entropy :math:`H` the family's (:mod:`pyrovi.families`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = ["Counter", "fixed_draw_loss", "neg_objective", "neg_objective_relative"]

LogDensity = Callable[[torch.Tensor], torch.Tensor]


class Counter:
    """A log density that counts its calls and the points it evaluated."""

    def __init__(self, log_density: LogDensity):
        self.log_density = log_density
        self.calls = 0
        self.points = 0

    def __call__(self, u: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        self.points += u.shape[0]
        return self.log_density(u)


def fixed_draw_loss(fam, log_density, eps, dtype, coords):
    """Minus the fixed-draw ELBO (a scalar, float64 accumulation) at ``coords``."""
    q = fam.q_of_coords(coords)
    u = fam.draw(q, eps)
    lp = log_density(u.to(dtype))
    return -(lp.to(q.loc.dtype).mean() + fam.entropy(q))


def neg_objective(fam, log_density, eps, dim, dtype):
    """theta -> minus the fixed-draw ELBO."""

    def f(theta: torch.Tensor) -> torch.Tensor:
        return fixed_draw_loss(fam, log_density, eps, dtype, fam.unpack_coords(theta, dim))

    return f


def neg_objective_relative(fam, log_density, eps, dim, dtype, ref):
    """z -> minus the fixed-draw ELBO at the family's ``relative_coords(z, ref)``."""

    def f(z: torch.Tensor) -> torch.Tensor:
        coords = fam.relative_coords(z, ref, dim)
        return fixed_draw_loss(fam, log_density, eps, dtype, coords)

    return f
