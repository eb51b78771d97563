"""VI steps per second: pyrovi's compiled path against Pyro's SVI and NumPyro, one process.

Bayesian logistic regression (``w ~ N(0, I_D)``, ``b ~ N(0, 1)``, ``y ~ Bernoulli(logits =
X w + b)``) at N=1,000/D=10, N=100,000/D=100 and N=1,000,000/D=100, meanfield and fullrank,
Adam, the same number of particles per step for every contender:

* ``pyrovi-fast``: ``pyrovi.VI(backend="compiled")`` with compilation forced, timed on its
  own training loop (noise refill + compiled step; the once-per-window host read is left
  out, it is < 1%);
* ``pyrovi-svi``: ``pyrovi.VI(backend="svi")``, per step ``(T(n2) - T(n1)) / (n2 - n1)`` so
  that set-up and the final ELBO estimate cancel;
* ``pyro``: plain ``pyro.infer.SVI`` + ``Trace_ELBO`` + ``AutoNormal`` /
  ``AutoMultivariateNormal``, its ``step()`` timed directly;
* ``numpyro``: ``jax.jit(svi.update)`` in a subprocess of another interpreter
  (``--numpyro-python``; NumPyro is an optional extra) on the same data.

Warm-up (and compilation) is excluded, every figure is the median over ``--repeats`` timed
blocks, and the thread count is set (default 1, also for XLA) and printed.  A second table
gives the cost growth of the fullrank and lowrank families with D (a model whose likelihood
is negligible, so that the family's own cost shows): time per step and peak resident memory
(in a fresh subprocess per family, sizes increasing, so that the high-water mark belongs to
the largest D so far).

Usage::

    OMP_NUM_THREADS=1 python benchmarks/bench_vi.py [--quick] [--json out.json]
        [--numpyro-python /path/to/python]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import textwrap
import time
import warnings

THREADS_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def _set_thread_env(threads: int) -> None:
    for key in THREADS_ENV:
        os.environ[key] = str(threads)
    os.environ["XLA_FLAGS"] = (
        "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
        if threads == 1
        else os.environ.get("XLA_FLAGS", "")
    )


if __name__ == "__main__":  # before torch is imported, so that OpenMP sees it
    _threads = 1
    for _i, _a in enumerate(sys.argv):
        if _a == "--threads" and _i + 1 < len(sys.argv):
            _threads = int(sys.argv[_i + 1])
    _set_thread_env(_threads)

import numpy as np  # noqa: E402
import pyro  # noqa: E402
import pyro.distributions as dist  # noqa: E402
import torch  # noqa: E402

import pyrovi  # noqa: E402
import pyrovi.fast as fast  # noqa: E402
from pyrovi.fast import Outcome, run_steps  # noqa: E402

FULL_SIZES = [(1_000, 10), (100_000, 100), (1_000_000, 100)]
FAMILIES = ("meanfield", "fullrank")
GROWTH_DIMS = [10, 100, 500, 1000, 2000]


# ----------------------------------------------------------------------------- the model
def make_data(n: int, d: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Features and labels from numpy's generator (NumPyro regenerates the same ones)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d), dtype=np.float32)
    w = rng.standard_normal(d).astype(np.float32) / np.sqrt(d)
    y = (rng.random(n) < 1 / (1 + np.exp(-(x @ w)))).astype(np.float32)
    return x, y


def logistic(X, y):
    w = pyro.sample("w", dist.Normal(torch.zeros(X.shape[-1]), 1.0).to_event(1))
    b = pyro.sample("b", dist.Normal(0.0, 1.0))
    # one matmul for all particles: w has shape (D,) or (P, 1, D); logits (N,) or (P, N)
    logits = (w.reshape(-1, X.shape[-1]) @ X.T).reshape(w.shape[:-2] + (-1,)) + b
    with pyro.plate("data", X.shape[0]):
        pyro.sample("y", dist.Bernoulli(logits=logits), obs=y)


def gaussian(x):
    """D independent latents, each seen once: the likelihood costs O(D)."""
    z = pyro.sample("z", dist.Normal(torch.zeros(x.shape[-1]), 1.0).to_event(1))
    pyro.sample("x", dist.Normal(z, 1.0).to_event(1), obs=x)


# ------------------------------------------------------------------------- contenders
def _median_per_step(block, steps: int, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        block(steps)
        times.append((time.perf_counter() - start) / steps)
    return statistics.median(times)


def time_pyrovi_fast(
    model, args, family, *, particles, steps, repeats, warmup
) -> dict:
    """Per-step time of the compiled loop; compile time reported separately."""
    out: dict = {}

    def timed_train(plan, settings):
        start = time.perf_counter()
        plan.step.maybe_compile(0)
        run_steps(plan.state, plan.step, 1)
        out["compile_s"] = time.perf_counter() - start
        out["compiled"] = plan.step.compiled
        out["note"] = plan.step.note
        run_steps(plan.state, plan.step, warmup)
        out["step_s"] = _median_per_step(
            lambda n: run_steps(plan.state, plan.step, n), steps, repeats
        )
        plan.params.write(plan.state.theta)
        return Outcome(trace=tuple(plan.state.elbo[:1].tolist()), converged=False)

    saved_train, saved_env = fast.train, os.environ.get("PYROVI_COMPILE")
    fast.train = timed_train
    os.environ["PYROVI_COMPILE"] = "always"
    try:
        vi = pyrovi.VI(model, family, backend="compiled", num_particles=particles,
                       progress=False, seed=0, elbo_particles=2, num_steps=1)
        result = vi.run(*args)
    finally:
        fast.train = saved_train
        if saved_env is None:
            os.environ.pop("PYROVI_COMPILE", None)
        else:
            os.environ["PYROVI_COMPILE"] = saved_env
    assert result.backend == "compiled", result.notes
    return out


def time_pyrovi_svi(model, args, family, *, particles, steps, repeats, warmup) -> dict:
    def total(n):
        vi = pyrovi.VI(model, family, backend="svi", num_particles=particles, progress=False,
                       seed=0, elbo_particles=2, num_steps=n, window=n)
        start = time.perf_counter()
        vi.run(*args)
        return time.perf_counter() - start

    total(warmup)
    n1, n2 = warmup, warmup + steps
    samples = [(total(n2) - total(n1)) / steps for _ in range(repeats)]
    return {"step_s": statistics.median(samples)}


def time_pyro(model, args, family, *, particles, lr=0.05, steps, repeats, warmup) -> dict:
    from pyro.infer import SVI, Trace_ELBO
    from pyro.infer.autoguide import AutoMultivariateNormal, AutoNormal

    pyro.clear_param_store()
    guide = (AutoNormal if family == "meanfield" else AutoMultivariateNormal)(model)
    elbo = Trace_ELBO(num_particles=particles, vectorize_particles=particles > 1,
                      max_plate_nesting=1)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": lr}), elbo)
    for _ in range(warmup):
        svi.step(*args)

    def block(n):
        for _ in range(n):
            svi.step(*args)

    return {"step_s": _median_per_step(block, steps, repeats)}


NUMPYRO_SCRIPT = textwrap.dedent(
    """
    import json, sys, time, statistics
    import numpy as np
    import jax, jax.numpy as jnp
    import numpyro, numpyro.distributions as dist
    from numpyro.infer import SVI, Trace_ELBO
    from numpyro.infer.autoguide import AutoNormal, AutoMultivariateNormal
    cfg = json.loads(sys.argv[1])
    rng = np.random.default_rng(cfg["seed"])
    n, d = cfg["n"], cfg["d"]
    x = rng.standard_normal((n, d), dtype=np.float32)
    w = rng.standard_normal(d).astype(np.float32) / np.sqrt(d)
    y = (rng.random(n) < 1 / (1 + np.exp(-(x @ w)))).astype(np.float32)
    X, Y = jnp.asarray(x), jnp.asarray(y)
    def model(X, y):
        w = numpyro.sample("w", dist.Normal(jnp.zeros(X.shape[-1]), 1.0).to_event(1))
        b = numpyro.sample("b", dist.Normal(0.0, 1.0))
        with numpyro.plate("data", X.shape[0]):
            numpyro.sample("y", dist.Bernoulli(logits=X @ w + b), obs=y)
    guide = (AutoNormal if cfg["family"] == "meanfield" else AutoMultivariateNormal)(model)
    svi = SVI(model, guide, numpyro.optim.Adam(cfg["lr"]),
              Trace_ELBO(num_particles=cfg["particles"]))
    state = svi.init(jax.random.PRNGKey(0), X, Y)
    update = jax.jit(svi.update)
    t0 = time.perf_counter()
    state, loss = update(state, X, Y); loss.block_until_ready()
    compile_s = time.perf_counter() - t0
    for _ in range(cfg["warmup"]):
        state, loss = update(state, X, Y)
    loss.block_until_ready()
    times = []
    for _ in range(cfg["repeats"]):
        t0 = time.perf_counter()
        for _ in range(cfg["steps"]):
            state, loss = update(state, X, Y)
        loss.block_until_ready()
        times.append((time.perf_counter() - t0) / cfg["steps"])
    print(json.dumps({"step_s": statistics.median(times), "compile_s": compile_s,
                      "numpyro": numpyro.__version__, "jax": jax.__version__}))
    """
)


def _numpyro_python(python: str | None) -> str | None:
    """The interpreter that runs the NumPyro contender: ``python`` if given, else
    ``$PYROVI_NUMPYRO_PYTHON``, else this one when it has numpyro (the ``bench`` extra)."""
    import importlib.util

    if python:
        return python
    if os.environ.get("PYROVI_NUMPYRO_PYTHON"):
        return os.environ["PYROVI_NUMPYRO_PYTHON"]
    return sys.executable if importlib.util.find_spec("numpyro") else None


def time_numpyro(python, n, d, family, *, particles, steps, repeats, warmup) -> dict | None:
    python = _numpyro_python(python)
    if not python or not os.path.exists(python):
        return None
    cfg = dict(n=n, d=d, family=family, particles=particles, steps=steps, repeats=repeats,
               warmup=warmup, lr=0.05, seed=0)
    proc = subprocess.run([python, "-c", NUMPYRO_SCRIPT, json.dumps(cfg)],
                          capture_output=True, text=True, env=dict(os.environ), timeout=1800)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr else "failed"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------ growth
GROWTH_SCRIPT = textwrap.dedent(
    """
    import json, resource, sys, time
    sys.path.insert(0, {root!r})
    from benchmarks.bench_vi import growth_worker
    print(json.dumps(growth_worker(json.loads(sys.argv[1]))))
    """
)


def _rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def growth_worker(cfg: dict) -> list[dict]:
    """Time and peak memory of one family as D grows (run in a fresh process)."""
    torch.set_num_threads(cfg["threads"])
    rows = []
    base = _rss_mb()
    for d in cfg["dims"]:
        x = torch.randn(d)
        family = cfg["family"] if cfg["family"] != "lowrank" else f"lowrank:{cfg['rank']}"
        res = time_pyrovi_fast(gaussian, (x,), family, particles=cfg["particles"],
                               steps=cfg["steps"], repeats=cfg["repeats"], warmup=3)
        rows.append({"family": cfg["family"], "D": d, "step_s": res["step_s"],
                     "compile_s": res["compile_s"], "peak_rss_mb": _rss_mb(),
                     "baseline_rss_mb": base})
    return rows


def run_growth(family, dims, *, rank, particles, steps, repeats, threads) -> list[dict]:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cfg = dict(family=family, dims=dims, rank=rank, particles=particles, steps=steps,
               repeats=repeats, threads=threads)
    proc = subprocess.run(
        [sys.executable, "-c", GROWTH_SCRIPT.format(root=root), json.dumps(cfg)],
        capture_output=True, text=True, env=dict(os.environ), timeout=3600,
    )
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1] if proc.stderr else "failed"
        return [{"family": family, "error": tail}]
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------- run
def run(
    *,
    quick: bool = False,
    threads: int = 1,
    particles: int = 1,
    repeats: int = 5,
    numpyro_python: str | None = None,
    sizes: list | None = None,
    growth: bool = True,
) -> dict:
    """Run the benchmark; return a dict with the environment, the rows and the growth."""
    _set_thread_env(threads)
    torch.set_num_threads(threads)
    warnings.simplefilter("ignore")
    sizes = sizes or FULL_SIZES
    env = {
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "pyro": pyro.__version__,
        "pyrovi": pyrovi.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "particles": particles,
        "quick": quick,
    }
    rows = []
    for n, d in sizes:
        x, y = make_data(n, d)
        args = (torch.from_numpy(x), torch.from_numpy(y))
        big = n * d >= 10_000_000
        steps = (5 if quick else 10) if big else (50 if n * d >= 1_000_000 else 300)
        svi_steps = steps if big else min(steps, 200)
        warm = 2 if big else 20
        reps = 3 if (quick and big) else repeats
        for family in FAMILIES:
            row = {"N": n, "D": d, "family": family}
            kw = dict(particles=particles, repeats=reps, warmup=warm)
            row["pyrovi_fast"] = time_pyrovi_fast(logistic, args, family, steps=steps, **kw)
            row["pyro"] = time_pyro(logistic, args, family, steps=svi_steps, **kw)
            row["pyrovi_svi"] = time_pyrovi_svi(logistic, args, family, steps=svi_steps, **kw)
            row["numpyro"] = time_numpyro(numpyro_python, n, d, family, steps=steps, **kw)
            fast_s = row["pyrovi_fast"]["step_s"]
            row["speedup_vs_pyro"] = row["pyro"]["step_s"] / fast_s
            row["speedup_vs_pyrovi_svi"] = row["pyrovi_svi"]["step_s"] / fast_s
            if row["numpyro"] and "step_s" in row["numpyro"]:
                row["ratio_to_numpyro"] = fast_s / row["numpyro"]["step_s"]
            rows.append(row)
            _print_row(row)
            torch._dynamo.reset()  # drop compiled graphs (and the data they hold)
    growth_rows = []
    if growth:
        dims = GROWTH_DIMS
        for family in ("fullrank", "lowrank"):
            growth_rows += run_growth(family, dims, rank=10, particles=particles,
                                      steps=20 if quick else 50, repeats=3 if quick else 5,
                                      threads=threads)
        growth_rows += run_growth("lowrank", [100_000], rank=10, particles=particles,
                                  steps=5, repeats=3, threads=threads)
    return {"env": env, "rows": rows, "growth": growth_rows}


def _ms(value) -> str:
    return f"{1e3 * value:9.3f}" if value is not None else "        -"


def _print_row(row: dict) -> None:
    npy = row["numpyro"]["step_s"] if row["numpyro"] and "step_s" in row["numpyro"] else None
    print(
        f"{row['N']:>9,} {row['D']:>5} {row['family']:<9} {_ms(row['pyrovi_fast']['step_s'])}"
        f" {_ms(row['pyrovi_svi']['step_s'])} {_ms(row['pyro']['step_s'])} {_ms(npy)}"
        f" {row['speedup_vs_pyro']:8.1f}x {row.get('ratio_to_numpyro', float('nan')):8.2f}"
        f" {row['pyrovi_fast']['compile_s']:8.1f}",
        flush=True,
    )


HEADER = (
    "        N     D family    fast(ms)   svi(ms)  pyro(ms) numpyro(ms)  vs pyro  "
    "fast/npy compile(s)"
)


def print_report(report: dict) -> None:
    env = report["env"]
    print(f"threads={env['threads']} torch={env['torch']} pyro={env['pyro']} "
          f"particles={env['particles']} cpu_count={env['cpu_count']}")
    print(HEADER)
    for row in report["rows"]:
        _print_row(row)
    if report["growth"]:
        print("\nfamily cost growth (pyrovi fast path, model with O(D) likelihood)")
        print("family      D    step(ms)  compile(s)  peak RSS(MB)")
        for g in report["growth"]:
            if "error" in g:
                print(f"{g['family']:<9} error: {g['error']}")
                continue
            print(f"{g['family']:<9} {g['D']:>6} {_ms(g['step_s'])} {g['compile_s']:10.1f}"
                  f" {g['peak_rss_mb']:12.0f}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps and repeats")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--particles", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--numpyro-python", default=None,
                        help="an interpreter with numpyro and jax (skipped if absent)")
    parser.add_argument("--no-growth", action="store_true")
    parser.add_argument("--max-n", type=int, default=None, help="skip sizes with N above")
    parser.add_argument("--json", default=None, help="write the report here")
    opts = parser.parse_args(argv)
    sizes = [s for s in FULL_SIZES if opts.max_n is None or s[0] <= opts.max_n]
    print(HEADER, flush=True)
    report = run(quick=opts.quick, threads=opts.threads, particles=opts.particles,
                 repeats=opts.repeats, numpyro_python=opts.numpyro_python, sizes=sizes,
                 growth=not opts.no_growth)
    print()
    print_report(report)
    if opts.json:
        with open(opts.json, "w") as fh:
            json.dump(report, fh, indent=2)


if __name__ == "__main__":
    main()
