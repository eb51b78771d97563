r"""Deterministic ADVI (DADVI) for the Gaussian families, as pure functions.

DADVI (Giordano, Ingram & Broderick, JMLR 2024) fixes ``M`` standard-normal draws
:math:`\epsilon_1, \dots, \epsilon_M` once and maximizes the sample-average ELBO

.. math::

    \hat L(\theta) = \frac1M \sum_m \log p\big(u(\theta, \epsilon_m)\big) + H[q_\theta],

a deterministic function of the variational parameters :math:`\theta`, with a quasi-Newton
method (L-BFGS with a strong-Wolfe line search) to a gradient-norm tolerance.  The optimum
is that of a fixed objective, so convergence is well defined and the fit is reproducible
to the last bit for a given seed.

Four things are added to the paper's method:

* **Moment-matched draws.**  The draws come in antithetic pairs :math:`(z, -z)` (exact
  sample mean 0) and, when ``M / 2 >= noise_dim``, are whitened so that their sample
  covariance is exactly the identity.  The objective of a Gaussian target then depends on
  the draws only through those two moments, so on a linear-Gaussian model DADVI returns the
  exact optimum of the family for any such ``M`` (and linear response the exact posterior
  covariance); on other targets it is an ordinary variance reduction.
* **A fresh-draw check.**  After convergence the ELBO at the optimum is estimated on
  ``num_fresh`` independent draws in antithetic pairs (grown up to ``max_fresh`` until
  settled), as the mean of ``log p - log q`` less a quadratic control variate whose
  expectation is exact (its coefficients from the fixed draws:
  :func:`~pyrovi.fast.draws.control_variate`).  When
  it differs from the fixed-draw objective by more than ``max(check_tol, 3 SE)`` nats,
  the fixed draws have overfit: ``M`` grows by the factor
  (2 to 16, a quarter over the projection) projected to bring the gap under ``check_tol``
  (the optimism of the fixed draws falls about as ``1 / M``; the new set contains the old
  draws) and the fit is warm-started, up to ``max_draws``.
  The outcome says whether the check passed and, if not, that the cap was hit.
* **Linear response** (:func:`linear_response_covariance`): the covariance of the
  posterior means under a linear perturbation of the log density, from the Hessian of the
  fixed-draw objective; it corrects mean-field's underestimated variances and equals the
  exact posterior covariance on a linear-Gaussian model.
* **A lowrank start from a fullrank fit** (``start``): the lowrank ELBO has local optima
  (which K coordinates the factor covers); up to 64 dimensions the basin is chosen on a
  fullrank fit, by the rank-K q nearest to it in KL, and the lowrank fit starts there.

Layout
------
This module holds the algorithm only: fixed draws, L-BFGS (plain, then in coordinates
whitened by the current q), the fresh-draw check, the growth of M, and what to do when the
optimizer stops short.  Around it:

* the family's parameterization -- how q lies in the flat vector ``theta`` that is
  optimized, its initial value, coordinates relative to a reference q, draws from given
  noise, the entropy and ``log q`` -- is the family's own math object in
  :mod:`pyrovi.families` (:class:`~pyrovi.families.MeanField`,
  :class:`~pyrovi.families.FullRank`, :class:`~pyrovi.families.LowRank`; their
  ``*_coords`` methods and :class:`~pyrovi.families.Coords`), the same objects whose draws
  and entropy the compiled SGD path uses;
* the draws and the fresh-draw check are :mod:`pyrovi.fast.draws`; the optimizers
  :mod:`pyrovi.fast.lbfgs`; linear response :mod:`pyrovi.fast.linear_response`; the
  lowrank start (the rank-K q nearest to a fullrank fit) :mod:`pyrovi.fast.lowrank_start`; the
  model's log density and the autoguide's values :mod:`pyrovi.fast.pyro_glue` (all
  re-exported here).

==============  =========================================  ===================================
family          ``theta``                                  q(u) = N(loc, Sigma)
==============  =========================================  ===================================
``meanfield``   ``loc`` (D), ``log scale`` (D)             Sigma = diag(scale^2)
``fullrank``    ``loc``, ``log diag C``, strict lower C    Sigma = C C^T, C lower triangular
``lowrank``     ``loc``, ``log scale``, ``W`` (D x K)      Sigma = diag(s) (W W^T + I) diag(s)
==============  =========================================  ===================================

The fit is reported as a :class:`~pyrovi.families.QParams` (also exported here as
:data:`Gaussian`) in Pyro's autoguide parameterization (``scale``, ``factor``), which
:func:`autoguide_values` maps to the autoguides' parameter names.

Everything takes and returns values; the only input from a model is ``log_density``, any
callable mapping a batch of unconstrained vectors ``(P, D)`` to log densities ``(P,)``
(for a traced Pyro model: ``torch.vmap(graph)``, see :func:`model_log_density`).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable

import torch

from pyrovi.families import FamilyMath, QParams, gaussian_math, gaussian_math_of_q
from pyrovi.fast.draws import (
    check,
    control_variate,
    draw_count,
    elbo_fresh,
    fixed_draws,
    raw_normals,
)
from pyrovi.fast.lbfgs import Run, lbfgs, newton
from pyrovi.fast.linear_response import linear_response_covariance
from pyrovi.fast.lowrank_start import nearest_lowrank
from pyrovi.fast.objective import Counter, neg_objective, neg_objective_relative
from pyrovi.fast.pyro_glue import (
    autoguide_values,
    model_log_density,
    result_log_density,
    write_autoguide,
)

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

#: The default ``gain_tol`` of :func:`fit_dadvi` as a fraction of ``check_tol`` (0.00025
#: nats at the default 0.05): L-BFGS stops when 10 iterations gain less, or when its line
#: search stalls where the quasi-Newton model predicts less.  The fresh-draw check judges
#: the answer to ``check_tol``; a float32 log density's rounding hides gains of 1e-5 nats.
#: Lowrank fits crawl towards a limit (a scale -> 0) for hundreds of iterations: at
#: 0.00025 rather than 0.0001 nats, breast cancer (seed 0, M = 592) took 530 iterations
#: instead of 1,051 and radon 423 instead of 571, their ELBOs on 40,000 common fresh draws
#: within 0.002 nats of the longer runs; the diabetes crawl stops 0.00205 nats short of a
#: run to the limit (187 iterations against 966), now that a converged round ends the
#: rounds.  An exactly Gaussian lowrank target stops within ``gain_tol`` of its
#: optimum (its ELBO still exact: log Z - ELBO = KL(q || p)); ``gain_tol=0`` reaches the
#: exact optimum.
GAIN_FRACTION = 0.005

#: ``start="auto"`` starts a lowrank fit from a fullrank fit up to this many dimensions
#: (:func:`fit_dadvi`'s ``start``).  Measured over seeds 0-3 (fit time without tracing;
#: ELBO on 40,000 common fresh draws, gaps to the best optimum found): diabetes (D = 10)
#: 0.13-0.20 s, every fit at the best optimum, against 0.37-0.57 s from the random start
#: and three of four fits 0.047-0.065 nats short; breast cancer (D = 31) 0.5-2.4 s and gaps
#: 0.002-0.039, against 0.8-1.4 s and 0.036-0.133; eight schools (D = 10) the same within
#: the check's resolution; radon (D = 104) no better and 5x slower (the fullrank fit has
#: D^2 / 2 coordinates, and the lowrank fit from its sharp start grew M to 3,328 draws).
LOWRANK_START_MAX_DIM = 64

LogDensity = Callable[[torch.Tensor], torch.Tensor]

#: A fitted Gaussian in Pyro's autoguide parameterization: the family records' own
#: :class:`~pyrovi.families.QParams` (``loc`` (D,), ``scale`` (D,), ``factor``: the unit
#: lower-triangular ``L`` for fullrank, ``W`` (D, K) for lowrank, None for meanfield).
Gaussian = QParams


def family_math(family: str | FamilyMath, rank: int = 0) -> FamilyMath:
    """The :mod:`pyrovi.families` math object of a Gaussian family given by name (or the
    object itself); ``rank`` is the lowrank family's rank."""
    return gaussian_math(family, rank)


def num_params(family: str | FamilyMath, dim: int, rank: int = 0) -> int:
    """Length of ``theta``."""
    return family_math(family, rank).num_coords(dim)


def unpack(family: str | FamilyMath, theta: torch.Tensor, dim: int, rank: int = 0) -> QParams:
    """``theta`` -> :class:`QParams` (Pyro's parameterization)."""
    fam = family_math(family, rank)
    return fam.q_of_coords(fam.unpack_coords(theta, dim))


def pack(family: str | FamilyMath, q: QParams) -> torch.Tensor:
    """:class:`QParams` -> ``theta`` (the inverse of :func:`unpack`)."""
    fam = gaussian_math_of_q(family, q)
    return fam.pack_coords(fam.coords_of_q(q))


def _log_q(fam: FamilyMath, q: QParams, u: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """log q(u) of draws ``u = loc + A eps`` (P,): the family's :meth:`log_q`."""
    return fam.log_q(q, u, eps)


# ----------------------------------------------------------------------------- objective


def _lbfgs_rounds(fam, log_density, eps, dim, dtype, theta, tol, max_iters, history,
                  max_rounds=8, first_iters=25, on_iter=None, ftol=1e-7, gain_tol=0.0) -> Run:
    """L-BFGS in ``theta`` (at most ``first_iters`` iterations), then in coordinates
    whitened by the current q (the family's ``relative_coords``) until it converges: the
    gradient in the whitened coordinates below ``tol``, or the objective's change under
    ``ftol`` relative or ``gain_tol`` over 10 iterations.  Where the line search stalls
    short of both, the whitening is renewed at the point reached (up to ``max_rounds``);
    with ``gain_tol=0`` (a run to the exact optimum) it is also renewed after a round that
    stopped by the relative change, until a round gains nothing.

    ``tol`` refers to the whitened gradient (nats per posterior standard deviation, affine
    invariant).  The first round is in ``theta`` because whitening by a poor starting q
    (scales ``init_scale``) makes the first steps slower, not faster; a warm start (the q
    of the fit on fewer draws) is whitened at once (``first_iters=0``).  With
    ``gain_tol > 0`` a converged round ends the rounds: after one that stopped by the
    objective's change, a renewed whitening gained about 1e-4 nats in the 10 iterations its
    own window needs (breast-cancer and eight-schools lowrank), under the rule's gain.
    """
    iters, trace, before = 0, [], math.inf
    if first_iters > 0:
        f = neg_objective(fam, log_density, eps, dim, dtype)
        # handed over to the whitened rounds as soon as progress slows
        run = lbfgs(f, theta, tol, min(max_iters, first_iters), history, ftol=ftol,
                    ftol_window=10, on_iter=on_iter, gain_tol=gain_tol)
        iters, theta, trace, before = run.iters, run.theta, list(run.trace), run.value
        if not math.isfinite(run.value) or (run.converged and not run.message and iters == 0):
            return run
    for _ in range(max_rounds):
        ref = fam.unpack_coords(theta, dim)
        f = neg_objective_relative(fam, log_density, eps, dim, dtype, ref)
        z0 = torch.zeros(fam.num_coords(dim), dtype=theta.dtype, device=theta.device)
        run = lbfgs(f, z0, tol, max(max_iters - iters, 0), history, ftol=ftol, ftol_window=10,
                    on_iter=on_iter, gain_tol=gain_tol)
        iters += run.iters
        trace += run.trace
        theta = fam.pack_coords(fam.relative_coords(run.theta, ref, dim)).detach()
        if iters >= max_iters or not math.isfinite(run.value):
            break
        if run.converged and (not run.message or gain_tol > 0 or run.value >= before):
            break
        before = run.value
    return Run(theta, run.value, run.grad_norm, iters, run.converged, run.message, trace)


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
        ``max_fresh``; mean of log p - log q with a quadratic control variate), and its
        standard error.
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
        Whether fixed-draw and fresh-draw ELBO agreed (see ``check_tol``).
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
    start : str
        Where the fit started: ``"fullrank"`` (a lowrank fit from the q nearest to a
        fullrank fit, whose iterations, log densities, trace and time are included above;
        see :func:`fit_dadvi`'s ``start``) or ``"init"``.
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
    start: str = "init"

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


def _growth(elbo: float, fresh: float, check_tol: float) -> int:
    """The factor by which a failed check grows ``M``: a quarter more than the one projected
    to bring the fixed-draw optimism ``|elbo - fresh|`` under ``check_tol``, as the
    optimism falls about as ``1 / M`` (Giordano, Ingram & Broderick 2024), rounded up to a
    whole number from 2 to 16; 2 when the gap is not finite.  (Rounded up to a power of two
    instead, breast-cancer lowrank over four seeds took 26 s against 15 s.)"""
    gap = abs(elbo - fresh)
    if not math.isfinite(gap) or check_tol <= 0 or gap <= check_tol:
        return 2
    return int(min(16, max(2, math.ceil(1.25 * gap / check_tol))))


class _StartProgress:
    """The progress of a lowrank fit's fullrank start: its checks say whose they are."""

    def __init__(self, progress):
        self.progress = progress

    def lbfgs(self, elbo: float) -> None:
        self.progress.lbfgs(elbo)

    def check(self, *args) -> None:
        self.progress.check(*args, fit="the fullrank start")


def _fullrank_start(log_density, dim, rank, init, generator, progress, budget, settings):
    """``start="fullrank"``: a fullrank DADVI fit from ``init``'s loc, and the rank-``rank``
    q nearest to it (:func:`~pyrovi.fast.lowrank_start.nearest_lowrank`, its starts from
    ``generator``).  Returns ``(fullrank outcome or None, the lowrank fit's init, note)``;
    where the fullrank objective is not finite at the start, ``(None, init, why)``."""
    loc = init.loc if isinstance(init, QParams) else init
    if progress is not None:
        progress.say(f"lowrank start: a fullrank fit first, then the nearest rank-{rank} q")
    try:
        full = fit_dadvi(
            log_density, dim, "fullrank", init=loc, start="init", generator=generator,
            progress=None if progress is None else _StartProgress(progress),
            max_total_iters=None if math.isinf(budget) else budget,
            **settings,
        )
        cov_factor = full.params.scale[:, None] * full.params.factor
        q = nearest_lowrank(full.params.loc, cov_factor @ cov_factor.T, rank,
                            generator=generator)
    except (ValueError, torch.linalg.LinAlgError) as err:
        return None, init, f"lowrank started from init: the fullrank start failed ({err})"
    verdict = "passed" if full.check_passed else "not passed"
    return full, q, (
        f"lowrank started from the rank-{rank} q nearest in KL to a fullrank DADVI fit "
        f"(M = {full.num_draws}, {full.num_iters} iterations, ELBO {full.elbo:.4f}, "
        f"fresh-draw check {verdict})"
    )


def fit_dadvi(
    log_density: LogDensity,
    dim: int,
    family: str | FamilyMath = "meanfield",
    *,
    rank: int | None = None,
    num_draws: int | None = None,
    max_draws: int = 4096,
    tol: float | None = None,
    ftol: float = 1e-7,
    gain_tol: float | None = None,
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
    start: str = "auto",
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
        the objective changes by less than ``ftol`` relative over 10 iterations, with a
        note.
    ftol : float
        That relative change (default ``1e-7``; a reference run to the limit takes less).
    gain_tol : float, optional
        Nats: L-BFGS also stops when 10 iterations gain less than ``gain_tol``, or when its
        line search finds no decrease where the quasi-Newton model predicts a gain under
        ``gain_tol`` (the log density's rounding hides it, as in float32), each with a note.
        Default ``GAIN_FRACTION * check_tol`` (0.00025 nats); ``0`` for a reference run.
    max_iters : int
        Optimizer iterations per fit.
    max_total_iters : int, optional
        Optimizer iterations over all fits (all values of ``M``); when they run out the fit
        stops where it is (``budget_exhausted``, not converged, with a note).
    check_tol : float
        Nats: the fixed- and fresh-draw ELBO must agree within ``check_tol``, resolved to
        ``3 SE <= check_tol`` (at ``max_fresh`` draws: within ``max(check_tol, 3 SE)``).
    num_fresh, max_fresh : int
        Independent draws for the check: ``num_fresh`` first, grown to the count its
        standard error projects until the check is settled (see
        :func:`~pyrovi.fast.draws.check`), up to ``max_fresh``; ``num_fresh=0`` skips
        the check (``check_passed`` is then False, with a note).
    draws : {"moment_matched", "antithetic", "iid"}
        How the fixed draws are made (see the module docstring).
    optimizer : {"lbfgs", "newton"}
        L-BFGS (strong Wolfe; first in ``theta``, then in coordinates whitened by the
        current q), or trust-region Newton with the exact dense Hessian (measured slower
        in wall time on D=10 problems: the Hessian costs more than L-BFGS's extra
        iterations).
    init : Tensor (D,) or Gaussian, optional
        Initial ``loc`` (scales then ``init_scale``), or a whole initial q (warm start).
    start : {"auto", "init", "fullrank"}
        Where a lowrank fit starts.  ``"init"``: from ``init``.  ``"fullrank"``: a fullrank
        DADVI fit from ``init``'s ``loc`` first (same settings; its check at most 2,000
        fresh draws), then the rank-K q nearest to it in KL
        (:func:`~pyrovi.fast.lowrank_start.nearest_lowrank`, several random starts that
        cost no log density), fitted from there with at least the fullrank fit's ``M``:
        the lowrank ELBO's local optima are chosen on the fullrank q rather than by the
        random start.  Its iterations, log densities and time count in the outcome (and
        ``max_total_iters``), and a note says so; if its objective is not finite at the
        start, the lowrank fit starts from ``init``, with a note.  ``"auto"`` (default):
        ``"fullrank"`` for lowrank fits of ``D <= LOWRANK_START_MAX_DIM`` (64), else
        ``"init"``.  Other families ignore it.
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
    if gain_tol is None:
        gain_tol = GAIN_FRACTION * check_tol
    if optimizer not in ("lbfgs", "newton"):
        raise ValueError(f"unknown optimizer {optimizer!r}")
    if start not in ("auto", "init", "fullrank"):
        raise ValueError(f"start must be 'auto', 'init' or 'fullrank', got {start!r}")
    if start == "auto":
        start = "fullrank" if family == "lowrank" and dim <= LOWRANK_START_MAX_DIM else "init"
    if tol is None:
        tol = 1e-6 if dtype == torch.float64 else 1e-3
    n_noise = fam.noise_dim(dim)
    notes: list[str] = []
    explicit_draws = num_draws is not None
    if num_draws is None:
        num_draws = max(32, 2 * n_noise)
        if not fam.needs_spanning_draws:
            num_draws = min(num_draws, 256)
    elif fam.needs_spanning_draws and draws != "iid" and num_draws < 2 * n_noise:
        notes.append(
            f"num_draws raised from {num_draws} to {2 * n_noise}: {family} needs M/2 >= "
            f"D = {n_noise} draw pairs, else the fixed-draw objective is unbounded"
        )
        num_draws = 2 * n_noise
    num_draws = max(2, int(num_draws) + int(num_draws) % 2)
    max_draws = max(num_draws, int(max_draws))
    gen = generator if generator is not None else torch.Generator().manual_seed(seed)
    fresh_gen = torch.Generator().manual_seed(int(torch.randint(2**62, (1,), generator=gen)))
    began = time.perf_counter()
    counter = Counter(log_density)

    if device is None:
        device = init.loc.device if isinstance(init, QParams) else (
            init.device if isinstance(init, torch.Tensor) else torch.device("cpu")
        )
    prefit = None
    if family == "lowrank" and start == "fullrank":
        prefit, init, prefit_note = _fullrank_start(
            counter, dim, rank, init, gen, progress, budget, dict(
                max_draws=max_draws, tol=tol, ftol=ftol, gain_tol=gain_tol,
                max_iters=max_iters, check_tol=check_tol,
                num_fresh=min(num_fresh, 2000), max_fresh=max_fresh, draws=draws,
                history=history, init_scale=init_scale, dtype=dtype,
                work_dtype=work_dtype, device=device))
        notes.append(prefit_note)
        if prefit is not None and not explicit_draws:  # its M is even
            num_draws = max(num_draws, prefit.num_draws)
            max_draws = max(num_draws, max_draws)
    if isinstance(init, QParams):
        theta = pack(
            fam, QParams(*(None if t is None else t.to(device, work_dtype) for t in init))
        )
    else:
        theta = fam.init_coords(dim, init, init_scale, gen, work_dtype, device)

    raw = raw_normals(draw_count(num_draws, draws), n_noise, gen, work_dtype, device)
    m = num_draws
    history_rows = []
    total_iters = 0 if prefit is None else prefit.num_iters
    trace: list[float] = [] if prefit is None else list(prefit.trace)
    exhausted = False
    while True:
        eps = fixed_draws(raw, draws)
        f = neg_objective(fam, counter, eps, dim, dtype)
        iters = int(min(max_iters, budget - total_iters))
        if optimizer == "lbfgs":
            run = _lbfgs_rounds(fam, counter, eps, dim, dtype, theta, tol, iters, history,
                                on_iter=None if progress is None else progress.lbfgs,
                                ftol=ftol, gain_tol=gain_tol,
                                first_iters=0 if history_rows else 25)  # warm after M grew
        else:
            run = newton(f, theta, tol, iters)
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
            control = control_variate(counter, fam, q, eps, dtype)
            fresh, se, passed, allowed, n_fresh = check(
                counter, fam, q, elbo, num_fresh, max_fresh, check_tol, fresh_gen, dtype,
                control,
            )
        else:
            fresh, se, passed, allowed, n_fresh = math.nan, math.nan, False, math.nan, 0
        if progress is not None and num_fresh > 0:
            progress.check(m, elbo, fresh, se, passed, n_fresh)
        history_rows.append((m, elbo, fresh, se))
        if passed or num_fresh <= 0 or m >= max_draws or total_iters >= budget:
            break
        m = min(_growth(elbo, fresh, check_tol) * m, max_draws + max_draws % 2)
        more = draw_count(m, draws) - raw.shape[0]
        raw = torch.cat([raw, raw_normals(more, n_noise, gen, work_dtype, device)])

    if draws == "moment_matched" and draw_count(m, draws) < n_noise:
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
        wall_time=time.perf_counter() - began,
        optimizer=optimizer,
        notes=tuple(n for n in notes if n),
        rank=rank,
        draw_scheme=draws,
        draws=eps,
        trace=tuple(trace),
        budget_exhausted=exhausted,
        start="init" if prefit is None else "fullrank",
    )
