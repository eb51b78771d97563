"""The compiled path's driver: decide whether a fit can take it, then run it.

:func:`compiled_unsupported` refuses, in plain words, what the flat compiled step cannot do
(then ``pyrovi.VI`` falls back to Pyro's SVI and records the reason); it also traces the
model, so a model that cannot be traced is refused here and never fails later.
:func:`train_compiled` runs the loop with the same step-size schedule and convergence rule
as ``_Fit.train_svi``, and leaves the fitted values in the active Pyro parameter store.

Only what the progress bar and the convergence rule need crosses to the host: the ELBO
values of a window, once per window.
"""

from __future__ import annotations

import dataclasses
import math
import weakref

import numpy as np
import torch
from tqdm.auto import tqdm

from pyrovi._runtime import warn
from pyrovi.errors import InterruptedFitWarning, NonFiniteError
from pyrovi.fast.families import FAMILIES
from pyrovi.fast.params import GuideParams, guide_params
from pyrovi.fast.potential import (
    TraceError,
    build_potential,
    layout_from_trace,
    trace_log_density,
)
from pyrovi.fast.step import Stepper, StepState, make_neg_elbo, new_state
from pyrovi.vi.checks import nonfinite_site
from pyrovi.vi.convergence import PlateauState

__all__ = ["compiled_unsupported", "train_compiled", "Plan", "make_plan", "run_steps"]


@dataclasses.dataclass(frozen=True)
class Plan:
    """What :func:`compiled_unsupported` found, reused by :func:`train_compiled`.

    Attributes
    ----------
    params : GuideParams
        The guide's parameters as one flat vector.
    log_density : torch.fx.GraphModule
        The model's flat log-density, traced (with the Jacobians for the Gaussian families,
        without them for ``delta``, whose MAP is in the constrained space as in AutoDelta).
    state : StepState
        The optimizer state, starting at the guide's initial parameters.
    step : Stepper
        The traced (and, by policy, compiled) step over ``state``.
    """

    params: GuideParams
    log_density: torch.fx.GraphModule
    state: StepState
    step: Stepper


# compiled_unsupported(fit) -> train_compiled(fit): the plan found for a fit, by id, with a
# weak reference to check that the id still names that fit.
_PLANS: dict[int, tuple[weakref.ref, Plan]] = {}


def _cheap_reason(fit) -> str | None:
    """Refusals that need no model run."""
    vi, info = fit.vi, fit.info
    family = vi.guide_spec.family
    if family not in FAMILIES:
        what = {
            "laplace": "the 'laplace' family (its Hessian step runs through Pyro)",
            "autoguide": "an AutoGuide class or instance given by the user",
            "custom": "a user-written guide function",
        }.get(family, f"the guide family {family!r}")
        return f"the compiled path covers meanfield, lowrank, fullrank and delta, not {what}"
    if vi.optim is not None:
        return "a custom optimizer (optim=...) was given; the compiled path uses its own Adam"
    if fit.enumerated or info.discrete or info.infinite_discrete:
        sites = list(fit.enumerated or info.discrete or info.infinite_discrete)
        return f"the model has discrete latent sites {sites}"
    if info.subsampled:
        return "the model subsamples data through a plate"
    if not fit.vectorize:
        return "the model does not broadcast over a particle dimension"
    params = [n for n, s in info.trace.nodes.items() if s["type"] == "param"]
    if params:
        return f"the model has learnable parameters (pyro.param sites {params})"
    if not info.latent:
        return "the model has no latent sites"
    return None


def make_plan(fit) -> Plan | str:
    """Build the :class:`Plan` for ``fit``, or return why the compiled path cannot take it.

    Creates the guide's parameters in the active parameter store (running the guide once,
    as SVI's first step would).
    """
    family = fit.vi.guide_spec.family
    with torch.no_grad():
        fit.guide(*fit.args, **fit.kwargs)
    layout = layout_from_trace(fit.guide.prototype_trace)
    try:
        params = guide_params(family, fit.guide, layout)
    except ValueError as err:
        return str(err)
    try:
        potential = build_potential(
            fit.model,
            fit.args,
            fit.kwargs,
            layout,
            fit.info.max_plate_nesting,
            reference=fit.info.trace,
        )
        u0 = params.constrained(params.read()).loc.detach()
        graph = trace_log_density(potential, u0, jacobian=family != "delta")
    except TraceError as err:
        return str(err)
    vi = fit.vi
    state = new_state(
        params,
        lr=vi.lr,
        clip_norm=vi.clip_norm,
        max_skips=getattr(vi, "max_skips", 0),
        num_particles=vi.num_particles,
        window=vi.window,
    )
    try:
        step = Stepper(make_neg_elbo(params, graph), state)
    except Exception as err:  # an op without a batching or autodiff rule, say
        return f"the ELBO step could not be traced ({type(err).__name__}: {err})"
    return Plan(params, graph, state, step)


def compiled_unsupported(fit) -> str | None:
    """None when the compiled path can fit ``fit``, else a short plain-words reason.

    Part of the hook contract of ``pyrovi.vi.driver._Fit.train``.
    """
    reason = _cheap_reason(fit)
    if reason is not None:
        return reason
    try:
        plan = make_plan(fit)
    except Exception as err:  # anything unforeseen: SVI can still fit this model
        return f"the compiled path could not be set up ({type(err).__name__}: {err})"
    if isinstance(plan, str):
        return plan
    _PLANS[id(fit)] = (weakref.ref(fit), plan)
    weakref.finalize(fit, _PLANS.pop, id(fit), None)  # the driver may not train after all
    return None


def _take_plan(fit) -> Plan:
    entry = _PLANS.pop(id(fit), None)
    if entry is not None and entry[0]() is fit:
        return entry[1]
    reason = compiled_unsupported(fit)
    if reason is not None:
        raise ValueError(f"the compiled path cannot fit this model/guide: {reason}")
    return _PLANS.pop(id(fit))[1]


def run_steps(state: StepState, step: Stepper, n: int) -> None:
    """Take ``n`` steps: refill the noise, step; nothing crosses to the host."""
    fill = state.eps.normal_ if state.eps.numel() else None
    for _ in range(n):
        if fill is not None:
            fill()
        step()


def _window_mean(values: list[float]) -> float:
    """The window's mean ELBO over its finite steps, as the SVI loop takes it."""
    arr = np.asarray(values, dtype=np.float64)
    return float(np.nanmean(arr)) if np.isfinite(arr).any() else -math.inf


def train_compiled(fit) -> tuple[list[float], bool]:
    """Train ``fit`` with the compiled step; return (per-step ELBO trace, converged).

    Part of the hook contract of ``pyrovi.vi.fit.Fit.train``: on return (and on
    :class:`~pyrovi.errors.NonFiniteError` or Ctrl-C) the store's guide parameters hold the
    fitted values (the last finite ones).  Steps whose ELBO or gradient is not finite are
    skipped and recorded as NaN, and more than ``max_skips`` of them in a row stop the fit,
    as in the SVI loop.
    """
    vi = fit.vi
    plan = _take_plan(fit)
    params, state, run = plan.params, plan.state, plan.step
    window = vi.window
    trace: list[float] = []
    plateau = PlateauState()
    done = 0
    bar = tqdm(total=vi.num_steps, disable=not vi.progress, desc="VI", leave=False)
    try:
        while done < vi.num_steps:
            n = min(window, vi.num_steps - done)
            run.maybe_compile(done)
            run_steps(state, run, n)
            values = state.elbo[:n].tolist()  # the one host transfer per window
            if bool(state.halted):
                first = int(state.first_bad)
                trace.extend(values[: max(first - done, 0)])
                _raise_nonfinite(fit, params, state, trace[:first], first)
            trace.extend(values)
            done += n
            bar.update(n)
            if n == window:
                window_mean = _window_mean(values)
                plateau = vi.rule.update(plateau, window_mean)
                state.lr.fill_(vi.lr * plateau.lr_scale)
                bar.set_postfix(elbo=f"{window_mean:.4g}", lr=f"{vi.lr * plateau.lr_scale:.2g}")
                if plateau.converged:
                    break
    except KeyboardInterrupt:
        trace.extend(state.elbo[: int(state.count) - done].tolist())
        fit.interrupted = True
        fit.notes.append(f"interrupted (Ctrl-C) after {len(trace)} steps")
        warn(
            f"VI was interrupted after {len(trace)} steps; returning the result so far",
            InterruptedFitWarning,
        )
    finally:
        bar.close()
        params.write(state.theta)
        fit.num_skipped = int(state.skipped)
        if run.note:
            fit.notes.append(f"compiled path: {run.note}")
    return trace, plateau.converged


def _raise_nonfinite(fit, params: GuideParams, state: StepState, trace: list, first: int):
    """Write the last finite parameters back and raise NonFiniteError as the SVI loop does."""
    params.write(state.theta)  # skipped steps changed nothing: these are step first-1's
    fit.num_skipped = int(state.skipped)
    site = nonfinite_site(fit.model, fit.guide, fit.args, fit.kwargs)
    where = f" at {site}" if site else ""
    streak = int(state.streak)
    raise NonFiniteError(
        f"the ELBO or its gradient became non-finite at step {first}{where} and stayed so "
        f"for {streak} steps (max_skips={int(state.max_skips)}). The parameters of the last "
        f"finite step (step {first - 1}) and the ELBO trace so far are in err.result. Check "
        "the model for values outside a distribution's support, or lower lr.",
        step=first,
        site=site,
        result=fit._result(trace, False, False, backend="compiled"),
    )
