r"""Bounds on how far a guide's means and standard deviations are from the posterior's,
from the ELBO side and the CUBO side of :math:`\log p(x)` (Huggins, Kasprzak, Campbell and
Broderick, 2020).

Write :math:`\pi = p(z \mid x)`, :math:`q` the guide, :math:`w = \pi/q` and
:math:`\chi^2 = \chi^2(\pi \,\|\, q) = \mathbb{E}_q[(w - 1)^2] = e^{D_2(\pi \| q)} - 1`.

1. **Divergence.**  :math:`D_2(\pi \,\|\, q) = 2(\mathrm{CUBO}_2 - \log p(x)) \le
   2(\mathrm{CUBO}_2 - L)` for any lower bound :math:`L \le \log p(x)` (ELBO, forward AIS, or
   the exact value).  It is estimated with a margin of ``z`` standard errors on each term.
2. **Wasserstein** (Huggins et al. 2020, Sec. 3: Villani 2009, Thm 6.15, then
   Cauchy-Schwarz).  For any :math:`z_0` and :math:`p \ge 1`,
   :math:`W_p(q, \pi)^p \le 2^{p-1} \int \|z - z_0\|^p \, d|q - \pi|
   \le 2^{p-1} (\mathbb{E}_q \|z - z_0\|^{2p})^{1/2} (\chi^2)^{1/2}`, so

   .. math:: W_2(q, \pi) \le \sqrt2\, m_4^{1/4}\, (\chi^2)^{1/4},
             \qquad m_4 = \mathbb{E}_q \|z - \mathbb{E}_q z\|^4 .

   (Huggins et al. state it with the constant 2 in place of :math:`2^{1-1/p}`; the proof
   gives the smaller one.)  Applied to one coordinate it bounds :math:`W_2` of the
   marginals.  When :math:`q` is Gaussian in a coordinate, :math:`q_i = N(m_i, s_i^2)`
   satisfies Talagrand's inequality, so also
   :math:`W_2(q_i, \pi_i) \le \sqrt{2 s_i^2 \, \mathrm{KL}(\pi_i \| q_i)} \le
   \sqrt{2 s_i^2 D_2(\pi \| q)}` (KL of marginals :math:`\le` KL :math:`\le D_2`).
3. **Means and standard deviations**, per coordinate :math:`i`:
   :math:`|\mathbb{E}_q z_i - \mathbb{E}_\pi z_i| \le W_1 \le W_2` and
   :math:`|\mathrm{sd}_q z_i - \mathrm{sd}_\pi z_i| \le W_2` (both are 1-Lipschitz in
   :math:`L^2` under any coupling).  Directly by Cauchy-Schwarz,
   :math:`|\mathbb{E}_\pi z_i - m_i| = |\mathbb{E}_q[(w-1)(z_i - m_i)]| \le s_i \chi` and
   :math:`|\mathbb{E}_\pi (z_i - m_i)^2 - s_i^2| \le \sqrt{m_{4,i}}\, \chi`, which bound the
   posterior variance from both sides; pyrovi reports the smaller of the two bounds.

Assumptions: the posterior is absolutely continuous with respect to :math:`q` and
:math:`\chi^2 < \infty` (weights with a finite second moment: PSIS :math:`\hat k < 0.5`);
:math:`q` has finite fourth moments; the Talagrand step only for coordinates where
:math:`q` is Gaussian (pyrovi's Gaussian families, on sites whose support is the whole real
line).  The moments of :math:`q` are estimated from its draws, and :math:`\mathrm{CUBO}_2`
is estimated with a downward bias: the bounds are estimates of bounds, reliable when
:math:`\hat k` is small (``reliable`` is ``khat < 0.5``).

References
----------
Huggins, Kasprzak, Campbell and Broderick (2020), "Validated variational inference via
practical posterior error bounds", AISTATS.
Villani (2009), "Optimal transport: old and new", Theorem 6.15.
Dieng, Tran, Ranganath, Paisley and Blei (2017), "Variational inference via chi upper bound
minimization", NeurIPS.
"""

from __future__ import annotations

import dataclasses
import math

import torch

from pyrovi._exact import is_real_support
from pyrovi._result import FitResult
from pyrovi._runtime import resolve_seed
from pyrovi.diagnostics.bracket import Bracket
from pyrovi.diagnostics.cubo import CUBO, cubo
from pyrovi.diagnostics.estimate import Estimate
from pyrovi.families import lookup

__all__ = ["SiteErrorBounds", "ErrorBounds", "divergence_bound", "coordinate_bounds",
           "error_bounds", "error_bounds_from_draws", "gaussian_sites", "lower_from"]

@dataclasses.dataclass(frozen=True)
class SiteErrorBounds:
    """Error bounds for one latent site, elementwise over its shape (constrained space).

    Attributes
    ----------
    q_mean, q_sd : torch.Tensor
        The guide's mean and standard deviation (from its draws).
    mean_error : torch.Tensor
        Bound on ``|q mean - posterior mean|``.
    sd_error : torch.Tensor
        Bound on ``|q sd - posterior sd|``.
    w2 : torch.Tensor
        Bound on the 2-Wasserstein distance between the marginals of q and the posterior.
    gaussian : bool
        Whether q is Gaussian in this site's coordinates (Talagrand's bound was used).
    """

    q_mean: torch.Tensor
    q_sd: torch.Tensor
    mean_error: torch.Tensor
    sd_error: torch.Tensor
    w2: torch.Tensor
    gaussian: bool

    @property
    def relative_mean_error(self) -> torch.Tensor:
        """``mean_error / q_sd``: the bound in units of the guide's standard deviation."""
        return self.mean_error / self.q_sd

    @property
    def relative_sd_error(self) -> torch.Tensor:
        return self.sd_error / self.q_sd

    def __repr__(self) -> str:
        return (
            f"SiteErrorBounds(shape={tuple(self.q_mean.shape)}, max |mean err| <= "
            f"{float(self.mean_error.max()):.4g} ({float(self.relative_mean_error.max()):.2f} "
            f"sd), max |sd err| <= {float(self.sd_error.max()):.4g}, gaussian={self.gaussian})"
        )


@dataclasses.dataclass(frozen=True)
class ErrorBounds:
    r"""Bounds on the error of a guide's means and standard deviations.

    Attributes
    ----------
    d2 : float
        Upper bound (estimate) on :math:`D_2(p(z \mid x) \,\|\, q)`, nats.
    chi2 : float
        :math:`e^{d_2} - 1`, the matching bound on :math:`\chi^2(p(z \mid x) \,\|\, q)`.
    cubo : CUBO
        :math:`\mathrm{CUBO}_2` of q behind ``d2``.
    log_evidence_lower, log_evidence_lower_se : float
        The lower side :math:`L` used, and its standard error.
    lower_source : str
        Where :math:`L` came from: ``"exact"``, ``"bracket"``, ``"estimate"`` or ``"elbo"``.
    w2 : float
        Bound on :math:`W_2(q, p(z \mid x))` over all latent coordinates (constrained space).
    sites : dict of str to SiteErrorBounds
        Per-site, per-coordinate bounds.
    khat : float
        PSIS :math:`\hat k` of the weights behind ``cubo``.
    reliable : bool
        ``khat < 0.5`` and every bound finite: the weights have a finite second moment, so
        the CUBO and the bounds built on it can be trusted.
    num_particles : int
        Draws from q.
    z : float
        Standard errors of margin in ``d2``.
    """

    d2: float
    chi2: float
    cubo: CUBO
    log_evidence_lower: float
    log_evidence_lower_se: float
    lower_source: str
    w2: float
    sites: dict
    khat: float
    reliable: bool
    num_particles: int
    z: float

    def max_relative_mean_error(self) -> float:
        """Largest ``mean_error / q_sd`` over every coordinate of every site."""
        return max(float(s.relative_mean_error.max()) for s in self.sites.values())

    def max_relative_sd_error(self) -> float:
        return max(float(s.relative_sd_error.max()) for s in self.sites.values())

    def __repr__(self) -> str:
        return (
            f"ErrorBounds(d2 <= {self.d2:.4g}, w2 <= {self.w2:.4g}, sites={list(self.sites)}, "
            f"lower={self.lower_source!r}, khat={self.khat:.2f}, reliable={self.reliable})"
        )

    def __str__(self) -> str:
        lines = [f"Error bounds from CUBO_2 and a lower bound on log p(x) ({self.lower_source}; "
                 f"{self.num_particles} draws, k-hat {self.khat:.2f}"
                 f"{'' if self.reliable else ', NOT reliable'})",
                 f"  D_2(posterior || q) <= {self.d2:.4g}   W_2 <= {self.w2:.4g}"]
        for name, s in self.sites.items():
            lines.append(
                f"  {name:12s} |mean err| <= {float(s.mean_error.max()):.4g} "
                f"({float(s.relative_mean_error.max()):.2f} sd)  |sd err| <= "
                f"{float(s.sd_error.max()):.4g} ({float(s.relative_sd_error.max()):.2f} sd)")
        return "\n".join(lines)


def divergence_bound(cubo_value: float, cubo_se: float, lower: float, lower_se: float = 0.0,
                     z: float = 2.0) -> float:
    r"""Bound on :math:`D_2(\pi \| q)`:
    :math:`2\big((\mathrm{CUBO}_2 + z\,\mathrm{se}) - (L - z\,\mathrm{se}_L)\big)`, clipped
    at 0."""
    return max(0.0, 2.0 * ((cubo_value + z * cubo_se) - (lower - z * lower_se)))


def coordinate_bounds(values: torch.Tensor, d2: float,
                      gaussian: torch.Tensor | bool = False) -> dict[str, torch.Tensor]:
    r"""Per-coordinate bounds from draws of q and a bound ``d2`` on :math:`D_2(\pi \| q)`.

    Parameters
    ----------
    values : torch.Tensor
        ``(S, k)`` draws of q.
    d2 : float
        Bound on :math:`D_2(\pi \,\|\, q)`.
    gaussian : bool or torch.Tensor
        ``(k,)``: coordinates in which q is Gaussian (Talagrand's bound applies).

    Returns
    -------
    dict
        ``q_mean``, ``q_sd``, ``mean_error``, ``sd_error``, ``w2`` (each ``(k,)``) and
        ``w2_joint`` (0-dim): the bounds of the module docstring.
    """
    values = torch.as_tensor(values).detach().to(torch.float64)
    if values.dim() == 1:
        values = values.unsqueeze(-1)
    chi2 = math.expm1(d2) if d2 < 700 else math.inf
    chi = math.sqrt(chi2)
    m = values.mean(0)
    c = values - m
    var = c.square().mean(0)
    sd = var.sqrt()
    m4 = c.pow(4).mean(0)
    gaussian = torch.as_tensor(gaussian, dtype=torch.bool).expand(m.shape)
    w2_moment = math.sqrt(2.0) * m4.pow(0.25) * chi2 ** 0.25
    w2_gauss = torch.where(gaussian, (2.0 * var * d2).sqrt(),
                           torch.full_like(var, math.inf))
    w2 = torch.minimum(w2_moment, w2_gauss)
    mean_error = torch.minimum(sd * chi, w2)
    var_hi = var + m4.sqrt() * chi
    var_lo = (var - m4.sqrt() * chi - mean_error.square()).clamp_min(0.0)
    sd_cs = torch.maximum(var_hi.sqrt() - sd, sd - var_lo.sqrt())
    sd_error = torch.minimum(sd_cs, w2)
    norm4 = c.square().sum(-1).square().mean()
    w2_joint = math.sqrt(2.0) * float(norm4) ** 0.25 * chi2 ** 0.25
    if bool(gaussian.all()):
        cov = torch.atleast_2d(torch.cov(values.T))
        lam = float(torch.linalg.eigvalsh(cov).max())
        w2_joint = min(w2_joint, math.sqrt(2.0 * lam * d2))
    return {"q_mean": m, "q_sd": sd, "mean_error": mean_error, "sd_error": sd_error,
            "w2": w2, "w2_joint": torch.tensor(w2_joint, dtype=torch.float64)}


def error_bounds_from_draws(
    values: dict, log_w: torch.Tensor, *, log_evidence_lower: float | None = None,
    log_evidence_lower_se: float = 0.0, lower_source: str = "given",
    gaussian: dict | bool = False, z: float = 2.0,
) -> ErrorBounds:
    r"""Error bounds from draws of q (site -> ``(S, *shape)``) and their importance
    log-weights :math:`\log p(x, z_s) - \log q(z_s)`.

    ``log_evidence_lower`` is a lower bound :math:`L` on :math:`\log p(x)` (or its exact
    value with ``log_evidence_lower_se=0``); the ELBO of the same weights is used when it is
    higher, or when none is given.  ``gaussian`` says, per site or for all, whether q is
    Gaussian in that site's coordinates.
    """
    from pyrovi.diagnostics.bounds import mean_se
    from pyrovi.diagnostics.psis import psis_diagnostic

    log_w = torch.as_tensor(log_w).detach().to(torch.float64).reshape(-1)
    c = cubo(log_w, 2.0)
    elbo, elbo_se = mean_se(log_w)
    if log_evidence_lower is None or (
            lower_source != "exact"
            and elbo - z * elbo_se > log_evidence_lower - z * log_evidence_lower_se):
        lower, lower_se, lower_source = elbo, elbo_se, "elbo"
    else:
        lower, lower_se = float(log_evidence_lower), float(log_evidence_lower_se)
    d2 = divergence_bound(c.value, c.se, lower, lower_se, z)
    sites, flat, gflags = {}, [], []
    S = log_w.numel()
    for name, v in values.items():
        v = torch.as_tensor(v).detach().to(torch.float64)
        shape = v.shape[1:]
        g = gaussian.get(name, False) if isinstance(gaussian, dict) else bool(gaussian)
        out = coordinate_bounds(v.reshape(S, -1), d2, g)
        sites[name] = SiteErrorBounds(
            *(out[k].reshape(shape) for k in ("q_mean", "q_sd", "mean_error", "sd_error")),
            w2=out["w2"].reshape(shape), gaussian=bool(g))
        flat.append(v.reshape(S, -1))
        gflags.append(torch.full((flat[-1].shape[1],), bool(g)))
    joint = coordinate_bounds(torch.cat(flat, -1), d2, torch.cat(gflags))["w2_joint"]
    khat = psis_diagnostic(log_w).khat
    finite = math.isfinite(d2) and math.isfinite(float(joint))
    return ErrorBounds(d2=d2, chi2=math.expm1(d2) if d2 < 700 else math.inf, cubo=c,
                       log_evidence_lower=lower, log_evidence_lower_se=lower_se,
                       lower_source=lower_source, w2=float(joint), sites=sites, khat=khat,
                       reliable=bool(khat < 0.5 and finite), num_particles=S, z=z)


def _gaussian_family(family: str) -> bool:
    """Whether the family (a registry name, ``lowrank:K`` included) is a Gaussian in the
    unconstrained space; a user's guide is not assumed to be one."""
    record = lookup(family)
    return record is not None and record.gaussian


def gaussian_sites(result, trace, names) -> dict:
    """Site -> whether the fit's q is Gaussian in that site's (constrained) coordinates: a
    Gaussian family on a site whose support is the whole real line (``trace``: a trace of
    the model, for the supports)."""
    gauss_family = _gaussian_family(str(result.family))
    return {k: gauss_family and is_real_support(trace.nodes[k]["fn"].support) for k in names}


def lower_from(log_evidence):
    """(value, se, source) of a lower side: None, float (exact), Estimate or Bracket."""
    if log_evidence is None:
        return None, 0.0, "elbo"
    if isinstance(log_evidence, (int, float)):
        return float(log_evidence), 0.0, "exact"
    if isinstance(log_evidence, Bracket):
        return float(log_evidence.lower), float(log_evidence.lower_se), "bracket"
    if isinstance(log_evidence, Estimate):
        source = "exact" if log_evidence.method == "exact" else "estimate"
        return float(log_evidence.value), float(log_evidence.se), source
    raise TypeError("log_evidence must be None, a float (exact), an Estimate or a Bracket, "
                    f"got {type(log_evidence).__name__}")


def error_bounds(result, *, num_particles: int = 10_000, seed: int | None = None,
                 log_evidence=None, z: float = 2.0) -> ErrorBounds:
    r"""Bounds on the errors of a VI fit's posterior means and standard deviations, per
    latent site and coordinate, in the constrained space (the values ``result.sample``
    returns).

    Parameters
    ----------
    result : VIResult
        A fit with continuous latents (no enumerated sites; not ``delta``).
    num_particles : int
        Draws from q for the CUBO and q's moments (default 10,000).
    seed : int, optional
        Seed of the draws.
    log_evidence : float, Estimate or Bracket, optional
        The lower side :math:`L`: a float or an exact ``Estimate`` is taken as the exact
        :math:`\log p(x)`; another ``Estimate`` or a ``Bracket``'s ``lower`` as a lower
        bound with its standard error.  The ELBO of the same draws is used when higher.
    z : float
        Standard errors of margin on the CUBO and on :math:`L` (default 2).
    """
    import pyro.poutine as poutine

    if not isinstance(result, FitResult):
        raise TypeError(f"error_bounds takes a fit result, got {type(result).__name__}")
    if result.exact_posterior:
        raise TypeError("error_bounds takes a VIResult; an EM result's posterior is exact "
                        "(every error is 0)")
    if not result.has_density:
        raise ValueError(f"a {result.family!r} fit has no density; error bounds need a guide "
                         "with one (fit 'laplace' for a Gaussian at the MAP)")
    lower, lower_se, source = lower_from(log_evidence)
    seed = resolve_seed(seed)
    draws = result.posterior_draws(num_particles, seed=seed)
    with result.scope(), torch.no_grad():
        # enumerated discrete sites, absent from the draws, are summed out exactly
        log_p = result.log_joint(draws.values)
        trace = poutine.trace(result.model).get_trace(*result.args, **result.kwargs)
    log_w = log_p.to(torch.float64) - draws.log_q.to(torch.float64)
    gaussian = gaussian_sites(result, trace, draws.values)
    return error_bounds_from_draws(draws.values, log_w, log_evidence_lower=lower,
                                   log_evidence_lower_se=lower_se, lower_source=source,
                                   gaussian=gaussian, z=z)
