"""The convergence rule of a VI fit, as a pure function of window means of the ELBO.

The stochastic ELBO is noisy, so progress is judged on the mean ELBO over windows of steps.
When a window mean fails to beat the best one by more than ``tol`` (relative) for
``patience`` windows, the step size is cut by ``factor``; when that happens after
``max_reductions`` cuts the fit has converged.  The defaults (windows of 100 steps, patience
3, factor 0.3, four cuts: the last step size is 0.8% of the first) were tuned on a
10-coefficient Bayesian linear regression with collinear features (scikit-learn's diabetes
data), where they bring the fullrank ELBO within 0.02 nats of the exact log evidence and the
posterior standard deviations within 7%.  Cutting the step size on a plateau is what
lets a fit with a single particle per step settle within a fraction of a nat of the optimum:
with a constant Adam step the parameters keep jittering around it, and the ELBO stays a few
nats low (in the spirit of Stan's ``tol_rel_obj`` plus a reduce-on-plateau schedule).
"""

from __future__ import annotations

import dataclasses
import math

__all__ = ["PlateauRule", "PlateauState"]


@dataclasses.dataclass(frozen=True)
class PlateauState:
    """Where the rule stands.

    Attributes
    ----------
    best : float
        The best window-mean ELBO so far (``-inf`` before the first window).
    stalls : int
        Consecutive windows without a relative improvement above ``tol``.
    reductions : int
        How many times the step size has been cut.
    lr_scale : float
        The current step size as a fraction of the initial one.
    converged : bool
        Whether the rule is met.
    """

    best: float = -math.inf
    stalls: int = 0
    reductions: int = 0
    lr_scale: float = 1.0
    converged: bool = False


@dataclasses.dataclass(frozen=True)
class PlateauRule:
    """Reduce-on-plateau convergence rule (see the module docstring).

    Parameters
    ----------
    tol : float
        Relative improvement of the window-mean ELBO below which a window counts as a stall.
    window : int
        Steps per window.
    patience : int
        Stalled windows before the step size is cut (or, after the last cut, before the fit
        is declared converged).
    factor : float
        Multiplier of the step size at each cut.
    max_reductions : int
        Number of cuts before convergence can be declared.
    """

    tol: float = 1e-4
    window: int = 100
    patience: int = 3
    factor: float = 0.3
    max_reductions: int = 4

    def update(self, state: PlateauState, window_mean: float) -> PlateauState:
        """The state after one more window whose mean ELBO is ``window_mean``."""
        if state.best == -math.inf:
            return dataclasses.replace(state, best=window_mean)
        scale = max(abs(state.best), 1.0)
        if (window_mean - state.best) / scale > self.tol:
            return dataclasses.replace(state, best=window_mean, stalls=0)
        best = max(state.best, window_mean)
        stalls = state.stalls + 1
        if stalls < self.patience:
            return dataclasses.replace(state, best=best, stalls=stalls)
        if state.reductions < self.max_reductions:
            return PlateauState(
                best=best,
                stalls=0,
                reductions=state.reductions + 1,
                lr_scale=state.lr_scale * self.factor,
            )
        return dataclasses.replace(state, best=best, stalls=stalls, converged=True)
