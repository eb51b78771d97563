r"""``check_evidence``: simulation-checked accuracy of a fitting method's evidence estimates.

On data simulated from the model itself, :math:`z \sim p(z)`, :math:`x \sim p(x \mid z)`, the
latents :math:`z` that made the data are an exact draw from :math:`p(z \mid x)`.  That makes
reverse AIS a genuine stochastic upper bound, so each simulated data set gets a
bidirectional-Monte-Carlo bracket :math:`[\text{lower}, \text{upper}]` around its
:math:`\log p(x)` (Grosse et al. 2015, 2016), and the check reports how tight the brackets
are and where the fit's ELBO and importance estimate sit inside them (and, where the
evidence is tractable, whether the exact value is inside).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import pyro.poutine as poutine
import torch
from pyro.poutine.uncondition_messenger import UnconditionMessenger

from pyrovi._model import inspect_model
from pyrovi._runtime import resolve_seed, seeded
from pyrovi.diagnostics.ais import AIS
from pyrovi.diagnostics.bounds import log_mean_exp, mean_se
from pyrovi.diagnostics.bracket import Bracket, evidence_bracket

__all__ = ["simulate", "check_evidence", "SimulationRow", "EvidenceCheck"]


class _Unobserve(UnconditionMessenger):
    """Sample the named observed sites afresh; leave every other site (``pyro.deterministic``
    ones in particular, which Pyro's ``uncondition`` would resample with wrong shapes) as
    it is."""

    def __init__(self, names):
        super().__init__()
        self.names = frozenset(names)

    def _pyro_sample(self, msg) -> None:
        if msg["name"] in self.names:
            super()._pyro_sample(msg)


def simulate(model: Callable, *args, seed: int | None = None, **kwargs):
    """One draw from the model's prior predictive at ``args``.

    The model's observed sites are those it observes when run with ``args`` (pass the data,
    or any values of the right shape).  Returns ``(latents, data)``: site -> value dicts of
    the latent sites and of the freshly drawn observed sites.
    """
    info = inspect_model(model, args, dict(kwargs))
    observed = [k for k, s in info.trace.nodes.items()
                if s["type"] == "sample" and s["is_observed"]
                and type(s["fn"]).__name__ != "_Subsample"
                and not s["infer"].get("_deterministic", False)]
    if not observed:
        raise ValueError("simulate needs the model's observed sites: run it with its data "
                         "(any values of the right shape), so that it marks them observed; "
                         "with obs=None every site is latent")
    with seeded(resolve_seed(seed)), torch.no_grad():
        trace = poutine.trace(_Unobserve(observed)(model)).get_trace(*args, **kwargs)
    latents = {k: trace.nodes[k]["value"].detach() for k in info.latent}
    data = {k: trace.nodes[k]["value"].detach() for k in observed}
    return latents, data


@dataclasses.dataclass(frozen=True)
class SimulationRow:
    """One simulated data set.

    Attributes
    ----------
    seed : int
        Seed of the simulation, the fit and the bracket.
    bracket : Bracket
        Forward (lower) and reverse (upper, from the true latents) AIS.
    elbo, elbo_se : float
        The fit's ELBO from ``num_particles`` draws of q.
    importance, importance_se : float
        :math:`\\log \\frac1S \\sum_s w_s` from the same draws.
    exact : float or None
        :math:`\\log p(x)` where it is tractable.
    """

    seed: int
    bracket: Bracket
    elbo: float
    elbo_se: float
    importance: float
    importance_se: float
    exact: float | None

    @property
    def contains_exact(self) -> bool | None:
        return None if self.exact is None else self.bracket.contains(self.exact)

    @property
    def gap_upper(self) -> float:
        """``upper - elbo``: a bound (in expectation) on KL(q || posterior)."""
        return self.bracket.upper - self.elbo


@dataclasses.dataclass(frozen=True)
class EvidenceCheck:
    """The outcome of :func:`check_evidence`.

    Attributes
    ----------
    rows : tuple of SimulationRow
    method : str
        The fitting method (family name or the fitter's name).
    """

    rows: tuple
    method: str

    def _stat(self, values) -> tuple[float, float]:
        values = torch.tensor([float(v) for v in values], dtype=torch.float64)
        if values.numel() < 2:
            return float(values.mean()), math.nan
        return mean_se(values)

    @property
    def coverage(self) -> float | None:
        """Fraction of simulations whose bracket (widened by 2.5 standard errors,
        :meth:`Bracket.contains`) contains the exact log evidence (None when it is not
        tractable)."""
        hits = [r.contains_exact for r in self.rows if r.exact is not None]
        return sum(hits) / len(hits) if hits else None

    @property
    def mean_width(self) -> float:
        return self._stat(r.bracket.width for r in self.rows)[0]

    @property
    def mean_gap_upper(self) -> float:
        """Mean of ``upper - elbo``: how much the ELBO may fall short, at most (expectation)."""
        return self._stat(r.gap_upper for r in self.rows)[0]

    @property
    def elbo_below_upper(self) -> float:
        """Fraction of simulations with ``elbo <= upper + 2 se`` (should be 1)."""
        return sum(r.elbo <= r.bracket.upper + 2 * r.bracket.upper_se
                   for r in self.rows) / len(self.rows)

    @property
    def importance_in_bracket(self) -> float:
        """Fraction of simulations whose importance estimate lies in the widened bracket."""
        return sum(r.bracket.contains(r.importance) for r in self.rows) / len(self.rows)

    def summary(self) -> dict:
        width, width_se = self._stat(r.bracket.width for r in self.rows)
        gap, gap_se = self._stat(r.gap_upper for r in self.rows)
        return {
            "method": self.method,
            "num_simulations": len(self.rows),
            "coverage": self.coverage,
            "mean_width": width, "mean_width_se": width_se,
            "mean_gap_upper": gap, "mean_gap_upper_se": gap_se,
            "elbo_below_upper": self.elbo_below_upper,
            "importance_in_bracket": self.importance_in_bracket,
            "mean_elbo_position": self._stat(r.bracket.position(r.elbo) for r in self.rows)[0],
            "mean_importance_position": self._stat(
                r.bracket.position(r.importance) for r in self.rows)[0],
        }

    def __repr__(self) -> str:
        coverage = self.coverage
        cov = "-" if coverage is None else f"{coverage:.2f}"
        return (f"EvidenceCheck(method={self.method!r}, {len(self.rows)} simulations, "
                f"coverage={cov}, mean_width={self.mean_width:.4g})")

    def __str__(self) -> str:
        lines = [f"Evidence check of {self.method!r} on {len(self.rows)} simulated data sets "
                 "(bracket = forward AIS .. reverse AIS from the true latents)",
                 f"{'seed':>6} {'lower':>11} {'upper':>11} {'width':>8} {'ELBO':>11} "
                 f"{'IS':>11} {'exact':>11}"]
        for r in self.rows:
            ex = f"{r.exact:11.4f}" if r.exact is not None else f"{'-':>11}"
            lines.append(f"{r.seed:6d} {r.bracket.lower:11.4f} {r.bracket.upper:11.4f} "
                         f"{r.bracket.width:8.4f} {r.elbo:11.4f} {r.importance:11.4f} {ex}")
        s = self.summary()
        cov = "-" if s["coverage"] is None else f"{s['coverage']:.0%}"
        lines.append(f"mean width {s['mean_width']:.4f}; mean upper - ELBO "
                     f"{s['mean_gap_upper']:.4f} (bounds the KL gap); exact inside {cov}; "
                     "importance inside "
                     f"{s['importance_in_bracket']:.0%}")
        return "\n".join(lines)


def _fitter(family_or_fitter, seed: int):
    if isinstance(family_or_fitter, str):
        import pyrovi

        family = family_or_fitter

        def fit(model, *args, **kwargs):
            return pyrovi.VI(model, family, seed=seed, progress=False).run(*args, **kwargs)

        return fit, family
    if not callable(family_or_fitter):
        raise TypeError("family_or_fitter must be a guide family name or a callable "
                        "fitter(model, *args, **kwargs) -> result, got "
                        f"{type(family_or_fitter).__name__}")
    return family_or_fitter, getattr(family_or_fitter, "__name__", "fitter")


def check_evidence(
    model: Callable,
    family_or_fitter,
    *args,
    num_simulations: int = 10,
    options: AIS | None = None,
    num_chains: int = 64,
    num_particles: int = 2000,
    seed: int = 0,
    **kwargs,
) -> EvidenceCheck:
    r"""Simulate data from the model, fit each data set, and bracket its log evidence.

    Parameters
    ----------
    model : callable
        A Pyro model; run with ``args`` it must observe its data sites (pass the data, or
        any values of the right shape).
    family_or_fitter : str or callable
        A guide family name (``pyrovi.VI(m, family, seed=..., progress=False).run(...)``), or
        ``fitter(model, *args, **kwargs) -> VIResult`` called with the model *conditioned on
        the simulated data*, e.g. ``lambda m, *a: pyrovi.VI(m, "fullrank", seed=0,
        progress=False).run(*a)``.
    *args, **kwargs
        The model's arguments.
    num_simulations : int
        Simulated data sets (default 10); simulation ``i`` uses seed ``seed + i``.
    options : AIS, optional
        Options of the bidirectional AIS (default ``AIS(num_temperatures=200)``).
    num_chains : int
        Chains per side of each bracket.
    num_particles : int
        Draws of q for the ELBO and the importance estimate.

    Returns
    -------
    EvidenceCheck
    """
    from pyrovi.diagnostics.estimate import IntractableError
    from pyrovi.diagnostics.exact import exact_log_evidence
    from pyrovi.diagnostics.weights import result_log_weights

    if isinstance(num_simulations, bool) or not isinstance(num_simulations, int) \
            or num_simulations < 1:
        raise ValueError(f"num_simulations must be a positive int, got {num_simulations!r}")
    options = options or AIS()
    rows = []
    name = None
    for i in range(num_simulations):
        s = seed + i
        fit, name = _fitter(family_or_fitter, s)
        latents, data = simulate(model, *args, seed=s, **kwargs)
        sim_model = poutine.condition(model, data=data)
        result = fit(sim_model, *args, **kwargs)
        try:
            exact = exact_log_evidence(sim_model, args, kwargs).value
        except IntractableError:
            exact = None
        bracket = evidence_bracket(result, posterior_draws={k: v.unsqueeze(0)
                                                            for k, v in latents.items()},
                                   options=options, num_chains=num_chains, cubo=False, seed=s)
        lw = result_log_weights(result, num_particles, seed=s).log_w
        elbo, elbo_se = mean_se(lw)
        imp, imp_se = log_mean_exp(lw)
        rows.append(SimulationRow(s, bracket, elbo, elbo_se, imp, imp_se, exact))
    return EvidenceCheck(tuple(rows), name)
