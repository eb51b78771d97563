"""Minibatch VI: each stochastic-gradient step on the next batch of a re-iterable source.

``VI(model, guide, method="sgd").run(*args, batches=loader)`` calls the model on
``(*args, *batch)`` at every step, the batch taken in turn from ``loader`` (a
``torch.utils.data.DataLoader`` or any re-iterable; a new pass starts when one ends).  The
model writes its data plate with the full size and the batch's rows,
``pyro.plate("data", N, subsample=idx)``, so Pyro scales the batch's log-likelihood by
``N / B`` and each step's ELBO is an unbiased estimate of the full-data ELBO (Hoffman et
al. 2013, stochastic variational inference).

Convergence: the plateau rule (:mod:`pyrovi._steps`) judges window means of the per-step
ELBOs, whose spread is here mostly batch-to-batch (each batch's likelihood is scaled by
``N / B``), so the steps' spread would make the rule blind to all but large gains.  A pass
sees every row once, so a pass mean is free of that spread: training starts on a pass
boundary, and when a window holds a whole number (>= 2) of passes the rule's standard error
is that of the window's pass means (:func:`~pyrovi._steps.window_mean` with ``group``).
Otherwise it stays the steps' (larger: the rule is slower to count progress and stops on
its cadence of stalls), and a note says so.

The final ELBO is one pass over the source: the batch estimates weighted by the batch's
share ``B / N`` of the rows, which is the full-data ELBO exactly when the pass covers every
row once (their Monte Carlo errors are independent and add in quadrature).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping

import torch
from pyro.poutine.subsample_messenger import _Subsample  # the plate's own site type

from pyrovi import distributed
from pyrovi._runtime import move_to_device
from pyrovi.vi.objective import ELBOEstimate, estimate_elbo

__all__ = ["Batches", "check_minibatch_options", "subsample_fraction", "pass_elbo"]


def check_minibatch_options(vi) -> None:
    """Refuse the options that minibatch VI cannot honour, before any work."""
    problems = []
    if vi.method != "sgd":
        problems.append(
            f"method={vi.method!r} (DADVI fits one fixed objective on all the data; "
            "pass method='sgd')"
        )
    if vi.backend == "compiled":
        problems.append(
            "backend='compiled' (the compiled path traces one fixed data set; pass "
            "backend='auto' or 'svi')"
        )
    if vi.checkpoint is not None or vi._resume is not None:
        problems.append(
            "checkpoints (checkpoint= or pyrovi.resume: the position in a DataLoader is not "
            "saved)"
        )
    if distributed.is_distributed():
        problems.append("a torch.distributed process group (data-parallel VI shards the data)")
    if vi.guide_spec.name == "laplace":
        problems.append("guide='laplace' (its Hessian would be that of one batch)")
    if problems:
        raise ValueError(
            "batches= runs minibatch stochastic-gradient VI on Pyro's SVI, which cannot "
            "take " + "; ".join(problems) + "."
        )


def _as_call(batch) -> tuple[tuple, dict]:
    """The positional and keyword arguments that one batch adds to the model's."""
    if isinstance(batch, Mapping):
        return (), dict(batch)
    if isinstance(batch, (tuple, list)):
        return tuple(batch), {}
    return (batch,), {}


class Batches:
    """The batches of a re-iterable source, in turn, pass after pass.

    Parameters
    ----------
    source : iterable
        A ``DataLoader`` or any object whose ``iter()`` starts a new pass over the same
        rows.  A batch is a tuple or list (extra positional arguments of the model), a
        mapping (extra keyword arguments) or a single tensor (one positional argument).
    device : torch.device
        Where the batches are moved.
    args, kwargs : tuple, dict
        The model's fixed arguments; a batch's come after them.
    """

    def __init__(self, source: Iterable, device: torch.device, args: tuple = (),
                 kwargs: Mapping | None = None):
        try:
            first_iter = iter(source)
        except TypeError:
            raise TypeError(
                f"batches must be a re-iterable source of batches (a torch DataLoader), got "
                f"{type(source).__name__}"
            ) from None
        if first_iter is source:
            raise TypeError(
                f"batches must be re-iterable (iter() starting a new pass each time), got an "
                f"iterator ({type(source).__name__}) that one pass would exhaust; pass the "
                "DataLoader or a list of batches"
            )
        self.source, self.device = source, device
        self.args, self.kwargs = tuple(args), dict(kwargs or {})
        self._it: Iterator = first_iter
        self.passes = 0
        #: batches in one pass, where the source knows (``len``), else None
        self.steps_per_pass: int | None = None
        try:
            self.steps_per_pass = len(source) or None
        except TypeError:
            pass

    def restart(self) -> None:
        """Start the next batch at the beginning of a new pass."""
        self._it = iter(self.source)

    def _moved(self, batch) -> tuple[tuple, dict]:
        args, kwargs = _as_call(batch)
        args, kwargs = move_to_device(args, self.device), move_to_device(kwargs, self.device)
        return (*self.args, *args), {**self.kwargs, **kwargs}

    def next(self) -> tuple[tuple, dict]:
        """The model's arguments with the next batch; a new pass starts where one ends."""
        try:
            return self._moved(next(self._it))
        except StopIteration:
            self._it = iter(self.source)
            self.passes += 1
            try:
                return self._moved(next(self._it))
            except StopIteration:
                raise ValueError("batches yielded no batch: the source is empty") from None

    def one_pass(self) -> Iterator[tuple[tuple, dict]]:
        """The model's arguments with each batch of one fresh pass."""
        for batch in self.source:
            yield self._moved(batch)


def subsample_fraction(trace) -> float | None:
    """The share ``B / N`` of the rows that a model trace's subsampled plate holds; None if
    no plate is subsampled.  Raises ValueError when more than one plate is."""
    plates = []  # (name, rows in the batch, rows in all): the site's value is the subsample
    for name, site in trace.nodes.items():
        if isinstance(site.get("fn"), _Subsample):
            rows, size = int(site["value"].shape[0]), int(site["fn"].size)
            if rows < size:
                plates.append((name, rows, size))
    if not plates:
        return None
    if len(plates) > 1:
        names = ", ".join(repr(name) for name, _, _ in plates)
        raise ValueError(
            f"batches=: the model subsamples {len(plates)} plates ({names}); minibatch VI "
            "takes one subsampled data plate. Subsample one plate, or fit on all the data"
        )
    _, rows, size = plates[0]
    return rows / size


def pass_elbo(
    batches: Batches,
    model: Callable,
    guide: Callable,
    fraction: Callable[[tuple, dict], float],
    *,
    num_particles: int,
    **elbo_options,
) -> tuple[ELBOEstimate, float]:
    """The full-data ELBO from one pass: ``sum_k w_k E_k / sum_k w_k`` over the batches'
    estimates ``E_k`` with weights ``w_k = B_k / N`` (exact when ``sum_k w_k = 1``), and
    ``sum_k w_k`` (the share of the rows the pass covered)."""
    estimates, weights = [], []
    for call_args, call_kwargs in batches.one_pass():
        weights.append(fraction(call_args, call_kwargs))
        estimates.append(
            estimate_elbo(model, guide, call_args, call_kwargs, num_particles=num_particles,
                          **elbo_options)
        )
    if not estimates:
        raise ValueError("batches yielded no batch: the source is empty")
    total = sum(weights)
    value = sum(w * e.value for w, e in zip(weights, estimates)) / total
    se = math.sqrt(sum((w * e.se) ** 2 for w, e in zip(weights, estimates))) / total
    count = sum(e.num_particles for e in estimates)
    return ELBOEstimate(value, se, count), total
