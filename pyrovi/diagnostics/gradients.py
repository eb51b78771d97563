"""Which gradient estimator Pyro's ELBO uses for each latent site of a fit.

A site the guide samples from a distribution with ``rsample`` gets pathwise
(reparameterized) gradients; one without gets score-function (REINFORCE) gradients, whose
variance is typically far higher; a finite discrete site the guide leaves out is summed
out exactly by enumeration.  This decides how noisy the fit's ELBO gradients were.
"""

from __future__ import annotations

import pyro.poutine as poutine
import torch

from pyrovi._result import FitResult

__all__ = ["gradient_estimators", "REPARAM", "SCORE", "ENUM", "EXACT"]

REPARAM = "reparameterized"
SCORE = "score-function"
ENUM = "enumerated (exact sum)"
EXACT = "none (exact posterior, no gradients)"


def gradient_estimators(result: FitResult) -> dict[str, str]:
    """Latent site -> the gradient estimator used for it in ``result``'s fit.

    A fit whose q is the exact posterior (EM) used no gradient estimator; a VI fit is
    read from one trace of its guide.
    """
    sites = tuple(result.latent_sites)
    if result.exact_posterior:  # EM: exact E-step
        return {k: EXACT for k in sites}
    enumerated = set(result.enumerated_sites)
    # one guide run, its draws thrown away: the caller's random state is left alone
    with torch.random.fork_rng(), result.scope(), torch.no_grad():
        trace = poutine.trace(result.guide).get_trace(*result.args, **result.kwargs)
    out = {}
    for name in sites:
        if name in enumerated:
            out[name] = ENUM
            continue
        site = trace.nodes.get(name)
        if site is None or site["type"] != "sample":
            out[name] = "not in guide"
            continue
        fn = site["fn"]
        reparam = fn.has_rsample and site["infer"].get("enumerate") is None
        out[name] = REPARAM if reparam else SCORE
    return out
