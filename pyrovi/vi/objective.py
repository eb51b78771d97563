"""The ELBO: which Pyro objective a fit uses, whether its particles can be vectorized, and
a final estimate of its value with a Monte Carlo standard error.

All values here are the ELBO itself, E_q[log p(x, z) - log q(z)] with every constant
included; Pyro's *loss* is its negative.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping

import numpy as np
import pyro.poutine as poutine
import torch
from pyro.infer import ELBO, Trace_ELBO, TraceEnum_ELBO

from pyrovi import distributed
from pyrovi._model import ModelInfo
from pyrovi._plates import draw_plate, is_traced_sample

__all__ = ["make_elbo", "vectorization_problem", "estimate_elbo", "ELBOEstimate"]

def make_elbo(
    num_particles: int, *, vectorize: bool, max_plate_nesting: int, enumerate: bool
) -> ELBO:
    """The Pyro ELBO for a fit: ``TraceEnum_ELBO`` when discrete latents are enumerated,
    ``Trace_ELBO`` otherwise, with an explicit ``max_plate_nesting`` (no guessing)."""
    cls = TraceEnum_ELBO if enumerate else Trace_ELBO
    return cls(
        num_particles=num_particles,
        vectorize_particles=vectorize and num_particles > 1,
        max_plate_nesting=max_plate_nesting,
    )


def _allowed_shape_problem(site: dict, shape: torch.Size, nesting: int) -> str | None:
    """Compare a site's log-probability batch shape with its plates (particles included)."""
    sizes = {f.dim: f.size for f in site["cond_indep_stack"] if f.vectorized}
    if len(shape) > nesting:
        return (
            f"its log-probability has shape {tuple(shape)}, with more batch dimensions than "
            f"the {nesting} that the plates and the particle dimension allow"
        )
    for i in range(1, len(shape) + 1):
        size = shape[-i]
        expected = sizes.get(-i)
        if size != 1 and size != expected:
            want = f"1 or {expected} (plate size)" if expected is not None else "1 (no plate)"
            return (
                f"its log-probability has shape {tuple(shape)}: dimension {-i} has size "
                f"{size} where {want} was expected"
            )
    return None


def vectorization_problem(
    model: Callable,
    guide: Callable,
    args: tuple,
    kwargs: Mapping,
    info: ModelInfo,
    num_particles: int,
) -> str | None:
    """Why vectorized particles would give a wrong ELBO for this model, or None if they fit.

    Runs guide and model once under a particle plate and checks every sample site's
    log-probability shape against its plates.  A model written ``X @ w`` typically raises
    here; one written ``w @ X.T`` may broadcast silently into too many dimensions, which is
    the case this check exists for.
    """
    nesting = info.max_plate_nesting + 1
    plate = draw_plate(num_particles, info.max_plate_nesting)  # where Pyro puts particles
    try:
        with torch.no_grad(), poutine.trace() as guide_capture, plate:
            guide(*args, **kwargs)
        guide_trace = guide_capture.trace
        with torch.no_grad(), poutine.trace() as model_capture, plate:
            poutine.replay(model, trace=guide_trace)(*args, **kwargs)
        model_trace = model_capture.trace
        for trace, who in ((guide_trace, "guide"), (model_trace, "model")):
            for name, site in trace.nodes.items():
                if not is_traced_sample(site):
                    continue
                log_prob = site["fn"].log_prob(site["value"])
                problem = _allowed_shape_problem(site, log_prob.shape, nesting)
                if problem:
                    return f"{who} site {name!r}: {problem}"
    except Exception as err:  # any failure means: do not vectorize
        return f"running the model with a particle dimension raised {type(err).__name__}: {err}"
    return None


@dataclasses.dataclass(frozen=True)
class ELBOEstimate:
    """A Monte Carlo ELBO estimate.

    Attributes
    ----------
    value : float
        The ELBO estimate in nats (a total over the data set, constants included).
    se : float
        Its Monte Carlo standard error, from the spread of independent batch means.
    num_particles : int
        How many draws from q produced it.
    """

    value: float
    se: float
    num_particles: int


def estimate_elbo(
    model: Callable,
    guide: Callable,
    args: tuple,
    kwargs: Mapping,
    *,
    num_particles: int,
    vectorize: bool,
    max_plate_nesting: int,
    enumerate: bool,
    num_batches: int = 20,
) -> ELBOEstimate:
    """Estimate the ELBO with ``num_particles`` draws split into ``num_batches`` batches.

    The standard error is the standard deviation of the batch means over
    sqrt(num_batches); batches are vectorized when the model allows it.
    """
    num_batches = max(2, min(num_batches, num_particles))
    per_batch = max(1, num_particles // num_batches)
    elbo = make_elbo(
        per_batch, vectorize=vectorize, max_plate_nesting=max_plate_nesting, enumerate=enumerate
    )
    values = np.array(
        [-float(elbo.loss(model, guide, *args, **kwargs)) for _ in range(num_batches)]
    )
    # data-parallel VI: each rank's values are its shard's estimates; their weighted sum
    # over the ranks is the full-data estimate (identity on one process)
    values = distributed.reduce_values(values).numpy()
    se = float(values.std(ddof=1) / math.sqrt(num_batches)) if num_batches > 1 else float("nan")
    return ELBOEstimate(float(values.mean()), se, per_batch * num_batches)
