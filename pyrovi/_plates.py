"""The extra plate for draws (or particles), and which trace sites count: one home for both.

Every vectorized evaluation in pyrovi (guide draws, log densities at posterior draws, the
posterior and prior predictive, EM's exact posterior, the ELBO's vectorization check) runs
the model or guide once under an outermost plate of ``n`` draws at batch dim
``-(max_plate_nesting + 1)``, as Pyro's vectorized ELBOs do, and moves site values between their
natural shape ``(n, *site_shape)`` and the plate layout ``(n, 1, ..., 1, *site_shape)``.
The helpers here do that; :func:`full_data_runs` turns a model that subsamples a plate
into runs whose log joints add up to that of the full data.  They import only torch and
Pyro.

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
from pyro.poutine.messenger import Messenger
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
    "full_data_runs",
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


# ----------------------------------------------------------------- the full data
class _Chunk(Messenger):
    """Inside ``plate`` (conditioned on one index chunk): undo the plate's ``full / size``
    scale and mask out the chunk's positions where ``keep`` is False, so that the log
    joint of a run is the global terms plus the *unscaled* terms of the kept positions."""

    def __init__(self, plate: str, factor: float, keep: torch.Tensor, dim: int):
        super().__init__()
        self.plate, self.factor = plate, factor
        self.keep = keep.reshape(keep.shape + (1,) * (-dim - 1))

    def _process_message(self, msg):  # outermost, so after the plate has scaled msg
        if msg["type"] != "sample" or site_is_subsample(msg):
            return
        if not any(f.name == self.plate for f in msg["cond_indep_stack"]):
            return
        msg["scale"] = msg["scale"] / self.factor
        msg["mask"] = self.keep if msg["mask"] is None else msg["mask"] & self.keep


def _subsampled_plates(model: Callable, args: tuple, kwargs: dict) -> tuple:
    """``(trace, {plate: (full size, subsample size)})``: one trace of the model (the
    caller's RNG untouched) and every plate it subsamples."""
    with torch.no_grad(), torch.random.fork_rng(devices=[]):  # the caller's draws unchanged
        trace = poutine.trace(model).get_trace(*args, **kwargs)
    sub = {
        name: (site["fn"].size, site["fn"].subsample_size)
        for name, site in trace.nodes.items()
        if site["type"] == "sample" and site_is_subsample(site)
    }
    return trace, {k: v for k, v in sub.items() if v[1] is not None and v[1] < v[0]}


def _subsampled_plate(model: Callable, args: tuple, kwargs: dict) -> tuple | None:
    """``(trace, plate, full size, subsample size)`` of the one plate a model subsamples,
    from one trace of it (the caller's RNG untouched); None when it subsamples none.

    Raises
    ------
    ModelError
        When more than one plate subsamples: the chunks of two plates do not factorize.
    """
    from pyrovi.errors import ModelError

    trace, sub = _subsampled_plates(model, args, kwargs)
    if not sub:
        return None
    if len(sub) > 1:
        raise ModelError(
            f"the model subsamples {len(sub)} plates {sorted(sub)}; pyrovi covers the full "
            "data of one subsampled plate only. Give all but one of them subsample_size=None."
        )
    (plate, (full, size)), = sub.items()
    return trace, plate, full, size


def full_data_runs(
    model: Callable, args: tuple, kwargs: dict, conditioned: tuple = ()
) -> list[tuple[Callable, float]] | None:
    r"""``[(model_c, w_c)]`` with :math:`\log p(x, z) = \sum_c w_c \, L_c` over the full
    data, where :math:`L_c` is the log joint of a run of ``model_c``; None for a model
    that subsamples no plate.

    A model with ``pyro.plate(name, N, subsample_size=s)`` scores a random subsample,
    scaled by ``N / s``: an unbiased but noisy estimate of the log joint, not the log
    joint.  Here the plate is conditioned on index chunks of size ``s`` that cover
    ``0..N-1`` (the last overlaps its predecessor, the overlap masked), with the scale
    undone; each run then holds the global terms once, so one more run with every local
    term masked (the global terms alone) is counted ``1 - k`` times for ``k`` chunks.
    Enumerated sites of the plate are summed out per chunk, as in the fit.

    Raises
    ------
    ModelError
        When more than one plate subsamples (the chunks of two plates do not factorize),
        or a site of ``conditioned`` (the latents given by value) lives in the subsampled
        plate: a draw of it covers one subsample, so the full data has no log joint.
    """
    from pyrovi.errors import ModelError

    found = _subsampled_plate(model, args, kwargs)
    if found is None:
        return None
    trace, plate, full, size = found
    frames = {
        (f.vectorized, f.dim) for site in trace.nodes.values() if site["type"] == "sample"
        for f in site["cond_indep_stack"] if f.name == plate
    }
    if not frames:
        return None  # no site under the plate: nothing is scaled
    if any(not vectorized for vectorized, _ in frames):
        raise ModelError(
            f"plate {plate!r} subsamples {size} of {full} and is sequential (`for i in "
            "pyro.plate(...)`): pyrovi computes the full data's log joint for a vectorized "
            "plate only, and does not report the scaled subsample in its place. Write it "
            "`with pyro.plate(...)`, or fit without subsample_size."
        )
    (_, dim), = frames
    local = [
        k for k in conditioned
        if k in trace.nodes and any(f.name == plate for f in trace.nodes[k]["cond_indep_stack"])
    ]
    if local:
        raise ModelError(
            f"latent site(s) {local} live in the plate {plate!r}, which subsamples {size} of "
            f"{full}: a draw of them covers one subsample, so log p(x, z) of the full data "
            "does not exist and pyrovi does not report the scaled subsample in its place. "
            "Fit without subsample_size for the full-data log joint, evidence and lp.",
            site=local[0],
        )
    factor = full / size
    runs = []
    for start in range(0, full, size):
        first = min(start, full - size)
        keep = torch.arange(size) >= start - first  # the overlap with the last chunk: masked
        chunk = poutine.condition(model, data={plate: torch.arange(first, first + size)})
        runs.append((_Chunk(plate, factor, keep, dim)(chunk), 1.0))
    globals_only = poutine.condition(model, data={plate: torch.arange(size)})
    runs.append((_Chunk(plate, factor, torch.zeros(size, dtype=torch.bool), dim)(globals_only),
                 1.0 - len(runs)))
    return runs


def first_chunk_model(
    model: Callable, args: tuple, kwargs: dict, sites: tuple
) -> tuple[Callable, str] | None:
    """``(model_1, plate)``: ``model`` with its subsampled plate conditioned on the fixed
    index chunk ``0..s-1`` (``s`` its subsample size) and the plate's ``full / s`` scale
    undone, when a site of ``sites`` lives in that plate; None when no plate subsamples or
    none of ``sites`` lives in one.

    Draws of such local sites then cover the same entries of the plate in every run (a
    random subsample per run would give each draw other entries), and a posterior
    conditional of them, such as Pyro's ``infer_discrete``, is that of the unscaled
    data (the plate's scale would temper it).

    Raises
    ------
    ModelError
        When several plates subsample and a site of ``sites`` lives in one of them.
    """
    from pyrovi.errors import ModelError

    trace, sub = _subsampled_plates(model, args, kwargs)
    frames = {
        f.name: f.dim for k in sites if k in trace.nodes
        for f in trace.nodes[k]["cond_indep_stack"] if f.name in sub and f.vectorized
    }
    if not frames:
        return None
    if len(sub) > 1:
        raise ModelError(
            f"the model subsamples {len(sub)} plates {sorted(sub)} and site(s) of {list(sites)} "
            "live in one of them; pyrovi draws local sites for one subsampled plate only. "
            "Give all but one of them subsample_size=None.",
        )
    (plate, dim), = frames.items()
    full, size = sub[plate]
    chunk = poutine.condition(model, data={plate: torch.arange(size)})
    return _Chunk(plate, full / size, torch.ones(size, dtype=torch.bool), dim)(chunk), plate


@dataclasses.dataclass(frozen=True)
class SubsampleChunks:
    """The index chunks of a model's subsampled plate that cover its full data.

    Attributes
    ----------
    plate : str
        The plate's name.
    chunks : list of (torch.Tensor, int)
        ``(indices, keep_from)``: ``subsample_size`` indices each, covering ``0..N-1`` in
        order; the last chunk overlaps its predecessor, and its first ``keep_from``
        positions (the overlap) are to be dropped.
    axes : dict of str to int
        Sample site inside the plate -> the axis of its value (one run) that the plate
        owns.
    """

    plate: str
    chunks: list
    axes: dict

    def assemble(self, parts: list, lead: int = 1) -> dict:
        """Join per-chunk site values (``lead`` leading draw axes) along the plate; a site
        outside the plate is taken from the first chunk."""
        out = {}
        for k in parts[0]:
            if k not in self.axes:
                out[k] = parts[0][k]
                continue
            axis = lead + self.axes[k]
            out[k] = torch.cat(
                [p[k].narrow(axis, keep, p[k].shape[axis] - keep)
                 for p, (_, keep) in zip(parts, self.chunks, strict=True)],
                dim=axis,
            )
        return out


def subsample_chunks(model: Callable, args: tuple, kwargs: dict) -> SubsampleChunks | None:
    """The :class:`SubsampleChunks` of a model that subsamples one vectorized plate; None
    for a model that subsamples none.

    Raises
    ------
    ModelError
        When more than one plate subsamples, or the subsampled plate is sequential.
    """
    from pyrovi.errors import ModelError

    found = _subsampled_plate(model, args, kwargs)
    if found is None:
        return None
    trace, plate, full, size = found
    axes = {}
    for name, site in trace.nodes.items():
        if site["type"] != "sample" or site_is_subsample(site):
            continue
        for f in site["cond_indep_stack"]:
            if f.name != plate:
                continue
            if not f.vectorized:
                raise ModelError(
                    f"plate {plate!r} subsamples {size} of {full} and is sequential (`for i "
                    "in pyro.plate(...)`): pyrovi covers the full data of a vectorized plate "
                    "only. Write it `with pyro.plate(...)`, or fit without subsample_size."
                )
            axes[name] = len(site["fn"].batch_shape) + f.dim
    chunks = []
    for start in range(0, full, size):
        first = min(start, full - size)
        chunks.append((torch.arange(first, first + size), start - first))
    return SubsampleChunks(plate, chunks, axes)
