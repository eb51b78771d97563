"""The optimizers behind DADVI: L-BFGS (strong Wolfe) and trust-region Newton.

Deterministic optimizers of a scalar function of one flat vector; they know nothing of
families, draws or models.  :func:`lbfgs` is written out rather than
``torch.optim.LBFGS`` (see its docstring); :func:`hessian` is torch's.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch.optim.lbfgs import _strong_wolfe

__all__ = ["Run", "lbfgs", "batched_lbfgs", "newton", "hessian"]


@dataclasses.dataclass
class Run:
    """How an optimization ended (``value`` is the minimized objective)."""

    theta: torch.Tensor
    value: float
    grad_norm: float
    iters: int
    converged: bool
    message: str
    trace: list = dataclasses.field(default_factory=list)  # the objective after each iteration


def _value_and_grad(f):
    """theta -> (float value, grad); a non-finite value or gradient becomes ``(1e30, 0)``,
    which makes a line search step back."""
    state = {"bad": 0}

    def vg(theta: torch.Tensor):
        t = theta.detach().clone().requires_grad_(True)
        loss = f(t)
        if torch.isfinite(loss):
            (g,) = torch.autograd.grad(loss, t)
            if torch.isfinite(g).all():
                return float(loss.detach()), g
        state["bad"] += 1
        return 1e30, torch.zeros_like(theta)

    return vg, state


def lbfgs(f, theta0, tol, max_iters, history, ftol=1e-9, ftol_window=20, on_iter=None,
          gain_tol=0.0) -> Run:
    """L-BFGS (two-loop recursion, strong-Wolfe line search) to ``max |grad| <= tol``.

    Two other ends count as converged, each with a message: the objective changed by less
    than ``ftol`` relative, or less than ``gain_tol``, over ``ftol_window`` iterations (an
    optimum approached only in a limit, or slowly), or the line search found no decrease
    where the quasi-Newton model predicts a gain of at most ``gain_tol`` (the objective's
    own rounding, e.g. a float32 log density, hides a gain that small: the point is optimal
    to within it).  The model's gain of the full step ``d = -H g`` is ``-g.d / 2``.

    Written out rather than ``torch.optim.LBFGS``: the same line search (torch's
    ``_strong_wolfe``), but no optimizer object, whose first step imports torch._dynamo
    (seconds), and an exact count of iterations.
    """
    vg, state = _value_and_grad(f)
    x = theta0.detach().clone()
    value, g = vg(x)
    if value >= 1e30:
        return Run(x, math.inf, math.inf, 0, False, "the objective is not finite at the start")
    s_hist: list[torch.Tensor] = []
    y_hist: list[torch.Tensor] = []
    rho_hist: list[float] = []
    iters = 0
    stalled = False
    flat = False
    gain = math.inf  # the quasi-Newton model's gain of the last step tried
    values = [value]
    while iters < max_iters:
        gnorm = float(g.abs().max())
        if gnorm <= tol:
            break
        if (ftol > 0 or gain_tol > 0) and len(values) > ftol_window and (
            values[-ftol_window - 1] - values[-1]
            <= max(ftol * max(1.0, abs(values[-1])), gain_tol)
        ):
            flat = True
            break
        # two-loop recursion: d = -H g
        q = -g
        alphas = []
        for s_i, y_i, r_i in zip(reversed(s_hist), reversed(y_hist), reversed(rho_hist)):
            a_i = r_i * float(s_i @ q)
            alphas.append(a_i)
            q = q - a_i * y_i
        if s_hist:
            q = q * (float(s_hist[-1] @ y_hist[-1]) / float(y_hist[-1] @ y_hist[-1]))
        for s_i, y_i, r_i, a_i in zip(s_hist, y_hist, rho_hist, reversed(alphas)):
            b_i = r_i * float(y_i @ q)
            q = q + (a_i - b_i) * s_i
        d = q
        gtd = float(g @ d)
        if gtd > -1e-14 * float(g @ g):  # not a descent direction: restart from steepest
            s_hist, y_hist, rho_hist = [], [], []
            d = -g
            gtd = float(g @ d)
        t = min(1.0, 1.0 / float(g.abs().sum())) if not s_hist else 1.0

        def obj(x_, t_, d_):
            return vg(x_ + t_ * d_)

        gain = -0.5 * gtd
        new_value, new_g, t, _ = _strong_wolfe(obj, x, t, d, value, g, gtd)
        iters += 1
        step = t * d
        y = new_g - g
        sy = float(step @ y)
        if new_value >= 1e30 or not math.isfinite(new_value) or new_value > value:
            stalled = True  # no finite decrease was found: x stays
            if new_value >= 1e30 or not math.isfinite(new_value):
                gain = math.inf  # the objective broke along d: not a matter of precision
            values.append(value)
            break
        if sy > 1e-10 * float(y @ y) ** 0.5 * float(step @ step) ** 0.5:
            s_hist.append(step)
            y_hist.append(y)
            rho_hist.append(1.0 / sy)
            if len(s_hist) > history:
                s_hist.pop(0)
                y_hist.pop(0)
                rho_hist.pop(0)
        x = x + step
        if new_value == value and float(step.abs().max()) == 0.0:
            value, g = new_value, new_g
            values.append(value)
            stalled = True
            break
        value, g = new_value, new_g
        values.append(value)
        if on_iter is not None:  # progress display: the value is a host float already
            on_iter(-value)
    gnorm = float(g.abs().max())
    trace = [-v for v in values[1:]]
    if flat:
        return Run(x, value, gnorm, iters, True, (
            f"converged by the objective's change (< {ftol:.2g} relative or {gain_tol:.2g} "
            f"over {ftol_window} iterations) with max|grad| = {gnorm:.3g} > tol: the optimum "
            "is approached only in a limit (for lowrank, typically a scale -> 0 with its "
            "factor row -> infinity)"
        ), trace)
    if stalled and gnorm > tol and gain <= gain_tol:
        return Run(x, value, gnorm, iters, True, (
            f"converged at the objective's precision: the line search found no decrease where "
            f"the quasi-Newton model predicts a gain of {gain:.2g} <= {gain_tol:.2g} nats "
            f"(max|grad| = {gnorm:.3g} > tol)"
        ), trace)
    converged = gnorm <= tol
    msg = "" if converged else (
        f"L-BFGS stopped ({'line search stalled' if stalled else 'max_iters reached'}) with "
        f"max|grad| = {gnorm:.3g} > tol = {tol:.3g} after {iters} iterations"
        + (f"; {state['bad']} non-finite evaluations" if state["bad"] else "")
    )
    return Run(x, value, gnorm, iters, converged, msg, trace)


def batched_lbfgs(value_and_grad, x0: torch.Tensor, max_iters: int, *, history: int = 10,
                  tol: float = 1e-8, ftol: float = 1e-8, c1: float = 1e-4,
                  max_halvings: int = 40) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Many independent minimizations at once: L-BFGS on each row of ``x0`` (R, n).

    ``value_and_grad(x)`` maps (R, n) to the rows' values (R,) and gradients (R, n), each
    row's only of that row (a value may be +inf where the row is infeasible).  Every row has
    its own curvature pairs and its own backtracking (Armijo) line search, run together as
    batched tensor operations: R small problems cost about what one does.  A row stops when
    ``max |grad| <= tol``, when an accepted step gains less than ``ftol`` relative, or when
    ``max_halvings`` halvings find no decrease.

    Returns ``(x, values, iterations)``: the rows where they stopped, their values, and the
    iterations run (the most any row took).
    """
    x = x0.detach().clone()
    rows = x.shape[0]
    value, grad = value_and_grad(x)
    s_hist: list[torch.Tensor] = []
    y_hist: list[torch.Tensor] = []
    rho_hist: list[torch.Tensor] = []
    active = torch.isfinite(value) & (grad.abs().amax(-1) > tol)
    iters = 0
    while iters < max_iters and bool(active.any()):
        iters += 1
        # two-loop recursion per row: d = -H g, a row's pairs with s.y <= 0 have rho = 0
        q = grad.clone()
        alphas = []
        for s_i, y_i, r_i in zip(reversed(s_hist), reversed(y_hist), reversed(rho_hist)):
            a_i = r_i * (s_i * q).sum(-1)
            q = q - a_i[:, None] * y_i
            alphas.append(a_i)
        first = 1.0 / grad.norm(dim=-1).clamp_min(1.0)
        if s_hist:
            yy = (y_hist[-1] * y_hist[-1]).sum(-1).clamp_min(torch.finfo(x.dtype).tiny)
            gamma = torch.where(rho_hist[-1] > 0, 1.0 / (rho_hist[-1] * yy), first)
        else:
            gamma = first
        q = q * gamma[:, None]
        for s_i, y_i, r_i, a_i in zip(s_hist, y_hist, rho_hist, reversed(alphas)):
            q = q + (a_i - r_i * (y_i * q).sum(-1))[:, None] * s_i
        d = -q
        slope = (grad * d).sum(-1)
        uphill = slope >= 0  # a stale pair: steepest descent for that row
        d = torch.where(uphill[:, None], -grad, d)
        slope = torch.where(uphill, -(grad * grad).sum(-1), slope)
        d = torch.where(active[:, None], d, torch.zeros_like(d))
        step = torch.ones(rows, dtype=x.dtype, device=x.device)
        done = ~active
        # each row keeps the value and gradient of the step it accepted
        value_new, grad_new = value, grad
        for _ in range(max_halvings):
            trial, trial_grad = value_and_grad(x + step[:, None] * d)
            accepted = ~done & torch.isfinite(trial) & (trial <= value + c1 * step * slope)
            value_new = torch.where(accepted, trial, value_new)
            grad_new = torch.where(accepted[:, None], trial_grad, grad_new)
            done = done | accepted
            if bool(done.all()):
                break
            step = torch.where(done, step, 0.5 * step)
        step = torch.where(done & active, step, torch.zeros_like(step))
        x_new = x + step[:, None] * d
        s_i, y_i = x_new - x, grad_new - grad
        sy = (s_i * y_i).sum(-1)
        rho = torch.where(sy > 0, 1.0 / sy.clamp_min(torch.finfo(x.dtype).tiny),
                          torch.zeros_like(sy))
        s_hist.append(s_i)
        y_hist.append(y_i)
        rho_hist.append(rho)
        if len(s_hist) > history:
            del s_hist[0], y_hist[0], rho_hist[0]
        moved = step > 0
        gain = value - value_new
        x = torch.where(moved[:, None], x_new, x)
        value = torch.where(moved, value_new, value)
        grad = torch.where(moved[:, None], grad_new, grad)
        active = (active & moved & (grad.abs().amax(-1) > tol)
                  & (gain > ftol * value.abs().clamp_min(1.0)))
    return x, value, iters


def hessian(f, theta: torch.Tensor) -> torch.Tensor:
    """Dense Hessian of the scalar ``f`` at ``theta`` (torch.func, else autograd)."""
    try:
        return torch.func.hessian(f)(theta.detach())
    except Exception:  # an op without a forward-mode rule: fall back to reverse-over-reverse
        return torch.autograd.functional.hessian(f, theta.detach(), vectorize=False)


def newton(f, theta0, tol, max_iters) -> Run:
    """Trust-region Newton (Levenberg-Marquardt damping) with the exact dense Hessian."""
    theta = theta0.detach().clone()
    lam = 1e-3
    iters = 0
    value = float("nan")

    def value_and_grad(t):
        t = t.detach().clone().requires_grad_(True)
        loss = f(t)
        if not torch.isfinite(loss):
            return math.inf, None
        (g,) = torch.autograd.grad(loss, t)
        if not torch.isfinite(g).all():
            return math.inf, None
        return float(loss.detach()), g

    value, g = value_and_grad(theta)
    if g is None:
        return Run(theta, value, math.inf, 0, False, "the objective is not finite at the start")
    trace: list[float] = []
    while iters < max_iters:
        gnorm = float(g.abs().max())
        if gnorm <= tol:
            return Run(theta, value, gnorm, iters, True, "", trace)
        iters += 1
        h = hessian(f, theta)
        h = 0.5 * (h + h.T)
        evals, evecs = torch.linalg.eigh(h)
        gt = evecs.T @ g
        while True:
            shift = torch.clamp(evals, min=0.0) + lam * (1.0 + evals.abs().max())
            step = -(evecs @ (gt / shift))
            new_value, new_g = value_and_grad(theta + step)
            predicted = -(float(g @ step) + 0.5 * float(step @ (h @ step)))
            actual = value - new_value
            if new_g is not None and predicted > 0 and actual >= 0.25 * predicted:
                lam = max(lam / 10.0, 1e-12)
                break
            if new_g is not None and predicted <= 0 and actual >= 0:
                break
            lam *= 10.0
            if lam > 1e12:
                trace.append(-value)
                return Run(theta, value, gnorm, iters, False, "Newton's step could not decrease "
                            "the objective", trace)
        theta, value, g = theta + step, new_value, new_g
        trace.append(-value)
    gnorm = float(g.abs().max())
    ok = gnorm <= tol
    msg = "" if ok else f"Newton stopped at max_iters with max|grad| = {gnorm:.3g} > tol"
    return Run(theta, value, gnorm, iters, ok, msg, trace)
