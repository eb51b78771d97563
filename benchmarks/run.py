"""Run every pyrovi benchmark in one go and write their reports as JSON.

    python benchmarks/run.py [--quick] [--out bench-results.json]

Each benchmark compares pyrovi with a peer in the same process (Pyro's SVI and NumPyro for
VI, scikit-learn for mixture EM, Pyro's ``TraceEnum_ELBO`` step for EM on a user's HMM, Pyro's
vectorized importance weights for the diagnostics),
pins and prints its thread count, excludes warm-up and reports medians and ratios.  The
time-to-an-answer table (``bench_time_to_answer.py``: the default ``pyrovi.VI``, i.e. DADVI, against
``method="sgd"``, Pyro and NumPyro) is printed, not written to the JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench_em  # noqa: E402
import bench_em_models  # noqa: E402
import bench_time_to_answer  # noqa: E402
import bench_vi  # noqa: E402
import bench_weights  # noqa: E402


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, a few minutes")
    parser.add_argument("--out", default="bench-results.json")
    opts = parser.parse_args(argv)
    report = {}
    print("== VI: compiled fast path vs Pyro SVI vs NumPyro", flush=True)
    report["vi"] = bench_vi.run(quick=opts.quick, growth=not opts.quick)
    print("== Gaussian-mixture EM vs scikit-learn", flush=True)
    report["em"] = bench_em.run(
        n=200_000 if opts.quick else 1_000_000, iters=3 if opts.quick else 5,
        repeats=1 if opts.quick else 3,
    )
    bench_em._print(report["em"])
    print("== EM on models as users write them: derived M-step vs L-BFGS", flush=True)
    report["em_models"] = bench_em_models.run(
        iters=5 if opts.quick else 10, repeats=1 if opts.quick else 3,
        cap=60 if opts.quick else 300,
    )
    bench_em_models._print(report["em_models"])
    print("== importance-weight throughput", flush=True)
    report["weights"] = bench_weights.run(particles=1_000 if opts.quick else 10_000)
    print(json.dumps(report["weights"], indent=1, default=str))
    print("== time to an answer: pyrovi.VI (DADVI) vs method='sgd' vs Pyro vs NumPyro",
          flush=True)
    bench_time_to_answer.main(["--problems", "diabetes,logreg@,logreg"] if opts.quick else [])
    with open(opts.out, "w") as fh:
        json.dump(report, fh, indent=1, default=str)
    print(f"report written to {opts.out}")


if __name__ == "__main__":
    main()
