r"""Factor analysis and probabilistic PCA with closed-form EM.

The model, written in Pyro::

    loading W ~ param (D, L),  mean ~ param (D,),  noise_variance ~ param (D,) or ()
    for n in plate("data", N):
        z[n] ~ Normal(0, I_L)
        obs[n] ~ Normal(W z[n] + mean, diag(noise_variance))

The posterior of every ``z[n]`` is Gaussian with the shared covariance
:math:`G = (I + W^\top \Psi^{-1} W)^{-1}` and mean :math:`G W^\top \Psi^{-1}(x_n - \mu)`, and
every quantity EM needs is a function of the sample covariance ``S`` (computed once), so an
iteration costs :math:`O(D^2 L)` whatever ``N`` (Rubin & Thayer 1982; Tipping & Bishop 1999
for the isotropic case).  The mean's maximum-likelihood value is the sample mean for any
``W`` and :math:`\Psi`, so it is set to it at initialisation and stays there.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints

from pyrovi.em.closed_form import ClosedFormModel
from pyrovi.em.posterior import GaussianPosterior

__all__ = ["FactorAnalysisModel", "factor_analysis_model", "ppca_model"]

#: With fewer observations than features, the noise variances are floored at this fraction
#: of the mean sample variance (or ``min_noise``, if larger).
RELATIVE_FLOOR = 1e-6


class _FAData(NamedTuple):
    x: torch.Tensor
    mean: torch.Tensor
    cov: torch.Tensor  # biased sample covariance (divided by N)
    floor: float  # the floor of the noise variances on these data


class _FAStats(NamedTuple):
    B: torch.Tensor  # (L, D): E[z | x] = B (x - mean)
    G: torch.Tensor  # (L, L): posterior covariance
    mean: torch.Tensor  # the mean the statistics were computed at


class FactorAnalysisModel(ClosedFormModel):
    """Factor analysis (diagonal noise) or probabilistic PCA (isotropic noise).

    Build it with :func:`factor_analysis_model` or :func:`ppca_model`.  Calling it with data
    of shape ``(N, D)`` runs the Pyro model (latent ``"z"`` of shape ``(N, L)``, observed
    ``"obs"``; params ``"loading"`` ``(D, L)``, ``"mean"`` ``(D,)``, ``"noise_variance"``
    ``(D,)`` or ``()``).
    """

    latent_site = "z"
    max_plate_nesting = 1

    def __init__(self, n_components: int, noise: str = "diagonal", min_noise: float = 1e-12):
        if isinstance(n_components, bool) or not isinstance(n_components, int) or (
            n_components < 1
        ):
            raise ValueError(f"n_components must be a positive int, got {n_components!r}")
        if noise not in ("diagonal", "isotropic"):
            raise ValueError(f"noise must be 'diagonal' or 'isotropic', got {noise!r}")
        self.n_components = n_components
        self.noise = noise
        self.min_noise = float(min_noise)
        kind = "ppca_model" if noise == "isotropic" else "factor_analysis_model"
        self.__name__ = self.__qualname__ = f"{kind}({n_components})"

    def checkpoint_state(self) -> dict:
        """The constructor's arguments, as a checkpoint stores them."""
        return {"n_components": self.n_components, "noise": self.noise,
                "min_noise": self.min_noise}

    @classmethod
    def from_checkpoint_state(cls, state: dict) -> FactorAnalysisModel:
        """The model a checkpoint stored with :meth:`checkpoint_state`."""
        return cls(**state)

    @property
    def param_constraints(self) -> dict:
        return {
            "loading": constraints.real,
            "mean": constraints.real,
            "noise_variance": constraints.positive,
        }

    def __call__(self, data: torch.Tensor) -> None:
        init = self.lazy_inits(data)

        L, D = self.n_components, data.shape[-1]
        loading = pyro.param("loading", init("loading"))
        mean = pyro.param("mean", init("mean"))
        noise = pyro.param(
            "noise_variance", init("noise_variance"), constraint=constraints.positive
        )
        with pyro.plate("data", data.shape[0]):
            z = pyro.sample("z", dist.Normal(data.new_zeros(L), 1.0).to_event(1))
            loc = z @ loading.T + mean
            scale = noise.sqrt().expand(D)
            pyro.sample("obs", dist.Normal(loc, scale).to_event(1), obs=data)

    def prepare(self, data: torch.Tensor) -> _FAData:
        if not isinstance(data, torch.Tensor) or data.dim() != 2:
            shape = tuple(data.shape) if isinstance(data, torch.Tensor) else type(data).__name__
            raise ValueError(
                f"data must be a 2-D tensor of shape (n_samples, n_features), got {shape}"
            )
        if data.shape[1] <= self.n_components:
            raise ValueError(
                f"n_components={self.n_components} must be below the number of features "
                f"{data.shape[1]}"
            )
        if data.shape[0] - 1 <= self.n_components:
            raise ValueError(
                f"data has {data.shape[0]} rows but n_components={self.n_components}: with "
                "n_components >= N - 1 the model reproduces the centred data exactly, the "
                "noise variances go to zero and the likelihood has no maximum. Use "
                f"n_components <= {max(data.shape[0] - 2, 0)} or more observations."
            )
        x = data if data.is_floating_point() else data.double()
        mean = x.mean(0)
        xc = x - mean
        cov = xc.T @ xc / x.shape[0]
        floor = self.min_noise
        if x.shape[0] <= x.shape[1]:
            # fewer observations than features: the sample covariance is singular, the
            # likelihood grows without bound as noise variances go to zero, and a floor of
            # 1e-12 leaves M = I + W^T Psi^-1 W too ill-conditioned for a monotone EM.  A
            # floor relative to the data's scale keeps the maximum finite and EM monotone.
            floor = max(floor, RELATIVE_FLOOR * float(cov.diagonal().mean().clamp_min(0)))
        return _FAData(x=x, mean=mean, cov=cov, floor=floor)

    def num_obs(self, data: _FAData) -> int:
        return int(data.x.shape[0])

    def init_params(self, data: _FAData) -> dict:
        """Sample mean, noise = sample variances, small random loadings."""
        D, L = data.cov.shape[0], self.n_components
        var = data.cov.diagonal().clamp_min(data.floor)
        loading = torch.randn(D, L, dtype=var.dtype, device=var.device) * (
            0.5 * var.sqrt().unsqueeze(1) / math.sqrt(L)
        )
        noise = var.clone() if self.noise == "diagonal" else var.mean()
        return {"loading": loading, "mean": data.mean.clone(), "noise_variance": noise}

    def _stats(self, params: dict, D: int) -> tuple[torch.Tensor, ...]:
        W, psi = params["loading"], params["noise_variance"].expand(D)
        L = W.shape[1]
        wt_pinv = W.T / psi  # (L, D)
        M = torch.eye(L, dtype=W.dtype, device=W.device) + wt_pinv @ W
        chol = torch.linalg.cholesky(M)
        G = torch.cholesky_inverse(chol)
        return psi, wt_pinv, chol, G

    def e_step(self, data: _FAData, params: dict) -> tuple[float, _FAStats]:
        """Exact log-likelihood (matrix determinant lemma + Woodbury) and posterior moments."""
        N, D = data.x.shape[0], data.cov.shape[0]
        psi, wt_pinv, chol, G = self._stats(params, D)
        delta = data.mean - params["mean"]
        S = data.cov + torch.outer(delta, delta)
        log_det = psi.log().sum() + 2 * chol.diagonal().log().sum()
        A = wt_pinv @ S @ wt_pinv.T
        trace = (S.diagonal() / psi).sum() - (G * A).sum()
        ll = -0.5 * N * (D * math.log(2 * math.pi) + log_det + trace)
        return float(ll), _FAStats(B=G @ wt_pinv, G=G, mean=params["mean"])

    def m_step(self, data: _FAData, stats: _FAStats) -> dict:
        """Loadings and noise variances from the posterior moments (mean = sample mean)."""
        S = data.cov
        SB = S @ stats.B.T  # (D, L): average x E[z]^T
        Ezz = stats.G + stats.B @ SB  # (L, L): average E[z z^T]
        W = torch.linalg.solve(Ezz, SB.T).T
        psi = S.diagonal() - (W * SB).sum(1)
        if self.noise == "isotropic":
            psi = psi.mean()  # the maximiser, then the floor: the constrained maximiser
        psi = psi.clamp_min(data.floor)
        return {"loading": W, "mean": data.mean.clone(), "noise_variance": psi}

    # ------------------------------------------------------------------ streaming
    #: the statistics (count, sum, second moments) do not depend on the parameters
    stream_fixed = True

    def stream_statistics(self, x: torch.Tensor, params: dict, shift: torch.Tensor) -> dict:
        """Row count, :math:`\\sum_n (x_n - c)` and :math:`\\sum_n (x_n - c)(x_n - c)^\\top`
        about ``shift`` ``c``, in float64 (additive over chunks and ranks)."""
        xc = (x - shift.to(x.dtype)).to(torch.float64)
        return {"n": torch.tensor(float(x.shape[0]), dtype=torch.float64, device=x.device),
                "sx": xc.sum(0), "sxx": xc.T @ xc}

    def stream_data(self, stats: dict, shift: torch.Tensor, dtype: torch.dtype) -> _FAData:
        """The sample mean and covariance of all the data from summed statistics (``x`` is
        not held: the per-row posterior of a streamed fit is not computed)."""
        N = float(stats["n"])
        m = stats["sx"] / N
        cov = (stats["sxx"] / N - torch.outer(m, m)).to(dtype)
        D = cov.shape[0]
        floor = self.min_noise
        if N <= D:
            floor = max(floor, RELATIVE_FLOOR * float(cov.diagonal().mean().clamp_min(0)))
        x = torch.empty(int(N), 0, dtype=dtype, device=cov.device)  # only its row count
        return _FAData(x=x, mean=(m + shift).to(dtype), cov=cov, floor=floor)

    def stream_init(self, first: torch.Tensor, fixed: dict | None, shift: torch.Tensor,
                    dtype: torch.dtype) -> dict:
        """Initial parameters from the summed statistics of all the data (as
        :meth:`init_params`)."""
        return self.init_params(self.stream_data(fixed, shift, dtype))

    def stream_step(self, stats: dict, params: dict, shift: torch.Tensor) -> tuple[float, dict]:
        """The exact log-likelihood and the M-step, from the data's mean and covariance."""
        data = self.stream_data(stats, shift, params["loading"].dtype)
        ll, post = self.e_step(data, params)
        return ll, self.m_step(data, post)

    def posterior(self, data: _FAData, stats: _FAStats) -> GaussianPosterior:
        """Per-point Gaussian posteriors of ``z`` (shared covariance)."""
        N, L = data.x.shape[0], self.n_components
        mean = (data.x - stats.mean) @ stats.B.T
        return GaussianPosterior(
            mean=mean, covariance=stats.G.expand(N, L, L), sites=(("z", (N, L)),)
        )


def factor_analysis_model(n_components: int, *, min_noise: float = 1e-12) -> FactorAnalysisModel:
    """A factor-analysis Pyro model whose EM steps ``pyrovi.EM`` runs in closed form.

    Parameters
    ----------
    n_components : int
        Number of latent factors ``L`` (below the number of features).
    min_noise : float
        Floor of the noise variances (as scikit-learn's ``FactorAnalysis``).  With fewer
        observations than features the floor is at least 1e-6 times the mean sample
        variance, which keeps the maximum finite and the log evidence monotone.

    Returns
    -------
    FactorAnalysisModel
        Call it as ``model(data)`` with data of shape ``(N, D)``.
    """
    return FactorAnalysisModel(n_components, "diagonal", min_noise)


def ppca_model(n_components: int, *, min_noise: float = 1e-12) -> FactorAnalysisModel:
    """Probabilistic PCA (factor analysis with one isotropic noise variance).

    Parameters
    ----------
    n_components : int
        Number of latent components ``L``.
    min_noise : float
        Floor of the noise variance (at least 1e-6 times the mean sample variance with
        fewer observations than features).

    Returns
    -------
    FactorAnalysisModel
    """
    return FactorAnalysisModel(n_components, "isotropic", min_noise)
