"""Closed-form Gaussian-mixture EM in torch vs scikit-learn's GaussianMixture, per iteration.

Same data, same initial parameters, full covariances, ``tol=0`` and equal iteration counts,
in one process.  The per-iteration time of each is ``(T(iters) - T(1)) / (iters - 1)`` so
that set-up (validation, initialisation, the final E-step) cancels; medians over repeats.
scikit-learn runs with BLAS limited to one thread (threadpoolctl) and with its default.

Usage::

    python benchmarks/bench_em.py [--n 1000000] [--iters 5] [--repeats 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
import warnings

import numpy as np
import torch

from pyrovi.em.gmm import gaussian_mixture_model


def _make_data(n: int, k: int, d: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=3.0, size=(k, d))
    labels = rng.integers(k, size=n)
    scales = rng.uniform(0.5, 1.5, size=(k, 1, 1)) * np.eye(d)
    noise = rng.normal(size=(n, d))
    return centers[labels] + np.einsum("nd,nde->ne", noise, scales[labels])


def _time_torch(x: torch.Tensor, init: dict, k: int, iters: int, dtype) -> tuple[float, float]:
    model = gaussian_mixture_model(k, reg_covar=1e-6, dtype=dtype, init=init)
    data = model.prepare(x)
    params = model.init_params(data)
    start = time.perf_counter()
    ll = 0.0
    for _ in range(iters):
        ll, log_resp = model.e_step(data, params)
        params = model.m_step(data, log_resp)
    ll, _ = model.e_step(data, params)
    return time.perf_counter() - start, ll / x.shape[0]


def _time_sklearn(x: np.ndarray, init: dict, k: int, iters: int, blas_threads) -> tuple:
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.mixture import GaussianMixture
    from threadpoolctl import threadpool_limits

    gm = GaussianMixture(
        k, covariance_type="full", tol=0.0, max_iter=iters, reg_covar=1e-6,
        init_params="random_from_data", random_state=0,
        weights_init=init["weights"], means_init=init["means"],
        precisions_init=np.linalg.inv(init["covariances"]),
    )
    with threadpool_limits(blas_threads, user_api="blas"), warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        start = time.perf_counter()
        gm.fit(x)
        elapsed = time.perf_counter() - start
    return elapsed, float(gm.score(x))


def _per_iter(fn, iters: int, repeats: int) -> tuple[float, float]:
    long, short, value = [], [], float("nan")
    for _ in range(repeats):
        t1, _ = fn(1)
        tn, value = fn(iters)
        long.append(tn)
        short.append(t1)
    per = (statistics.median(long) - statistics.median(short)) / (iters - 1)
    # on a busy machine the difference of two timings can come out non-positive: that
    # measurement says nothing, and is reported as NaN rather than as a speed
    return (per if per > 0 else float("nan")), value


def run(
    n: int = 1_000_000, k: int = 10, d: int = 20, iters: int = 5, repeats: int = 3,
    seed: int = 0, torch_threads: tuple = (1, None), sklearn: bool = True,
) -> dict:
    """Run the benchmark and return its results as a dict (also what ``--json`` writes).

    Parameters
    ----------
    n, k, d : int
        Data points, mixture components, features.
    iters : int
        EM iterations per timed fit (``>= 2``).
    repeats : int
        Timed fits per setting; medians are reported.
    seed : int
        Seed of the data and of the shared initial parameters.
    torch_threads : tuple
        torch thread counts to time (``None``: torch's default).
    sklearn : bool
        Also time scikit-learn.
    """
    x64 = _make_data(n, k, d, seed)
    xt = torch.from_numpy(x64)
    torch.manual_seed(seed)
    init = gaussian_mixture_model(k).init_params(xt)
    init_np = {name: v.numpy() for name, v in init.items()}
    default_threads = torch.get_num_threads()
    out = {
        "n": n, "k": k, "d": d, "iters": iters, "repeats": repeats,
        "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
        "torch": torch.__version__, "torch_default_threads": default_threads, "rows": [],
    }
    for threads in torch_threads:
        nt = threads or default_threads
        torch.set_num_threads(nt)
        for dtype in (torch.float32, torch.float64):
            per, ll = _per_iter(lambda it, dt=dtype: _time_torch(xt, init, k, it, dt), iters,
                                repeats)
            out["rows"].append({"impl": "pyrovi closed-form (torch)", "dtype": str(dtype)[6:],
                                "threads": nt, "s_per_iter": per, "avg_loglik": ll})
    torch.set_num_threads(default_threads)
    if sklearn:
        for blas in (1, None):
            per, ll = _per_iter(lambda it, b=blas: _time_sklearn(x64, init_np, k, it, b), iters,
                                repeats)
            out["rows"].append({"impl": "scikit-learn GaussianMixture", "dtype": "float64",
                                "threads": blas or "default", "s_per_iter": per,
                                "avg_loglik": ll})
        best_sk = min(r["s_per_iter"] for r in out["rows"] if r["impl"].startswith("scikit"))
        for r in out["rows"]:
            r["speedup_vs_best_sklearn"] = best_sk / r["s_per_iter"]
    ll64 = [r["avg_loglik"] for r in out["rows"] if r["dtype"] == "float64"][0]
    for r in out["rows"]:
        r["rel_diff_loglik_vs_float64"] = abs(r["avg_loglik"] - ll64) / abs(ll64)
    return out


def _print(res: dict) -> None:
    print(f"N={res['n']:,} K={res['k']} D={res['d']} iters={res['iters']} "
          f"repeats={res['repeats']} cpu_count={res['cpu_count']} torch={res['torch']}")
    print(f"{'implementation':32s} {'dtype':8s} {'threads':>8s} {'s/iter':>9s} "
          f"{'speedup':>8s} {'avg loglik':>14s} {'rel diff':>9s}")
    for r in res["rows"]:
        print(f"{r['impl']:32s} {r['dtype']:8s} {str(r['threads']):>8s} "
              f"{r['s_per_iter']:9.4f} {r.get('speedup_vs_best_sklearn', float('nan')):8.2f} "
              f"{r['avg_loglik']:14.8f} {r['rel_diff_loglik_vs_float64']:9.1e}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--d", type=int, default=20)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=str, default=None)
    args = parser.parse_args(argv)
    res = run(n=args.n, k=args.k, d=args.d, iters=args.iters, repeats=args.repeats)
    _print(res)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
