"""Inspection of a Pyro model: its sites, plates and data, checked before any work.

One prototype trace of the model tells pyrovi which sites are latent, observed, discrete
or continuous, how deep the plates nest, and whether the observed data are finite.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping

import pyro.poutine as poutine
import torch

from pyrovi._plates import is_user_sample
from pyrovi.errors import ModelError

__all__ = ["ModelInfo", "inspect_model", "model_name", "check_observed_finite"]


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """What one prototype trace says about a model.

    Attributes
    ----------
    latent : tuple of str
        Unobserved sample sites, in execution order.
    observed : tuple of str
        Observed sample sites.
    discrete : tuple of str
        Latent sites with a discrete support that can be enumerated (finite support).
    infinite_discrete : tuple of str
        Latent sites with a discrete support that cannot be enumerated (e.g. Poisson).
    max_plate_nesting : int
        How many batch dimensions the model's vectorized plates use.
    plates : dict
        Plate name -> (full size, subsample size, dim) for every vectorized plate.
    site_plates : dict
        Site name -> tuple of the plate names it lives in, outermost first.
    trace : pyro.poutine.Trace
        The prototype trace itself.
    model : callable or None
        The model that was traced (None when not recorded).
    """

    latent: tuple[str, ...]
    observed: tuple[str, ...]
    discrete: tuple[str, ...]
    infinite_discrete: tuple[str, ...]
    max_plate_nesting: int
    plates: dict
    site_plates: dict
    trace: poutine.Trace
    model: Callable | None = dataclasses.field(default=None, compare=False)

    @property
    def continuous(self) -> tuple[str, ...]:
        """Latent sites that are not discrete."""
        bad = set(self.discrete) | set(self.infinite_discrete)
        return tuple(n for n in self.latent if n not in bad)

    @property
    def subsampled(self) -> bool:
        """Whether any plate subsamples its data (subsample size below its full size)."""
        return any(sub != full for full, sub, _ in self.plates.values())


def model_name(model: Callable) -> str:
    """A readable name for a model or guide callable."""
    return getattr(model, "__qualname__", None) or getattr(model, "__name__", None) or repr(model)


def inspect_model(model: Callable, args: tuple = (), kwargs: Mapping | None = None) -> ModelInfo:
    """Trace ``model(*args, **kwargs)`` once and describe its sites.

    Raises
    ------
    ModelError
        When the model raises while being traced; the message names the model.
    """
    kwargs = dict(kwargs or {})
    if not callable(model):
        raise TypeError(f"model must be a callable Pyro model, got {type(model).__name__}")
    try:
        trace = poutine.trace(model).get_trace(*args, **kwargs)
    except Exception as err:  # re-raised with the model named, original chained
        raise ModelError(
            f"model {model_name(model)!r} raised {type(err).__name__} when run with the given "
            f"arguments: {err}. Check that the model arguments passed to run() are the ones "
            "the model expects."
        ) from err
    latent, observed, discrete, infinite = [], [], [], []
    plates: dict = {}
    site_plates: dict = {}
    max_plate_nesting = 0
    for name, site in trace.nodes.items():
        if not is_user_sample(site):
            continue
        frames = [f for f in site["cond_indep_stack"] if f.vectorized]
        for f in frames:
            max_plate_nesting = max(max_plate_nesting, -f.dim)
            full = f.full_size if f.full_size is not None else f.size
            plates[f.name] = (int(full), int(f.size), int(f.dim))
        site_plates[name] = tuple(f.name for f in sorted(frames, key=lambda f: f.dim))
        if site["is_observed"]:
            observed.append(name)
            continue
        latent.append(name)
        fn = site["fn"]
        if getattr(fn.support, "is_discrete", False):
            if fn.has_enumerate_support:
                discrete.append(name)
            else:
                infinite.append(name)
    return ModelInfo(
        latent=tuple(latent),
        observed=tuple(observed),
        discrete=tuple(discrete),
        infinite_discrete=tuple(infinite),
        max_plate_nesting=max_plate_nesting,
        plates=plates,
        site_plates=site_plates,
        trace=trace,
        model=model,
    )


def check_observed_finite(info: ModelInfo) -> None:
    """Refuse observed data holding NaN or +-inf, naming the site and the first bad index."""
    for name in info.observed:
        value = info.trace.nodes[name]["value"]
        if not isinstance(value, torch.Tensor) or not value.is_floating_point():
            continue
        bad = ~torch.isfinite(value)
        if bool(bad.any()):
            idx = tuple(int(i) for i in bad.nonzero()[0].tolist())
            first = value[idx] if idx else value
            n_bad = int(bad.sum())
            raise ModelError(
                f"observed site {name!r} holds {n_bad} non-finite value(s) (first at index "
                f"{idx}: {float(first)}); expected finite data. Remove or impute the missing "
                "values, or mask them with poutine.mask / obs_mask.",
                site=name,
            )
