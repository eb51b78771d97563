"""Draws from a fit with their log densities: the shared machinery behind ``sample``,
``predictive``, importance weights (diagnostics) and the ArviZ export.

Every function takes and returns site values in their natural shape with a leading draw
dimension, ``(n, *site_shape)``.  Internally a draw dimension is added as an outermost
plate at ``dim = -(max_plate_nesting + 1)``, as Pyro's vectorized ELBOs do.

Pyro's ``Predictive(parallel=True)`` is not used for the reshaping because it pads sample
shapes without regard to event dimensions (a site ``Normal(...).to_event(1)`` of shape
``(D,)`` outside every plate is mis-shaped as a batch of D).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping

import pyro
import pyro.poutine as poutine
import torch
from pyro.infer import TraceEnum_ELBO, config_enumerate

__all__ = [
    "SiteShape",
    "site_shapes",
    "Draws",
    "guide_draws",
    "model_log_density",
    "predictive_draws",
]

DRAW_PLATE = "_pyrovi_draws"


@dataclasses.dataclass(frozen=True)
class SiteShape:
    """A sample site's value shape and how many of its leading dims are batch dims."""

    shape: tuple
    batch_ndim: int

    @property
    def batch_shape(self) -> tuple:
        return self.shape[: self.batch_ndim]

    @property
    def event_shape(self) -> tuple:
        return self.shape[self.batch_ndim :]


def site_shapes(trace: poutine.Trace) -> dict[str, SiteShape]:
    """Shapes of every sample site of a single-draw trace."""
    out = {}
    for name, site in trace.nodes.items():
        if site["type"] != "sample" or type(site["fn"]).__name__ == "_Subsample":
            continue
        value = site["value"]
        shape = tuple(value.shape) if isinstance(value, torch.Tensor) else ()
        event = len(site["fn"].event_shape)
        out[name] = SiteShape(shape, len(shape) - event)
    return out


def _deterministic(site: dict) -> bool:
    return bool(site["infer"].get("_deterministic", False))


def _to_plate_shape(value: torch.Tensor, shape: SiteShape, nesting: int) -> torch.Tensor:
    """(n, *shape) -> (n, 1, ..., 1, *shape) with the draw dim at -(nesting + 1) of batch."""
    pad = (1,) * (nesting - shape.batch_ndim)
    return value.reshape((value.shape[0],) + pad + shape.shape)


def _per_draw_sum(log_prob: torch.Tensor, n: int, nesting: int) -> torch.Tensor:
    """Sum a log-probability with the draw dim at -(nesting + 1) to shape (n,)."""
    if log_prob.dim() < nesting + 1:
        return log_prob.sum().expand(n)
    lp = log_prob.reshape(log_prob.shape[: log_prob.dim() - nesting] + (-1,)).sum(-1)
    return lp.reshape(-1).expand(n) if lp.numel() == 1 else lp.reshape(n)


@dataclasses.dataclass(frozen=True)
class Draws:
    """Posterior draws with their densities.

    Attributes
    ----------
    values : dict of str to torch.Tensor
        Latent site -> ``(n, *site_shape)`` in constrained space.
    log_q : torch.Tensor
        ``(n,)``: log density of the guide (or exact posterior) at each draw.
    """

    values: dict
    log_q: torch.Tensor


def guide_draws(
    guide: Callable,
    args: tuple,
    kwargs: Mapping,
    n: int,
    *,
    sites: tuple,
    shapes: Mapping[str, SiteShape],
    nesting: int,
    vectorized: bool,
) -> Draws:
    """``n`` draws of the latent ``sites`` from a guide, with log q at each draw.

    The guide's own auxiliary sites (e.g. the joint latent of ``AutoMultivariateNormal``)
    and the Jacobian terms of its constraining transforms enter ``log_q``, exactly as in
    Pyro's ELBOs, so ``log_q`` is the density of the constrained values.
    """
    if vectorized:
        with torch.no_grad():
            with pyro.plate(DRAW_PLATE, n, dim=-(nesting + 1)):
                trace = poutine.trace(guide).get_trace(*args, **kwargs)
            trace.compute_log_prob()
        log_q = torch.zeros(n)
        values = {}
        for name, site in trace.nodes.items():
            if site["type"] != "sample" or site["is_observed"]:
                continue
            log_q = log_q + _per_draw_sum(site["log_prob"], n, nesting)
            if name in sites:
                values[name] = site["value"].reshape((n,) + shapes[name].shape)
        return Draws(values, log_q)
    rows: dict[str, list] = {k: [] for k in sites}
    log_qs = []
    with torch.no_grad():
        for _ in range(n):
            trace = poutine.trace(guide).get_trace(*args, **kwargs)
            log_qs.append(
                sum(
                    site["fn"].log_prob(site["value"]).sum()
                    for site in trace.nodes.values()
                    if site["type"] == "sample" and not site["is_observed"]
                )
            )
            for k in sites:
                if k in trace.nodes:
                    rows[k].append(trace.nodes[k]["value"])
    values = {k: torch.stack(v) for k, v in rows.items() if v}
    return Draws(values, torch.stack([torch.as_tensor(x) for x in log_qs]))


def model_log_density(
    model: Callable,
    args: tuple,
    kwargs: Mapping,
    values: Mapping[str, torch.Tensor],
    *,
    shapes: Mapping[str, SiteShape],
    nesting: int,
    vectorized: bool,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """log p(x, z) at each draw and the pointwise log-likelihood of every observed site.

    Returns
    -------
    log_joint : torch.Tensor
        ``(n,)``, totals with all constants.
    log_lik : dict of str to torch.Tensor
        Observed site -> ``(n, *batch_shape)``: one term per observation.
    """
    n = next(iter(values.values())).shape[0]
    if vectorized:
        data = {k: _to_plate_shape(v, shapes[k], nesting) for k, v in values.items()}
        with torch.no_grad():
            with pyro.plate(DRAW_PLATE, n, dim=-(nesting + 1)):
                trace = poutine.trace(poutine.condition(model, data=data)).get_trace(
                    *args, **kwargs
                )
            trace.compute_log_prob()
        log_joint = torch.zeros(n)
        log_lik = {}
        for name, site in trace.nodes.items():
            if site["type"] != "sample" or type(site["fn"]).__name__ == "_Subsample":
                continue
            lp = site["log_prob"]
            log_joint = log_joint + _per_draw_sum(lp, n, nesting)
            if site["is_observed"] and name not in values and not _deterministic(site):
                shape = shapes[name]
                full = (n,) + (1,) * (nesting - shape.batch_ndim) + shape.batch_shape
                log_lik[name] = torch.broadcast_to(lp, full).reshape((n,) + shape.batch_shape)
        return log_joint, log_lik
    joints = []
    liks: dict[str, list] = {}
    with torch.no_grad():
        for i in range(n):
            data = {k: v[i] for k, v in values.items()}
            trace = poutine.trace(poutine.condition(model, data=data)).get_trace(*args, **kwargs)
            trace.compute_log_prob()
            total = 0.0
            for name, site in trace.nodes.items():
                if site["type"] != "sample" or type(site["fn"]).__name__ == "_Subsample":
                    continue
                total = total + site["log_prob"].sum()
                if site["is_observed"] and name not in values and not _deterministic(site):
                    liks.setdefault(name, []).append(
                        torch.broadcast_to(site["log_prob"], shapes[name].batch_shape)
                    )
            joints.append(torch.as_tensor(total))
    return torch.stack(joints), {k: torch.stack(v) for k, v in liks.items()}


def enumerated_log_weights(
    model: Callable,
    guide: Callable,
    args: tuple,
    kwargs: Mapping,
    n: int,
    *,
    nesting: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """log p(x, z_c) - log q(z_c) and log q(z_c) per draw, with the model's discrete latents
    summed out exactly (``TraceEnum_ELBO`` on a single replayed draw; one draw at a time)."""
    elbo = TraceEnum_ELBO(max_plate_nesting=nesting)
    enum_model = config_enumerate(model, default="parallel")
    weights, log_qs = [], []
    with torch.no_grad():
        for _ in range(n):
            trace = poutine.trace(guide).get_trace(*args, **kwargs)
            replayed = poutine.replay(guide, trace=trace)
            weights.append(-float(elbo.loss(enum_model, replayed, *args, **kwargs)))
            log_qs.append(
                float(
                    sum(
                        site["fn"].log_prob(site["value"]).sum()
                        for site in trace.nodes.values()
                        if site["type"] == "sample" and not site["is_observed"]
                    )
                )
            )
    return torch.tensor(weights), torch.tensor(log_qs)


def predictive_draws(
    model: Callable,
    args: tuple,
    kwargs: Mapping,
    values: Mapping[str, torch.Tensor],
    *,
    nesting: int,
    vectorized: bool,
) -> dict[str, torch.Tensor]:
    """Run the model conditioned on each draw of ``values``; return every sample site
    (observed ones freshly sampled: the posterior predictive) as ``(n, *site_shape)``."""
    n = next(iter(values.values())).shape[0]
    first = {k: v[0] for k, v in values.items()}
    with torch.no_grad():
        proto = poutine.trace(poutine.condition(model, data=first)).get_trace(*args, **kwargs)
    shapes = site_shapes(proto)
    unobserved = {k: site for k, site in proto.nodes.items() if k in shapes}
    model = poutine.uncondition(model)
    if vectorized:
        data = {k: _to_plate_shape(v, shapes[k], nesting) for k, v in values.items()}
        with torch.no_grad(), pyro.plate(DRAW_PLATE, n, dim=-(nesting + 1)):
            trace = poutine.trace(poutine.condition(model, data=data)).get_trace(*args, **kwargs)
        return {
            k: trace.nodes[k]["value"].expand(
                (n,) + (1,) * (nesting - shapes[k].batch_ndim) + shapes[k].shape
            ).reshape((n,) + shapes[k].shape)
            for k in unobserved
        }
    rows: dict[str, list] = {k: [] for k in unobserved}
    with torch.no_grad():
        for i in range(n):
            data = {k: v[i] for k, v in values.items()}
            trace = poutine.trace(poutine.condition(model, data=data)).get_trace(*args, **kwargs)
            for k in unobserved:
                rows[k].append(trace.nodes[k]["value"])
    return {k: torch.stack(v) for k, v in rows.items()}
