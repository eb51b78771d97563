"""A model's log-density as a function of one flat unconstrained vector, traced once.

Pyro's HMC machinery (:func:`pyro.infer.mcmc.util.initialize_model`) already turns a model
into a potential energy ``U(params) = -log p(x, T(params)) - log|det J_T(params)|`` over a
*dict* of unconstrained site values, with the constraining transforms ``T`` chosen by
``biject_to(site.support)``, the same ones Pyro's autoguides use.  This module only adds
the flat layout (site names, unconstrained shapes and offsets, in the autoguide's own
order) and traces the result once with :func:`torch.fx.experimental.proxy_tensor.make_fx`
into a graph of plain tensor operations, so that no Pyro bookkeeping runs per step.

Tracing refuses data-dependent Python control flow (``if z > 0:`` raises while tracing);
:func:`trace_log_density` also checks the graph against Pyro's own potential at a second
point, which catches models whose structure changes between calls.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping

import pyro
import pyro.poutine as poutine
import torch
from pyro.infer.mcmc.util import initialize_model
from torch.distributions import biject_to
from torch.fx.experimental.proxy_tensor import make_fx

__all__ = [
    "SiteSlot",
    "FlatLayout",
    "FlatPotential",
    "TraceError",
    "layout_from_trace",
    "build_potential",
    "trace_log_density",
]


class TraceError(RuntimeError):
    """The model cannot be traced into one static flat log-density."""


@dataclasses.dataclass(frozen=True)
class SiteSlot:
    """Where one latent site lives in the flat unconstrained vector.

    Attributes
    ----------
    name : str
        The model's sample site.
    shape : torch.Size
        Shape of the site's unconstrained value (``biject_to(support).inv(value).shape``).
    offset : int
        First index of the site in the flat vector.
    size : int
        Number of entries, ``prod(shape)``.
    """

    name: str
    shape: torch.Size
    offset: int
    size: int


@dataclasses.dataclass(frozen=True)
class FlatLayout:
    """The order, shapes and offsets of the latent sites in the flat vector.

    The order is that of the autoguide's prototype trace, which is the order
    ``AutoContinuous`` uses to pack its single latent vector, so a flat vector here is
    exactly the latent vector of ``AutoMultivariateNormal`` and friends.
    """

    slots: tuple[SiteSlot, ...]

    @property
    def dim(self) -> int:
        """Total length of the flat vector."""
        return sum(s.size for s in self.slots)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.slots)

    def unpack(self, u: torch.Tensor) -> dict[str, torch.Tensor]:
        """Split ``u`` (shape ``(..., dim)``) into per-site unconstrained values."""
        batch = u.shape[:-1]
        return {
            s.name: u[..., s.offset : s.offset + s.size].reshape(batch + s.shape)
            for s in self.slots
        }

    def pack(self, values: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Concatenate per-site unconstrained values into one flat vector."""
        return torch.cat([values[s.name].reshape(-1) for s in self.slots])


def layout_from_trace(trace: poutine.Trace) -> FlatLayout:
    """The flat layout of a (guide prototype) trace's latent sample sites, in trace order."""
    slots = []
    offset = 0
    for name, site in trace.iter_stochastic_nodes():
        shape = biject_to(site["fn"].support).inv(site["value"].detach()).shape
        size = math.prod(shape)
        slots.append(SiteSlot(name, torch.Size(shape), offset, size))
        offset += size
    return FlatLayout(tuple(slots))


def _site_signature(trace: poutine.Trace) -> list[tuple]:
    """Names, kinds and shapes of a trace's sample sites, to compare two traces."""
    return [
        (name, bool(site["is_observed"]), tuple(site["value"].shape))
        for name, site in trace.nodes.items()
        if site["type"] == "sample" and type(site["fn"]).__name__ != "_Subsample"
    ]


@dataclasses.dataclass(frozen=True)
class FlatPotential:
    """The model's log-density over the flat unconstrained vector (eager, through Pyro).

    Attributes
    ----------
    layout : FlatLayout
        Site layout of the flat vector.
    potential_fn : callable
        Pyro's potential energy over a dict of unconstrained values (from
        ``initialize_model``): minus the log joint, Jacobians included.
    transforms : dict
        Site name -> transform from the constrained to the unconstrained space.
    """

    layout: FlatLayout
    potential_fn: Callable
    transforms: dict

    def log_density(self, u: torch.Tensor, jacobian: bool = True) -> torch.Tensor:
        r"""The log joint at ``u`` (shape ``(dim,)``), a scalar.

        With ``jacobian=True``: :math:`\log p(x, T(u)) + \log|\det J_T(u)|`, the density of
        the unconstrained latents (what the Gaussian families fit).  With ``jacobian=False``:
        :math:`\log p(x, T(u))`, the density in the constrained space (what ``AutoDelta``'s
        MAP maximizes).
        """
        values = self.layout.unpack(u)
        value = -self.potential_fn(values)
        if not jacobian:
            # potential = -(log p - sum_t ladj_t(x, u)) with t: constrained -> unconstrained
            for name, t in self.transforms.items():
                x = t.inv(values[name])
                value = value + t.log_abs_det_jacobian(x, values[name]).sum()
        return value


def build_potential(
    model: Callable,
    args: tuple,
    kwargs: Mapping,
    layout: FlatLayout,
    max_plate_nesting: int,
    reference: poutine.Trace | None = None,
) -> FlatPotential:
    """Pyro's potential of ``model`` with the flat ``layout``.

    Raises
    ------
    TraceError
        When ``initialize_model`` fails, when its latent sites or their unconstrained
        shapes differ from ``layout``'s, or when its prototype trace differs in structure
        from ``reference`` (a trace taken earlier: the model's structure is dynamic).
    """
    initial = {
        s.name: torch.zeros(s.shape) for s in layout.slots
    }  # given, so that initialize_model skips its search for valid initial values
    try:
        with pyro.validation_enabled(False):
            _, potential_fn, transforms, proto = initialize_model(
                model,
                model_args=tuple(args),
                model_kwargs=dict(kwargs),
                max_plate_nesting=max_plate_nesting,
                initial_params=initial,
            )
    except Exception as err:  # any failure: this model is not for the flat path
        raise TraceError(
            f"Pyro's initialize_model could not build a potential: {type(err).__name__}: {err}"
        ) from err
    if set(transforms) != set(layout.names):
        raise TraceError(
            f"the model's latent sites {sorted(transforms)} differ from the guide's "
            f"{sorted(layout.names)}"
        )
    for slot in layout.slots:
        value = proto.nodes[slot.name]["value"].detach()
        shape = transforms[slot.name](value).shape
        if shape != slot.shape:
            raise TraceError(
                f"site {slot.name!r} has unconstrained shape {tuple(shape)} in one trace and "
                f"{tuple(slot.shape)} in another: the model's structure changes between calls"
            )
    if reference is not None and _site_signature(proto) != _site_signature(reference):
        raise TraceError(
            "two traces of the model have different sites or shapes: its structure "
            "changes between calls (dynamic control flow)"
        )
    return FlatPotential(layout, potential_fn, transforms)


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    if not (bool(torch.isfinite(a)) and bool(torch.isfinite(b))):
        return bool(torch.isnan(a)) == bool(torch.isnan(b)) and (
            bool(torch.isnan(a)) or bool(a == b)
        )
    tol = 1e-4 * max(1.0, abs(float(b)))
    return abs(float(a) - float(b)) <= tol


def trace_log_density(
    potential: FlatPotential,
    u0: torch.Tensor,
    *,
    jacobian: bool = True,
    num_checks: int = 2,
    check_scale: float = 0.5,
) -> torch.fx.GraphModule:
    """Trace ``potential.log_density(·, jacobian)`` at ``u0`` into a graph of tensor ops.

    The graph is checked against Pyro's potential at ``u0`` and at ``num_checks`` points
    ``u0 + check_scale * noise``: a model whose Python code takes another branch, or draws
    its own random numbers, gives a different value there.

    Raises
    ------
    TraceError
        When tracing fails (typically data-dependent control flow such as ``if z > 0``)
        or the traced graph disagrees with Pyro's potential.
    """
    u0 = u0.detach()

    def log_density(u):
        return potential.log_density(u, jacobian=jacobian)

    try:
        with pyro.validation_enabled(False):
            graph = make_fx(log_density)(u0)
    except Exception as err:  # tracing failed: data-dependent control flow or the like
        raise TraceError(
            f"the model could not be traced into a static graph ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''}); it probably has control flow "
            "that depends on latent values"
        ) from err
    points = [u0] + [u0 + check_scale * torch.randn_like(u0) for _ in range(num_checks)]
    with pyro.validation_enabled(False), torch.no_grad():
        for u in points:
            traced, eager = graph(u), log_density(u)
            if traced.shape != () or not _close(traced, eager):
                raise TraceError(
                    "the traced log-density differs from Pyro's at a second point "
                    f"({float(traced):.6g} vs {float(eager):.6g}): the model's control flow "
                    "or randomness changes between calls"
                )
    return graph
