"""Writes ``references_nuts.json``: Pyro NUTS posterior means, sds and effective sample sizes
for the simulated data sets of ``test_bounds_simulated.py``, against which
``references.py``'s quadrature is checked.  Run from the repository root:

    PYTHONPATH=. OMP_NUM_THREADS=1 python tests/diagnostics/references_nuts.py

(about 8 minutes on one core; plain JSON, read with ``json.load``).
"""

import json
import os
import sys

import pyro
import torch
from pyro.infer import MCMC, NUTS
from pyro.infer.mcmc.util import summary

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from pyrovi.diagnostics import simulate  # noqa: E402
from pyrovi.models import eight_schools_noncentered  # noqa: E402
from tests.diagnostics.references import F64, SIGMA, logistic, logistic_design  # noqa: E402

#: (name, model, arguments without data, data site, simulation seeds)
CASES = (
    ("eight_schools", eight_schools_noncentered, (SIGMA,), (1,)),
    ("logistic", logistic, (logistic_design(),), (1,)),
)
NUM_SAMPLES, WARMUP = 2000, 500


def main(path):
    torch.set_num_threads(1)
    torch.set_default_dtype(F64)
    out = {"num_samples": NUM_SAMPLES, "warmup": WARMUP, "cases": {}}
    for name, model, args, seeds in CASES:
        n = args[0].shape[0]
        for seed in seeds:
            _, data = simulate(model, *args, torch.zeros(n, dtype=F64), seed=seed)
            (y,) = data.values()
            pyro.set_rng_seed(seed)
            mcmc = MCMC(NUTS(model), num_samples=NUM_SAMPLES, warmup_steps=WARMUP,
                        disable_progbar=True)
            mcmc.run(*args, y)
            stats = summary(mcmc.get_samples(group_by_chain=True), prob=0.9)
            out["cases"][f"{name}/{seed}"] = {
                site: {k: torch.as_tensor(s[k]).reshape(-1).tolist()
                       for k in ("mean", "std", "n_eff")}
                for site, s in stats.items()
            }
            print(name, seed, flush=True)
    with open(path, "w") as fh:
        json.dump(out, fh, indent=1)


if __name__ == "__main__":
    main(os.path.join(os.path.dirname(os.path.abspath(__file__)), "references_nuts.json"))
