"""Checks of a model (and a user's guide) before a VI fit does any work.

Pyro accepts several mistakes in silence; these checks refuse or flag them, naming the site
or plate and saying what to do.
"""

from __future__ import annotations

import inspect
import weakref
from collections.abc import Callable, Mapping

import pyro.poutine as poutine
import torch

from pyrovi._exact import is_real_support
from pyrovi._model import ModelInfo, check_observed_finite, model_name
from pyrovi._plates import is_traced_sample
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
        model_fn = info.trace.nodes[name]["fn"]
        guide_support = site["fn"].support
        model_support = model_fn.support
        outside = not bool(model_support.check(site["value"]).all())
        if outside or (is_real_support(guide_support) and not is_real_support(model_support)):
            raise ModelError(
                f"site {name!r}: guide {gname!r} samples from {type(site['fn']).__name__} with "
                f"support {guide_support}, but the model's {type(model_fn).__name__} has "
                f"support {model_support}; guide draws would fall outside the model's "
                "support. Use a guide distribution with the model's support (e.g. LogNormal "
                "for a positive site), or transform it.",
                site=name,
            )
    return enumerated
