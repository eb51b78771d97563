"""Gaussian mixture: exact EM and a variational Bayesian mixture, next to scikit-learn.

Two ways to fit a three-component Gaussian mixture to the same 2-D clusters:

* **exact EM** (``pyrovi.EM`` with the closed-form ``gaussian_mixture_model``): maximum
  likelihood for the weights, means and full covariances, the assignments' posterior exact at
  every E-step.  It follows scikit-learn's update rules, so from a converged fit its average
  log-likelihood and component means agree with ``sklearn.mixture.GaussianMixture``'s to
  round-off.
* **variational Bayes** (``pyrovi.VI``): priors on the weights, means and scales, a meanfield
  guide over them, and the discrete assignments summed out exactly by enumeration (pyrovi
  finds them and enumerates them; no guide for them is written).  It is set next to
  ``sklearn.mixture.BayesianGaussianMixture``, whose priors differ, so the two agree on the
  component means only up to the prior's pull (small with 600 points).

Run ``python examples/01_gaussian_mixture.py`` (about a minute) or with ``--quick``.
"""

from __future__ import annotations

import sys

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro.ops.indexing import Vindex
from sklearn.datasets import make_blobs
from sklearn.mixture import BayesianGaussianMixture, GaussianMixture

import pyrovi
from pyrovi.em import gaussian_mixture_model

K = 3


def load_data(n: int = 600, seed: int = 0) -> torch.Tensor:
    """Three anisotropic, well-separated 2-D clusters (float64)."""
    x, _ = make_blobs(n_samples=n, centers=[[-4.0, 0.0], [0.0, 3.0], [4.0, -1.0]],
                      cluster_std=[1.0, 0.6, 1.3], random_state=seed)
    x = x @ np.array([[1.0, 0.3], [0.0, 1.0]])  # shear: full covariances matter
    return torch.tensor(x)


def vb_mixture(data: torch.Tensor, K: int = K):
    """Variational-Bayes Gaussian mixture with diagonal covariances.

    The component locations and scales are single ``(K, D)`` sites (no components plate) so
    that they broadcast against the data plate under pyrovi's vectorized particles; ``z`` is
    discrete and finite, so pyrovi enumerates it.
    """
    D = data.shape[-1]
    zeros = data.new_zeros(K, D)
    weights = pyro.sample("weights", dist.Dirichlet(data.new_ones(K)))
    locs = pyro.sample("locs", dist.Normal(zeros, 10.0).to_event(2))
    scales = pyro.sample("scales", dist.LogNormal(zeros, 1.0).to_event(2))
    with pyro.plate("data", data.shape[0]):
        z = pyro.sample("z", dist.Categorical(weights))
        pyro.sample("x", dist.Normal(Vindex(locs)[..., z, :], Vindex(scales)[..., z, :])
                    .to_event(1), obs=data)


def _order(means: np.ndarray) -> np.ndarray:
    """Component order by first coordinate, to match labels across fits."""
    return np.argsort(means[:, 0])


def _plugin_avg_loglik(data: np.ndarray, weights, means, sds) -> float:
    """Average log-likelihood of a diagonal mixture at point parameters."""
    x = torch.as_tensor(data)
    comp = dist.Normal(torch.as_tensor(means), torch.as_tensor(sds)).to_event(1)
    lp = comp.log_prob(x.unsqueeze(-2)) + torch.as_tensor(weights).log()
    return float(torch.logsumexp(lp, -1).mean())


def main(quick: bool = False) -> dict:
    data = load_data()
    x = data.numpy()
    n = x.shape[0]

    # ---- exact EM, full covariances, against sklearn's GaussianMixture
    em = pyrovi.EM(gaussian_mixture_model(K, covariance_type="full"), num_steps=500,
                   tol=1e-8, num_inits=1 if quick else 3, seed=0, progress=False).run(data)
    sk = GaussianMixture(K, covariance_type="full", tol=1e-8, max_iter=500,
                         n_init=1 if quick else 3, random_state=0).fit(x)
    em_means = em.params["means"].numpy()
    em_means, sk_means = em_means[_order(em_means)], sk.means_[_order(sk.means_)]
    em_ll, sk_ll = em.log_evidence / n, float(sk.score(x))
    print("Exact EM (full covariances) vs sklearn GaussianMixture")
    print(f"  average log-likelihood   pyrovi {em_ll:.6f}   sklearn {sk_ll:.6f}"
          f"   ({em.num_steps} vs {sk.n_iter_} iterations)")
    for k in range(K):
        print(f"  mean {k}: pyrovi {np.array2string(em_means[k], precision=4)}"
              f"   sklearn {np.array2string(sk_means[k], precision=4)}")
    means_diff = float(np.abs(em_means - sk_means).max())
    print(f"  largest |mean difference|: {means_diff:.2e}")

    # ---- variational Bayes, diagonal covariances, against BayesianGaussianMixture
    steps = 500 if quick else 3000
    vb = pyrovi.VI(vb_mixture, "meanfield", num_steps=steps, lr=0.05, seed=0,
                   progress=False).run(data)
    post = vb.median()
    vb_w, vb_m, vb_s = (post[k].numpy() for k in ("weights", "locs", "scales"))
    order = _order(vb_m)
    vb_w, vb_m, vb_s = vb_w[order], vb_m[order], vb_s[order]
    bgm = BayesianGaussianMixture(n_components=K, covariance_type="diag", max_iter=1000,
                                  tol=1e-6, random_state=0).fit(x)
    order = _order(bgm.means_)
    bgm_w, bgm_m = bgm.weights_[order], bgm.means_[order]
    bgm_s = np.sqrt(bgm.covariances_[order])
    vb_ll = _plugin_avg_loglik(x, vb_w, vb_m, vb_s)
    bgm_ll = _plugin_avg_loglik(x, bgm_w, bgm_m, bgm_s)
    print("\nVariational Bayes (enumerated assignments, diagonal) vs BayesianGaussianMixture")
    print(f"  pyrovi ELBO {vb.elbo:.2f} ± {vb.elbo_se:.2f} after {vb.num_steps} steps;"
          f" enumerated sites: {vb.enumerated_sites}")
    print(f"  average log-likelihood at the posterior median   pyrovi {vb_ll:.4f}"
          f"   sklearn (posterior mean) {bgm_ll:.4f}")
    for k in range(K):
        print(f"  component {k}: weight {vb_w[k]:.3f} / {bgm_w[k]:.3f}   mean "
              f"{np.array2string(vb_m[k], precision=3)} / "
              f"{np.array2string(bgm_m[k], precision=3)}")
    vb_diff = float(np.abs(vb_m - bgm_m).max())
    print(f"  largest |mean difference| pyrovi vs sklearn: {vb_diff:.3f}")
    return {
        "em_avg_loglik": em_ll,
        "sklearn_avg_loglik": sk_ll,
        "em_means": em_means,
        "sklearn_means": sk_means,
        "em_means_max_abs_diff": means_diff,
        "vb_elbo": vb.elbo,
        "vb_avg_loglik": vb_ll,
        "bgm_avg_loglik": bgm_ll,
        "vb_means": vb_m,
        "bgm_means": bgm_m,
        "vb_means_max_abs_diff": vb_diff,
        "vb_weights": vb_w,
        "bgm_weights": bgm_w,
    }


if __name__ == "__main__":
    main(quick="--quick" in sys.argv)
