"""One EM iteration's work for each kind of model, behind one small interface.

An engine lives inside one restart's parameter scope and offers ``e_step() -> float`` (the
exact ``log p(x | theta_t)``, keeping what the M-step needs), ``m_step()`` (update the
parameters) and ``posterior()`` (the exact posterior of the last E-step).  The driver
(:mod:`pyrovi.em.driver`) owns the loop, convergence, restarts and reporting.
"""

from __future__ import annotations

from collections.abc import Callable

import pyro
import torch
from pyro.infer import TraceEnum_ELBO, config_enumerate

from pyrovi._model import ModelInfo
from pyrovi.em.closed_form import ClosedFormModel
from pyrovi.em.estep import (
    check_quadratic,
    current_params,
    enum_e_step,
    enum_expected_log_joint,
    gaussian_e_step,
    gaussian_expected_log_joint,
    latent_layout,
    make_log_joint,
)
from pyrovi.em.mstep import LBFGSMStep, maximize_q
from pyrovi.em.posterior_ops import model_layout, particle_dim
from pyrovi.em.result import DiscretePosterior, GaussianPosterior

__all__ = ["ClosedFormEngine", "EnumEngine", "GaussianEngine"]


def _empty_guide(*args, **kwargs) -> None:
    return None


class ClosedFormEngine:
    """Closed-form E- and M-steps of a :class:`~pyrovi.em.closed_form.ClosedFormModel`."""

    def __init__(self, model: ClosedFormModel, data: object):
        self.model, self.data = model, data
        with torch.no_grad():
            self.params = model.init_params(data)
        self._stats = None

    @torch.no_grad()
    def e_step(self) -> float:
        ll, self._stats = self.model.e_step(self.data, self.params)
        return ll

    @torch.no_grad()
    def m_step(self) -> None:
        self.params = self.model.m_step(self.data, self._stats)

    def posterior(self) -> DiscretePosterior | GaussianPosterior:
        return self.model.posterior(self.data, self._stats)

    def store(self) -> None:
        """Write the current parameters into the active Pyro parameter store."""
        store = pyro.get_param_store()
        for name, constraint in self.model.param_constraints.items():
            if name in store:
                del store[name]
            try:
                pyro.param(name, self.params[name].detach().clone(), constraint=constraint)
            except (RuntimeError, ValueError):  # an invalid initial value: nothing to keep
                pass


class EnumEngine:
    """Generic EM for finite discrete latents (Pyro enumeration + L-BFGS on ``Q``)."""

    def __init__(
        self, model: Callable, info: ModelInfo, args: tuple, kwargs: dict, n_obs: int,
        settings: LBFGSMStep,
    ):
        self.model, self.args, self.kwargs = model, args, kwargs
        self.mpn = info.max_plate_nesting
        self.n_obs, self.settings = n_obs, settings
        self._estep = None

    def e_step(self) -> float:
        self._estep = enum_e_step(self.model, self.mpn, self.args, self.kwargs)
        return float(self._estep.log_evidence)

    def expected_log_joint(self) -> torch.Tensor:
        """``Q(theta | theta_t)`` at the current parameters (``theta_t`` = last E-step)."""
        return enum_expected_log_joint(self.model, self.mpn, self.args, self.kwargs, self._estep)

    def m_step(self) -> None:
        maximize_q(self.expected_log_joint, current_params(), scale=self.n_obs,
                   settings=self.settings)

    def posterior(self) -> DiscretePosterior:
        elbo = TraceEnum_ELBO(max_plate_nesting=self.mpn)
        with torch.no_grad():
            dists = elbo.compute_marginals(
                config_enumerate(self.model, "parallel"), _empty_guide, *self.args, **self.kwargs
            )
        marginals = {}
        for name, d in dists.items():
            if isinstance(d, torch.distributions.Bernoulli):
                marginals[name] = torch.stack([1 - d.probs, d.probs], dim=-1)
            else:
                marginals[name] = d.probs
        return DiscretePosterior(marginals=marginals, factorized=False)


class GaussianEngine:
    """Generic EM for linear-Gaussian latents (Hessian E-step + L-BFGS on ``Q``)."""

    def __init__(
        self, model: Callable, info: ModelInfo, args: tuple, kwargs: dict, n_obs: int,
        settings: LBFGSMStep, check: bool,
    ):
        self.sites, z0 = latent_layout(info)
        self.z = torch.zeros_like(z0)
        dim = particle_dim(info.trace, info.max_plate_nesting)
        layout = model_layout(info.trace, info.latent)
        self.f = make_log_joint(model, args, kwargs, self.sites, dim, layout)
        self.n_obs, self.settings = n_obs, settings
        self._estep = None
        if check:
            check_quadratic(self.f, self.z, self.sites)

    def e_step(self) -> float:
        self._estep = gaussian_e_step(self.f, self.z, self.sites)
        self.z = self._estep.mean
        return float(self._estep.log_evidence)

    def expected_log_joint(self) -> torch.Tensor:
        """``Q(theta | theta_t)`` at the current parameters (``theta_t`` = last E-step)."""
        return gaussian_expected_log_joint(self.f, self._estep)

    def m_step(self) -> None:
        maximize_q(self.expected_log_joint, current_params(), scale=self.n_obs,
                   settings=self.settings)

    def posterior(self) -> GaussianPosterior:
        return GaussianPosterior(
            mean=self._estep.mean.unsqueeze(0),
            covariance=self._estep.covariance.unsqueeze(0),
            sites=self.sites,
        )
