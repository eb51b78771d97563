"""The compiled path as a VI backend: values in, values out.

:func:`plan` decides whether the compiled path can take a model and guide and, when it can,
builds everything the loop needs (a :class:`Plan`); otherwise it returns the reason in plain
words (the driver then falls back to Pyro's SVI and records it).  It traces the model, so a
model that cannot be traced is refused here and never fails later.  :func:`train` runs the
loop with the step-size schedule and convergence rule of the SVI loop
(:class:`pyrovi._steps.PlateauRule`) and returns an :class:`~pyrovi._steps.Outcome`; the
fitted values are left in the guide's parameters.  Neither reaches back into the driver:
what the driver does with an interruption or a non-finite stop is its own policy.

Only what the progress display and the convergence rule need crosses to the host: the
ELBO values of a window, once per window.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping

import torch

from pyrovi._model import ModelInfo
from pyrovi._progress import Progress
from pyrovi._steps import NonFinite, Outcome, PlateauState, Settings, window_mean
from pyrovi.fast.params import GuideParams, guide_params
from pyrovi.fast.potential import (
    TraceError,
    build_potential,
    layout_from_trace,
    trace_log_density,
)
from pyrovi.fast.step import Stepper, StepState, make_neg_elbo, new_state
from pyrovi.guides import GuideSpec, parse_guide

__all__ = ["Plan", "plan", "train", "run_steps"]


@dataclasses.dataclass(frozen=True)
class Plan:
    """What :func:`plan` found and built, for :func:`train`.

    Attributes
    ----------
    params : GuideParams
        The guide's parameters as one flat vector (written back by :func:`train`).
    log_density : torch.fx.GraphModule
        The model's flat log-density, traced (with the Jacobians for the Gaussian families,
        without them for ``delta``, whose MAP is in the constrained space as in AutoDelta).
    state : StepState or None
        The optimizer state, starting at the guide's initial parameters (None for a plan
        made with ``step=False``, which DADVI uses: it needs the log density only).
    step : Stepper or None
        The traced (and, by policy, compiled) step over ``state`` (None with
        ``step=False``).
    """

    params: GuideParams
    log_density: torch.fx.GraphModule
    state: StepState | None
    step: Stepper | None


def _cheap_reason(
    family: GuideSpec, info: ModelInfo, *, optim: object, enumerated: tuple, vectorize: bool
) -> str | None:
    """Refusals that need no model run."""
    reason = family.not_compiled_reason
    if reason is not None:
        return reason
    if optim is not None:
        return "a custom optimizer (optim=...) was given; the compiled path uses its own Adam"
    if enumerated or info.discrete or info.infinite_discrete:
        sites = list(enumerated or info.discrete or info.infinite_discrete)
        return f"the model has discrete latent sites {sites}"
    if info.subsampled:
        return "the model subsamples data through a plate"
    # ``vectorize`` is not a reason: the traced log density is one point's, batched over the
    # particles with torch.vmap, so a model written ``X @ w`` runs here as fast as one
    # written to broadcast (refusing it sent it to a Python loop over particles in SVI, 8x
    # slower); an op that vmap cannot batch makes tracing the step fail, and SVI takes it.
    params = [n for n, s in info.trace.nodes.items() if s["type"] == "param"]
    if params:
        return f"the model has learnable parameters (pyro.param sites {params})"
    if not info.latent:
        return "the model has no latent sites"
    return None


def _build(
    model: Callable,
    guide: Callable,
    args: tuple,
    kwargs: Mapping,
    info: ModelInfo,
    family: GuideSpec,
    settings: Settings,
    step: bool = True,
) -> Plan | str:
    """Trace the model and the step; a reason instead when either cannot be traced."""
    with torch.no_grad():
        guide(*args, **kwargs)  # creates the guide's parameters, as SVI's first step would
    layout = layout_from_trace(guide.prototype_trace)
    try:
        params = guide_params(family.record, guide, layout)
    except ValueError as err:
        return str(err)
    try:
        potential = build_potential(
            model, args, kwargs, layout, info.max_plate_nesting, reference=info.trace
        )
        u0 = params.constrained(params.read()).loc.detach()
        graph = trace_log_density(potential, u0, jacobian=params.family.jacobian)
    except TraceError as err:
        return str(err)
    if not step:
        return Plan(params, graph, None, None)
    state = new_state(
        params,
        lr=settings.lr,
        clip_norm=settings.clip_norm,
        max_skips=settings.max_skips,
        num_particles=settings.num_particles,
        window=settings.window,
    )
    try:
        stepper = Stepper(make_neg_elbo(params, graph), state)
    except Exception as err:  # an op without a batching or autodiff rule, say
        return f"the ELBO step could not be traced ({type(err).__name__}: {err})"
    return Plan(params, graph, state, stepper)


def plan(
    model: Callable,
    guide: Callable,
    args: tuple,
    kwargs: Mapping,
    info: ModelInfo,
    *,
    family: GuideSpec,
    settings: Settings,
    optim: object = None,
    enumerated: tuple = (),
    vectorize: bool = True,
    step: bool = True,
) -> Plan | str:
    """A :class:`Plan` to fit ``guide`` to ``model`` on the compiled path, or why it cannot.

    Parameters
    ----------
    model, guide : callable
        The model (enumeration configured) and the autoguide to fit.
    args, kwargs : tuple, mapping
        The model's arguments.
    info : ModelInfo
        The model's prototype trace and its sites.
    family : GuideSpec or str
        The parsed guide argument (or a family name, parsed here); its family record says
        whether the compiled path takes it (``meanfield``, ``lowrank``, ``fullrank``,
        ``delta``) and supplies the math.
    settings : Settings
        The training settings (step size, clipping, particles, window).
    optim : optional
        The user's optimizer; the compiled path refuses any (it has its own Adam).
    enumerated : tuple of str
        Discrete sites summed out by enumeration (refused).
    vectorize : bool
        Whether the model broadcasts over a particle dimension.  Not required: the traced
        log density is evaluated one point at a time and batched with :func:`torch.vmap`,
        so the compiled path takes a model that does not broadcast as it is.
    step : bool
        Whether to build the optimizer state and the traced Adam step (False: the log
        density only, for DADVI).

    Returns
    -------
    Plan or str
        The plan, or a short plain-words reason why the compiled path cannot take the fit.

    Notes
    -----
    Creates the guide's parameters in the active Pyro parameter store (running the guide
    once, as SVI's first step would), and traces the model.
    """
    if isinstance(family, str):  # a family name, as a user writes it
        family = parse_guide(family)
    reason = _cheap_reason(
        family, info, optim=optim, enumerated=tuple(enumerated), vectorize=vectorize
    )
    if reason is not None:
        return reason
    try:
        return _build(model, guide, args, kwargs, info, family, settings, step)
    except Exception as err:  # anything unforeseen: SVI can still fit this model
        return f"the compiled path could not be set up ({type(err).__name__}: {err})"


def run_steps(state: StepState, step: Stepper, n: int) -> None:
    """Take ``n`` steps: refill the noise, step; nothing crosses to the host."""
    fill = state.eps.normal_ if state.eps.numel() else None
    for _ in range(n):
        if fill is not None:
            fill()
        step()


def train(plan: Plan, settings: Settings, progress: Progress | None = None) -> Outcome:
    """Train with the compiled step of ``plan``; return how it ended.

    Steps whose ELBO or gradient is not finite are skipped and recorded as NaN; more than
    ``settings.max_skips`` of them in a row stop training (``Outcome.nonfinite``), as in
    the SVI loop.  Ctrl-C stops it too (``Outcome.interrupted``).  Whatever the ending, the
    guide's parameters in the store hold the fitted values on return: after the last step,
    or after the last finite one.

    ``progress`` (a :class:`~pyrovi._progress.Progress` with its stage open) is told of
    each window when the convergence rule reads it and of a compilation before it starts;
    without one, a bar of its own is shown when ``settings.progress`` is set.
    """
    if progress is None:
        progress = Progress("VI", enabled=settings.progress)
        progress.stage("stochastic-gradient VI (compiled)")
    params, state, step = plan.params, plan.state, plan.step
    window = settings.window
    trace: list[float] = []
    plateau = PlateauState()
    interrupted = False
    nonfinite: NonFinite | None = None
    try:
        while len(trace) < settings.num_steps:
            done = len(trace)
            n = min(window, settings.num_steps - done)
            compiled = step.compiled
            step.maybe_compile(done, settings.num_steps - done)
            if step.compiled and not compiled:  # the next call compiles: say so first
                progress.say(
                    f"compiling the ELBO step with torch.compile after {done:,} steps (once; "
                    "it can take tens of seconds)"
                )
            started = time.perf_counter()
            run_steps(state, step, n)
            values = state.elbo[:n].tolist()  # the one host transfer per window
            step.record(n, time.perf_counter() - started)
            if bool(state.halted):
                first = int(state.first_bad)
                trace = trace[:first] + values[: max(first - done, 0)]
                nonfinite = NonFinite(
                    step=first, streak=int(state.streak), max_skips=int(state.max_skips)
                )
                break
            trace.extend(values)
            progress.advance(n)
            if n == window:
                mean = window_mean(values)
                plateau = settings.rule.update(plateau, mean)
                state.lr.fill_(settings.lr * plateau.lr_scale)
                progress.window(mean, mean.se, plateau, settings.rule,
                                settings.lr * plateau.lr_scale)
                if plateau.converged:
                    break
    except KeyboardInterrupt:
        trace.extend(state.elbo[: int(state.count) - len(trace)].tolist())
        interrupted = True
    finally:
        progress.close()
        params.write(state.theta)  # skipped steps changed nothing: the last finite values
    return Outcome(
        trace=tuple(trace),
        converged=plateau.converged,
        interrupted=interrupted,
        num_skipped=int(state.skipped),
        notes=tuple(
            f"compiled path: {text}" for text in (step.note, step.compile_note) if text
        ),
        nonfinite=nonfinite,
    )
