"""What each rank runs in the multi-process tests (tests/test_distributed.py).

Spawned processes import this module, so it holds the rank functions, the data and the
models; results travel back as plain tensors written with ``torch.save`` (read with
``weights_only=True``) and error messages as text files.
"""

import datetime
import os
import time

import pyro
import pyro.distributions as dist
import torch
import torch.distributed as tdist
import torch.multiprocessing as mp

import pyrovi
from pyrovi.distributed import shard, shard_indices
from pyrovi.em import EM, chunked, gaussian_mixture_model, ppca_model

N_EM, N_VI = 3000, 400
PRIOR_SD, NOISE_SD = 2.0, 0.5


def blobs() -> torch.Tensor:
    """Three well-separated 2-D blobs, rows in random order (float64)."""
    g = torch.Generator().manual_seed(0)
    n = N_EM // 3
    x = torch.cat([
        torch.randn(n, 2, generator=g, dtype=torch.float64) + torch.tensor([6.0, 0.0]),
        0.5 * torch.randn(n, 2, generator=g, dtype=torch.float64),
        torch.randn(n, 2, generator=g, dtype=torch.float64)
        @ torch.tensor([[1.0, 0.5], [0.0, 0.7]], dtype=torch.float64)
        + torch.tensor([0.0, 6.0]),
    ])
    return x[torch.randperm(x.shape[0], generator=g)]


def gmm():
    return gaussian_mixture_model(3, "full", init={
        "weights": [0.3, 0.3, 0.4], "means": [[5.0, 1.0], [1.0, 0.0], [0.0, 5.0]],
        "covariances": torch.eye(2, dtype=torch.float64).expand(3, 2, 2).clone(),
    })


def regression():
    """A conjugate linear regression's data: ``X`` (N, 2), ``y`` (N,)."""
    g = torch.Generator().manual_seed(1)
    X = torch.randn(N_VI, 2, generator=g, dtype=torch.float64)
    y = X @ torch.tensor([1.0, -0.5], dtype=torch.float64) + NOISE_SD * torch.randn(
        N_VI, generator=g, dtype=torch.float64)
    return X, y


def regression_model(X, y):
    """Written once: on rank r of W, ``shard`` subsamples rank r's rows of the plate."""
    w = pyro.sample("w", dist.Normal(X.new_zeros(2), PRIOR_SD).to_event(1))
    with shard("data", X.shape[0]) as idx:
        pyro.sample("y", dist.Normal((X[idx] * w).sum(-1), NOISE_SD), obs=y[idx])


def vi_fit():
    X, y = regression()
    return pyrovi.VI(regression_model, guide="fullrank", method="sgd", num_steps=600,
                     lr=0.05, num_particles=4, tol=1e-12, window=100, elbo_particles=1000,
                     seed=0, progress=False).run(X, y)


def _init(rank: int, world: int, init_file: str) -> None:
    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float64)
    tdist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                             world_size=world, timeout=datetime.timedelta(seconds=40))


def _write(path: str, text: str) -> None:
    with open(path, "w") as fh:
        fh.write(text)


def em_rank(rank: int, world: int, init_file: str, out: str) -> None:
    """Distributed batch EM on this rank's shard; then a fit whose rank 1 fails."""
    _init(rank, world, init_file)
    try:
        x = blobs()
        mine = x[shard_indices(x.shape[0])]
        res = EM(gmm(), num_steps=15, tol=0, seed=1, progress=False).stream(chunked(mine, 300))
        fa = EM(ppca_model(1), num_steps=10, tol=0, seed=2, progress=False).stream(
            chunked(mine, 250))
        torch.save({"trace": torch.as_tensor(res.log_evidence_trace),
                    "log_evidence": torch.tensor(res.log_evidence),
                    "ppca_trace": torch.as_tensor(fa.log_evidence_trace),
                    **{k: v for k, v in res.params.items()}},
                   os.path.join(out, f"em_rank{rank}.pt"))
        passes = []

        def failing():  # rank 1's fourth pass hits bad data
            passes.append(1)
            for i, chunk in enumerate(mine.split(300)):
                if rank == 1 and len(passes) == 4 and i == 2:
                    raise ValueError("bad rows in shard 1")
                yield chunk

        try:
            EM(gmm(), num_steps=15, tol=0, seed=1, progress=False,
               checkpoint=os.path.join(out, "em.ckpt"), checkpoint_every=100).stream(failing)
            _write(os.path.join(out, f"em_err{rank}.txt"), "no error")
        except Exception as err:
            steps = getattr(getattr(err, "result", None), "num_steps", None)
            _write(os.path.join(out, f"em_err{rank}.txt"),
                   f"{type(err).__name__}|{steps}|{err}")
    finally:
        tdist.destroy_process_group()


def vi_rank(rank: int, world: int, init_file: str, out: str) -> None:
    """Data-parallel VI of the conjugate regression on this rank's shard."""
    _init(rank, world, init_file)
    try:
        try:
            pyrovi.VI(regression_model, progress=False, num_steps=10).run(*regression())
            _write(os.path.join(out, f"vi_refused{rank}.txt"), "not refused")
        except ValueError as err:
            _write(os.path.join(out, f"vi_refused{rank}.txt"), str(err))
        res = vi_fit()
        draws = res.sample(4000, seed=3)["w"]
        torch.save({"trace": torch.as_tensor(res.elbo_trace), "elbo": torch.tensor(res.elbo),
                    "elbo_se": torch.tensor(res.elbo_se), "draws": draws,
                    **{k: v for k, v in res.params.items()}},
                   os.path.join(out, f"vi_rank{rank}.pt"))
    finally:
        tdist.destroy_process_group()


def run_ranks(fn, world: int, out: str, timeout: float = 90.0) -> None:
    """Run ``fn(rank, world, init_file, out)`` on ``world`` spawned processes; fail (after
    stopping them) if they have not all finished within ``timeout`` seconds."""
    init_file = os.path.join(out, "pg_init")
    ctx = mp.start_processes(fn, args=(world, init_file, out), nprocs=world, join=False,
                             start_method="spawn")
    deadline = time.monotonic() + timeout
    while not ctx.join(timeout=1):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                if p.is_alive():
                    p.terminate()
            raise TimeoutError(f"the {world} ranks did not finish within {timeout:.0f} s")
