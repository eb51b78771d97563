"""Compute the NUTS references of the gallery once and store them in reference.json.

    PYTHONPATH=. python tests/gallery/make_reference.py [name ...]

Short chains of Pyro's NUTS (one chain, 300 warm-up steps, 600 draws, seed 0, jit-compiled except where noted) on the
gallery's models that have no closed form.  For every latent site it stores the posterior
mean and standard deviation per element, and the effective sample size, so the tests can
state their tolerances in Monte Carlo standard errors.  The tests only read the JSON.
"""

from __future__ import annotations

import json
import pathlib
import sys
import time

import pyro
import torch
from pyro.infer import MCMC, NUTS
from pyro.ops.stats import effective_sample_size

from tests.gallery import models as m

HERE = pathlib.Path(__file__).parent
WARMUP, SAMPLES = 300, 600


def targets():
    x, y = m.rugged_like_data()
    feats, counts = m.predictive_deterministic_data()
    return {
        # both eight-schools forms share this posterior (mu, tau; theta = mu + tau * eta)
        "eight_schools": (m.eight_schools_noncentered, (m.EIGHT_SIGMA, m.EIGHT_Y)),
        "baseball_partially_pooled": (m.partially_pooled, (m.BASEBALL_AT_BATS, m.BASEBALL_HITS)),
        "baseball_logit": (m.partially_pooled_with_logit, (m.BASEBALL_AT_BATS, m.BASEBALL_HITS)),
        "bayesian_regression": (m.BayesianRegression(3, 1), (x, y)),
        "lkj": (m.lkj_model, (m.lkj_data(),)),
        # the factor version has the same posterior
        "workflow": (m.workflow_model, (m.workflow_dataset(),)),
        "predictive_deterministic": (m.predictive_deterministic_model, (feats, counts)),
    }


def run(name, model, args):
    pyro.set_rng_seed(0)
    pyro.clear_param_store()
    t0 = time.time()
    # the workflow model mutates a tensor in place (time -= time.mean()), which the jit
    # trace mishandles (every transition diverged); it runs uncompiled
    jit = name not in ("workflow",)
    accept = 0.9 if name == "workflow" else 0.8
    kernel = NUTS(model, jit_compile=jit, ignore_jit_warnings=True, target_accept_prob=accept)
    mcmc = MCMC(kernel, num_samples=SAMPLES, warmup_steps=WARMUP, disable_progbar=True)
    mcmc.run(*args)
    samples = mcmc.get_samples()
    if name == "eight_schools":
        samples["theta"] = samples["mu"] + samples["tau"] * samples["eta"]
    out = {}
    for site, v in samples.items():
        v = v.double().reshape(SAMPLES, -1)
        ess = effective_sample_size(v.unsqueeze(0), chain_dim=0, sample_dim=1)
        out[site] = {
            "mean": v.mean(0).tolist(),
            "sd": v.std(0).tolist(),
            "ess": ess.tolist(),
        }
    div = int(sum(len(d) for d in mcmc.diagnostics()["divergences"].values()))
    out["_meta"] = {
        "warmup": WARMUP,
        "samples": SAMPLES,
        "seed": 0,
        "divergences": div,
        "seconds": round(time.time() - t0, 1),
    }
    print(name, out["_meta"], flush=True)
    return out


def main(names):
    torch.set_num_threads(1)
    path = HERE / "reference.json"
    ref = json.loads(path.read_text()) if path.exists() else {}
    ref["_about"] = __doc__.strip().splitlines()[0] + f" Pyro {pyro.__version__}."
    for name, (model, args) in targets().items():
        if names and name not in names:
            continue
        ref[name] = run(name, model, args)
        path.write_text(json.dumps(ref, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
