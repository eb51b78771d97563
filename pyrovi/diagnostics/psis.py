r"""Pareto-smoothed importance sampling diagnostic :math:`\hat k` of importance weights,
with the sample-size-aware threshold and a plain-words verdict.

:math:`\hat k` is computed the way ArviZ 0.2x's ``psislw`` computes it (the same tail of
:math:`\lceil\min(S/5, 3\sqrt S)\rceil` largest weights, the same Zhang-Stephens fit with
its weak prior on k), with the generalized Pareto fit of Pyro
(``pyro.ops.stats.fit_generalized_pareto``), so it is the same number on both ArviZ lines:
ArviZ 1.x has no ``psislw`` (``tests/diagnostics/test_psis.py`` checks the agreement with
``arviz.psislw`` to 1e-6 where ArviZ 0.2x is installed).

:math:`\hat k` is the estimated shape of a generalized Pareto fit to the largest weights.
Below the threshold :math:`\min(1 - 1/\log_{10} S, 0.7)` the weights have enough finite
moments for importance sampling (and the IWAE bounds) to be reliable with ``S`` draws;
above 0.7 the proposal misses part of the posterior and estimates built on the weights
cannot be trusted (Vehtari et al., 2015/2024; Yao et al., 2018 for its use on a
variational approximation).

References
----------
Vehtari, Simpson, Gelman, Yao and Gabry (2024), "Pareto smoothed importance sampling",
JMLR 25 (arXiv:1507.02646, 2015).
Yao, Vehtari, Simpson and Gelman (2018), "Yes, but did it work?: Evaluating variational
inference", ICML.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch
from pyro.ops.stats import fit_generalized_pareto

__all__ = ["PSIS", "psis_diagnostic", "khat_threshold", "pareto_khat"]


@dataclasses.dataclass(frozen=True)
class PSIS:
    """The PSIS diagnostic of one set of importance weights.

    Attributes
    ----------
    khat : float
        Pareto shape estimate :math:`\\hat k` (dimensionless; lower is better).
    threshold : float
        :math:`\\min(1 - 1/\\log_{10} S, 0.7)` for ``S`` draws.
    reliable : bool
        ``khat < threshold``.
    verdict : str
        What ``khat`` means for the fit, in plain words.
    num_particles : int
        ``S``.
    """

    khat: float
    threshold: float
    reliable: bool
    verdict: str
    num_particles: int


def khat_threshold(num_particles: int) -> float:
    """The sample-size-aware k-hat threshold :math:`\\min(1 - 1/\\log_{10} S, 0.7)`."""
    return min(1.0 - 1.0 / math.log10(num_particles), 0.7)


def _verdict(khat: float, threshold: float, s: int) -> str:
    if khat < min(0.5, threshold):
        return (f"good: k-hat {khat:.2f} < {min(0.5, threshold):.2f}; q covers the posterior "
                "and importance-weighted estimates are reliable")
    if khat < threshold:
        return (f"ok: k-hat {khat:.2f} < threshold {threshold:.2f} for S={s}; importance-"
                "weighted estimates are usable but converge slowly")
    if khat <= 0.7:
        return (f"borderline: k-hat {khat:.2f} >= threshold {threshold:.2f} for S={s}; draw "
                "more particles before trusting importance-weighted estimates")
    return (f"bad: k-hat {khat:.2f} > 0.7; q misses part of the posterior (too narrow or "
            "wrongly shaped), so importance and IWAE estimates are unreliable; try a richer "
            "guide family, or method='ais' for the evidence")


def pareto_khat(log_w) -> float:
    """:math:`\\hat k` of the generalized Pareto fit to the largest weights, as
    ``arviz.psislw(log_w)[1]`` of ArviZ 0.2x computes it (with ``reff=1``).

    ``inf`` when the tail has 4 weights or fewer (too few for a fit; ArviZ's convention),
    which includes weights that are all equal.
    """
    x = np.asarray(log_w, dtype=np.float64).reshape(-1)
    x = x - x.max()
    s = x.size
    tail_len = int(math.ceil(min(s / 5.0, 3.0 * math.sqrt(s))))
    cutoff = max(np.sort(x)[-tail_len - 1], np.log(np.finfo(float).tiny))
    tail = x[x > cutoff]
    if tail.size <= 4:
        return math.inf
    excess = np.exp(tail) - np.exp(cutoff)
    khat, _ = fit_generalized_pareto(torch.as_tensor(excess, dtype=torch.float64))
    return float(khat)


def psis_diagnostic(log_w: torch.Tensor) -> PSIS:
    """PSIS :math:`\\hat k` of log-weights ``log_w`` (1-D), computed as ``arviz.psislw``
    of ArviZ 0.2x computes it (see :func:`pareto_khat`).

    Weights that are equal up to round-off (q equal to the posterior) have no tail: their
    k-hat is ``-inf`` (equal weights) or near 0 or below (round-off only).  A tail too short
    to fit whose weights are not all equal gives ``+inf``.
    """
    lw = torch.as_tensor(log_w).detach().to(torch.float64).reshape(-1).cpu().numpy()
    s = lw.size
    if s < 2:
        raise ValueError(f"PSIS needs at least 2 log-weights, got {s}")
    khat = pareto_khat(lw)
    spread = float(np.ptp(lw))
    if not math.isfinite(khat):  # degenerate weights: constant up to round-off, no tail
        constant = spread <= 1e-9 * max(1.0, float(np.abs(lw).max()))
        khat = -math.inf if constant else math.inf
    threshold = khat_threshold(s) if s > 10 else 0.0
    return PSIS(khat, threshold, khat < threshold, _verdict(khat, threshold, s), s)
