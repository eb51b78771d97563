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

Only the sampler lives here (tensors in, tensors out); :mod:`pyrovi.diagnostics.ais_evidence`
builds the potential and the base from a model.

References
----------
Neal (2001), "Annealed importance sampling", Statistics and Computing 11.
Grosse, Maddison and Salakhutdinov (2013), "Annealing between distributions by averaging
moments", NeurIPS (the sigmoidal schedule).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import torch

__all__ = ["AIS", "AISRun", "sigmoid_schedule", "run_ais"]

#: log p(x, z(u)) + log|J| and its gradient for a batch of flat points ``(M, d)``.
LogDensity = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


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


def sigmoid_schedule(num_temperatures: int, delta: float = 4.0) -> torch.Tensor:
    r"""Inverse temperatures :math:`\beta_0 = 0, \dots, \beta_T = 1` on a sigmoid
    (Grosse et al., 2013): dense near both ends, where the intermediate targets change
    fastest."""
    t = torch.linspace(-delta, delta, num_temperatures + 1, dtype=torch.float64)
    s = torch.sigmoid(t)
    return (s - s[0]) / (s[-1] - s[0])


def _std_normal_logp(v: torch.Tensor) -> torch.Tensor:
    return -0.5 * v.square().sum(-1) - 0.5 * v.shape[-1] * math.log(2 * math.pi)


def run_ais(
    log_density: LogDensity,
    base_mean: torch.Tensor,
    base_scale_tril: torch.Tensor,
    *,
    options: AIS,
    chains_per_run: int,
) -> AISRun:
    r"""Run ``options.num_runs x chains_per_run`` AIS chains; return their log-weights.

    The log-weight of a chain is
    :math:`\sum_{t=1}^T (\beta_t - \beta_{t-1}) [\log \tilde p(u_{t-1}) - \log q_0(u_{t-1})]`
    with :math:`u_0 \sim q_0` and :math:`u_t` drawn by a transition that leaves
    :math:`\pi_{\beta_t}` invariant.
    """
    R, C = options.num_runs, chains_per_run
    d = base_mean.numel()
    dtype = base_mean.dtype
    L = base_scale_tril
    log_det_L = L.diagonal().abs().log().sum()
    mala = options.transition == "mala"
    n_leap = 1 if mala else options.num_leapfrog
    target = options.target_accept or (0.57 if mala else 0.65)
    eps0 = options.step_size or 0.5 * d ** -0.25
    eps = torch.full((R, 1), float(eps0), dtype=dtype)

    def terms(v):
        """(log p~(u) - log q0(u), grad_v log p~(u), grad_v log q0-part) at whitened v."""
        u = base_mean + v.reshape(-1, d) @ L.T
        logp, grad_u = log_density(u)
        logp = logp.reshape(R, C)
        grad_v = (grad_u @ L).reshape(R, C, d)
        log_q0 = _std_normal_logp(v) - log_det_L
        return logp, grad_v, log_q0

    def energy_grad(beta, logp, grad_v, v):
        # log pi_beta(v) = (1 - beta) log N(v) + beta log p~(m + L v) (+ const)
        logpi = (1 - beta) * _std_normal_logp(v) + beta * logp
        grad = -(1 - beta) * v + beta * grad_v
        logpi = torch.where(torch.isfinite(logpi), logpi, torch.full_like(logpi, -math.inf))
        return logpi, grad

    betas = sigmoid_schedule(options.num_temperatures)
    v = torch.randn(R, C, d, dtype=dtype)
    logp, grad_v, log_q0 = terms(v)
    log_w = torch.zeros(R, C, dtype=torch.float64)
    accepted = 0.0
    for t in range(1, len(betas)):
        beta, prev = float(betas[t]), float(betas[t - 1])
        log_w = log_w + (beta - prev) * (logp - log_q0).to(torch.float64)
        # one HMC transition leaving pi_beta invariant
        logpi0, grad = energy_grad(beta, logp, grad_v, v)
        p = torch.randn_like(v)
        h0 = -logpi0 + 0.5 * p.square().sum(-1)
        step = eps.unsqueeze(-1)
        v_new, p_new, grad_new = v, p + 0.5 * step * grad, grad
        for i in range(n_leap):
            v_new = v_new + step * p_new
            logp_new, grad_v_new, _ = terms(v_new)
            logpi_new, grad_new = energy_grad(beta, logp_new, grad_v_new, v_new)
            scale = 0.5 if i == n_leap - 1 else 1.0
            p_new = p_new + scale * step * grad_new
        h1 = -logpi_new + 0.5 * p_new.square().sum(-1)
        log_accept = torch.nan_to_num(h0 - h1, nan=-math.inf).clamp(max=0.0)
        accept = torch.rand_like(log_accept).log() < log_accept
        v = torch.where(accept.unsqueeze(-1), v_new, v)
        logp = torch.where(accept, logp_new, logp)
        grad_v = torch.where(accept.unsqueeze(-1), grad_v_new, grad_v)
        log_q0 = _std_normal_logp(v) - log_det_L
        rate = log_accept.exp().mean(-1, keepdim=True)  # per run: runs stay independent
        accepted += float(rate.mean())
        eps = eps * torch.exp(torch.clamp(rate - target, -0.5, 0.5))
    return AISRun(log_w, accepted / (len(betas) - 1), eps.reshape(-1))
