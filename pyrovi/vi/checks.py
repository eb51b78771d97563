"""Checks of a model (and a user's guide) before a VI fit does any work.

Pyro accepts several mistakes in silence; these checks refuse or flag them, naming the site
or plate and saying what to do.
"""

from __future__ import annotations

import inspect
import weakref
from collections.abc import Callable, Mapping

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import torch
from torch.distributions import constraints, transform_to

from pyrovi._exact import is_real_support
from pyrovi._model import ModelInfo, check_observed_finite, model_name
from pyrovi._plates import draw_plate, is_traced_sample, is_user_sample
from pyrovi._runtime import warn
from pyrovi._steps import nonfinite_site  # re-exported: it lives below both VI backends
from pyrovi.errors import ModelError, ModelWarning
from pyrovi.guides import GuideSpec

__all__ = ["check_model", "check_user_guide", "nonfinite_site"]

# model -> the sites it had observed in earlier fits, to flag obs=None later
_OBSERVED_BEFORE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _missing_obs_sites(model: Callable, info: ModelInfo, args: tuple, kwargs: Mapping) -> list:
    """Latent sites that look like observed sites whose data are missing in this call:
    observed in an earlier fit of the same model, or named like a model argument that is
    None here (``def model(x, y=None): pyro.sample("y", ..., obs=y)``)."""
    try:
        bound = inspect.signature(model).bind_partial(*args, **kwargs)
        bound.apply_defaults()
        none_args = {k for k, v in bound.arguments.items() if v is None}
    except (TypeError, ValueError):
        none_args = set()
    before = _OBSERVED_BEFORE.get(model, set()) if _weakrefable(model) else set()
    return [s for s in info.latent if s in none_args or s in before]


def _weakrefable(obj) -> bool:
    try:
        weakref.ref(obj)
        return True
    except TypeError:
        return False


def check_model(
    model: Callable, info: ModelInfo, spec: GuideSpec, args: tuple, kwargs: Mapping
) -> None:
    """Refuse non-finite data and non-enumerable discrete latents the guide cannot cover;
    warn on a model without observed sites and on data that silently became latent."""
    check_observed_finite(info)
    if not info.observed:
        warn(
            f"model {model_name(model)!r} has no observed site: the fit will reproduce the "
            "prior. Did you forget obs= on the likelihood?",
            ModelWarning,
        )
    for site in _missing_obs_sites(model, info, args, kwargs):
        warn(
            f"site {site!r} of model {model_name(model)!r} is latent in this call (obs=None) "
            "but is observed data elsewhere: its missing values silently become a latent "
            f"variable. Pass the data for {site!r}, or ignore this warning if you meant to "
            "impute them.",
            ModelWarning,
        )
    if _weakrefable(model):
        _OBSERVED_BEFORE.setdefault(model, set()).update(info.observed)
    if spec.is_auto:
        _check_site_set(model, info, args, kwargs)
    if info.infinite_discrete and spec.is_auto:
        name = info.infinite_discrete[0]
        dist_name = type(info.trace.nodes[name]["fn"]).__name__
        raise ModelError(
            f"site {name!r} is discrete with infinite support ({dist_name}); it cannot be "
            "enumerated and the Gaussian guide families cannot cover it. Write a guide "
            "function that samples it (score-function gradients), or marginalize it out in "
            "the model.",
            site=name,
        )


#: Prior runs of the model (and runs under a particle plate) compared with its prototype.
SITE_SET_PROBES = 8


def _guided_sites(trace) -> set:
    """The latent sites an autoguide draws: continuous latents of a trace (the discrete ones
    with a finite support are summed out by enumeration)."""
    out = set()
    for name, site in trace.nodes.items():
        if not is_user_sample(site) or site["is_observed"]:
            continue
        fn = site["fn"]
        if getattr(fn.support, "is_discrete", False) and fn.has_enumerate_support:
            continue
        out.add(name)
    return out


def _check_site_set(model: Callable, info: ModelInfo, args: tuple, kwargs: Mapping) -> None:
    """Refuse a model whose latent sites depend on the values of its latents (control flow
    on a sampled value): an autoguide draws only the sites of the prototype run, so the
    ELBO and every importance weight would be wrong where another set of sites exists.

    The model is run from its prior :data:`SITE_SET_PROBES` times, once more under a particle
    plate, with a fixed seed inside a forked random state (the fit's draws do not move);
    runs that raise are left to the other checks.
    """
    prototype = _guided_sites(info.trace)
    seen: dict[str, int] = {}
    runs = 0
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(20260101)
        for probe in range(SITE_SET_PROBES + 1):
            try:
                if probe < SITE_SET_PROBES:
                    trace = poutine.trace(model).get_trace(*args, **kwargs)
                else:
                    with draw_plate(3, info.max_plate_nesting):
                        trace = poutine.trace(model).get_trace(*args, **kwargs)
            except Exception:  # noqa: BLE001 - a model that fails here is judged elsewhere
                continue
            runs += 1
            for name in _guided_sites(trace) ^ prototype:
                seen[name] = seen.get(name, 0) + 1
    if not seen:
        return
    names = sorted(seen)
    come = [n for n in names if n not in prototype]
    go = [n for n in names if n in prototype]
    parts = []
    if go:
        parts.append(f"{go} present in the first run but absent in others")
    if come:
        parts.append(f"{come} absent in the first run but present in others")
    raise ModelError(
        f"the latent sites of model {model_name(model)!r} depend on the values of its "
        f"latents (control flow on a sampled value): in {runs + 1} runs from the prior, site"
        f"{'s' if len(names) > 1 else ''} {' and '.join(parts)}. An autoguide draws only the "
        "sites of one run, so the ELBO and the evidence would be wrong. Make every site "
        "present in every run (sample it always and select its effect with torch.where, or "
        "switch its log-density off with poutine.mask(mask=...)), or pass a guide function "
        "with the same control flow as the model.",
        site=names[0],
    )


def check_user_guide(
    guide: Callable, info: ModelInfo, args: tuple, kwargs: Mapping
) -> tuple[str, ...]:
    """Compare a user guide with the model: sites, plate sizes and supports.

    Returns
    -------
    tuple of str
        The model's discrete latent sites that the guide leaves to enumeration.
    """
    gname = model_name(guide)
    try:
        with torch.no_grad():
            trace = poutine.trace(guide).get_trace(*args, **kwargs)
        param_constraints = _param_constraints(trace)
    except Exception as err:
        raise ModelError(
            f"guide {gname!r} raised {type(err).__name__} when run with the model's "
            f"arguments: {err}"
        ) from err
    sites = {
        name: site
        for name, site in trace.nodes.items()
        if is_traced_sample(site)
        and not site["is_observed"]
        and not site["infer"].get("is_auxiliary", False)
    }
    extra = [n for n in sites if n not in info.latent]
    if extra:
        raise ModelError(
            f"guide {gname!r} has sample site {extra[0]!r}, which the model lacks; the "
            f"model's latent sites are {list(info.latent)}. Rename the site, or mark it "
            "infer={'is_auxiliary': True} if it is an auxiliary variable.",
            site=extra[0],
        )
    enumerated = tuple(n for n in info.discrete if n not in sites)
    missing = [n for n in info.latent if n not in sites and n not in enumerated]
    if missing and _same_control_flow(guide, info, enumerated, args, kwargs):
        missing = []  # the guide draws the model's sites of each run (see below)
    if missing:
        raise ModelError(
            f"guide {gname!r} misses the model's latent site {missing[0]!r}; a guide must "
            f"sample every continuous latent site of the model. Add "
            f"pyro.sample({missing[0]!r}, ...) to the guide.",
            site=missing[0],
        )
    for site in sites.values():
        for frame in site["cond_indep_stack"]:
            if frame.name in info.plates and frame.vectorized:
                model_size = info.plates[frame.name][1]
                if frame.size != model_size:
                    raise ModelError(
                        f"plate {frame.name!r} has size {frame.size} in guide {gname!r} but "
                        f"{model_size} in the model; Pyro would silently use the guide's "
                        "size for the model too. Give the plate the same size (and the same "
                        "subsample) in both.",
                        site=frame.name,
                    )
    for name, site in sites.items():
        if name not in info.trace.nodes:
            continue  # a site of another branch (same control flow as the model)
        model_fn = info.trace.nodes[name]["fn"]
        guide_support = site["fn"].support
        model_support = model_fn.support
        outside = not bool(model_support.check(site["value"]).all())
        if not outside and is_real_support(guide_support) and not is_real_support(model_support):
            # a point mass at a constrained pyro.param (the mle_map tutorial's guide_map):
            # its draws are the parameter, which stays in the parameter's constraint
            held = _delta_param_constraint(site, param_constraints)
            outside = held is None or not _within(held, model_support, site["value"])
        if outside:
            raise ModelError(
                f"site {name!r}: guide {gname!r} samples from {type(site['fn']).__name__} with "
                f"support {guide_support}, but the model's {type(model_fn).__name__} has "
                f"support {model_support}; guide draws would fall outside the model's "
                "support. Use a guide distribution with the model's support (e.g. LogNormal "
                "for a positive site), or transform it.",
                site=name,
            )
    return enumerated


def _param_constraints(trace) -> list:
    """``(value, constraint)`` of each ``pyro.param`` in a guide trace."""
    store = pyro.get_param_store()
    out = []
    for name, site in trace.nodes.items():
        if site["type"] != "param":
            continue
        try:
            constraint = store._constraints[name]
        except KeyError:
            constraint = site["kwargs"].get("constraint", constraints.real)
        out.append((site["value"], constraint))
    return out


def _delta_param_constraint(site: Mapping, params: list):
    """The constraint of the ``pyro.param`` a ``Delta`` guide site sits at, or None (another
    distribution, or a value computed from the parameter)."""
    fn = site["fn"]
    while isinstance(fn, (dist.Independent, dist.MaskedDistribution)):
        fn = fn.base_dist
    if not isinstance(fn, dist.Delta):
        return None
    for value, constraint in params:
        if fn.v is value or (
            fn.v.shape == value.shape and fn.v.data_ptr() == value.data_ptr()
        ):
            return constraint
    return None


def _within(constraint, support, value: torch.Tensor) -> bool:
    """Whether every value a parameter under ``constraint`` can take lies in ``support``:
    the constraint equals it, or points spread over the constraint's whole range (its
    transform of unconstrained values up to +-30) all pass ``support``'s check."""
    if constraint is support:
        return True
    try:
        transform = transform_to(constraint)
        raw = transform.inv(value.detach().to(torch.float64))
        spread = torch.linspace(-30.0, 30.0, 61, dtype=torch.float64)
        points = raw.unsqueeze(0) + spread.reshape((-1,) + (1,) * raw.dim())
        return bool(support.check(transform(points).to(value.dtype)).all())
    except Exception:  # noqa: BLE001 - an unknown constraint: not shown to be inside
        return False


def _same_control_flow(
    guide: Callable, info: ModelInfo, enumerated: tuple, args: tuple, kwargs: Mapping
) -> bool:
    """Whether a guide that misses some of the prototype's latent sites has the model's
    control flow: in several runs of the guide, the model replayed on each guide run has
    exactly the guide's latent sites (plus the enumerated ones).  Such a guide is correct
    for a model whose sites depend on latent values."""
    if info.model is None:
        return False
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(20260102)
        for _ in range(SITE_SET_PROBES):
            try:
                g = poutine.trace(guide).get_trace(*args, **kwargs)
                mt = poutine.trace(poutine.replay(info.model, trace=g)).get_trace(
                    *args, **kwargs
                )
            except Exception:  # noqa: BLE001 - judged by the caller's checks
                return False
            drawn = {
                n for n, s in g.nodes.items()
                if is_traced_sample(s) and not s["is_observed"]
                and not s["infer"].get("is_auxiliary", False)
            }
            latent = {
                n for n, s in mt.nodes.items()
                if is_user_sample(s) and not s["is_observed"] and n not in enumerated
            }
            if drawn != latent:
                return False
    return True
