r"""Closed-form M-steps derived from a Pyro model's own sites.

A Gaussian mixture or a hidden Markov model written as a plain Pyro model (``pyro.param``
weights, locations, scales; an enumerated assignment) has the same closed-form M-step as
pyrovi's ready models: weighted counts, means and scatter matrices under the E-step's
posterior.  This module reads that M-step off the enumerated trace at
:math:`\theta_t`, site by site, where a parameter enters the log joint in the standard way:

================================  ==========================================================
site distribution                 closed-form update of the matched parameter
================================  ==========================================================
``Categorical(probs=p)``          :math:`p_k \propto \sum w\,[v = k]` (expected counts)
``Bernoulli(probs=p)``            :math:`p = \sum w v / \sum w`
``Poisson(rate=r)``               :math:`r = \sum w x / \sum w`
``Normal(loc=m, scale=s)``        :math:`m = \sum (w / s^2) x / \sum (w / s^2)`,
                                  :math:`s^2 = \sum w (x - m)^2 / \sum w`
``MultivariateNormal(m, L)``      :math:`m = \sum w x / \sum w`,
                                  :math:`\Sigma = \sum w (x - m)(x - m)^\top / \sum w`
                                  (as ``scale_tril``, ``covariance_matrix`` or
                                  ``precision_matrix``, whichever the model passes)
================================  ==========================================================

The sums run over the dimensions along which the site's parameter tensor is broadcast
(expanded with stride 0, or of size 1): over the data plate for a shared parameter, and
within each enumerated value for ``locs[z]``.  ``w`` is the posterior marginal of the
site's factor (the gradient of :math:`\log Z` with respect to it, see
:mod:`pyrovi.em.estep`) times the site's scale and mask.

A parameter is *matched* when a site's parameter tensor, with its broadcast dimensions
removed, equals it, or one slice of it (``probs_x[0]``), in shape and value, its dimensions
possibly in another order (``Vindex(probs_x)[x_prev, x_curr]``, whose enumerated
dimensions lie right to left).  A match is a proposal, never
trusted on its own: :mod:`pyrovi.em.mstep` keeps it only when it raises
:math:`Q(\theta \mid \theta_t)`, and accepts it as the M-step only when every parameter was
matched and the gradient of :math:`Q` vanishes there (the stationarity condition of the
maximum, checked by autograd on the model itself); otherwise L-BFGS continues from it.  A
model that uses a parameter in any other way (an expression of two parameters, a parameter
shared by two sites) therefore gets the generic M-step, never a wrong one.
"""

from __future__ import annotations

import dataclasses
import itertools
import math

import torch
from pyro.distributions import (
    Bernoulli,
    Categorical,
    Independent,
    MultivariateNormal,
    Normal,
    Poisson,
)
from pyro.ops.packed import unpack

__all__ = ["Update", "propose", "variants", "signature"]

#: The most places (index prefixes) of one parameter that a site's tensor is compared with.
_MAX_PLACES = 256


def _align(t: torch.Tensor, ndim: int) -> torch.Tensor:
    """``t`` with size-1 dimensions prepended up to ``ndim`` dimensions."""
    if t.dim() == ndim:
        return t
    return t.reshape((1,) * (ndim - t.dim()) + tuple(t.shape))


def _broadcast_dims(t: torch.Tensor, shape: torch.Size, event: int) -> tuple:
    """The batch dimensions of ``shape`` along which ``t`` (aligned to it) is constant by
    construction: of size 1, or expanded with stride 0."""
    t = _align(t, len(shape))
    return tuple(
        d for d in range(len(shape) - event)
        if shape[d] > 1 and (t.shape[d] == 1 or t.stride(d) == 0)
    )


def _compact(t: torch.Tensor, ndim: int) -> torch.Tensor:
    """``t`` aligned to ``ndim`` dimensions with every stride-0 dimension cut to size 1."""
    t = _align(t, ndim)
    index = tuple(slice(0, 1) if t.stride(d) == 0 and t.shape[d] > 1 else slice(None)
                  for d in range(ndim))
    return t[index]


def _site_weights(site: dict, weight: torch.Tensor, symbol_to_dim: dict) -> torch.Tensor:
    """The E-step weight of one site's factor, unpacked to the site's batch layout and
    multiplied by the site's scale and mask."""
    packed = site["packed"]["log_prob"]
    w = weight.detach()  # a new tensor object: the E-step's keeps its own _pyro_dims
    w._pyro_dims = packed._pyro_dims
    w = unpack(w, symbol_to_dim)
    if site["mask"] is not None:
        w = w * site["mask"]
    return w * site["scale"]


def _unwrap(fn, w):
    """The base distribution of ``fn`` and ``w`` shaped for its batch (the dims that
    ``to_event`` reinterprets weigh alike)."""
    extra = 0
    while isinstance(fn, Independent):
        extra += fn.reinterpreted_batch_ndims
        fn = fn.base_dist
    return fn, (w.reshape(tuple(w.shape) + (1,) * extra) if extra else w)


def _sum(t: torch.Tensor, dims: tuple) -> torch.Tensor:
    return t.sum(dims, keepdim=True) if dims else t


def _broadcast(*shapes) -> tuple:
    """``torch.broadcast_shapes`` on plain tuples (a tenth of its cost)."""
    n = max(len(s) for s in shapes)
    out = [1] * n
    for s in shapes:
        for i, size in enumerate(s, n - len(s)):
            if size != 1:
                if out[i] not in (1, size):
                    raise ValueError(f"shapes {shapes} do not broadcast")
                out[i] = size
    return tuple(out)


def _full(w, *tensors):
    """The full batch shape of a site's factor, and ``w`` expanded to it; ``tensors`` are
    ``(tensor, event_dim)`` pairs."""
    shape = _broadcast(tuple(w.shape), *(tuple(t.shape[: t.dim() - e]) for t, e in tensors))
    return shape, _align(w, len(shape)).expand(shape)


# Each statistic of one site for one parameter reading is a tuple (current, num, den,
# reading): the parameter tensor as the site uses it (compact), the sums ``num`` and
# ``den`` over its broadcast dims, and how the pooled ``num / den`` becomes the parameter.


def _first_order(fn, value, w) -> list:
    """Statistics of the parameters whose update needs no other update: probabilities,
    rates, locations."""
    if isinstance(fn, Categorical):
        probs = fn.probs
        k = probs.shape[-1]
        shape, w = _full(w, (value, 0), (probs, 1))
        onehot = torch.nn.functional.one_hot(value.long(), k).to(w.dtype)
        counts = _sum(w.unsqueeze(-1) * onehot, _broadcast_dims(probs, tuple(shape) + (k,), 1))
        return [(_compact(probs, len(shape) + 1), counts, counts, "probs")]
    if isinstance(fn, (Bernoulli, Poisson)):
        param = fn.probs if isinstance(fn, Bernoulli) else fn.rate
        shape, w = _full(w, (value, 0), (param, 0))
        dims = _broadcast_dims(param, shape, 0)
        reading = "probability" if isinstance(fn, Bernoulli) else "rate"
        return [(_compact(param, len(shape)), _sum(w * value, dims), _sum(w, dims), reading)]
    if isinstance(fn, Normal):
        shape, w = _full(w, (value, 0), (fn.loc, 0), (fn.scale, 0))
        a = w / _align(fn.scale, len(shape)) ** 2  # the location's weight is w / scale^2
        dims = _broadcast_dims(fn.loc, shape, 0)
        return [(_compact(fn.loc, len(shape)), _sum(a * value, dims), _sum(a, dims), "ratio")]
    if isinstance(fn, MultivariateNormal):
        tril = fn._unbroadcasted_scale_tril
        shape, w = _full(w, (value, 1), (fn.loc, 1), (tril, 2))
        full = tuple(shape) + (value.shape[-1],)
        dims = _broadcast_dims(fn.loc, full, 1)
        if not set(dims) <= set(_broadcast_dims(tril, tuple(shape) + tril.shape[-2:], 2)):
            return []  # the covariance varies where the location is shared
        w = w.unsqueeze(-1)
        return [(_compact(fn.loc, len(full)), _sum(w * value, dims), _sum(w, dims), "ratio")]
    return []


def _second_order(fn, value, w, loc) -> list:
    """Statistics of scales and covariances about the location ``loc`` (the updated one
    where the location was matched, the current one otherwise)."""
    if isinstance(fn, Normal):
        shape, w = _full(w, (value, 0), (fn.loc, 0), (fn.scale, 0))
        dims = _broadcast_dims(fn.scale, shape, 0)
        sq = _sum(w * (value - loc) ** 2, dims)
        return [(_compact(fn.scale, len(shape)), sq, _sum(w, dims), "sqrt")]
    if isinstance(fn, MultivariateNormal):
        tril = fn._unbroadcasted_scale_tril
        shape, w = _full(w, (value, 1), (fn.loc, 1), (tril, 2))
        n = len(shape)
        r = value - loc
        dims = _broadcast_dims(tril, tuple(shape) + tril.shape[-2:], 2)
        scatter = _sum(w[..., None, None] * (r.unsqueeze(-1) * r.unsqueeze(-2)), dims)
        den = _sum(w, dims)[..., None, None]
        t = _compact(tril, n + 2)
        # the covariance and precision readings are formed only when looked for
        return [(t, scatter, den, "cholesky"),
                (lambda: t @ t.transpose(-1, -2), scatter, den, "covariance"),
                (lambda: torch.cholesky_inverse(t), scatter, den, "precision")]
    return []


def _finish(num: torch.Tensor, den: torch.Tensor, reading: str) -> torch.Tensor | None:
    # a probability or rate of exactly 0 (or 1) is a boundary point that the unconstrained
    # parameter cannot reach: it is moved to the nearest representable interior point
    tiny = torch.finfo(num.dtype).tiny
    if reading == "probs":
        probs = (num / num.sum(-1, keepdim=True)).clamp_min(tiny)
        return probs / probs.sum(-1, keepdim=True)
    value = num / den
    if reading == "probability":
        return value.clamp(tiny, 1 - torch.finfo(num.dtype).eps)
    if reading == "rate":
        return value.clamp_min(tiny)
    if reading == "sqrt":
        return value.sqrt()
    if reading in ("cholesky", "covariance", "precision"):
        value = (value + value.transpose(-1, -2)) / 2
        chol, info = torch.linalg.cholesky_ex(value)
        if bool((info != 0).any()):
            return None
        if reading == "cholesky":
            return chol
        return value if reading == "covariance" else torch.cholesky_inverse(chol)
    return value


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    a, b = a.squeeze(), b.squeeze()
    if a.shape != b.shape:
        return False
    if torch.equal(a, b):  # locs[z], tril[z]: the parameter itself, bit for bit
        return True
    scale = max(float(b.abs().max()), 1.0) if b.numel() else 1.0
    return bool(((a - b).abs() <= 1e-5 * scale).all())


def _orders(ndim: int) -> list[tuple]:
    """Orders of ``ndim`` dims with the last (the event dim) kept last; the identity first."""
    if ndim == 0:
        return [()]
    return [p + (ndim - 1,) for p in itertools.permutations(range(ndim - 1))]


def _locate(value: torch.Tensor, current: torch.Tensor) -> tuple | None:
    """``(index, order)`` such that ``value[index]`` is ``current`` (size-1 dims dropped)
    with its dims in ``order``, or None when there is no such place or more than one.

    ``index`` is ``()`` for the whole parameter, ``(i,)`` for ``probs_x[i]`` (the first
    step of a Markov chain), ``(i, j)`` deeper; the order is not the identity where the
    enumerated dims of ``Vindex(probs_x)[x_prev, x_curr]`` lie right to left.  The whole
    parameter and the identity order are tried first.
    """
    c = current.squeeze()
    for depth in range(max(value.dim(), 1)):
        if math.prod(value.shape[:depth]) > _MAX_PLACES:
            break
        if value[(0,) * depth].squeeze().dim() != c.dim():
            continue
        hits = []
        for index in itertools.product(*(range(n) for n in value.shape[:depth])):
            for order in _orders(c.dim()):
                if _at(value, index, order, c):
                    hits.append((index, order))
                    break
        if hits:
            return hits[0] if len(hits) == 1 else None
    return None


def _match(params: dict, current, key=None, places: dict | None = None
           ) -> list[tuple[str, tuple]]:
    """``(name, (index, order))`` of each parameter that ``current`` (a tensor, or a
    function that forms it) is a place of (:func:`_locate`).

    With a ``places`` cache, the places found for ``key`` (a site and a reading) before are
    checked first, one comparison each, and searched for again only when one no longer
    holds: a site uses its parameters at the same places from one iteration to the next.
    A reading that matched nothing before is not looked for again while the cache lasts
    (the caller clears it at every gradient test).
    """
    if places is not None and key in places:
        cached = places[key]
        if not cached:
            return cached
        current = current() if callable(current) else current
        if all(_at(params[name], index, order, current) for name, (index, order) in cached):
            return cached
    current = current() if callable(current) else current
    found = []
    for name, value in params.items():
        place = _locate(value, current)
        if place is not None:
            found.append((name, place))
    if places is not None:
        places[key] = found
    return found


def _at(value: torch.Tensor, index: tuple, order: tuple, current: torch.Tensor) -> bool:
    """Whether ``value[index]`` is ``current`` with its dims in ``order`` (:func:`_locate`)."""
    c, sub = current.squeeze(), value[index].squeeze()
    return (c.dim() == len(order) and tuple(c.shape[d] for d in order) == tuple(sub.shape)
            and _same(c.permute(order), sub))


def _to_place(t: torch.Tensor, order: tuple, shape) -> torch.Tensor:
    """A site-layout tensor ``t`` in the parameter's layout at a place (``shape``)."""
    return t.squeeze().permute(order).reshape(shape)


def _to_place_fast(t, index, order, shape):
    """:func:`_to_place`, skipping the reshuffle for the whole parameter in its own order."""
    if not index and order == tuple(range(len(order))) and t.numel() == math.prod(shape):
        return t.reshape(shape)
    return _to_place(t, order, shape)


def _from_place(t: torch.Tensor, order: tuple, shape) -> torch.Tensor:
    """The inverse of :func:`_to_place`: a parameter slice back in the site's layout."""
    inverse = tuple(sorted(range(len(order)), key=order.__getitem__))
    return t.squeeze().permute(inverse).reshape(shape)


@dataclasses.dataclass(frozen=True)
class Update:
    """One closed-form update of one parameter.

    Attributes
    ----------
    value : torch.Tensor
        The proposed constrained value.
    reading : str
        How the pooled statistics became the value (``"probs"``, ``"ratio"``,
        ``"cholesky"``, ...).
    uses : frozenset
        ``(site, index, order)`` of every site use whose statistics were pooled: with the
        reading, what the update was derived from (:func:`signature`).
    """

    value: torch.Tensor
    reading: str
    uses: frozenset


def propose(trace, weights: tuple, params: dict[str, torch.Tensor],
            places: dict | None = None) -> dict[str, list[Update]]:
    """Closed-form M-step proposals for the parameters the model uses in a standard way.

    Parameters
    ----------
    trace : pyro.poutine.Trace
        The enumerated, packed trace of the model at :math:`\\theta_t`
        (:func:`pyrovi.em.estep.enum_trace`).
    weights : tuple of torch.Tensor
        The E-step's factor marginals (:class:`pyrovi.em.estep.EnumEStep`), in the trace's
        order of sample sites.
    params : dict
        Constrained current values of the parameters, by name.
    places : dict, optional
        A cache of where each site uses the parameters, kept by the caller from one
        iteration to the next (see :func:`_match`).

    Returns
    -------
    dict
        For each matched parameter, its :class:`Update`, one per reading (more than one
        where readings coincide at the current values: at ``scale_tril = I`` a Cholesky
        factor, a covariance and a precision; :func:`variants` tries them in turn).  A
        parameter used at several sites (the transition matrix of a Markov chain at every
        step) pools their statistics.  Parameters left out are left to the generic M-step.
    """
    sites = []
    for (name, site), weight in zip(
        ((n, s) for n, s in trace.nodes.items() if s["type"] == "sample"), weights, strict=True
    ):
        fn, w = _unwrap(site["fn"], _site_weights(site, weight, trace.symbol_to_dim))
        sites.append((name, fn, site["value"], w))
    pooled: dict[tuple, list] = {}

    def pool(site, stats):
        for current, num, den, reading in stats:
            den = den.expand_as(num)
            for name, (index, order) in _match(params, current, (site, reading), places):
                value = params[name]
                shape = value[index].shape
                if num.numel() != math.prod(shape) or num.squeeze().dim() != len(order):
                    continue
                acc = pooled.get((name, reading))
                if acc is None and not index:  # the first use covers the whole parameter
                    pooled[(name, reading)] = [
                        _to_place_fast(num, index, order, shape).clone(),
                        _to_place_fast(den, index, order, shape).clone(), {(site, index, order)}]
                    continue
                if acc is None:
                    acc = pooled[(name, reading)] = [torch.zeros_like(value),
                                                     torch.zeros_like(value), set()]
                acc[0][index] += _to_place_fast(num, index, order, shape)
                acc[1][index] += _to_place_fast(den, index, order, shape)
                acc[2].add((site, index, order))

    with torch.no_grad():
        for site, fn, value, w in sites:
            try:
                pool(site, _first_order(fn, value, w))
            except (RuntimeError, ValueError, IndexError):  # a layout this reading does not take
                continue
        locations = {key: _finish(num, den, key[1])
                     for key, (num, den, _) in pooled.items() if key[1] == "ratio"}
        for site, fn, value, w in sites:
            if not isinstance(fn, (Normal, MultivariateNormal)):
                continue
            try:
                loc = _compact(fn.loc, fn.loc.dim())
                names = _match(params, loc, (site, "location"), places)
                if len(names) == 1 and locations.get((names[0][0], "ratio")) is not None:
                    name, (index, order) = names[0]
                    loc = _from_place(locations[(name, "ratio")][index], order, loc.shape)
                pool(site, _second_order(fn, value, w, loc))
            except (RuntimeError, ValueError, IndexError):
                continue
    out: dict[str, list] = {}
    for (name, reading), (num, den, uses) in pooled.items():
        new = locations.get((name, reading))
        if new is None:  # the locations were final before the second-order pass
            new = _finish(num, den, reading)
        if new is not None and bool(torch.isfinite(new).all()):
            out.setdefault(name, []).append(
                Update(new.to(params[name].dtype), reading, frozenset(uses)))
    return out


def variants(proposals: dict[str, list[Update]]) -> list[dict[str, Update]]:
    """The proposals to try in turn: the ``i``-th reading of every ambiguous parameter
    together (at ``scale_tril = I`` the readings as a Cholesky factor, a covariance and a
    precision coincide; the gradient test tells them apart)."""
    longest = max((len(v) for v in proposals.values()), default=0)
    return [{name: v[min(i, len(v) - 1)] for name, v in proposals.items()} for i in range(longest)]


def signature(variant: dict[str, Update]) -> frozenset:
    """What a proposal was derived from: each parameter with its reading and site uses.

    Two proposals with one signature are the same closed form of the same model
    structure; :class:`pyrovi.em.engines.EnumEngine` proves a signature by the gradient
    test once and re-proves it periodically and at the last iteration.
    """
    return frozenset((name, u.reading, u.uses) for name, u in variant.items())
