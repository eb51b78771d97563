"""Fits on several processes with ``torch.distributed``: the collectives pyrovi needs.

Start the processes with ``torchrun`` (or ``torch.multiprocessing.spawn``) and call
``torch.distributed.init_process_group`` ("gloo" on CPU, "nccl" on GPUs) before the fit;
pyrovi notices the initialised group and then

* **EM** (:meth:`pyrovi.EM.stream`): every rank reads its own shard of rows; the E-step's
  sufficient statistics are summed over the ranks (one ``all_reduce``) and every rank
  computes the same M-step, so every rank returns the same result;
* **VI** (``pyrovi.VI(..., method="sgd")``): every rank's model sees its shard through
  :func:`shard` (a ``pyro.plate`` subsample of the full size, so Pyro scales the shard's
  log-likelihood by ``N / len(shard)``); the gradients and losses are averaged over the
  ranks with weights ``len(shard) / N`` before each optimizer step
  (:class:`DataParallelELBO`), so the parameters stay the same on every rank and the
  reported ELBO is the full-data one: the global terms once and every shard's likelihood
  term once.

A rank that raises makes every rank raise at the next collective: the others raise a
:class:`~pyrovi.errors.RankError` naming the rank and its error (see :func:`agree`), so no
rank waits forever; a rank that dies without raising is caught by the process group's
``timeout``.  Only rank 0 writes checkpoints and shows progress bars.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Mapping

import pyro
import torch
import torch.distributed as dist
from pyro import poutine

from pyrovi.errors import RankError

__all__ = [
    "Collective",
    "collective",
    "is_distributed",
    "rank",
    "world_size",
    "shard_indices",
    "shard",
    "average_gradients",
    "DataParallelELBO",
    "reduce_values",
    "DEFAULT_TIMEOUT",
]

#: Bytes of an error message sent to the other ranks by :func:`agree`.
_MESSAGE_BYTES = 1024
#: A process-group timeout that suits tests and interactive runs (pass it to
#: ``init_process_group(timeout=...)``).
DEFAULT_TIMEOUT = datetime.timedelta(seconds=120)


def is_distributed() -> bool:
    """Whether a ``torch.distributed`` process group of more than one rank is running."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank (0 when not distributed)."""
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    """Number of ranks (1 when not distributed)."""
    return dist.get_world_size() if is_distributed() else 1


def _device() -> torch.device:
    """Where collectives of this group run: the current GPU for NCCL, else the CPU."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


class Collective:
    """The collectives of a fit on one process: every operation is the identity."""

    rank = 0
    world_size = 1

    def sum(self, stats: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``stats`` summed over the ranks."""
        return dict(stats)

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        """``value`` averaged over the ranks."""
        return value

    def broadcast(self, params: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Rank 0's ``params`` on every rank."""
        return dict(params)

    def agree(self, error: BaseException | None, *, at: str) -> None:
        """Raise ``error`` (this rank's failure, if any)."""
        if error is not None:
            raise error


class _ProcessGroup(Collective):
    """The collectives of the default ``torch.distributed`` process group."""

    def __init__(self):
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        self.device = _device()

    def sum(self, stats):
        keys = sorted(stats)
        flat = torch.cat([stats[k].reshape(-1).to(self.device, torch.float64) for k in keys])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        out, start = {}, 0
        for k in keys:
            v = stats[k]
            out[k] = flat[start : start + v.numel()].view(v.shape).to(v.device, v.dtype)
            start += v.numel()
        return out

    def mean(self, value):
        buf = value.detach().to(self.device, torch.float64).clone()
        dist.all_reduce(buf, op=dist.ReduceOp.SUM)
        return (buf / self.world_size).to(value.device, value.dtype)

    def broadcast(self, params):
        out = {}
        for k in sorted(params):
            v = params[k].detach()
            buf = v.to(self.device).contiguous().clone()
            dist.broadcast(buf, src=0)
            out[k] = buf.to(v.device)
        return out

    def agree(self, error, *, at):
        """Every rank learns whether any rank failed: this rank re-raises its own error,
        the others raise a :class:`~pyrovi.errors.RankError` naming the first failed rank
        and its error (messages travel as bytes in a tensor: nothing is unpickled)."""
        flag = torch.tensor([0.0 if error is None else 1.0], device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.SUM)  # the common case: one tiny collective
        if float(flag) == 0:
            return
        text = b"" if error is None else f"{type(error).__name__}: {error}".encode()[
            : _MESSAGE_BYTES - 1]
        buf = torch.zeros(_MESSAGE_BYTES, dtype=torch.uint8)
        if error is not None:
            buf[0] = 1
            buf[1 : 1 + len(text)] = torch.frombuffer(bytearray(text), dtype=torch.uint8)
        buf = buf.to(self.device)
        gathered = [torch.zeros_like(buf) for _ in range(self.world_size)]
        dist.all_gather(gathered, buf)
        if error is not None:
            raise error
        for r, g in enumerate(gathered):
            g = g.cpu()
            if int(g[0]):
                message = bytes(g[1:].tolist()).rstrip(b"\0").decode("utf-8", "replace")
                raise RankError(
                    f"rank {r} of {self.world_size} raised {message} at {at}; every rank "
                    "stopped there. Fix the failing rank's data or model; the checkpoint "
                    "written by rank 0 (if any) resumes the fit",
                    step=-1, rank=r,
                )


def collective() -> Collective:
    """The collectives of the running process group, or those of one process."""
    return _ProcessGroup() if is_distributed() else Collective()


# ------------------------------------------------------------------------ data-parallel VI
def shard_indices(size: int, rank_: int | None = None, world: int | None = None
                  ) -> torch.Tensor:
    """The rows of a data plate of ``size`` that rank ``rank_`` of ``world`` holds: the
    contiguous block ``[rank * size // world, (rank + 1) * size // world)``.

    Defaults: this process's rank and the world size.
    """
    rank_ = rank() if rank_ is None else rank_
    world = world_size() if world is None else world
    if isinstance(size, bool) or not isinstance(size, int) or size < world:
        raise ValueError(
            f"size must be an int of at least the number of ranks ({world}), got {size!r}"
        )
    if not 0 <= rank_ < world:
        raise ValueError(f"rank must be in [0, {world}), got {rank_!r}")
    return torch.arange(rank_ * size // world, (rank_ + 1) * size // world)


def shard(name: str, size: int, *, dim: int | None = None, **kwargs):
    """A ``pyro.plate`` over this rank's shard of a data plate of ``size`` rows.

    Write the model once with ``with pyrovi.distributed.shard("data", N) as idx:`` and
    index the data with ``idx``: on one process it is ``pyro.plate("data", N)`` (all rows);
    on rank ``r`` of ``W`` it is ``pyro.plate("data", N, subsample=shard_indices(N))``,
    which makes Pyro scale the shard's log-likelihood by ``N / len(shard)``.  With the
    gradients averaged over the ranks (:func:`average_gradients`), each step then follows
    the gradient of the full-data ELBO.
    """
    global _SHARD_WEIGHT
    if is_distributed():
        kwargs["subsample"] = idx = shard_indices(size)
        _SHARD_WEIGHT = len(idx) / size
    return pyro.plate(name, size, dim=dim, **kwargs)


#: ``len(shard) / size`` of the last :func:`shard` entered on this rank (None: none was).
_SHARD_WEIGHT: float | None = None


def _take_weight() -> float:
    """This rank's weight in the average over ranks: ``len(shard) / size`` of the shard the
    model just entered, else ``1 / world_size`` (equal shards of a plain plate subsample).

    With Pyro's ``size / len(shard)`` scaling, :math:`\\sum_r w_r \\mathcal{L}_r` with
    :math:`w_r = n_r / N` is the full-data ELBO: the global terms once and every shard's
    likelihood term once, whatever the shard sizes."""
    global _SHARD_WEIGHT
    weight, _SHARD_WEIGHT = _SHARD_WEIGHT, None
    return 1.0 / world_size() if weight is None else weight


def reduce_values(values) -> torch.Tensor:
    """The weighted sum over ranks of this rank's shard estimates ``values`` (a float or an
    array of them, each the full-data estimate from this rank's shard): the full-data
    estimate that uses every rank's data (identity on one process)."""
    values = torch.as_tensor(values, dtype=torch.float64)
    if not is_distributed():
        return values
    buf = (values * _take_weight()).to(_device())
    dist.all_reduce(buf, op=dist.ReduceOp.SUM)
    return buf.cpu()


def average_gradients(
    params: Iterable[torch.Tensor], weight: float | None = None, *, loss: float = 0.0
) -> float:
    """Average the ``.grad`` of ``params`` over the ranks, in place (one ``all_reduce``).

    Every rank's gradient is that of its own unbiased, ``N / len(shard)``-scaled estimate of
    the full-data ELBO; their average, weighted by ``weight`` (default ``1 / W``; the
    :class:`DataParallelELBO` passes ``len(shard) / N``), is the gradient of the full-data
    estimate, and every rank applies the same update to the same parameters.  A parameter
    without a gradient on this rank counts as a zero gradient.  ``loss`` travels with the
    gradients (same weight, same collective); the return value is its weighted sum.
    """
    if not is_distributed():
        return float(loss)
    params = [p for p in params]
    device = _device()
    flat = torch.cat([
        (p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).to(
            device, torch.float64)
        for p in params
    ] + [torch.tensor([float(loss)], dtype=torch.float64, device=device)])
    flat *= 1.0 / dist.get_world_size() if weight is None else weight
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    start = 0
    for p in params:
        g = flat[start : start + p.numel()].view_as(p).to(p.device, p.dtype)
        start += p.numel()
        if p.grad is None:
            p.grad = g.clone()
        else:
            p.grad.copy_(g)
    return float(flat[-1])


class DataParallelELBO:
    """A Pyro ELBO whose loss and gradients are those of all the ranks' data.

    ``loss_and_grads`` runs the wrapped ELBO on this rank's shard, then (one collective each)
    lets every rank learn whether any rank failed (:meth:`Collective.agree`), averages the
    gradients of the parameters it touched (:func:`average_gradients`, weights
    ``len(shard) / N``) and returns the weighted sum of the ranks' losses: the full-data
    loss, the same on every rank.  :class:`pyrovi.VI` wraps its ELBO in it when a process
    group is running.
    """

    def __init__(self, elbo):
        self.elbo = elbo
        self.group = collective()
        self.steps = 0

    def loss(self, model, guide, *args, **kwargs) -> float:
        """The full-data loss (no gradients)."""
        return float(reduce_values(self.elbo.loss(model, guide, *args, **kwargs)))

    def loss_and_grads(self, model, guide, *args, **kwargs) -> float:
        self.steps += 1
        error, loss, params = None, float("nan"), []
        try:
            with poutine.trace(param_only=True) as capture:
                loss = self.elbo.loss_and_grads(model, guide, *args, **kwargs)
            params = [site["value"].unconstrained() for site in capture.trace.nodes.values()]
        except Exception as err:  # every rank must hear of it, or the others would wait
            error = err
        try:
            self.group.agree(error, at=f"step {self.steps}")
        except ValueError as err:
            if err is not error:
                raise
            # this rank's own ValueError (a Pyro validation error, say) must stop the fit
            # here as it stops the other ranks, not be skipped as a non-finite step
            raise RuntimeError(f"{type(err).__name__}: {err}") from err
        weight = _take_weight()
        return average_gradients(params, weight, loss=loss)
