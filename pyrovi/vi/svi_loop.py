"""The stochastic-gradient loop on Pyro's SVI machinery (the ``"svi"`` backend of a VI fit).

Each step is one ``loss_and_grads`` of Pyro's ELBO (``Trace_ELBO``, ``TraceEnum_ELBO`` or the
data-parallel wrapper of :mod:`pyrovi.distributed`), a gradient clip and an optimizer step;
non-finite steps are skipped up to ``max_skips`` in a row; the plateau rule of
:mod:`pyrovi._steps` reads the ELBO once per window; checkpoints restore the exact
continuation.  The run policy (interruption, failing model) is :mod:`pyrovi._run`'s.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from typing import TYPE_CHECKING

import pyro
import pyro.poutine as poutine
import torch

from pyrovi import distributed
from pyrovi._run import guard, load_params, load_rng, write_checkpoint
from pyrovi._runtime import snapshot_store
from pyrovi._steps import NonFinite, Outcome, PlateauState, Settings, window_mean
from pyrovi.checkpoint import Checkpoint, fingerprint
from pyrovi.vi.objective import make_elbo

if TYPE_CHECKING:
    from pyrovi.vi.fit import Fit

__all__ = ["train_svi", "make_optimizer"]


def make_optimizer(optim, params: list, lr: float) -> torch.optim.Optimizer:
    """A torch optimizer over ``params`` from the ``optim`` argument of :class:`pyrovi.VI`."""
    if optim is None:
        return torch.optim.Adam(params, lr=lr)
    if inspect.isclass(optim) and issubclass(optim, torch.optim.Optimizer):
        return optim(params, lr=lr)
    if isinstance(optim, pyro.optim.PyroOptim):
        kwargs = dict(optim.pt_optim_args) if isinstance(optim.pt_optim_args, dict) else {}
        kwargs.setdefault("lr", lr)
        return optim.pt_optim_constructor(params, **kwargs)
    return optim(params)


@dataclasses.dataclass
class _LoopState:
    """What the SVI loop carries from step to step (and a checkpoint restores)."""

    trace: list
    plateau: PlateauState
    optimizer: torch.optim.Optimizer | None = None
    base_lrs: list = dataclasses.field(default_factory=list)
    known: list = dataclasses.field(default_factory=list)
    skipped: int = 0
    consecutive: int = 0
    first_bad: int | None = None


def _restore(fit: Fit, ckpt: Checkpoint, state: _LoopState) -> int:
    """Load a checkpoint in the order that makes the continuation exact: the guide is
    set up first (creating its parameters), the saved values are then copied into those
    very tensors, then the optimizer state, and the random state last."""
    with torch.no_grad():
        poutine.trace(fit.guide).get_trace(*fit.args, **fit.kwargs)
    load_params(ckpt.param_state["params"], owner="guide")
    store = pyro.get_param_store()
    state.trace = list(ckpt.trace)
    state.plateau = PlateauState(**ckpt.schedule["plateau"])
    state.base_lrs = list(ckpt.schedule["base_lrs"])
    if ckpt.optim_state is not None:
        state.known = [store[name].unconstrained() for name in ckpt.optim_param_names]
        state.optimizer = make_optimizer(fit.vi.optim, state.known, fit.vi.lr)
        state.optimizer.load_state_dict(ckpt.optim_state)
    load_rng(ckpt, fit.run.device)
    state.skipped = ckpt.schedule.get("skipped", 0)
    return ckpt.step

def _checkpoint(fit: Fit, state: _LoopState, step: int) -> Checkpoint:
    """The checkpoint after ``step`` completed steps."""
    vi, device = fit.vi, fit.run.device
    store = pyro.get_param_store()
    return Checkpoint(
        kind="vi",
        config=dict(vi.config, seed=fit.run.seed),
        family=vi.guide_spec.name,
        fingerprint=fingerprint(fit.info.trace),
        step=step,
        trace=list(state.trace),
        param_state=snapshot_store(),
        optim_state=state.optimizer.state_dict() if state.optimizer else None,
        optim_param_names=[store.param_name(p) for p in state.known],
        schedule={
            "plateau": dataclasses.asdict(state.plateau),
            "base_lrs": list(state.base_lrs),
            "skipped": state.skipped,
        },
        rng_state=torch.get_rng_state(),
        cuda_rng_state=torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
    )

def train_svi(fit: Fit, settings: Settings) -> Outcome:
    """The training loop on Pyro's ELBO, with checkpoints: the SVI backend of ``fit``."""
    vi, run = fit.vi, fit.run
    elbo_fn = make_elbo(
        settings.num_particles,
        vectorize=fit.vectorize,
        max_plate_nesting=fit.info.max_plate_nesting,
        enumerate=bool(fit.enumerated),
    )
    if distributed.is_distributed():  # the loss and gradients of every rank's data
        elbo_fn = distributed.DataParallelELBO(elbo_fn)
    lead = distributed.rank() == 0  # the rank that writes checkpoints and shows progress
    state = _LoopState(trace=[], plateau=PlateauState())
    first = _restore(fit, fit.resume_from, state) if fit.resume_from else 0
    run.mark_rng()  # the random state of the completed steps, for checkpoints
    known = set(state.known)
    max_norm = settings.clip_norm if settings.clip_norm is not None else math.inf
    window = settings.window
    pass_len = None  # minibatch VI: steps per pass, when windows hold whole passes
    if fit.batches is not None:
        per_pass = fit.batches.steps_per_pass
        if per_pass and window % per_pass == 0 and window // per_pass >= 2:
            pass_len = per_pass
        else:
            run.notes.append(
                f"minibatch VI: window={window} is not a whole number (>= 2) of passes "
                f"over batches= ({per_pass or 'unknown'} batches each), so the "
                "convergence rule's standard error counts the batch-to-batch spread"
            )
    fit._sgd_stage("svi", first)
    nonfinite: NonFinite | None = None

    def save() -> Checkpoint:  # after the completed steps (trace entry k is step k's)
        return _checkpoint(fit, state, len(state.trace))

    policy = guard(
        run,
        unit="step",
        done=lambda: len(state.trace),
        partial=lambda: fit._result(state.trace, False, False, num_skipped=state.skipped),
        save=save if lead else None,
        who="the model or guide",
        trace="ELBO trace",
    )
    try:
        with policy:
            for step in range(first, settings.num_steps):
                args, kwargs = (
                    fit.batches.next() if fit.batches else (fit.args, fit.kwargs))
                with poutine.trace(param_only=True) as capture:
                    try:
                        loss = elbo_fn.loss_and_grads(
                            fit.model, fit.guide, *args, **kwargs
                        )
                    except ValueError as err:
                        # Pyro's validation refuses a NaN distribution parameter: a
                        # non-finite step, skipped like any other
                        if not _is_validation_error(err):
                            raise
                        loss = math.nan
                params = [s["value"].unconstrained() for s in capture.trace.nodes.values()]
                new = [p for p in params if p not in known]
                if new:
                    known.update(new)
                    state.known.extend(new)
                    if state.optimizer is None:
                        state.optimizer = make_optimizer(vi.optim, new, settings.lr)
                        state.base_lrs = [g["lr"] for g in state.optimizer.param_groups]
                    else:
                        state.optimizer.add_param_group({"params": new})
                        state.base_lrs.append(state.optimizer.param_groups[-1]["lr"])
                if state.optimizer is None:  # the guide has no parameter: nothing to fit
                    run.notes.append("the guide has no parameters; nothing was optimized")
                    state.trace.append(-loss)
                    state.plateau = PlateauState(converged=True)
                    break
                grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
                if not (math.isfinite(loss) and math.isfinite(grad_norm)):
                    nonfinite = _skip(state, step, loss, settings.max_skips)
                    if nonfinite is not None:
                        break
                    state.trace.append(float("nan"))
                else:
                    state.optimizer.step()
                    state.consecutive, state.first_bad = 0, None
                    state.trace.append(-loss)
                state.optimizer.zero_grad(set_to_none=True)
                run.mark_rng()
                fit.display.advance(1)  # the loss is a host float already
                if (step + 1) % window == 0:
                    mean = window_mean(state.trace[-window:], pass_len)
                    state.plateau = settings.rule.update(state.plateau, mean)
                    for group, base in zip(state.optimizer.param_groups, state.base_lrs):
                        group["lr"] = base * state.plateau.lr_scale
                    fit.display.window(mean, mean.se, state.plateau, settings.rule,
                                        settings.lr * state.plateau.lr_scale)
                if lead and vi.checkpoint is not None and (
                    step + 1) % vi.checkpoint_every == 0:
                    write_checkpoint(run, save, at=f"step {step + 1}")
                if state.plateau.converged:
                    break
    finally:
        fit.display.close()
    trace = state.trace if nonfinite is None else state.trace[: nonfinite.step]
    return Outcome(
        trace=tuple(trace),
        converged=state.plateau.converged,
        interrupted=run.interrupted,
        num_skipped=state.skipped,
        nonfinite=nonfinite,
    )

def _skip(state: _LoopState, step: int, loss: float, max_skips: int) -> NonFinite | None:
    """Count a skipped non-finite step; past ``max_skips`` in a row, why to stop."""
    state.skipped += 1
    state.consecutive += 1
    if state.first_bad is None:
        state.first_bad = step
    if state.consecutive <= max_skips:
        return None
    return NonFinite(
        step=state.first_bad,
        streak=state.consecutive,
        max_skips=max_skips,
        quantity="ELBO" if not math.isfinite(loss) else "gradient",
    )


def _is_validation_error(err: ValueError) -> bool:
    """Whether ``err`` is Pyro's (torch's) distribution argument validation refusing a
    non-finite parameter or value, rather than a bug in the model."""
    text = str(err)
    return ("Expected parameter" in text or "Expected value argument" in text) and (
        "nan" in text.lower() or "inf" in text.lower()
    )
