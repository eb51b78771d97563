"""Draws from a fit with their log densities: the shared machinery behind ``sample``,
``predictive``, ``posterior_draws``, importance weights (diagnostics) and the ArviZ export.

Every function takes and returns site values in their natural shape with a leading draw
dimension, ``(n, *site_shape)``.  Vectorized evaluations add the draw plate of
:mod:`pyrovi._plates` (outermost, at ``dim = -(max_plate_nesting + 1)``); the others run
the model once per draw.  :func:`seeded_draws` is the one meaning of a result method's
``seed`` argument.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator, Mapping

import pyro.poutine as poutine
import torch
from pyro.distributions.util import scale_and_mask
from pyro.infer import TraceEnum_ELBO, config_enumerate
from pyro.poutine.messenger import Messenger

from pyrovi._plates import (
    DRAW_PLATE,
    SiteShape,
    draw_plate,
    is_traced_sample,
    is_user_sample,
    pad_draws,
    per_draw_sum,
    site_shapes,
    unpad_draws,
)
from pyrovi._runtime import resolve_seed, seeded

__all__ = [
    "DRAW_PLATE",
    "SiteShape",
    "site_shapes",
    "Draws",
    "seeded_draws",
    "guide_draws",
    "model_log_density",
    "enumerated_log_joint",
    "enumerated_log_weights",
    "model_draws",
    "predictive_draws",
    "uncondition_data",
    "enumerated_pointwise_log_lik",
]


@contextlib.contextmanager
def seeded_draws(seed: int | None, device: torch.device | None = None) -> Iterator[None]:
    """The random state of a result's draws: what ``seed`` means in ``sample``,
    ``posterior_draws``, ``draws`` and ``predictive`` of every pyrovi result.

    Parameters
    ----------
    seed : int or None
        An int: torch's random state is forked and seeded with it for the block, so the
        same seed gives the same draws and the caller's random state (CPU, and the CUDA
        device of ``device``) is exactly as before afterwards.  None: the draws come from
        torch's global random state as it stands, as ``torch.randn`` does; they follow
        ``torch.manual_seed`` and advance the caller's state.
    device : torch.device, optional
        The result's device (its CUDA generator is forked too).

    Raises
    ------
    TypeError
        When ``seed`` is neither an int nor None.
    """
    if seed is None:
        yield
        return
    with seeded(resolve_seed(seed), device):
        yield


@dataclasses.dataclass(frozen=True)
class Draws:
    """Draws from a fit's q with its log density at each, as
    :meth:`pyrovi._result.FitResult.posterior_draws` returns them.

    Attributes
    ----------
    values : dict of str to torch.Tensor
        Latent site -> ``(n, *site_shape)`` in constrained space (the sites q covers).
    log_q : torch.Tensor
        ``(n,)``: log density of q at each draw: the guide's (Jacobians of its
        constraining transforms included) or, for EM, the exact log posterior.
    """

    values: dict
    log_q: torch.Tensor

    def __repr__(self) -> str:  # short: the fields are tensors
        shapes = {name: tuple(v.shape) for name, v in self.values.items()}
        n = self.log_q.shape[0] if self.log_q.dim() else 1
        return f"Draws(n={n}, values of shape {shapes})"


def _guide_log_q(trace: poutine.Trace) -> torch.Tensor:
    """log q of one unbatched guide trace (auxiliary sites and Jacobians included)."""
    return sum(
        site["fn"].log_prob(site["value"]).sum()
        for site in trace.nodes.values()
        if site["type"] == "sample" and not site["is_observed"]
    )


def guide_draws(
    guide: Callable,
    args: tuple,
    kwargs: Mapping,
    n: int,
    *,
    sites: tuple,
    shapes: Mapping[str, SiteShape],
    max_plate_nesting: int,
    vectorized: bool,
) -> Draws:
    """``n`` draws of the latent ``sites`` from a guide, with log q at each draw.

    The guide's own auxiliary sites (e.g. the joint latent of ``AutoMultivariateNormal``)
    and the Jacobian terms of its constraining transforms enter ``log_q``, exactly as in
    Pyro's ELBOs, so ``log_q`` is the density of the constrained values.
    """
    if vectorized:
        with torch.no_grad():
            with draw_plate(n, max_plate_nesting):
                trace = poutine.trace(guide).get_trace(*args, **kwargs)
            trace.compute_log_prob()
        log_q = torch.zeros(n)
        values = {}
        for name, site in trace.nodes.items():
            if site["type"] != "sample" or site["is_observed"]:
                continue
            log_q = log_q + per_draw_sum(site["log_prob"], n, max_plate_nesting)
            if name in sites:
                values[name] = site["value"].reshape((n,) + shapes[name].shape)
        return Draws(values, log_q)
    rows: dict[str, list] = {k: [] for k in sites}
    log_qs = []
    with torch.no_grad():
        for _ in range(n):
            trace = poutine.trace(guide).get_trace(*args, **kwargs)
            log_qs.append(_guide_log_q(trace))
            for k in sites:
                if k in trace.nodes:
                    rows[k].append(trace.nodes[k]["value"])
    values = {k: torch.stack(v) for k, v in rows.items() if v}
    return Draws(values, torch.stack([torch.as_tensor(x) for x in log_qs]))


def _is_datum(site: dict, values: Mapping) -> bool:
    """An observed site of the model proper that was not conditioned on by ``values``."""
    return site["is_observed"] and is_user_sample(site) and site["name"] not in values


def _pointwise(site: dict) -> torch.Tensor:
    """A data site's log-probability per observation: masked, but not scaled (a subsampled
    plate's scale ``full / subsample`` or ``poutine.scale`` belongs to the total only)."""
    return scale_and_mask(site["unscaled_log_prob"], mask=site["mask"])


def model_log_density(
    model: Callable,
    args: tuple,
    kwargs: Mapping,
    values: Mapping[str, torch.Tensor],
    *,
    shapes: Mapping[str, SiteShape],
    max_plate_nesting: int,
    vectorized: bool,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """log p(x, z) at each draw and the pointwise log-likelihood of every observed site.

    Wrap in :func:`pyrovi._plates.vectorize_else_loop` to fall back to a loop for models
    that do not broadcast over draws.

    Returns
    -------
    log_joint : torch.Tensor
        ``(n,)``, totals with all constants (``pyro.factor`` terms included).
    log_lik : dict of str to torch.Tensor
        Observed data site -> ``(n, *batch_shape)``: one term per observation
        (``pyro.factor`` and ``pyro.deterministic`` sites are not data and are left out).
    """
    n = next(iter(values.values())).shape[0]
    if vectorized:
        data = {k: pad_draws(v, shapes[k], max_plate_nesting) for k, v in values.items()}
        with torch.no_grad():
            with draw_plate(n, max_plate_nesting):
                trace = poutine.trace(poutine.condition(model, data=data)).get_trace(
                    *args, **kwargs
                )
            trace.compute_log_prob()
        log_joint = torch.zeros(n)
        log_lik = {}
        for name, site in trace.nodes.items():
            if not is_traced_sample(site):
                continue
            lp = site["log_prob"]
            log_joint = log_joint + per_draw_sum(lp, n, max_plate_nesting)
            if _is_datum(site, values):
                if name not in shapes:  # sites that vary from run to run: one run per draw
                    raise ValueError(f"site {name!r} is not in the prototype trace")
                shape = shapes[name]
                full = (n,) + (1,) * (max_plate_nesting - shape.batch_ndim) + shape.batch_shape
                point = _pointwise(site)
                log_lik[name] = torch.broadcast_to(point, full).reshape((n,) + shape.batch_shape)
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
                if not is_traced_sample(site):
                    continue
                total = total + site["log_prob"].sum()
                if _is_datum(site, values) and name in shapes:
                    rows = liks.setdefault(name, [])
                    while len(rows) < i:  # a datum the earlier runs lacked
                        rows.append(torch.full(shapes[name].batch_shape, float("nan")))
                    rows.append(torch.broadcast_to(_pointwise(site), shapes[name].batch_shape))
            joints.append(torch.as_tensor(total))
            for name in liks:  # a datum this run lacks: NaN, so every row stays aligned
                if len(liks[name]) <= i:
                    liks[name].append(torch.full(shapes[name].batch_shape, float("nan")))
    return torch.stack(joints), {k: torch.stack(v) for k, v in liks.items()}


def _no_guide(*args, **kwargs) -> None:
    return None


def enumerated_log_joint(
    model: Callable,
    args: tuple,
    kwargs: Mapping,
    values: Mapping[str, torch.Tensor],
    *,
    max_plate_nesting: int,
) -> torch.Tensor:
    r""":math:`\log p(x, z_c) = \log \sum_{z_d} p(x, z_c, z_d)` at each draw of the
    continuous latents ``values``, the model's finite discrete latents not in ``values``
    summed out exactly (``TraceEnum_ELBO`` with an empty guide on the model conditioned on
    one draw; one draw at a time).  Shape ``(n,)``."""
    elbo = TraceEnum_ELBO(max_plate_nesting=max_plate_nesting)
    enum_model = config_enumerate(model, default="parallel")
    n = next(iter(values.values())).shape[0]
    out = []
    with torch.no_grad():
        for i in range(n):
            conditioned = poutine.condition(enum_model, data={k: v[i] for k, v in values.items()})
            out.append(-float(elbo.loss(conditioned, _no_guide, *args, **kwargs)))
    dtype = next(iter(values.values())).dtype
    return torch.tensor(out, dtype=dtype if dtype.is_floating_point else None)


def enumerated_log_weights(
    model: Callable,
    guide: Callable,
    args: tuple,
    kwargs: Mapping,
    n: int,
    *,
    max_plate_nesting: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """log p(x, z_c) - log q(z_c) and log q(z_c) per draw, with the model's discrete latents
    summed out exactly (``TraceEnum_ELBO`` on a single replayed draw; one draw at a time)."""
    elbo = TraceEnum_ELBO(max_plate_nesting=max_plate_nesting)
    enum_model = config_enumerate(model, default="parallel")
    weights, log_qs = [], []
    with torch.no_grad():
        for _ in range(n):
            trace = poutine.trace(guide).get_trace(*args, **kwargs)
            replayed = poutine.replay(guide, trace=trace)
            weights.append(-float(elbo.loss(enum_model, replayed, *args, **kwargs)))
            log_qs.append(float(_guide_log_q(trace)))
    return torch.tensor(weights), torch.tensor(log_qs)


class _UnconditionData(Messenger):
    """``poutine.uncondition`` for the model's data only: observed sites of the model proper
    are drawn anew; ``pyro.deterministic`` records (observed sites too, in Pyro) keep their
    computed value, and ``pyro.factor`` terms stay as they are.

    Unconditioning a deterministic site would draw it from its ``Delta`` broadcast to the
    enclosing plates, an ``N x N`` value for a site of ``N`` entries in a plate of ``N``.
    """

    def _pyro_sample(self, msg):
        if msg["is_observed"] and is_user_sample(msg):
            msg["is_observed"] = False
            msg["infer"]["was_observed"] = True
            msg["infer"]["obs"] = msg["value"]
            msg["value"] = None
            msg["done"] = False


def uncondition_data(model: Callable) -> Callable:
    """``model`` with its observed data sites unconditioned (see :class:`_UnconditionData`),
    for predictive and prior draws."""
    return _UnconditionData()(model)


def model_draws(
    model: Callable,
    args: tuple,
    kwargs: Mapping,
    values: Mapping[str, torch.Tensor],
    *,
    n: int,
    shapes: Mapping[str, SiteShape],
    max_plate_nesting: int,
    vectorized: bool,
    sites: tuple | None = None,
) -> dict[str, torch.Tensor]:
    """Run ``model`` ``n`` times, conditioned on draw ``i`` of ``values`` in run ``i``
    (``values`` may be empty: prior draws); return every site of ``sites`` (default: of
    ``shapes``, which holds the shapes of these and of ``values``) as
    ``(n, *site_shape)``.

    Vectorized: one run under the draw plate; else one run per draw.  Wrap in
    :func:`pyrovi._plates.vectorize_else_loop` for the fallback.
    """
    sites = tuple(shapes) if sites is None else tuple(sites)
    if vectorized:
        data = {k: pad_draws(v, shapes[k], max_plate_nesting) for k, v in values.items()}
        with torch.no_grad(), draw_plate(n, max_plate_nesting):
            trace = poutine.trace(poutine.condition(model, data=data)).get_trace(*args, **kwargs)
        missing = [k for k in sites if k not in trace.nodes]
        if missing:  # a model whose sites vary from run to run: one run per draw
            raise ValueError(f"site(s) {missing} missing from the vectorized run")
        return {
            k: unpad_draws(trace.nodes[k]["value"], shapes[k], max_plate_nesting, n)
            for k in sites
        }
    rows: dict[str, list] = {k: [] for k in sites}
    with torch.no_grad():
        for i in range(n):
            data = {k: v[i] for k, v in values.items()}
            trace = poutine.trace(poutine.condition(model, data=data)).get_trace(*args, **kwargs)
            for k in sites:
                rows[k].append(_value_or_nan(trace, k, shapes[k]))
    return {k: torch.stack(v) for k, v in rows.items()}


def _value_or_nan(trace: poutine.Trace, name: str, shape: SiteShape) -> torch.Tensor:
    """A site's value in one run, or NaN of its usual shape when this run lacks the site
    (a model whose set of sites depends on the draw)."""
    if name in trace.nodes:
        return torch.as_tensor(trace.nodes[name]["value"])
    return torch.full(tuple(shape.shape), float("nan"))


def predictive_draws(
    model: Callable,
    args: tuple,
    kwargs: Mapping,
    values: Mapping[str, torch.Tensor],
    *,
    max_plate_nesting: int,
    vectorized: bool,
) -> dict[str, torch.Tensor]:
    """Run the model conditioned on each draw of ``values``; return every sample site
    (observed ones freshly sampled: the posterior predictive) as ``(n, *site_shape)``."""
    n = next(iter(values.values())).shape[0]
    first = {k: v[0] for k, v in values.items()}
    model = uncondition_data(model)
    with torch.no_grad():
        proto = poutine.trace(poutine.condition(model, data=first)).get_trace(*args, **kwargs)
    return model_draws(
        model, args, kwargs, values, n=n, shapes=site_shapes(proto),
        max_plate_nesting=max_plate_nesting, vectorized=vectorized,
    )


def _ordinal(trace: poutine.Trace, site: dict) -> frozenset:
    """The packed plate symbols of a site (as Pyro's ``traceenum_elbo._find_ordinal``)."""
    return frozenset(
        trace.plate_to_symbol[f.name] for f in site["cond_indep_stack"] if f.vectorized
    )


def _marginal_log_lik_once(
    model: Callable, args: tuple, kwargs: Mapping, data: Mapping, observed: tuple,
    shapes: Mapping[str, SiteShape], max_plate_nesting: int,
) -> dict[str, torch.Tensor]:
    """One draw of :func:`enumerated_pointwise_log_lik` (``data``: one value per site)."""
    from collections import OrderedDict

    from pyro.ops import packed
    from pyro.poutine.enum_messenger import EnumMessenger
    from pyro.poutine.util import prune_subsample_sites

    enum_model = config_enumerate(model, default="parallel")
    with poutine.block(), EnumMessenger(first_available_dim=-max_plate_nesting - 1):
        trace = poutine.trace(poutine.condition(enum_model, data=dict(data))).get_trace(
            *args, **kwargs
        )
    trace = prune_subsample_sites(trace)
    trace.compute_log_prob()
    trace.pack_tensors()
    tree: OrderedDict = OrderedDict()
    sum_dims: set = set()
    terms = []
    for name, site in trace.nodes.items():
        if not is_user_sample(site):
            continue
        pk = site["packed"]
        if site["is_observed"]:
            if name in observed:
                term = packed.scale_and_mask(pk["unscaled_log_prob"], mask=pk["mask"])
                terms.append((name, _ordinal(trace, site), term))
            continue
        if site["infer"].get("_enumerate_dim") is not None:
            tree.setdefault(_ordinal(trace, site), []).append(pk["unscaled_log_prob"])
            sum_dims.add(site["infer"]["_enumerate_symbol"])
    out = {}
    for name, ordinal, term in terms:
        value = _chain_rule_terms(tree, sum_dims, ordinal, term, name, trace.symbol_to_dim)
        tree.setdefault(ordinal, []).append(term)
        batch = tuple(shapes[name].batch_shape)
        pad = max(0, value.dim() - len(batch))
        out[name] = torch.broadcast_to(value, (1,) * pad + batch).reshape(batch)
    return out


# entries of an observed site coupled by a discrete latent outside their plate are split by
# the chain rule, one contraction per entry: past this many, the export is refused
MAX_COUPLED_ENTRIES = 256


def _coupled_plates(tree, sum_dims: set, ordinal: frozenset, term) -> list:
    """The plate symbols of ``ordinal`` (present in ``term``) along which the entries of an
    observed site are not independent given the continuous latents: plates that some
    enumerated term connected to ``term`` through shared enumeration dims lacks (e.g. the
    'tones' of an HMM emission ``y_t`` whose state ``x_t`` lives outside that plate)."""
    items = [(t, o) for o, ts in tree.items() for t in ts]
    dims = set(term._pyro_dims) & sum_dims
    connected: list = []
    grew = True
    while grew:
        grew = False
        for t, o in items:
            if any(t is c for c, _ in connected):
                continue
            if dims & set(t._pyro_dims):
                connected.append((t, o))
                dims |= set(t._pyro_dims) & sum_dims
                grew = True
    plates = [s for s in ordinal if s in term._pyro_dims]
    return sorted(s for s in plates if any(s not in o for _, o in connected))


def _contract(tree, sum_dims: set, ordinal: frozenset, symbol_to_dim) -> torch.Tensor:
    """``contract_to_tensor`` of ``tree`` down to the plates of ``ordinal`` that its terms
    carry (a plate no term has is a broadcast, done by torch), unpacked."""
    from pyro.ops import packed
    from pyro.ops.contract import contract_to_tensor

    present = set().union(*(set(t._pyro_dims) for ts in tree.values() for t in ts))
    target = frozenset(s for s in ordinal if s in present)
    return packed.unpack(contract_to_tensor(tree, sum_dims, target_ordinal=target), symbol_to_dim)


def _chain_rule_terms(tree, sum_dims, ordinal, term, name, symbol_to_dim) -> torch.Tensor:
    r"""log p(x_{s,i} | x_{s,<i}, x_{<s}) for every entry i of an observed site's term: the
    difference of contractions with and without the entry.  Entries along plates that the
    discrete latents do not live in (:func:`_coupled_plates`) are coupled through those
    latents: they are taken one at a time in index order (the chain rule along the plates),
    so the terms still add up to log p(x | z_c)."""
    from collections import OrderedDict

    from pyro.ops import packed

    from pyrovi.errors import PyroviError

    def with_term(t, o=ordinal):
        grown = OrderedDict((k, list(v)) for k, v in tree.items())
        grown.setdefault(o, []).append(t)
        return grown

    coupled = _coupled_plates(tree, sum_dims, ordinal, term)
    if not coupled:
        after = _contract(with_term(term), sum_dims, ordinal, symbol_to_dim)
        return after - _contract(tree, sum_dims, ordinal, symbol_to_dim) if tree else after
    axes = [term._pyro_dims.index(s) for s in coupled]
    sizes = [term.shape[a] for a in axes]
    count = 1
    for size in sizes:
        count *= size
    if count > MAX_COUPLED_ENTRIES:
        raise PyroviError(
            f"site {name!r}: its {count} entries along plate(s) {coupled} are coupled by a "
            f"summed-out discrete latent outside those plates, and its marginal pointwise "
            f"log-likelihood takes one contraction per entry (at most {MAX_COUPLED_ENTRIES}); "
            "pass log_likelihood=False to export without it"
        )
    # the entries' linear index in index order, broadcast along the term's own dims
    index = torch.zeros((), dtype=torch.long)
    for a, size in zip(axes, sizes):
        shape = [1] * term.dim()
        shape[a] = size
        index = index * size + torch.arange(size).reshape(shape)
    keep = [s for s in ordinal if s not in coupled]
    outer = frozenset(keep)
    previous = _contract(tree, sum_dims, outer, symbol_to_dim) if tree else None
    value = torch.zeros(())
    for k in range(count):
        part = term.masked_fill(index > k, 0.0)
        part._pyro_dims = term._pyro_dims
        current = _contract(with_term(part), sum_dims, outer, symbol_to_dim)
        step = current if previous is None else current - previous
        entry = (index == k).to(term.dtype)
        entry._pyro_dims = term._pyro_dims
        value = value + step * packed.unpack(entry, symbol_to_dim)
        previous = current
    return value


def enumerated_pointwise_log_lik(
    model: Callable,
    args: tuple,
    kwargs: Mapping,
    values: Mapping[str, torch.Tensor],
    *,
    n: int,
    observed: tuple,
    shapes: Mapping[str, SiteShape],
    max_plate_nesting: int,
) -> dict[str, torch.Tensor]:
    r"""Pointwise log-likelihood with the model's finite discrete latents summed out.

    For each observed site :math:`x_s` (in execution order) and each of its entries
    :math:`i` (the batch dims of its plates), the log of
    :math:`p(x_{s,i} \mid x_{<s}, z_c) = \sum_{z_d} \ldots`, computed as the difference of
    two contractions of the enumerated trace (Pyro's ``contract_to_tensor``, the machinery
    of ``TraceEnum_ELBO``) down to the site's plates: with and without the site's factor.
    For a mixture this is :math:`\log \sum_k \pi_k\, p(x_i \mid \theta_k)` per
    observation; for observed sites along a chain (an HMM written with ``pyro.markov``),
    the one-step-ahead :math:`\log p(x_t \mid x_{<t})`, which add up to
    :math:`\log p(x \mid z_c)`.  Entries of one vectorized plate are each marginalized on
    their own when the discrete latents are local to that plate; entries coupled by a
    discrete latent outside a plate (an HMM's tones emitted by one state) are taken one at a
    time in index order, :math:`\log p(x_{s,i} \mid x_{s,<i}, x_{<s})`, so the terms still
    add up to the total.  More than :data:`MAX_COUPLED_ENTRIES` such entries in one site:
    :class:`~pyrovi.errors.PyroviError` (export with ``log_likelihood=False``).

    ``values`` holds the continuous latents to condition on (``(n, *shape)`` each; empty
    when every latent is discrete, in which case the result is computed once and
    broadcast to ``n`` draws).  One draw at a time.

    Returns
    -------
    dict of str to torch.Tensor
        Observed site -> ``(n, *batch_shape)``.
    """
    with torch.no_grad():
        if not values:
            once = _marginal_log_lik_once(
                model, args, kwargs, {}, observed, shapes, max_plate_nesting
            )
            return {k: v.expand((n,) + v.shape) for k, v in once.items()}
        rows: dict[str, list] = {}
        for i in range(n):
            once = _marginal_log_lik_once(
                model, args, kwargs, {k: v[i] for k, v in values.items()}, observed, shapes,
                max_plate_nesting,
            )
            for k, v in once.items():
                rows.setdefault(k, []).append(v)
    return {k: torch.stack(v) for k, v in rows.items()}
