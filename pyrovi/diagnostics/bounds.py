r"""Pure math on importance log-weights: log-mean-exp with its standard error, the
importance-weighted bounds :math:`\mathcal{L}_K`, the effective sample size and the gap.

Every function takes a 1-D tensor of log-weights
:math:`\log w_s = \log p(x, z_s) - \log q(z_s)`, :math:`z_s \sim q`, and returns plain
numbers; nothing here knows about models or guides.

References
----------
Burda, Grosse and Salakhutdinov (2016), "Importance Weighted Autoencoders", ICLR.
Kong (1992) / Owen (2013), "Monte Carlo theory, methods and examples", ch. 9 (ESS).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import torch

__all__ = ["Bound", "log_mean_exp", "mean_se", "iwae_bounds", "ess", "gap_from_weights"]


@dataclasses.dataclass(frozen=True)
class Bound:
    r"""The importance-weighted bound :math:`\mathcal{L}_K` estimated from groups of draws.

    Attributes
    ----------
    k : int
        Draws per group, :math:`K`.
    value : float
        Mean over groups of :math:`\log \frac1K \sum_{k=1}^K w_k` (nats, total).
    se : float
        Standard error of ``value`` over the groups (NaN with a single group).
    num_groups : int
        Independent groups of ``k`` draws behind ``value``.
    """

    k: int
    value: float
    se: float
    num_groups: int


def _as_1d(log_w: torch.Tensor) -> torch.Tensor:
    log_w = torch.as_tensor(log_w).detach().to(torch.float64).reshape(-1)
    if log_w.numel() < 2:
        raise ValueError(f"need at least 2 log-weights, got {log_w.numel()}")
    return log_w


def mean_se(x: torch.Tensor) -> tuple[float, float]:
    """Sample mean of ``x`` and its standard error ``std(x, ddof=1) / sqrt(n)``."""
    x = _as_1d(x)
    return float(x.mean()), float(x.std(unbiased=True) / math.sqrt(x.numel()))


def log_mean_exp(log_w: torch.Tensor) -> tuple[float, float]:
    r""":math:`\log \hat Z = \log \frac1S \sum_s w_s` and its delta-method standard error.

    With normalised weights :math:`\tilde w_s = w_s / \max_s w_s`, the standard error is
    :math:`\operatorname{sd}(\tilde w) / (\sqrt S\, \overline{\tilde w})` (first order in
    :math:`1/S`); it is only meaningful when the weights have a finite variance, which the
    PSIS k-hat diagnoses (k-hat < 0.5).
    """
    log_w = _as_1d(log_w)
    top = log_w.max()
    w = (log_w - top).exp()
    mean = w.mean()
    value = float(top + mean.log())
    se = float(w.std(unbiased=True) / (math.sqrt(w.numel()) * mean))
    return value, se


def iwae_bounds(log_w: torch.Tensor, ks: Sequence[int] = (1, 10, 100, 1000)) -> tuple[Bound, ...]:
    r"""Importance-weighted bounds :math:`\mathcal{L}_K = \mathbb{E}\big[\log \frac1K
    \sum_{k=1}^K w_k\big]` for each ``K`` in ``ks`` (Burda et al., 2016).

    The ``S`` draws are cut into ``S // K`` disjoint groups of ``K``; the bound is the mean
    of the groups' log-mean-exp.  :math:`\mathcal{L}_1` is the ELBO, and
    :math:`\mathcal{L}_K \le \mathcal{L}_{K+1} \le \log p(x)` with
    :math:`\mathcal{L}_K \to \log p(x)` as :math:`K \to \infty`.  ``K`` values larger than
    ``S`` are left out.
    """
    log_w = _as_1d(log_w)
    out = []
    for k in ks:
        k = int(k)
        groups = log_w.numel() // k
        if k < 1 or groups < 1:
            continue
        block = log_w[: groups * k].reshape(groups, k)
        per_group = torch.logsumexp(block, dim=1) - math.log(k)
        value = float(per_group.mean())
        se = float(per_group.std(unbiased=True) / math.sqrt(groups)) if groups > 1 else math.nan
        out.append(Bound(k, value, se, groups))
    return tuple(out)


def ess(log_w: torch.Tensor) -> float:
    r"""Importance-sampling effective sample size :math:`(\sum_s w_s)^2 / \sum_s w_s^2`,
    between 1 and ``S`` (Kong, 1992)."""
    log_w = _as_1d(log_w)
    return float(torch.exp(2 * torch.logsumexp(log_w, 0) - torch.logsumexp(2 * log_w, 0)))


def gap_from_weights(log_w: torch.Tensor) -> tuple[float, float]:
    r"""The gap :math:`\log \hat Z - \widehat{\mathrm{ELBO}}` estimated from one set of
    weights, with a joint delta-method standard error.

    Both terms come from the same draws, so their errors are correlated; the influence of
    draw ``s`` on the gap is :math:`\psi_s = w_s / \bar w - \log w_s`, and
    :math:`\operatorname{se} = \operatorname{sd}(\psi) / \sqrt S`.
    """
    log_w = _as_1d(log_w)
    lz, _ = log_mean_exp(log_w)
    elbo = float(log_w.mean())
    w = (log_w - log_w.max()).exp()
    psi = w / w.mean() - log_w
    return lz - elbo, float(psi.std(unbiased=True) / math.sqrt(log_w.numel()))
