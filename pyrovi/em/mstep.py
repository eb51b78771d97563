r"""The generic M-step: maximise :math:`Q(\theta \mid \theta_t)` with L-BFGS.

``Q`` is evaluated exactly by the E-step's weights (:mod:`pyrovi.em.estep`), so the
optimiser is deterministic.  L-BFGS with a strong-Wolfe line search never returns a point
with a lower ``Q`` than where it started; the step is additionally reverted when it would,
so :math:`Q(\theta_{t+1} \mid \theta_t) \ge Q(\theta_t \mid \theta_t)` and the log evidence
cannot decrease (a generalised EM step, Dempster, Laird & Rubin 1977).

Where the model's own sites give closed-form updates (:mod:`pyrovi.em.derived`),
:func:`try_proposal` starts the M-step there: kept only if it raises ``Q``, and the whole
M-step when every parameter was updated and the gradient of ``Q`` vanishes there (to
:math:`\sqrt{\epsilon}` of the dtype, per observation); otherwise L-BFGS goes on from it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

import pyro
import torch
from torch.distributions import transform_to

__all__ = ["LBFGSMStep", "maximize_q", "try_proposal"]


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
    derived : bool
        Start from the closed-form updates read off the model's sites
        (:mod:`pyrovi.em.derived`) where it has them (default ``True``); ``False`` runs
        L-BFGS alone.
    """

    max_iter: int = 50
    history_size: int = 20
    tolerance_grad: float = 1e-9
    tolerance_change: float = 1e-12
    derived: bool = True


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


def try_proposal(
    q_fn: Callable[[], torch.Tensor],
    proposal: dict[str, torch.Tensor],
    start: float,
    *,
    scale: float = 1.0,
    check_gradient: bool = True,
) -> tuple[bool, float, bool]:
    """Move the active parameter store to ``proposal`` if that raises ``Q``.

    Parameters
    ----------
    q_fn : callable
        Returns :math:`Q(\\theta \\mid \\theta_t)` at the current parameters.
    proposal : dict
        Constrained values of some of the parameters (:func:`pyrovi.em.derived.propose`).
    start : float
        :math:`Q(\\theta_t \\mid \\theta_t)`.
    scale : float
        The number of observations: the gradient test is on ``Q / scale``.
    check_gradient : bool
        Run the gradient test (default).  ``False`` is for a proposal of a signature that
        passed it before (:func:`pyrovi.em.derived.signature`): ``Q`` is evaluated without
        gradients, and a proposal that covers every parameter and raises ``Q`` ends the
        M-step.

    Returns
    -------
    (bool, float, bool)
        Whether the M-step is done (the proposal covers every parameter, the gradient of
        ``Q / scale`` is below :math:`\\sqrt{\\epsilon}` there, and it raises ``Q``, or
        lowers it by rounding only, when :math:`\\theta_t` is kept); ``Q`` where the
        store now is; and whether the store is at the proposal (it raised ``Q`` and is
        kept) rather than restored to the starting point.
    """
    store = pyro.get_param_store()
    leaves = dict(store.named_parameters())
    saved = {name: leaves[name].detach().clone() for name in proposal}
    with torch.no_grad():
        for name, value in proposal.items():
            leaves[name].copy_(transform_to(store._constraints[name]).inv(value))
    params = list(leaves.values())
    eps = torch.finfo(params[0].dtype).eps if params else 0.0
    covered = len(proposal) == len(leaves)
    if check_gradient:
        with torch.enable_grad():
            q = q_fn()
            grads = torch.autograd.grad(q, params, allow_unused=True) if q.requires_grad else []
        worst = max((float(g.abs().max()) for g in grads if g is not None and g.numel()),
                    default=0.0)
        stationary = covered and len(grads) == len(params) and worst / scale <= math.sqrt(eps)
    else:
        with torch.no_grad():
            q = q_fn()
        stationary = covered
    value = float(q.detach())
    if math.isfinite(value) and value >= start:
        return stationary, value, True
    with torch.no_grad():
        for name, old in saved.items():
            leaves[name].copy_(old)
    # at convergence the maximum and theta_t agree to rounding: Q at the (stationary)
    # proposal comes out a few ulps below Q(theta_t), and theta_t is kept as the M-step
    rounding = 64 * eps * max(1.0, abs(start))
    return stationary and math.isfinite(value) and value >= start - rounding, start, False
