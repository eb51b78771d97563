"""The autoguide's parameters as one flat vector, and back.

The compiled step optimizes the *same unconstrained tensors* that Pyro's SVI would (those in
the active parameter store), concatenated into one vector ``theta`` so that the step is a
few fused kernels; :meth:`GuideParams.write` copies a fitted ``theta`` back into the store,
after which the autoguide, ``VIResult`` and every later method see the fitted values.

Which tensors, in which order, and how each is constrained is Pyro's choice, read from the
autoguide itself (its attributes and class constraints), never re-derived:

==============  ===========================================================================
family          pieces of ``theta`` (each flat, sites in the guide's prototype order)
==============  ===========================================================================
``meanfield``   ``locs.<site>`` for every site, then ``scales.<site>`` (softplus-positive)
``fullrank``    ``loc``, ``scale`` (softplus-positive), ``scale_tril`` (unit lower Cholesky)
``lowrank``     ``loc``, ``scale`` (softplus-positive), ``cov_factor``
``delta``       ``<site>`` for every site, each in the space of ``transform_to(support)``
==============  ===========================================================================
"""

from __future__ import annotations

import dataclasses
import operator

import pyro
import torch
from torch.distributions import biject_to, constraints, transform_to

from pyrovi.fast.families import QParams
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
    family : str
        ``"meanfield"``, ``"lowrank"``, ``"fullrank"`` or ``"delta"``.
    layout : FlatLayout
        The latent sites' layout in the unconstrained space of the model's potential.
    pieces : tuple of Piece
        The parameters, in ``theta`` order.
    rank : int
        The lowrank family's rank (0 otherwise).
    """

    family: str
    layout: FlatLayout
    pieces: tuple[Piece, ...]
    rank: int = 0
    supports: tuple = ()

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
        """The family's :class:`QParams` at ``theta``, flat over the potential's layout.

        For ``delta`` the point is mapped from each site's parameter space
        (``transform_to(support)``) to the potential's unconstrained space
        (``biject_to(support)``), which differ for a few supports (e.g. the simplex).
        """
        d = self.layout.dim
        if self.family == "meanfield":
            # locs then scales, each in layout order; the scale transform is elementwise
            scale_constraint = self.pieces[-1].constraint
            return QParams(theta[:d], transform_to(scale_constraint)(theta[d : 2 * d]))
        if self.family in ("fullrank", "lowrank"):
            loc, scale, factor = (p.value(theta) for p in self.pieces)
            return QParams(loc, scale, factor)
        if self.family == "delta":
            parts = []
            for p, support in zip(self.pieces, self.supports, strict=True):
                x = p.value(theta)
                parts.append(biject_to(support).inv(x).reshape(-1))
            return QParams(torch.cat(parts))
        raise ValueError(f"unknown family {self.family!r}")


def _leaf(guide, path: str) -> torch.Tensor:
    """The unconstrained store tensor behind the autoguide attribute ``path``."""
    value = operator.attrgetter(path)(guide)
    unconstrained = getattr(value, "unconstrained", None)
    return unconstrained() if unconstrained is not None else value


def guide_params(family: str, guide, layout: FlatLayout) -> GuideParams:
    """Collect ``guide``'s parameters (already created in the active store) in ``theta``
    order.

    Raises
    ------
    ValueError
        When the store holds parameters the guide does not account for (a model with
        ``pyro.param`` sites), or the parameters mix dtypes or devices.
    """
    sites = [s.name for s in layout.slots]
    rank = 0
    supports: tuple = ()
    if family == "meanfield":
        specs = [(f"locs.{n}", None) for n in sites]
        specs += [(f"scales.{n}", guide.scale_constraint) for n in sites]
        if transform_to(guide.scale_constraint).codomain.event_dim != 0:
            raise ValueError("the guide's scale constraint is not elementwise")
    elif family == "fullrank":
        specs = [
            ("loc", None),
            ("scale", guide.scale_constraint),
            ("scale_tril", guide.scale_tril_constraint),
        ]
    elif family == "lowrank":
        specs = [("loc", None), ("scale", guide.scale_constraint), ("cov_factor", None)]
        rank = int(guide.rank)
    elif family == "delta":
        nodes = guide.prototype_trace.nodes
        supports = tuple(nodes[n]["fn"].support for n in sites)
        specs = list(zip(sites, supports, strict=True))
    else:
        raise ValueError(f"family {family!r} has no flat parameterization")
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
    return GuideParams(family, layout, tuple(pieces), rank, supports)
