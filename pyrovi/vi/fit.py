"""One run of a VI fit: choose the method and backend, train, and turn the outcome into a
result.

Private to :class:`pyrovi.VI`, which sets it up.  Where it applies (``method="auto"`` or
``"dadvi"``), the fit is deterministic ADVI (:mod:`pyrovi.fast.dadvi`) on the compiled
path's traced log density; otherwise, and with ``method="sgd"``, stochastic-gradient VI on
one of two backends that return the same :class:`~pyrovi._steps.Outcome`: Pyro's SVI loop
(:mod:`pyrovi.vi.svi_loop`, with checkpoints) and the compiled path (:mod:`pyrovi.fast`).
What an interruption, a non-finite stop or a failing model means for the caller --
warnings, errors carrying the partial result, checkpoints -- is the shared run policy of
:mod:`pyrovi._run`.

DADVI's failures lose nothing: a start where the fixed-draw ELBO is not finite falls back
(``"auto"``) to stochastic-gradient VI from the same start, which skips or raises as it
always does (``"dadvi"`` raises the same :class:`~pyrovi.NonFiniteError`); a DADVI fit
that does not converge, or whose fresh-draw check still fails at its draw cap, is
warm-started by stochastic-gradient VI from DADVI's answer (``"auto"``) or returned with
``converged=False`` and a :class:`~pyrovi.ConvergenceWarning` (``"dadvi"``); a fit that
runs out of ``num_steps`` iterations is returned unconverged with the warning, as the
stochastic-gradient loop's is.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import numpy as np
import pyro.poutine as poutine
import torch

import pyrovi.fast as fast
from pyrovi import distributed
from pyrovi._draws import site_shapes
from pyrovi._model import ModelInfo
from pyrovi._progress import Progress, format_count, format_estimate
from pyrovi._run import (
    RunState,
    keep_result,
    warn_interrupted,
)
from pyrovi._runtime import snapshot_store, store_params, warn
from pyrovi._steps import (
    NonFinite,
    Outcome,
    Settings,
    nonfinite_site,
    window_mean,
)
from pyrovi.checkpoint import Checkpoint
from pyrovi.errors import ConvergenceWarning, ModelError, NonFiniteError
from pyrovi.families import REGISTRY, QParams
from pyrovi.fast import dadvi
from pyrovi.vi.minibatch import Batches, pass_elbo, subsample_fraction
from pyrovi.vi.objective import estimate_elbo
from pyrovi.vi.result import VIResult
from pyrovi.vi.svi_loop import train_svi

__all__ = ["Fit", "DADVI_FAMILIES", "DADVI_MAX_FULLRANK_DIM", "RESTART_FRESH_DRAWS"]

#: The fresh draws with which DADVI's check starts when ``VI(num_inits > 1)``: the restarts
#: are chosen by that estimate of their ELBO.  On breast-cancer lowrank (16 seeds, each
#: fit's ELBO also estimated to +-0.002 on 200,000 draws) the default 1,000-draw start gave
#: standard errors of 0.012-0.017 nats, against optima 0.03-0.15 apart, and the choice in
#: one of four groups of four missed the best by 0.033 nats; from 16,000 draws (standard
#: errors 0.007-0.011) every choice was the best, at 0.2-0.4 s more per fit.
RESTART_FRESH_DRAWS = 16_000

#: The families DADVI fits.
DADVI_FAMILIES = tuple(name for name, family in REGISTRY.items() if family.dadvi)

#: Above this many unconstrained dimensions ``method="auto"`` fits ``fullrank`` by
#: stochastic-gradient VI: DADVI's fullrank needs M = 2 D fixed draws and O(D^2) parameters,
#: so each of its iterations grows as D^3.
DADVI_MAX_FULLRANK_DIM = 200


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
    display : Progress
        What the terminal shows (made by :meth:`train`).
    batches : Batches or None
        Minibatch VI: each step's model arguments (``args``, ``kwargs`` are the first
        batch's).
    restart : str
        Which restart this is, for the progress display (``"restart 2/3"``; empty for a
        single run).
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
    display: Progress | None = None
    batches: Batches | None = None
    restart: str = ""

    # ------------------------------------------------------------------- the result
    def _result(
        self,
        trace,
        converged: bool,
        final: bool,
        backend: str = "svi",
        num_skipped: int = 0,
        dadvi_outcome: dadvi.DadviOutcome | None = None,
        point: Callable | None = None,
    ) -> VIResult:
        """The result of the steps in ``trace``; ``final``: with the family's finalization
        and the final ELBO estimate.  ``point``: the MAP's point-mass guide of a ``laplace``
        fit whose Hessian was refused, reported as a ``delta`` result."""
        vi, run = self.vi, self.run
        guide = self.guide if point is None else point
        family = vi.guide_spec.name if point is None else "delta"
        notes = list(run.notes)
        if point is not None:
            notes.append(
                "laplace refused the Hessian at the MAP: this result is the MAP (a point mass)"
            )
        params = store_params()
        saved = snapshot_store()
        elbo = se = float("nan")
        particles = 0
        num_particles = vi.num_particles
        if dadvi_outcome is not None:
            # the fresh-draw check's estimate: mean log p - log q on independent draws
            elbo, se = dadvi_outcome.elbo_fresh, dadvi_outcome.elbo_fresh_se
            particles = dadvi_outcome.num_fresh
            num_particles = dadvi_outcome.num_draws
        elif final:
            if point is None:
                try:
                    guide, extra = vi.guide_spec.finalize(guide, self.args, self.kwargs)
                except ModelError as err:  # laplace's Hessian refused: keep the MAP
                    if getattr(err, "map_guide", None) is None:
                        raise
                    err.step = len(trace)
                    err.result = self._result(
                        trace, converged, final, backend, num_skipped, point=err.map_guide
                    )
                    raise
                params.update(extra)
            est = self._pass_elbo(guide) if self.batches is not None else estimate_elbo(
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
            family=family,
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
            num_particles=num_particles,
            backend=backend,
            notes=tuple(notes),
            site_shapes=site_shapes(self.info.trace),
            num_skipped=num_skipped,
            interrupted=run.interrupted,
            dadvi=dadvi_outcome,
        )

    def _pass_elbo(self, guide):
        """Minibatch VI's final ELBO: one pass over the batches (see
        :func:`~pyrovi.vi.minibatch.pass_elbo`), with a note when the pass does not cover
        the data plate's rows once."""

        def fraction(args, kwargs):
            with torch.no_grad():
                trace = poutine.trace(self.model).get_trace(*args, **kwargs)
            share = subsample_fraction(trace)
            if share is None:
                raise ValueError(
                    "batches=: a batch of the final pass subsampled no plate; every batch "
                    "must use pyro.plate('data', N, subsample=idx)"
                )
            return share

        est, covered = pass_elbo(
            self.batches, self.model, guide, fraction,
            num_particles=max(2, math.ceil(self.vi.elbo_particles / 20)),
            vectorize=self.vectorize,
            max_plate_nesting=self.info.max_plate_nesting,
            enumerate=bool(self.enumerated),
        )
        if abs(covered - 1.0) > 1e-6:
            self.run.notes.append(
                f"the final pass over batches= covered {covered:.4g} times the data plate's "
                "rows, not once: the final ELBO scales the rows it saw to the whole data set"
            )
        return est

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

    def _plan(self, settings: Settings, *, dadvi: bool = False) -> fast.Plan | str:
        """The compiled path's plan for this fit, or why it cannot take it.  For DADVI
        (``dadvi=True``) the log density only: it is traced one point at a time and batched
        with ``torch.vmap``, so the model need not broadcast over particles."""
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
            vectorize=True if dadvi else self.vectorize,
            step=not dadvi,
        )

    # ------------------------------------------------------------------------ DADVI
    def _dadvi_plan(self, settings: Settings) -> fast.Plan | str:
        """The traced log density DADVI needs, or why DADVI does not apply to this fit."""
        vi = self.vi
        spec = vi.guide_spec
        if spec.record is None or not spec.record.dadvi:
            return (
                "DADVI fits the meanfield, lowrank and fullrank families, not "
                f"guide={spec.name!r}"
            )
        if vi.optim is not None:
            return "a custom optimizer (optim=...) was given; DADVI uses its own L-BFGS"
        if vi.tol == 0:
            return (
                f"tol=0 asks for exactly num_steps={vi.num_steps} stochastic-gradient steps; "
                "DADVI stops at its own gradient tolerance"
            )
        if vi.checkpoint is not None or self.resume_from is not None:
            return "checkpoints are written by the stochastic-gradient loop only"
        if vi.backend == "svi":
            return "backend='svi' asks for Pyro's SVI, and DADVI runs on the traced model"
        plan = self._plan(settings, dadvi=True)
        if isinstance(plan, str):
            return plan
        dim = plan.params.layout.dim
        if spec.record.dense_covariance and dim > DADVI_MAX_FULLRANK_DIM:
            return (
                f"{spec.name} with {dim} > {DADVI_MAX_FULLRANK_DIM} unconstrained dimensions "
                "(DADVI would need 2 D fixed draws, each iteration O(D^3))"
            )
        return plan

    def _train_dadvi(self, plan: fast.Plan) -> dadvi.DadviOutcome:
        """DADVI from the guide's initial parameters; its answer is written into the guide.

        Raises ValueError (from :func:`~pyrovi.fast.dadvi.fit_dadvi`) when the fixed-draw
        ELBO is not finite at the start."""
        params = plan.params
        theta0 = params.read()
        start = QParams(*(None if t is None else t.detach() for t in params.constrained(theta0)))
        out = dadvi.fit_dadvi(
            torch.vmap(plan.log_density),
            params.layout.dim,
            params.family,
            init=start,
            seed=self.run.seed,
            dtype=theta0.dtype,
            max_total_iters=self.vi.num_steps,
            # the check needs enough draws; restarts are chosen by its estimate
            num_fresh=max(self.vi.elbo_particles,
                          1000 if self.vi.num_inits == 1 else RESTART_FRESH_DRAWS),
            max_fresh=max(16_000, self.vi.elbo_particles),
            device=theta0.device,
            progress=self.display,
        )
        with torch.no_grad():
            dadvi.write_autoguide(self.guide, params.family, out.params, params.layout)
        return out

    @staticmethod
    def _dadvi_note(out: dadvi.DadviOutcome) -> str:
        check = "passed" if out.check_passed else "FAILED"
        return (
            f"fitted by DADVI with M = {out.num_draws} fixed draws: {out.num_iters} L-BFGS "
            f"iterations ({'converged' if out.converged else 'not converged'}), fixed-draw "
            f"ELBO {out.elbo:.4f}; fresh-draw check {check}: {out.elbo_fresh:.4f} +- "
            f"{out.elbo_fresh_se:.4f} on {out.num_fresh} fresh draws (antithetic pairs)"
        )

    def _dadvi(self, settings: Settings) -> VIResult | None:
        """The DADVI fit where it applies; None when stochastic-gradient VI is to run
        instead (the reason, or DADVI's outcome, is in the notes by then)."""
        vi, run = self.vi, self.run
        plan = self._dadvi_plan(settings)
        if isinstance(plan, str):
            if vi.method == "dadvi":
                raise ValueError(
                    f"method='dadvi' cannot fit this model/guide: {plan}. Use method='auto' "
                    "(falls back to stochastic-gradient VI) or method='sgd'."
                )
            run.notes.append(f"DADVI was not used (stochastic-gradient VI instead): {plan}")
            return None
        self.display.stage(
            "DADVI (L-BFGS on fixed draws, then a fresh-draw check)", unit="iter"
        )
        try:
            out = self._train_dadvi(plan)
        except KeyboardInterrupt:
            outcome = Outcome(trace=(), converged=False, interrupted=True)
            return self._finish(outcome, "dadvi")
        except Exception as err:  # the guide's parameters are untouched: SGD can start over
            nonfinite_start = isinstance(err, ValueError) and "not finite at the initial" in str(
                err
            )
            if vi.method == "dadvi" and nonfinite_start:
                # the fixed draws never change: every step would see the same value
                raise self._nonfinite_error(
                    NonFinite(step=0, streak=vi.max_skips + 1, max_skips=vi.max_skips),
                    Outcome(trace=(), converged=False), "dadvi",
                ) from err
            if vi.method == "dadvi":
                raise
            what = "could not start" if nonfinite_start else f"failed ({type(err).__name__})"
            run.notes.append(
                f"DADVI {what}: {err}; stochastic-gradient VI was run from the same start"
            )
            self.display.say(f"DADVI {what}; stochastic-gradient VI from the same start")
            return None
        note = self._dadvi_note(out)
        if out.ok or out.budget_exhausted or vi.method == "dadvi":
            run.notes.append(note)
            run.notes.extend(out.notes)
            outcome = Outcome(trace=out.trace, converged=out.ok)
            if not out.ok and not out.budget_exhausted:
                warn(
                    "DADVI did not reach a verified optimum: " + "; ".join(out.notes)
                    + ". The result is DADVI's last point (converged=False); method='auto' "
                    "would continue with stochastic-gradient VI from it.",
                    ConvergenceWarning,
                )
                result = self._result(
                    outcome.trace, False, final=True, backend="dadvi", dadvi_outcome=out
                )
                self.display.finish(self._final_line(result, outcome), result.wall_time)
                return result
            return self._finish(outcome, "dadvi", dadvi_outcome=out)
        run.notes.append(
            f"DADVI did not reach a verified optimum ({note}; " + "; ".join(out.notes)
            + "); stochastic-gradient VI continued from DADVI's answer (warm start)"
        )
        self.display.say(
            f"DADVI did not reach a verified optimum after {out.num_iters:,} L-BFGS iterations; "
            "stochastic-gradient VI continues from its answer"
        )
        return None

    def train(self) -> VIResult:
        """DADVI where it applies (``method`` "auto" or "dadvi"); else stochastic-gradient
        VI on the compiled path where it applies, else on Pyro's SVI; warn if the budget
        ran out; return the final result.  The progress display ends with a line that
        carries the result's numbers (or is closed on an error)."""
        # under a torch.distributed group only rank 0 shows progress
        title = f"VI {self.vi.guide_spec.name}" + (f" ({self.restart})" if self.restart else "")
        self.display = Progress(title,
                                enabled=self.vi.progress and distributed.rank() == 0)
        try:
            return self._train()
        finally:
            self.display.close()

    def _sgd_stage(self, backend: str, first: int = 0) -> None:
        """Open the progress stage of stochastic-gradient VI: its description says how it
        ends (the plateau rule, or exactly ``num_steps`` steps with ``tol=0``)."""
        vi = self.vi
        if vi.tol == 0:
            desc, total = f"SGD ({backend}), fixed length (tol=0)", vi.num_steps
        else:
            desc = (
                f"SGD ({backend}), until the ELBO plateaus after {vi.rule.max_reductions} lr "
                f"cuts (at most {format_count(vi.num_steps)} steps)"
            )
            total = None
        self.display.stage(desc, total=total, initial=first)

    def _train(self) -> VIResult:
        vi = self.vi
        settings = self.settings()
        if self.batches is not None:  # options were checked by VI.run
            self.run.notes.append(
                "minibatch VI: each step on the next batch of batches= (Pyro's SVI)")
            outcome = train_svi(self, settings)
            if len(outcome.trace) >= vi.window and vi.tol > 0:
                # say how fine the rule could judge: the se the rule saw in the last window
                per_pass = self.batches.steps_per_pass
                group = per_pass if per_pass and vi.window % per_pass == 0 else None
                se = window_mean(outcome.trace[-vi.window:], group).se
                self.run.notes.append(
                    f"minibatch noise: the last window's mean ELBO had a standard error of "
                    f"{se:.3g} nats, so the convergence rule counted as progress only gains "
                    f"above {vi.rule.threshold(se * math.sqrt(2)):.3g} nats per window; "
                    "judge the fit by the final ELBO (one pass over the batches)"
                )
            return self._finish(outcome, "svi")
        if distributed.is_distributed():
            if vi.method != "sgd" or vi.backend == "compiled":
                raise ValueError(
                    f"a torch.distributed process group of {distributed.world_size()} ranks is "
                    f"running, and data-parallel VI runs the stochastic-gradient path on "
                    f"Pyro's SVI; got method={vi.method!r}, backend={vi.backend!r}. Pass "
                    "method='sgd' (and backend='auto' or 'svi'), or fit on one process"
                )
            self.run.notes.append(
                f"data-parallel VI on {distributed.world_size()} ranks (pyrovi.distributed)")
            return self._finish(train_svi(self, settings), "svi")
        if vi.method != "sgd":
            result = self._dadvi(settings)
            if result is not None:
                return result
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
            self._sgd_stage("compiled")
            backend, outcome = "compiled", fast.train(plan, settings, self.display)
        else:
            backend, outcome = "svi", train_svi(self, settings)
        return self._finish(outcome, backend)

    def _finish(
        self, outcome: Outcome, backend: str, dadvi_outcome: dadvi.DadviOutcome | None = None
    ) -> VIResult:
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
        elif not outcome.converged and backend == "dadvi":
            warn(
                f"DADVI stopped at num_steps={self.vi.num_steps} optimizer iterations before "
                "it converged. Raise num_steps.",
                ConvergenceWarning,
            )
        elif not outcome.converged and self.vi.tol > 0:
            vi = self.vi
            warn(
                f"VI stopped at num_steps={vi.num_steps} before the ELBO converged (tol="
                f"{vi.tol}). Raise num_steps, or change lr (now {vi.lr}) or tol.",
                ConvergenceWarning,
            )
        with keep_result(  # a failing final estimate keeps the trained result
            run,
            unit="step",
            done=lambda: steps,
            partial=lambda: self._result(
                outcome.trace, outcome.converged, final=False, backend=backend,
                num_skipped=outcome.num_skipped, dadvi_outcome=dadvi_outcome,
            ),
            who="the final ELBO estimate",
            trace="ELBO trace",
        ):
            result = self._result(
                outcome.trace, outcome.converged, final=True, backend=backend,
                num_skipped=outcome.num_skipped, dadvi_outcome=dadvi_outcome,
            )
        self.display.finish(self._final_line(result, outcome), result.wall_time)
        return result

    def _final_line(self, result: VIResult, outcome: Outcome) -> str:
        """What the fit leaves on screen: how it ended, with the result's own numbers."""
        n = format_count(result.num_steps)
        if result.dadvi is not None:
            out = result.dadvi
            check = "passed" if out.check_passed else "not passed"
            how = (
                f"{'converged' if result.converged else 'stopped'} after {n} L-BFGS "
                f"iterations (DADVI, M = {out.num_draws} fixed draws, fresh-draw check {check})"
            )
        elif result.backend == "dadvi":  # Ctrl-C during DADVI: nothing was kept
            how = "interrupted during DADVI (nothing fitted)"
        else:
            where = f"(sgd, {result.backend})"
            if outcome.interrupted:
                how = f"interrupted after {n} steps {where}"
            elif result.converged:
                how = f"converged after {n} steps {where}"
            elif self.vi.tol == 0:
                how = f"ran {n} steps {where}, fixed length (tol=0)"
            else:
                how = f"stopped at num_steps = {n} before converging {where}"
        if result.num_skipped:
            how += f", {format_count(result.num_skipped)} non-finite steps skipped"
        return f"{how}, ELBO {format_estimate(result.elbo, result.elbo_se)}"

    def _nonfinite_error(self, bad: NonFinite, outcome: Outcome, backend: str) -> NonFiniteError:
        """The error of a non-finite stop, naming the site at fault where one is found; its
        result holds the parameters of the last finite step (the store's, on return from a
        backend) and the trace before the first non-finite step."""
        site = nonfinite_site(self.model, self.guide, self.args, self.kwargs)
        where = f" at {site}" if site else ""
        todo = "Check the model for values outside a distribution's support, or lower lr."
        if self.vi.guide_spec.map_trained:
            todo += (
                " A MAP fit climbs without end where the density is unbounded (a Dirichlet "
                "or Gamma with concentration below 1 at the edge of its support), so there "
                "the MAP does not exist: give the site a prior with concentration >= 1, "
                "start near a mode (an AutoDelta with init_loc_fn), or use a family with a "
                "density ('meanfield')."
            )
        return NonFiniteError(
            f"the {bad.quantity} became non-finite at step {bad.step}{where} and stayed so "
            f"for {bad.streak} steps (max_skips={bad.max_skips}). The parameters of the last "
            f"finite step (step {bad.step - 1}) and the ELBO trace so far are in err.result. "
            + todo,
            step=bad.step,
            site=site,
            result=self._result(
                outcome.trace, False, final=False, backend=backend,
                num_skipped=outcome.num_skipped,
            ),
        )
