"""Between DADVI and Pyro: a model's batched flat log density, and a fitted q written into
the autoguide's parameters."""

from __future__ import annotations

from collections.abc import Callable

import torch

from pyrovi.families import FamilyMath, QParams, gaussian_math_of_q

__all__ = ["autoguide_values", "write_autoguide", "result_log_density", "model_log_density"]

LogDensity = Callable[[torch.Tensor], torch.Tensor]


def autoguide_values(
    family: str | FamilyMath, q: QParams, layout=None
) -> dict[str, torch.Tensor]:
    """q as the autoguide's constrained parameter values, by attribute path.

    ``meanfield`` (AutoNormal): ``locs.<site>`` and ``scales.<site>`` shaped by ``layout``
    (a :class:`pyrovi.fast.potential.FlatLayout`; without it ``locs`` and ``scales``, flat).
    ``fullrank`` (AutoMultivariateNormal): ``loc``, ``scale``, ``scale_tril``.
    ``lowrank`` (AutoLowRankMultivariateNormal): ``loc``, ``scale``, ``cov_factor``.
    :func:`write_autoguide` writes them into a guide.
    """
    family = gaussian_math_of_q(family, q).name
    if family == "meanfield":
        if layout is None:
            return {"locs": q.loc, "scales": q.scale}
        out = {f"locs.{k}": v for k, v in layout.unpack(q.loc).items()}
        out.update({f"scales.{k}": v for k, v in layout.unpack(q.scale).items()})
        return out
    key = "scale_tril" if family == "fullrank" else "cov_factor"
    return {"loc": q.loc, "scale": q.scale, key: q.factor}


@torch.no_grad()
def write_autoguide(guide, family: str | FamilyMath, q: QParams, layout=None) -> None:
    """Copy q into an autoguide's parameters in the active Pyro parameter store, in place.

    ``guide`` is an ``AutoNormal`` (meanfield; needs ``layout``),
    ``AutoMultivariateNormal`` (fullrank) or ``AutoLowRankMultivariateNormal`` (lowrank,
    of q's rank) whose parameters exist (call it once first).  Each value is mapped to the
    unconstrained tensor behind the attribute (``transform_to(constraint).inv``) and copied
    into it, so the store, the guide module and any optimizer holding the tensor all see it.
    """
    import operator

    from torch.distributions import constraints, transform_to

    for path, value in autoguide_values(family, q, layout).items():
        current = operator.attrgetter(path)(guide)
        unconstrained = getattr(current, "unconstrained", None)
        if unconstrained is None:
            raise ValueError(f"{path!r} of {type(guide).__name__} is not a Pyro parameter")
        leaf = unconstrained()
        name = path.split(".")[-1]
        owner = operator.attrgetter(path.rsplit(".", 1)[0])(guide) if "." in path else guide
        pyro_params = getattr(owner, "_pyro_params", {})
        constraint = pyro_params[name][0] if name in pyro_params else constraints.real
        leaf.copy_(transform_to(constraint).inv(value.to(leaf.dtype)).reshape(leaf.shape))


def result_log_density(
    model, args, kwargs, prototype_trace, *, max_plate_nesting: int, dtype=None
) -> LogDensity:
    """The batched flat log density ``u (P, D) -> (P,)`` of a Pyro model in the layout of an
    autoguide's ``prototype_trace`` (Jacobians included), as the compiled path traces it;
    inputs are cast to the model's dtype, outputs returned in ``dtype`` (default: the
    model's)."""
    from pyrovi.fast.potential import build_potential, layout_from_trace, trace_log_density

    layout = layout_from_trace(prototype_trace)
    potential = build_potential(model, tuple(args), dict(kwargs or {}), layout, max_plate_nesting)
    site = next(iter(prototype_trace.iter_stochastic_nodes()))[1]
    model_dtype = site["value"].dtype
    u0 = torch.zeros(layout.dim, dtype=model_dtype, device=site["value"].device)
    batched = torch.vmap(trace_log_density(potential, u0, jacobian=True))
    out_dtype = dtype or model_dtype

    def log_density(u: torch.Tensor) -> torch.Tensor:
        return batched(u.to(model_dtype)).to(out_dtype)

    return log_density


def model_log_density(model, args=(), kwargs=None, *, max_plate_nesting: int = 1):
    """The batched flat log density of a Pyro model and its layout, ``(fn, layout)``.

    ``fn = torch.vmap(graph)`` over the graph of
    :func:`pyrovi.fast.potential.trace_log_density` (Jacobians included), in the layout of
    the model's autoguides.  A convenience for tests and benchmarks; ``pyrovi.VI`` builds
    the same graph in its compiled path.
    """
    import pyro
    from pyro.infer import autoguide

    from pyrovi.fast.potential import layout_from_trace

    kwargs = dict(kwargs or {})
    guide = autoguide.AutoMultivariateNormal(model)
    with pyro.get_param_store().scope():
        guide(*args, **kwargs)
    layout = layout_from_trace(guide.prototype_trace)
    fn = result_log_density(
        model, args, kwargs, guide.prototype_trace, max_plate_nesting=max_plate_nesting
    )
    return fn, layout
