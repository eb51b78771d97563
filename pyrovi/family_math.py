r"""The guide families' math on the compiled path: pure tensors, no Pyro.

:class:`MeanField`, :class:`FullRank`, :class:`LowRank` and :class:`Delta` are the pure
Gaussian math of a family over one flat unconstrained vector: constrained parameters (a
:class:`QParams`) and tensors in, tensors out; nothing there runs Pyro.  The
parameterizations are Pyro's, so that fitted values go straight back into the autoguides:

==============  ===================================================  ============================
family          q(u) = N(loc, Sigma)                                  ``param_specs`` (theta order)
==============  ===================================================  ============================
``meanfield``   Sigma = diag(scale^2)                                 ``locs.<site>`` for every
                                                                      site, then ``scales.<site>``
``fullrank``    Sigma = R R^T, R = diag(scale) L, L unit lower-tri.   ``loc``, ``scale``,
                                                                      ``scale_tril``
``lowrank``     Sigma = diag(scale) (W W^T + I) diag(scale), W: DxK   ``loc``, ``scale``,
                                                                      ``cov_factor``
``delta``       a point mass at ``loc``                               ``<site>`` for every site
==============  ===================================================  ============================

Draws are :math:`u = \mathrm{loc} + A \epsilon` with standard-normal noise of shape
``(P, noise_dim)``, vectorized over the ``P`` particles; the entropy is closed-form,
:math:`H = \tfrac{D}{2}(1 + \log 2\pi) + \tfrac12 \log\det\Sigma`.  For the low-rank family
the determinant uses the matrix determinant lemma,
:math:`\det(I_D + W W^T) = \det(I_K + W^T W)`, so the cost is :math:`O(D K^2)`.
(Written by hand because torch's distributions hold no batched draw-from-given-noise for
these parameterizations and their entropies would rebuild dense factors each step.)

The Gaussian classes also carry DADVI's optimization coordinates (``*_coords`` methods,
:class:`Coords`): ``theta = [loc, log scale, the factor's free entries]`` (fullrank's
factor as ``C = diag(scale) L``), its initial value, coordinates whitened by a reference q,
and ``log q`` of draws; :func:`gaussian_math` gives a Gaussian family's math by name.

The math lives here rather than in :mod:`pyrovi.fast`, whose package imports the VI driver:
the records (:mod:`pyrovi.families`) need it, and the driver needs the records.
"""

from __future__ import annotations

import dataclasses
import math
import types
from collections.abc import Mapping, Sequence
from typing import ClassVar, NamedTuple, Protocol

import torch
from pyro.infer.autoguide import AutoGuide
from torch.distributions import biject_to, transform_to

__all__ = [
    "INIT_SCALE",
    "QParams",
    "Coords",
    "FamilyMath",
    "MeanField",
    "FullRank",
    "LowRank",
    "Delta",
    "GAUSSIAN",
    "gaussian_math",
    "gaussian_math_of_q",
]

#: Initial scale of the Gaussian families in unconstrained space.  Pyro's default (0.1) is
#: kept: it starts the fit near the initial location without collapsing the entropy.
INIT_SCALE = 0.1

_HALF_LOG_2PI_E = 0.5 * (1.0 + math.log(2.0 * math.pi))


# ------------------------------------------------------------------------------ the math
class QParams(NamedTuple):
    """Constrained parameters of a family, flat over the ``D`` unconstrained latents.

    Attributes
    ----------
    loc : Tensor, shape (D,)
        Mean (the point itself for ``delta``).
    scale : Tensor, shape (D,), or None
        Positive per-coordinate scale (``None`` for ``delta``).
    factor : Tensor or None
        ``fullrank``: the unit lower-triangular ``L`` (D, D); ``lowrank``: the factor ``W``
        (D, K); ``None`` otherwise.
    """

    loc: torch.Tensor
    scale: torch.Tensor | None = None
    factor: torch.Tensor | None = None


class _Piece(Protocol):
    """What the math reads of a parameter piece (:class:`pyrovi.fast.params.Piece`)."""

    constraint: object
    offset: int
    size: int

    def value(self, theta: torch.Tensor) -> torch.Tensor: ...


class FamilyMath(Protocol):
    """The compiled path's view of a family (see the module docstring).

    Attributes
    ----------
    name : str
        The family's registry name.
    rank : int
        Columns of the low-rank factor (0 for the other families).
    jacobian : bool
        Whether the ELBO's log density includes the log-Jacobian of the map from the
        unconstrained space (False for a MAP point, found in the constrained space as
        ``AutoDelta`` does).
    """

    name: str
    rank: int
    jacobian: bool

    def noise_dim(self, dim: int) -> int: ...
    def draw(self, q: QParams, eps: torch.Tensor) -> torch.Tensor: ...
    def entropy(self, q: QParams) -> torch.Tensor: ...
    def covariance(self, q: QParams) -> torch.Tensor: ...
    def param_specs(self, guide: AutoGuide, sites: Sequence[str]) -> list[tuple[str, object]]: ...
    def constrained(self, pieces: Sequence[_Piece], theta: torch.Tensor) -> QParams: ...


def _gaussian_entropy(q: QParams) -> torch.Tensor:
    """:math:`\\tfrac{D}{2}(1 + \\log 2\\pi) + \\sum \\log \\mathrm{scale}`: the entropy when
    the rest of the factor has unit determinant."""
    return q.loc.shape[-1] * _HALF_LOG_2PI_E + q.scale.log().sum(-1)


class Coords(NamedTuple):
    """A Gaussian family's optimization coordinates (DADVI's flat ``theta``), unpacked.

    ``theta = [loc (D), log_scale (D), the factor's free entries]``; for fullrank
    ``factor`` is ``C = diag(scale) L`` (lower, positive diagonal ``exp(log_scale)``) rather
    than ``L``, so that coordinates relative to a reference q are a matrix product
    (:meth:`_GaussianCoords.relative_coords`).
    """

    loc: torch.Tensor
    log_scale: torch.Tensor  # log scale (meanfield, lowrank) or log diag C (fullrank)
    factor: torch.Tensor | None  # None (meanfield), C (fullrank) or W (lowrank)


class _GaussianCoords:
    """The flat optimization coordinates of a Gaussian family (used by DADVI): how q's
    parameters lie in one vector, the initial vector, coordinates whitened by a reference q,
    and log q of draws.  A family supplies its factor's part (``_factor_*``)."""

    #: Whether a fixed-draw objective needs draws that span the noise space
    #: (``M / 2 >= noise_dim``); otherwise the factor collapses off their span and the
    #: objective is unbounded.
    needs_spanning_draws: ClassVar[bool] = False

    def num_coords(self, dim: int) -> int:
        """Length of ``theta``."""
        return 2 * dim + self._factor_size(dim)

    def unpack_coords(self, theta: torch.Tensor, dim: int) -> Coords:
        """``theta`` -> :class:`Coords`."""
        loc, log_scale = theta[:dim], theta[dim : 2 * dim]
        return Coords(loc, log_scale, self._factor_of(theta[2 * dim :], log_scale, dim))

    def pack_coords(self, c: Coords) -> torch.Tensor:
        """:class:`Coords` -> ``theta`` (the inverse of :meth:`unpack_coords`)."""
        parts = [c.loc, c.log_scale]
        if c.factor is not None:
            parts.append(self._factor_entries(c.factor))
        return torch.cat(parts)

    def q_of_coords(self, c: Coords) -> QParams:
        """The family's :class:`QParams` of coordinates."""
        scale = c.log_scale.exp()
        return QParams(c.loc, scale, self._q_factor(c.factor, scale))

    def coords_of_q(self, q: QParams) -> Coords:
        """:class:`Coords` of a :class:`QParams` (the inverse of :meth:`q_of_coords`)."""
        return Coords(q.loc, q.scale.log(), self._coords_factor(q))

    def relative_coords(self, z: torch.Tensor, ref: Coords, dim: int) -> Coords:
        """Coordinates from ``z`` relative to the reference ``ref`` (``z = 0`` gives ``ref``).

        The reference whitens the problem: ``loc = loc0 + A0 a`` and ``A = A0 B`` with
        ``A0`` the reference's scale (meanfield, lowrank: ``diag(scale0)``; fullrank:
        ``C0``), so that near the optimum the objective's Hessian in ``z`` is close to the
        identity for a near-Gaussian target, whatever the posterior's scales and
        correlations.
        """
        a = z[:dim]
        loc = ref.loc + ref.log_scale.exp() * a
        log_scale = ref.log_scale + z[dim : 2 * dim]
        return Coords(loc, log_scale, self._relative_factor(z[2 * dim :], ref, dim))

    def init_coords(
        self,
        dim: int,
        loc: torch.Tensor | None,
        init_scale: float,
        generator: torch.Generator,
        dtype: torch.dtype,
        device,
    ) -> torch.Tensor:
        """The initial ``theta``: ``loc`` (default 0), scales ``init_scale``, the factor's
        start (:meth:`_init_factor`, which may draw from ``generator``)."""
        loc = (
            torch.zeros(dim, dtype=dtype, device=device)
            if loc is None
            else loc.to(device, dtype).reshape(dim)
        )
        log_s = torch.full((dim,), math.log(init_scale), dtype=dtype, device=device)
        parts = [loc, log_s]
        factor = self._init_factor(dim, generator, dtype, device)
        if factor is not None:
            parts.append(factor)
        return torch.cat(parts)

    def log_q(self, q: QParams, u: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """log q(u) (P,) of draws ``u = loc + A eps`` when ``A`` is square (meanfield,
        fullrank): ``log|det A| = sum log scale``."""
        dim = q.loc.shape[-1]
        const = -0.5 * dim * math.log(2 * math.pi)
        return const - 0.5 * (eps * eps).sum(-1) - q.scale.log().sum()

    def _init_factor(self, dim, generator, dtype, device) -> torch.Tensor | None:
        return None


@dataclasses.dataclass(frozen=True)
class MeanField(_GaussianCoords):
    """``AutoNormal``: Sigma = diag(scale^2); theta holds every site's ``locs`` then every
    site's ``scales``."""

    name: ClassVar[str] = "meanfield"
    rank: ClassVar[int] = 0
    jacobian: ClassVar[bool] = True

    @classmethod
    def from_guide(cls, guide: AutoGuide) -> MeanField:
        return cls()

    def noise_dim(self, dim: int) -> int:
        """Standard-normal draws per particle: ``D``."""
        return dim

    def draw(self, q: QParams, eps: torch.Tensor) -> torch.Tensor:
        """Draws ``loc + scale * eps`` of shape ``(P, D)`` from ``eps`` of shape ``(P, D)``."""
        return q.loc + q.scale * eps

    def entropy(self, q: QParams) -> torch.Tensor:
        """Closed-form entropy of q in nats."""
        return _gaussian_entropy(q)

    def covariance(self, q: QParams) -> torch.Tensor:
        """The dense covariance (D, D); for tests and diagnostics, not the step."""
        return torch.diag_embed(q.scale**2)

    def param_specs(self, guide: AutoGuide, sites: Sequence[str]) -> list[tuple[str, object]]:
        """``(attribute path, constraint or None)`` of each parameter, in theta order.

        Raises
        ------
        ValueError
            When the guide's scale constraint is not elementwise.
        """
        if transform_to(guide.scale_constraint).codomain.event_dim != 0:
            raise ValueError("the guide's scale constraint is not elementwise")
        specs: list[tuple[str, object]] = [(f"locs.{n}", None) for n in sites]
        specs += [(f"scales.{n}", guide.scale_constraint) for n in sites]
        return specs

    def constrained(self, pieces: Sequence[_Piece], theta: torch.Tensor) -> QParams:
        """:class:`QParams` at ``theta``: the locs, then the scales (elementwise transform)."""
        d = sum(p.size for p in pieces[: len(pieces) // 2])
        scale_constraint = pieces[-1].constraint
        return QParams(theta[:d], transform_to(scale_constraint)(theta[d : 2 * d]))

    # DADVI's coordinates: loc, log scale; no factor
    def _factor_size(self, dim: int) -> int:
        return 0

    def _factor_of(self, rest, log_scale, dim):
        return None

    def _q_factor(self, factor, scale):
        return None

    def _coords_factor(self, q: QParams):
        return None

    def _relative_factor(self, rest, ref: Coords, dim: int):
        return None


class _Dense(_GaussianCoords):
    """The families whose theta is ``loc``, ``scale`` and one factor."""

    jacobian: ClassVar[bool] = True

    def constrained(self, pieces: Sequence[_Piece], theta: torch.Tensor) -> QParams:
        """:class:`QParams` at ``theta``: ``loc``, ``scale`` and the factor, constrained."""
        loc, scale, factor = (p.value(theta) for p in pieces)
        return QParams(loc, scale, factor)


@dataclasses.dataclass(frozen=True)
class FullRank(_Dense):
    """``AutoMultivariateNormal``: Sigma = R R^T with R = diag(scale) L, L unit
    lower-triangular."""

    name: ClassVar[str] = "fullrank"
    rank: ClassVar[int] = 0

    @classmethod
    def from_guide(cls, guide: AutoGuide) -> FullRank:
        return cls()

    def noise_dim(self, dim: int) -> int:
        """Standard-normal draws per particle: ``D``."""
        return dim

    def draw(self, q: QParams, eps: torch.Tensor) -> torch.Tensor:
        """Draws ``loc + R eps_p`` of shape ``(P, D)`` from ``eps`` of shape ``(P, D)``."""
        # (scale[:, None] * L) @ eps_p for each particle p, written row-wise
        return q.loc + (eps @ q.factor.transpose(-1, -2)) * q.scale

    def entropy(self, q: QParams) -> torch.Tensor:
        """Closed-form entropy of q in nats: det(diag(scale) L) = prod(scale), L has a unit
        diagonal."""
        return _gaussian_entropy(q)

    def covariance(self, q: QParams) -> torch.Tensor:
        """The dense covariance (D, D); for tests and diagnostics, not the step."""
        r = q.scale[:, None] * q.factor
        return r @ r.T

    def param_specs(self, guide: AutoGuide, sites: Sequence[str]) -> list[tuple[str, object]]:
        """``(attribute path, constraint or None)`` of each parameter, in theta order."""
        return [
            ("loc", None),
            ("scale", guide.scale_constraint),
            ("scale_tril", guide.scale_tril_constraint),
        ]

    # DADVI's coordinates: loc, log diag C, the strict lower triangle of C = diag(scale) L
    needs_spanning_draws: ClassVar[bool] = True

    def _factor_size(self, dim: int) -> int:
        return dim * (dim - 1) // 2

    def _factor_of(self, rest, log_scale, dim):
        rows, cols = torch.tril_indices(dim, dim, offset=-1, device=rest.device)
        strict = rest.new_zeros(dim, dim).index_put((rows, cols), rest)
        return strict + torch.diag_embed(log_scale.exp())

    def _factor_entries(self, factor):
        dim = factor.shape[-1]
        rows, cols = torch.tril_indices(dim, dim, offset=-1, device=factor.device)
        return factor[rows, cols]

    def _q_factor(self, factor, scale):
        return factor / scale[:, None]

    def _coords_factor(self, q: QParams):
        return q.scale[:, None] * q.factor

    def relative_coords(self, z: torch.Tensor, ref: Coords, dim: int) -> Coords:
        """As :meth:`_GaussianCoords.relative_coords`, with ``A0 = C0`` (dense)."""
        a, b = z[:dim], z[dim : 2 * dim]
        log_scale = ref.log_scale + b
        rows, cols = torch.tril_indices(dim, dim, offset=-1, device=z.device)
        strict = z.new_zeros(dim, dim).index_put((rows, cols), z[2 * dim :])
        c = ref.factor @ (strict + torch.diag_embed(b.exp()))
        return Coords(ref.loc + ref.factor @ a, log_scale, c)

    def _init_factor(self, dim, generator, dtype, device):
        return torch.zeros(dim * (dim - 1) // 2, dtype=dtype, device=device)


@dataclasses.dataclass(frozen=True)
class LowRank(_Dense):
    """``AutoLowRankMultivariateNormal``: Sigma = diag(scale) (W W^T + I) diag(scale), with
    ``W`` of shape (D, ``rank``)."""

    rank: int
    name: ClassVar[str] = "lowrank"

    @classmethod
    def from_guide(cls, guide: AutoGuide) -> LowRank:
        return cls(int(guide.rank))

    def noise_dim(self, dim: int) -> int:
        """Standard-normal draws per particle: ``D + K``."""
        return dim + self.rank

    def draw(self, q: QParams, eps: torch.Tensor) -> torch.Tensor:
        """Draws ``loc + scale * (W eps_K + eps_D)`` of shape ``(P, D)`` from ``eps`` of shape
        ``(P, K + D)``."""
        k = q.factor.shape[-1]
        return q.loc + q.scale * (eps[..., :k] @ q.factor.transpose(-1, -2) + eps[..., k:])

    def entropy(self, q: QParams) -> torch.Tensor:
        """Closed-form entropy of q in nats, the determinant by the matrix determinant lemma."""
        k = q.factor.shape[-1]
        eye = torch.eye(k, dtype=q.factor.dtype, device=q.factor.device)
        capacitance = eye + q.factor.transpose(-1, -2) @ q.factor
        chol = torch.linalg.cholesky(capacitance)
        return _gaussian_entropy(q) + chol.diagonal(dim1=-2, dim2=-1).log().sum(-1)

    def covariance(self, q: QParams) -> torch.Tensor:
        """The dense covariance (D, D); for tests and diagnostics, not the step."""
        w = q.scale[:, None] * q.factor
        return w @ w.T + torch.diag_embed(q.scale**2)

    def param_specs(self, guide: AutoGuide, sites: Sequence[str]) -> list[tuple[str, object]]:
        """``(attribute path, constraint or None)`` of each parameter, in theta order."""
        return [("loc", None), ("scale", guide.scale_constraint), ("cov_factor", None)]

    # DADVI's coordinates: loc, log scale, W (D x K) row-major
    def _factor_size(self, dim: int) -> int:
        return dim * self.rank

    def _factor_of(self, rest, log_scale, dim):
        return rest.reshape(dim, self.rank)

    def _factor_entries(self, factor):
        return factor.reshape(-1)

    def _q_factor(self, factor, scale):
        return factor

    def _coords_factor(self, q: QParams):
        return q.factor

    def _relative_factor(self, rest, ref: Coords, dim: int):
        return ref.factor + rest.reshape(dim, self.rank)

    def _init_factor(self, dim, generator, dtype, device):
        # W = 0 is a stationary point of the ELBO in W: start off it, small and seeded
        w = torch.randn(dim, self.rank, generator=generator, dtype=torch.float64).to(device, dtype)
        return (0.1 * w / math.sqrt(max(self.rank, 1))).reshape(-1)

    def log_q(self, q: QParams, u: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """log q(u) (P,): Sigma = S (I + W W^T) S by Woodbury and the determinant lemma."""
        dim = q.loc.shape[-1]
        const = -0.5 * dim * math.log(2 * math.pi)
        v = (u - q.loc) / q.scale
        w = q.factor
        cap = torch.eye(w.shape[-1], dtype=w.dtype, device=w.device) + w.T @ w
        chol = torch.linalg.cholesky(cap)
        proj = torch.cholesky_solve((v @ w).T, chol).T  # (P, K): cap^-1 W^T v
        quad = (v * v).sum(-1) - ((v @ w) * proj).sum(-1)
        logdet = 2 * q.scale.log().sum() + 2 * chol.diagonal().log().sum()
        return const - 0.5 * quad - 0.5 * logdet


@dataclasses.dataclass(frozen=True)
class Delta:
    """``AutoDelta``: a point mass; theta holds each site's value in the space of
    ``transform_to(support)``, and the ELBO is the log joint (no entropy, no Jacobian)."""

    name: ClassVar[str] = "delta"
    rank: ClassVar[int] = 0
    jacobian: ClassVar[bool] = False

    @classmethod
    def from_guide(cls, guide: AutoGuide) -> Delta:
        return cls()

    def noise_dim(self, dim: int) -> int:
        """Standard-normal draws per particle: none."""
        return 0

    def draw(self, q: QParams, eps: torch.Tensor) -> torch.Tensor:
        """``loc`` repeated over the particles of ``eps`` (at least 1)."""
        return q.loc.expand(max(eps.shape[0], 1), q.loc.shape[-1])

    def entropy(self, q: QParams) -> torch.Tensor:
        """0: the ELBO of a point mass is taken as the log joint."""
        return q.loc.new_zeros(())

    def covariance(self, q: QParams) -> torch.Tensor:
        """Zeros (D, D)."""
        dim = q.loc.shape[-1]
        return q.loc.new_zeros(dim, dim)

    def param_specs(self, guide: AutoGuide, sites: Sequence[str]) -> list[tuple[str, object]]:
        """``(site, support)`` for each site, in theta order."""
        nodes = guide.prototype_trace.nodes
        return [(n, nodes[n]["fn"].support) for n in sites]

    def constrained(self, pieces: Sequence[_Piece], theta: torch.Tensor) -> QParams:
        """The point, mapped from each site's parameter space (``transform_to(support)``) to
        the potential's unconstrained space (``biject_to(support)``), which differ for a few
        supports (e.g. the simplex)."""
        parts = [biject_to(p.constraint).inv(p.value(theta)).reshape(-1) for p in pieces]
        return QParams(torch.cat(parts))


#: The Gaussian families' math classes by registry name (those DADVI fits).
GAUSSIAN: Mapping[str, type] = types.MappingProxyType(
    {"meanfield": MeanField, "fullrank": FullRank, "lowrank": LowRank}
)


def gaussian_math(family: str | FamilyMath, rank: int = 0) -> FamilyMath:
    """The math object of a Gaussian family given by name (or the object itself, checked);
    ``rank`` is the lowrank family's rank.

    Raises
    ------
    ValueError
        For a family that is not one of :data:`GAUSSIAN`.
    """
    if not isinstance(family, str):
        if getattr(family, "name", None) not in GAUSSIAN:
            raise ValueError(f"DADVI fits {tuple(GAUSSIAN)}, not {family!r}")
        return family
    cls = GAUSSIAN.get(family)
    if cls is None:
        raise ValueError(f"unknown family {family!r}; DADVI fits {tuple(GAUSSIAN)}")
    return cls(int(rank)) if cls is LowRank else cls()


def gaussian_math_of_q(family: str | FamilyMath, q: QParams) -> FamilyMath:
    """:func:`gaussian_math`, the rank read off q's factor for a lowrank family by name."""
    return gaussian_math(family, 0 if q.factor is None else q.factor.shape[-1])


# --------------------------------------------------------------------------- the records
