r"""Annealed importance sampling (Neal, 2001) on the flat unconstrained potential of a Pyro
model, with HMC or MALA transitions.

The potential :math:`U(u) = -\log p(x, z(u)) - \log|\det J(u)|` comes from Pyro's HMC
machinery (:func:`pyro.infer.mcmc.util.initialize_model`: constraining transforms, their
Jacobians, enumerated discrete latents summed out) and is evaluated for all chains at once
with ``torch.func.vmap``.  Annealing runs from a Gaussian base :math:`q_0 = N(m, L L^\top)`
in the unconstrained space (matched to draws of a guide or of the prior) along the
geometric path :math:`\pi_\beta \propto q_0^{1-\beta} e^{-\beta U}`; the chains move in the
whitened coordinates :math:`v = L^{-1}(u - m)`, which preconditions the transitions with
the base covariance.  MALA is HMC with one leapfrog step.

One sampler serves both directions.  :func:`run_ais` runs forward AIS (the lower side,
:math:`\mathbb{E}[w] = p(x)`) with a step size adapted per run between temperatures.
:func:`bidirectional_ais` runs forward and reverse chains in one batch for bidirectional
Monte Carlo (:mod:`pyrovi.diagnostics.bracket`), with what a valid reverse bound needs: a
per-chain inverse temperature; a *fixed* step size per temperature (set by a short adaptive
pilot on a coarse schedule and interpolated in :math:`\beta`), so that the reverse chain
applies exactly the forward transitions in reverse order; and transitions at
:math:`\beta = 1` that spread copies of a single exact posterior draw.  Both use the same
HMC transition (:func:`hmc_transition`) in the whitened coordinates (:class:`_Whitened`).

Only the sampler lives here (tensors in, tensors out); :mod:`pyrovi.diagnostics.ais_evidence`
builds the potential and the base from a model, :mod:`pyrovi.diagnostics.bracket` the
bracket.

References
----------
Neal (2001), "Annealed importance sampling", Statistics and Computing 11.
Grosse, Ghahramani and Adams (2015), "Sandwiching the marginal likelihood using
bidirectional Monte Carlo", arXiv:1511.02543.
Grosse, Maddison and Salakhutdinov (2013), "Annealing between distributions by averaging
moments", NeurIPS (the sigmoidal schedule).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import numpy as np
import torch

from pyrovi.errors import ModelError

__all__ = ["AIS", "AISRun", "BidirectionalRun", "sigmoid_schedule", "hmc_transition",
           "run_ais", "bidirectional_ais"]

#: log p(x, z(u)) + log|J| and its gradient for a batch of flat points ``(M, d)``.
LogDensity = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]

#: Temperatures of the adaptive pilot that sets the fixed step-size schedule.
PILOT_TEMPERATURES = 25
#: Chains of that pilot.
PILOT_CHAINS = 16


@dataclasses.dataclass(frozen=True)
class AIS:
    """Options of annealed importance sampling (pass as ``method=AIS(...)``).

    Attributes
    ----------
    num_temperatures : int
        Inverse temperatures :math:`0 = \\beta_0 < \\dots < \\beta_T = 1` (default 200),
        one transition each.
    num_runs : int
        Independent runs (default 8); the standard error is the spread of their estimates.
        ``num_particles`` chains are split evenly over the runs.
    transition : {"hmc", "mala"}
        HMC with ``num_leapfrog`` steps (default) or MALA (one gradient per transition).
    num_leapfrog : int
        Leapfrog steps per HMC transition (default 5).
    step_size : float, optional
        Initial leapfrog step in whitened coordinates (default :math:`0.5 d^{-1/4}`);
        adapted per run toward ``target_accept`` between temperatures.
    target_accept : float, optional
        Target acceptance rate (default 0.65 for HMC, 0.57 for MALA).
    base_draws : int
        Draws used to match the Gaussian base to the guide or the prior (default 2,000).
    """

    num_temperatures: int = 200
    num_runs: int = 8
    transition: str = "hmc"
    num_leapfrog: int = 5
    step_size: float | None = None
    target_accept: float | None = None
    base_draws: int = 2000

    def __post_init__(self):
        for name in ("num_temperatures", "num_runs", "num_leapfrog", "base_draws"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"AIS {name} must be a positive int, got {value!r}")
        if self.num_runs < 2:
            raise ValueError(
                f"AIS num_runs must be >= 2 for a standard error, got {self.num_runs}"
            )
        if self.transition not in ("hmc", "mala"):
            raise ValueError(
                f"AIS transition must be 'hmc' or 'mala', got {self.transition!r}"
            )
        if self.step_size is not None and not self.step_size > 0:
            raise ValueError(f"AIS step_size must be > 0, got {self.step_size!r}")
        if self.target_accept is not None and not 0 < self.target_accept < 1:
            raise ValueError(f"AIS target_accept must be in (0, 1), got {self.target_accept!r}")


@dataclasses.dataclass(frozen=True)
class AISRun:
    """What one batch of AIS chains produced.

    Attributes
    ----------
    log_w : torch.Tensor
        ``(num_runs, chains_per_run)`` float64 AIS log-weights; each run's
        :math:`\\log \\frac1C \\sum_c w_c` is an unbiased-in-:math:`Z` estimate of
        :math:`\\log p(x)`.
    acceptance : float
        Mean acceptance rate over chains and temperatures.
    step_size : torch.Tensor
        ``(num_runs,)`` final step sizes.
    """

    log_w: torch.Tensor
    acceptance: float
    step_size: torch.Tensor


@dataclasses.dataclass(frozen=True)
class BidirectionalRun:
    r"""What one batch of forward and reverse chains produced.

    Attributes
    ----------
    log_w : torch.Tensor
        ``(num_runs, chains_per_run)`` forward AIS log-weights (unbiased for :math:`p(x)`).
    log_w_rev : torch.Tensor
        ``(num_runs, chains_per_run)`` reverse AIS log-weights (unbiased for
        :math:`1/p(x)`): :math:`-\sum_t (\beta_t - \beta_{t-1}) [\log \tilde p - \log q_0]`
        along the reverse path.
    acceptance : float
        Mean acceptance rate over chains and transitions.
    step_sizes : torch.Tensor
        ``(num_temperatures + 1,)`` the fixed step size used at each temperature.
    """

    log_w: torch.Tensor
    log_w_rev: torch.Tensor
    acceptance: float
    step_sizes: torch.Tensor


def sigmoid_schedule(num_temperatures: int, delta: float = 4.0) -> torch.Tensor:
    r"""Inverse temperatures :math:`\beta_0 = 0, \dots, \beta_T = 1` on a sigmoid
    (Grosse et al., 2013): dense near both ends, where the intermediate targets change
    fastest."""
    t = torch.linspace(-delta, delta, num_temperatures + 1, dtype=torch.float64)
    s = torch.sigmoid(t)
    return (s - s[0]) / (s[-1] - s[0])


def _std_normal_logp(v: torch.Tensor) -> torch.Tensor:
    return -0.5 * v.square().sum(-1) - 0.5 * v.shape[-1] * math.log(2 * math.pi)


class _Whitened:
    """The log density in the coordinates ``v = L^{-1}(u - m)`` of the base."""

    def __init__(self, log_density: LogDensity, mean: torch.Tensor, scale_tril: torch.Tensor):
        self.log_density, self.mean, self.L = log_density, mean, scale_tril
        self.log_det_L = scale_tril.diagonal().abs().log().sum()
        self.d = mean.numel()

    def __call__(self, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """log p~(m + L v) (``(M,)``) and its gradient in ``v`` (``(M, d)``), non-finite
        values mapped to -inf (a rejected move)."""
        logp, grad_u = self.log_density(self.mean + v @ self.L.T)
        bad = ~torch.isfinite(logp)
        if bool(bad.any()):
            logp = torch.where(bad, torch.full_like(logp, -math.inf), logp)
            grad_u = torch.where(bad.unsqueeze(-1), torch.zeros_like(grad_u), grad_u)
        grad_u = torch.nan_to_num(grad_u, nan=0.0, posinf=0.0, neginf=0.0)
        return logp, grad_u @ self.L

    def log_ratio(self, v: torch.Tensor, logp: torch.Tensor) -> torch.Tensor:
        """log p~(u) - log q0(u): the annealing increment per unit of beta (float64)."""
        return (logp - (_std_normal_logp(v) - self.log_det_L)).to(torch.float64)


def hmc_transition(target: _Whitened, v, logp, grad, beta, eps, n_leap):
    """One HMC transition per chain leaving pi_beta invariant (beta, eps: ``(M,)``).

    Returns the new state and the acceptance probabilities.  HMC with a fresh momentum and a
    Metropolis correction is reversible with respect to pi_beta, so the same kernel serves
    forward and reverse chains.
    """
    b = beta.unsqueeze(-1)
    step = eps.unsqueeze(-1)

    def log_pi(v_, logp_):
        out = (1 - beta) * _std_normal_logp(v_) + beta * logp_
        return torch.where(torch.isfinite(out), out, torch.full_like(out, -math.inf))

    def grad_pi(v_, grad_):
        return -(1 - b) * v_ + b * grad_

    p = torch.randn_like(v)
    h0 = -log_pi(v, logp) + 0.5 * p.square().sum(-1)
    v_new, p_new = v, p + 0.5 * step * grad_pi(v, grad)
    for i in range(n_leap):
        v_new = v_new + step * p_new
        logp_new, grad_new = target(v_new)
        scale = 0.5 if i == n_leap - 1 else 1.0
        p_new = p_new + scale * step * grad_pi(v_new, grad_new)
    h1 = -log_pi(v_new, logp_new) + 0.5 * p_new.square().sum(-1)
    log_accept = torch.nan_to_num(h0 - h1, nan=-math.inf).clamp(max=0.0)
    accept = torch.rand_like(log_accept).log() < log_accept
    v = torch.where(accept.unsqueeze(-1), v_new, v)
    logp = torch.where(accept, logp_new, logp)
    grad = torch.where(accept.unsqueeze(-1), grad_new, grad)
    return v, logp, grad, log_accept.exp()


def _defaults(options: AIS, d: int) -> tuple[int, float, float]:
    mala = options.transition == "mala"
    n_leap = 1 if mala else options.num_leapfrog
    target = options.target_accept or (0.57 if mala else 0.65)
    eps0 = options.step_size or 0.5 * d ** -0.25
    return n_leap, target, float(eps0)


def _pilot_step_sizes(target: _Whitened, betas: torch.Tensor, options: AIS) -> torch.Tensor:
    """A fixed step size per temperature of ``betas``: adapt toward the target acceptance on
    a short forward run over a coarse schedule, then interpolate log eps in beta."""
    n_leap, accept_target, eps0 = _defaults(options, target.d)
    dtype = target.mean.dtype
    coarse = sigmoid_schedule(min(PILOT_TEMPERATURES, len(betas) - 1))
    v = torch.randn(PILOT_CHAINS, target.d, dtype=dtype)
    logp, grad = target(v)
    eps = eps0
    log_eps = [math.log(eps)]
    for t in range(1, len(coarse)):
        beta = torch.full((PILOT_CHAINS,), float(coarse[t]), dtype=dtype)
        for _ in range(2):  # two transitions per level: one to move, one to tune
            v, logp, grad, rate = hmc_transition(target, v, logp, grad, beta,
                                       torch.full_like(beta, eps), n_leap)
            eps = eps * math.exp(max(-0.5, min(0.5, float(rate.mean()) - accept_target)))
        log_eps.append(math.log(eps))
    log_eps[0] = log_eps[1]  # beta = 0 is the base itself: use the first tuned value
    fine = np.interp(betas.numpy(), coarse.numpy(), np.asarray(log_eps))
    return torch.as_tensor(np.exp(fine), dtype=dtype)


def bidirectional_ais(
    log_density: LogDensity,
    base_mean: torch.Tensor,
    base_scale_tril: torch.Tensor,
    *,
    options: AIS,
    chains_per_run: int,
    posterior_starts: torch.Tensor,
    rejuvenation: int = 0,
    step_sizes: torch.Tensor | None = None,
) -> BidirectionalRun:
    r"""Forward and reverse AIS on one flat log density, batched together.

    Parameters
    ----------
    log_density : callable
        ``u (M, d) -> (log p(x, z(u)) + log|J| (M,), gradient (M, d))``, as built by
        :meth:`pyrovi._potential.FlatPotential.log_density_and_grad`.
    base_mean, base_scale_tril : torch.Tensor
        The Gaussian base :math:`q_0 = N(m, L L^\top)` on the flat space.
    options : AIS
        ``num_temperatures``, ``num_runs``, ``transition``, ``num_leapfrog``, ``step_size``
        (initial value of the pilot), ``target_accept``.
    chains_per_run : int
        Chains per run and direction.
    posterior_starts : torch.Tensor
        ``(num_runs * chains_per_run, d)`` flat starting points of the reverse chains, each
        (marginally) a draw from the posterior for ``upper`` to be a bound.
    rejuvenation : int
        Transitions at :math:`\beta = 1` applied to the reverse starts first (spreads copies
        of one exact draw; each stays an exact draw).
    step_sizes : torch.Tensor, optional
        ``(num_temperatures + 1,)`` fixed step sizes; default from an adaptive pilot.

    Forward: :math:`v_0 \sim q_0`; for :math:`t = 1..T`: add
    :math:`(\beta_t - \beta_{t-1}) f(v_{t-1})` with :math:`f = \log \tilde p - \log q_0`, then
    move with :math:`K_t` (invariant for :math:`\pi_{\beta_t}`) if :math:`t < T`.  Reverse:
    :math:`v_{T-1} \sim p(z \mid x)`; for :math:`t = T..1`: add
    :math:`(\beta_t - \beta_{t-1}) f(v_{t-1})`, then move with :math:`K_{t-1}` if
    :math:`t > 1`.  The reverse log-weight is minus that sum, and
    :math:`\mathbb{E}[w^{\mathrm{rev}}] = 1/p(x)` (Grosse et al., 2015).
    """
    R, C = options.num_runs, chains_per_run
    M = R * C
    d = base_mean.numel()
    dtype = base_mean.dtype
    if posterior_starts.shape != (M, d):
        raise ValueError(f"posterior_starts must have shape {(M, d)}, got "
                         f"{tuple(posterior_starts.shape)}")
    target = _Whitened(log_density, base_mean, base_scale_tril)
    betas = sigmoid_schedule(options.num_temperatures)
    T = len(betas) - 1
    n_leap, _, _ = _defaults(options, d)
    if step_sizes is None:
        step_sizes = _pilot_step_sizes(target, betas, options)
    step_sizes = step_sizes.to(dtype)

    v_rev = torch.linalg.solve_triangular(
        base_scale_tril, (posterior_starts.to(dtype) - base_mean).T, upper=False).T
    logp_rev, grad_rev = target(v_rev)
    if not bool(torch.isfinite(logp_rev).all()):
        raise ModelError("the posterior draws given to the reverse run have a non-finite log "
                         "density; expected draws inside the model's support")
    accepted, moves = 0.0, 0
    one = torch.ones(M, dtype=dtype)
    for _ in range(rejuvenation):
        v_rev, logp_rev, grad_rev, rate = hmc_transition(target, v_rev, logp_rev, grad_rev, one,
                                               one * step_sizes[T], n_leap)
    v_fwd = torch.randn(M, d, dtype=dtype)
    logp_fwd, grad_fwd = target(v_fwd)
    # forward chains in rows [:M], reverse chains in rows [M:]
    v = torch.cat([v_fwd, v_rev])
    logp = torch.cat([logp_fwd, logp_rev])
    grad = torch.cat([grad_fwd, grad_rev])
    acc = torch.zeros(2 * M, dtype=torch.float64)
    for k in range(1, T + 1):
        t_fwd, t_rev = k, T + 1 - k
        inc = target.log_ratio(v, logp)
        acc[:M] += float(betas[t_fwd] - betas[t_fwd - 1]) * inc[:M]
        acc[M:] += float(betas[t_rev] - betas[t_rev - 1]) * inc[M:]
        if k < T:  # forward moves with K_k, reverse with K_{T-k}
            beta = torch.cat([torch.full((M,), float(betas[t_fwd]), dtype=dtype),
                              torch.full((M,), float(betas[t_rev - 1]), dtype=dtype)])
            eps = torch.cat([torch.full((M,), float(step_sizes[t_fwd]), dtype=dtype),
                             torch.full((M,), float(step_sizes[t_rev - 1]), dtype=dtype)])
            v, logp, grad, rate = hmc_transition(target, v, logp, grad, beta, eps, n_leap)
            accepted += float(rate.mean())
            moves += 1
    return BidirectionalRun(
        log_w=acc[:M].reshape(R, C),
        log_w_rev=-acc[M:].reshape(R, C),
        acceptance=accepted / max(moves, 1),
        step_sizes=step_sizes,
    )


def run_ais(
    log_density: LogDensity,
    base_mean: torch.Tensor,
    base_scale_tril: torch.Tensor,
    *,
    options: AIS,
    chains_per_run: int,
) -> AISRun:
    r"""Run ``options.num_runs x chains_per_run`` forward AIS chains; return their
    log-weights.

    The log-weight of a chain is
    :math:`\sum_{t=1}^T (\beta_t - \beta_{t-1}) [\log \tilde p(u_{t-1}) - \log q_0(u_{t-1})]`
    with :math:`u_0 \sim q_0` and :math:`u_t` drawn by a transition that leaves
    :math:`\pi_{\beta_t}` invariant.  The step size is adapted per run toward the target
    acceptance between temperatures (each run on its own chains, so runs stay
    independent); :func:`bidirectional_ais` fixes it per temperature instead.
    """
    R, C = options.num_runs, chains_per_run
    M = R * C
    d = base_mean.numel()
    dtype = base_mean.dtype
    target = _Whitened(log_density, base_mean, base_scale_tril)
    n_leap, accept_target, eps0 = _defaults(options, d)
    eps = torch.full((R,), eps0, dtype=dtype)
    betas = sigmoid_schedule(options.num_temperatures)
    v = torch.randn(M, d, dtype=dtype)
    logp, grad = target(v)
    log_w = torch.zeros(M, dtype=torch.float64)
    accepted = 0.0
    for t in range(1, len(betas)):
        beta, prev = float(betas[t]), float(betas[t - 1])
        log_w = log_w + (beta - prev) * target.log_ratio(v, logp)
        v, logp, grad, rate = hmc_transition(
            target, v, logp, grad, torch.full((M,), beta, dtype=dtype),
            eps.repeat_interleave(C), n_leap)
        rate = rate.reshape(R, C).mean(-1)  # per run: runs stay independent
        accepted += float(rate.mean())
        eps = eps * torch.exp(torch.clamp(rate - accept_target, -0.5, 0.5))
    return AISRun(log_w.reshape(R, C), accepted / (len(betas) - 1), eps)
