"""One EM iteration's work for each kind of model, behind one small interface.

An engine lives inside one restart's parameter scope.  Its steps pass values:

* ``expectation() -> EStep``: the exact ``log p(x | theta_t)`` at the current parameters
  and the statistics of the exact posterior (what the M-step and the posterior need);
* ``maximization(estep, last)``: update the parameters to maximise ``Q(theta | theta_t)``
  (``last``: the driver stops after this M-step);
* ``posterior(estep)``: the exact posterior held by an E-step.

An engine keeps no E-step of its own: the driver (:mod:`pyrovi.em.driver`) passes each
one on, and owns the loop, convergence, restarts and reporting;
:class:`EMModelInfo` is what it learns about the model before any work.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
from collections.abc import Callable

import pyro
import torch
from pyro.infer import TraceEnum_ELBO, config_enumerate

from pyrovi._exact import empty_guide
from pyrovi._model import ModelInfo
from pyrovi.em.closed_form import ClosedFormModel
from pyrovi.em.derived import propose, signature, variants
from pyrovi.em.estep import (
    check_quadratic,
    current_params,
    enum_e_step,
    enum_trace,
    gaussian_e_step,
    gaussian_expected_log_joint,
    latent_layout,
    make_log_joint,
    q_of_trace,
)
from pyrovi.em.mstep import LBFGSMStep, maximize_q, try_proposal
from pyrovi.em.posterior import DiscretePosterior, GaussianPosterior, model_layout, particle_dim

__all__ = [
    "EMModelInfo",
    "count_observations",
    "EStep",
    "ClosedFormEngine",
    "EnumEngine",
    "GaussianEngine",
    "store_closed_form",
]

_KINDS = ("closed_form", "discrete", "gaussian")


def count_observations(info: ModelInfo) -> int:
    """Number of observations: the entries of the observed sites' batch shapes (at least 1)."""
    num_obs = 0
    for name in info.observed:
        value, fn = info.trace.nodes[name]["value"], info.trace.nodes[name]["fn"]
        num_obs += math.prod(value.shape[: value.dim() - fn.event_dim])
    return max(num_obs, 1)


@dataclasses.dataclass(frozen=True)
class EMModelInfo:
    """What EM knows about a model before any work (replaces the driver's ``meta`` dict).

    Attributes
    ----------
    num_obs : int
        Number of observations (>= 1); ``tol`` is compared to the change of
        ``log_evidence / num_obs``.
    max_plate_nesting : int
        Plate nesting of the model (for Pyro's enumeration).
    latent_sites : tuple of str
        The latent sites whose exact posterior EM computes.
    kind : {"closed_form", "discrete", "gaussian"}
        Which engine fits the model: a ready model's closed-form steps, or the generic path
        for finite discrete or for linear-Gaussian latents.
    fingerprint : dict
        What a checkpoint records to recognise the model and data
        (:func:`pyrovi.checkpoint.fingerprint` for the generic path, the data shape for a
        ready model).
    """

    num_obs: int
    max_plate_nesting: int
    latent_sites: tuple
    kind: str
    fingerprint: dict

    def __post_init__(self):
        if self.kind not in _KINDS:
            raise ValueError(f"kind must be one of {_KINDS}, got {self.kind!r}")

    @property
    def m_step(self) -> str:
        """``"closed_form"`` or ``"generic"``: which M-step runs (``EMResult.m_step``)."""
        return "closed_form" if self.kind == "closed_form" else "generic"

    @classmethod
    def of_closed_form(cls, model: ClosedFormModel, data: object, x: object) -> EMModelInfo:
        """The info of a ready model fitted to ``x`` (``data = model.prepare(x)``)."""
        return cls(
            num_obs=model.num_obs(data),
            max_plate_nesting=model.max_plate_nesting,
            latent_sites=(model.latent_site,),
            kind="closed_form",
            fingerprint={"data": tuple(getattr(x, "shape", ()))},
        )

    @classmethod
    def of_model(cls, info: ModelInfo, kind: str, fingerprint: dict) -> EMModelInfo:
        """The info of a generic model from its prototype ``info``; ``kind`` is
        :func:`pyrovi.em.estep.latent_kind`'s answer."""
        return cls(
            num_obs=count_observations(info),
            max_plate_nesting=info.max_plate_nesting,
            latent_sites=tuple(info.latent),
            kind=kind,
            fingerprint=fingerprint,
        )


@dataclasses.dataclass(frozen=True)
class EStep:
    """One exact E-step, at the parameters :math:`\\theta_t` it ran at.

    Attributes
    ----------
    log_evidence : float
        :math:`\\log p(x \\mid \\theta_t)` in nats, total over the data, constants included.
    statistics : object
        The posterior statistics the M-step and the posterior need: a ready model's own
        (e.g. log responsibilities), an :class:`~pyrovi.em.estep.EnumEStep` or a
        :class:`~pyrovi.em.estep.GaussianEStep`.
    """

    log_evidence: float
    statistics: object


class ClosedFormEngine:
    """Closed-form E- and M-steps of a :class:`~pyrovi.em.closed_form.ClosedFormModel`.

    ``params`` holds the current parameters (the Pyro parameter store is written only by
    :meth:`store`).
    """

    def __init__(self, model: ClosedFormModel, data: object):
        self.model, self.data = model, data
        with torch.no_grad():
            self.params = model.init_params(data)

    @torch.no_grad()
    def expectation(self) -> EStep:
        ll, stats = self.model.e_step(self.data, self.params)
        return EStep(log_evidence=ll, statistics=stats)

    @torch.no_grad()
    def maximization(self, estep: EStep, last: bool = False) -> None:
        self.params = self.model.m_step(self.data, estep.statistics)

    def posterior(self, estep: EStep) -> DiscretePosterior | GaussianPosterior:
        """The exact posterior held by ``estep``."""
        return self.model.posterior(self.data, estep.statistics)

    def store(self) -> None:
        """Write the current parameters into the active Pyro parameter store."""
        store_closed_form(self.model, self.params)


def store_closed_form(model: ClosedFormModel, params: dict) -> None:
    """Write a ready model's ``params`` into the active Pyro parameter store."""
    store = pyro.get_param_store()
    for name, constraint in model.param_constraints.items():
        if name in store:
            del store[name]
        try:
            pyro.param(name, params[name].detach().clone(), constraint=constraint)
        except (RuntimeError, ValueError):  # an invalid initial value: nothing to keep
            pass


class EnumEngine:
    """Generic EM for finite discrete latents (Pyro enumeration + L-BFGS on ``Q``)."""

    #: the derived M-step repeats its gradient test at least this often (iterations)
    PROOF_EVERY = 16

    def __init__(
        self, model: Callable, info: ModelInfo, args: tuple, kwargs: dict, num_obs: int,
        settings: LBFGSMStep,
    ):
        self.model, self.args, self.kwargs = model, args, kwargs
        self.max_plate_nesting = info.max_plate_nesting
        self.num_obs, self.settings = num_obs, settings
        # the enumerated trace of the last Q evaluation and the parameter versions it was
        # taken at: when the M-step ends there, the next E-step starts from it (one model
        # trace per iteration fewer)
        self._last: tuple | None = None
        # the derived M-step: where each site uses the parameters (a cache for
        # derived.propose), the signature that last passed the gradient test, and the
        # iterations since
        self._places: dict = {}
        self._proven: frozenset | None = None
        self._since_proof = 0

    @staticmethod
    def _versions() -> tuple:
        return tuple((id(p), p._version) for p in current_params())

    def expectation(self) -> EStep:
        last, self._last = self._last, None
        trace = last[0] if last is not None and last[1] == self._versions() else None
        estep = enum_e_step(self.model, self.max_plate_nesting, self.args, self.kwargs, trace)
        return EStep(log_evidence=float(estep.log_evidence), statistics=estep)

    def expected_log_joint(self, estep: EStep) -> torch.Tensor:
        """``Q(theta | theta_t)`` at the current parameters (``theta_t``: that of ``estep``,
        default the last :meth:`e_step`)."""
        trace = enum_trace(self.model, self.max_plate_nesting, self.args, self.kwargs)
        self._last = (trace, self._versions())
        return q_of_trace(trace, estep.statistics)

    def maximization(self, estep: EStep, last: bool = False) -> None:
        """The M-step; ``last``: the driver stops after it (the derived M-step is proven
        by the gradient test there, see :meth:`_derived`)."""
        q_fn = functools.partial(self.expected_log_joint, estep)
        if self.settings.derived and self._derived(estep, q_fn, last):
            return
        maximize_q(q_fn, current_params(), scale=self.num_obs, settings=self.settings)

    def _derived(self, estep: EStep, q_fn: Callable, last: bool) -> bool:
        """Start the M-step from the closed-form updates of :mod:`pyrovi.em.derived`;
        ``True`` when they are the whole M-step.

        A proposal ends the M-step when it raises ``Q`` and is proven stationary by the
        gradient test (:func:`~pyrovi.em.mstep.try_proposal`).  The test costs a
        differentiated model trace, so it runs when the proposal's
        :func:`~pyrovi.em.derived.signature` (parameters, readings, site uses) has not
        passed it yet, every ``PROOF_EVERY`` iterations, and at the last iteration; in
        between, a proposal of the proven signature ends the M-step when it raises ``Q``
        (and the model is traced without Pyro's validation).
        Every accepted step raises ``Q``, so the log evidence never decreases, and the
        parameters the fit ends with come from a proven exact maximisation of ``Q``.
        """
        due = last or self._since_proof + 1 >= self.PROOF_EVERY
        if due:  # every site's uses are looked for afresh
            self._places = {}
        with torch.no_grad():
            trace = estep.statistics.trace
            store = pyro.get_param_store()
            params = {name: store[name].detach() for name in store.keys()}
            proposals = propose(trace, estep.statistics.weights, params, self._places)
            if not proposals:
                return False
            q = float(q_of_trace(trace, estep.statistics))
        for variant in variants(proposals):
            sig = signature(variant)
            prove = due or sig != self._proven
            values = {name: u.value for name, u in variant.items()}
            # between proofs the model is traced without Pyro's argument checks: its sites
            # and data passed them at the proof, the parameters' constraints hold by
            # their transforms, and a non-finite value still stops the fit (driver)
            with contextlib.nullcontext() if prove else pyro.validation_enabled(False):
                done, q, moved = try_proposal(q_fn, values, q, scale=self.num_obs,
                                              check_gradient=prove)
            if not moved:  # theta_t restored: its trace is still the current one
                self._last = (trace, self._versions())
            if done:
                if prove:
                    self._proven, self._since_proof = sig, 0
                else:
                    self._since_proof += 1
                return True
        # not the whole M-step: L-BFGS goes on, and the next closed form is proven afresh
        self._proven, self._places = None, {}
        return False

    def posterior(self, estep: EStep) -> DiscretePosterior:
        """The exact posterior marginals at the current parameters (those of the last
        E-step when called right after it; ``estep`` is not needed)."""
        elbo = TraceEnum_ELBO(max_plate_nesting=self.max_plate_nesting)
        with torch.no_grad():
            dists = elbo.compute_marginals(
                config_enumerate(self.model, "parallel"), empty_guide, *self.args, **self.kwargs
            )
        marginals = {}
        for name, d in dists.items():
            if isinstance(d, torch.distributions.Bernoulli):
                marginals[name] = torch.stack([1 - d.probs, d.probs], dim=-1)
            else:
                marginals[name] = d.probs
        return DiscretePosterior(marginals=marginals, factorized=False)


class GaussianEngine:
    """Generic EM for linear-Gaussian latents (Hessian E-step + L-BFGS on ``Q``).

    Each E-step expands the log joint at the previous posterior mean (zeros at first).
    """

    def __init__(
        self, model: Callable, info: ModelInfo, args: tuple, kwargs: dict, num_obs: int,
        settings: LBFGSMStep, check: bool,
    ):
        self.sites, z0 = latent_layout(info)
        self.z = torch.zeros_like(z0)
        dim = particle_dim(info.trace, info.max_plate_nesting)
        layout = model_layout(info.trace, info.latent)
        self.f = make_log_joint(model, args, kwargs, self.sites, dim, layout)
        self.num_obs, self.settings = num_obs, settings
        if check:
            check_quadratic(self.f, self.z, self.sites)

    def expectation(self) -> EStep:
        estep = gaussian_e_step(self.f, self.z, self.sites)
        self.z = estep.mean
        return EStep(log_evidence=float(estep.log_evidence), statistics=estep)

    def expected_log_joint(self, estep: EStep) -> torch.Tensor:
        """``Q(theta | theta_t)`` at the current parameters (``theta_t``: that of ``estep``,
        default the last :meth:`e_step`)."""
        return gaussian_expected_log_joint(self.f, estep.statistics)

    def maximization(self, estep: EStep, last: bool = False) -> None:
        maximize_q(lambda: self.expected_log_joint(estep), current_params(), scale=self.num_obs,
                   settings=self.settings)

    def posterior(self, estep: EStep) -> GaussianPosterior:
        """The exact posterior held by ``estep``."""
        stats = estep.statistics
        return GaussianPosterior(
            mean=stats.mean.unsqueeze(0),
            covariance=stats.covariance.unsqueeze(0),
            sites=self.sites,
        )
