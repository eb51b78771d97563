r"""Gaussian mixture with closed-form, vectorized EM (full or diagonal covariances).

The model, written in Pyro::

    weights ~ param (simplex, K),  means ~ param (K, D),  covariances ~ param
    for n in plate("data", N):
        assignment[n] ~ Categorical(weights)
        obs[n] ~ MultivariateNormal(means[assignment[n]], covariances[assignment[n]])

E-step: log responsibilities by a log-sum-exp over components, in row chunks, each chunk
one matrix product :math:`X P` with the precision Cholesky factors of all components side
by side.  M-step: the weighted means and covariances with ``reg_covar`` added to the
diagonal, exactly as :class:`sklearn.mixture.GaussianMixture` (whose update rules and error
messages this follows), so the two agree to round-off from the same initial parameters.
"""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints

from pyrovi.em.closed_form import ClosedFormModel
from pyrovi.em.posterior import DiscretePosterior
from pyrovi.errors import NonFiniteError

__all__ = ["GaussianMixtureModel", "gaussian_mixture_model"]

_COV_TYPES = ("full", "diag")


class GaussianMixtureModel(ClosedFormModel):
    """A Gaussian mixture as a Pyro model with closed-form EM steps.

    Build it with :func:`gaussian_mixture_model`.  Calling it with a data tensor of shape
    ``(N, D)`` runs the Pyro model (sites ``"assignment"`` latent, ``"obs"`` observed;
    params ``"weights"``, ``"means"``, ``"covariances"``).
    """

    latent_site = "assignment"
    max_plate_nesting = 1

    def __init__(
        self,
        n_components: int,
        covariance_type: str = "full",
        reg_covar: float = 1e-6,
        dtype: torch.dtype | None = None,
        init: dict | None = None,
        chunk_size: int | None = None,
    ):
        if isinstance(n_components, bool) or not isinstance(n_components, int) or (
            n_components < 1
        ):
            raise ValueError(f"n_components must be a positive int, got {n_components!r}")
        if covariance_type not in _COV_TYPES:
            raise ValueError(
                f"covariance_type must be one of {_COV_TYPES}, got {covariance_type!r}"
            )
        if not isinstance(reg_covar, (int, float)) or not reg_covar >= 0:
            raise ValueError(f"reg_covar must be a non-negative number, got {reg_covar!r}")
        if dtype not in (None, torch.float32, torch.float64):
            raise ValueError(f"dtype must be None, torch.float32 or torch.float64, got {dtype}")
        unknown = set(init or {}) - {"weights", "means", "covariances"}
        if unknown:
            raise ValueError(
                f"init has unknown key(s) {sorted(unknown)}; expected any of 'weights', "
                "'means', 'covariances'"
            )
        self.n_components = n_components
        self.covariance_type = covariance_type
        self.reg_covar = float(reg_covar)
        self.dtype = dtype
        self.init = dict(init or {})
        self.chunk_size = chunk_size
        self.__name__ = self.__qualname__ = f"gaussian_mixture_model({n_components})"

    def checkpoint_state(self) -> dict:
        """The constructor's arguments, as a checkpoint stores them."""
        return {"n_components": self.n_components, "covariance_type": self.covariance_type,
                "reg_covar": self.reg_covar, "dtype": self.dtype, "init": dict(self.init),
                "chunk_size": self.chunk_size}

    @classmethod
    def from_checkpoint_state(cls, state: dict) -> GaussianMixtureModel:
        """The model a checkpoint stored with :meth:`checkpoint_state`."""
        return cls(**state)

    # ------------------------------------------------------------------ the Pyro model
    @property
    def param_constraints(self) -> dict:
        cov = constraints.positive_definite if self.covariance_type == "full" else (
            constraints.positive
        )
        return {"weights": constraints.simplex, "means": constraints.real, "covariances": cov}

    def __call__(self, data: torch.Tensor) -> None:
        init = self.lazy_inits(data)

        cons = self.param_constraints
        weights = pyro.param("weights", init("weights"), constraint=cons["weights"])
        means = pyro.param("means", init("means"), constraint=cons["means"])
        covs = pyro.param("covariances", init("covariances"), constraint=cons["covariances"])
        with pyro.plate("data", data.shape[0]):
            z = pyro.sample("assignment", dist.Categorical(weights))
            if self.covariance_type == "full":
                obs = dist.MultivariateNormal(means[z], covariance_matrix=covs[z])
            else:
                obs = dist.Normal(means[z], covs[z].sqrt()).to_event(1)
            pyro.sample("obs", obs, obs=data)

    # ------------------------------------------------------------------ closed-form EM
    def prepare(self, data: torch.Tensor) -> torch.Tensor:
        if not isinstance(data, torch.Tensor) or data.dim() != 2:
            shape = tuple(data.shape) if isinstance(data, torch.Tensor) else type(data).__name__
            raise ValueError(
                f"data must be a 2-D tensor of shape (n_samples, n_features), got {shape}"
            )
        if data.shape[1] == 0:
            raise ValueError(
                f"data has shape {tuple(data.shape)}: zero features; a Gaussian mixture "
                "needs at least one column"
            )
        if data.shape[0] < self.n_components:
            raise ValueError(
                f"data has {data.shape[0]} rows but n_components={self.n_components}; "
                "expected at least as many samples as components"
            )
        dtype = self.dtype or (data.dtype if data.is_floating_point() else torch.float64)
        self._check_init(data.shape[1])
        return data.to(dtype)

    def _check_init(self, D: int) -> None:
        """Refuse initial values of the wrong shape or outside their constraint, naming
        them, before any work."""
        K = self.n_components
        cov_shape = (K, D, D) if self.covariance_type == "full" else (K, D)
        shapes = {"weights": (K,), "means": (K, D), "covariances": cov_shape}
        for name, value in self.init.items():
            try:
                value = torch.as_tensor(value, dtype=torch.float64)
            except (TypeError, ValueError, RuntimeError) as err:
                raise ValueError(f"init[{name!r}] is not numeric: {err}") from None
            if tuple(value.shape) != shapes[name]:
                raise ValueError(
                    f"init[{name!r}] has shape {tuple(value.shape)}; expected {shapes[name]} "
                    f"for n_components={K} and {D} features"
                )
            if not bool(torch.isfinite(value).all()):
                raise ValueError(f"init[{name!r}] holds non-finite values")
            if name == "weights" and (bool((value < 0).any()) or not float(value.sum()) > 0):
                raise ValueError(
                    f"init['weights'] must be non-negative with a positive sum, got "
                    f"{value.tolist()}"
                )
            if name == "covariances":
                ok = (bool((value > 0).all()) if self.covariance_type == "diag" else
                      int(torch.linalg.cholesky_ex(value)[1].max()) == 0)
                if not ok:
                    raise ValueError(
                        "init['covariances'] must be positive (diag) or positive definite "
                        "(full)"
                    )

    def _chunk(self, data: torch.Tensor) -> int:
        if self.chunk_size:
            return int(self.chunk_size)
        budget = 2**27 if data.device.type == "cuda" else 2**18
        return max(256, budget // (self.n_components * data.shape[1]))

    def init_params(self, data: torch.Tensor) -> dict:
        """k-means++ seeding, hard assignment to the nearest seed, then one M-step.

        Entries of the model's ``init`` dict replace the corresponding estimates.
        """
        K, N = self.n_components, data.shape[0]
        seeds = [int(torch.randint(N, ()))]
        closest = (data - data[seeds[0]]).square().sum(-1)
        for _ in range(1, K):
            probs = closest / closest.sum() if float(closest.sum()) > 0 else None
            nxt = int(torch.multinomial(probs, 1)) if probs is not None else int(
                torch.randint(N, ())
            )
            seeds.append(nxt)
            closest = torch.minimum(closest, (data - data[nxt]).square().sum(-1))
        centers = data[seeds]
        labels = torch.empty(N, dtype=torch.long, device=data.device)
        step = self._chunk(data)
        for s in range(0, N, step):
            labels[s : s + step] = torch.cdist(data[s : s + step], centers).argmin(-1)
        resp = torch.nn.functional.one_hot(labels, K).to(data.dtype)
        params = self._estimate(data, resp, check=False)
        for name, value in self.init.items():
            params[name] = torch.as_tensor(value).detach().to(data.device, data.dtype).clone()
        params["weights"] = params["weights"] / params["weights"].sum()
        return params

    def _log_gaussian(
        self, x: torch.Tensor, params: dict, prec: torch.Tensor, log_w: torch.Tensor
    ) -> torch.Tensor:
        """``log w_k + log N(x_n | mean_k, cov_k)``, shape ``(n, K)``."""
        means = params["means"]
        K, D = means.shape
        if self.covariance_type == "full":
            # prec: (K, D, D) upper factors with P P^T = inverse covariance
            p_cat = prec.permute(1, 0, 2).reshape(D, K * D)
            shift = torch.einsum("kd,kde->ke", means, prec).reshape(K * D)
            y = torch.addmm(shift, x, p_cat, alpha=1.0, beta=-1.0)
            maha = y.view(-1, K, D).square_().sum(-1)
            log_det = prec.diagonal(dim1=-2, dim2=-1).log().sum(-1)
        else:
            # prec: (K, D) inverse variances
            maha = torch.addmm((means.square() * prec).sum(1), x, (means * prec).T, alpha=-2.0)
            maha.addmm_(x.square(), prec.T)
            log_det = 0.5 * prec.log().sum(-1)
        const = log_det + log_w - 0.5 * D * math.log(2 * math.pi)
        return maha.mul_(-0.5).add_(const)

    def _precision_factor(self, covariances: torch.Tensor) -> torch.Tensor:
        self._check_covariances(covariances)
        if self.covariance_type == "full":
            chol = torch.linalg.cholesky(covariances)
            eye = torch.eye(covariances.shape[-1], dtype=chol.dtype, device=chol.device)
            return torch.linalg.solve_triangular(chol, eye.expand_as(chol), upper=False).mT
        return 1.0 / covariances

    def e_step(self, data: torch.Tensor, params: dict) -> tuple[float, torch.Tensor]:
        """Total log-likelihood and log responsibilities ``(N, K)`` (vectorized, chunked)."""
        prec = self._precision_factor(params["covariances"])
        log_w = params["weights"].log()
        N = data.shape[0]
        log_resp = torch.empty(N, self.n_components, dtype=data.dtype, device=data.device)
        partial = []
        step = self._chunk(data)
        for s in range(0, N, step):
            lp = self._log_gaussian(data[s : s + step], params, prec, log_w)
            norm = torch.logsumexp(lp, dim=1)
            partial.append(norm.sum().to(torch.float64))
            torch.sub(lp, norm.unsqueeze(1), out=log_resp[s : s + step])
        return float(torch.stack(partial).sum()), log_resp

    def _estimate(self, data: torch.Tensor, resp: torch.Tensor, check: bool = True) -> dict:
        N, D = data.shape
        K = self.n_components
        eps = torch.finfo(resp.dtype).eps
        nk = resp.sum(0) + 10 * eps
        means = (resp.T @ data) / nk.unsqueeze(1)
        if self.covariance_type == "full":
            # second moments about the data mean (one GEMM per chunk for all components),
            # then the covariance about each component mean; accumulated in float64
            center = data.mean(0)
            moments = torch.zeros(K * D, D, dtype=torch.float64, device=data.device)
            step = self._chunk(data)
            for s in range(0, N, step):
                xc = data[s : s + step] - center
                weighted = (resp[s : s + step].unsqueeze(-1) * xc.unsqueeze(1)).view(-1, K * D)
                moments += (weighted.T @ xc).to(torch.float64)
            mc = (means - center).to(torch.float64)
            covs = moments.view(K, D, D) / nk.to(torch.float64).view(K, 1, 1)
            covs -= mc.unsqueeze(-1) * mc.unsqueeze(-2)
            # round-off of the moments: a (conditional) variance below it is a collapse even
            # where the Cholesky factorisation happens to succeed
            spread = moments.view(K, D, D).diagonal(dim1=-2, dim2=-1).sum(0) / N
            scale = (spread + mc.square()).to(data.dtype)
            covs = covs.to(data.dtype)
            covs.diagonal(dim1=-2, dim2=-1).add_(self.reg_covar)
        else:
            avg_x2 = (resp.T @ data.square()) / nk.unsqueeze(1)
            covs = avg_x2 - means.square() + self.reg_covar
            scale = (data.var(0) + means.square()) if check else 0.0
        if check:
            self._check_covariances(covs, scale)
        return {"weights": nk / N, "means": means, "covariances": covs}

    def _check_covariances(self, covs: torch.Tensor, scale=0.0) -> None:
        floor = 10 * torch.finfo(covs.dtype).eps * scale
        if self.covariance_type == "full":
            chol, info = torch.linalg.cholesky_ex(covs)
            tiny = (chol.diagonal(dim1=-2, dim2=-1).square() <= floor).any(-1)
            bad = ((info != 0) | tiny).nonzero()
        else:
            bad = (~(covs > floor).all(-1) | ~torch.isfinite(covs).all(-1)).nonzero()
        if bad.numel():
            k = int(bad[0])
            msg = (
                f"the covariance of mixture component {k} (param 'covariances'[{k}]) became "
                "singular: the component collapsed onto too few or identical points. Raise "
                f"the floor reg_covar (now {self.reg_covar:g}), use fewer components "
                f"(n_components={self.n_components}), or scale the data"
            )
            if covs.dtype == torch.float32:
                msg += "; float64 data (dtype=torch.float64) also improves the accuracy"
            raise NonFiniteError(msg, step=-1, site="covariances")

    def m_step(self, data: torch.Tensor, log_resp: torch.Tensor) -> dict:
        """Weights, means and (floored) covariances from the responsibilities."""
        params = self._estimate(data, log_resp.exp())
        params["weights"] = params["weights"] / params["weights"].sum()
        return params

    # ------------------------------------------------------------------ streaming
    def stream_statistics(self, x: torch.Tensor, params: dict, shift: torch.Tensor) -> dict:
        """Log-likelihood, ``N_k``, :math:`\\sum_n r_{nk}(x_n - c)` and the second moments
        :math:`\\sum_n r_{nk}(x_n - c)(x_n - c)^\\top` (diagonal: squares) of the rows
        ``x`` about ``shift`` ``c``, in float64 (additive over chunks and ranks)."""
        prec = self._precision_factor(params["covariances"])
        log_w = params["weights"].log()
        K, D = self.n_components, x.shape[1]
        f64 = dict(dtype=torch.float64, device=x.device)
        sxx_shape = (K * D, D) if self.covariance_type == "full" else (K, D)
        out = {"n": torch.tensor(float(x.shape[0]), **f64), "loglik": torch.zeros((), **f64),
               "nk": torch.zeros(K, **f64), "sx": torch.zeros(K, D, **f64),
               "sxx": torch.zeros(sxx_shape, **f64)}
        step = self._chunk(x)
        for s in range(0, x.shape[0], step):
            lp = self._log_gaussian(x[s : s + step], params, prec, log_w)
            norm = torch.logsumexp(lp, dim=1)
            out["loglik"] += norm.sum().to(torch.float64)
            resp = lp.sub_(norm.unsqueeze(1)).exp_()
            xc = x[s : s + step] - shift.to(x.dtype)
            out["nk"] += resp.sum(0).to(torch.float64)
            out["sx"] += (resp.T @ xc).to(torch.float64)
            if self.covariance_type == "full":
                weighted = (resp.unsqueeze(-1) * xc.unsqueeze(1)).view(-1, K * D)
                out["sxx"] += (weighted.T @ xc).to(torch.float64)
            else:
                out["sxx"] += (resp.T @ xc.square()).to(torch.float64)
        return out

    def stream_step(self, stats: dict, params: dict, shift: torch.Tensor) -> tuple[float, dict]:
        """The M-step of :meth:`m_step` from summed :meth:`stream_statistics` (the same
        update, ``10 eps`` added to ``N_k`` and ``reg_covar`` to the diagonal)."""
        dtype = params["means"].dtype
        K, D = params["means"].shape
        N = float(stats["n"])
        nk = stats["nk"] + 10 * torch.finfo(dtype).eps
        mc = stats["sx"] / nk.unsqueeze(1)  # component means about the shift
        if self.covariance_type == "full":
            moments = stats["sxx"].view(K, D, D)
            covs = moments / nk.view(K, 1, 1) - mc.unsqueeze(-1) * mc.unsqueeze(-2)
            scale = moments.diagonal(dim1=-2, dim2=-1).sum(0) / N + mc.square()
            covs.diagonal(dim1=-2, dim2=-1).add_(self.reg_covar)
        else:
            covs = stats["sxx"] / nk.unsqueeze(1) - mc.square() + self.reg_covar
            scale = stats["sxx"].sum(0) / N + mc.square()
        covs = covs.to(dtype)
        self._check_covariances(covs, scale.to(dtype))
        weights = (nk / N).to(dtype)
        new = {"weights": weights / weights.sum(), "means": (mc + shift).to(dtype),
               "covariances": covs}
        return float(stats["loglik"]), new

    def posterior(self, data: torch.Tensor, log_resp: torch.Tensor) -> DiscretePosterior:
        """Responsibilities ``p(assignment[n] = k | x_n)`` as a factorized posterior."""
        return DiscretePosterior(marginals={self.latent_site: log_resp.exp()}, factorized=True)


def gaussian_mixture_model(
    n_components: int,
    covariance_type: str = "full",
    reg_covar: float = 1e-6,
    *,
    dtype: torch.dtype | None = None,
    init: dict | None = None,
    chunk_size: int | None = None,
) -> GaussianMixtureModel:
    """A Gaussian-mixture Pyro model whose EM steps ``pyrovi.EM`` runs in closed form.

    Parameters
    ----------
    n_components : int
        Number of mixture components ``K``.
    covariance_type : {"full", "diag"}
        Full ``(K, D, D)`` covariance matrices or diagonal ``(K, D)`` variances.
    reg_covar : float
        Added to the diagonal of every covariance in the M-step (as scikit-learn), a floor
        that keeps the covariances positive definite.
    dtype : torch.dtype, optional
        Working precision of the closed-form path (``torch.float32`` is about twice as fast
        on CPU); default: that of the data (float64 for integer data).
    init : dict, optional
        Initial ``"weights"``, ``"means"`` and/or ``"covariances"``; the rest come from
        k-means++ seeding (drawn from the fit's seed).
    chunk_size : int, optional
        Rows per vectorized block of the E- and M-step (default: about 256k entries).

    Returns
    -------
    GaussianMixtureModel
        Call it as ``model(data)`` with data of shape ``(N, D)``.
    """
    return GaussianMixtureModel(
        n_components, covariance_type, reg_covar, dtype=dtype, init=init, chunk_size=chunk_size
    )
