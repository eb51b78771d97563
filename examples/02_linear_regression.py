"""Bayesian linear regression on the diabetes data: the exact evidence and each guide's gap.

The model ``w ~ N(0, I)``, ``y ~ N(X w, 0.7^2)`` is linear-Gaussian, so its log evidence
``log p(y)`` is known exactly: pyrovi computes it (``pyrovi.log_evidence(...,
method="exact")``), and this script checks it against the textbook formula
``y ~ N(0, X X^T + 0.7^2 I)``.  Every guide family's ELBO is then a lower bound whose distance
to the evidence, the *gap*, is ``KL(q || p(w | y))``: ``pyrovi.compare`` tabulates it.

The diabetes features s1, s2 and s4 are strongly correlated, so the posterior of ``w`` is
too: the meanfield guide (independent coordinates) pays a gap of several nats, the low-rank
guide less, and the fullrank guide (and the Laplace approximation, exact here because the
posterior is Gaussian) close to none.

Run ``python examples/02_linear_regression.py`` (about a minute) or with ``--quick``.
"""

from __future__ import annotations

import sys

import torch

import pyrovi
from pyrovi.datasets import diabetes
from pyrovi.models import linear_regression

NOISE = 0.7  # linear_regression's default noise scale (prior scale 1)


def textbook_log_evidence(X: torch.Tensor, y: torch.Tensor, noise: float = NOISE) -> float:
    """``log N(y | 0, X X^T + noise^2 I)``: the marginal likelihood, by hand."""
    cov = X @ X.T + noise**2 * torch.eye(X.shape[0], dtype=X.dtype)
    return float(torch.distributions.MultivariateNormal(torch.zeros_like(y), cov).log_prob(y))


def main(quick: bool = False) -> dict:
    X, y = diabetes()
    exact = pyrovi.log_evidence(linear_regression, X, y, method="exact")
    by_hand = textbook_log_evidence(X, y)
    print(f"Diabetes data: {X.shape[0]} patients, {X.shape[1]} standardized features")
    print(f"  exact log evidence (pyrovi)   {exact.value:.4f}")
    print(f"  N(y | 0, X X^T + s^2 I)       {by_hand:.4f}")

    families = ["meanfield", "fullrank"] if quick else [
        "meanfield", "lowrank:2", "fullrank", "laplace"]
    steps = 600 if quick else 5000
    fits = {
        fam: pyrovi.VI(linear_regression, fam, num_steps=steps, seed=0, progress=False).run(X, y)
        for fam in families
    }
    table = pyrovi.compare(fits, num_particles=2000 if quick else 10_000, seed=0,
                           evidence=exact)
    print("\nEach guide family against the exact evidence (gap = KL(q || posterior)):")
    print(table)
    gaps = {row["name"]: row["gap"] for row in table.rows}
    gap_ses = {row["name"]: row["gap_se"] for row in table.rows}
    print("\n" + ", ".join(f"{k}: gap {v:.3f} nats" for k, v in gaps.items()))
    return {
        "log_evidence": exact.value,
        "log_evidence_textbook": by_hand,
        "elbo": {k: r.elbo for k, r in fits.items()},
        "gap": gaps,
        "gap_se": gap_ses,
        "converged": {k: r.converged for k, r in fits.items()},
    }


if __name__ == "__main__":
    main(quick="--quick" in sys.argv)
