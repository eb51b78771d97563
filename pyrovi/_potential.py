"""A Pyro model's log-density as a function of one flat unconstrained vector.

Pyro's HMC machinery (:func:`pyro.infer.mcmc.util.initialize_model`) already turns a model
into a potential energy ``U(params) = -log p(x, T(params)) - log|det J_T(params)|`` over a
*dict* of unconstrained site values, with the constraining transforms ``T`` chosen by
``biject_to(site.support)``, the same ones Pyro's autoguides use (enumerated discrete
latents are summed out).  This module only adds the flat layout (site names, unconstrained
shapes and offsets) and batched evaluation; it is the one home of the flat potential, below
the compiled VI path (:mod:`pyrovi.fast.potential`, which traces it into a graph) and the
AIS evidence estimator (:mod:`pyrovi.diagnostics.ais_evidence`).
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

from pyrovi._plates import is_traced_sample

__all__ = [
    "SiteSlot",
    "FlatLayout",
    "FlatPotential",
    "TraceError",
    "layout_from_trace",
    "build_potential",
    "potential_from_model",
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

    From :func:`layout_from_trace` the order is that of the autoguide's prototype trace,
    which is the order ``AutoContinuous`` uses to pack its single latent vector, so a flat
    vector there is exactly the latent vector of ``AutoMultivariateNormal`` and friends;
    :func:`potential_from_model` uses the order of ``initialize_model``.
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
        if is_traced_sample(site)
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

    def log_density_and_grad(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        r"""The log joint (Jacobians included) and its gradient at a batch of points.

        Parameters
        ----------
        u : torch.Tensor
            Flat unconstrained points, shape ``(M, dim)``.

        Returns
        -------
        (torch.Tensor, torch.Tensor)
            :math:`\log p(x, T(u)) + \log|\det J_T(u)|`, shape ``(M,)``, and its gradient
            in ``u``, shape ``(M, dim)``; both detached.  Evaluated for all points at once
            with ``torch.func.vmap``, or one point at a time for a model that vmap refuses
            (e.g. one with enumerated discrete latents).
        """

        def one(flat):
            return -self.potential_fn(self.layout.unpack(flat))

        with pyro.validation_enabled(False), torch.enable_grad():
            try:
                grad, value = torch.func.vmap(torch.func.grad_and_value(one))(u)
            except Exception:  # vmap is refused by some models (e.g. enumeration); loop
                grads, values = [], []
                for row in u:
                    x = row.detach().clone().requires_grad_(True)
                    val = one(x)
                    grads.append(torch.autograd.grad(val, x)[0])
                    values.append(val.detach())
                grad, value = torch.stack(grads), torch.stack(values)
        return value.detach(), grad.detach()

    def to_unconstrained(self, values: Mapping[str, torch.Tensor], n: int) -> torch.Tensor:
        """Flat unconstrained points, shape ``(n, dim)``, of ``n`` constrained draws
        ``values`` (site -> ``(n, *site shape)``)."""
        return torch.cat(
            [self.transforms[k](values[k]).reshape(n, -1) for k in self.layout.names], dim=-1
        ).detach()


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


def potential_from_model(
    model: Callable, args: tuple, kwargs: Mapping, max_plate_nesting: int
) -> FlatPotential:
    """Pyro's potential of ``model``, laid out in ``initialize_model``'s site order.

    Unlike :func:`build_potential`, no layout is given: ``initialize_model`` finds valid
    initial values itself (drawing them from the global random state) and its unconstrained
    initial values give the sites' shapes.

    Parameters
    ----------
    model : callable
        The Pyro model, its ``pyro.param`` sites at their current values.
    args, kwargs
        The model's arguments.
    max_plate_nesting : int
        Plate nesting of the model (for enumerated discrete latents).
    """
    init, potential_fn, transforms, _ = initialize_model(
        model, model_args=args, model_kwargs=kwargs, max_plate_nesting=max_plate_nesting
    )
    slots, offset = [], 0
    for name, value in init.items():
        size = math.prod(value.shape)
        slots.append(SiteSlot(name, torch.Size(value.shape), offset, size))
        offset += size
    return FlatPotential(FlatLayout(tuple(slots)), potential_fn, transforms)
