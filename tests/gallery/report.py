"""The gallery as a table: model, features, families, reference, largest disagreement, time.

    GALLERY_RECORD=/tmp/record.jsonl pytest -q tests/gallery --durations=0 > /tmp/durations.txt
    PYTHONPATH=. python tests/gallery/report.py /tmp/record.jsonl /tmp/durations.txt

The first file holds every disagreement the checks measured (``record`` in
``test_gallery.py``), the second pytest's ``--durations=0`` output; the table sums the
durations of each case's tests (its fits, checks and workflow) and shows, per kind of
check, the largest disagreement recorded.  Nothing here is asserted: the tests do that.
"""

from __future__ import annotations

import collections
import json
import re
import sys

from tests.gallery.test_gallery import CASES

# case -> (Pyro source, features exercised, reference)
ABOUT = {
    "coin": ("mle_map / svi_part_i", "vectorized plate, Beta latent, user guide (Beta), MAP", "closed form Beta(16, 14)"),
    "coin_sequential_plate": ("svi_part_ii", "sequential plate", "closed form"),
    "coin_subsample": ("svi_part_ii", "subsample_size", "closed form (posterior, lp, evidence)"),
    "coin_obs_mask": ("mle_map, adapted", "obs_mask (missing flips enumerated)", "closed form"),
    "coin_latent_named_chain": ("mle_map, adapted", "a latent named chain", "closed form"),
    "coin_param_in_model": ("mle_map, adapted", "constrained pyro.param next to a latent", "closed form at the fitted a"),
    "coin_model_mle": ("mle_map", "pyro.param only, empty guide", "closed form (MLE 0.6)"),
    "eight_schools_noncentered": ("examples/eight_schools", "poutine.condition, batched latent outside a plate, HalfCauchy", "NUTS"),
    "eight_schools_centered": ("examples/eight_schools", "funnel, batched latent", "NUTS"),
    "baseball_partially_pooled": ("examples/baseball.py", "Beta, Pareto, Uniform latents, Binomial", "NUTS"),
    "baseball_logit": ("examples/baseball.py", "HalfCauchy, logits", "NUTS"),
    "sparse_gamma_def": ("examples/sparse_gamma_def.py", "Gamma latents, to_event, nested layers, user guide", "Pyro's Trace_ELBO"),
    "hmm_model_1": ("examples/hmm.py", "Dirichlet/Beta, config_enumerate, pyro.markov, poutine.mask, to_event", "brute-force enumeration"),
    "hmm_model_1_subsampled": ("examples/hmm.py", "the same with batch_size (subsample)", "brute-force enumeration"),
    "cjs_model_1": ("examples/capture_recapture/cjs.py", "pyro.markov, enumeration, mask, Uniform latents", "800 x 800 grid"),
    "toy_mixture": ("examples/toy_mixture_model_discrete_enumeration.py", "enumeration, Vindex, user Beta guide", "enumeration of 2^8"),
    "gmm_tutorial": ("gmm.ipynb", "config_enumerate, Dirichlet, LogNormal, AutoDelta MAP", "brute-force enumeration"),
    "bayesian_regression": ("bayesian_regression.ipynb", "PyroModule, PyroSample, AutoGuide class", "NUTS"),
    "regression_known_noise": ("bayesian_regression.ipynb, adapted", "x @ w (no particle broadcast)", "closed form"),
    "vae": ("vae.ipynb", "pyro.module, amortized guide, to_event", "Pyro's Trace_ELBO"),
    "lkj": ("examples/lkj.py", "LKJCholesky, HalfCauchy", "NUTS (or refused naming theta)"),
    "workflow_deterministic": ("workflow.ipynb", "nested plates, pyro.deterministic in a plate", "NUTS"),
    "workflow_factor": ("workflow.ipynb", "pyro.factor, pyro.deterministic", "NUTS"),
    "predictive_deterministic": ("predictive_deterministic.ipynb", "pyro.deterministic outside plates, GammaPoisson", "NUTS"),
    "branching_site_set": ("adapted", "site set that depends on a latent", "quadrature"),
}

# the kind of a recorded check, from its name, and how to show it
KINDS = [
    (r"mean/sd$", "means {:.2f} sd"),
    (r"sd_rel$", "sds {:.0%}"),
    (r"(lp_vs_bruteforce|lp_vs_exact)$", "lp {:.1e} nats"),
    (r"elbo_vs_pyro$", "ELBO vs Pyro {:.3f} nats"),
    (r"(evidence_error|importance_evidence_error|log_evidence_vs_bruteforce|elbo_vs_bruteforce)$",
     "evidence {:.1e} nats"),
    (r"(mode|mle|locs|f_map|alpha_beta_rel)$", "point {:.3f}"),
]


def main(record_path: str, durations_path: str) -> str:
    worst: dict = collections.defaultdict(dict)
    with open(record_path) as f:
        for line in f:
            row = json.loads(line)
            for pattern, fmt in KINDS:
                if re.search(pattern, row["check"]):
                    value = abs(row["value"])
                    if value >= worst[row["case"]].get(fmt, -1.0):
                        worst[row["case"]][fmt] = value
                    break
    seconds: dict = collections.Counter()
    with open(durations_path) as f:
        for line in f:
            hit = re.match(r"\s*([\d.]+)s (?:call|setup|teardown)\s+\S+::test_\w+\[([^\]-]+)", line)
            if hit:
                seconds[hit.group(2)] += float(hit.group(1))
    out = ["| model | Pyro source | features exercised | families run | reference | "
           "largest disagreement | time (s) |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, c in CASES.items():
        source, features, reference = ABOUT.get(name, ("", "", ""))
        shown = "; ".join(fmt.format(v) for fmt, v in worst.get(name, {}).items()) or "-"
        families = ", ".join(c.families)
        out.append(f"| {name} | {source} | {features} | {families} | {reference} | {shown} | "
                   f"{seconds.get(name, 0.0):.0f} |")
    return "\n".join(out)


if __name__ == "__main__":
    print(main(*sys.argv[1:3]))
