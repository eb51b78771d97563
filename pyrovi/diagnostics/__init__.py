"""ELBO-vs-log-evidence diagnostics: how far each guide is from the true posterior.

:math:`\\log p(x) = \\mathrm{ELBO}(q) + \\mathrm{KL}(q \\,\\|\\, p(z \\mid x))`.
:func:`diagnose` reports the ELBO, the log evidence, their gap, the importance-weighted
bounds, PSIS k-hat and ESS of a fit; :func:`log_evidence` estimates :math:`\\log p(x)` on its
own (exact, importance or AIS); :func:`compare` tabulates several fits;
:func:`plot_elbo` and :func:`plot_gap` draw them.  :func:`evidence_bracket` brackets
:math:`\\log p(x)` by bidirectional Monte Carlo, :func:`check_evidence` checks that on
simulated data, :func:`error_bounds` bounds the errors of posterior means and standard
deviations, and :func:`assess` turns them into a verdict.
"""

from pyrovi.diagnostics.accuracy import ErrorBounds, SiteErrorBounds, error_bounds
from pyrovi.diagnostics.ais import AIS
from pyrovi.diagnostics.bounds import Bound
from pyrovi.diagnostics.bracket import Bracket, evidence_bracket
from pyrovi.diagnostics.compare import ComparisonTable, compare
from pyrovi.diagnostics.cubo import CUBO, cubo
from pyrovi.diagnostics.diagnose import Diagnostics, diagnose
from pyrovi.diagnostics.evidence import Estimate, IntractableError, log_evidence
from pyrovi.diagnostics.plots import plot_elbo, plot_gap
from pyrovi.diagnostics.psis import PSIS, psis_diagnostic
from pyrovi.diagnostics.simcheck import EvidenceCheck, check_evidence, simulate
from pyrovi.diagnostics.verdict import Verdict, assess, verdict
from pyrovi.diagnostics.weights import LogWeights, importance_log_weights

__all__ = [
    "diagnose",
    "Diagnostics",
    "log_evidence",
    "Estimate",
    "IntractableError",
    "AIS",
    "compare",
    "ComparisonTable",
    "plot_elbo",
    "plot_gap",
    "Bound",
    "PSIS",
    "psis_diagnostic",
    "LogWeights",
    "importance_log_weights",
    "Bracket",
    "evidence_bracket",
    "CUBO",
    "cubo",
    "ErrorBounds",
    "SiteErrorBounds",
    "error_bounds",
    "EvidenceCheck",
    "check_evidence",
    "simulate",
    "Verdict",
    "verdict",
    "assess",
]
