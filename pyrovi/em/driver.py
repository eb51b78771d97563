"""``pyrovi.EM``: exact-posterior EM for Pyro models, with closed-form fast paths.

The driver checks the configuration and the model before any work, then runs ``num_inits``
restarts, each in its own seeded, private Pyro parameter store, and keeps the best.  Each
iteration is an exact E-step (``log p(x | theta_t)`` and the posterior) followed by an
M-step; the loop, its convergence rule and the reporting follow
``sklearn.mixture.BaseMixture.fit``.  The math lives in :mod:`pyrovi.em.estep`,
:mod:`pyrovi.em.mstep` and the ready models (:mod:`pyrovi.em.gmm`,
:mod:`pyrovi.em.factor_analysis`); :mod:`pyrovi.em.engines` binds it to one model.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from pyrovi._model import check_observed_finite, inspect_model, model_name
from pyrovi._progress import Progress, format_count
from pyrovi._run import (
    RunState,
    keep_result,
    load_params,
    load_rng,
    stop_on_interrupt,
    warn_interrupted,
    write_checkpoint,
)
from pyrovi._runtime import (
    check_bool,
    check_device,
    check_positive,
    check_seed,
    check_trace_values,
    fit_context,
    move_to_device,
    renamed_keyword,
    resolve_device,
    resolve_seed,
    snapshot_store,
    store_params,
    traced_model,
)
from pyrovi.checkpoint import (
    DATA_KEY,
    Checkpoint,
    check_checkpoint_path,
    check_compatible,
    data_hash,
    fingerprint,
    register_storable,
)
from pyrovi.em.closed_form import ClosedFormModel
from pyrovi.em.engines import (
    ClosedFormEngine,
    EMModelInfo,
    EnumEngine,
    EStep,
    GaussianEngine,
)
from pyrovi.em.estep import latent_kind
from pyrovi.em.mstep import LBFGSMStep
from pyrovi.em.posterior import DiscretePosterior, GaussianPosterior
from pyrovi.em.result import EMResult, warn_not_converged
from pyrovi.em.stream import FAMILY as STREAM_FAMILY
from pyrovi.em.stream import OnlineEM, stream_em
from pyrovi.errors import CheckpointError, ModelError, NonFiniteError

__all__ = ["EM"]

# what an EM checkpoint stores besides tensors and plain data (see pyrovi.checkpoint)
register_storable(ClosedFormModel, LBFGSMStep, DiscretePosterior, GaussianPosterior)

_M_STEPS = ("auto", "generic", "closed_form")


@dataclasses.dataclass
class _Restart:
    """What one restart produced (mutable while it runs).

    ``trace`` holds ``log p(x | theta_k)`` of every completed iteration ``k`` (E-step and
    M-step), so ``len(trace) == num_steps``; ``log_evidence`` is that of the parameters it
    ends with.
    """

    init: int
    seed: int
    trace: list
    log_evidence: float = -math.inf
    converged: bool = False
    n_iter: int = 0
    params: dict | None = None
    state: dict | None = None
    posterior: object = None


@dataclasses.dataclass
class _EMRun:
    """One ``EM.run`` call: the shared run state and what every restart needs."""

    state: RunState
    meta: EMModelInfo
    closed: bool
    args: tuple
    kwargs: dict
    restarts: list = dataclasses.field(default_factory=list)  # finished ones
    display: Progress | None = None


class EM:
    """Expectation-maximisation with the exact posterior of the latents.

    Parameters
    ----------
    model : callable
        A Pyro model: parameters are ``pyro.param`` sites, latents unobserved
        ``pyro.sample`` sites (all finite discrete, or all linear-Gaussian), data observed
        sites; or a ready model (:func:`~pyrovi.em.gaussian_mixture_model`,
        :func:`~pyrovi.em.factor_analysis_model`, :func:`~pyrovi.em.ppca_model`).
    num_steps : int
        Maximum EM iterations per restart (default 100); ``num_steps`` as in
        :class:`pyrovi.VI` (the old name ``num_iters=`` still works, with a
        ``DeprecationWarning``).
    tol : float or None
        Convergence threshold (>= 0) on the change of the log evidence *per observation*
        between iterations, as scikit-learn's ``tol``; ``0`` (or ``None``) runs exactly
        ``num_steps`` iterations and does not warn.
    num_inits : int
        Number of restarts (old name ``n_init=``); restart ``i`` is seeded with
        ``seed + i`` (the parameters' initial values are drawn inside that seed); the one
        with the highest final log evidence is kept.
    m_step : {"auto", "generic", "closed_form"}
        ``"auto"``: closed form for a ready model, generic otherwise; ``"generic"``: L-BFGS on
        the exact ``Q`` for any model; ``"closed_form"``: refuse a model without one.
    seed : int, optional
        Seed of the fit; drawn from torch's global generator when ``None``.
    progress : bool
        Show progress on the terminal (default True): per restart, a bar with the
        iterations so far, the log evidence and its change per observation (the quantity
        ``tol`` is compared with); the fit ends on a line that stays ("EM: converged after
        23 iterations, log p(x | theta) -415.22, 0.4 s").  ``False`` prints nothing.
    device : str or torch.device, optional
        Device of the fit; default: that of the first tensor argument.
    lbfgs : LBFGSMStep, optional
        Settings of the generic M-step (default ``LBFGSMStep()``).
    checkpoint : str or os.PathLike, optional
        Write a checkpoint to this path (atomically) every ``checkpoint_every`` iterations
        and on Ctrl-C; :func:`pyrovi.resume` continues from it.  The model must be
        picklable (a ready model, or a top-level function).
    checkpoint_every : int
        Iterations between checkpoints (default 10).
    overwrite : bool
        Let ``checkpoint=`` replace an existing file that is not a checkpoint of this model
        (default False: such a file is refused before any work).

    Examples
    --------
    >>> from pyrovi.em import EM, gaussian_mixture_model
    >>> result = EM(gaussian_mixture_model(3), num_steps=200).run(data)  # doctest: +SKIP
    """

    def __init__(
        self,
        model: Callable,
        *,
        num_steps: int = 100,
        tol: float = 1e-3,
        num_inits: int = 1,
        m_step: str = "auto",
        seed: int | None = None,
        progress: bool = True,
        device: str | torch.device | None = None,
        lbfgs: LBFGSMStep | None = None,
        checkpoint: str | os.PathLike | None = None,
        checkpoint_every: int = 10,
        overwrite: bool = False,
        num_iters: int | None = None,
        n_init: int | None = None,
    ):
        num_steps = renamed_keyword("EM", "num_iters", num_iters, "num_steps", num_steps, 100)
        num_inits = renamed_keyword("EM", "n_init", n_init, "num_inits", num_inits, 1)
        self.config = {k: v for k, v in locals().items()
                       if k not in ("self", "__class__", "num_iters", "n_init")}
        if not callable(model):
            raise TypeError(f"model must be a callable Pyro model, got {type(model).__name__}")
        check_positive("num_steps", num_steps, integer=True)
        if tol is None:  # as in VI: a fixed number of iterations
            tol = 0.0
        if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not (
            0 <= tol < math.inf
        ):
            raise ValueError(
                f"tol must be a finite non-negative number (change of the log evidence per "
                f"observation), got {tol!r}"
            )
        check_positive("num_inits", num_inits, integer=True)
        if m_step not in _M_STEPS:
            raise ValueError(f"m_step must be one of {_M_STEPS}, got {m_step!r}")
        if m_step == "closed_form" and not isinstance(model, ClosedFormModel):
            raise ValueError(
                f"m_step='closed_form' but model {model_name(model)!r} has no closed-form "
                "M-step (only pyrovi's ready models do: gaussian_mixture_model, "
                "factor_analysis_model, ppca_model); use m_step='auto' or 'generic'"
            )
        check_seed(seed, num_inits)
        check_bool("progress", progress)
        check_device(device)
        if lbfgs is not None and not isinstance(lbfgs, LBFGSMStep):
            raise TypeError(f"lbfgs must be an LBFGSMStep or None, got {type(lbfgs).__name__}")
        self.model = model
        self.num_steps = num_steps
        self.tol = float(tol)
        self.num_inits = num_inits
        self.m_step = m_step
        self.seed = seed
        self.progress = progress
        self.device = device
        self.lbfgs = lbfgs or LBFGSMStep()
        self.checkpoint_every = check_positive("checkpoint_every", checkpoint_every, integer=True)
        self.checkpoint = check_checkpoint_path(
            checkpoint, model, overwrite=overwrite, config=self.config
        )
        self._resume: tuple[Checkpoint, str] | None = None

    # ------------------------------------------------------------------------- run
    def run(self, *args, **kwargs) -> EMResult:
        """Fit the model to ``model(*args, **kwargs)``'s observed data.

        Returns
        -------
        EMResult
            The kept restart: parameters, log-evidence trace, exact posterior.

        Raises
        ------
        ModelError
            Before any work, when a latent site has no exact E-step (naming it).
        NonFiniteError
            When the log evidence turns non-finite or a covariance becomes singular; its
            ``result`` holds the last good parameters and the trace so far.
        FitError
            When the model raises during an iteration; ``err.result`` holds the parameters
            and trace so far (and the checkpoint, if configured, too).

        Notes
        -----
        Ctrl-C ends the restart in progress with an
        :class:`~pyrovi.errors.InterruptedFitWarning` and returns the best restart so far;
        its trace holds the completed iterations (``num_steps == len(log_evidence_trace)``)
        and ``log_evidence`` is that of the parameters it stopped at.  Each call is an
        independent run: the object holds configuration only.
        """
        start = time.perf_counter()
        device = resolve_device(self.device, args, kwargs)
        args, kwargs = move_to_device(args, device), move_to_device(dict(kwargs), device)
        seed = resolve_seed(self.seed)
        closed = isinstance(self.model, ClosedFormModel) and self.m_step != "generic"
        make, meta = self._prepare(closed, args, kwargs, seed, device)
        run = _EMRun(
            state=RunState(seed=seed, device=device, checkpoint=self.checkpoint, start=start),
            meta=meta, closed=closed, args=args, kwargs=kwargs,
            display=Progress("EM", enabled=self.progress),
        )
        try:
            result = self._run_restarts(run, seed, device, closed, make)
        finally:
            run.display.close()
        run.display.finish(self._final_line(result, run), result.wall_time)
        return result

    def _final_line(self, result: EMResult, run: _EMRun) -> str:
        """What the fit leaves on screen, with the result's own numbers."""
        n = format_count(result.num_steps)
        if run.state.interrupted:
            how = f"interrupted after {n} iterations"
        elif result.converged:
            how = f"converged after {n} iterations"
        elif self.tol == 0:
            how = f"ran {n} iterations, fixed length (tol=0)"
        else:
            how = f"stopped at num_steps = {n} before converging"
        if self.num_inits > 1:
            how += f" (best of {self.num_inits} restarts: #{result.best_init + 1})"
        trace = result.log_evidence_trace
        change = (
            f" (last change {(trace[-1] - trace[-2]) / run.meta.num_obs:.2g} per observation)"
            if len(trace) > 1 else ""
        )
        return f"{how}, log p(x | theta) {result.log_evidence:.6g}{change}"

    def _run_restarts(self, run: _EMRun, seed: int, device, closed: bool, make) -> EMResult:
        """Every restart (from a checkpoint's, when resuming); the best one's result."""
        meta = run.meta
        first, ckpt = 0, None
        if self._resume is not None:
            ckpt, path = self._resume
            if ckpt.family == STREAM_FAMILY:
                raise CheckpointError(
                    f"{path!r} is a checkpoint of a streamed fit (EM.stream); continue it with "
                    "pyrovi.resume(path).stream(chunks)"
                )
            check_compatible(ckpt, path, kind="em", family="em", prints=meta.fingerprint)
            run.restarts = [_Restart(**r) for r in ckpt.schedule["runs"]]
            first = ckpt.schedule["init"]
        for i in range(first, self.num_inits):
            restart = _Restart(init=i, seed=seed + i, trace=[])
            with fit_context(restart.seed, device):
                engine = make(i)
                if ckpt is not None and i == first:
                    self._restore(engine, restart, ckpt, closed)
                self._iterate(engine, restart, run)
            run.restarts.append(restart)
            if run.state.interrupted:
                warn_interrupted(
                    run.state,
                    f"EM was interrupted in restart {i + 1}/{self.num_inits} after "
                    f"{restart.n_iter} iterations; returning the best result so far",
                )
                break
        best = max(run.restarts, key=lambda r: r.log_evidence)
        if not best.converged and self.tol > 0 and not run.state.interrupted:
            warn_not_converged(best.trace, self.num_steps, meta.num_obs, self.tol,
                               "Increase num_steps, loosen tol, or try other initial values "
                               "(num_inits).")
        return self._result(best, run, run.restarts)

    def stream(self, chunks: Any, *, online: OnlineEM | None = None) -> EMResult:
        """Fit a ready model to data read a chunk of rows at a time (data larger than memory).

        Parameters
        ----------
        chunks : iterable, callable, array or path
            The rows, as 2-D blocks: :func:`pyrovi.em.chunked` of a numpy array, memmap,
            tensor or ``.npy`` path; a list of tensors or arrays; a
            ``torch.utils.data.DataLoader`` (batches ``x`` or ``[x]``; the same rows at
            every pass, in any order); a function returning a fresh iterator at each call; or a
            one-shot iterator (a generator object: online EM with one pass only).
        online : OnlineEM, optional
            ``None`` (default): exact batch EM, one pass over the data per iteration, the
            same parameters and log-evidence trace as :meth:`run` on the whole data and a
            non-decreasing log evidence.  An :class:`~pyrovi.em.OnlineEM`: Cappé-Moulines
            online EM, an M-step after every chunk, ``online.num_passes`` passes.

        Returns
        -------
        EMResult
            Parameters, log-evidence trace and ``log_evidence`` as from :meth:`run`;
            ``posterior`` is ``None`` (the per-row posterior is as large as the data) and
            ``args`` is empty.  Under online EM the trace holds, per pass, the sum of each
            chunk's log-likelihood at the parameters it met.

        Notes
        -----
        Only the ready models stream (:func:`~pyrovi.em.gaussian_mixture_model`,
        :func:`~pyrovi.em.factor_analysis_model`, :func:`~pyrovi.em.ppca_model`), with
        ``num_inits=1``; a mixture's initial parameters come from its first chunk
        (k-means++ on its first 65,536 rows) unless given with ``init=``.  Under an initialised
        ``torch.distributed`` process group each rank passes its own shard and every rank
        returns the same result (:mod:`pyrovi.distributed`); rank 0 writes the checkpoints,
        and ``pyrovi.resume(path).stream(chunks)`` continues one.
        """
        return stream_em(self, chunks, online)

    def _prepare(self, closed: bool, args: tuple, kwargs: dict, seed: int, device):
        """Check the model and arguments before any work; return an engine factory."""
        model = self.model
        if closed:
            if len(args) != 1 or kwargs:
                raise TypeError(
                    f"{model_name(model)}.run() takes the data tensor as its only argument, "
                    f"got {len(args)} positional and {sorted(kwargs)} keyword argument(s)"
                )
            x = args[0]
            if isinstance(x, torch.Tensor) and x.dim() >= 1 and x.shape[0] == 0:
                raise ModelError(
                    f"observed site 'obs' holds no values (data of shape {tuple(x.shape)}); "
                    "pass non-empty data", site="obs"
                )
            data = model.prepare(x)
            if isinstance(x, torch.Tensor) and x.is_floating_point() and not bool(
                torch.isfinite(x).all()
            ):
                raise ModelError(
                    "observed site 'obs' holds non-finite value(s); expected finite data. "
                    "Remove or impute the missing values.", site="obs"
                )
            meta = EMModelInfo.of_closed_form(model, data, x)
            meta = dataclasses.replace(
                meta, fingerprint={**meta.fingerprint, DATA_KEY: data_hash(args, kwargs)}
            )
            return (lambda i: ClosedFormEngine(model, data)), meta
        with fit_context(seed, device):
            info = traced_model(model, args, kwargs)
            check_trace_values(info.trace)
        check_observed_finite(info)
        kind = latent_kind(info, model)
        if not any(info.trace.nodes[n]["type"] == "param" for n in info.trace.nodes):
            raise ModelError(
                f"model {model_name(model)!r} has no pyro.param site; EM fits parameters "
                "declared with pyro.param(name, init, constraint=...)"
            )
        meta = EMModelInfo.of_model(info, kind, fingerprint(info.trace))
        settings = self.lbfgs

        def make(i: int):
            # a fresh prototype trace creates this restart's initial params in its scope
            proto = inspect_model(model, args, kwargs)
            if kind == "discrete":
                return EnumEngine(model, proto, args, kwargs, meta.num_obs, settings)
            return GaussianEngine(model, proto, args, kwargs, meta.num_obs, settings,
                                  check=(i == 0))

        return make, meta

    def _iterate(self, engine, restart: _Restart, run: _EMRun) -> None:
        """The EM loop of one restart (sklearn's ``BaseMixture.fit`` habits), under the run
        policy: Ctrl-C ends it with a checkpoint, a failure keeps the last good result.

        An iteration counts, and enters the trace, once its M-step is done; the log
        evidence of the parameters the restart ends with is computed after the loop.
        """
        rule = (
            "fixed length (tol=0)" if self.tol == 0
            else f"until |change| < tol = {self.tol:g} per observation"
        )
        run.display.stage(
            f"restart {restart.init + 1}/{self.num_inits}, {rule}",
            total=self.num_steps if self.tol == 0 else None,
            unit="iter",
            initial=restart.n_iter,
        )
        n_obs = run.meta.num_obs
        prev = restart.trace[-1] if restart.trace else -math.inf
        save = None if self.checkpoint is None else (
            lambda: self._checkpoint(engine, restart, run))
        failure = keep_result(
            run.state,
            unit="iteration",
            done=lambda: restart.n_iter,
            partial=lambda: self._partial(engine, restart, run),
            save=save,
            trace="log-evidence trace",
        )
        with failure:
            try:
                with stop_on_interrupt(
                    run.state, at=lambda: f"iteration {restart.n_iter}", save=save
                ):
                    run.state.mark_rng()
                    for it in range(restart.n_iter, self.num_steps):
                        estep = self._checked(engine.expectation, it)
                        ll = estep.log_evidence
                        restart.log_evidence = ll  # of the current parameters, for now
                        change = (ll - prev) / n_obs
                        prev = ll
                        last = (self.tol > 0 and abs(change) < self.tol) or (
                            it == self.num_steps - 1)
                        self._checked(
                            functools.partial(engine.maximization, estep, last=last), it)
                        restart.trace.append(ll)
                        restart.n_iter = it + 1
                        run.state.mark_rng()
                        run.display.em(ll, change)
                        if save is not None and restart.n_iter % self.checkpoint_every == 0:
                            write_checkpoint(run.state, save, at=f"iteration {restart.n_iter}")
                        if self.tol > 0 and abs(change) < self.tol:
                            restart.converged = True
                            break
            finally:
                run.display.close()
            estep = self._checked(engine.expectation, restart.n_iter)
            restart.log_evidence = estep.log_evidence
            restart.posterior = engine.posterior(estep)
        self._keep(engine, restart, run)

    def _keep(self, engine, restart: _Restart, run: _EMRun) -> None:
        """Copy the restart's parameters (and store state) out of its scope."""
        if run.closed:
            engine.store()
        restart.state, restart.params = snapshot_store(), store_params()

    def _partial(self, engine, restart: _Restart, run: _EMRun) -> EMResult:
        """The result of a restart that failed: its last parameters and trace so far."""
        self._keep(engine, restart, run)
        return self._result(restart, run, run.restarts + [restart])

    def _checkpoint(self, engine, restart: _Restart, run: _EMRun) -> Checkpoint:
        """The checkpoint of the restart in progress (and of the finished ones)."""
        if run.closed:
            engine.store()
        return Checkpoint(
            kind="em",
            config=dict(self.config, seed=restart.seed - restart.init),
            family="em",
            fingerprint=run.meta.fingerprint,
            step=restart.n_iter,
            trace=list(restart.trace),
            param_state=snapshot_store(),
            optim_state=None,
            optim_param_names=[],
            schedule={
                "init": restart.init,
                "engine_params": dict(engine.params) if run.closed else None,
                "runs": [dict(vars(r)) for r in run.restarts],
            },
            rng_state=torch.get_rng_state(),
        )

    @staticmethod
    def _restore(engine, restart: _Restart, ckpt: Checkpoint, closed: bool) -> None:
        """Continue a restart from a checkpoint: its parameters, trace and iteration."""
        if closed:
            engine.params = dict(ckpt.schedule["engine_params"])
        else:
            load_params(ckpt.param_state["params"], owner="model")
        restart.trace = list(ckpt.trace)
        restart.n_iter = ckpt.step
        load_rng(ckpt, torch.device("cpu"))

    @staticmethod
    def _checked(step: Callable, it: int):
        try:
            out = step()
        except NonFiniteError as err:
            raise NonFiniteError(str(err), step=it, site=err.site) from err
        value = out.log_evidence if isinstance(out, EStep) else out
        if value is not None and not math.isfinite(value):
            raise NonFiniteError(
                f"the log evidence became {value} at iteration {it}; the parameters of the "
                "previous iteration are kept in err.result. Check the model's parameter "
                "constraints and scale the data.", step=it, site=None,
            )
        return out

    def _result(self, restart: _Restart, run: _EMRun, restarts: list) -> EMResult:
        params = restart.params if restart.params is not None else {}
        final = restart.log_evidence if math.isfinite(restart.log_evidence) else (
            restart.trace[-1] if restart.trace else -math.inf)
        meta = run.meta
        return EMResult(
            model=self.model,
            args=tuple(run.args),
            kwargs=dict(run.kwargs),
            param_state=restart.state or {"params": {}, "constraints": {}},
            device=run.state.device,
            seed=restart.seed,
            params=params,
            log_evidence_trace=np.asarray(restart.trace, dtype=np.float64),
            log_evidence=float(final),
            converged=restart.converged,
            num_steps=restart.n_iter,
            best_init=restart.init,
            wall_time=run.state.wall_time(),
            family="em",
            max_plate_nesting=meta.max_plate_nesting,
            latent_sites=tuple(meta.latent_sites),
            posterior=restart.posterior,
            num_obs=meta.num_obs,
            m_step=meta.m_step,
            log_evidence_inits=tuple(r.log_evidence for r in restarts),
        )
