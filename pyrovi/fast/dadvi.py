r"""Deterministic ADVI (DADVI) for the Gaussian families, as pure functions.

DADVI (Giordano, Ingram & Broderick, JMLR 2024) fixes ``M`` standard-normal draws
:math:`\epsilon_1, \dots, \epsilon_M` once and maximizes the sample-average ELBO

.. math::

    \hat L(\theta) = \frac1M \sum_m \log p\big(u(\theta, \epsilon_m)\big) + H[q_\theta],

a deterministic function of the variational parameters :math:`\theta`, with a quasi-Newton
method (L-BFGS with a strong-Wolfe line search) to a gradient-norm tolerance.  The optimum
is that of a fixed objective, so convergence is well defined and the fit is reproducible
to the last bit for a given seed.

Three things are added to the paper's method:

* **Moment-matched draws.**  The draws come in antithetic pairs :math:`(z, -z)` (exact
  sample mean 0) and, when ``M / 2 >= noise_dim``, are whitened so that their sample
  covariance is exactly the identity.  The objective of a Gaussian target then depends on
  the draws only through those two moments, so on a linear-Gaussian model DADVI returns the
  exact optimum of the family for any such ``M`` (and linear response the exact posterior
  covariance); on other targets it is an ordinary variance reduction.
* **A fresh-draw check.**  After convergence the ELBO at the optimum is estimated on
  ``num_fresh`` independent draws (more while inconclusive), as the mean of
  ``log p - log q``.  When it differs from the fixed-draw objective by more than
  ``max(check_tol, 3 SE)`` nats, the fixed draws have overfit: ``M`` is doubled
  (the new set contains the old draws) and the fit warm-started, up to ``max_draws``.
  The outcome says whether the check passed and, if not, that the cap was hit.
* **Linear response** (:func:`linear_response_covariance`): the covariance of the
  posterior means under a linear perturbation of the log density, from the Hessian of the
  fixed-draw objective; it corrects mean-field's underestimated variances and equals the
  exact posterior covariance on a linear-Gaussian model.

Parameterizations
-----------------
Each family is optimized over one flat unconstrained vector ``theta`` (:func:`unpack`):

==============  =========================================  ===================================
family          ``theta``                                  q(u) = N(loc, Sigma)
==============  =========================================  ===================================
``meanfield``   ``loc`` (D), ``log scale`` (D)             Sigma = diag(scale^2)
``fullrank``    ``loc``, ``log diag C``, strict lower C    Sigma = C C^T, C lower triangular
``lowrank``     ``loc``, ``log scale``, ``W`` (D x K)      Sigma = diag(s) (W W^T + I) diag(s)
==============  =========================================  ===================================

and reported as a :class:`~pyrovi.families.QParams` (also exported here as
:data:`Gaussian`) in Pyro's autoguide parameterization (``scale``, ``factor``), which
:func:`autoguide_values` maps to the autoguides' parameter names.  The Gaussian math --
draws from given noise, the closed-form entropy, the covariance, the noise dimension -- is
that of the family objects of :mod:`pyrovi.families` (:class:`~pyrovi.families.MeanField`,
:class:`~pyrovi.families.FullRank`, :class:`~pyrovi.families.LowRank`), the same the
compiled SGD path uses; this module adds only its own optimization coordinates ``theta``.

Everything takes and returns values; the only input from a model is ``log_density``, any
callable mapping a batch of unconstrained vectors ``(P, D)`` to log densities ``(P,)``
(for a traced Pyro model: ``torch.vmap(graph)``, see :func:`model_log_density`).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch.optim.lbfgs import _strong_wolfe

from pyrovi.families import FamilyMath, FullRank, LowRank, MeanField, QParams

__all__ = [
    "FAMILIES",
    "Gaussian",
    "DadviOutcome",
    "fit_dadvi",
    "family_math",
    "linear_response_covariance",
    "num_params",
    "unpack",
    "pack",
    "fixed_draws",
    "elbo_fresh",
    "autoguide_values",
    "write_autoguide",
    "model_log_density",
    "result_log_density",
]

FAMILIES = ("meanfield", "fullrank", "lowrank")

LogDensity = Callable[[torch.Tensor], torch.Tensor]

#: A fitted Gaussian in Pyro's autoguide parameterization: the family records' own
#: :class:`~pyrovi.families.QParams` (``loc`` (D,), ``scale`` (D,), ``factor``: the unit
#: lower-triangular ``L`` for fullrank, ``W`` (D, K) for lowrank, None for meanfield).
Gaussian = QParams


def family_math(family: str | FamilyMath, rank: int = 0) -> FamilyMath:
    """The :mod:`pyrovi.families` math object of a Gaussian family given by name (or the
    object itself); ``rank`` is the lowrank family's rank."""
    if not isinstance(family, str):
        if getattr(family, "name", None) not in FAMILIES:
            raise ValueError(f"DADVI fits {FAMILIES}, not {family!r}")
        return family
    if family == "meanfield":
        return MeanField()
    if family == "fullrank":
        return FullRank()
    if family == "lowrank":
        return LowRank(int(rank))
    raise ValueError(f"unknown family {family!r}; DADVI fits {FAMILIES}")


def _family_of_q(family: str | FamilyMath, q: QParams) -> FamilyMath:
    if isinstance(family, str) and family == "lowrank":
        return LowRank(int(q.factor.shape[-1]))
    return family_math(family)


def num_params(family: str | FamilyMath, dim: int, rank: int = 0) -> int:
    """Length of ``theta``."""
    fam = family_math(family, rank)
    if fam.name == "meanfield":
        return 2 * dim
    if fam.name == "fullrank":
        return 2 * dim + dim * (dim - 1) // 2
    return 2 * dim + dim * fam.rank


class _Unpacked(NamedTuple):
    """The optimization coordinates, unpacked (see :func:`_relative` for why ``factor``
    is ``C`` for fullrank)."""

    loc: torch.Tensor
    log_scale: torch.Tensor  # log scale (meanfield, lowrank) or log diag C (fullrank)
    factor: torch.Tensor | None  # C (fullrank, lower with positive diagonal) or W


def _unpack(fam: FamilyMath, theta: torch.Tensor, dim: int) -> _Unpacked:
    loc, log_scale = theta[:dim], theta[dim : 2 * dim]
    if fam.name == "meanfield":
        return _Unpacked(loc, log_scale, None)
    rest = theta[2 * dim :]
    if fam.name == "fullrank":
        rows, cols = torch.tril_indices(dim, dim, offset=-1, device=theta.device)
        strict = theta.new_zeros(dim, dim).index_put((rows, cols), rest)
        return _Unpacked(loc, log_scale, strict + torch.diag_embed(log_scale.exp()))
    return _Unpacked(loc, log_scale, rest.reshape(dim, fam.rank))


def _q(fam: FamilyMath, p: _Unpacked) -> QParams:
    """The family's :class:`QParams` of unpacked coordinates."""
    scale = p.log_scale.exp()
    if fam.name == "fullrank":
        return QParams(p.loc, scale, p.factor / scale[:, None])
    return QParams(p.loc, scale, p.factor)


def unpack(family: str | FamilyMath, theta: torch.Tensor, dim: int, rank: int = 0) -> QParams:
    """``theta`` -> :class:`QParams` (Pyro's parameterization)."""
    fam = family_math(family, rank)
    return _q(fam, _unpack(fam, theta, dim))


def pack(family: str | FamilyMath, q: QParams) -> torch.Tensor:
    """:class:`QParams` -> ``theta`` (the inverse of :func:`unpack`)."""
    fam = _family_of_q(family, q)
    parts = [q.loc, q.scale.log()]
    if fam.name == "fullrank":
        dim = q.loc.shape[-1]
        rows, cols = torch.tril_indices(dim, dim, offset=-1, device=q.loc.device)
        parts.append((q.scale[:, None] * q.factor)[rows, cols])
    elif fam.name == "lowrank":
        parts.append(q.factor.reshape(-1))
    return torch.cat(parts)


# ----------------------------------------------------------------------------- draws


def _raw_normals(num: int, n: int, generator: torch.Generator, dtype, device=None) -> torch.Tensor:
    """Standard normals from a CPU generator (the same on every device), then moved."""
    return torch.randn(num, n, generator=generator, dtype=torch.float64).to(device, dtype)


def fixed_draws(raw: torch.Tensor, scheme: str = "moment_matched") -> torch.Tensor:
    """The fixed draws ``(M, n)`` from ``raw`` standard normals ``(M // 2, n)``.

    ``"antithetic"``: ``[z; -z]`` (sample mean exactly 0).  ``"moment_matched"``: the same
    after whitening ``z`` so that the sample second moment ``E^T E / M`` is exactly the
    identity (only when ``M / 2 >= n``; otherwise antithetic).  ``"iid"``: ``raw`` itself
    (then ``raw`` holds all ``M`` draws).
    """
    if scheme == "iid":
        return raw
    if scheme not in ("antithetic", "moment_matched"):
        raise ValueError(f"unknown draw scheme {scheme!r}")
    z = raw
    half, n = z.shape
    if scheme == "moment_matched" and half >= n:
        gram = (z.T.double() @ z.double()) / half
        chol = torch.linalg.cholesky(gram)
        z = torch.linalg.solve_triangular(chol, z.double().T, upper=False).T.to(raw.dtype)
    return torch.cat([z, -z])


def _draw_count(num_draws: int, scheme: str) -> int:
    """Rows of raw normals behind ``num_draws`` fixed draws."""
    return num_draws if scheme == "iid" else num_draws // 2


# ----------------------------------------------------------------------------- objective


class _Counter:
    def __init__(self, log_density: LogDensity):
        self.log_density = log_density
        self.calls = 0
        self.points = 0

    def __call__(self, u: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        self.points += u.shape[0]
        return self.log_density(u)


def _neg_objective(fam, log_density, eps, dim, dtype):
    """theta -> minus the fixed-draw ELBO (a scalar, float64 accumulation)."""

    def f(theta: torch.Tensor) -> torch.Tensor:
        q = _q(fam, _unpack(fam, theta, dim))
        u = fam.draw(q, eps)
        lp = log_density(u.to(dtype))
        return -(lp.to(theta.dtype).mean() + fam.entropy(q))

    return f


def _theta_of(fam: FamilyMath, p: _Unpacked) -> torch.Tensor:
    """The flat ``theta`` of unpacked parameters (inverse of :func:`_unpack`)."""
    parts = [p.loc, p.log_scale]
    if fam.name == "fullrank":
        dim = p.loc.shape[-1]
        rows, cols = torch.tril_indices(dim, dim, offset=-1, device=p.loc.device)
        parts.append(p.factor[rows, cols])
    elif fam.name == "lowrank":
        parts.append(p.factor.reshape(-1))
    return torch.cat(parts)


def _relative(fam: FamilyMath, z: torch.Tensor, ref: _Unpacked, dim: int) -> _Unpacked:
    """q from coordinates ``z`` relative to the reference ``ref`` (``z = 0`` gives ``ref``).

    The reference whitens the problem: ``loc = loc0 + A0 a`` and ``A = A0 B`` with ``A0``
    the reference's scale (meanfield, lowrank: ``diag(scale0)``; fullrank: ``C0``), so that
    near the optimum the objective's Hessian in ``z`` is close to the identity for a
    near-Gaussian target, whatever the posterior's scales and correlations.
    """
    a, b = z[:dim], z[dim : 2 * dim]
    log_scale = ref.log_scale + b
    if fam.name == "fullrank":
        rows, cols = torch.tril_indices(dim, dim, offset=-1, device=z.device)
        strict = z.new_zeros(dim, dim).index_put((rows, cols), z[2 * dim :])
        c = ref.factor @ (strict + torch.diag_embed(b.exp()))
        return _Unpacked(ref.loc + ref.factor @ a, log_scale, c)
    loc = ref.loc + ref.log_scale.exp() * a
    if fam.name == "meanfield":
        return _Unpacked(loc, log_scale, None)
    return _Unpacked(loc, log_scale, ref.factor + z[2 * dim :].reshape(dim, fam.rank))


def _neg_objective_relative(fam, log_density, eps, dim, dtype, ref):
    """z -> minus the fixed-draw ELBO at :func:`_relative` (z, ref)."""

    def f(z: torch.Tensor) -> torch.Tensor:
        q = _q(fam, _relative(fam, z, ref, dim))
        u = fam.draw(q, eps)
        lp = log_density(u.to(dtype))
        return -(lp.to(z.dtype).mean() + fam.entropy(q))

    return f


def _lbfgs_rounds(fam, log_density, eps, dim, dtype, theta, tol, max_iters, history,
                  max_rounds=8, first_iters=25, on_iter=None) -> _Run:
    """L-BFGS in ``theta``, then rounds in coordinates whitened by the current q
    (:func:`_relative`), each restarted from the last, until the gradient in the whitened
    coordinates is below ``tol`` (usually at once, or after a few iterations).

    ``tol`` refers to the whitened gradient (nats per posterior standard deviation, affine
    invariant).  The first round is in ``theta`` because whitening by a poor starting q
    (scales ``init_scale``) makes the first steps slower, not faster.
    """
    f = _neg_objective(fam, log_density, eps, dim, dtype)
    # handed over to the whitened rounds as soon as progress slows
    run = _lbfgs(f, theta, tol, min(max_iters, first_iters), history, ftol=1e-7, ftol_window=10,
                 on_iter=on_iter)
    iters = run.iters
    theta = run.theta
    trace = list(run.trace)
    if not math.isfinite(run.value) or (run.converged and not run.message and run.iters == 0):
        return run
    for _ in range(max_rounds):
        ref = _unpack(fam, theta, dim)
        f = _neg_objective_relative(fam, log_density, eps, dim, dtype, ref)
        z0 = torch.zeros(num_params(fam, dim), dtype=theta.dtype, device=theta.device)
        run = _lbfgs(f, z0, tol, max(max_iters - iters, 0), history, on_iter=on_iter)
        iters += run.iters
        trace += run.trace
        theta = _theta_of(fam, _relative(fam, run.theta, ref, dim)).detach()
        if (run.converged and not run.message) or iters >= max_iters:
            break
        if not math.isfinite(run.value):
            break
    return _Run(theta, run.value, run.grad_norm, iters, run.converged, run.message, trace)


def _log_q(fam: FamilyMath, q: QParams, u: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """log q(u) of draws ``u = loc + A eps`` (P,)."""
    dim = q.loc.shape[-1]
    const = -0.5 * dim * math.log(2 * math.pi)
    log_scale = q.scale.log()
    if fam.name in ("meanfield", "fullrank"):  # A square, log|det A| = sum log scale
        return const - 0.5 * (eps * eps).sum(-1) - log_scale.sum()
    # lowrank: Sigma = S (I + W W^T) S, Woodbury and the determinant lemma
    v = (u - q.loc) / q.scale
    w = q.factor
    cap = torch.eye(w.shape[-1], dtype=w.dtype, device=w.device) + w.T @ w
    chol = torch.linalg.cholesky(cap)
    proj = torch.cholesky_solve((v @ w).T, chol).T  # (P, K): cap^-1 W^T v
    quad = (v * v).sum(-1) - ((v @ w) * proj).sum(-1)
    logdet = 2 * log_scale.sum() + 2 * chol.diagonal().log().sum()
    return const - 0.5 * quad - 0.5 * logdet


def _check(log_density, fam, q, elbo, num_fresh, max_fresh, check_tol, generator, dtype):
    """The fresh-draw check: ``(fresh, se, passed, allowed, num_fresh_used)``.

    Passes when ``|elbo - fresh| <= max(check_tol, 3 se)``; while the gap exceeds
    ``check_tol`` but not ``3 se`` (inconclusive) the fresh draws are doubled, up to
    ``max_fresh``.
    """
    n_noise = fam.noise_dim(q.loc.shape[-1])
    values = []
    n = 0
    want = num_fresh
    while True:
        eps = _raw_normals(want - n, n_noise, generator, q.loc.dtype, q.loc.device)
        values.append(_log_ratios(log_density, fam, q, eps, 1000, dtype))
        n = want
        lw = torch.cat(values)
        if not torch.isfinite(lw).all():
            return float("nan"), math.inf, False, math.inf, n
        fresh = float(lw.mean())
        se = float(lw.std() / math.sqrt(n))
        gap = abs(elbo - fresh)
        if gap <= check_tol or gap > 3.0 * se or n >= max_fresh:
            allowed = max(check_tol, 3.0 * se)
            return fresh, se, gap <= allowed, allowed, n
        want = min(2 * n, max_fresh)


def _log_ratios(log_density, fam, q, eps, chunk, dtype) -> torch.Tensor:
    """``log p(u) - log q(u)`` at the draws of ``eps`` (float64)."""
    work = q.loc.dtype
    with torch.no_grad():
        values = []
        for start in range(0, eps.shape[0], chunk):
            e = eps[start : start + chunk].to(work)
            u = fam.draw(q, e)
            lp = log_density(u.to(dtype)).to(torch.float64)
            values.append(lp - _log_q(fam, q, u, e).to(torch.float64))
    return torch.cat(values)


def elbo_fresh(
    log_density: LogDensity,
    family: str | FamilyMath,
    q: QParams,
    num_draws: int = 2000,
    *,
    generator: torch.Generator | None = None,
    eps: torch.Tensor | None = None,
    chunk: int = 1000,
    dtype: torch.dtype | None = None,
) -> tuple[float, float]:
    """The ELBO of q on independent draws and its standard error, ``(elbo, se)``.

    The estimate is the mean of ``log p(u) - log q(u)`` over the draws (not ``mean log p +
    H``): both are unbiased, but this one's variance vanishes as q approaches the posterior
    (it is 0 for an exact fit), so near an optimum its standard error is small enough for
    the fresh-draw check to resolve a few hundredths of a nat.

    ``eps`` (``(N, noise_dim)``) gives the draws explicitly (common random numbers across
    fits); otherwise ``num_draws`` iid draws from ``generator``.
    """
    fam = _family_of_q(family, q)
    work = q.loc.dtype
    dtype = dtype or work
    if eps is None:
        gen = generator or torch.Generator().manual_seed(0)
        eps = _raw_normals(num_draws, fam.noise_dim(q.loc.shape[-1]), gen, work, q.loc.device)
    lw = _log_ratios(log_density, fam, q, eps, chunk, dtype)
    n = lw.shape[0]
    if not torch.isfinite(lw).all():
        return float("-inf") if bool((lw == -math.inf).any()) else float("nan"), float("inf")
    return float(lw.mean()), float(lw.std() / math.sqrt(n)) if n > 1 else float("inf")


# ----------------------------------------------------------------------------- optimizers


@dataclasses.dataclass
class _Run:
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


def _lbfgs(f, theta0, tol, max_iters, history, ftol=1e-9, ftol_window=20, on_iter=None) -> _Run:
    """L-BFGS (two-loop recursion, strong-Wolfe line search) to ``max |grad| <= tol``.

    Written out rather than ``torch.optim.LBFGS``: the same line search (torch's
    ``_strong_wolfe``), but no optimizer object, whose first step imports torch._dynamo
    (seconds), and an exact count of iterations.
    """
    vg, state = _value_and_grad(f)
    x = theta0.detach().clone()
    value, g = vg(x)
    if value >= 1e30:
        return _Run(x, math.inf, math.inf, 0, False, "the objective is not finite at the start")
    s_hist: list[torch.Tensor] = []
    y_hist: list[torch.Tensor] = []
    rho_hist: list[float] = []
    iters = 0
    stalled = False
    flat = False
    values = [value]
    while iters < max_iters:
        gnorm = float(g.abs().max())
        if gnorm <= tol:
            break
        if ftol > 0 and len(values) > ftol_window and (
            values[-ftol_window - 1] - values[-1] <= ftol * max(1.0, abs(values[-1]))
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

        new_value, new_g, t, _ = _strong_wolfe(obj, x, t, d, value, g, gtd)
        iters += 1
        step = t * d
        y = new_g - g
        sy = float(step @ y)
        if new_value >= 1e30 or not math.isfinite(new_value) or new_value > value:
            stalled = True  # no finite decrease was found: x stays
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
        return _Run(x, value, gnorm, iters, True, (
            f"converged by the objective's change (< {ftol:.1g} relative over {ftol_window} "
            f"iterations) with max|grad| = {gnorm:.3g} > tol: the optimum is approached only "
            "in a limit (for lowrank, typically a scale -> 0 with its factor row -> infinity)"
        ), trace)
    converged = gnorm <= tol
    msg = "" if converged else (
        f"L-BFGS stopped ({'line search stalled' if stalled else 'max_iters reached'}) with "
        f"max|grad| = {gnorm:.3g} > tol = {tol:.3g} after {iters} iterations"
        + (f"; {state['bad']} non-finite evaluations" if state["bad"] else "")
    )
    return _Run(x, value, gnorm, iters, converged, msg, trace)


def _hessian(f, theta: torch.Tensor) -> torch.Tensor:
    """Dense Hessian of the scalar ``f`` at ``theta`` (torch.func, else autograd)."""
    try:
        return torch.func.hessian(f)(theta.detach())
    except Exception:  # an op without a forward-mode rule: fall back to reverse-over-reverse
        return torch.autograd.functional.hessian(f, theta.detach(), vectorize=False)


def _newton(f, theta0, tol, max_iters) -> _Run:
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
        return _Run(theta, value, math.inf, 0, False, "the objective is not finite at the start")
    trace: list[float] = []
    while iters < max_iters:
        gnorm = float(g.abs().max())
        if gnorm <= tol:
            return _Run(theta, value, gnorm, iters, True, "", trace)
        iters += 1
        h = _hessian(f, theta)
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
                return _Run(theta, value, gnorm, iters, False, "Newton's step could not decrease "
                            "the objective", trace)
        theta, value, g = theta + step, new_value, new_g
        trace.append(-value)
    gnorm = float(g.abs().max())
    ok = gnorm <= tol
    msg = "" if ok else f"Newton stopped at max_iters with max|grad| = {gnorm:.3g} > tol"
    return _Run(theta, value, gnorm, iters, ok, msg, trace)


# ----------------------------------------------------------------------------- the fit


@dataclasses.dataclass(frozen=True)
class DadviOutcome:
    """What :func:`fit_dadvi` found.

    Attributes
    ----------
    family : str
    params : Gaussian
        The fitted q in Pyro's parameterization (see :func:`autoguide_values`).
    theta : Tensor
        The fitted flat unconstrained parameters (:func:`unpack`), for
        :func:`linear_response_covariance` and warm starts.
    elbo : float
        The fixed-draw objective at the optimum (nats).
    elbo_fresh, elbo_fresh_se : float
        The ELBO at the optimum on the check's independent draws (``num_fresh`` to
        ``max_fresh``; mean of log p - log q), and its standard error.
    num_fresh : int
        The independent draws behind ``elbo_fresh`` (0 when the check was skipped).
    num_draws : int
        ``M``, the fixed draws of the final fit.
    num_iters : int
        Optimizer iterations over all fits (all values of ``M``).
    num_evals : int
        Calls of ``log_density`` (objective and gradient evaluations, plus the fresh-draw
        and Hessian batches).
    num_points : int
        Log densities evaluated in all (points over all calls).
    grad_norm : float
        ``max |grad|`` of the final objective at the optimum (see ``tol``).
    converged : bool
        Whether the final optimization met the gradient tolerance.
    check_passed : bool
        Whether fixed-draw and fresh-draw ELBO agreed within ``max(check_tol, 3 SE)``.
    draws_history : tuple of (int, float, float, float)
        ``(M, elbo, elbo_fresh, elbo_fresh_se)`` after each fit.
    wall_time : float
        Seconds.
    optimizer : str
        ``"lbfgs"`` or ``"newton"``.
    rank : int
        The lowrank family's rank (0 otherwise).
    draw_scheme : str
        How the fixed draws were made.
    draws : Tensor (M, noise_dim)
        The fixed draws of the final fit (for :func:`linear_response_covariance`).
    notes : tuple of str
        Plain-words remarks (non-convergence, the draw cap hit, the draw scheme used).
    trace : tuple of float
        The fixed-draw ELBO after each optimizer iteration, over all fits (``num_iters``
        values; the draws change, and the objective with them, where ``M`` grew).
    budget_exhausted : bool
        Whether ``max_total_iters`` ran out before the optimizer converged.
    """

    family: str
    params: Gaussian
    theta: torch.Tensor
    elbo: float
    elbo_fresh: float
    elbo_fresh_se: float
    num_fresh: int
    num_draws: int
    num_iters: int
    num_evals: int
    num_points: int
    grad_norm: float
    converged: bool
    check_passed: bool
    draws_history: tuple
    wall_time: float
    optimizer: str
    notes: tuple[str, ...]
    rank: int = 0
    draw_scheme: str = "moment_matched"
    draws: torch.Tensor | None = dataclasses.field(default=None, repr=False)
    trace: tuple = dataclasses.field(default=(), repr=False)
    budget_exhausted: bool = False

    @property
    def ok(self) -> bool:
        """Converged and the fresh-draw check passed."""
        return self.converged and self.check_passed

    def __repr__(self) -> str:  # short: the fields hold tensors (params, theta, draws)
        return (
            f"DadviOutcome(family={self.family!r}, elbo={self.elbo:.4f}, fresh="
            f"{self.elbo_fresh:.4f} ± {self.elbo_fresh_se:.2g}, M={self.num_draws}, "
            f"num_iters={self.num_iters}, converged={self.converged}, "
            f"check_passed={self.check_passed})"
        )


def _init_theta(fam, dim, init_loc, init_scale, generator, work, device) -> torch.Tensor:
    rank = fam.rank
    loc = (
        torch.zeros(dim, dtype=work, device=device)
        if init_loc is None
        else init_loc.to(device, work).reshape(dim)
    )
    log_s = torch.full((dim,), math.log(init_scale), dtype=work, device=device)
    parts = [loc, log_s]
    if fam.name == "fullrank":
        parts.append(torch.zeros(dim * (dim - 1) // 2, dtype=work, device=device))
    elif fam.name == "lowrank":
        # W = 0 is a stationary point of the ELBO in W: start off it, small and seeded
        w = torch.randn(dim, rank, generator=generator, dtype=torch.float64).to(device, work)
        parts.append((0.1 * w / math.sqrt(max(rank, 1))).reshape(-1))
    return torch.cat(parts)


def fit_dadvi(
    log_density: LogDensity,
    dim: int,
    family: str | FamilyMath = "meanfield",
    *,
    rank: int | None = None,
    num_draws: int | None = None,
    max_draws: int = 1024,
    tol: float | None = None,
    max_iters: int = 2000,
    max_total_iters: int | None = None,
    check_tol: float = 0.05,
    num_fresh: int = 2000,
    max_fresh: int = 16000,
    draws: str = "moment_matched",
    optimizer: str = "lbfgs",
    history: int = 20,
    init: torch.Tensor | Gaussian | None = None,
    init_scale: float = 0.1,
    seed: int = 0,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float64,
    work_dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
    progress=None,
) -> DadviOutcome:
    r"""Fit a Gaussian family by DADVI.

    Parameters
    ----------
    log_density : callable
        ``u (P, D) -> log p(u) (P,)``, the log density of the unconstrained latents
        (Jacobians included), differentiable with torch autograd.
    dim : int
        ``D``.
    family : {"meanfield", "fullrank", "lowrank"} or a family math object
        By name, or a :class:`~pyrovi.families.MeanField`, :class:`~pyrovi.families.FullRank`
        or :class:`~pyrovi.families.LowRank` (which carries its rank).
    rank : int, optional
        The lowrank family's rank (default ``max(1, round(sqrt(D)))``, as Pyro).
    num_draws : int, optional
        Initial ``M`` (even; rounded up).  Default ``2 * noise_dim`` (at least 32), the
        fewest draws that can be whitened, capped at 256 for meanfield and lowrank.
        ``fullrank`` needs ``M / 2 >= noise_dim``, else the draws span a subspace and the
        objective is unbounded (q collapses off it): smaller values are raised, with a
        note.
    max_draws : int
        Cap on ``M`` for the fresh-draw check's refits.
    tol : float, optional
        Stop when ``max |grad|`` of the objective is below ``tol`` (default ``1e-6`` in
        float64, ``1e-3`` in float32 log densities).  For L-BFGS the gradient is taken in
        coordinates whitened by the fitted q (``loc = loc* + A* a``, ``A = A* B``): nats per
        posterior standard deviation, the same whatever the latents' scales.  Where the
        optimum is only approached in a limit (lowrank: a scale -> 0), the fit stops when
        the objective changes by < 1e-9 relative over 20 iterations, with a note.
    max_iters : int
        Optimizer iterations per fit.
    max_total_iters : int, optional
        Optimizer iterations over all fits (all values of ``M``); when they run out the fit
        stops where it is (``budget_exhausted``, not converged, with a note).
    check_tol : float
        Nats: the fixed- and fresh-draw ELBO must agree within ``max(check_tol, 3 SE)``.
    num_fresh, max_fresh : int
        Independent draws for the check: ``num_fresh`` first, doubled while the check is
        inconclusive (the gap exceeds ``check_tol`` but not ``3 SE``), up to ``max_fresh``;
        ``num_fresh=0`` skips the check (``check_passed`` is then False, with a note).
    draws : {"moment_matched", "antithetic", "iid"}
        How the fixed draws are made (see the module docstring).
    optimizer : {"lbfgs", "newton"}
        L-BFGS (strong Wolfe; first in ``theta``, then in coordinates whitened by the
        current q), or trust-region Newton with the exact dense Hessian (measured slower
        in wall time on D=10 problems: the Hessian costs more than L-BFGS's extra
        iterations).
    init : Tensor (D,) or Gaussian, optional
        Initial ``loc`` (scales then ``init_scale``), or a whole initial q (warm start).
    seed, generator
        The draws' random stream (``generator`` wins when given).
    dtype : torch.dtype
        dtype in which ``log_density`` is called.
    work_dtype : torch.dtype
        dtype of ``theta`` and of the optimizer.
    device : torch.device, optional
        Where ``theta`` and the draws live (default: ``init``'s device, else the CPU); the
        draws come from a CPU generator, so a seed gives the same draws everywhere.
    progress : pyrovi._progress.Progress, optional
        Told of every L-BFGS iteration (``progress.lbfgs(elbo)``) and fresh-draw check
        (``progress.check(...)``); it reads nothing that is not on the host already.

    Returns
    -------
    DadviOutcome

    Raises
    ------
    ValueError
        An unknown family, optimizer or draw scheme; or an objective that is not finite at
        the initial q.
    """
    if isinstance(family, str) and family == "lowrank":
        rank = int(rank) if rank is not None else max(1, round(math.sqrt(dim)))
    fam = family_math(family, rank or 0)
    rank = fam.rank
    family = fam.name
    budget = math.inf if max_total_iters is None else int(max_total_iters)
    if optimizer not in ("lbfgs", "newton"):
        raise ValueError(f"unknown optimizer {optimizer!r}")
    if tol is None:
        tol = 1e-6 if dtype == torch.float64 else 1e-3
    n_noise = fam.noise_dim(dim)
    notes: list[str] = []
    if num_draws is None:
        num_draws = max(32, 2 * n_noise)
        if family != "fullrank":
            num_draws = min(num_draws, 256)
    elif family == "fullrank" and draws != "iid" and num_draws < 2 * n_noise:
        notes.append(
            f"num_draws raised from {num_draws} to {2 * n_noise}: fullrank needs M/2 >= "
            f"D = {n_noise} draw pairs, else the fixed-draw objective is unbounded"
        )
        num_draws = 2 * n_noise
    num_draws = max(2, int(num_draws) + int(num_draws) % 2)
    max_draws = max(num_draws, int(max_draws))
    gen = generator if generator is not None else torch.Generator().manual_seed(seed)
    fresh_gen = torch.Generator().manual_seed(int(torch.randint(2**62, (1,), generator=gen)))
    start = time.perf_counter()
    counter = _Counter(log_density)

    if device is None:
        device = init.loc.device if isinstance(init, QParams) else (
            init.device if isinstance(init, torch.Tensor) else torch.device("cpu")
        )
    if isinstance(init, QParams):
        theta = pack(
            fam, QParams(*(None if t is None else t.to(device, work_dtype) for t in init))
        )
    else:
        theta = _init_theta(fam, dim, init, init_scale, gen, work_dtype, device)

    raw = _raw_normals(_draw_count(num_draws, draws), n_noise, gen, work_dtype, device)
    m = num_draws
    history_rows = []
    total_iters = 0
    trace: list[float] = []
    exhausted = False
    while True:
        eps = fixed_draws(raw, draws)
        f = _neg_objective(fam, counter, eps, dim, dtype)
        iters = int(min(max_iters, budget - total_iters))
        if optimizer == "lbfgs":
            run = _lbfgs_rounds(fam, counter, eps, dim, dtype, theta, tol, iters, history,
                                on_iter=None if progress is None else progress.lbfgs)
        else:
            run = _newton(f, theta, tol, iters)
        if not math.isfinite(run.value) and run.iters == 0:
            raise ValueError(
                "the fixed-draw ELBO is not finite at the initial q (the log density is -inf, "
                "nan or has no finite gradient at some draws); start elsewhere (init, "
                "init_scale)"
            )
        total_iters += run.iters
        trace += run.trace
        theta = run.theta
        if run.converged and run.message:
            notes.append(run.message)
        q = unpack(fam, theta, dim)
        elbo = -run.value
        if not run.converged and total_iters >= budget:
            exhausted = True
        if num_fresh > 0:
            fresh, se, passed, allowed, n_fresh = _check(
                counter, fam, q, elbo, num_fresh, max_fresh, check_tol, fresh_gen, dtype
            )
        else:
            fresh, se, passed, allowed, n_fresh = math.nan, math.nan, False, math.nan, 0
        if progress is not None and num_fresh > 0:
            progress.check(m, elbo, fresh, se, passed, n_fresh)
        history_rows.append((m, elbo, fresh, se))
        if passed or num_fresh <= 0 or m >= max_draws or total_iters >= budget:
            break
        m = min(2 * m, max_draws + max_draws % 2)
        more = _draw_count(m, draws) - raw.shape[0]
        raw = torch.cat([raw, _raw_normals(more, n_noise, gen, work_dtype, device)])

    if draws == "moment_matched" and _draw_count(m, draws) < n_noise:
        notes.append(
            f"M/2 = {m // 2} < noise dimension {n_noise}: draws antithetic, not whitened"
        )
    if exhausted:
        notes.append(
            f"stopped after max_total_iters = {max_total_iters} optimizer iterations before "
            "converging"
        )
    elif not run.converged:
        notes.append(run.message)
    notes = list(dict.fromkeys(notes))
    if num_fresh <= 0:
        notes.append("the fresh-draw check was skipped (num_fresh=0)")
    elif not passed:
        notes.append(
            f"fresh-draw check failed at the cap M = {m}: fixed-draw ELBO {elbo:.4f} vs "
            f"fresh {fresh:.4f} +- {se:.4f} (allowed {allowed:.3g} nats); the fixed draws "
            "still overfit, raise max_draws"
        )
    elif len(history_rows) > 1:
        notes.append(
            "fresh-draw check grew M " + " -> ".join(str(r[0]) for r in history_rows)
        )
    return DadviOutcome(
        family=family,
        params=q,
        theta=theta,
        elbo=elbo,
        elbo_fresh=fresh,
        elbo_fresh_se=se,
        num_fresh=n_fresh,
        num_draws=m,
        num_iters=total_iters,
        num_evals=counter.calls,
        num_points=counter.points,
        grad_norm=run.grad_norm,
        converged=run.converged,
        check_passed=bool(passed),
        draws_history=tuple(history_rows),
        wall_time=time.perf_counter() - start,
        optimizer=optimizer,
        notes=tuple(n for n in notes if n),
        rank=rank,
        draw_scheme=draws,
        draws=eps,
        trace=tuple(trace),
        budget_exhausted=exhausted,
    )


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
    fam = family_math(outcome.family, outcome.rank)
    dim = outcome.params.loc.shape[-1]
    if eps is None:
        eps = outcome.draws
    f = _neg_objective(fam, log_density, eps, dim, dtype)
    h = _hessian(f, outcome.theta)
    h = 0.5 * (h + h.T)
    inv = torch.linalg.inv(h)
    cov = inv[:dim, :dim]
    return 0.5 * (cov + cov.T)


# ----------------------------------------------------------------------------- Pyro glue


def autoguide_values(
    family: str | FamilyMath, q: QParams, layout=None
) -> dict[str, torch.Tensor]:
    """q as the autoguide's constrained parameter values, by attribute path.

    ``meanfield`` (AutoNormal): ``locs.<site>`` and ``scales.<site>`` shaped by ``layout``
    (a :class:`pyrovi.fast.potential.FlatLayout`; without it ``locs`` and ``scales``, flat).
    ``fullrank`` (AutoMultivariateNormal): ``loc``, ``scale``, ``scale_tril``.
    ``lowrank`` (AutoLowRankMultivariateNormal): ``loc``, ``scale``, ``cov_factor``.
    :func:`write_autoguide` writes them into a guide.
    """
    family = family_math(family, 0 if q.factor is None else q.factor.shape[-1]).name
    if family == "meanfield":
        if layout is None:
            return {"locs": q.loc, "scales": q.scale}
        out = {f"locs.{k}": v for k, v in layout.unpack(q.loc).items()}
        out.update({f"scales.{k}": v for k, v in layout.unpack(q.scale).items()})
        return out
    key = "scale_tril" if family == "fullrank" else "cov_factor"
    return {"loc": q.loc, "scale": q.scale, key: q.factor}


@torch.no_grad()
def write_autoguide(guide, family: str | FamilyMath, q: QParams, layout=None) -> None:
    """Copy q into an autoguide's parameters in the active Pyro parameter store, in place.

    ``guide`` is an ``AutoNormal`` (meanfield; needs ``layout``),
    ``AutoMultivariateNormal`` (fullrank) or ``AutoLowRankMultivariateNormal`` (lowrank,
    of q's rank) whose parameters exist (call it once first).  Each value is mapped to the
    unconstrained tensor behind the attribute (``transform_to(constraint).inv``) and copied
    into it, so the store, the guide module and any optimizer holding the tensor all see it.
    """
    import operator

    from torch.distributions import constraints, transform_to

    for path, value in autoguide_values(family, q, layout).items():
        current = operator.attrgetter(path)(guide)
        unconstrained = getattr(current, "unconstrained", None)
        if unconstrained is None:
            raise ValueError(f"{path!r} of {type(guide).__name__} is not a Pyro parameter")
        leaf = unconstrained()
        name = path.split(".")[-1]
        owner = operator.attrgetter(path.rsplit(".", 1)[0])(guide) if "." in path else guide
        pyro_params = getattr(owner, "_pyro_params", {})
        constraint = pyro_params[name][0] if name in pyro_params else constraints.real
        leaf.copy_(transform_to(constraint).inv(value.to(leaf.dtype)).reshape(leaf.shape))


def result_log_density(
    model, args, kwargs, prototype_trace, *, max_plate_nesting: int, dtype=None
) -> LogDensity:
    """The batched flat log density ``u (P, D) -> (P,)`` of a Pyro model in the layout of an
    autoguide's ``prototype_trace`` (Jacobians included), as the compiled path traces it;
    inputs are cast to the model's dtype, outputs returned in ``dtype`` (default: the
    model's)."""
    from pyrovi.fast.potential import build_potential, layout_from_trace, trace_log_density

    layout = layout_from_trace(prototype_trace)
    potential = build_potential(model, tuple(args), dict(kwargs or {}), layout, max_plate_nesting)
    site = next(iter(prototype_trace.iter_stochastic_nodes()))[1]
    model_dtype = site["value"].dtype
    u0 = torch.zeros(layout.dim, dtype=model_dtype, device=site["value"].device)
    batched = torch.vmap(trace_log_density(potential, u0, jacobian=True))
    out_dtype = dtype or model_dtype

    def log_density(u: torch.Tensor) -> torch.Tensor:
        return batched(u.to(model_dtype)).to(out_dtype)

    return log_density


def model_log_density(model, args=(), kwargs=None, *, max_plate_nesting: int = 1):
    """The batched flat log density of a Pyro model and its layout, ``(fn, layout)``.

    ``fn = torch.vmap(graph)`` over the graph of
    :func:`pyrovi.fast.potential.trace_log_density` (Jacobians included), in the layout of
    the model's autoguides.  A convenience for tests and benchmarks; ``pyrovi.VI`` builds
    the same graph in its compiled path.
    """
    import pyro
    from pyro.infer import autoguide

    from pyrovi.fast.potential import layout_from_trace

    kwargs = dict(kwargs or {})
    guide = autoguide.AutoMultivariateNormal(model)
    with pyro.get_param_store().scope():
        guide(*args, **kwargs)
    layout = layout_from_trace(guide.prototype_trace)
    fn = result_log_density(
        model, args, kwargs, guide.prototype_trace, max_plate_nesting=max_plate_nesting
    )
    return fn, layout
