"""Time to an answer: DADVI against pyrovi's default VI, Pyro's SVI and NumPyro's SVI.

Problems: Bayesian linear regression with known noise on the diabetes data (D=10, the
posterior is Gaussian) and eight schools, non-centred (D=10, a funnel-ish non-Gaussian
posterior); families meanfield and fullrank.  Contenders:

* ``dadvi``: :func:`pyrovi.fast.dadvi.fit_dadvi` with its defaults (L-BFGS, moment-matched
  fixed draws, the fresh-draw check), timed from the model: tracing its log density
  included;
* ``pyrovi.VI``: ``pyrovi.VI(model, family, seed=0, progress=False).run(...)``, today's
  default (Adam, 8 particles, plateau schedule; its final ELBO estimate included);
* ``pyro``: ``pyro.infer.SVI``, ``Trace_ELBO`` with 1 particle, ``Adam(0.01)``, 5,000 steps,
  ``AutoNormal`` / ``AutoMultivariateNormal``;
* ``numpyro``: NumPyro's ``SVI.run`` (jitted loop; compilation included), same settings,
  when NumPyro is importable.

Every fit is scored by ONE evaluator: the family's ELBO (nats) at the fit's parameters on
the same 10,000 fresh standard-normal draws (common random numbers, float64), computed from
pyrovi's traced log density.  The family's optimum is found once by a long DADVI run with
4,096 fixed draws and scored the same way; ``gap`` is optimum minus fit (paired draws, so
its noise is far below the ELBO's own standard error).  Each library is warmed up once on a
tiny problem first (imports, first-call costs); every cell is one timed run.  torch and XLA
run on 1 thread.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/bench_time.py [--steps 5000] [--skip-vi]
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


def problems():
    X, y = datasets.diabetes()
    ys, sigma = datasets.eight_schools()
    return {
        "diabetes": (models.linear_regression, (X, y), "linreg"),
        "8schools": (models.eight_schools_noncentered, (sigma, ys), "schools"),
    }


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


def run_dadvi(model, args, family):
    t = time.perf_counter()
    log_density, layout = model_log_density(model, args)
    out = fit_dadvi(log_density, layout.dim, family, seed=0)
    wall = time.perf_counter() - t
    note = f"M={out.num_draws} it={out.num_iters} ev={out.num_evals} " + (
        "check ok" if out.check_passed else "CHECK FAILED"
    )
    return out.params, wall, note


def run_pyrovi(model, args, family, layout):
    t = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = pyrovi.VI(model, family, seed=0, progress=False).run(*args)
    wall = time.perf_counter() - t
    q = _from_store(family, layout, _getter(result.params))
    return q, wall, f"{result.num_steps} steps, {result.backend}"


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

    return {"linreg": linreg, "schools": schools}


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


def warm_up(numpyro_ok: bool, skip_vi: bool) -> None:
    """Imports and first-call costs of every library, on a tiny problem."""
    x = torch.randn(20, 2, dtype=F64)
    y = x.sum(-1)
    for family in FAMILIES:
        run_dadvi(models.linear_regression, (x, y), family)
        _, layout = model_log_density(models.linear_regression, (x, y))
        run_pyro(models.linear_regression, (x, y), family, layout, 10)
        if numpyro_ok:
            run_numpyro("linreg", (x, y), family, layout, 10)
    if not skip_vi:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pyrovi.VI(models.linear_regression, "meanfield", seed=0, progress=False,
                      num_steps=200).run(x, y)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5000, help="Pyro / NumPyro SVI steps")
    parser.add_argument("--skip-vi", action="store_true", help="leave out pyrovi.VI")
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
    warm_up(numpyro_ok, opts.skip_vi)

    header = f"{'problem':<9} {'family':<9} {'method':<9} {'wall s':>8} {'x dadvi':>8} " \
             f"{'ELBO':>11} {'gap nats':>9}  notes"
    print(header)
    print("-" * len(header))
    for pname, (model, args, npname) in problems().items():
        log_density, layout = model_log_density(model, args)
        for family in FAMILIES:
            gen = torch.Generator().manual_seed(12345)
            eps = torch.randn(opts.eval_draws, layout.dim, generator=gen, dtype=F64)

            def score(q, family=family, eps=eps, log_density=log_density):
                return elbo_fresh(log_density, family, q, eps=eps)

            best = fit_dadvi(log_density, layout.dim, family, num_draws=4096, max_draws=4096,
                             num_fresh=0, seed=1)
            opt_elbo, opt_se = score(best.params)
            rows = [("dadvi", *run_dadvi(model, args, family))]
            if not opts.skip_vi:
                rows.append(("pyrovi.VI", *run_pyrovi(model, args, family, layout)))
            rows.append(("pyro", *run_pyro(model, args, family, layout, opts.steps)))
            if numpyro_ok:
                rows.append(("numpyro", *run_numpyro(npname, args, family, layout, opts.steps)))
            base = rows[0][2]
            for method, q, wall, note in rows:
                elbo, _ = score(q)
                print(f"{pname:<9} {family:<9} {method:<9} {wall:8.2f} {wall / base:8.1f} "
                      f"{elbo:11.3f} {opt_elbo - elbo:9.3f}  {note}")
            print(f"{pname:<9} {family:<9} {'optimum':<9} {'':>8} {'':>8} {opt_elbo:11.3f} "
                  f"{0.0:9.3f}  DADVI M=4096, ELBO se {opt_se:.3f}")
            sys.stdout.flush()


if __name__ == "__main__":
    main()
