"""Reference values for the bracket and error-bound checks on simulated data: the log
evidence and the posterior means and sds by quadrature, exact to well below the Monte Carlo
errors they are compared with.

* Eight schools (non-centred): given tau, the school effects and mu integrate out in closed
  form (``y | tau ~ N(0, diag(tau^2 + sigma^2) + 25 * 1 1^T)``; ``mu | tau, y`` and
  ``eta_j | mu, tau, y`` Gaussian), so the evidence and every posterior moment are
  one-dimensional integrals over ``log tau`` (trapezoid rule).
* Logistic regression with D = 3: a product grid in the coordinates whitened by the
  Laplace approximation (rectangle rule, spectrally accurate for a smooth, light-tailed
  integrand).

``references_nuts.py`` checks these against Pyro's NUTS (stored in
``references_nuts.json``).
"""

import math

import pyro
import pyro.distributions as dist
import torch

F64 = torch.float64
SIGMA = torch.tensor([15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0], dtype=F64)


def logistic(X, y=None):
    """w ~ N(0, I), y_i ~ Bernoulli(sigmoid(x_i . w))."""
    w = pyro.sample("w", dist.Normal(torch.zeros(X.shape[1], dtype=X.dtype), 1.0).to_event(1))
    with pyro.plate("data", X.shape[0]):
        pyro.sample("y", dist.Bernoulli(logits=(X * w).sum(-1)), obs=y)


def logistic_design(n=100, d=3, seed=0):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=F64)


def _logistic_log_joint(X, y, w):
    logits = w @ X.T
    ll = (y * logits - torch.nn.functional.softplus(logits)).sum(-1)
    return ll - 0.5 * w.square().sum(-1) - 0.5 * w.shape[-1] * math.log(2 * math.pi)


def logistic_reference(X, y, h=0.2, half_width=7.0, chunk=20_000):
    """``(log p(y), posterior mean of w, posterior sd of w)`` by a grid of spacing ``h``
    over ``+-half_width`` Laplace standard deviations."""
    D = X.shape[1]
    w = torch.zeros(D, dtype=F64)
    for _ in range(50):  # Newton's method to the mode
        p = torch.sigmoid(X @ w)
        H = X.T @ (X * (p * (1 - p)).unsqueeze(-1)) + torch.eye(D, dtype=F64)
        w = w + torch.linalg.solve(H, X.T @ (y - p) - w)
    L = torch.linalg.cholesky(torch.linalg.inv(H))
    axis = torch.arange(-half_width, half_width + h / 2, h, dtype=F64)
    u = w + torch.cartesian_prod(*([axis] * D)) @ L.T
    lp = torch.cat([_logistic_log_joint(X, y, u[i:i + chunk])
                    for i in range(0, u.shape[0], chunk)])
    log_z = torch.logsumexp(lp, 0) + D * math.log(h) + L.diagonal().log().sum()
    p = torch.softmax(lp, 0).unsqueeze(-1)
    mean = (p * u).sum(0)
    return float(log_z), mean, (p * (u - mean).square()).sum(0).sqrt()


def schools_reference(y, sigma=SIGMA, n=8001, lo=-25.0, hi=15.0):
    """``(log p(y), {site: (posterior mean, posterior sd)})`` for ``mu``, ``tau`` and
    ``eta`` of :func:`pyrovi.models.eight_schools_noncentered`."""
    s = torch.linspace(lo, hi, n, dtype=F64)
    tau = s.exp()
    V = tau.unsqueeze(-1) ** 2 + sigma**2
    J = sigma.shape[0]
    cov = torch.diag_embed(V) + 25.0 * torch.ones(J, J, dtype=F64)
    log_lik = dist.MultivariateNormal(torch.zeros(J, dtype=F64), cov).log_prob(y)
    log_prior = math.log(2 / (math.pi * 5)) - torch.log1p((tau / 5) ** 2)
    trapezoid = torch.ones_like(s)
    trapezoid[0] = trapezoid[-1] = 0.5
    log_w = log_lik + log_prior + s + trapezoid.log()  # d tau = tau ds
    log_z = float(torch.logsumexp(log_w, 0) + math.log(float(s[1] - s[0])))
    p = torch.softmax(log_w, 0)
    P = 1 / 25.0 + (1 / V).sum(-1)  # mu | tau, y ~ N(m, 1 / P)
    m = (y / V).sum(-1) / P
    A = 1 + tau.unsqueeze(-1) ** 2 / sigma**2  # eta_j | mu, tau, y: precision A_j
    c = tau.unsqueeze(-1) / (sigma**2 * A)  # and mean c_j (y_j - mu)
    e_eta = c * (y - m.unsqueeze(-1))
    v_eta = 1 / A + c**2 / P.unsqueeze(-1)

    def mix(e, v):
        w = p.reshape(-1, *([1] * (e.dim() - 1)))
        mean = (w * e).sum(0)
        return mean, ((w * (v + e**2)).sum(0) - mean**2).sqrt()

    return log_z, {"mu": mix(m, 1 / P), "tau": mix(tau, torch.zeros_like(tau)),
                   "eta": mix(e_eta, v_eta)}
