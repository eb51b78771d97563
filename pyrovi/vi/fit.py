"""One run of a VI fit: choose the backend, train, and turn the outcome into a result.

Private to :class:`pyrovi.VI`, which sets it up.  Two backends return the same
:class:`~pyrovi._steps.Outcome`: Pyro's SVI loop (here, with checkpoints) and the compiled
path (:mod:`pyrovi.fast`).  What an interruption, a non-finite stop or a failing model
means for the caller -- warnings, errors carrying the partial result, checkpoints -- is the
shared run policy of :mod:`pyrovi._run`.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from collections.abc import Callable

import numpy as np
import pyro
import pyro.poutine as poutine
import torch
from tqdm.auto import tqdm

import pyrovi.fast as fast
from pyrovi._draws import site_shapes
from pyrovi._model import ModelInfo
from pyrovi._run import RunState, guard, load_params, load_rng, warn_interrupted, write_checkpoint
from pyrovi._runtime import snapshot_store, store_params, warn
from pyrovi._steps import (
    NonFinite,
    Outcome,
    PlateauState,
    Settings,
    nonfinite_site,
    window_mean,
)
from pyrovi.checkpoint import Checkpoint, fingerprint
from pyrovi.errors import ConvergenceWarning, NonFiniteError
from pyrovi.vi.objective import estimate_elbo, make_elbo
from pyrovi.vi.result import VIResult

__all__ = ["Fit", "make_optimizer"]


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


@dataclasses.dataclass
class Fit:
    """One run of a VI fit.

    Attributes
    ----------
    vi : pyrovi.VI
        The configuration (read only).
    model, guide : callable
        The model (enumeration configured) and the guide being fitted.
    args, kwargs : tuple, dict
        Model arguments, on the run's device.
    info : ModelInfo
        The model's prototype trace and its sites.
    enumerated : tuple of str
        Discrete sites summed out by enumeration.
    vectorize : bool
        Whether particles are vectorized.
    run : RunState
        The run's own state: seed, device, start time, notes, interruption.
    resume_from : Checkpoint or None
        A checkpoint to continue from.
    """

    vi: object
    model: Callable
    guide: Callable
    args: tuple
    kwargs: dict
    info: ModelInfo
    enumerated: tuple
    vectorize: bool
    run: RunState
    resume_from: Checkpoint | None = None

    # ------------------------------------------------------------------- the result
    def _result(
        self,
        trace,
        converged: bool,
        final: bool,
        backend: str = "svi",
        num_skipped: int = 0,
    ) -> VIResult:
        vi, run = self.vi, self.run
        guide = self.guide
        params = store_params()
        saved = snapshot_store()
        elbo = se = float("nan")
        particles = 0
        if final:
            guide, extra = vi.guide_spec.finalize(guide, self.args, self.kwargs)
            params.update(extra)
            est = estimate_elbo(
                self.model,
                guide,
                self.args,
                self.kwargs,
                num_particles=vi.elbo_particles,
                vectorize=self.vectorize,
                max_plate_nesting=self.info.max_plate_nesting,
                enumerate=bool(self.enumerated),
            )
            elbo, se, particles = est.value, est.se, est.num_particles
        return VIResult(
            guide=guide,
            family=vi.guide_spec.name,
            params=params,
            elbo_trace=np.asarray(trace, dtype=np.float64),
            elbo=elbo,
            elbo_se=se,
            elbo_particles=particles,
            num_steps=len(trace),
            converged=converged,
            wall_time=run.wall_time(),
            model=vi.model,
            args=self.args,
            kwargs=self.kwargs,
            seed=run.seed,
            param_state=saved,
            device=run.device,
            max_plate_nesting=self.info.max_plate_nesting,
            latent_sites=self.info.latent,
            enumerated_sites=self.enumerated,
            vectorized=self.vectorize,
            num_particles=vi.num_particles,
            backend=backend,
            notes=tuple(run.notes),
            site_shapes=site_shapes(self.info.trace),
            num_skipped=num_skipped,
            interrupted=run.interrupted,
        )

    # --------------------------------------------------------------------- training
    def settings(self) -> Settings:
        """The training settings both backends take, from the configuration."""
        vi = self.vi
        return Settings(
            num_steps=vi.num_steps,
            lr=vi.lr,
            window=vi.window,
            rule=vi.rule,
            num_particles=vi.num_particles,
            clip_norm=vi.clip_norm,
            max_skips=vi.max_skips,
            progress=vi.progress,
        )

    def _plan(self, settings: Settings) -> fast.Plan | str:
        """The compiled path's plan for this fit, or why it cannot take it."""
        if self.vi.checkpoint is not None or self.resume_from is not None:
            return "checkpoints are written by the SVI path only"
        return fast.plan(  # traces the model: asked only when the answer is not known yet
            self.model,
            self.guide,
            self.args,
            self.kwargs,
            self.info,
            family=self.vi.guide_spec,
            settings=settings,
            optim=self.vi.optim,
            enumerated=self.enumerated,
            vectorize=self.vectorize,
        )

    def train(self) -> VIResult:
        """Train with the compiled path where it applies, else with Pyro's SVI; warn if
        the budget ran out; return the final result."""
        vi = self.vi
        settings = self.settings()
        plan = self._plan(settings) if vi.backend != "svi" else None
        if isinstance(plan, str):
            if vi.backend == "compiled":
                raise ValueError(
                    f"backend='compiled' cannot fit this model/guide: {plan}. Use "
                    "backend='auto' (falls back to Pyro's SVI) or backend='svi'."
                )
            self.run.notes.append(f"Pyro's SVI was used, not the compiled path: {plan}")
            plan = None
        if plan is not None:
            backend, outcome = "compiled", fast.train(plan, settings)
        else:
            backend, outcome = "svi", self._train_svi(settings)
        return self._finish(outcome, backend)

    def _finish(self, outcome: Outcome, backend: str) -> VIResult:
        """Apply the run policy to how training ended: the result, a warning or an error."""
        run, steps = self.run, len(outcome.trace)
        if outcome.interrupted:
            run.interrupted = True
            run.notes.append(f"interrupted (Ctrl-C) after {steps} steps")
        run.notes.extend(outcome.notes)
        if outcome.nonfinite is not None:
            raise self._nonfinite_error(outcome.nonfinite, outcome, backend)
        if outcome.interrupted:
            warn_interrupted(
                run, f"VI was interrupted after {steps} steps; returning the result so far"
            )
        elif not outcome.converged:
            vi = self.vi
            warn(
                f"VI stopped at num_steps={vi.num_steps} before the ELBO converged (tol="
                f"{vi.tol}). Raise num_steps, or change lr (now {vi.lr}) or tol.",
                ConvergenceWarning,
            )
        return self._result(
            outcome.trace, outcome.converged, final=True, backend=backend,
            num_skipped=outcome.num_skipped,
        )

    def _nonfinite_error(self, bad: NonFinite, outcome: Outcome, backend: str) -> NonFiniteError:
        """The error of a non-finite stop, naming the site at fault where one is found; its
        result holds the parameters of the last finite step (the store's, on return from a
        backend) and the trace before the first non-finite step."""
        site = nonfinite_site(self.model, self.guide, self.args, self.kwargs)
        where = f" at {site}" if site else ""
        return NonFiniteError(
            f"the {bad.quantity} became non-finite at step {bad.step}{where} and stayed so "
            f"for {bad.streak} steps (max_skips={bad.max_skips}). The parameters of the last "
            f"finite step (step {bad.step - 1}) and the ELBO trace so far are in err.result. "
            "Check the model for values outside a distribution's support, or lower lr.",
            step=bad.step,
            site=site,
            result=self._result(
                outcome.trace, False, final=False, backend=backend,
                num_skipped=outcome.num_skipped,
            ),
        )

    # ------------------------------------------------------------------- SVI backend
    def _restore(self, ckpt: Checkpoint, state: _LoopState) -> int:
        """Load a checkpoint in the order that makes the continuation exact: the guide is
        set up first (creating its parameters), the saved values are then copied into those
        very tensors, then the optimizer state, and the random state last."""
        with torch.no_grad():
            poutine.trace(self.guide).get_trace(*self.args, **self.kwargs)
        load_params(ckpt.param_state["params"], owner="guide")
        store = pyro.get_param_store()
        state.trace = list(ckpt.trace)
        state.plateau = PlateauState(**ckpt.schedule["plateau"])
        state.base_lrs = list(ckpt.schedule["base_lrs"])
        if ckpt.optim_state is not None:
            state.known = [store[name].unconstrained() for name in ckpt.optim_param_names]
            state.optimizer = make_optimizer(self.vi.optim, state.known, self.vi.lr)
            state.optimizer.load_state_dict(ckpt.optim_state)
        load_rng(ckpt, self.run.device)
        state.skipped = ckpt.schedule.get("skipped", 0)
        return ckpt.step

    def _checkpoint(self, state: _LoopState, step: int) -> Checkpoint:
        """The checkpoint after ``step`` completed steps."""
        vi, device = self.vi, self.run.device
        store = pyro.get_param_store()
        return Checkpoint(
            kind="vi",
            config=dict(vi.config, seed=self.run.seed),
            family=vi.guide_spec.name,
            fingerprint=fingerprint(self.info.trace),
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

    def _train_svi(self, settings: Settings) -> Outcome:
        """The training loop on Pyro's ELBO, with checkpoints; the SVI backend."""
        vi, run = self.vi, self.run
        elbo_fn = make_elbo(
            settings.num_particles,
            vectorize=self.vectorize,
            max_plate_nesting=self.info.max_plate_nesting,
            enumerate=bool(self.enumerated),
        )
        state = _LoopState(trace=[], plateau=PlateauState())
        first = self._restore(self.resume_from, state) if self.resume_from else 0
        known = set(state.known)
        max_norm = settings.clip_norm if settings.clip_norm is not None else math.inf
        window = settings.window
        bar = tqdm(total=settings.num_steps, initial=first, disable=not settings.progress,
                   desc="VI", leave=False)
        nonfinite: NonFinite | None = None

        def save() -> Checkpoint:  # after the completed steps (trace entry k is step k's)
            return self._checkpoint(state, len(state.trace))

        policy = guard(
            run,
            unit="step",
            done=lambda: len(state.trace),
            partial=lambda: self._result(state.trace, False, False, num_skipped=state.skipped),
            save=save,
            who="the model or guide",
            trace="ELBO trace",
        )
        try:
            with policy:
                for step in range(first, settings.num_steps):
                    with poutine.trace(param_only=True) as capture:
                        loss = elbo_fn.loss_and_grads(
                            self.model, self.guide, *self.args, **self.kwargs
                        )
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
                        nonfinite = self._skip(state, step, loss, settings.max_skips)
                        if nonfinite is not None:
                            break
                        state.trace.append(float("nan"))
                    else:
                        state.optimizer.step()
                        state.consecutive, state.first_bad = 0, None
                        state.trace.append(-loss)
                    state.optimizer.zero_grad(set_to_none=True)
                    if (step + 1) % window == 0:
                        mean = window_mean(state.trace[-window:])
                        state.plateau = settings.rule.update(state.plateau, mean)
                        for group, base in zip(state.optimizer.param_groups, state.base_lrs):
                            group["lr"] = base * state.plateau.lr_scale
                        bar.set_postfix(
                            elbo=f"{mean:.4g}", lr=f"{settings.lr * state.plateau.lr_scale:.2g}"
                        )
                        bar.update(window)
                    if vi.checkpoint is not None and (step + 1) % vi.checkpoint_every == 0:
                        write_checkpoint(run, save, at=f"step {step + 1}")
                    if state.plateau.converged:
                        break
        finally:
            bar.close()
        trace = state.trace if nonfinite is None else state.trace[: nonfinite.step]
        return Outcome(
            trace=tuple(trace),
            converged=state.plateau.converged,
            interrupted=run.interrupted,
            num_skipped=state.skipped,
            nonfinite=nonfinite,
        )

    @staticmethod
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
