"""The ``guide`` argument: a family name, a Pyro AutoGuide, or a guide function.

:func:`parse_guide` checks the argument and returns a :class:`GuideSpec`;
:func:`build_guide` builds the guide for a model.  The families themselves -- what each
builds and everything the rest of pyrovi asks about it -- are the records of
:mod:`pyrovi.families`.  A Pyro ``AutoGuide`` class or instance, or a user-written guide
function, is accepted too.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
from collections.abc import Callable, Mapping, Sequence

import pyro.poutine as poutine
import torch
from pyro.infer.autoguide import AutoGuide

from pyrovi.families import (
    COMPILED,
    FAMILIES,
    INIT_SCALE,
    REGISTRY,
    Family,
    setup_outside_plates,
)

__all__ = ["GuideSpec", "FAMILIES", "INIT_SCALE", "parse_guide", "build_guide"]

#: The autoguide classes that, given by the user (so never finalized), are point masses
#: trained as a MAP: those of the registered MAP-trained families (AutoDelta, and
#: AutoLaplaceApproximation, whose posterior before ``laplace_approximation`` is a Delta).
_POINT_MASS_AUTOGUIDES = tuple(f.autoguide for f in REGISTRY.values() if f.map_trained)


@dataclasses.dataclass(frozen=True)
class GuideSpec:
    """A parsed ``guide`` argument: a registered family, or the user's own guide.

    Attributes
    ----------
    record : Family or None
        The registered family (None for a user AutoGuide or guide function).
    rank : int or None
        The rank of a family that takes one (None: Pyro's default, about sqrt(dim)).
    obj : object
        The AutoGuide class or instance, or the guide function, the user gave (None for a
        registered family).
    """

    record: Family | None = None
    rank: int | None = None
    obj: object = None

    @property
    def family(self) -> str:
        """The registry name, ``"autoguide"`` (a user AutoGuide class or instance) or
        ``"custom"`` (a guide function)."""
        if self.record is not None:
            return self.record.name
        return "autoguide" if self.is_user_autoguide else "custom"

    @property
    def name(self) -> str:
        """The display name (``lowrank:K`` keeps its rank; an AutoGuide's class name; a guide
        function's name)."""
        if self.record is not None:
            return self.record.display_name(self.rank)
        if self.is_user_autoguide:
            return self._autoguide_class().__name__
        return getattr(self.obj, "__name__", "custom")

    @property
    def is_user_autoguide(self) -> bool:
        """Whether the user gave an AutoGuide class or instance."""
        return self.record is None and (
            isinstance(self.obj, AutoGuide)
            or (inspect.isclass(self.obj) and issubclass(self.obj, AutoGuide))
        )

    @property
    def is_custom(self) -> bool:
        """Whether the user gave a guide function (not an AutoGuide)."""
        return self.record is None and not self.is_user_autoguide

    @property
    def is_user_guide(self) -> bool:
        """Whether the guide is the user's own (an AutoGuide or a guide function), not a
        registered family."""
        return self.record is None

    @property
    def is_auto(self) -> bool:
        """Whether pyrovi builds (or was given) an AutoGuide."""
        return not self.is_custom

    @property
    def compiled(self) -> bool:
        """Whether the compiled fast path takes this guide (a registered family only)."""
        return self.record is not None and self.record.compiled

    @property
    def has_density(self) -> bool:
        """Whether the fitted q has a density (False for a point mass).  A guide function is
        taken to have one; a user AutoGuide has one unless it is an AutoDelta or an
        (unfinalized) AutoLaplaceApproximation."""
        if self.record is not None:
            return self.record.has_density
        return not (self.is_user_autoguide and self._is_point_mass_autoguide())

    @property
    def map_trained(self) -> bool:
        """Whether training maximizes the log joint at a point (delta, laplace, and a user
        AutoDelta or AutoLaplaceApproximation)."""
        if self.record is not None:
            return self.record.map_trained
        return self.is_user_autoguide and self._is_point_mass_autoguide()

    @property
    def not_compiled_reason(self) -> str | None:
        """None when the compiled path takes this guide, else why not, in plain words."""
        if self.compiled:
            return None
        if self.record is not None:
            what = f"the {self.record.name!r} family"
            if self.record.not_compiled:
                what += f" ({self.record.not_compiled})"
        elif self.is_user_autoguide:
            what = "an AutoGuide class or instance given by the user"
        else:
            what = "a user-written guide function"
        covered = ", ".join(COMPILED[:-1]) + " and " + COMPILED[-1]
        return f"the compiled path covers {covered}, not {what}"

    def finalize(
        self, guide: Callable, args: tuple, kwargs: Mapping
    ) -> tuple[Callable, dict[str, torch.Tensor]]:
        """The guide to report after training and the parameters it adds: the family's
        :meth:`~pyrovi.families.Family.finalize` (``laplace``: the Gaussian at the MAP);
        a user's guide as it is."""
        if self.record is None:
            return guide, {}
        return self.record.finalize(guide, args, kwargs)

    def _autoguide_class(self) -> type:
        return self.obj if inspect.isclass(self.obj) else type(self.obj)

    def _is_point_mass_autoguide(self) -> bool:
        return issubclass(self._autoguide_class(), _POINT_MASS_AUTOGUIDES)


def _parse_ranked(guide: str, name: str, family: Family) -> GuideSpec:
    """``name`` is ``family.name`` followed by nothing or ``:K``."""
    rest = name[len(family.name) :]
    if rest == "":
        return GuideSpec(family)
    if rest.startswith(":") and rest[1:].isdigit() and int(rest[1:]) > 0:
        return GuideSpec(family, rank=int(rest[1:]))
    raise ValueError(
        f"guide={guide!r}: the {family.title} family is written '{family.name}' or "
        f"'{family.name}:K' with a positive integer rank K, e.g. '{family.name}:5'"
    )


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
        for family in REGISTRY.values():
            if family.takes_rank and name.startswith(family.name):
                return _parse_ranked(guide, name, family)
        if name in REGISTRY:
            return GuideSpec(REGISTRY[name])
        ranked = [f.name for f in REGISTRY.values() if f.takes_rank]
        also = f" (or {', '.join(repr(f'{n}:K') for n in ranked)})" if ranked else ""
        raise ValueError(
            f"guide={guide!r} is not a known guide family; expected one of "
            f"{', '.join(repr(f) for f in FAMILIES)}{also}, a Pyro AutoGuide class "
            "or instance, or a guide function"
        )
    if inspect.isclass(guide):
        if issubclass(guide, AutoGuide):
            return GuideSpec(obj=guide)
        raise TypeError(
            f"guide={guide.__name__} is a class but not a Pyro AutoGuide; pass a family name, "
            "an AutoGuide class or instance, or a guide function"
        )
    if isinstance(guide, AutoGuide) or callable(guide):
        return GuideSpec(obj=guide)
    raise TypeError(
        f"guide must be a family name ({', '.join(FAMILIES)}), a Pyro AutoGuide class or "
        f"instance, or a guide function; got {type(guide).__name__}"
    )


def build_guide(spec: GuideSpec, model: Callable, hide: Sequence[str] = ()) -> Callable:
    """Build the guide for ``model``; ``hide`` lists sites the guide must not cover
    (the enumerated discrete latents, which the ELBO sums out exactly)."""
    if spec.is_custom:
        return spec.obj
    target = poutine.block(model, hide=list(hide)) if hide else model
    if spec.record is not None:
        return spec.record.build(target, spec.rank)
    if inspect.isclass(spec.obj):  # a user-supplied AutoGuide class
        return setup_outside_plates(spec.obj(target))
    return setup_outside_plates(_own_copy(spec.obj))


def _own_copy(guide: AutoGuide) -> AutoGuide:
    """A copy of a user's AutoGuide instance for one fit: an autoguide holds its parameters,
    so one instance given to two fits would be trained by both, and the second fit would move
    the first fit's results.  (Pyro's ``AutoGuide.__getstate__`` drops the model reference of
    the guide and of its sub-guides, on the original too: both get it back here.)"""
    parts = [m for _, m in guide.named_modules() if isinstance(m, AutoGuide)]
    saved = [(m._model, m.master) for m in parts]
    try:
        new = copy.deepcopy(guide)
    except Exception as err:
        name = type(guide).__name__
        raise TypeError(
            f"guide={name}(...) cannot be copied ({type(err).__name__}: {err}); pyrovi "
            "trains a copy of an AutoGuide instance so that fits do not share parameters. "
            f"Pass the class (guide={name}) or a family name instead."
        ) from err
    finally:
        for m, (model, master) in zip(parts, saved):
            m._model, m.master = model, master
    copies = [m for _, m in new.named_modules() if isinstance(m, AutoGuide)]
    for m, (model, _) in zip(copies, saved):
        m._model = model
    return new
