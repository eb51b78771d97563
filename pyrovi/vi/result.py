"""``VIResult``: the immutable outcome of a :class:`pyrovi.VI` fit."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import ClassVar

import numpy as np
import pyro.poutine as poutine
import torch
from pyro.infer import config_enumerate, infer_discrete
from pyro.infer.autoguide import AutoDelta

from pyrovi._draws import (
    Draws,
    enumerated_log_joint,
    guide_draws,
    model_log_density,
    predictive_draws,
    seeded_draws,
)
from pyrovi._plates import (
    first_chunk_model,
    full_data_runs,
    subsample_chunks,
    vectorize_else_loop,
)
from pyrovi._result import FitResult
from pyrovi._runtime import check_positive
from pyrovi.families import lookup

__all__ = ["VIResult"]


@dataclasses.dataclass(frozen=True)
class VIResult(FitResult):
    """The result of a variational fit; implements the :class:`~pyrovi._result.FitResult`
    protocol (``kind = "vi"``).

    Attributes
    ----------
    guide : callable
        The fitted guide (an AutoGuide or the user's guide function).  Call it inside
        :meth:`scope` so that it sees the fitted parameters.
    family : str
        The guide family's name (``"meanfield"``, ``"lowrank:3"``, ``"fullrank"``,
        ``"delta"``, ``"laplace"``, an AutoGuide class name, or the guide function's name).
    params : dict of str to torch.Tensor
        Fitted parameters, constrained and detached, by Pyro parameter name.
    elbo_trace : numpy.ndarray
        The ELBO estimate at each step (nats, total over the data, constants included;
        Pyro's loss with its sign flipped), shape ``(num_steps,)``.
    elbo : float
        A final ELBO estimate at the fitted parameters from ``elbo_particles`` draws.  For
        the ``delta`` family this is log p(x, z_MAP) (a point mass has no finite entropy);
        for ``laplace`` it is the ELBO of the Gaussian at the MAP.
    elbo_se : float
        Monte Carlo standard error of ``elbo``.
    elbo_particles : int
        The number of draws behind ``elbo``.
    num_steps : int
        Optimizer steps taken.
    converged : bool
        Whether the convergence rule was met before the step budget ran out.
    wall_time : float
        Seconds spent in the fit, the final ELBO estimate included.
    model : callable
        The model, so that diagnostics and export need nothing else.
    args, kwargs : tuple, dict
        The model arguments the fit was run with (on ``device``).
    seed : int
        The seed of the fit (drawn at random when none was given).
    param_state : dict
        The fit's private Pyro parameter-store state (see :meth:`scope`).
    device : torch.device
        Where the fit ran.
    max_plate_nesting : int
        Batch dimensions used by the model's plates.
    latent_sites : tuple of str
        Latent sites of the model, in execution order.
    enumerated_sites : tuple of str
        Discrete latent sites summed out exactly by enumeration (not covered by the guide).
    vectorized : bool
        Whether particles were vectorized (False: drawn in a loop, see ``notes``).
    num_particles : int
        Particles per training step.
    backend : str
        ``"dadvi"`` (deterministic ADVI, :mod:`pyrovi.fast.dadvi`), ``"compiled"``
        (stochastic-gradient VI on pyrovi's compiled fast path) or ``"svi"`` (Pyro's ELBO
        machinery).
    notes : tuple of str
        Plain-words remarks about how the fit was done (fallbacks, skipped steps).
    site_shapes : dict
        Sample site -> :class:`pyrovi._draws.SiteShape` (value shape and batch rank) of a
        single draw, for every latent and observed site.
    num_skipped : int
        Steps whose loss or gradient was not finite and whose update was skipped.
    interrupted : bool
        Whether the fit was interrupted (Ctrl-C) and returned early.
    dadvi : DadviOutcome or None
        For a fit by DADVI (``backend == "dadvi"``): what
        :func:`pyrovi.fast.dadvi.fit_dadvi` found (the fixed draws ``M``, the iterations,
        the fresh-draw check, the fitted coordinates); see
        :meth:`linear_response_covariance`.  None otherwise.
    best_init : int
        Index of the kept restart (``0`` when ``num_inits == 1``); ``seed`` is its seed.
    elbo_inits : tuple of float
        The final ``elbo`` of every restart run (one value when ``num_inits == 1``; NaN
        for a restart that failed and was dropped).
    """

    kind: ClassVar[str] = "vi"

    guide: Callable
    family: str
    params: dict
    elbo_trace: np.ndarray
    elbo: float
    elbo_se: float
    elbo_particles: int
    num_steps: int
    converged: bool
    wall_time: float
    model: Callable
    args: tuple
    kwargs: dict
    seed: int
    param_state: dict = dataclasses.field(repr=False)
    device: torch.device = torch.device("cpu")
    max_plate_nesting: int = 0
    latent_sites: tuple = ()
    enumerated_sites: tuple = ()
    vectorized: bool = True
    num_particles: int = 1
    backend: str = "svi"
    notes: tuple = ()
    site_shapes: dict = dataclasses.field(default_factory=dict, repr=False)
    num_skipped: int = 0
    interrupted: bool = False
    dadvi: object = dataclasses.field(default=None, repr=False)
    best_init: int = 0
    elbo_inits: tuple = ()

    def __repr__(self) -> str:
        inits = f", best_init={self.best_init} of {len(self.elbo_inits)}" if len(
            self.elbo_inits) > 1 else ""
        return (
            f"VIResult(family={self.family!r}, elbo={self.elbo:.4f} ± {self.elbo_se:.4f}, "
            f"num_steps={self.num_steps}, converged={self.converged}{inits}, "
            f"backend={self.backend!r})"
        )

    # ------------------------------------------------------------------ the protocol
    @property
    def objective_trace(self) -> np.ndarray:
        """``elbo_trace``: the ELBO at each step (log p(x, z) for MAP-trained families)."""
        return self.elbo_trace

    @property
    def exact_posterior(self) -> bool:
        """False: the guide is an approximation (its gap to the evidence is its KL)."""
        return False

    @property
    def has_density(self) -> bool:
        """False for a point mass: the family record says so (``delta``), or the user's
        guide is an ``AutoDelta``."""
        record = lookup(self.family)
        if record is not None:
            return record.has_density
        return not isinstance(self.guide, AutoDelta)

    @property
    def map_trained(self) -> bool:
        """True for the families trained on log p(x, z) at a point (the record's
        ``map_trained``: ``delta``, ``laplace``), and a user's ``AutoDelta``."""
        record = lookup(self.family)
        if record is not None:
            return record.map_trained
        return not self.has_density

    @property
    def guide_sites(self) -> tuple:
        """The latent sites the guide covers: ``latent_sites`` less ``enumerated_sites``."""
        return tuple(k for k in self.latent_sites if k not in self.enumerated_sites)

    # ----------------------------------------------------------------- posterior draws
    def sample(self, n: int, seed: int | None = None) -> dict[str, torch.Tensor]:
        """Draw ``n`` times from the fitted posterior approximation.

        Parameters
        ----------
        n : int
            Number of draws.
        seed : int, optional
            Seed for the draws; the caller's random state is left untouched.  None: draw
            from torch's global random state (see :func:`pyrovi._draws.seeded_draws`).

        Returns
        -------
        dict of str to torch.Tensor
            Latent site -> draws in constrained space with a leading dimension ``n``.
            Enumerated discrete sites are drawn from their exact conditional posterior
            given the continuous draws (Pyro's ``infer_discrete``).
        """
        check_positive("n", n, integer=True)
        with seeded_draws(seed, self.device), self.scope(), torch.no_grad():
            values = dict(self._guide_draws(n).values)
            if self.enumerated_sites:
                values.update(self.sample_enumerated(values))
                values = {k: values[k] for k in self.latent_sites if k in values}
            return values

    def _guide_draws(self, n: int) -> Draws:
        """Guide draws of the guide's latents with log q (inside scope and seeding)."""
        return guide_draws(
            self.guide,
            self.args,
            self.kwargs,
            n,
            sites=self.guide_sites,
            shapes=self.site_shapes,
            max_plate_nesting=self.max_plate_nesting,
            vectorized=self.vectorized,
        )

    def posterior_draws(self, n: int, seed: int | None = None) -> Draws:
        """``n`` draws of the guide's latents with the guide's log density at each.

        Parameters
        ----------
        n : int
            Number of draws.
        seed : int, optional
            As in :meth:`sample`.

        Returns
        -------
        Draws
            ``values``: site -> ``(n, *shape)`` (constrained) for :attr:`guide_sites`, the
            latent sites less the enumerated discrete ones (the guide does not draw those;
            :meth:`sample_enumerated` draws them given these values).  ``log_q``: ``(n,)``,
            the log density of q at each draw, Jacobians of the constraining transforms
            included (0 for a point mass: see :attr:`has_density`).
        """
        check_positive("n", n, integer=True)
        with seeded_draws(seed, self.device), self.scope():
            return self._guide_draws(n)

    def draws(self, n: int, seed: int | None = None) -> Draws:
        """The same as :meth:`posterior_draws` (kept for existing callers)."""
        return self.posterior_draws(n, seed=seed)

    def sample_enumerated(
        self, values: dict[str, torch.Tensor], seed: int | None = None
    ) -> dict[str, torch.Tensor]:
        r"""Draw the enumerated discrete sites from their exact conditional posterior
        :math:`p(z_d \mid x, z_c)` given each draw of the guide's latents ``values``
        (Pyro's ``infer_discrete``; one draw at a time).

        For a model that subsamples the plate an enumerated site lives in (the sequences of
        an HMM fitted with ``subsample_size``), every draw covers the same entries, the
        first ``subsample_size`` of the plate (:func:`pyrovi._plates.first_chunk_model`),
        from their posterior given those entries' unscaled data; a site that those entries
        do not reach (a step past each of their lengths) is left out.

        Returns
        -------
        dict of str to torch.Tensor
            Enumerated site -> ``(n, *site_shape)``; empty when nothing was enumerated.

        Raises
        ------
        ModelError
            When an enumerated site occurs in some runs and not in others (its draws would
            not line up), or several plates subsample and an enumerated site lives in one.
        """
        if not self.enumerated_sites:
            return {}
        n = next(iter(values.values())).shape[0]
        model = self.model
        with self.scope():
            chunked = first_chunk_model(model, self.args, self.kwargs, tuple(self.enumerated_sites))
        if chunked is not None:
            model = chunked[0]
        model = config_enumerate(model, default="parallel")
        rows: dict[str, list] = {k: [] for k in self.enumerated_sites}
        with seeded_draws(seed, self.device), self.scope(), torch.no_grad():
            for i in range(n):
                conditioned = poutine.condition(model, data={k: v[i] for k, v in values.items()})
                sampler = infer_discrete(
                    conditioned, first_available_dim=-self.max_plate_nesting - 1, temperature=1
                )
                trace = poutine.trace(sampler).get_trace(*self.args, **self.kwargs)
                for k in rows:
                    if k in trace.nodes:
                        rows[k].append(trace.nodes[k]["value"].reshape(self.site_shapes[k].shape))
        uneven = [k for k, v in rows.items() if 0 < len(v) < n]
        if uneven:
            from pyrovi.errors import ModelError

            raise ModelError(
                f"enumerated site(s) {uneven} occur in some runs of the model and not in "
                f"others ({[len(rows[k]) for k in uneven]} of {n} draws): their draws do not "
                "line up. Give the model the same sample sites in every run (mask the steps "
                "it does not use, as hmm.py does with args.jit).",
                site=uneven[0],
            )
        return {k: torch.stack(v) for k, v in rows.items() if v}

    def log_joint(self, values: dict[str, torch.Tensor]) -> torch.Tensor:
        r""":math:`\log p(x, z)` at each draw of ``values`` at the fitted parameters.

        Parameters
        ----------
        values : dict of str to torch.Tensor
            Site -> ``(n, *site_shape)``, at least every site of :attr:`guide_sites`.
            Enumerated discrete sites left out are summed out exactly, giving
            :math:`\log p(x, z_c) = \log \sum_{z_d} p(x, z_c, z_d)` (one draw at a time);
            given, they are conditioned on.

        Returns
        -------
        torch.Tensor
            ``(n,)``, totals with all constants, over the full data: for a model that
            subsamples a plate, summed over index chunks that cover it, unscaled
            (:func:`pyrovi._plates.full_data_runs`), not the fit's scaled subsample.

        Raises
        ------
        ModelError
            For a model whose latents in ``values`` live in a subsampled plate (their
            draws cover one subsample: the full data has no log joint at them).
        """
        missing = [k for k in self.guide_sites if k not in values]
        if missing:
            raise ValueError(
                f"values lacks the latent site(s) {missing}; expected a dict with at least "
                f"the keys {list(self.guide_sites)}, as in posterior_draws(n).values"
            )
        summed = [k for k in self.enumerated_sites if k not in values]
        with self.scope(), torch.no_grad():
            # a subsampled plate: the full data, in chunks (never the scaled subsample)
            runs = full_data_runs(self.model, self.args, self.kwargs, tuple(values))
            runs = runs or [(self.model, 1.0)]
            total = 0.0
            for model, weight in runs:
                if summed:
                    part = enumerated_log_joint(
                        model, self.args, self.kwargs, values,
                        max_plate_nesting=self.max_plate_nesting
                    )
                else:
                    part = vectorize_else_loop(
                        lambda vectorized, model=model: model_log_density(
                            model, self.args, self.kwargs, values, shapes=self.site_shapes,
                            max_plate_nesting=self.max_plate_nesting, vectorized=vectorized,
                        )[0],
                        self.vectorized and not self.enumerated_sites,
                    )
                total = total + weight * part
            return total

    def median(self) -> dict[str, torch.Tensor]:
        """The posterior median of each latent site (constrained space).

        Uses the guide's closed form (``AutoGuide.median``) where there is one; otherwise
        the median of 1,000 draws.  Enumerated discrete sites are not included.
        """
        median = getattr(self.guide, "median", None)
        if median is not None:
            with self.scope(), torch.no_grad():
                return {k: v.detach() for k, v in median(*self.args, **self.kwargs).items()}
        draws = self.sample(1000, seed=self.seed)
        return {k: v.float().median(0).values for k, v in draws.items()}

    def quantiles(self, qs: Sequence[float]) -> dict[str, torch.Tensor]:
        """Posterior quantiles of each latent site (constrained space).

        Parameters
        ----------
        qs : sequence of float
            Quantile levels in (0, 1).

        Returns
        -------
        dict of str to torch.Tensor
            Site -> tensor with a leading dimension ``len(qs)``.  Closed form for the
            Gaussian autoguides (``AutoGuide.quantiles``), else from 4,000 draws.
        """
        qs = [float(q) for q in qs]
        if not qs or any(not 0.0 < q < 1.0 for q in qs):
            raise ValueError(f"qs must be a non-empty sequence of levels in (0, 1), got {qs}")
        quantiles = getattr(self.guide, "quantiles", None)
        if quantiles is not None:
            with self.scope(), torch.no_grad():
                out = quantiles(qs, *self.args, **self.kwargs)
            return {k: torch.as_tensor(v).detach() for k, v in out.items()}
        draws = self.sample(4000, seed=self.seed)
        level = torch.tensor(qs, dtype=torch.float64)
        return {
            k: torch.quantile(v.double(), level.to(v.device), dim=0).to(v.dtype)
            for k, v in draws.items()
        }

    def predictive(
        self, n: int, *args, seed: int | None = None, **kwargs
    ) -> dict[str, torch.Tensor]:
        """Posterior predictive draws: the model run on each posterior draw.

        Parameters
        ----------
        n : int
            Number of draws.
        *args, **kwargs
            Model arguments for the prediction (for instance new inputs with ``y=None``);
            the fit's own arguments when none are given.
        seed : int, optional
            Seed for the draws.

        Returns
        -------
        dict of str to torch.Tensor
            Every sample site of the model (observed ones included) with a leading
            dimension ``n``.  For a model that subsamples a plate
            (``subsample_size``), the sites of the plate cover its full data, as in
            ``to_arviz``: the model is run on index chunks that cover the plate
            (:func:`pyrovi._plates.subsample_chunks`) at the same posterior draws, and
            the chunks are joined along the plate.  When a latent site lives in that plate
            (its draws cover one subsample only), one random subsample instead, of the
            plate's subsample size.

        Raises
        ------
        ModelError
            For a model that subsamples several plates, or a sequential one.
        """
        check_positive("n", n, integer=True)
        if not args and not kwargs:
            args, kwargs = self.args, self.kwargs

        def draws(model):
            return vectorize_else_loop(
                lambda vectorized: predictive_draws(
                    model, args, kwargs, latents, max_plate_nesting=self.max_plate_nesting,
                    vectorized=vectorized,
                ),
                self.vectorized and not self.enumerated_sites,
            )

        with seeded_draws(seed, self.device), self.scope(), torch.no_grad():
            plan = subsample_chunks(self.model, args, kwargs)
            latents = self.sample(n)
            if plan is None or any(k in plan.axes for k in self.latent_sites):
                return draws(self.model)
            parts = [
                draws(poutine.condition(self.model, data={plan.plate: idx}))
                for idx, _ in plan.chunks
            ]
            return plan.assemble(parts)

    def linear_response_covariance(self) -> torch.Tensor:
        r"""The linear-response covariance of the latents at DADVI's optimum, ``(D, D)``.

        The sensitivity of q's mean to a linear perturbation of the log density, from the
        Hessian of DADVI's fixed-draw objective (Giordano, Ingram & Broderick 2024): it
        corrects the variances a ``meanfield`` fit underestimates, and equals the exact
        posterior covariance on a linear-Gaussian model.  It is in the *unconstrained* space
        of the guide's latents, flattened and concatenated in the order of
        :attr:`guide_sites`, as the autoguides' ``loc``.  Cost: one dense Hessian over q's
        parameters (``2 D`` for ``meanfield``), computed on call.

        Raises
        ------
        ValueError
            When the fit was not done by DADVI (``backend != "dadvi"``).
        """
        if self.dadvi is None:
            raise ValueError(
                f"linear_response_covariance needs a fit by DADVI, and this one ran on "
                f"backend={self.backend!r}; fit with pyrovi.VI(..., method='dadvi')"
            )
        from pyrovi.fast import dadvi as dadvi_module

        with self.scope():
            log_density = dadvi_module.result_log_density(
                self.model, self.args, self.kwargs, self.guide.prototype_trace,
                max_plate_nesting=self.max_plate_nesting, dtype=self.dadvi.params.loc.dtype,
            )
            return dadvi_module.linear_response_covariance(
                log_density, self.dadvi, dtype=self.dadvi.params.loc.dtype
            )

    def param(self, name: str) -> torch.Tensor:
        """A fitted parameter by its Pyro name (see ``params`` for the names)."""
        if name not in self.params:
            raise KeyError(f"no parameter {name!r}; the fitted ones are {sorted(self.params)}")
        return self.params[name]
