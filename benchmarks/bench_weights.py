"""Importance-weight throughput: particles per second of log p(x, z) - log q(z) for a
Bayesian logistic regression (N=100,000 observations, D=100) at K=10,000 particles.

pyrovi's chunked, vectorized weights (:func:`pyrovi.diagnostics.importance_log_weights`)
are compared in the same run with Pyro's ``vectorized_importance_weights`` on the same
chunks (Pyro's function has no chunking: all K particles at once would need K x N
likelihood terms, 4 GB here).  Threads are pinned and printed.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/bench_weights.py [--particles 10000] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import pyro
import pyro.distributions as dist
import torch
from pyro.infer.importance import vectorized_importance_weights

from pyrovi.diagnostics import importance_log_weights


def logistic_model(X, y):
    d = X.shape[-1]
    w = pyro.sample("w", dist.Normal(torch.zeros(d, device=X.device), 1.0).to_event(1))
    # under a particle plate w is (K, 1, D): broadcast against the data without a K x N x D
    # product, then drop the data plate's singleton
    logits = w @ X.T
    if logits.dim() > 1:
        logits = logits.squeeze(-2)
    with pyro.plate("data", X.shape[0]):
        pyro.sample("y", dist.Bernoulli(logits=logits), obs=y)


def make_guide(d, device):
    loc = 0.01 * torch.randn(d, device=device)
    scale = 0.01 * torch.ones(d, device=device)

    def guide(X, y):
        pyro.sample("w", dist.Normal(loc, scale).to_event(1))

    return guide


def run(
    n: int = 100_000,
    d: int = 100,
    particles: int = 10_000,
    chunk: int = 100,
    threads: int = 1,
    device: str = "cpu",
    peer: bool = True,
    seed: int = 0,
) -> dict:
    """Time pyrovi's chunked weights (and Pyro's, as the peer) and return the numbers."""
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    dev = torch.device(device)
    X = torch.randn(n, d, device=dev) / d**0.5
    y = torch.bernoulli(torch.sigmoid(X @ torch.randn(d, device=dev)))
    guide = make_guide(d, dev)
    args = (X, y)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    # warm-up (site shapes, vectorization check) outside the timing
    importance_log_weights(logistic_model, guide, args, num_particles=2, chunk_size=2)
    sync()
    t0 = time.perf_counter()
    lw = importance_log_weights(logistic_model, guide, args, num_particles=particles,
                                chunk_size=chunk)
    sync()
    ours = time.perf_counter() - t0
    out = {
        "n": n, "d": d, "particles": particles, "chunk": chunk, "threads": threads,
        "device": str(dev), "torch": torch.__version__, "pyro": pyro.__version__,
        "machine": platform.processor() or platform.machine(),
        "pyrovi_seconds": ours, "pyrovi_particles_per_s": particles / ours,
        "log_w_finite": bool(torch.isfinite(lw.log_w).all()),
    }
    if peer:
        sync()
        t0 = time.perf_counter()
        with torch.no_grad():
            for start in range(0, particles, chunk):
                k = min(chunk, particles - start)
                vectorized_importance_weights(logistic_model, guide, X, y, num_samples=k,
                                              max_plate_nesting=1)
        sync()
        theirs = time.perf_counter() - t0
        out.update({"pyro_seconds": theirs, "pyro_particles_per_s": particles / theirs,
                    "speedup_vs_pyro": theirs / ours})
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--d", type=int, default=100)
    parser.add_argument("--particles", type=int, default=10_000)
    parser.add_argument("--chunk", type=int, default=100)
    parser.add_argument("--threads", type=int,
                        default=int(os.environ.get("OMP_NUM_THREADS", "1")))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-peer", action="store_true", help="skip Pyro's timing")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    a = parser.parse_args(argv)
    print(f"torch threads: {a.threads} (OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')})",
          flush=True)
    res = run(a.n, a.d, a.particles, a.chunk, a.threads, a.device, not a.no_peer)
    if a.json:
        print(json.dumps(res))
        return
    print(f"logistic regression N={res['n']}, D={res['d']}, K={res['particles']} particles, "
          f"chunks of {res['chunk']}, {res['threads']} thread(s), {res['device']}")
    print(f"  pyrovi: {res['pyrovi_seconds']:.2f} s  {res['pyrovi_particles_per_s']:.0f} "
          "particles/s")
    if "pyro_seconds" in res:
        print(f"  pyro vectorized_importance_weights: {res['pyro_seconds']:.2f} s  "
              f"{res['pyro_particles_per_s']:.0f} particles/s  "
              f"(pyrovi / pyro = {res['speedup_vs_pyro']:.2f}x)")


if __name__ == "__main__":
    main()
