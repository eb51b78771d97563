r"""The guide families: one :class:`Family` record each, in one registry.

A record says everything the rest of pyrovi needs to know about a family: which Pyro
autoguide it builds and how, whether the compiled path takes it (and with which math),
whether the fitted q has a density, whether it is trained as a MAP, whether it takes a rank,
and what to do after training.  Adding a family is one record in :data:`REGISTRY` plus, for
the compiled path, one math class in :mod:`pyrovi.family_math`.

==============  ==========================================  ===============================
family          q(z) in unconstrained space                 Pyro class
==============  ==========================================  ===============================
``meanfield``   N(mu, diag(sigma^2)), fully factorized       ``AutoNormal``
``lowrank:K``   N(mu, W W^T + diag(d)), rank K               ``AutoLowRankMultivariateNormal``
``fullrank``    N(mu, R R^T), R lower-triangular Cholesky    ``AutoMultivariateNormal``
``delta``       point mass at the MAP                       ``AutoDelta``
``laplace``     N(MAP, -H^{-1}) at the MAP                   ``AutoLaplaceApproximation``
==============  ==========================================  ===============================

The compiled path's math (:class:`MeanField`, :class:`FullRank`, :class:`LowRank`,
:class:`Delta`, :class:`QParams`, :func:`gaussian_math`) lives in
:mod:`pyrovi.family_math` and is re-exported here.
"""

from __future__ import annotations

import dataclasses
import math
import types
from collections.abc import Callable, Mapping

import pyro
import pyro.poutine as poutine
import torch
from pyro.infer import autoguide
from pyro.infer.autoguide import AutoGuide
from torch.distributions import biject_to

from pyrovi.family_math import (  # noqa: F401 - re-exported: the records' math
    GAUSSIAN,
    INIT_SCALE,
    Coords,
    Delta,
    FamilyMath,
    FullRank,
    LowRank,
    MeanField,
    QParams,
    gaussian_math,
    gaussian_math_of_q,
)

__all__ = [
    "Family",
    "REGISTRY",
    "FAMILIES",
    "COMPILED",
    "INIT_SCALE",
    "lookup",
    "QParams",
    "Coords",
    "FamilyMath",
    "MeanField",
    "FullRank",
    "LowRank",
    "Delta",
    "GAUSSIAN",
    "gaussian_math",
    "setup_outside_plates",
]


def _blocked_setup_prototype(self: AutoGuide, *args, **kwargs) -> None:
    with poutine.block():
        type(self)._setup_prototype(self, *args, **kwargs)


def setup_outside_plates(guide: AutoGuide) -> AutoGuide:
    """Make ``guide`` set up its prototype and parameters outside any enclosing plate.

    An autoguide creates its parameters the first time it runs.  When that first run is
    inside a plate (pyrovi's particle plate, while it checks whether the model broadcasts),
    Pyro checks each new ``pyro.param`` against the plate, and a batched latent outside any
    model plate (``eta`` of shape (8,) in eight schools) fails the check after the prototype
    is recorded but before its parameters exist, which leaves the guide half-built (no
    ``locs.eta``) for every later run.  Setting up under :func:`poutine.block` keeps the
    parameters free of enclosing plates, as they are when the guide first runs outside one.
    (Bound with :class:`types.MethodType`, so a :func:`copy.deepcopy` rebinds to the copy.)
    """
    guide.__dict__["_setup_prototype"] = types.MethodType(_blocked_setup_prototype, guide)
    return guide


def _identity_finalize(
    guide: AutoGuide, args: tuple, kwargs: Mapping
) -> tuple[AutoGuide, dict[str, torch.Tensor]]:
    return guide, {}


def _laplace_finalize(
    guide: AutoGuide, args: tuple, kwargs: Mapping
) -> tuple[AutoGuide, dict[str, torch.Tensor]]:
    """The Gaussian at the MAP with the inverse Hessian as covariance, and its parameters.

    Pyro's ``AutoLaplaceApproximation.laplace_approximation``, with the Hessian checked
    first: a singular or indefinite Hessian (collinear features, a direction the data do not
    determine, a MAP at a saddle) is refused with a :class:`~pyrovi.errors.ModelError` that
    names the sites of its flattest direction, instead of torch's ``linalg`` error or a NaN
    scale.  The error carries the trained MAP (``err.map_values``, constrained, per site,
    and ``err.map_guide``, an ``AutoDelta`` there, from which the fit puts the MAP's result
    in ``err.result``).

    Raises
    ------
    ModelError
        When the Hessian at the MAP is not finite or not positive definite.
    """
    from pyro.ops.hessian import hessian

    from pyrovi.errors import ModelError

    guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
    model_trace = poutine.trace(poutine.replay(guide.model, trace=guide_trace)).get_trace(
        *args, **kwargs
    )
    loss = guide_trace.log_prob_sum() - model_trace.log_prob_sum()
    H = hessian(loss, guide.loc)
    with torch.no_grad():
        H = H.detach()
        problem = _hessian_problem(H)
        if problem is not None:
            what, direction = problem
            sites = _sites_of_direction(guide, direction)
            named = ", ".join(f"{name!r}{elements}" for name, elements in sites)
            err = ModelError(
                f"laplace: the Hessian of -log p(x, z) at the MAP is {what} in the "
                f"direction of {named}, so the MAP is not a strict maximum there and "
                "N(MAP, H^-1) does not exist (collinear features, a parameter the data do "
                "not determine, or a saddle). Reparameterize the model (drop collinear "
                "columns, give the site a proper prior, a non-centred or logit "
                "parameterization), or use another family ('fullrank', 'meanfield'; "
                "'delta' for the MAP alone).",
                site=sites[0][0],
            )
            err.map_values = {  # the trained MAP, constrained, per site
                site["name"]: biject_to(site["fn"].support)(value).detach().clone()
                for site, value in guide._unpack_latent(guide.loc.detach())
            }
            # the MAP as a point-mass guide, for the fit's result on the error (err.result)
            err.map_guide = _point_mass_at(guide.model, err.map_values, args, kwargs)
            raise err
        loc = guide.loc.detach()
        cov = torch.cholesky_inverse(torch.linalg.cholesky(H))
        scale = cov.diagonal().sqrt()
        cov = cov / scale[:, None] / scale[None, :]
        scale_tril = torch.linalg.cholesky(cov)
    gaussian = autoguide.AutoMultivariateNormal(guide.model)
    gaussian._setup_prototype(*args, **kwargs)
    del gaussian.loc
    del gaussian.scale
    del gaussian.scale_tril
    gaussian.register_buffer("loc", loc)
    gaussian.register_buffer("scale", scale)
    gaussian.register_buffer("scale_tril", scale_tril)
    extra = {
        "laplace.loc": loc.clone(),
        "laplace.scale_tril": (scale[:, None] * scale_tril).clone(),
    }
    return gaussian, extra


def _point_mass_at(
    model: Callable, values: Mapping[str, torch.Tensor], args: tuple, kwargs: Mapping
) -> AutoGuide:
    """An ``AutoDelta`` of ``model`` at ``values`` (constrained, per site), its parameters
    in the active parameter store.  The values are written to the store after the guide is
    set up (an ``init_loc_fn`` would lose to the one ``model`` is already wrapped in)."""
    point = setup_outside_plates(autoguide.AutoDelta(model))
    with torch.no_grad():
        poutine.trace(point).get_trace(*args, **kwargs)
        store = pyro.get_param_store()
        for name, value in values.items():
            store[f"{point._pyro_name}.{name}"] = value.clone()
    return point


def _hessian_problem(H: torch.Tensor) -> tuple[str, torch.Tensor] | None:
    """None for a finite positive-definite Hessian; else what is wrong and the direction
    (a vector over the flat latent) where it is."""
    finite = torch.isfinite(H)
    if not bool(finite.all()):
        return "not finite", (~finite).any(0).to(H.dtype)
    H = 0.5 * (H + H.T)
    _, info = torch.linalg.cholesky_ex(H)
    evals, evecs = torch.linalg.eigh(H.double())
    tol = evals.abs().max().clamp_min(1.0) * torch.finfo(H.dtype).eps * H.shape[0] * 10
    if int(info) == 0 and bool(evals[0] > tol):
        return None
    if bool(evals[0] > -tol):
        return "singular", evecs[:, 0]
    what = f"not positive definite (eigenvalue {float(evals[0]):.3g})"
    return what, evecs[:, 0]


def _sites_of_direction(guide: AutoGuide, direction: torch.Tensor) -> list[tuple[str, str]]:
    """``(site, its elements)`` for the latent sites where ``direction`` has its largest
    components (largest first), through the autoguide's layout of the flat latent."""
    weight = direction.abs()
    big = weight >= 0.3 * weight.max()
    found, pos = [], 0
    for name, _ in guide.prototype_trace.iter_stochastic_nodes():
        shape = tuple(guide._unconstrained_shapes[name])
        size = math.prod(shape)
        hits = big[pos : pos + size].nonzero().flatten().tolist()
        if hits:
            hits.sort(key=lambda i: -float(weight[pos + i]))
            top = float(weight[pos + hits[0]])
            elements = "" if size == 1 else " (element " + ", ".join(
                str(list(_unravel(i, shape))) for i in hits[:3]
            ) + (", ..." if len(hits) > 3 else "") + ")"
            found.append((top, name, elements))
        pos += size
    found.sort(key=lambda t: -t[0])
    return [(name, elements) for _, name, elements in found] or [("<unknown>", "")]


def _unravel(index: int, shape) -> tuple:
    out = []
    for size in reversed(tuple(shape)):
        out.append(index % size)
        index //= size
    return tuple(reversed(out))


@dataclasses.dataclass(frozen=True)
class Family:
    """One guide family: what it builds and what the rest of pyrovi needs to know.

    Attributes
    ----------
    name : str
        The registry name, as the user writes it (``"lowrank"``; ``"lowrank:K"`` with a rank).
    title : str
        The family in words, for messages (``"low-rank"``).
    autoguide : type
        The Pyro ``AutoGuide`` class it builds.
    init_scale : float or None
        The ``init_scale`` passed to the autoguide (None: the class takes none).
    takes_rank : bool
        Whether the family is written ``name:K`` and ``K`` is passed as ``rank=``.
    has_density : bool
        Whether the fitted q (after :meth:`finalize`) has a density; False for a point mass,
        whose ELBO is -inf and whose importance weights are undefined.
    map_trained : bool
        Whether training maximizes the log joint at a point (the trace holds log p(x, z) at
        the MAP, not an ELBO).
    dadvi : bool
        Whether deterministic ADVI (:mod:`pyrovi.fast.dadvi`) fits the family.
    dense_covariance : bool
        Whether q's covariance is a dense D x D matrix (its fit costs O(D^3) per step).
    gaussian : bool
        Whether the fitted q is a Gaussian in the unconstrained space (so its marginals
        satisfy Talagrand's inequality; see :mod:`pyrovi.diagnostics.accuracy`).
    math : type or None
        The compiled path's math class (see :class:`FamilyMath`); None: the compiled path
        does not take the family.
    not_compiled : str
        Why the compiled path does not take it (empty when it does).
    finalizer : callable
        ``(guide, args, kwargs) -> (guide, extra params)``, run once after training.
    """

    name: str
    title: str
    autoguide: type[AutoGuide]
    init_scale: float | None = INIT_SCALE
    takes_rank: bool = False
    has_density: bool = True
    map_trained: bool = False
    gaussian: bool = True
    dadvi: bool = False
    dense_covariance: bool = False
    math: type | None = None
    not_compiled: str = ""
    finalizer: Callable = _identity_finalize

    @property
    def compiled(self) -> bool:
        """Whether the compiled fast path takes the family."""
        return self.math is not None

    def build(self, model: Callable, rank: int | None = None) -> AutoGuide:
        """The family's autoguide for ``model`` (``rank``: for a family that takes one; None
        leaves Pyro's default)."""
        options: dict[str, object] = {}
        if self.takes_rank:
            options["rank"] = rank
        if self.init_scale is not None:
            options["init_scale"] = self.init_scale
        return setup_outside_plates(self.autoguide(model, **options))

    def math_for(self, guide: AutoGuide) -> FamilyMath:
        """The compiled path's math for this trained-or-initialized ``guide``.

        Raises
        ------
        ValueError
            For a family the compiled path does not take.
        """
        if self.math is None:
            raise ValueError(f"family {self.name!r} has no flat parameterization")
        return self.math.from_guide(guide)

    def finalize(
        self, guide: AutoGuide, args: tuple, kwargs: Mapping
    ) -> tuple[AutoGuide, dict[str, torch.Tensor]]:
        """The guide to report after training and the parameters it adds (``laplace``: the
        Gaussian at the MAP; the others: ``guide`` itself and none)."""
        return self.finalizer(guide, args, kwargs)

    def display_name(self, rank: int | None = None) -> str:
        """``name``, or ``name:K`` for a family that takes a rank and was given one."""
        return f"{self.name}:{rank}" if self.takes_rank and rank is not None else self.name


def _registry(*families: Family) -> Mapping[str, Family]:
    names = [f.name for f in families]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate family names in {names}")
    return types.MappingProxyType({f.name: f for f in families})


#: Every family, by name, in the order of the documentation.
REGISTRY: Mapping[str, Family] = _registry(
    Family("meanfield", "mean-field", autoguide.AutoNormal, dadvi=True, math=MeanField),
    Family(
        "lowrank", "low-rank", autoguide.AutoLowRankMultivariateNormal, takes_rank=True,
        dadvi=True, math=LowRank,
    ),
    Family(
        "fullrank", "full-rank", autoguide.AutoMultivariateNormal, dadvi=True,
        dense_covariance=True, math=FullRank,
    ),
    Family(
        "delta", "point-mass (MAP)", autoguide.AutoDelta, init_scale=None, has_density=False,
        map_trained=True, gaussian=False, math=Delta,
    ),
    Family(
        "laplace", "Laplace", autoguide.AutoLaplaceApproximation, init_scale=None,
        map_trained=True, not_compiled="its Hessian step runs through Pyro",
        finalizer=_laplace_finalize,
    ),
)  # fmt: skip

#: The family names.
FAMILIES: tuple[str, ...] = tuple(REGISTRY)

#: The names of the families the compiled path takes.
COMPILED: tuple[str, ...] = tuple(n for n, f in REGISTRY.items() if f.compiled)


def lookup(name: str) -> Family | None:
    """The family of a name as written by a user or reported in a result (case-insensitive;
    ``"lowrank:3"`` is the ``lowrank`` family); None for any other name (an AutoGuide class
    name, a guide function's name, ``"em"``)."""
    base, colon, rank = name.strip().lower().partition(":")
    family = REGISTRY.get(base)
    if family is None or (colon and not (family.takes_rank and rank.isdigit())):
        return None
    return family
