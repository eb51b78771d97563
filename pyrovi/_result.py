"""The result protocol: what every pyrovi fit result offers to diagnostics, plots, the ArviZ
export and calibration.

``VIResult`` and ``EMResult`` both derive from :class:`FitResult`.  Consumers ask the
result through these members and never probe for attributes (``hasattr``) or compare
family names; a function that accepts a result or something else tests
``isinstance(x, FitResult)``.  The kind-specific knowledge (VI's guide, EM's exact
posterior) stays behind the members.
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import torch

from pyrovi._runtime import default_device, param_scope

if TYPE_CHECKING:
    from pyrovi._draws import Draws

__all__ = ["FitResult"]


class FitResult(abc.ABC):
    r"""Abstract base of pyrovi's fit results (frozen dataclasses).

    Every subclass stores or computes the attributes below (as dataclass fields or
    properties) and implements the abstract members :attr:`objective_trace`,
    :attr:`exact_posterior`, :attr:`has_density`,
    :attr:`map_trained`, :meth:`posterior_draws`, :meth:`log_joint` and :meth:`sample`.

    Attributes
    ----------
    kind : str
        Class-level tag of the kind of inference: ``"vi"`` or ``"em"``; the ArviZ export
        picks its adapter by it.
    family : str
        Display name of the posterior approximation (``"meanfield"``, ``"fullrank"``,
        ``"delta"``, ..., ``"em"``).
    model : callable
        The Pyro model that was fitted.
    args, kwargs : tuple, dict
        The model arguments of the fit (on ``device``).
    device : torch.device
        Where the fit ran.
    seed : int
        Seed of the fit.
    params : dict of str to torch.Tensor
        Fitted parameters by Pyro name, constrained and detached.
    param_state : dict
        The fit's own Pyro parameter-store state (see :meth:`scope`).
    max_plate_nesting : int
        Batch dimensions used by the model's plates.
    latent_sites : tuple of str
        The model's latent sample sites, in execution order.
    num_steps : int
        Iterations of the fit: VI optimizer steps, EM iterations (one name for both).
    converged : bool
        Whether the fit's convergence rule was met.
    wall_time : float
        Seconds spent in the fit.
    elbo, elbo_se : float
        The ELBO at the fitted parameters (nats, total over the data, constants included)
        and its Monte Carlo standard error (0 when exact).

    Notes
    -----
    ``seed`` means the same in every drawing method (:meth:`sample`,
    :meth:`posterior_draws`): an int forks and seeds torch's random state for the call and
    leaves the caller's state untouched; None draws from torch's global random state as it
    stands (see :func:`pyrovi._draws.seeded_draws`).
    """

    kind: ClassVar[str]

    # Declared here, stored by each subclass (dataclass fields must not be shadowed by
    # properties of a base class, so these are annotations only).
    family: str
    model: Callable
    args: tuple
    kwargs: dict
    device: torch.device
    seed: int
    params: dict
    param_state: dict
    max_plate_nesting: int
    latent_sites: tuple
    num_steps: int
    converged: bool
    wall_time: float
    elbo: float
    elbo_se: float

    # ------------------------------------------------------------------ the fit
    @property
    @abc.abstractmethod
    def objective_trace(self) -> np.ndarray:
        """The optimisation objective at each iteration, shape ``(num_steps,)``
        (nats, total): VI's ``elbo_trace`` (ELBO per step), EM's ``log_evidence_trace``
        (log evidence per iteration, which is the ELBO at the exact posterior)."""


    # ------------------------------------------------------------- the approximation
    @property
    @abc.abstractmethod
    def exact_posterior(self) -> bool:
        r"""Whether q is the exact posterior :math:`p(z \mid x, \hat\theta)` (EM): then
        :math:`\log p(x) = \mathrm{ELBO}`, the gap is 0 and ``log_q`` of
        :meth:`posterior_draws` is the exact log posterior."""

    @property
    @abc.abstractmethod
    def has_density(self) -> bool:
        """Whether q has a density (False for a point mass, the ``delta`` family), so
        that ``log_q``, importance weights and the ELBO's entropy term are defined."""

    @property
    @abc.abstractmethod
    def map_trained(self) -> bool:
        """Whether the fit maximised log p(x, z) at a point (``delta``, and ``laplace``,
        which then fits a Gaussian at the MAP): its ``objective_trace`` is not an ELBO."""

    # ------------------------------------------------------------------ draws
    @abc.abstractmethod
    def posterior_draws(self, n: int, seed: int | None = None) -> Draws:
        """``n`` draws from q with log q at each draw.

        Returns
        -------
        Draws
            ``values``: site -> ``(n, *site_shape)`` in constrained space, for the sites q
            covers (VI: the guide's latent sites, i.e. ``latent_sites`` except enumerated
            discrete sites, which q leaves to the model; EM: every latent site).
            ``log_q``: ``(n,)``, log q at each draw (EM: the exact log posterior).
        """

    @abc.abstractmethod
    def log_joint(self, values: dict[str, torch.Tensor]) -> torch.Tensor:
        r""":math:`\log p(x, z)` at each draw of ``values`` (site -> ``(n, *shape)``) at
        the fitted parameters, shape ``(n,)``; latent sites that q leaves out (VI's
        enumerated discrete sites) are summed out exactly.  With
        ``draws = posterior_draws(n)``, ``log_joint(draws.values) - draws.log_q`` are the
        importance log-weights of q."""

    @abc.abstractmethod
    def sample(self, n: int, seed: int | None = None) -> dict[str, torch.Tensor]:
        """``n`` posterior draws of every latent site, ``(n, *site_shape)`` each (VI:
        enumerated discrete sites drawn from their exact conditional)."""

    # ------------------------------------------------------------------ shared
    @contextlib.contextmanager
    def scope(self) -> Iterator[None]:
        """Re-enter the fit: its parameter store is active and its device is the default.

        Inside the block ``pyro.param(name)`` returns the fitted value and running the model
        or guide uses the fitted parameters; the caller's global store is restored after.
        Draws from a copy of the stored state, so evaluation never changes the result.
        """
        state = {
            # copies: an in-place edit inside the block never reaches the stored result
            "params": {k: v.detach().clone() for k, v in self.param_state["params"].items()},
            "constraints": dict(self.param_state["constraints"]),
        }
        with param_scope(state), default_device(self.device):
            yield

    def to_arviz(self, num_samples: int = 1000, **kwargs):
        """Export to ArviZ; see :func:`pyrovi.to_arviz`."""
        from pyrovi.arviz import to_arviz

        return to_arviz(self, num_samples, **kwargs)
