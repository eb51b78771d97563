r"""One verdict on a fit: may its means, standard deviations and tails be trusted, and what
to try next.

It combines three pieces of evidence:

* the **gap** :math:`\log p(x) - \mathrm{ELBO} = \mathrm{KL}(q \,\|\, p(z \mid x))`, located
  by a bracket of :math:`\log p(x)` (or the exact value);
* **PSIS** :math:`\hat k` against the sample-size threshold
  :math:`\min(1 - 1/\log_{10} S, 0.7)` (Vehtari et al. 2024): below
  :math:`\min(0.5, \text{threshold})` q covers the posterior's bulk and tails well enough for
  importance weighting; above 0.7 it misses mass;
* the **error bounds** on means and standard deviations of
  :mod:`pyrovi.diagnostics.accuracy` (Huggins et al. 2020), in units of q's standard
  deviations.

Means and sds are trusted when their bounds are reliable (:math:`\hat k < 0.5`) and below
``tolerance`` standard deviations for every coordinate.  Tails are never bounded by these
results; they are trusted only when :math:`\hat k` is good *and* the sd bounds hold, since a
q whose weights have a light tail has not missed posterior mass far out.
"""

from __future__ import annotations

import dataclasses
import math

from pyrovi.diagnostics.estimate import Estimate
from pyrovi.diagnostics.psis import khat_threshold

__all__ = ["Verdict", "verdict", "assess", "DEFAULT_TOLERANCE"]

#: Largest bound on a mean or sd error, in standard deviations of q, that is trusted.
DEFAULT_TOLERANCE = 0.25


@dataclasses.dataclass(frozen=True)
class Verdict:
    """What a fit may be used for.

    Attributes
    ----------
    means, sds, tails : bool or None
        Whether each may be trusted (None: not enough information to say).
    gap_lower, gap_upper : float or None
        The KL gap ``log p(x) - elbo`` located between these (from the bracket, or equal
        when the evidence is exact); None when unknown.
    khat, khat_threshold : float or None
        PSIS k-hat and its sample-size threshold.
    max_mean_error, max_sd_error : float or None
        Largest error bound over all coordinates, in sds of q.
    next_step : str
        What to try next, in words.
    sentence : str
        The whole verdict in one sentence.
    """

    means: bool | None
    sds: bool | None
    tails: bool | None
    gap_lower: float | None
    gap_upper: float | None
    khat: float | None
    khat_threshold: float | None
    max_mean_error: float | None
    max_sd_error: float | None
    next_step: str
    sentence: str

    def __str__(self) -> str:
        return self.sentence


def _word(flag: bool | None) -> str:
    return {True: "trust", False: "do not trust", None: "unknown"}[flag]


def verdict(
    *,
    elbo: float | None = None,
    bracket=None,
    log_evidence: float | None = None,
    khat: float | None = None,
    num_particles: int | None = None,
    error_bounds=None,
    family: str | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
) -> Verdict:
    """Combine a fit's diagnostics into a verdict (every argument optional).

    Parameters
    ----------
    elbo : float, optional
        The fit's ELBO.
    bracket : Bracket, optional
        Both sides of log p(x) (:func:`~pyrovi.diagnostics.bracket.evidence_bracket`).
    log_evidence : float, optional
        The exact log p(x), when known (takes precedence over ``bracket`` for the gap).
    khat, num_particles : float, int, optional
        PSIS k-hat and the draws behind it (default: those of ``error_bounds``).
    error_bounds : ErrorBounds, optional
        From :func:`~pyrovi.diagnostics.accuracy.error_bounds`.
    family : str, optional
        The guide family, to suggest the next one.
    tolerance : float
        Largest trusted error bound, in sds of q (default 0.25).
    """
    if error_bounds is not None and khat is None:
        khat, num_particles = error_bounds.khat, error_bounds.num_particles
    threshold = khat_threshold(num_particles) if num_particles and num_particles > 10 else None
    gap_lower = gap_upper = None
    if elbo is not None and log_evidence is not None:
        gap_lower = gap_upper = log_evidence - elbo
    elif elbo is not None and bracket is not None:
        gap_lower, gap_upper = max(0.0, bracket.lower - elbo), bracket.upper - elbo

    good_khat = None if khat is None or threshold is None else khat < min(0.5, threshold)
    ok_khat = None if khat is None or threshold is None else khat < threshold
    max_mean = max_sd = None
    means = sds = None
    if error_bounds is not None:
        max_mean = error_bounds.max_relative_mean_error()
        max_sd = error_bounds.max_relative_sd_error()
        means = bool(error_bounds.reliable and max_mean <= tolerance)
        sds = bool(error_bounds.reliable and max_sd <= tolerance)
    elif ok_khat is not None:  # k-hat alone (Yao et al. 2018): means need ok, sds good
        means, sds = ok_khat, good_khat
    tails = None if good_khat is None else bool(good_khat and sds is not False)

    # what to try next
    fam = (family or "").lower()
    richer = ("fit 'fullrank' (or 'lowrank')" if fam in ("meanfield", "delta")
              or fam.startswith("lowrank") else "")
    beyond = ("use MCMC (e.g. NUTS) or reparameterize the model: the posterior is not "
              "Gaussian in the unconstrained space")
    if khat is not None and khat > 0.7:
        step = richer or beyond
    elif threshold is not None and khat is not None and khat >= threshold:
        step = f"draw more particles (k-hat {khat:.2f} >= {threshold:.2f} for S={num_particles})"
    elif means is False or sds is False:
        step = richer or beyond
    elif bracket is not None and bracket.width > max(0.1, 4 * (bracket.lower_se
                                                                + bracket.upper_se)):
        step = (f"more AIS temperatures: the bracket is {bracket.width:.3g} nats wide "
                f"({bracket.num_temperatures} temperatures)")
    elif means and sds and tails:
        step = "nothing: the fit may be used for means, sds and tails"
    elif means and sds:
        step = "check tails with more particles or MCMC before using tail quantiles"
    else:
        step = "compute the error bounds (pyrovi.diagnostics.accuracy.error_bounds)"

    parts = []
    if max_mean is not None:
        parts.append(f"means: {_word(means)} (error <= {max_mean:.2g} sd)")
        parts.append(f"sds: {_word(sds)} (error <= {max_sd:.2g} sd)")
    else:
        parts.append(f"means: {_word(means)}")
        parts.append(f"sds: {_word(sds)}")
    if khat is not None:
        parts.append(f"tails: {_word(tails)} (k-hat {khat:.2f})")
    else:
        parts.append(f"tails: {_word(tails)}")
    if gap_upper is not None:
        if gap_lower == gap_upper:
            parts.append(f"gap {gap_upper:.3g} nats")
        else:
            parts.append(f"gap in [{gap_lower:.3g}, {gap_upper:.3g}] nats")
    if error_bounds is not None and not error_bounds.reliable:
        parts.append("error bounds not reliable (k-hat >= 0.5 or infinite)")
    sentence = "; ".join(parts) + f". Next: {step}."
    sentence = sentence[0].upper() + sentence[1:]
    return Verdict(means, sds, tails, gap_lower, gap_upper, khat, threshold, max_mean, max_sd,
                   step, sentence)


def assess(result, *, bracket=None, log_evidence=None, num_particles: int = 10_000,
           seed: int | None = None, tolerance: float = DEFAULT_TOLERANCE) -> Verdict:
    """Error bounds of a VI fit (:func:`~pyrovi.diagnostics.accuracy.error_bounds`) and its
    verdict in one call.  ``log_evidence``: an exact float or an ``Estimate``; ``bracket``:
    a :class:`~pyrovi.diagnostics.bracket.Bracket` (its lower side feeds the bounds)."""
    from pyrovi.diagnostics.accuracy import error_bounds as _error_bounds

    lower = log_evidence if log_evidence is not None else bracket
    eb = _error_bounds(result, num_particles=num_particles, seed=seed, log_evidence=lower)
    exact = None
    if isinstance(log_evidence, (int, float)):
        exact = float(log_evidence)
    elif isinstance(log_evidence, Estimate) and log_evidence.method == "exact":
        exact = float(log_evidence.value)
    elbo = float(result.elbo) if math.isfinite(result.elbo) else None
    return verdict(elbo=elbo, bracket=bracket, log_evidence=exact, error_bounds=eb,
                   family=result.family, tolerance=tolerance)
