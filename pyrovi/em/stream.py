r"""Streaming EM: the ready models fitted to data read a chunk of rows at a time.

:meth:`pyrovi.EM.stream` calls :func:`stream_em`.  Two schedules:

* **batch** (default): exact EM.  Each iteration reads the whole source once and sums
  the E-step's sufficient statistics over the chunks
  (:meth:`~pyrovi.em.closed_form.ClosedFormModel.stream_statistics`), then runs the same
  M-step as the in-memory fit (:meth:`~pyrovi.em.closed_form.ClosedFormModel.stream_step`):
  the parameters and the log-evidence trace are those of ``EM.run`` on the whole data (to
  round-off), and the log evidence never decreases.  Factor analysis and PPCA need only the
  data's mean and covariance: one pass, then every iteration costs :math:`O(D^2 L)`.
* **online** (:class:`OnlineEM`): the stochastic approximation of Cappé and Moulines
  (JRSS-B 2009).  After chunk :math:`t` of :math:`n_t` rows the running average of the
  per-row statistics becomes
  :math:`\bar s_t = (1 - \gamma_t)\bar s_{t-1} + \gamma_t\, s(x_t; \theta_{t-1}) / n_t`
  with :math:`\gamma_1 = 1` and :math:`\gamma_t = (t + t_0)^{-\alpha}`,
  :math:`\alpha \in (0.5, 1]`, and the M-step runs on :math:`\bar s_t` after every chunk:
  one or a few passes instead of one pass per iteration.

Under an initialised ``torch.distributed`` process group each rank passes its own shard;
the statistics are summed over the ranks (:mod:`pyrovi.distributed`) and every rank runs
the same M-step and returns the same result.  Only rank 0 writes checkpoints.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from tqdm.auto import tqdm

from pyrovi import distributed
from pyrovi._run import RunState, keep_result, load_rng, stop_on_interrupt, write_checkpoint
from pyrovi._runtime import (
    fit_context,
    resolve_seed,
    snapshot_store,
    store_params,
)
from pyrovi.checkpoint import Checkpoint, check_compatible
from pyrovi.em.closed_form import ClosedFormModel
from pyrovi.em.engines import store_closed_form
from pyrovi.em.result import EMResult, warn_not_converged
from pyrovi.em.source import Source, as_source
from pyrovi.errors import CheckpointError, ModelError, NonFiniteError, RankError

if TYPE_CHECKING:
    from pyrovi.em.driver import EM

__all__ = ["OnlineEM", "stream_em", "FAMILY"]

#: The ``family`` of a streamed fit's checkpoint.
FAMILY = "em-stream"


@dataclasses.dataclass(frozen=True)
class OnlineEM:
    r"""Online EM (Cappé and Moulines 2009): step sizes :math:`\gamma_t = (t + t_0)^{-\alpha}`.

    Attributes
    ----------
    alpha : float
        Decay exponent, in :math:`(0.5, 1]` (the Robbins-Monro conditions); ``1`` averages
        all chunks equally, smaller values forget the early ones faster.
    t0 : float
        Offset (>= 0) that slows the first decay.
    num_passes : int
        Passes over the data (a one-shot iterator allows 1 only).
    """

    alpha: float = 0.6
    t0: float = 2.0
    num_passes: int = 1

    def __post_init__(self):
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)) or not (
            0.5 < self.alpha <= 1
        ):
            raise ValueError(
                f"alpha must be in (0.5, 1] (Robbins-Monro step sizes), got {self.alpha!r}"
            )
        if isinstance(self.t0, bool) or not isinstance(self.t0, (int, float)) or not (
            0 <= self.t0 < math.inf
        ):
            raise ValueError(f"t0 must be a finite number >= 0, got {self.t0!r}")
        if isinstance(self.num_passes, bool) or not isinstance(self.num_passes, int) or (
            self.num_passes < 1
        ):
            raise ValueError(f"num_passes must be a positive int, got {self.num_passes!r}")

    def step_size(self, t: int) -> float:
        """:math:`\\gamma_t` of chunk ``t`` (1-based); :math:`\\gamma_1 = 1`."""
        return 1.0 if t <= 1 else float((t + self.t0) ** -self.alpha)


@dataclasses.dataclass
class _Stream:
    """One streamed fit's run state."""

    state: RunState
    source: Source
    group: distributed.Collective
    dtype: torch.dtype
    device: torch.device
    shift: torch.Tensor
    num_features: int
    params: dict
    trace: list = dataclasses.field(default_factory=list)
    n_iter: int = 0
    num_obs: int = 0
    log_evidence: float = -math.inf
    converged: bool = False
    fixed: dict | None = None  # statistics that do not depend on the parameters
    pending: Any = None  # the first pass's iterator (a one-shot source's only one)


def _check_chunk(x: Any, index: int, run: _Stream | None, dtype, device) -> torch.Tensor:
    """A chunk as a 2-D tensor of the working dtype, refusing bad ones by index."""
    if x.dim() != 2:
        raise ValueError(
            f"chunk {index} has shape {tuple(x.shape)}; expected 2-D chunks (rows, n_features)"
        )
    if run is not None and x.shape[1] != run.num_features:
        raise ValueError(
            f"chunk {index} has {x.shape[1]} columns; the first chunk had {run.num_features}. "
            "Every chunk must hold the same features"
        )
    x = x.to(device=device, dtype=dtype)
    if not bool(torch.isfinite(x).all()):
        raise ModelError(
            f"chunk {index} holds non-finite value(s); expected finite data. Remove or impute "
            "the missing values.", site="obs",
        )
    return x


def _chunks(run: _Stream, desc: str, progress: bool):
    """The chunks of one pass (the pending first pass, else a fresh iterator)."""
    it, run.pending = (run.pending, None) if run.pending is not None else (run.source.open(),
                                                                           None)
    bar = tqdm(it, total=run.source.num_chunks, desc=desc, leave=False, unit="chunk",
               disable=not progress or run.group.rank != 0)
    for i, x in enumerate(bar):
        yield i, _check_chunk(x, i, run, run.dtype, run.device)


def _one_pass(model: ClosedFormModel, run: _Stream, params, desc: str, progress: bool) -> dict:
    """The statistics summed over this rank's chunks, then over the ranks; a failure on any
    rank stops every rank (:meth:`~pyrovi.distributed.Collective.agree`)."""
    total, error = None, None
    try:
        for _, x in _chunks(run, desc, progress):
            stats = model.stream_statistics(x, params, run.shift)
            total = stats if total is None else {k: total[k] + v for k, v in stats.items()}
        if total is None:
            raise ValueError("chunks yielded no rows; pass a non-empty source")
    except Exception as err:  # handed to every rank, then re-raised here
        error = err
    run.group.agree(error, at=desc)
    total = run.group.sum(total)
    return total


def _start(em: EM, chunks: Any, online: OnlineEM | None, start: float) -> tuple[_Stream, Any]:
    """Check the configuration and the first chunk before any pass; seed the parameters."""
    model = em.model
    if not isinstance(model, ClosedFormModel) or em.m_step == "generic":
        raise ValueError(
            f"EM.stream fits pyrovi's ready models (gaussian_mixture_model, "
            f"factor_analysis_model, ppca_model) with their closed-form steps; got "
            f"{getattr(model, '__name__', type(model).__name__)!r} with m_step={em.m_step!r}. "
            "Fit other models in memory with EM(...).run(...)"
        )
    if em.num_inits != 1:
        raise ValueError(
            f"EM.stream runs one start (each restart would read the data num_steps times); "
            f"got num_inits={em.num_inits}. Use num_inits=1, or pass init= to the model"
        )
    if online is not None and not isinstance(online, OnlineEM):
        raise TypeError(f"online must be an OnlineEM or None, got {type(online).__name__}")
    source = as_source(chunks)
    if not source.reiterable and (online is None or online.num_passes > 1):
        raise ValueError(
            "chunks is a one-shot iterator (a generator object), which can be read once; "
            + ("batch EM reads the data once per iteration" if online is None else
               f"online EM with num_passes={online.num_passes} reads it more than once")
            + ". Pass a re-iterable source: a list, a DataLoader, "
            "pyrovi.em.chunked(array_or_npy_path, rows), or a function that returns a fresh "
            "iterator (e.g. the generator function itself, not its call)"
        )
    group = distributed.collective()
    if online is not None and model.stream_fixed:
        raise ValueError(
            f"{model.__name__} needs only the data's mean and covariance, which one pass "
            "computes exactly: online EM brings nothing; call EM.stream without online="
        )
    if online is not None and group.world_size > 1:
        raise ValueError(
            "online EM runs on one process; a distributed fit uses batch EM (online=None)"
        )
    device = torch.device(em.device) if em.device is not None else torch.device("cpu")
    it = iter(source.open())
    try:
        first = next(it)
    except StopIteration:
        raise ValueError("chunks yielded no chunk; pass a non-empty source") from None
    model.prepare(first.to(device))  # the model's own checks of the data, naming them
    dtype = getattr(model, "dtype", None) or (
        first.dtype if first.is_floating_point() else torch.float64)
    x0 = _check_chunk(first, 0, None, dtype, device)
    shift = group.mean(x0.to(torch.float64).mean(0))
    run = _Stream(
        state=RunState(seed=resolve_seed(em.seed), device=device,
                       checkpoint=em.checkpoint if group.rank == 0 else None, start=start),
        source=source, group=group, dtype=dtype, device=device, shift=shift,
        num_features=x0.shape[1], params={},
    )
    run.pending = _prepend([first], it)
    return run, x0


def _prepend(box: list, rest):
    """``box``'s one chunk, then ``rest``; holds no reference to the chunk once yielded
    (``itertools.chain([first], rest)`` would keep it alive for the whole pass)."""
    yield box.pop()
    yield from rest


def stream_em(em: EM, chunks: Any, online: OnlineEM | None = None) -> EMResult:
    """Fit ``em.model`` to the rows ``chunks`` yields; see :meth:`pyrovi.EM.stream`."""
    start = time.perf_counter()
    run, first = _start(em, chunks, online, start)
    model = em.model
    resume = em._resume
    with fit_context(run.state.seed, run.device):
        if resume is not None:
            _restore(run, *resume)
        if model.stream_fixed:
            run.fixed = _one_pass(model, run, None, "EM statistics", em.progress)
            if run.num_obs and int(run.fixed["n"]) != run.num_obs:
                raise CheckpointError(
                    f"{resume[1]!r} was written for {run.num_obs} rows; these chunks hold "
                    f"{int(run.fixed['n'])}. Resume on the same data"
                )
            run.num_obs = int(run.fixed["n"])
        if resume is None:
            params = model.stream_init(first, run.fixed, run.shift, run.dtype)
            run.params = run.group.broadcast({k: v.to(run.dtype) for k, v in params.items()})
        del first
        if online is None:
            _batch(em, model, run)
        else:
            _online(em, model, run, online)
        store_closed_form(model, run.params)
        return _result(em, run, snapshot_store(), store_params())


def _batch(em: EM, model: ClosedFormModel, run: _Stream) -> None:
    """Exact EM: one pass (or none, for fixed statistics) per iteration."""
    save = None if run.state.checkpoint is None else (lambda: _checkpoint(em, run))
    failure = keep_result(run.state, unit="iteration", done=lambda: run.n_iter,
                          partial=lambda: _partial(em, model, run), save=save,
                          trace="log-evidence trace")
    prev = run.trace[-1] if run.trace else -math.inf
    with failure:
        try:
            with stop_on_interrupt(run.state, at=lambda: f"iteration {run.n_iter}", save=save):
                for it in range(run.n_iter, em.num_steps):
                    ll, new = _iteration(model, run, it, em.progress)
                    run.log_evidence = ll
                    run.params = new
                    run.trace.append(ll)
                    run.n_iter = it + 1
                    if save is not None and run.n_iter % em.checkpoint_every == 0:
                        write_checkpoint(run.state, save, at=f"iteration {run.n_iter}")
                    change, prev = (ll - prev) / run.num_obs, ll
                    if em.tol > 0 and abs(change) < em.tol:
                        run.converged = True
                        break
            if not run.state.interrupted:
                run.log_evidence, _ = _iteration(model, run, run.n_iter, em.progress)
        except RankError:
            if save is not None:
                write_checkpoint(run.state, save, at=f"iteration {run.n_iter}")
            raise
    if not run.converged and em.tol > 0 and not run.state.interrupted:
        warn_not_converged(run.trace, em.num_steps, run.num_obs, em.tol,
                           "Increase num_steps or loosen tol.")


def _iteration(model: ClosedFormModel, run: _Stream, it: int, progress: bool):
    """``(log p(x | theta_it), theta_{it+1})``: a pass of the E-step (unless the
    statistics are fixed) and the M-step, with non-finite values refused."""
    stats = run.fixed if run.fixed is not None else _one_pass(
        model, run, run.params, f"EM iteration {it + 1}", progress)
    n = int(stats["n"])
    if run.num_obs and n != run.num_obs:
        raise ValueError(
            f"chunks yielded {n} rows at iteration {it}, {run.num_obs} before; a streamed fit "
            "needs the same rows at every pass (use a DataLoader with drop_last=False)"
        )
    run.num_obs = n
    try:
        ll, new = model.stream_step(stats, run.params, run.shift)
    except NonFiniteError as err:
        raise NonFiniteError(str(err), step=it, site=err.site) from err
    if not math.isfinite(ll):
        raise NonFiniteError(
            f"the log evidence became {ll} at iteration {it}; the parameters of the previous "
            "iteration are kept in err.result. Scale the data or raise reg_covar.",
            step=it, site=None,
        )
    return ll, new


def _online(em: EM, model: ClosedFormModel, run: _Stream, online: OnlineEM) -> None:
    """Online EM: the M-step after every chunk on the running average of the statistics.

    The trace holds, for each pass, the sum over its chunks of each chunk's log-likelihood
    at the parameters it met (a progressive estimate); the final ``log_evidence`` is exact,
    from one more pass at the final parameters, when the source can be read again.
    """
    failure = keep_result(run.state, unit="pass", done=lambda: run.n_iter,
                          partial=lambda: _partial(em, model, run), trace="log-evidence trace")
    t, avg = 0, None
    with failure:
        with stop_on_interrupt(run.state, at=lambda: f"pass {run.n_iter}", save=None):
            for p in range(online.num_passes):
                ll_pass, rows = 0.0, 0
                for _, x in _chunks(run, f"online EM pass {p + 1}", em.progress):
                    stats = model.stream_statistics(x, run.params, run.shift)
                    n = float(stats["n"])
                    t += 1
                    g = online.step_size(t)
                    per_row = {k: v / n for k, v in stats.items()}
                    avg = per_row if avg is None else {
                        k: (1 - g) * avg[k] + g * per_row[k] for k in avg}
                    ll_pass += float(stats["loglik"])
                    rows += int(n)
                    scale = max(rows, run.num_obs)
                    _, run.params = model.stream_step(
                        {k: v * scale for k, v in avg.items()}, run.params, run.shift)
                run.num_obs = max(run.num_obs, rows)
                run.trace.append(ll_pass)
                run.n_iter = p + 1
        if run.source.reiterable and not run.state.interrupted:
            stats = _one_pass(model, run, run.params, "EM log evidence", em.progress)
            run.log_evidence = float(stats["loglik"])
        else:
            run.log_evidence = run.trace[-1]
            run.state.notes.append(
                "log_evidence is the progressive estimate of the one pass (a one-shot source "
                "cannot be read again at the final parameters)")


def _partial(em: EM, model: ClosedFormModel, run: _Stream) -> EMResult:
    store_closed_form(model, run.params)
    return _result(em, run, snapshot_store(), store_params())


def _result(em: EM, run: _Stream, state: dict, params: dict) -> EMResult:
    final = run.log_evidence if math.isfinite(run.log_evidence) else (
        run.trace[-1] if run.trace else -math.inf)
    return EMResult(
        model=em.model, args=(), kwargs={}, param_state=state, device=run.device,
        seed=run.state.seed, params=params,
        log_evidence_trace=np.asarray(run.trace, dtype=np.float64),
        log_evidence=float(final), converged=run.converged, num_steps=run.n_iter,
        best_init=0, wall_time=run.state.wall_time(), family="em",
        max_plate_nesting=em.model.max_plate_nesting,
        latent_sites=(em.model.latent_site,), posterior=None, num_obs=run.num_obs,
        m_step="closed_form", log_evidence_inits=(float(final),),
    )


def _fingerprint(run: _Stream) -> dict:
    # not the number of ranks: the summed statistics do not depend on it, so a fit of
    # several ranks resumes on one process and vice versa
    return {"num_features": run.num_features, "num_obs": run.num_obs}


def _checkpoint(em: EM, run: _Stream) -> Checkpoint:
    return Checkpoint(
        kind="em", config=dict(em.config), family=FAMILY, fingerprint=_fingerprint(run),
        step=run.n_iter, trace=list(run.trace), param_state={"params": {}},
        optim_state=None, optim_param_names=[],
        schedule={"params": {k: v.detach().cpu() for k, v in run.params.items()},
                  "shift": run.shift.cpu(), "converged": run.converged},
        rng_state=torch.get_rng_state(),
    )


def _restore(run: _Stream, ckpt: Checkpoint, path: str) -> None:
    """Continue from a streamed fit's checkpoint (parameters, trace, iteration)."""
    saved = {k: v for k, v in ckpt.fingerprint.items() if k != "num_obs"}
    now = {k: v for k, v in _fingerprint(run).items() if k != "num_obs"}
    check_compatible(ckpt, path, kind="em", family=FAMILY, prints=ckpt.fingerprint)
    if saved != now:
        raise CheckpointError(
            f"{path!r} was written by a streamed fit with {saved}, this one has {now}; resume "
            "it on the same data"
        )
    run.num_obs = int(ckpt.fingerprint["num_obs"])
    run.params = {k: v.to(run.device, run.dtype) for k, v in ckpt.schedule["params"].items()}
    run.shift = ckpt.schedule["shift"].to(run.device)
    run.trace, run.n_iter = list(ckpt.trace), ckpt.step
    load_rng(ckpt, torch.device("cpu"))
