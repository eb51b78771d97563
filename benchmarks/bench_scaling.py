"""Scaling: EM in memory vs streamed from disk, streaming EM's peak memory, and fits on 1
vs 2 processes (torch.distributed, gloo).

* **EM iteration time** of the closed-form Gaussian mixture (full covariances) at
  ``N = 1e6`` in memory (``EM.run``) and streamed from a ``.npy`` file in blocks
  (``EM.stream(chunked(path, rows))``), and at ``N = 1e7`` streamed.  Per iteration:
  ``(T(iters) - T(1)) / (iters - 1)`` of whole fits with ``tol=0``, so set-up cancels.
* **Peak memory** of one streamed EM iteration over a large ``.npy`` file (default 2 GB),
  measured in a fresh process as the peak resident size (``VmHWM``) after the fit minus
  the resident size just before it (after a warm-up fit on a small array): an upper bound
  of what the fit added, against the size of one chunk; and the peak of the Python/numpy
  allocations during the fit (``tracemalloc``: the chunks read from the file; torch's own
  temporaries are not traced).
* **1 vs 2 processes**: EM iteration time on ``N = 1e6`` rows with every rank streaming
  its half, and data-parallel VI (``method="sgd"``) steps per second on a conjugate
  regression with every rank holding half the rows; both against one process on all rows.

Every process pins torch to one thread.  Usage::

    python benchmarks/bench_scaling.py [--quick] [--big-gb 2.0] [--json out.json]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc
import warnings

import numpy as np
import torch

K, D = 5, 10


def _write_npy(path: str, n: int, seed: int = 0, block: int = 1_000_000) -> None:
    """``n`` rows of a K-component mixture in D dimensions, written block by block."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=4.0, size=(K, D))
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float64, shape=(n, D))
    for s in range(0, n, block):
        m = min(block, n - s)
        out[s : s + m] = centers[rng.integers(K, size=m)] + rng.normal(size=(m, D))
    out.flush()
    del out


def _init() -> dict:
    rng = np.random.default_rng(1)
    return {"weights": np.full(K, 1.0 / K), "means": rng.normal(scale=4.0, size=(K, D)),
            "covariances": np.broadcast_to(np.eye(D), (K, D, D)).copy()}


def _fit_time(fit, iters: int) -> float:
    from pyrovi.em import EM, gaussian_mixture_model

    model = gaussian_mixture_model(K, init=_init())
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit(EM(model, num_steps=iters, tol=0, progress=False, seed=0))
    return time.perf_counter() - start


def _per_iter(fit, iters: int) -> float:
    return (_fit_time(fit, iters) - _fit_time(fit, 1)) / (iters - 1)


# ------------------------------------------------------------------ peak memory (own process)
def _hwm() -> int:
    """Peak resident bytes of this process's own memory (``VmHWM``, Linux): unlike
    ``ru_maxrss`` it does not carry over the parent's peak through fork and exec."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _peak_child(path: str, rows: int) -> None:
    """Run in a fresh process: print JSON with the RSS growth of one streamed iteration."""
    torch.set_num_threads(1)
    from pyrovi.em import EM, chunked, gaussian_mixture_model

    model = gaussian_mixture_model(K, init=_init())
    small = torch.from_numpy(np.random.default_rng(0).normal(size=(20_000, D)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        EM(model, num_steps=1, tol=0, progress=False).stream(chunked(small, 5000))  # warm-up
        with open("/proc/self/statm") as fh:  # resident now (Linux), not the peak so far
            base = int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        start = time.perf_counter()
        tracemalloc.start()
        res = EM(model, num_steps=1, tol=0, progress=False).stream(chunked(path, rows))
        traced = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    peak = _hwm()
    print(json.dumps({"growth_bytes": peak - base, "base_bytes": base, "traced_peak": traced,
                      "seconds": time.perf_counter() - start, "num_obs": res.num_obs}))


def _peak_memory(path: str, rows: int) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    out = subprocess.run([sys.executable, __file__, "--peak-child", path, str(rows)],
                         capture_output=True, text=True, env=env, check=True)
    res = json.loads(out.stdout.strip().splitlines()[-1])
    chunk = rows * D * 8
    stats = K * D * D * 8 + 2 * K * D * 8 + K * 8
    res.update(file_bytes=os.path.getsize(path), chunk_bytes=chunk, stats_bytes=stats,
               growth_over_chunk=res["growth_bytes"] / chunk)
    return res


# ------------------------------------------------------------------ 1 vs 2 processes
def _rank(rank: int, world: int, init_file: str, path: str, rows: int, iters: int, vi_n: int,
          vi_steps: int, out: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    if world > 1:
        dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                                world_size=world, timeout=datetime.timedelta(seconds=300))
    try:
        from pyrovi.distributed import shard_indices
        from pyrovi.em import chunked

        x = np.load(path, mmap_mode="r")
        idx = shard_indices(x.shape[0], rank, world)
        mine = torch.from_numpy(np.array(x[int(idx[0]) : int(idx[-1]) + 1]))
        em = _per_iter(lambda fit: fit.stream(chunked(mine, rows)), iters)
        vi = _vi_rate(vi_n, vi_steps)
        if rank == 0:
            with open(out, "w") as fh:
                json.dump({"em_s_per_iter": em, "vi_steps_per_s": vi}, fh)
    finally:
        if world > 1:
            dist.destroy_process_group()


def _vi_rate(n: int, steps: int) -> float:
    import pyro
    import pyro.distributions as dist

    import pyrovi
    from pyrovi.distributed import shard

    g = torch.Generator().manual_seed(0)
    X = torch.randn(n, 5, generator=g)
    y = X @ torch.ones(5) + 0.5 * torch.randn(n, generator=g)

    def model(X, y):
        w = pyro.sample("w", dist.Normal(torch.zeros(5), 2.0).to_event(1))
        with shard("data", X.shape[0]) as idx:
            pyro.sample("y", dist.Normal((X[idx] * w).sum(-1), 0.5), obs=y[idx])

    def fit(num_steps):
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pyrovi.VI(model, method="sgd", num_steps=num_steps, tol=1e-12, num_particles=1,
                      elbo_particles=20, progress=False, seed=0).run(X, y)
        return time.perf_counter() - start

    return (steps - 100) / (fit(steps) - fit(100))


def _parallel(path: str, rows: int, iters: int, vi_n: int, vi_steps: int) -> dict:
    import torch.multiprocessing as mp

    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for world in (1, 2):
            res = os.path.join(tmp, f"w{world}.json")
            mp.start_processes(_rank, args=(world, os.path.join(tmp, f"pg{world}"), path, rows,
                                             iters, vi_n, vi_steps, res),
                               nprocs=world, start_method="spawn")
            with open(res) as fh:
                out[world] = json.load(fh)
    return out


def run(quick: bool = False, big_gb: float = 2.0, folder: str | None = None) -> dict:
    torch.set_num_threads(1)
    from pyrovi.em import chunked

    folder = folder or tempfile.mkdtemp(prefix="pyrovi-bench-")
    os.makedirs(folder, exist_ok=True)
    n1 = 200_000 if quick else 1_000_000
    n2 = 2_000_000 if quick else 10_000_000
    iters = 3
    rows = 100_000
    p1, p2 = os.path.join(folder, "n1.npy"), os.path.join(folder, "n2.npy")
    _write_npy(p1, n1)
    _write_npy(p2, n2)
    x1 = torch.from_numpy(np.load(p1))
    report = {"k": K, "d": D, "rows_per_chunk": rows, "iters": iters, "cpu_count": os.cpu_count(),
              "torch": torch.__version__, "em": []}
    report["em"].append({"n": n1, "how": "in memory (EM.run)",
                         "s_per_iter": _per_iter(lambda fit, x=x1: fit.run(x), iters)})
    del x1
    report["em"].append({"n": n1, "how": "streamed from .npy", "s_per_iter": _per_iter(
        lambda fit: fit.stream(chunked(p1, rows)), iters)})
    report["em"].append({"n": n2, "how": "streamed from .npy",
                         "s_per_iter": _per_iter(lambda fit: fit.stream(chunked(p2, rows)), 2)})
    os.remove(p2)
    big = os.path.join(folder, "big.npy")
    _write_npy(big, int(big_gb * 2**30 / (D * 8)))
    report["peak"] = _peak_memory(big, 1_000_000)
    os.remove(big)
    report["parallel"] = _parallel(p1, rows, iters, 20_000, 300 if quick else 600)
    os.remove(p1)
    return report


def _print(r: dict) -> None:
    print(f"Gaussian mixture K={r['k']} D={r['d']} full covariances, {r['rows_per_chunk']:,} "
          f"rows per chunk, torch {r['torch']}, 1 thread per process")
    print(f"{'N':>12s}  {'how':24s} {'s/iter':>8s}")
    for row in r["em"]:
        print(f"{row['n']:>12,d}  {row['how']:24s} {row['s_per_iter']:8.3f}")
    p = r["peak"]
    print(f"peak memory of one streamed iteration over a {p['file_bytes'] / 2**30:.2f} GiB .npy "
          f"({p['num_obs']:,} rows, chunks of {p['chunk_bytes'] / 2**20:.0f} MiB): RSS grew "
          f"{p['growth_bytes'] / 2**20:.0f} MiB = {p['growth_over_chunk']:.2f} chunks "
          f"(statistics {p['stats_bytes']} bytes), {p['seconds']:.1f} s; numpy/Python "
          f"allocations peaked at {p['traced_peak'] / 2**20:.0f} MiB = "
          f"{p['traced_peak'] / p['chunk_bytes']:.2f} chunks")
    one, two = r["parallel"]["1"] if "1" in r["parallel"] else r["parallel"][1], (
        r["parallel"]["2"] if "2" in r["parallel"] else r["parallel"][2])
    print(f"{'processes':>10s} {'EM s/iter (N=1e6)':>18s} {'VI steps/s':>11s}")
    for w, row in ((1, one), (2, two)):
        print(f"{w:>10d} {row['em_s_per_iter']:18.3f} {row['vi_steps_per_s']:11.1f}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--big-gb", type=float, default=2.0)
    parser.add_argument("--folder", default=None, help="where the data files go (temporary)")
    parser.add_argument("--json", default=None)
    parser.add_argument("--peak-child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.peak_child:
        _peak_child(args.peak_child[0], int(args.peak_child[1]))
        return
    report = run(quick=args.quick, big_gb=args.big_gb, folder=args.folder)
    _print(report)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(report, fh, indent=2)


if __name__ == "__main__":
    main()
