"""EM on models as users write them: the M-step derived from the model vs L-BFGS, per iteration.

Two models written as plain Pyro models, in one process, one torch thread:

* a Gaussian mixture on iris (150 x 4, K = 3; ``pyro.param`` weights, locs and
  ``scale_tril`` started at the identity, enumerated assignment), against pyrovi's ready
  ``gaussian_mixture_model`` and scikit-learn's ``GaussianMixture`` from the same values;
* ``examples/hmm.py``'s ``model_1`` with its Dirichlet and Beta priors replaced by
  ``pyro.param`` (maximum likelihood: EM's setting), on simulated sequences, against one
  step of Pyro's ``TraceEnum_ELBO`` (Adam) on the same model.

Per-iteration times are ``(T(iters) - T(1)) / (iters - 1)`` (set-up cancels), medians over
repeats; the "to converge" columns run with ``tol=1e-6`` (per observation, for
scikit-learn too) and at most ``--cap`` iterations, and report time, iterations and the
final log evidence.

Usage::

    python benchmarks/bench_em_models.py [--iters 20] [--repeats 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings

import numpy as np
import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import torch
from pyro.distributions import constraints
from pyro.infer import SVI, TraceEnum_ELBO
from pyro.optim import Adam

from pyrovi.em import EM, LBFGSMStep, gaussian_mixture_model

K = 3


def user_gmm(x, init):
    n, d = x.shape
    weights = pyro.param("weights", torch.ones(K, dtype=x.dtype) / K,
                         constraint=constraints.simplex)
    locs = pyro.param("locs", init.clone())
    tril = pyro.param("scale_tril", torch.eye(d, dtype=x.dtype).expand(K, d, d).clone(),
                      constraint=constraints.lower_cholesky)
    with pyro.plate("data", n):
        z = pyro.sample("z", dist.Categorical(weights), infer={"enumerate": "parallel"})
        pyro.sample("x", dist.MultivariateNormal(locs[z], scale_tril=tril[z]), obs=x)


def hmm_mle(sequences, lengths, hidden_dim=3):
    """examples/hmm.py model_1 with pyro.param in place of its priors."""
    num_sequences, max_length, data_dim = map(int, sequences.shape)
    g = torch.Generator().manual_seed(0)
    probs_x = pyro.param("probs_x", lambda: 0.8 * torch.eye(hidden_dim) + 0.2 / hidden_dim,
                         constraint=constraints.simplex)
    probs_y = pyro.param("probs_y", lambda: torch.rand(hidden_dim, data_dim, generator=g)
                         * 0.8 + 0.1, constraint=constraints.unit_interval)
    tones_plate = pyro.plate("tones", data_dim, dim=-1)
    with pyro.plate("sequences", num_sequences, dim=-2):
        x = 0
        for t in pyro.markov(range(max_length)):
            with poutine.mask(mask=(t < lengths).unsqueeze(-1)):
                x = pyro.sample(f"x_{t}", dist.Categorical(probs_x[x]),
                                infer={"enumerate": "parallel"})
                with tones_plate:
                    pyro.sample(f"y_{t}", dist.Bernoulli(probs_y[x.squeeze(-1)]),
                                obs=sequences[:, t])


def hmm_data(num_sequences=16, max_length=60, data_dim=6, hidden_dim=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    px = torch.softmax(3 * torch.eye(hidden_dim) + torch.randn(hidden_dim, hidden_dim,
                                                               generator=g), -1)
    py = torch.rand(hidden_dim, data_dim, generator=g)
    lengths = torch.randint(max_length // 2, max_length + 1, (num_sequences,), generator=g)
    seqs = torch.zeros(num_sequences, max_length, data_dim)
    for n in range(num_sequences):
        x = 0
        for t in range(int(lengths[n])):
            x = int(torch.multinomial(px[x], 1, generator=g))
            seqs[n, t] = torch.bernoulli(py[x], generator=g)
    return seqs, lengths


def _per_iter(fn, iters, repeats):
    fn(2)  # warm-up: first-call costs (imports, allocator) are not an iteration's
    long, short = [], []
    for _ in range(repeats):
        short.append(fn(1))
        long.append(fn(iters))
    per = (statistics.median(long) - statistics.median(short)) / (iters - 1)
    return per if per > 0 else float("nan")


def _em(model, args, iters, derived, tol=0.0):
    pyro.clear_param_store()
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = EM(model, num_steps=iters, tol=tol, progress=False,
                 lbfgs=LBFGSMStep(derived=derived)).run(*args)
    return time.perf_counter() - start, res


def _gmm_rows(iters, repeats, cap):
    from sklearn.datasets import load_iris
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.mixture import GaussianMixture
    from threadpoolctl import threadpool_limits

    x = torch.as_tensor(load_iris().data)
    init = x[torch.tensor([0, 50, 100])].clone()
    rows = {}
    for label, derived in (("user model, derived M-step", True),
                           ("user model, L-BFGS M-step", False)):
        per = _per_iter(lambda n, d=derived: _em(user_gmm, (x, init), n, d)[0], iters, repeats)
        elapsed, res = _em(user_gmm, (x, init), cap, derived, tol=1e-6)
        rows[label] = {"per_iter_s": per, "to_converge_s": elapsed, "iters": res.num_steps,
                       "log_evidence": res.log_evidence, "converged": res.converged}
    ready_init = {"weights": torch.ones(K) / K, "means": init, "covariances":
                  torch.eye(4).expand(K, 4, 4)}

    def ready(n, tol=0.0):
        model = gaussian_mixture_model(K, reg_covar=0.0, dtype=torch.float64, init=ready_init)
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = EM(model, num_steps=n, tol=tol, progress=False).run(x)
        return time.perf_counter() - start, res

    elapsed, res = ready(1000, tol=1e-6)
    rows["pyrovi ready gaussian_mixture_model"] = {
        "per_iter_s": _per_iter(lambda n: ready(n)[0], iters, repeats), "to_converge_s": elapsed,
        "iters": res.num_steps, "log_evidence": res.log_evidence}

    def sk(n, tol=0.0):
        gm = GaussianMixture(K, covariance_type="full", tol=tol, max_iter=n, reg_covar=0.0,
                             weights_init=np.ones(K) / K, means_init=init.numpy(),
                             precisions_init=np.stack([np.eye(4)] * K))
        with threadpool_limits(1, user_api="blas"), warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            start = time.perf_counter()
            gm.fit(x.numpy())
            return time.perf_counter() - start, gm

    elapsed, gm = sk(1000, tol=1e-6)  # per observation, as pyrovi.EM.s tol
    rows["scikit-learn GaussianMixture"] = {
        "per_iter_s": _per_iter(lambda n: sk(n)[0], iters, repeats), "to_converge_s": elapsed,
        "iters": int(gm.n_iter_), "log_evidence": float(gm.score(x.numpy()) * len(x))}
    return rows


def _hmm_rows(iters, repeats, cap):
    seqs, lengths = hmm_data()
    rows = {}
    for label, derived in (("EM, derived M-step", True), ("EM, L-BFGS M-step", False)):
        per = _per_iter(lambda n, d=derived: _em(hmm_mle, (seqs, lengths), n, d)[0], iters,
                        repeats)
        elapsed, res = _em(hmm_mle, (seqs, lengths), cap, derived, tol=1e-6)
        rows[label] = {"per_iter_s": per, "to_converge_s": elapsed, "iters": res.num_steps,
                       "log_evidence": res.log_evidence, "converged": res.converged}

    def svi(n):
        pyro.clear_param_store()
        elbo = TraceEnum_ELBO(max_plate_nesting=2)
        svi = SVI(hmm_mle, lambda *a: None, Adam({"lr": 0.05}), elbo)
        start = time.perf_counter()
        for _ in range(n):
            svi.step(seqs, lengths)
        return time.perf_counter() - start

    rows["Pyro TraceEnum_ELBO step (Adam)"] = {"per_iter_s": _per_iter(svi, iters, repeats)}
    return rows


def run(iters: int = 20, repeats: int = 3, cap: int = 300) -> dict:
    torch.set_num_threads(1)
    with torch.random.fork_rng():
        torch.set_default_dtype(torch.float64)
        try:
            gmm = _gmm_rows(iters, repeats, cap)
        finally:
            torch.set_default_dtype(torch.float32)
    return {"gmm_iris": gmm, "hmm": _hmm_rows(iters, repeats, cap), "cap": cap,
            "threads": torch.get_num_threads(), "torch": torch.__version__}


def _print(report: dict) -> None:
    for key, title, base in (("gmm_iris", "Gaussian mixture on iris (float64)",
                              "pyrovi ready gaussian_mixture_model"),
                             ("hmm", "examples/hmm.py model_1 (MLE), 16 x 60, 6 tones",
                              "Pyro TraceEnum_ELBO step (Adam)")):
        print(f"\n{title}")
        print("| method | per iteration | vs " + base + " | to converge (tol 1e-6) | "
              "iterations | log p(x) |")
        print("| --- | --- | --- | --- | --- | --- |")
        ref = report[key][base]["per_iter_s"]
        for label, row in report[key].items():
            if "iters" not in row:
                conv = "- | - | -"
            else:
                flag = "" if row.get("converged", True) else " (cap, not converged)"
                conv = (f"{row['to_converge_s']:.3f} s | {row['iters']}{flag} | "
                        f"{row['log_evidence']:.6f}")
            print(f"| {label} | {1e3 * row['per_iter_s']:.2f} ms | "
                  f"{row['per_iter_s'] / ref:.2f}x | {conv} |")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cap", type=int, default=300,
                        help="most iterations of the to-converge runs")
    parser.add_argument("--json")
    opts = parser.parse_args(argv)
    report = run(opts.iters, opts.repeats, opts.cap)
    _print(report)
    if opts.json:
        with open(opts.json, "w") as fh:
            json.dump(report, fh, indent=1, default=str)


if __name__ == "__main__":
    main()
