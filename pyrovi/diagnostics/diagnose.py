r"""``diagnose``: how far a fit's posterior approximation is from the true posterior.

For any q, :math:`\log p(x) = \mathrm{ELBO}(q) + \mathrm{KL}(q \,\|\, p(z \mid x))`, so the
gap between the log evidence and the ELBO is the KL divergence the guide leaves.  One set of
importance draws :math:`z_s \sim q` gives the ELBO, the importance-weighted bounds
:math:`\mathcal{L}_K` (Burda et al., 2016), the effective sample size and the PSIS
:math:`\hat k` (Vehtari et al., 2024; Yao et al., 2018); the log evidence is exact where it
is tractable, else the importance estimate from the same draws, or AIS on request.

The same draws also give :math:`\mathrm{CUBO}_2` and, with the log evidence (or its lower
side), the error bounds of Huggins et al. (2020) on the guide's means and standard
deviations (:mod:`pyrovi.diagnostics.accuracy`); on request, bidirectional AIS brackets
:math:`\log p(x)` (:mod:`pyrovi.diagnostics.bracket`).  :mod:`pyrovi.diagnostics.verdict`
turns them into one sentence.  Each printed number says whether it is a *bound* (a
stochastic bound: on its side of the true value in expectation) or an *estimate* (no side
guaranteed).
"""

from __future__ import annotations

import dataclasses
import math

from pyrovi._result import FitResult
from pyrovi.diagnostics.accuracy import (
    ErrorBounds,
    error_bounds_from_draws,
    gaussian_sites,
    lower_from,
)
from pyrovi.diagnostics.ais import AIS
from pyrovi.diagnostics.bounds import Bound, gap_from_weights, iwae_bounds, log_mean_exp, mean_se
from pyrovi.diagnostics.bounds import ess as _ess
from pyrovi.diagnostics.bracket import Bracket, evidence_bracket
from pyrovi.diagnostics.cubo import CUBO, cubo
from pyrovi.diagnostics.evidence import (
    Estimate,
    IntractableError,
    exact_log_evidence,
    log_evidence,
)
from pyrovi.diagnostics.gradients import gradient_estimators
from pyrovi.diagnostics.psis import psis_diagnostic
from pyrovi.diagnostics.verdict import Verdict, verdict
from pyrovi.diagnostics.weights import (
    DEFAULT_CHUNK,
    _check_particles,
    check_result,
    result_log_weights,
)

__all__ = ["Diagnostics", "diagnose", "IWAE_KS"]

#: The K of the importance-weighted bounds reported by :func:`diagnose`.
IWAE_KS = (1, 10, 100, 1000)

#: Largest latent dimension for which ``evidence="auto"`` tries the exact Gaussian evidence.
AUTO_EXACT_MAX_DIM = 500

#: How :attr:`ErrorBounds.lower_source` reads in the printed diagnostics.
LOWER_SOURCES = {"exact": "exact log p(x)", "bracket": "bracket's lower side",
                 "estimate": "log p(x) estimate", "elbo": "ELBO"}

#: Largest ``num_particles * latent dimension`` for which ``bounds="auto"`` keeps the draws
#: of q to compute the error bounds (80 MB of float64).
AUTO_BOUNDS_MAX_VALUES = 10_000_000


@dataclasses.dataclass(frozen=True)
class Diagnostics:
    r"""ELBO-vs-evidence diagnostics of one fit.  All values in nats, totals over the data
    with every constant included.

    Attributes
    ----------
    family : str
        The fit's guide family (``"em"`` for an EM fit).
    elbo, elbo_se : float
        :math:`\mathbb{E}_q[\log p(x, z) - \log q(z)]` from ``num_particles`` draws, and its
        standard error.  Always :math:`\le` ``log_evidence`` in expectation.
    log_evidence, log_evidence_se : float
        :math:`\log p(x)` and its standard error (0 when exact).
    log_evidence_method : str
        ``"exact"``, ``"importance"`` (from the same draws as the ELBO) or ``"ais"``.
    gap, gap_se : float
        ``log_evidence - elbo`` (:math:`\ge 0` up to Monte Carlo error): an estimate of
        :math:`\mathrm{KL}(q \,\|\, p(z \mid x))`, with its standard error.  With an
        importance evidence it is a lower estimate (the importance estimate is itself biased
        low when q is poor; check ``khat``).
    iwae : tuple of Bound
        :math:`\mathcal{L}_K` for :math:`K = 1, 10, 100, 1000` (those with at least one
        group of K draws); :math:`\mathcal{L}_1` is the ELBO and :math:`\mathcal{L}_K` rises
        toward :math:`\log p(x)` in expectation.
    khat : float
        PSIS Pareto shape of the importance weights (below ``khat_threshold``: reliable).
    khat_threshold : float
        :math:`\min(1 - 1/\log_{10} S, 0.7)`.
    khat_verdict : str
        What ``khat`` says, in plain words.
    ess : float
        Importance-sampling effective sample size, :math:`(\sum w)^2 / \sum w^2`, in
        ``[1, num_particles]``.
    num_particles : int
        Draws from q behind ``elbo``, ``iwae``, ``khat`` and ``ess``.
    gradient_estimators : dict of str to str
        Latent site -> the gradient estimator Pyro used for it in the fit
        (``"reparameterized"``, ``"score-function"``, ``"enumerated (exact sum)"``, or none
        for EM).
    log_evidence_estimate : Estimate
        The full log-evidence estimate (method details in ``info``).
    exact_posterior : bool
        Whether q is the exact posterior (an EM fit): the gap is 0 by construction and
        ``khat``/``ess`` say nothing (the weights are constant).
    given_params : tuple of str
        The model's ``pyro.param`` sites: when there are any, ``log_evidence`` is
        :math:`\log p(x \mid \hat\theta)` at their fitted values, a likelihood of point
        estimates, not the marginal likelihood of a model with every quantity integrated
        out; two such numbers compare only across fits of the same parameters.
    cubo : CUBO or None
        :math:`\mathrm{CUBO}_2` of q from the same draws: an *estimate* of an upper bound on
        :math:`\log p(x)` (biased low; None for an exact posterior).
    error_bounds : ErrorBounds or None
        Bounds on ``|q mean - posterior mean|`` and ``|q sd - posterior sd|`` per site and
        coordinate (Huggins et al. 2020), from ``cubo`` and the lower side of
        :math:`\log p(x)` (exact value, bracket or importance estimate, whichever is
        best); estimates of bounds, trusted when ``error_bounds.reliable``.  None when not
        computed (``bounds=False``, an exact posterior, or too many draws to keep).
    bracket : Bracket or None
        Bidirectional AIS around :math:`\log p(x)`, when asked for (``bracket=``): the lower
        side is a bound; the upper side is a bound only when ``bracket.upper_is_bound``
        (exact posterior draws: simulated data), else an estimate.
    verdict : Verdict or None
        What the fit may be used for (means, sds, tails) and what to try next
        (:func:`~pyrovi.diagnostics.verdict.verdict`); ``str(verdict)`` is one sentence.
    bounds_note : str
        Why the error bounds were not computed, when they were not ("" otherwise).
    """

    family: str
    elbo: float
    elbo_se: float
    log_evidence: float
    log_evidence_se: float
    log_evidence_method: str
    gap: float
    gap_se: float
    iwae: tuple
    khat: float
    khat_threshold: float
    khat_verdict: str
    ess: float
    num_particles: int
    gradient_estimators: dict
    log_evidence_estimate: Estimate = dataclasses.field(repr=False)
    exact_posterior: bool = False
    given_params: tuple = ()
    cubo: CUBO | None = dataclasses.field(default=None, repr=False)
    error_bounds: ErrorBounds | None = dataclasses.field(default=None, repr=False)
    bracket: Bracket | None = dataclasses.field(default=None, repr=False)
    verdict: Verdict | None = dataclasses.field(default=None, repr=False)
    bounds_note: str = ""

    @property
    def evidence_label(self) -> str:
        """``"log p(x)"``, or ``"log p(x | theta)"`` when the evidence is conditional on
        fitted ``pyro.param`` values (:attr:`given_params`)."""
        return "log p(x | theta)" if self.given_params else "log p(x)"

    @property
    def khat_applies(self) -> bool:
        """Whether k-hat says anything: False for an exact posterior (constant weights)."""
        return not self.exact_posterior and math.isfinite(self.khat)

    @property
    def gap_is_zero(self) -> bool:
        """Whether the gap is zero within its Monte Carlo error (two standard errors), or
        exactly zero (an exact posterior)."""
        return self.exact_posterior or abs(self.gap) <= max(2.0 * self.gap_se, 5e-5)

    def iwae_bound(self, k: int) -> Bound:
        """The bound :math:`\\mathcal{L}_K` for ``k`` (KeyError if not computed)."""
        for bound in self.iwae:
            if bound.k == k:
                return bound
        raise KeyError(f"L_K for K={k} was not computed; available: {[b.k for b in self.iwae]}")

    def __repr__(self) -> str:
        khat = (f"khat={self.khat:.3g} ({self.khat_verdict}), ess={self.ess:.0f}"
                if self.khat_applies else "khat=- (exact posterior)")
        gap = format_gap(self.gap, self.gap_se, self.exact_posterior)
        return (
            f"Diagnostics(family={self.family!r}, elbo={self.elbo:.4f} ± {self.elbo_se:.2g}, "
            f"log_evidence={self.log_evidence:.4f} ± {self.log_evidence_se:.2g} "
            f"({self.log_evidence_method}), gap={gap}, {khat}, "
            f"num_particles={self.num_particles})"
        )

    @property
    def log_evidence_is_exact(self) -> bool:
        """Whether ``log_evidence`` is exact (else an estimate, biased low)."""
        return self.log_evidence_method == "exact"

    def __str__(self) -> str:
        lines = [
            f"Diagnostics of a {self.family!r} fit ({self.num_particles} draws from q)",
            f"  ELBO            {self.elbo:14.4f} ± {self.elbo_se:.4f}  [lower bound]",
            f"  {self.evidence_label:<16s}{self.log_evidence:14.4f} ± "
            f"{self.log_evidence_se:.4f}  ({self.log_evidence_method})  "
            + ("[exact]" if self.log_evidence_is_exact else "[estimate, low in expectation]"),
        ]
        why = self.log_evidence_estimate.info.get("why")
        if why:
            lines.append(f"    ({why})")
        lines += [
            f"  gap (KL)        {format_gap(self.gap, self.gap_se, self.exact_posterior):>14s}"
            + ("" if self.exact_posterior else f" ± {self.gap_se:.4f}  [estimate]"),
        ]
        for b in self.iwae:
            lines.append(f"  L_{b.k:<13d} {b.value:14.4f} ± {b.se:.4f}  [lower bound]")
        if self.khat_applies:
            lines.append(f"  ESS             {self.ess:14.1f}  [estimate]")
            lines.append(f"  k-hat           {self.khat:14.3f}  ({self.khat_verdict})  "
                         "[estimate]")
        else:
            lines.append("  k-hat, ESS                   -  (q is the exact posterior: "
                         "constant weights)")
        lines += self._bounds_lines()
        for site, est in self.gradient_estimators.items():
            lines.append(f"  gradient of {site!r}: {est}")
        if self.verdict is not None:
            lines.append(f"  Verdict: {self.verdict.sentence}")
        lines.append("  ([bound]: on its side of the true value in expectation; [estimate]: "
                     "no side guaranteed)")
        return "\n".join(lines)

    def _bounds_lines(self) -> list[str]:
        lines = []
        b = self.bracket
        if b is not None:
            upper = "upper bound" if b.upper_is_bound else "upper estimate"
            lines.append(f"  bracket lower   {b.lower:14.4f} ± {b.lower_se:.4f}  [lower bound]")
            lines.append(f"  bracket upper   {b.upper:14.4f} ± {b.upper_se:.4f}  [{upper}]")
            lines.append(f"    (bidirectional AIS, {b.num_temperatures} temperatures, "
                         f"{b.num_chains} chains a side; width {b.width:.4f})")
        if self.cubo is not None:
            lines.append(f"  CUBO_2          {self.cubo.value:14.4f} ± {self.cubo.se:.4f}  "
                         "[estimate of an upper bound, biased low]")
        eb = self.error_bounds
        if eb is not None:
            kind = ("bounds; reliable: k-hat < 0.5" if eb.reliable
                    else "NOT reliable: k-hat >= 0.5 or infinite")
            source = LOWER_SOURCES.get(eb.lower_source, eb.lower_source)
            lines.append(f"  error bounds, from CUBO_2 and the {source} "
                         f"(D_2 <= {eb.d2:.3g}, W_2 <= {eb.w2:.3g})  [{kind}]")
            for name, site in eb.sites.items():
                lines.append(
                    f"    {name:12s} |mean err| <= {float(site.mean_error.max()):.3g} "
                    f"({float(site.relative_mean_error.max()):.2f} sd)  |sd err| <= "
                    f"{float(site.sd_error.max()):.3g} "
                    f"({float(site.relative_sd_error.max()):.2f} sd)")
        elif self.bounds_note:
            lines.append(f"  error bounds: not computed ({self.bounds_note})")
        return lines


def format_gap(gap: float, se: float, exact: bool = False) -> str:
    """The gap as printed everywhere (tables, reports, plots): ``"0 (exact)"`` for an exact
    posterior, ``"~0"`` within two standard errors of zero, else four decimals."""
    if exact:
        return "0 (exact)"
    if not math.isfinite(gap):
        return str(gap)
    if abs(gap) <= max(2.0 * se, 5e-5):
        return "~0"
    return f"{gap:.4f}"


def _check_bounds(bounds, bracket):
    if bounds not in ("auto", True, False):
        raise ValueError(f"bounds={bounds!r} is not known; expected 'auto', True or False")
    if not (bracket is None or isinstance(bracket, (bool, AIS, Bracket))):
        raise TypeError(
            f"bracket={bracket!r} is not known; expected False, True (bidirectional AIS with "
            "the default options), pyrovi.AIS(...) options, or a Bracket from "
            "pyrovi.evidence_bracket"
        )


def _check_evidence(evidence):
    if isinstance(evidence, Estimate):
        return
    if evidence not in ("auto", "exact", "importance", "ais"):
        raise ValueError(
            f"evidence={evidence!r} is not known; expected 'auto', 'exact', 'importance', "
            "'ais' or an Estimate from pyrovi.log_evidence"
        )


def diagnose(
    result: FitResult,
    *,
    num_particles: int = 10_000,
    seed: int | None = None,
    evidence="auto",
    chunk_size: int = DEFAULT_CHUNK,
    bounds="auto",
    bracket=False,
) -> Diagnostics:
    r"""Diagnose a ``VIResult`` or ``EMResult``: ELBO, log evidence, their gap, the IWAE
    bounds, PSIS k-hat, ESS, :math:`\mathrm{CUBO}_2`, error bounds on the posterior means
    and sds, optionally a bracket of the log evidence, a verdict, and the gradient
    estimator of each site.

    Parameters
    ----------
    result : VIResult or EMResult
        The fit, holding its model and arguments.
    num_particles : int
        Draws from q (default 10,000; at least 2).  Fits whose model cannot broadcast over
        particles, or with enumerated discrete latents, draw them one at a time.
    seed : int, optional
        Seed of the draws.
    evidence : {"auto", "exact", "importance", "ais"} or Estimate
        Where the log evidence comes from.  ``"auto"``: exact for an EM fit or a model where
        it is tractable (finite discrete latents, linear-Gaussian up to 500 dimensions),
        else the importance estimate from the same draws.  An :class:`Estimate` (e.g. from
        ``log_evidence(..., method="ais")``) is used as given.
    chunk_size : int
        Particles per vectorized chunk (bounds memory).
    bounds : {"auto", True, False}
        The error bounds on q's means and sds (:attr:`Diagnostics.error_bounds`).  They use
        the same draws as everything else (no further model evaluations), but keep them in
        memory: ``"auto"`` (default) computes them for a VI fit unless ``num_particles``
        times the latent dimension exceeds 10 million; True always; False never.
    bracket : bool, AIS or Bracket
        Bidirectional AIS around :math:`\log p(x)` (:func:`~pyrovi.evidence_bracket`; VI
        fits with continuous latents).  Off by default: it costs about
        ``2 * num_chains * num_temperatures * num_leapfrog`` gradients of the log joint
        (64 x 200 x 5 x 2 = 128,000 with the defaults, against ``num_particles`` log-joint
        evaluations for the rest of the diagnosis).  True: default options;
        ``AIS(num_temperatures=..., ...)``: those options; a ``Bracket`` already computed
        (for instance from exact posterior draws on simulated data): used as given.  Its
        lower side then also serves the error bounds when it is higher than the evidence
        estimate.  On real data its upper side is an estimate, not a bound.

    Returns
    -------
    Diagnostics

    Raises
    ------
    ValueError
        A result without its model or arguments, ``num_particles`` < 2, an unknown
        ``evidence``; ``IntractableError`` for ``evidence="exact"`` on a model without an
        exact form; ``ModelError`` naming the site that produced non-finite weights.
    """
    if not isinstance(result, FitResult):
        raise TypeError(
            f"diagnose expects a pyrovi.VIResult or EMResult, got {type(result).__name__}"
        )
    info = check_result(result)
    if not result.has_density:
        raise ValueError(
            f"diagnose needs a guide with a density; the {result.family!r} fit is a point "
            "mass (AutoDelta), whose ELBO is -inf and whose importance weights are "
            "undefined. Fit guide='laplace' for a Gaussian around the MAP, or another family."
        )
    _check_particles(num_particles)
    _check_evidence(evidence)
    _check_bounds(bounds, bracket)
    exact_q = bool(result.exact_posterior)
    dim = sum(info.trace.nodes[k]["value"].numel() for k in result.latent_sites)
    bounds_note = ""
    if exact_q:
        want_bounds, bounds_note = False, "q is the exact posterior: every error is 0"
    elif bounds == "auto" and num_particles * dim > AUTO_BOUNDS_MAX_VALUES:
        want_bounds = False
        bounds_note = (f"{num_particles} draws x {dim} latent values exceed "
                       f"{AUTO_BOUNDS_MAX_VALUES:,}; pass bounds=True to keep them")
    else:
        want_bounds = bool(bounds)
        if not want_bounds:
            bounds_note = "bounds=False"
    if bracket is not False and bracket is not None and exact_q:
        raise ValueError(
            "bracket= asks for bidirectional AIS, but this fit's q is the exact posterior: its "
            "log evidence is exact already; call diagnose without bracket="
        )
    weights = result_log_weights(result, num_particles, seed=seed, chunk_size=chunk_size,
                                 keep_values=want_bounds)
    log_w = weights.log_w
    elbo, elbo_se = mean_se(log_w)
    estimate = fallback = None
    if isinstance(evidence, Estimate):
        estimate = evidence
    elif result.exact_posterior and evidence in ("auto", "exact"):
        # q is the exact posterior: its ELBO is the log evidence
        estimate = Estimate(float(result.elbo), 0.0, "exact", 0, {"how": "em"})
    elif evidence in ("auto", "exact"):
        if evidence == "exact" or dim <= AUTO_EXACT_MAX_DIM:
            with result.scope():
                try:
                    estimate = exact_log_evidence(result.model, result.args, result.kwargs)
                except IntractableError as err:
                    if evidence == "exact":
                        raise
                    fallback = f"not exact: {err}"  # said on the estimate that replaces it
    elif evidence == "ais":
        estimate = log_evidence(result, method="ais", seed=seed)
    if estimate is None:  # importance from the same draws: joint standard error of the gap
        value, se = log_mean_exp(log_w)
        info_ = {"ess": _ess(log_w)}
        if fallback is not None:
            info_["why"] = fallback
        estimate = Estimate(value, se, "importance", weights.num_particles, info_)
        gap, gap_se = gap_from_weights(log_w)
    else:
        gap = estimate.value - elbo
        gap_se = math.sqrt(elbo_se**2 + estimate.se**2)
    psis = psis_diagnostic(log_w)
    if isinstance(bracket, Bracket):
        brk = bracket
    elif bracket is True or isinstance(bracket, AIS):
        brk = evidence_bracket(result, options=bracket if isinstance(bracket, AIS) else None,
                               cubo=False, seed=seed)
    else:
        brk = None
    cubo_2 = None if exact_q else cubo(log_w, 2.0)
    eb = None
    if want_bounds:
        lower = estimate
        if brk is not None and (estimate.method != "exact"
                                and brk.lower - 2 * brk.lower_se > estimate.value
                                - 2 * estimate.se):
            lower = brk
        value, se, source = lower_from(lower)
        eb = error_bounds_from_draws(
            weights.values, log_w, log_evidence_lower=value, log_evidence_lower_se=se,
            lower_source=source, gaussian=gaussian_sites(result, info.trace, weights.values))
    if exact_q:
        said = Verdict(True, True, True, 0.0, 0.0, None, None, 0.0, 0.0,
                       "nothing: q is the exact posterior",
                       "Means, sds and tails: trust (q is the exact posterior"
                       + (" given the fitted parameters" if any(
                           site["type"] == "param" for site in info.trace.nodes.values())
                          else "") + "; gap 0).")
    else:
        said = verdict(
            elbo=elbo, bracket=brk,
            log_evidence=estimate.value if estimate.method == "exact" else None,
            khat=psis.khat, num_particles=weights.num_particles, error_bounds=eb,
            family=str(result.family))
    return Diagnostics(
        family=str(result.family),
        elbo=elbo,
        elbo_se=elbo_se,
        log_evidence=estimate.value,
        log_evidence_se=estimate.se,
        log_evidence_method=estimate.method,
        gap=gap,
        gap_se=gap_se,
        iwae=iwae_bounds(log_w, IWAE_KS),
        khat=psis.khat,
        khat_threshold=psis.threshold,
        khat_verdict=psis.verdict,
        ess=_ess(log_w),
        num_particles=weights.num_particles,
        gradient_estimators=gradient_estimators(result),
        log_evidence_estimate=estimate,
        exact_posterior=bool(result.exact_posterior),
        given_params=tuple(n for n, site in info.trace.nodes.items() if site["type"] == "param"),
        cubo=cubo_2,
        error_bounds=eb,
        bracket=brk,
        verdict=said,
        bounds_note=bounds_note,
    )
