"""DADVI's draws: the fixed (antithetic, moment-matched) draws and the fresh-draw check.

:func:`fixed_draws` makes the fixed draws from raw standard normals; :func:`elbo_fresh`
estimates a fitted q's ELBO on independent draws (mean of ``log p - log q``), and
:func:`check` is the fresh-draw check that tells DADVI whether its fixed draws overfit.
The Gaussian math (draws from given noise, ``log q``) is the family's
(:mod:`pyrovi.families`).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from pyrovi.families import FamilyMath, QParams, gaussian_math_of_q

__all__ = ["fixed_draws", "elbo_fresh", "check", "raw_normals", "draw_count"]

LogDensity = Callable[[torch.Tensor], torch.Tensor]


def raw_normals(num: int, n: int, generator: torch.Generator, dtype, device=None) -> torch.Tensor:
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


def draw_count(num_draws: int, scheme: str) -> int:
    """Rows of raw normals behind ``num_draws`` fixed draws."""
    return num_draws if scheme == "iid" else num_draws // 2


def check(log_density, fam, q, elbo, num_fresh, max_fresh, check_tol, generator, dtype):
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
        eps = raw_normals(want - n, n_noise, generator, q.loc.dtype, q.loc.device)
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
            values.append(lp - fam.log_q(q, u, e).to(torch.float64))
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
    fam = gaussian_math_of_q(family, q)
    work = q.loc.dtype
    dtype = dtype or work
    if eps is None:
        gen = generator or torch.Generator().manual_seed(0)
        eps = raw_normals(num_draws, fam.noise_dim(q.loc.shape[-1]), gen, work, q.loc.device)
    lw = _log_ratios(log_density, fam, q, eps, chunk, dtype)
    n = lw.shape[0]
    if not torch.isfinite(lw).all():
        return float("-inf") if bool((lw == -math.inf).any()) else float("nan"), float("inf")
    return float(lw.mean()), float(lw.std() / math.sqrt(n)) if n > 1 else float("inf")
