r"""One adapter per kind of result: the raw material of the ArviZ groups.

As arviz-base keeps one adapter per inference backend (``io_numpyro.py``: ``SVIAdapter``,
``MCMCAdapter``) behind one converter, pyrovi keeps one adapter per ``FitResult.kind``;
:class:`~pyrovi.arviz.converter.ResultConverter` builds every group from whichever adapter
:func:`adapter_for` picks from :data:`ADAPTERS`.  An adapter provides

* :meth:`~ResultAdapter.posterior`: posterior draws with ``lp``, ``log_q`` and the
  pointwise log-likelihood (:class:`~pyrovi.arviz.draws.ExportDraws`);
* :attr:`~ResultAdapter.vectorize`: whether the model may be run vectorized over draws
  (posterior predictive, prior);
* :meth:`~ResultAdapter.attrs` and :meth:`~ResultAdapter.trace`: the attributes of every
  group and the optimisation-trace group (``vi_trace`` or ``em_trace``);
* :meth:`~ResultAdapter.summed_out` and :meth:`~ResultAdapter.fitted_params`: the discrete
  latents the fit sums out (for the marginal log-likelihood) and the point-estimated
  parameters (the ``fitted_params`` group).

What each kind puts in the posterior:

* VI without enumerated sites: guide draws and their ``log q``, ``log p(x, z)`` and
  pointwise ``log p(x_i | z)`` from the model conditioned on them (``lp`` over the full
  data for a model that subsamples a plate, see :meth:`pyrovi.VIResult.log_joint`).
* VI whose discrete latents are enumerated: ``lp`` is :math:`\log p(x, z_c)` with the
  discrete latents summed out and ``log_q`` is :math:`\log q(z_c)` (the importance weight
  of the continuous latents, as the fit's ELBO sees it); the discrete latents in the
  posterior are drawn from their exact conditional :math:`p(z_d \mid x, z_c)` and the
  pointwise log-likelihood is conditional on them.
* EM: exact posterior draws, ``log_q`` the exact :math:`\log p(z \mid x, \hat\theta)`, so
  ``log_weight`` equals the log evidence at every draw.
"""

from __future__ import annotations

import abc
from typing import Any, ClassVar

import numpy as np
import torch

from pyrovi._draws import SiteShape, seeded_draws
from pyrovi._model import ModelInfo
from pyrovi._plates import full_data_runs
from pyrovi._result import FitResult
from pyrovi._runtime import warn
from pyrovi.arviz.draws import ExportDraws, log_density
from pyrovi.errors import ModelError, ModelWarning

__all__ = ["ResultAdapter", "VIAdapter", "EMAdapter", "ADAPTERS", "adapter_for"]


class ResultAdapter(abc.ABC):
    """The groups' raw material for one kind of :class:`~pyrovi._result.FitResult`.

    Parameters
    ----------
    result : FitResult
        The fit.

    Attributes
    ----------
    inference_method : str
        The ``inference_method`` attribute of every group.
    trace_group : str
        Name of the optimisation-trace group.
    trace_var, trace_dim : str
        Its variable and that variable's dimension.
    """

    inference_method: ClassVar[str]
    trace_group: ClassVar[str]
    trace_var: ClassVar[str]
    trace_dim: ClassVar[str]

    def __init__(self, result: FitResult):
        self.result = result

    @abc.abstractmethod
    def posterior(self, n: int, seed: int, shapes: dict[str, SiteShape]) -> ExportDraws:
        """``n`` posterior draws (seeded by ``seed``) with their densities and pointwise
        log-likelihoods; ``shapes`` holds every sample site's shape of one draw."""

    @property
    @abc.abstractmethod
    def vectorize(self) -> bool:
        """Whether model runs over many draws should first be tried vectorized."""

    @abc.abstractmethod
    def trace_attrs(self) -> dict[str, Any]:
        """Final estimates and fit details, as attributes of the trace group."""

    def trace(self) -> np.ndarray:
        """The values of :attr:`trace_var`, one per iteration."""
        return np.asarray(self.result.objective_trace, dtype=float)

    @abc.abstractmethod
    def summed_out(self, info: ModelInfo) -> tuple[str, ...]:
        """The discrete latent sites the fit sums out exactly (none: ``()``); the
        marginal pointwise log-likelihood sums them out too."""

    def fitted_params(self, info: ModelInfo) -> dict[str, torch.Tensor]:
        """The model's point-estimated ``pyro.param`` values (constrained), by name: the
        ``param`` sites of the model's trace (a guide's own parameters are left out)."""
        names = [k for k, site in info.trace.nodes.items() if site["type"] == "param"]
        params = self.result.params
        return {k: params[k].detach() for k in names if k in params}

    def attrs(self) -> dict[str, Any]:
        """What every group records about the fit (not yet encoded for netCDF)."""
        r = self.result
        return {
            "inference_method": self.inference_method,
            "guide_family": r.family,
            "num_steps": int(r.num_steps),
            "seed": int(r.seed),
            "converged": bool(r.converged),
        }


class VIAdapter(ResultAdapter):
    """A :class:`~pyrovi.vi.VIResult`: guide draws, enumerated sites handled exactly."""

    inference_method = "variational"
    trace_group = "vi_trace"
    trace_var = "elbo"
    trace_dim = "step"

    @property
    def vectorize(self) -> bool:
        return bool(self.result.vectorized) and not self.result.enumerated_sites

    def summed_out(self, info: ModelInfo) -> tuple[str, ...]:
        return tuple(self.result.enumerated_sites)

    def posterior(self, n: int, seed: int, shapes: dict[str, SiteShape]) -> ExportDraws:
        r = self.result
        with seeded_draws(seed, r.device):
            draws = r.posterior_draws(n)
            discrete = r.sample_enumerated(draws.values)
        if not discrete:
            lp, log_lik = log_density(r, draws.values, shapes, self.vectorize)
            with r.scope():
                subsampled = full_data_runs(r.model, r.args, r.kwargs) is not None
            if subsampled:  # lp of the full data, not of the scaled subsample
                try:
                    lp = r.log_joint(draws.values).to(lp.dtype)
                except ModelError as err:  # latents local to the subsampled plate
                    warn(f"lp is NaN in sample_stats: {err}", ModelWarning)
                    lp = torch.full_like(lp, float("nan"))
            return ExportDraws(dict(draws.values), lp, draws.log_q, log_lik)
        lp = r.log_joint(draws.values)  # the discrete latents summed out
        values = {**draws.values, **discrete}
        values = {k: values[k] for k in r.latent_sites if k in values}
        _, log_lik = log_density(r, values, shapes, vectorize=False)
        return ExportDraws(values, lp.to(draws.log_q.dtype), draws.log_q, log_lik)

    def trace_attrs(self) -> dict[str, Any]:
        r = self.result
        return {
            "elbo": float(r.elbo),
            "elbo_se": float(r.elbo_se),
            "elbo_particles": int(r.elbo_particles),
            "num_particles": int(r.num_particles),
            "vectorized": bool(r.vectorized),
            "backend": r.backend,
            "enumerated_sites": list(r.enumerated_sites),
            "notes": list(r.notes),
            "best_init": int(r.best_init),
            "elbo_inits": [float(e) for e in r.elbo_inits],
            "wall_time": float(r.wall_time),
        }


class EMAdapter(ResultAdapter):
    """An :class:`~pyrovi.em.EMResult`: exact posterior draws and densities."""

    inference_method = "expectation_maximization"
    trace_group = "em_trace"
    trace_var = "log_evidence"
    trace_dim = "iteration"

    @property
    def vectorize(self) -> bool:
        return True

    def summed_out(self, info: ModelInfo) -> tuple[str, ...]:
        latent = tuple(self.result.latent_sites)
        if latent and set(latent) <= set(info.discrete):
            return latent  # the exact E-step enumerates them
        return ()

    def fitted_params(self, info: ModelInfo) -> dict[str, torch.Tensor]:
        """Every fitted parameter (EM fits the model's own parameters only)."""
        return {k: torch.as_tensor(v).detach() for k, v in self.result.params.items()}

    def posterior(self, n: int, seed: int, shapes: dict[str, SiteShape]) -> ExportDraws:
        draws = self.result.posterior_draws(n, seed=seed)
        lp, log_lik = log_density(self.result, draws.values, shapes, self.vectorize)
        return ExportDraws(dict(draws.values), lp, draws.log_q.to(lp.dtype), log_lik)

    def trace_attrs(self) -> dict[str, Any]:
        r = self.result
        return {
            "log_evidence": float(r.log_evidence),
            "num_steps": int(r.num_steps),
            "best_init": int(r.best_init),
            "m_step": r.m_step,
            "num_obs": int(r.num_obs),
            "log_evidence_inits": list(r.log_evidence_inits),
            "wall_time": float(r.wall_time),
        }


#: ``FitResult.kind`` -> the adapter class that exports that kind of result.
ADAPTERS: dict[str, type[ResultAdapter]] = {"vi": VIAdapter, "em": EMAdapter}


def adapter_for(result: FitResult) -> ResultAdapter:
    """The adapter of ``result``'s kind (from :data:`ADAPTERS`).

    Raises
    ------
    TypeError
        When ``result`` is not a pyrovi result, or its kind has no adapter.
    """
    if not isinstance(result, FitResult):
        raise TypeError(
            "to_arviz expects a pyrovi VIResult or EMResult (from pyrovi.VI(...).run or "
            f"pyrovi.EM(...).run), got {type(result).__name__}"
        )
    try:
        cls = ADAPTERS[result.kind]
    except KeyError:
        raise TypeError(
            f"no ArviZ adapter for results of kind {result.kind!r} "
            f"({type(result).__name__}); the known kinds are {sorted(ADAPTERS)}. Add one to "
            "pyrovi.arviz.adapters.ADAPTERS."
        ) from None
    return cls(result)
