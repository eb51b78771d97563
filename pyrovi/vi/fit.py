"""One running VI fit: the training loop on Pyro's ELBO, checkpoints, failure handling and
the final result.  Private to :class:`pyrovi.VI`, which sets it up."""

from __future__ import annotations

import dataclasses
import inspect
import math
import time
from collections.abc import Callable

import numpy as np
import pyro
import pyro.poutine as poutine
import torch
from tqdm.auto import tqdm

from pyrovi._draws import site_shapes
from pyrovi._model import ModelInfo
from pyrovi._runtime import snapshot_store, store_params, warn
from pyrovi.checkpoint import Checkpoint, fingerprint, save_checkpoint
from pyrovi.errors import (
    CheckpointError,
    CheckpointWarning,
    ConvergenceWarning,
    FitError,
    InterruptedFitWarning,
    NonFiniteError,
)
from pyrovi.vi.checks import nonfinite_site
from pyrovi.vi.convergence import PlateauState
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
    """What the training loop carries from step to step (and a checkpoint restores)."""

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
    """The mutable state of one running fit.

    Attributes
    ----------
    vi : pyrovi.VI
        The configuration.
    model, guide : callable
        The model (enumeration configured) and the guide being fitted.
    args, kwargs : tuple, dict
        Model arguments, on ``device``.
    info : ModelInfo
        The model's prototype trace and its sites.
    enumerated : tuple of str
        Discrete sites summed out by enumeration.
    vectorize : bool
        Whether particles are vectorized.
    seed : int
    device : torch.device
    start : float
        ``time.perf_counter()`` at the start of the fit.
    notes : list of str
        Remarks that end up on the result.
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
    seed: int
    device: torch.device
    start: float
    notes: list
    resume_from: Checkpoint | None = None
    interrupted: bool = False
    num_skipped: int = 0

    # ------------------------------------------------------------------- the result
    def _result(
        self, trace: list, converged: bool, final: bool, backend: str = "svi"
    ) -> VIResult:
        guide = self.guide
        params = store_params()
        saved = snapshot_store()
        elbo = se = float("nan")
        particles = 0
        if final:
            if self.vi.guide_spec.family == "laplace":
                guide = guide.laplace_approximation(*self.args, **self.kwargs)
                params["laplace.loc"] = guide.loc.detach().clone()
                params["laplace.scale_tril"] = (
                    (guide.scale[:, None] * guide.scale_tril).detach().clone()
                )
            est = estimate_elbo(
                self.model,
                guide,
                self.args,
                self.kwargs,
                num_particles=self.vi.elbo_particles,
                vectorize=self.vectorize,
                max_plate_nesting=self.info.max_plate_nesting,
                enumerate=bool(self.enumerated),
            )
            elbo, se, particles = est.value, est.se, est.num_particles
        return VIResult(
            guide=guide,
            family=self.vi.guide_spec.name,
            params=params,
            elbo_trace=np.asarray(trace, dtype=np.float64),
            elbo=elbo,
            elbo_se=se,
            elbo_particles=particles,
            num_steps=len(trace),
            converged=converged,
            wall_time=time.perf_counter() - self.start,
            model=self.vi.model,
            args=self.args,
            kwargs=self.kwargs,
            seed=self.seed,
            param_state=saved,
            device=self.device,
            max_plate_nesting=self.info.max_plate_nesting,
            latent_sites=self.info.latent,
            enumerated_sites=self.enumerated,
            vectorized=self.vectorize,
            num_particles=self.vi.num_particles,
            backend=backend,
            notes=tuple(self.notes),
            site_shapes=site_shapes(self.info.trace),
            num_skipped=self.num_skipped,
            interrupted=self.interrupted,
        )

    # --------------------------------------------------------------------- training
    def train(self) -> VIResult:
        """Train with the compiled path where it applies, else with Pyro's SVI; warn if
        the budget ran out; return the final result."""
        vi = self.vi
        backend = "svi"
        if vi.backend != "svi":
            from pyrovi.fast import compiled_unsupported, train_compiled

            if vi.checkpoint is not None or self.resume_from is not None:
                reason = "checkpoints are written by the SVI path only"
            else:  # traces the model, so asked only when the answer is not already known
                reason = compiled_unsupported(self)
            if reason is None:
                backend = "compiled"
            elif vi.backend == "compiled":
                raise ValueError(
                    f"backend='compiled' cannot fit this model/guide: {reason}. Use "
                    "backend='auto' (falls back to Pyro's SVI) or backend='svi'."
                )
            else:
                self.notes.append(f"Pyro's SVI was used, not the compiled path: {reason}")
        if backend == "compiled":
            trace, converged = train_compiled(self)
        else:
            trace, converged = self.train_svi()
        if not converged and not self.interrupted:
            warn(
                f"VI stopped at num_steps={vi.num_steps} before the ELBO converged (tol="
                f"{vi.tol}). Raise num_steps, or change lr (now {vi.lr}) or tol.",
                ConvergenceWarning,
            )
        return self._result(trace, converged=converged, final=True, backend=backend)

    def _restore(self, ckpt: Checkpoint, state: _LoopState) -> int:
        """Load a checkpoint in the order that makes the continuation exact: the guide is
        set up first (creating its parameters), the saved values are then copied into those
        very tensors (swapping the tensors in the store is ignored by an AutoGuide that
        already holds its own), then the optimizer state, and the random state last."""
        with torch.no_grad():
            poutine.trace(self.guide).get_trace(*self.args, **self.kwargs)
        store = pyro.get_param_store()
        saved = ckpt.param_state["params"]
        missing = sorted(set(saved) - set(store.keys()))
        if missing:
            raise CheckpointError(
                f"the checkpoint holds parameters {missing[:3]} that this guide does not "
                "create; resume with the guide the checkpoint was written with"
            )
        with torch.no_grad():
            for name, value in saved.items():
                store[name].unconstrained().copy_(value.to(self.device))
        state.trace = list(ckpt.trace)
        state.plateau = PlateauState(**ckpt.schedule["plateau"])
        state.base_lrs = list(ckpt.schedule["base_lrs"])
        if ckpt.optim_state is not None:
            state.known = [store[name].unconstrained() for name in ckpt.optim_param_names]
            state.optimizer = make_optimizer(self.vi.optim, state.known, self.vi.lr)
            state.optimizer.load_state_dict(ckpt.optim_state)
        torch.set_rng_state(ckpt.rng_state)
        if ckpt.cuda_rng_state is not None and self.device.type == "cuda":
            torch.cuda.set_rng_state(ckpt.cuda_rng_state, self.device)
        state.skipped = ckpt.schedule.get("skipped", 0)
        return ckpt.step

    def _checkpoint(self, state: _LoopState, step: int) -> None:
        """Write a checkpoint after ``step`` completed steps; warn (and go on) on failure."""
        vi = self.vi
        store = pyro.get_param_store()
        ckpt = Checkpoint(
            kind="vi",
            config=dict(vi.config, seed=self.seed),
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
            cuda_rng_state=(
                torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None
            ),
        )
        try:
            save_checkpoint(vi.checkpoint, ckpt)
        except Exception as err:
            warn(
                f"could not write checkpoint {vi.checkpoint!r} at step {step} "
                f"({type(err).__name__}: {err}); training goes on and the previous "
                "checkpoint, if any, is intact. Free disk space or pass another path.",
                CheckpointWarning,
            )

    def _partial(self, state: _LoopState, upto: int | None = None) -> VIResult:
        trace = state.trace if upto is None else state.trace[:upto]
        self.num_skipped = state.skipped
        return self._result(trace, converged=False, final=False)

    def train_svi(self) -> tuple[list[float], bool]:
        """The training loop on Pyro's ELBO; returns (ELBO trace, converged)."""
        vi = self.vi
        elbo_fn = make_elbo(
            vi.num_particles,
            vectorize=self.vectorize,
            max_plate_nesting=self.info.max_plate_nesting,
            enumerate=bool(self.enumerated),
        )
        state = _LoopState(trace=[], plateau=PlateauState())
        first = self._restore(self.resume_from, state) if self.resume_from else 0
        known = set(state.known)
        max_norm = vi.clip_norm if vi.clip_norm is not None else math.inf
        bar = tqdm(total=vi.num_steps, initial=first, disable=not vi.progress, desc="VI",
                   leave=False)
        step = first
        try:
            for step in range(first, vi.num_steps):
                with poutine.trace(param_only=True) as capture:
                    loss = elbo_fn.loss_and_grads(self.model, self.guide, *self.args, **self.kwargs)
                params = [site["value"].unconstrained() for site in capture.trace.nodes.values()]
                new = [p for p in params if p not in known]
                if new:
                    known.update(new)
                    state.known.extend(new)
                    if state.optimizer is None:
                        state.optimizer = make_optimizer(vi.optim, new, vi.lr)
                        state.base_lrs = [g["lr"] for g in state.optimizer.param_groups]
                    else:
                        state.optimizer.add_param_group({"params": new})
                        state.base_lrs.append(state.optimizer.param_groups[-1]["lr"])
                if state.optimizer is None:  # the guide has no parameter: nothing to fit
                    self.notes.append("the guide has no parameters; nothing was optimized")
                    state.trace.append(-loss)
                    state.plateau = PlateauState(converged=True)
                    break
                grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
                if not (math.isfinite(loss) and math.isfinite(grad_norm)):
                    self._skip(state, step, loss, params)
                    state.trace.append(float("nan"))
                else:
                    state.optimizer.step()
                    state.consecutive, state.first_bad = 0, None
                    state.trace.append(-loss)
                state.optimizer.zero_grad(set_to_none=True)
                if (step + 1) % vi.window == 0:
                    window = np.asarray(state.trace[-vi.window :])
                    finite = np.isfinite(window).any()
                    window_mean = float(np.nanmean(window)) if finite else -math.inf
                    state.plateau = vi.rule.update(state.plateau, window_mean)
                    for group, base in zip(state.optimizer.param_groups, state.base_lrs):
                        group["lr"] = base * state.plateau.lr_scale
                    bar.set_postfix(
                        elbo=f"{window_mean:.4g}", lr=f"{vi.lr * state.plateau.lr_scale:.2g}"
                    )
                    bar.update(vi.window)
                if vi.checkpoint is not None and (step + 1) % vi.checkpoint_every == 0:
                    self._checkpoint(state, step + 1)
                if state.plateau.converged:
                    break
        except KeyboardInterrupt:
            self.interrupted = True
            self.notes.append(f"interrupted (Ctrl-C) after {len(state.trace)} steps")
            if vi.checkpoint is not None:
                self._checkpoint(state, len(state.trace))
            warn(
                f"VI was interrupted after {len(state.trace)} steps; returning the result so "
                "far" + (f" (checkpoint {vi.checkpoint!r} written)" if vi.checkpoint else ""),
                InterruptedFitWarning,
            )
        except FitError:
            raise
        except Exception as err:
            upto = len(state.trace)
            if vi.checkpoint is not None:
                self._checkpoint(state, upto)
            raise FitError(
                f"the model or guide raised {type(err).__name__} at step {step}: {err}. The "
                "parameters of the last completed step and the ELBO trace so far are in "
                "err.result" + (f"; checkpoint {vi.checkpoint!r} holds them too" if
                                vi.checkpoint else ""),
                step=step,
                result=self._partial(state),
            ) from err
        finally:
            bar.close()
        self.num_skipped = state.skipped
        return state.trace, state.plateau.converged

    def _skip(self, state: _LoopState, step: int, loss: float, params: list) -> None:
        """Skip a non-finite update; stop after ``max_skips`` consecutive ones."""
        state.skipped += 1
        state.consecutive += 1
        if state.first_bad is None:
            state.first_bad = step
        if state.consecutive <= self.vi.max_skips:
            return
        what = "ELBO" if not math.isfinite(loss) else "gradient"
        site = nonfinite_site(self.model, self.guide, self.args, self.kwargs)
        where = f" at {site}" if site else ""
        first = state.first_bad
        raise NonFiniteError(
            f"the {what} became non-finite at step {first}{where} and stayed so for "
            f"{state.consecutive} steps (max_skips={self.vi.max_skips}). The parameters of "
            f"the last finite step (step {first - 1}) and the ELBO trace so far are in "
            "err.result. Check the model for values outside a distribution's support, or "
            "lower lr.",
            step=first,
            site=site,
            result=self._partial(state, upto=first),
        )
