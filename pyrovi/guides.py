"""Guide families by name, built on Pyro's autoguides.

==============  ==========================================  ===============================
family          q(z) in unconstrained space                 Pyro class
==============  ==========================================  ===============================
``meanfield``   N(mu, diag(sigma^2)), fully factorized       ``AutoNormal``
``lowrank:K``   N(mu, W W^T + diag(d)), rank K               ``AutoLowRankMultivariateNormal``
``fullrank``    N(mu, R R^T), R lower-triangular Cholesky    ``AutoMultivariateNormal``
``delta``       point mass at the MAP                       ``AutoDelta``
``laplace``     N(MAP, -H^{-1}) at the MAP                   ``AutoLaplaceApproximation``
==============  ==========================================  ===============================

A Pyro ``AutoGuide`` class or instance, or a user-written guide function, is accepted too.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Sequence

import pyro.poutine as poutine
from pyro.infer import autoguide
from pyro.infer.autoguide import AutoGuide

__all__ = ["GuideSpec", "FAMILIES", "parse_guide", "build_guide"]

FAMILIES = ("meanfield", "lowrank", "fullrank", "delta", "laplace")

#: Initial scale of the Gaussian families in unconstrained space.  Pyro's default (0.1) is
#: kept: it starts the fit near the initial location without collapsing the entropy.
INIT_SCALE = 0.1


@dataclasses.dataclass(frozen=True)
class GuideSpec:
    """A parsed ``guide`` argument.

    Attributes
    ----------
    family : str
        ``"meanfield"``, ``"lowrank"``, ``"fullrank"``, ``"delta"``, ``"laplace"``,
        ``"autoguide"`` (a user-supplied AutoGuide class or instance) or ``"custom"`` (a
        user-written guide function).
    rank : int or None
        The rank of the ``lowrank`` family (None: Pyro's default, about sqrt(dim)).
    obj : object
        The AutoGuide class, instance or guide function for ``autoguide`` / ``custom``.
    """

    family: str
    rank: int | None = None
    obj: object = None

    @property
    def name(self) -> str:
        """The family's display name (``lowrank:K`` keeps its rank)."""
        if self.family == "lowrank" and self.rank is not None:
            return f"lowrank:{self.rank}"
        if self.family == "autoguide":
            cls = self.obj if inspect.isclass(self.obj) else type(self.obj)
            return cls.__name__
        if self.family == "custom":
            return getattr(self.obj, "__name__", "custom")
        return self.family

    @property
    def is_auto(self) -> bool:
        """Whether pyrovi builds (or was given) an AutoGuide."""
        return self.family != "custom"


def parse_guide(guide: object) -> GuideSpec:
    """Check and parse the ``guide`` argument of :class:`pyrovi.VI`.

    Raises
    ------
    ValueError
        For an unknown family name or a malformed ``lowrank:K``.
    TypeError
        For anything that is neither a name, an AutoGuide nor a callable.
    """
    if isinstance(guide, str):
        name = guide.strip().lower()
        if name.startswith("lowrank"):
            rest = name[len("lowrank") :]
            if rest == "":
                return GuideSpec("lowrank")
            if rest.startswith(":") and rest[1:].isdigit() and int(rest[1:]) > 0:
                return GuideSpec("lowrank", rank=int(rest[1:]))
            raise ValueError(
                f"guide={guide!r}: the low-rank family is written 'lowrank' or 'lowrank:K' "
                "with a positive integer rank K, e.g. 'lowrank:5'"
            )
        if name in FAMILIES:
            return GuideSpec(name)
        raise ValueError(
            f"guide={guide!r} is not a known guide family; expected one of "
            f"{', '.join(repr(f) for f in FAMILIES)} (or 'lowrank:K'), a Pyro AutoGuide class "
            "or instance, or a guide function"
        )
    if inspect.isclass(guide):
        if issubclass(guide, AutoGuide):
            return GuideSpec("autoguide", obj=guide)
        raise TypeError(
            f"guide={guide.__name__} is a class but not a Pyro AutoGuide; pass a family name, "
            "an AutoGuide class or instance, or a guide function"
        )
    if isinstance(guide, AutoGuide):
        return GuideSpec("autoguide", obj=guide)
    if callable(guide):
        return GuideSpec("custom", obj=guide)
    raise TypeError(
        f"guide must be a family name ({', '.join(FAMILIES)}), a Pyro AutoGuide class or "
        f"instance, or a guide function; got {type(guide).__name__}"
    )


def build_guide(spec: GuideSpec, model: Callable, hide: Sequence[str] = ()) -> Callable:
    """Build the guide for ``model``; ``hide`` lists sites the guide must not cover
    (the enumerated discrete latents, which the ELBO sums out exactly)."""
    if spec.family == "custom":
        return spec.obj
    target = poutine.block(model, hide=list(hide)) if hide else model
    if spec.family == "meanfield":
        return autoguide.AutoNormal(target, init_scale=INIT_SCALE)
    if spec.family == "fullrank":
        return autoguide.AutoMultivariateNormal(target, init_scale=INIT_SCALE)
    if spec.family == "lowrank":
        return autoguide.AutoLowRankMultivariateNormal(
            target, rank=spec.rank, init_scale=INIT_SCALE
        )
    if spec.family == "delta":
        return autoguide.AutoDelta(target)
    if spec.family == "laplace":
        return autoguide.AutoLaplaceApproximation(target)
    # a user-supplied AutoGuide class or instance
    if inspect.isclass(spec.obj):
        return spec.obj(target)
    return spec.obj
