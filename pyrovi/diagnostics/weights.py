r"""Importance log-weights :math:`\log w_s = \log p(x, z_s) - \log q(z_s)`,
:math:`z_s \sim q`, for a fit or for a model with a guide.

The draws are vectorized over particles (one run of the guide and one of the model per
chunk, the particles in an outermost plate, as Pyro's ``vectorized_importance_weights``
does) and taken in chunks of ``chunk_size`` so that memory stays bounded however many
particles are asked for.  Models that cannot broadcast over a particle dimension, and fits
with enumerated discrete latents, are evaluated one draw at a time.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping

import pyro.poutine as poutine
import torch

from pyrovi._draws import enumerated_log_weights, guide_draws, model_log_density
from pyrovi._model import ModelInfo, inspect_model, model_name
from pyrovi._plates import is_traced_sample, site_shapes
from pyrovi._result import FitResult
from pyrovi._runtime import check_positive, resolve_seed, seeded
from pyrovi.errors import ModelError

__all__ = ["LogWeights", "importance_log_weights", "result_log_weights", "DEFAULT_CHUNK"]

#: Particles per vectorized chunk (bounds memory: one chunk holds ``chunk * N`` likelihood
#: terms for N observations).
DEFAULT_CHUNK = 1000


@dataclasses.dataclass(frozen=True)
class LogWeights:
    """Importance log-weights of ``num_particles`` independent draws from q.

    Attributes
    ----------
    log_w : torch.Tensor
        ``(S,)`` float64, :math:`\\log p(x, z_s) - \\log q(z_s)` (nats).
    log_p : torch.Tensor
        ``(S,)`` float64, the log joint :math:`\\log p(x, z_s)` (all constants included;
        enumerated discrete latents summed out).
    log_q : torch.Tensor
        ``(S,)`` float64, the log density of the proposal at each draw.
    num_particles : int
        ``S``.
    vectorized : bool
        Whether the particles were drawn in vectorized chunks (False: one at a time).  For
        a fit result (:func:`result_log_weights`) True: the chunks are asked of the
        result's own methods, which vectorize within a chunk where its model allows.
    values : dict of str to torch.Tensor, optional
        Site -> ``(S, *site shape)`` the draws themselves (constrained values), kept only
        when asked for (``result_log_weights(..., keep_values=True)``); else None.
    """

    log_w: torch.Tensor
    log_p: torch.Tensor
    log_q: torch.Tensor
    num_particles: int
    vectorized: bool
    values: dict | None = dataclasses.field(default=None, repr=False, compare=False)

    def __repr__(self) -> str:
        w = self.log_w
        finite = w[torch.isfinite(w)]
        rng = (f"log_w in [{float(finite.min()):.4g}, {float(finite.max()):.4g}]"
               if finite.numel() else "no finite log_w")
        return (f"LogWeights(num_particles={self.num_particles}, {rng}, "
                f"vectorized={self.vectorized})")


def _chunks(n: int, size: int):
    while n > 0:
        yield min(n, size)
        n -= size


def _check_particles(num_particles) -> int:
    if isinstance(num_particles, bool) or not isinstance(num_particles, int):
        raise TypeError(
            f"num_particles must be an int >= 2, got {type(num_particles).__name__} "
            f"{num_particles!r}"
        )
    if num_particles < 2:
        raise ValueError(
            f"num_particles must be >= 2 (a standard error needs at least two draws), got "
            f"{num_particles}; pass e.g. num_particles=1000"
        )
    return num_particles


def _nonfinite_site(model, q_name: str, args, kwargs, values: Mapping[str, torch.Tensor]) -> str:
    """Name the model site whose log density is not finite at one draw, else the proposal
    ``q_name``."""
    data = {k: v for k, v in values.items()}
    with torch.no_grad():
        trace = poutine.trace(poutine.condition(model, data=data)).get_trace(*args, **kwargs)
    for name, site in trace.nodes.items():
        if not is_traced_sample(site):
            continue
        if not bool(torch.isfinite(site["fn"].log_prob(site["value"])).all()):
            kind = "observed" if site["is_observed"] else "latent"
            return f"model {kind} site {name!r}"
    return f"{q_name} (its log density at the draw)"


def _finish(model, q_name, args, kwargs, log_p, log_q, vectorized, draw_at) -> LogWeights:
    log_p = torch.cat(log_p).to(torch.float64)
    log_q = torch.cat(log_q).to(torch.float64)
    log_w = log_p - log_q
    bad = ~torch.isfinite(log_w)
    if bool(bad.any()):
        i = int(bad.nonzero()[0])
        where = "unknown site"
        if draw_at is not None:
            where = _nonfinite_site(model, q_name, args, kwargs, draw_at(i))
        raise ModelError(
            f"{int(bad.sum())} of {log_w.numel()} importance log-weights are non-finite "
            f"(first at draw {i}: log p = {float(log_p[i])}, log q = {float(log_q[i])}), "
            f"produced by {where}; expected finite log p(x, z) - log q(z). Check that the "
            "guide's draws lie in the support of every model site, and that the fit "
            "converged to finite parameters.",
            site=where.split("'")[1] if "'" in where else None,
        )
    return LogWeights(log_w, log_p, log_q, int(log_w.numel()), vectorized)


def importance_log_weights(
    model: Callable,
    guide: Callable,
    args: tuple = (),
    kwargs: Mapping | None = None,
    *,
    num_particles: int,
    chunk_size: int = DEFAULT_CHUNK,
    max_plate_nesting: int | None = None,
    shapes: Mapping | None = None,
    latent_sites: tuple | None = None,
    enumerated_sites: tuple | None = None,
    vectorized: bool | None = None,
) -> LogWeights:
    r"""Importance log-weights of ``num_particles`` draws from ``guide`` for ``model``.

    Runs with the current Pyro parameter store and random state (wrap the call in a fit's
    ``scope()`` and a seed).  Whatever is not given (plate nesting, site shapes, latent and
    enumerated sites, whether particles vectorize) is found from one trace of the model.

    Parameters
    ----------
    model, guide : callable
        A Pyro model and a guide covering its continuous latent sites; the model's finite
        discrete latents that the guide does not sample are summed out by enumeration.
    args, kwargs
        The model's arguments.
    num_particles : int
        Draws from the guide, at least 2.
    chunk_size : int
        Draws per vectorized chunk (default 1,000).

    Returns
    -------
    LogWeights

    Raises
    ------
    ModelError
        When a weight is not finite; the message names the site that produced it.
    """
    from pyrovi.vi.objective import vectorization_problem

    kwargs = dict(kwargs or {})
    num_particles = _check_particles(num_particles)
    check_positive("chunk_size", chunk_size, integer=True)
    if None in (max_plate_nesting, shapes, latent_sites, enumerated_sites, vectorized):
        info = inspect_model(model, args, kwargs)
        if max_plate_nesting is None:
            max_plate_nesting = info.max_plate_nesting
        shapes = site_shapes(info.trace) if shapes is None else shapes
        latent_sites = info.latent if latent_sites is None else latent_sites
        if enumerated_sites is None:
            with torch.no_grad():
                gtrace = poutine.trace(guide).get_trace(*args, **kwargs)
            enumerated_sites = tuple(n for n in info.discrete if n not in gtrace.nodes)
        if vectorized is None:
            vectorized = not enumerated_sites and (
                vectorization_problem(model, guide, args, kwargs, info, 3) is None
            )
    if enumerated_sites:
        log_w, log_q = enumerated_log_weights(
            model, guide, args, kwargs, num_particles, max_plate_nesting=max_plate_nesting
        )
        return _finish(model, _guide_name(guide), args, kwargs, [log_w + log_q], [log_q],
                       False, None)
    sites = tuple(latent_sites)
    log_p, log_q, kept = [], [], []
    for n in _chunks(num_particles, chunk_size if vectorized else num_particles):
        draws = guide_draws(
            guide, args, kwargs, n, sites=sites, shapes=shapes, max_plate_nesting=max_plate_nesting,
            vectorized=vectorized,
        )
        lp, _ = model_log_density(
            model, args, kwargs, draws.values, shapes=shapes, max_plate_nesting=max_plate_nesting,
            vectorized=vectorized,
        )
        log_p.append(lp)
        log_q.append(draws.log_q)
        kept.append((n, draws.values))
    draw_at = _draw_finder(kept)

    return _finish(model, _guide_name(guide), args, kwargs, log_p, log_q, vectorized, draw_at)


def _guide_name(guide) -> str:
    return f"guide {model_name(guide)!r}"


def _draw_finder(kept: list) -> Callable:
    """The values of draw ``i`` (unbatched) among chunks ``[(n, values), ...]``."""

    def draw_at(i):
        for n, values in kept:
            if i < n:
                return {k: v[i] for k, v in values.items()}
            i -= n

    return draw_at


def result_log_weights(
    result, num_particles: int, *, seed: int | None = None, chunk_size: int = DEFAULT_CHUNK,
    keep_values: bool = False,
) -> LogWeights:
    r"""Importance log-weights of a fit's own posterior approximation.

    Draws from q with :meth:`~pyrovi._result.FitResult.posterior_draws` and weighs them
    with :meth:`~pyrovi._result.FitResult.log_joint`, in chunks of ``chunk_size``.  For a
    VI fit q is the fitted guide (enumerated discrete latents summed out of the joint); for
    a fit with the exact posterior (EM) every weight equals
    :math:`\log p(x \mid \hat\theta)` up to round-off.  With ``keep_values=True`` the
    draws are returned too (``LogWeights.values``), for statistics of q beside the weights.

    Raises
    ------
    ValueError
        When the result lacks the model or its arguments, or ``num_particles`` < 2.
    """
    check_result(result)
    num_particles = _check_particles(num_particles)
    check_positive("chunk_size", chunk_size, integer=True)
    seed = resolve_seed(seed)
    log_p, log_q, kept = [], [], []
    with seeded(seed, result.device), torch.no_grad():
        for n in _chunks(num_particles, chunk_size):
            draws = result.posterior_draws(n)
            log_p.append(result.log_joint(draws.values).reshape(-1))
            log_q.append(draws.log_q.reshape(-1))
            kept.append((n, draws.values))
    with result.scope():
        out = _finish(
            result.model, f"the {result.family!r} fit's q", result.args, result.kwargs,
            log_p, log_q, True, _draw_finder(kept),
        )
    if keep_values:
        values = {k: torch.cat([v[k] for _, v in kept]) for k in kept[0][1]}
        out = dataclasses.replace(out, values=values)
    return out


def check_result(result: FitResult) -> ModelInfo:
    """Refuse a result that lacks what diagnostics need (the model and its arguments);
    return the model's inspection at the fitted parameters."""
    if not isinstance(result, FitResult):
        raise TypeError(
            f"expected a pyrovi.VIResult or EMResult (a FitResult), got {type(result).__name__}"
        )
    missing = [
        f for f in ("model", "args", "kwargs", "param_state", "latent_sites")
        if getattr(result, f) is None
    ]
    if missing or not callable(result.model):
        raise ValueError(
            f"result {type(result).__name__} lacks {missing or ['a callable model']}; "
            "expected a pyrovi.VIResult or pyrovi.EMResult that holds the model, its "
            "arguments (args, kwargs) and its parameter store. Pass the result returned by "
            "VI(...).run(*args) or EM(...).run(*args) unchanged."
        )
    try:
        # the inspection's draws are thrown away: the caller's random state is left alone
        with torch.random.fork_rng(), result.scope():
            info = inspect_model(result.model, tuple(result.args), dict(result.kwargs))
    except ModelError as err:
        raise ValueError(
            f"the model arguments held by the {type(result).__name__} (args of length "
            f"{len(result.args)}, kwargs {sorted(result.kwargs)}) do not run its model "
            f"{model_name(result.model)!r}: {err.__cause__ or err}. Diagnostics rerun the "
            "model with the arguments the fit was run with; pass the result returned by "
            "run(*args) unchanged."
        ) from err
    if not result.latent_sites:
        raise ValueError(
            f"result {type(result).__name__} has no latent sites; there is nothing to "
            "diagnose (expected at least one latent pyro.sample site in the model)"
        )
    return info
