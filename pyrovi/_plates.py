"""The extra plate for draws (or particles), and which trace sites count: one home for both.

Every vectorized evaluation in pyrovi (guide draws, log densities at posterior draws, the
posterior and prior predictive, EM's exact posterior, the ELBO's vectorization check) runs
the model or guide once under an outermost plate of ``n`` draws at batch dim
``-(max_plate_nesting + 1)``, as Pyro's vectorized ELBOs do, and moves site values between their
natural shape ``(n, *site_shape)`` and the plate layout ``(n, 1, ..., 1, *site_shape)``.
The helpers here do that, and nothing else; they import only torch and Pyro.

Pyro's ``Predictive(parallel=True)`` is not used for the reshaping because it pads sample
shapes without regard to event dimensions (a site ``Normal(...).to_event(1)`` of shape
``(D,)`` outside every plate is mis-shaped as a batch of D).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TypeVar

import pyro
import pyro.poutine as poutine
import torch
from pyro.poutine.util import site_is_subsample

__all__ = [
    "DRAW_PLATE",
    "SiteShape",
    "site_shapes",
    "draw_dim",
    "draw_plate",
    "pad_draws",
    "unpad_draws",
    "per_draw_sum",
    "vectorize_else_loop",
    "is_user_sample",
    "is_traced_sample",
]

#: Name of the one plate pyrovi adds for draws or particles (never a user's plate name).
DRAW_PLATE = "_pyrovi_draws"

T = TypeVar("T")


# ------------------------------------------------------------------------ which sites
def is_traced_sample(site: dict) -> bool:
    """A sample site that is not a plate's subsample index.

    These are the sites whose log-probabilities make up :math:`\\log p(x, z)` (so
    ``pyro.factor`` terms are included, as in ``Trace.log_prob_sum``) and whose values a
    predictive run records (``pyro.deterministic`` records included).
    """
    return site["type"] == "sample" and not site_is_subsample(site)


def is_user_sample(site: dict) -> bool:
    """A random variable or datum of the model proper.

    Not a subsample index, an auxiliary site (a ``pyro.factor``, a guide's auxiliary
    latent), a ``pyro.deterministic`` record (Pyro marks those observed) or a site hidden
    from traces.  These are the sites that are latent or observed *data*: the pointwise
    log-likelihood and the model inspection count only these.
    """
    if not is_traced_sample(site):
        return False
    infer = site["infer"]
    return not (
        infer.get("_do_not_trace", False)
        or infer.get("is_auxiliary", False)
        or infer.get("_deterministic", False)
    )


# ----------------------------------------------------------------------------- shapes
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
    """Shapes of every traced sample site (:func:`is_traced_sample`) of a single-draw
    trace."""
    out = {}
    for name, site in trace.nodes.items():
        if not is_traced_sample(site):
            continue
        value = site["value"]
        shape = tuple(value.shape) if isinstance(value, torch.Tensor) else ()
        event = len(site["fn"].event_shape)
        batch_ndim = len(shape) - event
        if site["infer"].get("_deterministic", False):
            # pyro.deterministic's Delta takes every dim of its value as an event dim by
            # default (event_dim=value.ndim), even the dims of the plates it sits in; the
            # plates say which leading dims are batch dims.
            depth = max((-f.dim for f in site["cond_indep_stack"] if f.vectorized), default=0)
            batch_ndim = min(len(shape), max(batch_ndim, depth))
        out[name] = SiteShape(shape, batch_ndim)
    return out


# ------------------------------------------------------------------- the draw plate
def draw_dim(max_plate_nesting: int) -> int:
    """The batch dim of the draw plate: ``-(max_plate_nesting + 1)``, left of every model plate."""
    return -(max_plate_nesting + 1)


def draw_plate(n: int, max_plate_nesting: int) -> pyro.plate:
    """The outermost plate of ``n`` draws for a model whose plates nest
    ``max_plate_nesting`` deep."""
    return pyro.plate(DRAW_PLATE, n, dim=draw_dim(max_plate_nesting))


def pad_draws(value: torch.Tensor, shape: SiteShape, max_plate_nesting: int) -> torch.Tensor:
    """``(n, *shape)`` -> ``(n, 1, ..., 1, *shape)`` with the draw dim at
    ``-(max_plate_nesting + 1)``
    of the batch dims (to condition a model run under :func:`draw_plate`)."""
    pad = (1,) * (max_plate_nesting - shape.batch_ndim)
    return value.reshape((value.shape[0],) + pad + tuple(shape.shape))


def unpad_draws(
    value: torch.Tensor, shape: SiteShape, max_plate_nesting: int, n: int
) -> torch.Tensor:
    """A site value from a run under :func:`draw_plate` -> ``(n, *shape)``.

    The inverse of :func:`pad_draws`; a value that does not vary over draws (size-1 draw
    dim, or missing leading dims) is broadcast to all ``n``.
    """
    full = (n,) + (1,) * (max_plate_nesting - shape.batch_ndim) + tuple(shape.shape)
    return value.expand(full).reshape((n,) + tuple(shape.shape))


def per_draw_sum(log_prob: torch.Tensor, n: int, max_plate_nesting: int) -> torch.Tensor:
    """Sum a log-probability whose draw dim is at ``-(max_plate_nesting + 1)`` to shape ``(n,)``.

    A term without a draw dim (it does not depend on the draws) counts in every draw.
    """
    if log_prob.dim() < max_plate_nesting + 1:
        return log_prob.sum().expand(n)
    lp = log_prob.reshape(log_prob.shape[: log_prob.dim() - max_plate_nesting] + (-1,)).sum(-1)
    return lp.reshape(-1).expand(n) if lp.numel() == 1 else lp.reshape(n)


def vectorize_else_loop(run: Callable[[bool], T], vectorize: bool = True) -> T:
    """``run(True)`` (one run under :func:`draw_plate`), or ``run(False)`` (one run per
    draw) when ``vectorize`` is False or the vectorized run fails.

    A model written for one draw (``X @ w`` with ``w`` of shape ``(D,)``) raises a
    ``RuntimeError`` or ``ValueError`` when its sites gain a draw dimension; such models
    are evaluated draw by draw instead.  Any other exception propagates.
    """
    if vectorize:
        try:
            return run(True)
        except (RuntimeError, ValueError):  # a model that does not broadcast over draws
            pass
    return run(False)
