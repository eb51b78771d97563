"""A model's log-density as a function of one flat unconstrained vector, traced once.

Pyro's HMC machinery (:func:`pyro.infer.mcmc.util.initialize_model`) already turns a model
into a potential energy ``U(params) = -log p(x, T(params)) - log|det J_T(params)|`` over a
*dict* of unconstrained site values, with the constraining transforms ``T`` chosen by
``biject_to(site.support)``, the same ones Pyro's autoguides use.
:mod:`pyrovi._potential` adds the flat layout (site names, unconstrained shapes and offsets,
in the autoguide's own order); this module traces the result once with
:func:`torch.fx.experimental.proxy_tensor.make_fx` into a graph of plain tensor operations,
so that no Pyro bookkeeping runs per step.

Tracing refuses data-dependent Python control flow (``if z > 0:`` raises while tracing);
:func:`trace_log_density` also checks the graph against Pyro's own potential at a second
point, which catches models whose structure changes between calls.
"""

from __future__ import annotations

import pyro
import torch
from torch.fx.experimental.proxy_tensor import make_fx

from pyrovi._potential import (
    FlatLayout,
    FlatPotential,
    SiteSlot,
    TraceError,
    build_potential,
    layout_from_trace,
)

__all__ = [
    "SiteSlot",
    "FlatLayout",
    "FlatPotential",
    "TraceError",
    "layout_from_trace",
    "build_potential",
    "trace_log_density",
]


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
