"""The result of an EM fit.

An :class:`EMResult` is a frozen value: the fitted parameters, the log-evidence trace, the
exact posterior :math:`p(z \\mid x, \\hat\\theta)` at the fitted parameters (a
:class:`~pyrovi.em.posterior.GaussianPosterior` or
:class:`~pyrovi.em.posterior.DiscretePosterior`, re-exported here), and what later
diagnostics and the ArviZ export need (the model, its arguments and its parameter store).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import numpy as np
import torch

import pyrovi.em.posterior as _posterior
from pyrovi._draws import Draws, seeded_draws
from pyrovi._result import FitResult
from pyrovi._runtime import check_positive, warn
from pyrovi.em.posterior import DiscretePosterior, GaussianPosterior
from pyrovi.errors import ConvergenceWarning

__all__ = ["EMResult", "DiscretePosterior", "GaussianPosterior"]


@dataclasses.dataclass(frozen=True)
class EMResult(FitResult):
    r"""The result of :meth:`pyrovi.EM.run`.

    Attributes
    ----------
    model : callable
        The Pyro model that was fitted.
    args : tuple
        Positional model arguments (on ``device``).
    kwargs : dict
        Keyword model arguments.
    param_state : dict
        The Pyro parameter-store state ``{"params": ..., "constraints": ...}`` at the
        fitted parameters; :meth:`scope` re-enters it.
    device : torch.device
        The device the fit ran on.
    seed : int
        The seed of the kept run (restart ``i`` uses ``seed + i``).
    params : dict of str to torch.Tensor
        Fitted parameters, constrained and detached.
    log_evidence_trace : numpy.ndarray
        ``log p(x | theta_t)`` (float64, total over the data, all constants included) at the
        E-step of each iteration ``t = 0..num_steps-1``, i.e. before that iteration's M-step.
    log_evidence : float
        ``log p(x | theta)`` at the fitted parameters (after the last M-step).
    converged : bool
        Whether the change of the log evidence per observation fell below ``tol``.
    num_steps : int
        Number of EM iterations (E-step + M-step) of the kept run.
    best_init : int
        Index of the kept restart (``0`` when ``num_inits == 1``).
    wall_time : float
        Seconds spent in the whole run (all restarts).
    family : str
        ``"em"``.
    max_plate_nesting : int
        Plate max_plate_nesting of the model (for Pyro's enumeration).
    latent_sites : tuple of str
        The latent sites whose exact posterior is held.
    posterior : DiscretePosterior or GaussianPosterior or None
        The exact posterior :math:`p(z \mid x, \theta)` at the fitted parameters; ``None``
        for a streamed fit (:meth:`pyrovi.EM.stream`), whose per-row posterior would be as
        large as the data.
    num_obs : int
        Number of observations (entries of the observed sites' batch shapes); ``tol`` is
        compared to the change of ``log_evidence / num_obs``.
    m_step : str
        ``"closed_form"`` or ``"generic"``: which M-step ran.
    log_evidence_inits : tuple of float
        Final log evidence of every restart.
    """

    model: Callable
    args: tuple
    kwargs: dict
    param_state: dict
    device: torch.device
    seed: int
    params: dict
    log_evidence_trace: np.ndarray
    log_evidence: float
    converged: bool
    num_steps: int
    best_init: int
    wall_time: float
    family: str
    max_plate_nesting: int
    latent_sites: tuple
    posterior: DiscretePosterior | GaussianPosterior | None
    num_obs: int = 0
    m_step: str = "generic"
    log_evidence_inits: tuple = ()

    def __repr__(self) -> str:
        inits = f", best_init={self.best_init} of {len(self.log_evidence_inits)}" if len(
            self.log_evidence_inits) > 1 else ""
        return (
            f"EMResult(log_evidence={self.log_evidence:.6g}, num_steps={self.num_steps}, "
            f"converged={self.converged}{inits}, m_step={self.m_step!r}, "
            f"latent_sites={list(self.latent_sites)}, params={sorted(self.params)})"
        )

    @property
    def n_iter(self) -> int:
        """Deprecated name of :attr:`num_steps` (one name across VI and EM)."""
        warn("EMResult.n_iter is now EMResult.num_steps", DeprecationWarning)
        return self.num_steps

    @property
    def n_obs(self) -> int:
        """Deprecated name of :attr:`num_obs`."""
        warn("EMResult.n_obs is now EMResult.num_obs", DeprecationWarning)
        return self.num_obs

    @property
    def elbo(self) -> float:
        """The ELBO at q = the exact posterior, which equals ``log_evidence``."""
        return self.log_evidence

    def sample(self, n: int, seed: int | None = None) -> dict[str, torch.Tensor]:
        """``n`` exact draws from the posterior of every latent site.

        Parameters
        ----------
        n : int
            Number of draws.
        seed : int, optional
            Seed of the draws; the caller's random state is left untouched when given.

        Returns
        -------
        dict of str to torch.Tensor
            Site -> draws of shape ``(n, *site value shape)`` (constrained space).
        """
        check_positive("n", n, integer=True)
        self._check_posterior("sample")
        with seeded_draws(seed, self.device):
            return _posterior.sample_posterior(self, n)

    def _check_posterior(self, what: str) -> None:
        if self.posterior is None:
            raise ValueError(
                f"EMResult.{what} needs the per-row posterior, which a streamed fit "
                "(EM.stream) does not keep (it is as large as the data); fit a subset in "
                "memory with EM(model).run(x) for it, or use result.params"
            )

    def log_posterior(self, samples: dict[str, torch.Tensor]) -> torch.Tensor:
        r"""Exact :math:`\log p(z \mid x, \theta)` of draws ``samples`` (as from
        :meth:`sample`), shape ``(n,)``."""
        missing = [s for s in self.latent_sites if s not in samples]
        if missing:
            raise ValueError(
                f"samples lacks the latent site(s) {missing}; expected a dict with keys "
                f"{list(self.latent_sites)} as returned by sample()"
            )
        self._check_posterior("log_posterior")
        return _posterior.log_posterior(self, samples)

    def log_joint(self, samples: dict[str, torch.Tensor]) -> torch.Tensor:
        r""":math:`\log p(x, z \mid \theta)` of draws ``samples`` at the fitted parameters,
        shape ``(n,)``."""
        self._check_posterior("log_joint")
        return _posterior.log_joint(self, samples)

    def to_arviz(self, num_samples: int = 1000, **kwargs):
        """Export to ArviZ; see :func:`pyrovi.to_arviz`."""
        from pyrovi.arviz import to_arviz  # at call time: pyrovi.arviz sits above pyrovi.em

        return to_arviz(self, num_samples, **kwargs)

    # ------------------------------------------------- the FitResult protocol (pyrovi._result)
    kind = "em"  # class-level tag (not a dataclass field: no annotation)

    @property
    def objective_trace(self) -> np.ndarray:
        """``log_evidence_trace``: the log evidence at each iteration (the ELBO at q = the
        exact posterior)."""
        return self.log_evidence_trace

    @property
    def elbo_se(self) -> float:
        """0: ``elbo`` is exact."""
        return 0.0

    @property
    def exact_posterior(self) -> bool:
        """True: q is the exact posterior, so the gap between ELBO and evidence is 0."""
        return True

    @property
    def has_density(self) -> bool:
        """True: the exact posterior has a density (:meth:`log_posterior`)."""
        return True

    @property
    def map_trained(self) -> bool:
        """False: EM maximises the evidence, not log p(x, z) at a point."""
        return False

    def posterior_draws(self, n: int, seed: int | None = None):
        """``n`` exact posterior draws of every latent site with the exact log posterior
        at each, as a :class:`pyrovi._draws.Draws` (``values`` as from :meth:`sample`,
        ``log_q`` from :meth:`log_posterior`); ``seed`` as in :meth:`sample`."""
        check_positive("n", n, integer=True)
        with seeded_draws(seed, self.device):
            values = self.sample(n)
        with torch.no_grad():
            return Draws(values, self.log_posterior(values))


def warn_not_converged(trace, num_steps: int, num_obs: int, tol: float, remedy: str) -> None:
    """The ``ConvergenceWarning`` of an EM run that used its ``num_steps`` before the log
    evidence per observation changed by less than ``tol``; ``trace`` holds the log
    evidence of each iteration."""
    change = (trace[-1] - trace[-2]) / num_obs if len(trace) > 1 else math.nan
    warn(
        f"EM did not converge: after num_steps={num_steps} iterations the log evidence per "
        f"observation still changed by {change:.3g} (tol={tol:g}). {remedy}",
        ConvergenceWarning,
    )
