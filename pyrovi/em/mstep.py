r"""The generic M-step: maximise :math:`Q(\theta \mid \theta_t)` with L-BFGS.

``Q`` is evaluated exactly by the E-step's weights (:mod:`pyrovi.em.estep`), so the
optimiser is deterministic.  L-BFGS with a strong-Wolfe line search never returns a point
with a lower ``Q`` than where it started; the step is additionally reverted when it would,
so :math:`Q(\theta_{t+1} \mid \theta_t) \ge Q(\theta_t \mid \theta_t)` and the log evidence
cannot decrease (a generalised EM step, Dempster, Laird & Rubin 1977).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

import torch

__all__ = ["LBFGSMStep", "maximize_q"]


@dataclasses.dataclass(frozen=True)
class LBFGSMStep:
    """Settings of the generic M-step.

    Parameters
    ----------
    max_iter : int
        L-BFGS iterations per M-step.
    history_size : int
        L-BFGS memory.
    tolerance_grad : float
        Stop when the largest gradient entry of ``Q / num_obs`` falls below this.
    tolerance_change : float
        Stop when ``Q / num_obs`` changes by less than this between iterations.
    """

    max_iter: int = 50
    history_size: int = 20
    tolerance_grad: float = 1e-9
    tolerance_change: float = 1e-12


def maximize_q(
    q_fn: Callable[[], torch.Tensor],
    params: Sequence[torch.Tensor],
    *,
    scale: float = 1.0,
    settings: LBFGSMStep | None = None,
) -> tuple[float, float]:
    """Maximise ``q_fn()`` over the leaf tensors ``params`` in place.

    Parameters
    ----------
    q_fn : callable
        Returns :math:`Q(\\theta \\mid \\theta_t)` at the current values of ``params``.
    params : sequence of torch.Tensor
        Unconstrained leaf parameters (updated in place).
    scale : float
        ``Q`` is divided by ``scale`` (the number of observations) for the optimiser.
    settings : LBFGSMStep, optional
        Optimiser settings (default ``LBFGSMStep()``).

    Returns
    -------
    (float, float)
        ``Q`` before and after the step.  When the step did not improve ``Q`` (or made it
        non-finite) the parameters are restored and both values are the starting one.
    """
    params = list(params)
    settings = settings or LBFGSMStep()
    with torch.no_grad():
        start = float(q_fn())
    saved = [p.detach().clone() for p in params]
    opt = torch.optim.LBFGS(
        params,
        lr=1.0,
        max_iter=settings.max_iter,
        history_size=settings.history_size,
        tolerance_grad=settings.tolerance_grad,
        tolerance_change=settings.tolerance_change,
        line_search_fn="strong_wolfe",
    )

    def closure():
        opt.zero_grad()
        loss = -q_fn() / scale
        if torch.isfinite(loss):
            loss.backward()
        else:  # make the line search reject the point
            loss = loss.detach().new_tensor(math.inf)
        return loss

    with torch.enable_grad():
        opt.step(closure)
    with torch.no_grad():
        end = float(q_fn())
    if not math.isfinite(end) or end < start:
        with torch.no_grad():
            for p, s in zip(params, saved, strict=True):
                p.copy_(s)
        end = start
    for p in params:
        p.grad = None
    return start, end
