"""The interface of pyrovi's ready models, whose E- and M-steps are closed-form.

A ready model is an ordinary Pyro model (calling it runs ``pyro.param`` / ``pyro.sample``
statements, so the generic path and every other pyrovi tool can use it) that also knows
its EM updates in closed form.  ``EM(m_step="auto")`` recognises it by this base class.
"""

from __future__ import annotations

import abc

import torch

from pyrovi.em.posterior import DiscretePosterior, GaussianPosterior

__all__ = ["ClosedFormModel", "STREAM_INIT_ROWS"]

#: Rows of the first chunk that seed a streamed fit's initial parameters.
STREAM_INIT_ROWS = 65536


class ClosedFormModel(abc.ABC):
    """Base class of models with closed-form EM steps (see :mod:`pyrovi.em.gmm`,
    :mod:`pyrovi.em.factor_analysis`).

    Subclasses define ``latent_site`` (name of the latent sample site), ``max_plate_nesting``
    and the methods below; all take the data tensor that :meth:`prepare` returned.
    """

    latent_site: str = "z"
    max_plate_nesting: int = 1

    @abc.abstractmethod
    def __call__(self, data: torch.Tensor) -> None:
        """The Pyro model."""

    @property
    @abc.abstractmethod
    def param_constraints(self) -> dict:
        """Parameter name -> constraint, as declared by the Pyro model."""

    @abc.abstractmethod
    def prepare(self, data: torch.Tensor) -> torch.Tensor:
        """Check the data (naming the argument) and convert it to the working dtype."""

    @abc.abstractmethod
    def init_params(self, data: torch.Tensor) -> dict:
        """Initial parameters, drawn from torch's (seeded) global generator."""

    def lazy_inits(self, data: torch.Tensor):
        """``name -> callable`` giving the initial value of parameter ``name``, for
        ``pyro.param(name, init)``: :meth:`init_params` runs once, on first use, so a
        model run whose parameters already exist draws nothing."""
        cache: dict = {}

        def init(name):
            def value():
                if not cache:
                    cache.update(self.init_params(self.prepare(data)))
                return cache[name].to(data.dtype)

            return value

        return init

    @abc.abstractmethod
    def e_step(self, data: torch.Tensor, params: dict) -> tuple[float, object]:
        """``(log p(x | params), posterior statistics)``."""

    @abc.abstractmethod
    def m_step(self, data: torch.Tensor, stats: object) -> dict:
        """Parameters maximising ``Q`` given the E-step statistics."""

    @abc.abstractmethod
    def posterior(self, data: torch.Tensor, stats: object) -> DiscretePosterior | GaussianPosterior:
        """The exact posterior held by the E-step statistics."""

    def num_obs(self, data: torch.Tensor) -> int:
        """Number of observations (rows of the data)."""
        return int(data.shape[0])

    # ---------------------------------------------- streaming (pyrovi.em.stream), optional
    #: Whether :meth:`stream_statistics` ignores the parameters (one pass then suffices).
    stream_fixed: bool = False

    def stream_init(
        self, first: torch.Tensor, fixed: dict | None, shift: torch.Tensor, dtype: torch.dtype
    ) -> dict:
        """Initial parameters of a streamed fit, from its first chunk ``first`` (and the
        summed statistics ``fixed`` when :attr:`stream_fixed`); default: :meth:`init_params`
        on the first :data:`STREAM_INIT_ROWS` rows of the first chunk (so the seeding's
        temporaries stay small whatever the chunk size)."""
        return self.init_params(self.prepare(first[:STREAM_INIT_ROWS].to(dtype)))

    def stream_statistics(
        self, x: torch.Tensor, params: dict, shift: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Additive float64 sufficient statistics of the rows ``x`` at ``params`` (sums over
        the rows, about ``shift``), with ``"n"`` the number of rows; the statistics of
        several chunks (or ranks) are their sums.  Models without it cannot be streamed."""
        raise NotImplementedError(
            f"{type(self).__name__} has no streaming statistics; fit it in memory with "
            "EM(...).run(data)"
        )

    def stream_step(
        self, stats: dict[str, torch.Tensor], params: dict, shift: torch.Tensor
    ) -> tuple[float, dict]:
        """``(log p(x | params), new params)`` from the summed statistics of all the data
        at ``params`` (the E-step's log evidence and the M-step)."""
        raise NotImplementedError(type(self).__name__)
