r"""The chi-square upper bound :math:`\mathrm{CUBO}_n` (Dieng, Tran, Ranganath, Paisley and
Blei, 2017) and the Renyi divergence it bounds.

For a guide :math:`q` and :math:`n > 1`,

.. math::

    \mathrm{CUBO}_n(q) = \frac1n \log \mathbb{E}_q\Big[\Big(\frac{p(x, z)}{q(z)}\Big)^n\Big]
    = \log p(x) + \frac{n-1}{n} D_n\big(p(z \mid x) \,\|\, q\big) \;\ge\; \log p(x),

with :math:`D_n` the Renyi divergence of order :math:`n`.  The inequality holds for the *true*
CUBO; its Monte Carlo estimate :math:`\frac1n \log \frac1S \sum_s w_s^n` is biased *low*
(Jensen, and the largest weights dominate :math:`w^n`), so a single estimate can fall below
:math:`\log p(x)`: it is an upper bound in expectation of the exact quantity only, not a
stochastic bound like reverse AIS.  The estimate converges at the usual rate only if
:math:`w^n` has a finite variance, i.e. PSIS :math:`\hat k < 1/(2n)` (0.25 for n = 2);
it is finite in expectation only if :math:`\hat k < 1/n`.

Given any lower bound :math:`L \le \log p(x)` (the ELBO, an IWAE bound, forward AIS),

.. math::

    D_n(p(z \mid x) \,\|\, q) \le \frac{n}{n-1} (\mathrm{CUBO}_n - L),

which is what :mod:`pyrovi.diagnostics.accuracy` turns into error bounds.

References
----------
Dieng, Tran, Ranganath, Paisley and Blei (2017), "Variational inference via chi upper bound
minimization", NeurIPS.
Huggins, Kasprzak, Campbell and Broderick (2020), "Validated variational inference via
practical posterior error bounds", AISTATS.
"""

from __future__ import annotations

import dataclasses
import math

import torch

from pyrovi.diagnostics.bounds import log_mean_exp

__all__ = ["CUBO", "cubo", "cubo_from_result", "renyi_bound"]


@dataclasses.dataclass(frozen=True)
class CUBO:
    r""":math:`\mathrm{CUBO}_n` estimated from importance log-weights.

    Attributes
    ----------
    value : float
        :math:`\frac1n \log \frac1S \sum_s w_s^n` (nats, total).  Biased low as an estimate
        of the true CUBO, which is :math:`\ge \log p(x)`.
    se : float
        Delta-method standard error (meaningful when :math:`\hat k < 1/(2n)`).
    order : float
        :math:`n`.
    num_particles : int
        :math:`S`.
    """

    value: float
    se: float
    order: float
    num_particles: int

    def __str__(self) -> str:
        return (f"CUBO_{self.order:g} = {self.value:.6g} ± {self.se:.4g} ({self.num_particles} "
                "draws; an upper bound in expectation only, the estimate is biased low)")


def cubo(log_w: torch.Tensor, order: float = 2.0) -> CUBO:
    r""":math:`\mathrm{CUBO}_n` from log-weights :math:`\log p(x, z_s) - \log q(z_s)`,
    :math:`z_s \sim q` (1-D, at least two)."""
    if not order > 1:
        raise ValueError(f"CUBO order must be > 1, got {order!r}")
    log_w = torch.as_tensor(log_w).detach().to(torch.float64).reshape(-1)
    value, se = log_mean_exp(order * log_w)
    return CUBO(value / order, se / order, float(order), int(log_w.numel()))


def renyi_bound(cubo_value: float, log_evidence_lower: float, order: float = 2.0) -> float:
    r"""Upper bound on :math:`D_n(p(z \mid x) \,\|\, q)`: :math:`\frac{n}{n-1}
    (\mathrm{CUBO}_n - L)` for a lower bound :math:`L \le \log p(x)`, clipped at 0."""
    if not order > 1:
        raise ValueError(f"order must be > 1, got {order!r}")
    return max(0.0, order / (order - 1) * (cubo_value - log_evidence_lower))


def cubo_from_result(result, *, num_particles: int = 10_000, seed: int | None = None,
                     order: float = 2.0) -> CUBO:
    """:math:`\\mathrm{CUBO}_n` of a fit's guide from ``num_particles`` fresh draws."""
    from pyrovi.diagnostics.weights import result_log_weights

    lw = result_log_weights(result, num_particles, seed=seed)
    out = cubo(lw.log_w, order)
    if not math.isfinite(out.value):
        raise ValueError("CUBO is not finite: some importance weights overflow")
    return out
