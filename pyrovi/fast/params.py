"""The autoguide's parameters as one flat vector, and back.

The compiled step optimizes the *same unconstrained tensors* that Pyro's SVI would (those in
the active parameter store), concatenated into one vector ``theta`` so that the step is a
few fused kernels; :meth:`GuideParams.write` copies a fitted ``theta`` back into the store,
after which the autoguide, ``VIResult`` and every later method see the fitted values.

Which tensors, in which order, and how each is constrained is Pyro's choice, read from the
autoguide itself (its attributes and class constraints), never re-derived; the family's math
object lists them (``param_specs``) and maps ``theta`` to its :class:`QParams`
(``constrained``), see :mod:`pyrovi.families`.
"""

from __future__ import annotations

import dataclasses
import operator

import pyro
import torch
from torch.distributions import constraints, transform_to

from pyrovi.families import REGISTRY, Family, FamilyMath, QParams
from pyrovi.fast.potential import FlatLayout

__all__ = ["Piece", "GuideParams", "guide_params"]


@dataclasses.dataclass(frozen=True)
class Piece:
    """One Pyro parameter inside ``theta``.

    Attributes
    ----------
    path : str
        Attribute path on the autoguide (``"locs.w"``, ``"scale_tril"``).
    leaf : Tensor
        The unconstrained tensor in the active Pyro parameter store.
    constraint : torch.distributions.constraints.Constraint
        The parameter's constraint; its value is ``transform_to(constraint)(leaf)``.
    offset, size : int
        Where the flattened leaf sits in ``theta``.
    """

    path: str
    leaf: torch.Tensor
    constraint: object
    offset: int
    size: int

    def part(self, theta: torch.Tensor) -> torch.Tensor:
        """This piece's slice of ``theta``, reshaped like the leaf."""
        return theta[self.offset : self.offset + self.size].view(self.leaf.shape)

    def value(self, theta: torch.Tensor) -> torch.Tensor:
        """The constrained value of this piece at ``theta``."""
        return transform_to(self.constraint)(self.part(theta))


@dataclasses.dataclass(frozen=True)
class GuideParams:
    """The flat parameter vector of one autoguide.

    Attributes
    ----------
    family : FamilyMath
        The family's math (:class:`~pyrovi.families.MeanField`, ...); ``family.name`` is
        its registry name.
    layout : FlatLayout
        The latent sites' layout in the unconstrained space of the model's potential.
    pieces : tuple of Piece
        The parameters, in ``theta`` order.
    """

    family: FamilyMath
    layout: FlatLayout
    pieces: tuple[Piece, ...]

    @property
    def rank(self) -> int:
        """The low-rank family's rank (0 otherwise)."""
        return self.family.rank

    @property
    def size(self) -> int:
        """Length of ``theta``."""
        return sum(p.size for p in self.pieces)

    def read(self) -> torch.Tensor:
        """``theta`` from the current values of the store's unconstrained tensors."""
        return torch.cat([p.leaf.detach().reshape(-1) for p in self.pieces])

    @torch.no_grad()
    def write(self, theta: torch.Tensor) -> None:
        """Copy ``theta`` into the store's unconstrained tensors, in place."""
        for p in self.pieces:
            p.leaf.copy_(p.part(theta.detach()))

    def constrained(self, theta: torch.Tensor) -> QParams:
        """The family's :class:`QParams` at ``theta``, flat over the potential's layout."""
        return self.family.constrained(self.pieces, theta)


def _leaf(guide, path: str) -> torch.Tensor:
    """The unconstrained store tensor behind the autoguide attribute ``path``."""
    value = operator.attrgetter(path)(guide)
    unconstrained = getattr(value, "unconstrained", None)
    return unconstrained() if unconstrained is not None else value


def guide_params(
    family: Family | FamilyMath | str, guide, layout: FlatLayout
) -> GuideParams:
    """Collect ``guide``'s parameters (already created in the active store) in ``theta``
    order.

    ``family`` is the guide's :class:`~pyrovi.families.Family` record, its math object, or
    (for older callers) its registry name.

    Raises
    ------
    ValueError
        For a family the compiled path does not take, when the store holds parameters the
        guide does not account for (a model with ``pyro.param`` sites), or when the
        parameters mix dtypes or devices.
    """
    if isinstance(family, str):
        record = REGISTRY.get(family)
        if record is None:
            raise ValueError(f"family {family!r} has no flat parameterization")
        family = record
    math = family.math_for(guide) if isinstance(family, Family) else family
    specs = math.param_specs(guide, [s.name for s in layout.slots])
    pieces = []
    offset = 0
    for path, constraint in specs:
        leaf = _leaf(guide, path)
        size = leaf.numel()
        pieces.append(Piece(path, leaf, constraint or constraints.real, offset, size))
        offset += size
    store_leaves = {id(t) for _, t in pyro.get_param_store().named_parameters()}
    ours = {id(p.leaf) for p in pieces}
    if store_leaves != ours:
        raise ValueError(
            "the parameter store holds parameters other than the guide's (does the model "
            "call pyro.param?)"
        )
    if len({(p.leaf.dtype, p.leaf.device) for p in pieces}) != 1:
        raise ValueError("the guide's parameters mix dtypes or devices")
    return GuideParams(math, layout, tuple(pieces))
