r"""Pareto-smoothed importance sampling diagnostic :math:`\hat k` of importance weights,
computed with ArviZ's ``psislw``, with the sample-size-aware threshold and a plain-words
verdict.

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
import warnings

import numpy as np
import torch

__all__ = ["PSIS", "psis_diagnostic", "khat_threshold"]


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


def psis_diagnostic(log_w: torch.Tensor) -> PSIS:
    """PSIS :math:`\\hat k` of log-weights ``log_w`` (1-D) via ``arviz.psislw``.

    Weights that are equal up to round-off (q equal to the posterior) have no tail; their
    k-hat is reported as ArviZ computes it (near 0 or below).
    """
    import arviz as az

    lw = torch.as_tensor(log_w).detach().to(torch.float64).reshape(-1).cpu().numpy()
    s = lw.size
    if s < 2:
        raise ValueError(f"PSIS needs at least 2 log-weights, got {s}")
    with warnings.catch_warnings():  # ArviZ warns on k-hat > 0.7; the verdict says it
        warnings.simplefilter("ignore")
        _, khat = az.psislw(lw - lw.max())
    khat = float(np.asarray(khat))
    spread = float(np.ptp(lw))
    if not math.isfinite(khat):  # degenerate weights: constant up to round-off, no tail
        constant = spread <= 1e-9 * max(1.0, float(np.abs(lw).max()))
        khat = -math.inf if constant else math.inf
    threshold = khat_threshold(s) if s > 10 else 0.0
    return PSIS(khat, threshold, khat < threshold, _verdict(khat, threshold, s), s)
