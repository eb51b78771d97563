"""Time to an answer: pyrovi.VI (DADVI by default, and method="sgd"), Pyro's SVI, NumPyro.

Problems: Bayesian linear regression with known noise on the diabetes data (D=10, the
posterior is Gaussian); eight schools, non-centred (D=10, a funnel-ish non-Gaussian
posterior); a logistic regression written ``X @ w + b`` (synthetic, N=1,000, D=10+1; the
model does not broadcast over a particle dimension, so the stochastic-gradient path loops
over particles while DADVI, which batches single-point evaluations with ``torch.vmap``, does
not need it to); and the same logistic regression on scikit-learn's breast-cancer data
(N=569, D=30+1, standardized features).  Families meanfield and fullrank.  Contenders:

* ``VI``: ``pyrovi.VI(model, family, seed=0, progress=False).run(...)``, the default:
  DADVI (L-BFGS on moment-matched fixed draws, the fresh-draw check; tracing the model and
  the final ELBO included);
* ``VI sgd``: the same with ``method="sgd"`` (Adam, 8 particles, plateau schedule, on the
  compiled path where it applies; its final ELBO estimate included);
* ``pyro``: ``pyro.infer.SVI``, ``Trace_ELBO`` with 1 particle, ``Adam(0.01)``, 5,000 steps,
  ``AutoNormal`` / ``AutoMultivariateNormal``;
* ``numpyro``: NumPyro's ``SVI.run`` (jitted loop; compilation included), same settings,
  when NumPyro is importable.

Every fit is scored by ONE evaluator: the family's ELBO (nats) at the fit's parameters on
the same 10,000 fresh standard-normal draws (common random numbers, float64), computed from
pyrovi's traced log density.  The family's optimum is found once by a long DADVI run with
4,096 fixed draws and scored the same way; ``gap`` is optimum minus fit (paired draws, so
its noise is far below the ELBO's own standard error).  ``x VI`` is wall time over the
default ``pyrovi.VI``'s, ``x numpyro`` over NumPyro's.  Each library is warmed up once on a
tiny problem first (imports, first-call costs); every cell is one timed run.  torch and XLA
run on 1 thread.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/bench_time.py [--steps 5000] [--skip-sgd]
        [--problems diabetes,8schools,logreg@,cancer] [--families meanfield,fullrank]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings

if __name__ == "__main__":  # before torch / jax are imported
    for _key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[_key] = "1"
    os.environ["XLA_FLAGS"] = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
    os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pyro  # noqa: E402
import pyro.distributions as dist  # noqa: E402
import torch  # noqa: E402
from pyro.infer import SVI, Trace_ELBO, autoguide  # noqa: E402

import pyrovi  # noqa: E402
from pyrovi import datasets, models  # noqa: E402
from pyrovi.fast.dadvi import (  # noqa: E402
    Gaussian,
    elbo_fresh,
    fit_dadvi,
    model_log_density,
)

F64 = torch.float64
FAMILIES = ("meanfield", "fullrank")


# ----------------------------------------------------------------------------- problems


def logistic_matmul(X, y):
    """Logistic regression written the plain way, ``X @ w + b``: it does not broadcast over a
    leading particle dimension."""
    w = pyro.sample("w", dist.Normal(torch.zeros(X.shape[1], dtype=X.dtype), 1.0).to_event(1))
    b = pyro.sample("b", dist.Normal(torch.tensor(0.0, dtype=X.dtype), 1.0))
    with pyro.plate("data", X.shape[0]):
        pyro.sample("y", dist.Bernoulli(logits=X @ w + b), obs=y)


def _logistic_data(n=1000, d=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=g, dtype=F64)
    w = torch.randn(d, generator=g, dtype=F64)
    y = torch.bernoulli(torch.sigmoid(X @ w + 0.3), generator=g)
    return X, y


def _breast_cancer():
    from sklearn.datasets import load_breast_cancer

    X, y = load_breast_cancer(return_X_y=True)
    X = torch.tensor((X - X.mean(0)) / X.std(0), dtype=F64)
    return X, torch.tensor(y, dtype=F64)


def problems(names=None):
    X, y = datasets.diabetes()
    ys, sigma = datasets.eight_schools()
    table = {
        "diabetes": lambda: (models.linear_regression, (X, y), "linreg"),
        "8schools": lambda: (models.eight_schools_noncentered, (sigma, ys), "schools"),
        "logreg@": lambda: (logistic_matmul, _logistic_data(), "logistic"),
        "cancer": lambda: (logistic_matmul, _breast_cancer(), "logistic"),
    }
    names = names or list(table)
    return {n: table[n]() for n in names}


# ----------------------------------------------------------------------------- converters


def _from_store(family, layout, get):
    """A Gaussian from Pyro-style constrained autoguide values, ``get(suffix)``."""
    if family == "meanfield":
        loc = torch.cat([get(f"locs.{n}").reshape(-1) for n in layout.names])
        scale = torch.cat([get(f"scales.{n}").reshape(-1) for n in layout.names])
        return Gaussian(loc.to(F64), scale.to(F64))
    return Gaussian(get("loc").to(F64), get("scale").to(F64), get("scale_tril").to(F64))


def _getter(params: dict):
    def get(suffix):
        hits = [v for k, v in params.items() if k.split(".", 1)[-1] == suffix]
        if len(hits) != 1:
            raise KeyError(f"{suffix!r} not in {sorted(params)}")
        return hits[0].detach()

    return get


# ----------------------------------------------------------------------------- contenders


def run_pyrovi(model, args, family, layout, method="auto"):
    t = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = pyrovi.VI(model, family, seed=0, progress=False, method=method).run(*args)
    wall = time.perf_counter() - t
    q = _from_store(family, layout, _getter(result.params))
    if result.backend == "dadvi":
        out = result.dadvi
        note = f"dadvi M={out.num_draws} it={out.num_iters} " + (
            "check ok" if out.check_passed else "CHECK FAILED"
        )
    else:
        note = f"{result.num_steps} steps, {result.backend}" + (
            "" if result.vectorized else ", particle loop"
        )
    return q, wall, note


def run_pyro(model, args, family, layout, steps):
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    guide_cls = autoguide.AutoNormal if family == "meanfield" else autoguide.AutoMultivariateNormal
    t = time.perf_counter()
    guide = guide_cls(model)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.01}), Trace_ELBO())
    for _ in range(steps):
        svi.step(*args)
    wall = time.perf_counter() - t
    params = {k: v.detach() for k, v in pyro.get_param_store().items()}
    return _from_store(family, layout, _getter(params)), wall, f"{steps} steps"


def numpyro_models():
    import numpyro
    import numpyro.distributions as nd
    from jax import numpy as jnp

    def linreg(X, y):
        w = numpyro.sample("w", nd.Normal(jnp.zeros(X.shape[1]), 1.0).to_event(1))
        with numpyro.plate("data", X.shape[0]):
            numpyro.sample("y", nd.Normal(X @ w, 0.7), obs=y)

    def schools(sigma, y):
        mu = numpyro.sample("mu", nd.Normal(0.0, 5.0))
        tau = numpyro.sample("tau", nd.HalfCauchy(5.0))
        with numpyro.plate("schools", sigma.shape[0]):
            eta = numpyro.sample("eta", nd.Normal(0.0, 1.0))
            numpyro.sample("obs", nd.Normal(mu + tau * eta, sigma), obs=y)

    def logistic(X, y):
        w = numpyro.sample("w", nd.Normal(jnp.zeros(X.shape[1]), 1.0).to_event(1))
        b = numpyro.sample("b", nd.Normal(0.0, 1.0))
        with numpyro.plate("data", X.shape[0]):
            numpyro.sample("y", nd.Bernoulli(logits=X @ w + b), obs=y)

    return {"linreg": linreg, "schools": schools, "logistic": logistic}


def run_numpyro(name, args, family, layout, steps):
    import jax
    import numpy as np
    from numpyro.infer import SVI as NSVI
    from numpyro.infer import Trace_ELBO as NTrace
    from numpyro.infer import autoguide as nauto
    from numpyro.optim import Adam as NAdam

    model = numpyro_models()[name]
    jargs = tuple(jax.numpy.asarray(a.numpy(), dtype="float32") for a in args)
    t = time.perf_counter()
    guide = (nauto.AutoNormal if family == "meanfield" else nauto.AutoMultivariateNormal)(model)
    svi = NSVI(model, guide, NAdam(0.01), NTrace())
    result = svi.run(jax.random.PRNGKey(0), steps, *jargs, progress_bar=False)
    params = jax.block_until_ready(result.params)
    wall = time.perf_counter() - t

    def arr(key):
        return torch.tensor(np.asarray(params[key]), dtype=F64)

    if family == "meanfield":
        loc = torch.cat([arr(f"{n}_auto_loc").reshape(-1) for n in layout.names])
        scale = torch.cat([arr(f"{n}_auto_scale").reshape(-1) for n in layout.names])
        return Gaussian(loc, scale), wall, f"{steps} steps, jit"
    tril = arr("auto_scale_tril")  # lower Cholesky: scale = diag, L = rows / scale
    scale = tril.diagonal()
    return Gaussian(arr("auto_loc"), scale, tril / scale[:, None]), wall, f"{steps} steps, jit"


# ----------------------------------------------------------------------------- main


def warm_up(numpyro_ok: bool, skip_sgd: bool) -> None:
    """Imports and first-call costs of every library, on a tiny problem."""
    x = torch.randn(20, 2, dtype=F64)
    y = x.sum(-1)
    for family in FAMILIES:
        _, layout = model_log_density(models.linear_regression, (x, y))
        run_pyrovi(models.linear_regression, (x, y), family, layout)
        run_pyro(models.linear_regression, (x, y), family, layout, 10)
        if numpyro_ok:
            run_numpyro("linreg", (x, y), family, layout, 10)
    if not skip_sgd:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pyrovi.VI(models.linear_regression, "meanfield", seed=0, progress=False,
                      num_steps=200, method="sgd").run(x, y)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5000, help="Pyro / NumPyro SVI steps")
    parser.add_argument("--skip-sgd", action="store_true",
                        help='leave out pyrovi.VI(method="sgd")')
    parser.add_argument("--problems", default=None,
                        help="comma-separated subset of diabetes,8schools,logreg@,cancer")
    parser.add_argument("--families", default=",".join(FAMILIES),
                        help="comma-separated subset of meanfield,fullrank")
    parser.add_argument("--eval-draws", type=int, default=10_000)
    opts = parser.parse_args(argv)
    torch.set_num_threads(1)
    try:
        import numpyro  # noqa: F401

        numpyro_ok = True
    except ImportError:
        numpyro_ok = False
    print(f"torch {torch.__version__}, pyro {pyro.__version__}, threads {torch.get_num_threads()}"
          + ("" if numpyro_ok else "; numpyro not importable: its column is left out"))
    warm_up(numpyro_ok, opts.skip_sgd)

    header = f"{'problem':<9} {'family':<9} {'method':<9} {'wall s':>8} {'x VI':>7} " \
             f"{'x numpyro':>9} {'ELBO':>11} {'gap nats':>9}  notes"
    print(header)
    print("-" * len(header))
    names = opts.problems.split(",") if opts.problems else None
    for pname, (model, args, npname) in problems(names).items():
        log_density, layout = model_log_density(model, args)
        for family in opts.families.split(","):
            gen = torch.Generator().manual_seed(12345)
            eps = torch.randn(opts.eval_draws, layout.dim, generator=gen, dtype=F64)

            def score(q, family=family, eps=eps, log_density=log_density):
                return elbo_fresh(log_density, family, q, eps=eps)

            best = fit_dadvi(log_density, layout.dim, family, num_draws=4096, max_draws=4096,
                             num_fresh=0, seed=1)
            opt_elbo, opt_se = score(best.params)
            rows = [("VI", *run_pyrovi(model, args, family, layout))]
            if not opts.skip_sgd:
                rows.append(("VI sgd", *run_pyrovi(model, args, family, layout, "sgd")))
            rows.append(("pyro", *run_pyro(model, args, family, layout, opts.steps)))
            if numpyro_ok:
                rows.append(("numpyro", *run_numpyro(npname, args, family, layout, opts.steps)))
            base = rows[0][2]
            peer = rows[-1][2] if numpyro_ok else float("nan")
            for method, q, wall, note in rows:
                elbo, _ = score(q)
                print(f"{pname:<9} {family:<9} {method:<9} {wall:8.2f} {wall / base:7.1f} "
                      f"{wall / peer:9.2f} {elbo:11.3f} {opt_elbo - elbo:9.3f}  {note}")
            print(f"{pname:<9} {family:<9} {'optimum':<9} {'':>8} {'':>7} {'':>9} "
                  f"{opt_elbo:11.3f} {0.0:9.3f}  DADVI M=4096, ELBO se {opt_se:.3f}")
            sys.stdout.flush()


if __name__ == "__main__":
    main()
