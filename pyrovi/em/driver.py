"""``pyrovi.EM``: exact-posterior EM for Pyro models, with closed-form fast paths.

The driver checks the configuration and the model before any work, then runs ``n_init``
restarts, each in its own seeded, private Pyro parameter store, and keeps the best.  Each
iteration is an exact E-step (``log p(x | theta_t)`` and the posterior) followed by an
M-step; the loop, its convergence rule and the reporting follow
``sklearn.mixture.BaseMixture.fit``.  The math lives in :mod:`pyrovi.em.estep`,
:mod:`pyrovi.em.mstep` and the ready models (:mod:`pyrovi.em.gmm`,
:mod:`pyrovi.em.factor_analysis`); :mod:`pyrovi.em.engines` binds it to one model.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Callable

import numpy as np
import pyro
import torch
from tqdm.auto import tqdm

from pyrovi._model import check_observed_finite, inspect_model, model_name
from pyrovi._runtime import (
    check_positive,
    fit_context,
    move_to_device,
    resolve_device,
    resolve_seed,
    snapshot_store,
    store_params,
    warn,
)
from pyrovi.checkpoint import (
    Checkpoint,
    check_checkpoint_path,
    check_compatible,
    fingerprint,
    save_checkpoint,
)
from pyrovi.em.closed_form import ClosedFormModel
from pyrovi.em.engines import ClosedFormEngine, EnumEngine, GaussianEngine
from pyrovi.em.estep import latent_kind
from pyrovi.em.mstep import LBFGSMStep
from pyrovi.em.result import EMResult
from pyrovi.errors import (
    CheckpointError,
    CheckpointWarning,
    ConvergenceWarning,
    InterruptedFitWarning,
    ModelError,
    NonFiniteError,
)

__all__ = ["EM"]

_M_STEPS = ("auto", "generic", "closed_form")


@dataclasses.dataclass
class _Run:
    """What one restart produced (mutable while it runs)."""

    init: int
    seed: int
    trace: list
    log_evidence: float = -math.inf
    converged: bool = False
    n_iter: int = 0
    params: dict | None = None
    state: dict | None = None
    posterior: object = None


class EM:
    """Expectation-maximisation with the exact posterior of the latents.

    Parameters
    ----------
    model : callable
        A Pyro model: parameters are ``pyro.param`` sites, latents unobserved
        ``pyro.sample`` sites (all finite discrete, or all linear-Gaussian), data observed
        sites; or a ready model (:func:`~pyrovi.em.gaussian_mixture_model`,
        :func:`~pyrovi.em.factor_analysis_model`, :func:`~pyrovi.em.ppca_model`).
    num_iters : int
        Maximum EM iterations per restart.
    tol : float
        Convergence threshold (>= 0) on the change of the log evidence *per observation*
        between iterations, as scikit-learn's ``tol``; ``0`` runs exactly ``num_iters``
        iterations and does not warn.
    n_init : int
        Number of restarts (restart ``i`` is seeded with ``seed + i``; the parameters'
        initial values are drawn inside that seed); the one with the highest final log
        evidence is kept.
    m_step : {"auto", "generic", "closed_form"}
        ``"auto"``: closed form for a ready model, generic otherwise; ``"generic"``: L-BFGS on
        the exact ``Q`` for any model; ``"closed_form"``: refuse a model without one.
    seed : int, optional
        Seed of the fit; drawn from torch's global generator when ``None``.
    progress : bool
        Show a progress bar.
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

    Examples
    --------
    >>> from pyrovi.em import EM, gaussian_mixture_model
    >>> result = EM(gaussian_mixture_model(3), num_iters=200).run(data)  # doctest: +SKIP
    """

    def __init__(
        self,
        model: Callable,
        *,
        num_iters: int = 100,
        tol: float = 1e-3,
        n_init: int = 1,
        m_step: str = "auto",
        seed: int | None = None,
        progress: bool = True,
        device: str | torch.device | None = None,
        lbfgs: LBFGSMStep | None = None,
        checkpoint: str | os.PathLike | None = None,
        checkpoint_every: int = 10,
    ):
        self.config = {k: v for k, v in locals().items() if k not in ("self", "__class__")}
        if not callable(model):
            raise TypeError(f"model must be a callable Pyro model, got {type(model).__name__}")
        check_positive("num_iters", num_iters, integer=True)
        if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not tol >= 0:
            raise ValueError(
                f"tol must be a non-negative number (change of the log evidence per "
                f"observation), got {tol!r}"
            )
        check_positive("n_init", n_init, integer=True)
        if m_step not in _M_STEPS:
            raise ValueError(f"m_step must be one of {_M_STEPS}, got {m_step!r}")
        if m_step == "closed_form" and not isinstance(model, ClosedFormModel):
            raise ValueError(
                f"m_step='closed_form' but model {model_name(model)!r} has no closed-form "
                "M-step (only pyrovi's ready models do: gaussian_mixture_model, "
                "factor_analysis_model, ppca_model); use m_step='auto' or 'generic'"
            )
        if seed is not None:
            resolve_seed(seed)
        self.model = model
        self.num_iters = num_iters
        self.tol = float(tol)
        self.n_init = n_init
        self.m_step = m_step
        self.seed = seed
        self.progress = bool(progress)
        self.device = device
        self.lbfgs = lbfgs or LBFGSMStep()
        self.checkpoint_every = check_positive("checkpoint_every", checkpoint_every, integer=True)
        self.checkpoint = check_checkpoint_path(checkpoint, model)
        self._resume: tuple[Checkpoint, str] | None = None
        self.interrupted = False

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
        """
        start = time.perf_counter()
        device = resolve_device(self.device, args, kwargs)
        args, kwargs = move_to_device(args, device), move_to_device(dict(kwargs), device)
        seed = resolve_seed(self.seed)
        closed = isinstance(self.model, ClosedFormModel) and self.m_step != "generic"
        make, meta = self._prepare(closed, args, kwargs, seed, device)
        runs, first, ckpt = [], 0, None
        if self._resume is not None:
            ckpt, path = self._resume
            check_compatible(ckpt, path, kind="em", family="em", prints=meta["fingerprint"])
            runs = [_Run(**r) for r in ckpt.schedule["runs"]]
            first = ckpt.schedule["init"]
        self._meta = dict(meta, closed=closed)
        for i in range(first, self.n_init):
            run = _Run(init=i, seed=seed + i, trace=[])
            try:
                with fit_context(run.seed, device):
                    engine = make(i)
                    if ckpt is not None and i == first:
                        self._restore(engine, run, ckpt, closed)
                    try:
                        self._iterate(engine, run, meta["n_obs"], runs)
                    finally:  # the last good parameters are kept, also on failure
                        if closed:
                            engine.store()
                        run.state, run.params = snapshot_store(), store_params()
            except NonFiniteError as err:
                partial = self._result(run, meta, args, kwargs, device, start, runs + [run])
                raise NonFiniteError(str(err), step=err.step, site=err.site,
                                     result=partial) from err
            runs.append(run)
            if self.interrupted:
                warn(
                    f"EM was interrupted in restart {i + 1}/{self.n_init} after {run.n_iter} "
                    "iterations; returning the best result so far"
                    + (f" (checkpoint {self.checkpoint!r} written)" if self.checkpoint else ""),
                    InterruptedFitWarning,
                )
                break
        best = max(runs, key=lambda r: r.log_evidence)
        if not best.converged and self.tol > 0 and not self.interrupted:
            change = (best.trace[-1] - best.trace[-2]) / meta["n_obs"] if len(best.trace) > 1 \
                else math.nan
            warn(
                f"EM did not converge: after num_iters={self.num_iters} iterations the log "
                f"evidence per observation still changed by {change:.3g} (tol={self.tol:g}). "
                "Increase num_iters, loosen tol, or try other initial values (n_init).",
                ConvergenceWarning,
            )
        return self._result(best, meta, args, kwargs, device, start, runs)

    def _prepare(self, closed: bool, args: tuple, kwargs: dict, seed: int, device):
        """Check the model and arguments before any work; return an engine factory."""
        model = self.model
        if closed:
            if len(args) != 1 or kwargs:
                raise TypeError(
                    f"{model_name(model)}.run() takes the data tensor as its only argument, "
                    f"got {len(args)} positional and {sorted(kwargs)} keyword argument(s)"
                )
            data = model.prepare(args[0])
            x = args[0]
            if isinstance(x, torch.Tensor) and x.is_floating_point() and not bool(
                torch.isfinite(x).all()
            ):
                raise ModelError(
                    "observed site 'obs' holds non-finite value(s); expected finite data. "
                    "Remove or impute the missing values.", site="obs"
                )
            meta = {"n_obs": model.n_obs(data), "mpn": model.max_plate_nesting,
                    "latent": (model.latent_site,), "kind": "closed_form",
                    "fingerprint": {"data": tuple(getattr(x, "shape", ()))}}
            return (lambda i: ClosedFormEngine(model, data)), meta
        with fit_context(seed, device):
            info = inspect_model(model, args, kwargs)
        check_observed_finite(info)
        kind = latent_kind(info, model)
        if not any(info.trace.nodes[n]["type"] == "param" for n in info.trace.nodes):
            raise ModelError(
                f"model {model_name(model)!r} has no pyro.param site; EM fits parameters "
                "declared with pyro.param(name, init, constraint=...)"
            )
        n_obs = 0
        for name in info.observed:
            site = info.trace.nodes[name]
            n_obs += math.prod(site["value"].shape[: site["value"].dim() - site["fn"].event_dim])
        meta = {"n_obs": max(n_obs, 1), "mpn": info.max_plate_nesting, "latent": info.latent,
                "kind": "generic", "fingerprint": fingerprint(info.trace)}
        settings = self.lbfgs

        def make(i: int):
            # a fresh prototype trace creates this restart's initial params in its scope
            proto = inspect_model(model, args, kwargs)
            if kind == "discrete":
                return EnumEngine(model, proto, args, kwargs, meta["n_obs"], settings)
            return GaussianEngine(model, proto, args, kwargs, meta["n_obs"], settings,
                                  check=(i == 0))

        return make, meta

    def _iterate(self, engine, run: _Run, n_obs: int, done: list) -> None:
        """The EM loop of one restart (sklearn's ``BaseMixture.fit`` habits)."""
        bar = tqdm(total=self.num_iters, initial=run.n_iter, disable=not self.progress,
                   leave=False, desc=f"EM init {run.init + 1}/{self.n_init}")
        prev = run.trace[-1] if run.trace else -math.inf
        try:
            for it in range(run.n_iter, self.num_iters):
                ll = self._checked(engine.e_step, it)
                run.trace.append(ll)
                self._checked(engine.m_step, it)
                run.n_iter = it + 1
                change = (ll - prev) / n_obs
                prev = ll
                bar.update(1)
                bar.set_postfix(log_evidence=f"{ll:.6g}")
                if self.checkpoint is not None and run.n_iter % self.checkpoint_every == 0:
                    self._save(engine, run, done)
                if self.tol > 0 and abs(change) < self.tol:
                    run.converged = True
                    break
        except KeyboardInterrupt:
            self.interrupted = True
            if self.checkpoint is not None:
                self._save(engine, run, done)
        finally:
            bar.close()
        run.log_evidence = self._checked(engine.e_step, run.n_iter)
        run.posterior = engine.posterior()

    def _save(self, engine, run: _Run, done: list) -> None:
        """Checkpoint the restart in progress (and the finished ones); warn on failure."""
        closed = self._meta["closed"]
        if closed:
            engine.store()
        ckpt = Checkpoint(
            kind="em",
            config=dict(self.config, seed=run.seed - run.init),
            family="em",
            fingerprint=self._meta["fingerprint"],
            step=run.n_iter,
            trace=list(run.trace),
            param_state=snapshot_store(),
            optim_state=None,
            optim_param_names=[],
            schedule={
                "init": run.init,
                "engine_params": dict(engine.params) if closed else None,
                "runs": [dict(vars(r)) for r in done],
            },
            rng_state=torch.get_rng_state(),
        )
        try:
            save_checkpoint(self.checkpoint, ckpt)
        except Exception as err:
            warn(
                f"could not write checkpoint {self.checkpoint!r} at iteration {run.n_iter} "
                f"({type(err).__name__}: {err}); EM goes on and the previous checkpoint, if "
                "any, is intact",
                CheckpointWarning,
            )

    @staticmethod
    def _restore(engine, run: _Run, ckpt: Checkpoint, closed: bool) -> None:
        """Continue a restart from a checkpoint: its parameters, trace and iteration."""
        if closed:
            engine.params = dict(ckpt.schedule["engine_params"])
        else:
            store = pyro.get_param_store()
            with torch.no_grad():
                for name, value in ckpt.param_state["params"].items():
                    if name not in store:
                        raise CheckpointError(
                            f"the checkpoint holds parameter {name!r}, which this model does "
                            "not create; resume with the model it was written for"
                        )
                    store[name].unconstrained().copy_(value)
        run.trace = list(ckpt.trace)
        run.n_iter = ckpt.step
        torch.set_rng_state(ckpt.rng_state)

    @staticmethod
    def _checked(step: Callable, it: int):
        try:
            out = step()
        except NonFiniteError as err:
            raise NonFiniteError(str(err), step=it, site=err.site) from err
        if out is not None and not math.isfinite(out):
            raise NonFiniteError(
                f"the log evidence became {out} at iteration {it}; the parameters of the "
                "previous iteration are kept in err.result. Check the model's parameter "
                "constraints and scale the data.", step=it, site=None,
            )
        return out

    def _result(self, run: _Run, meta: dict, args, kwargs, device, start, runs) -> EMResult:
        params = run.params if run.params is not None else {}
        final = run.log_evidence if math.isfinite(run.log_evidence) else (
            run.trace[-1] if run.trace else -math.inf)
        return EMResult(
            model=self.model,
            args=tuple(args),
            kwargs=dict(kwargs),
            param_state=run.state or {"params": {}, "constraints": {}},
            device=device,
            seed=run.seed,
            params=params,
            log_evidence_trace=np.asarray(run.trace, dtype=np.float64),
            log_evidence=float(final),
            converged=run.converged,
            n_iter=run.n_iter,
            best_init=run.init,
            wall_time=time.perf_counter() - start,
            family="em",
            max_plate_nesting=int(meta["mpn"]),
            latent_sites=tuple(meta["latent"]),
            posterior=run.posterior,
            n_obs=int(meta["n_obs"]),
            m_step="closed_form" if meta["kind"] == "closed_form" else "generic",
            log_evidence_inits=tuple(r.log_evidence for r in runs),
        )
