"""Factor analysis and probabilistic PCA with exact EM, next to scikit-learn.

Both models explain ``D`` observed variables by ``L < D`` Gaussian factors,
``x = W z + mu + noise`` with ``z ~ N(0, I)``; factor analysis gives each variable its own
noise variance, probabilistic PCA one shared variance.  The factors' posterior is Gaussian
and exact, so EM climbs the likelihood monotonically (``pyrovi.EM`` with the closed-form
``factor_analysis_model`` / ``ppca_model``; each iteration costs ``O(D^2 L)`` whatever the
number of rows).

The data are synthetic, with a known three-factor structure and noise that differs between
variables, so factor analysis recovers the per-variable noise and PPCA its average.  The
reference answers are scikit-learn's ``FactorAnalysis`` (its own SVD-based maximum
likelihood) and ``PCA``, whose ``score`` is the PPCA log-likelihood at Tipping & Bishop's
closed-form maximum - except that scikit-learn estimates the covariance with the divisor
``n - 1``, so its noise variance is ``n / (n - 1)`` times the maximum-likelihood one; the
script therefore also computes Tipping & Bishop's closed form with the divisor ``n``, which
EM reaches.  Loadings are identified only up to a rotation, so the comparison is on
the implied covariance ``W W^T + Psi``.

Run ``python examples/03_factor_analysis.py`` (a few seconds) or with ``--quick``.
"""

from __future__ import annotations

import sys

import numpy as np
import torch
from sklearn.decomposition import PCA, FactorAnalysis

import pyrovi
from pyrovi.em import factor_analysis_model, ppca_model

D, L = 10, 3


def load_data(n: int = 1000, seed: int = 0) -> tuple[torch.Tensor, dict]:
    """``n`` draws of a ``D``-variable, ``L``-factor model with unequal noise (float64)."""
    rng = np.random.default_rng(seed)
    W = rng.normal(size=(D, L))
    psi = rng.uniform(0.1, 1.0, size=D)
    mu = rng.normal(size=D)
    z = rng.normal(size=(n, L))
    x = z @ W.T + mu + rng.normal(size=(n, D)) * np.sqrt(psi)
    return torch.tensor(x), {"loading": W, "noise_variance": psi, "mean": mu}


def implied_cov(W: np.ndarray, psi) -> np.ndarray:
    """The model's covariance of x: ``W W^T + diag(psi)``."""
    return W @ W.T + np.diag(np.broadcast_to(psi, (W.shape[0],)))


def ppca_closed_form(x: np.ndarray, L: int) -> tuple[float, float, np.ndarray]:
    """Tipping & Bishop's (1999) maximum-likelihood PPCA: the average log-likelihood, the
    noise variance (mean of the discarded eigenvalues of the covariance with divisor n) and
    the implied covariance."""
    xc = x - x.mean(0)
    S = xc.T @ xc / x.shape[0]
    lam, U = np.linalg.eigh(S)
    lam, U = lam[::-1], U[:, ::-1]
    sigma2 = float(lam[L:].mean())
    C = (U[:, :L] * lam[:L]) @ U[:, :L].T + sigma2 * (np.eye(x.shape[1]) - U[:, :L] @ U[:, :L].T)
    mvn = torch.distributions.MultivariateNormal(torch.tensor(x.mean(0)), torch.tensor(C))
    return float(mvn.log_prob(torch.tensor(x)).mean()), sigma2, C


def main(quick: bool = False) -> dict:
    data, truth = load_data(n=500 if quick else 2000)
    x = data.numpy()
    n = x.shape[0]
    # tol=0 runs every iteration: EM's last digits come slowly (linear convergence), and an
    # iteration costs microseconds here
    iters = 2000 if quick else 10000
    tol = 0.0

    # ---- factor analysis
    fa = pyrovi.EM(factor_analysis_model(L), num_steps=iters, tol=tol, seed=0,
                   progress=False).run(data)
    sk_fa = FactorAnalysis(L, tol=1e-10, max_iter=10000, random_state=0).fit(x)
    fa_ll, sk_fa_ll = fa.log_evidence / n, float(sk_fa.score(x))
    fa_cov = implied_cov(fa.params["loading"].numpy(), fa.params["noise_variance"].numpy())
    sk_fa_cov = implied_cov(sk_fa.components_.T, sk_fa.noise_variance_)
    fa_cov_diff = float(np.abs(fa_cov - sk_fa_cov).max())
    monotone = bool(np.all(np.diff(fa.log_evidence_trace) >= -1e-8 * abs(fa.log_evidence)))
    print(f"Factor analysis, {n} rows, D={D}, L={L}")
    print(f"  average log-likelihood   pyrovi EM {fa_ll:.6f}   sklearn {sk_fa_ll:.6f}"
          f"   ({fa.num_steps} EM iterations, monotone: {monotone})")
    print(f"  largest |difference| of W W^T + Psi: {fa_cov_diff:.2e}")
    print("  noise variances  true   " + " ".join(f"{v:.2f}" for v in truth["noise_variance"]))
    print("                   pyrovi " + " ".join(
        f"{v:.2f}" for v in fa.params["noise_variance"].numpy()))
    print("                   sklearn " + " ".join(f"{v:.2f}" for v in sk_fa.noise_variance_))

    # ---- probabilistic PCA
    pp = pyrovi.EM(ppca_model(L), num_steps=iters, tol=tol, seed=0, progress=False).run(data)
    pca = PCA(L).fit(x)
    pp_ll, pca_ll = pp.log_evidence / n, float(pca.score(x))
    pp_sigma2 = float(pp.params["noise_variance"])
    pp_cov = implied_cov(pp.params["loading"].numpy(), pp_sigma2)
    cf_ll, cf_sigma2, cf_cov = ppca_closed_form(x, L)
    pp_cov_diff = float(np.abs(pp_cov - cf_cov).max())
    print("\nProbabilistic PCA")
    print(f"  average log-likelihood   pyrovi EM {pp_ll:.6f}   closed form {cf_ll:.6f}"
          f"   sklearn PCA {pca_ll:.6f}   ({pp.num_steps} EM iterations)")
    print(f"  noise variance           pyrovi EM {pp_sigma2:.6f}   closed form {cf_sigma2:.6f}"
          f"   sklearn PCA {pca.noise_variance_:.6f} = closed form x n/(n-1)")
    print(f"  (true average noise variance {truth['noise_variance'].mean():.3f})")
    print(f"  largest |difference| of W W^T + s^2 I, EM vs closed form: {pp_cov_diff:.2e}")
    print(f"\nFactor analysis fits {fa_ll - pp_ll:.3f} nats per row better than PPCA: the "
          "noise really differs between variables.")
    return {
        "fa_avg_loglik": fa_ll,
        "sklearn_fa_avg_loglik": sk_fa_ll,
        "fa_cov_max_abs_diff": fa_cov_diff,
        "fa_noise_variance": fa.params["noise_variance"].numpy(),
        "sklearn_fa_noise_variance": sk_fa.noise_variance_,
        "fa_monotone": monotone,
        "ppca_avg_loglik": pp_ll,
        "pca_avg_loglik": pca_ll,
        "ppca_closed_form_avg_loglik": cf_ll,
        "ppca_closed_form_noise_variance": cf_sigma2,
        "n": n,
        "ppca_noise_variance": pp_sigma2,
        "pca_noise_variance": float(pca.noise_variance_),
        "ppca_cov_max_abs_diff": pp_cov_diff,
    }


if __name__ == "__main__":
    main(quick="--quick" in sys.argv)
