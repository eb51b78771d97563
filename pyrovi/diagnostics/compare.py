"""``compare``: one row of ELBO-vs-evidence diagnostics per fit, as a text table, an HTML
table for notebooks, or a pandas DataFrame."""

from __future__ import annotations

import dataclasses
import html
import math
from collections.abc import Mapping, Sequence

from pyrovi._result import FitResult
from pyrovi.diagnostics.bracket import Bracket
from pyrovi.diagnostics.diagnose import Diagnostics, diagnose, format_gap

__all__ = ["ComparisonTable", "compare", "COLUMNS"]

#: Column name -> (header, format) of a comparison table, in display order.
COLUMNS = {
    "name": ("fit", "{}"),
    "family": ("family", "{}"),
    "elbo": ("ELBO", "{:.4f}"),
    "elbo_se": ("ELBO se", "{:.4f}"),
    "log_evidence": ("log p(x)", "{:.4f}"),
    "log_evidence_se": ("log p(x) se", "{:.4f}"),
    "log_evidence_method": ("method", "{}"),
    "evidence_of": ("of", "{}"),
    "gap": ("gap", "{:.4f}"),
    "gap_se": ("gap se", "{:.4f}"),
    "khat": ("k-hat", "{:.3f}"),
    "ess": ("ESS", "{:.0f}"),
    "num_steps": ("steps", "{}"),
    "wall_time": ("time (s)", "{:.2f}"),
    "bracket_lower": ("lower", "{:.4f}"),
    "bracket_upper": ("upper", "{:.4f}"),
    "upper_is": ("upper is", "{}"),
    "mean_error": ("mean err <= (sd)", "{:.3f}"),
    "sd_error": ("sd err <= (sd)", "{:.3f}"),
    "elpd_loo": ("elpd_loo", "{:.2f}"),
    "elpd_loo_se": ("elpd se", "{:.2f}"),
    "loo_bad_k": ("bad k", "{}"),
}

#: Columns shown only when at least one fit has them (a bracket, error bounds).
OPTIONAL = {"bracket_lower": "bracket", "bracket_upper": "bracket", "upper_is": "bracket",
            "mean_error": "bounds", "sd_error": "bounds",
            "elpd_loo": "loo", "elpd_loo_se": "loo", "loo_bad_k": "loo"}

#: Footnotes printed under a table that shows the optional columns.
FOOTNOTES = {
    "bracket": "lower, upper: bidirectional AIS around log p(x); lower is a bound, upper a "
               "bound only where 'upper is' says so (exact posterior draws), else an estimate",
    "bounds": "mean err, sd err: bounds on |q - posterior| of means and sds, largest over "
              "coordinates, in sds of q (Huggins et al. 2020; * not reliable: k-hat >= 0.5)",
    "loo": "elpd_loo: PSIS-LOO of the draws of q importance-corrected by p/q "
           "(pyrovi.arviz.loo), an estimate; bad k: points with Pareto k above "
           "min(1 - 1/log10 S, 0.7), where it is not reliable",
}


@dataclasses.dataclass(frozen=True)
class ComparisonTable:
    r"""Diagnostics of several fits side by side.

    Attributes
    ----------
    rows : tuple of dict
        One dict per fit with the keys of :data:`COLUMNS`: ``name``, ``family``, ``elbo``,
        ``elbo_se``, ``log_evidence``, ``log_evidence_se``, ``log_evidence_method``,
        ``evidence_of`` (``"p(x)"``, or ``"p(x | theta)"`` when the evidence is conditional on
        fitted ``pyro.param`` values: EM's, say; such a number is not a marginal likelihood
        and compares only with fits of the same parameters), ``gap``, ``gap_se`` (nats),
        ``khat``, ``ess`` (NaN where they do not apply: an exact posterior), ``num_steps``
        (optimizer steps or EM iterations), ``wall_time`` (seconds of the fit),
        ``bracket_lower``, ``bracket_upper`` (the bidirectional-AIS bracket of
        :math:`\log p(x)`, nats; None without one), ``upper_is`` (``"bound"`` or
        ``"estimate"``), ``mean_error``, ``sd_error`` (the largest error bound on a mean or
        sd over all coordinates, in sds of q; 0 for an exact posterior, None when not
        computed), ``bounds_reliable`` (k-hat < 0.5; None without bounds) and ``verdict``
        (the verdict sentence), ``elpd_loo``, ``elpd_loo_se`` and ``loo_bad_k`` (the
        importance-corrected PSIS-LOO of :func:`pyrovi.arviz.loo` and the number of points
        whose Pareto k exceeds its threshold; None unless ``compare(loo=True)``, or for a
        point-mass fit, which has no density to correct by).

    Notes
    -----
    As printed, a gap within two standard errors of zero reads ``~0`` and an exact
    posterior's gap ``0 (exact)``; k-hat and ESS read ``-`` where they do not apply.
    diagnostics : dict of str to Diagnostics
        The full diagnostics of each fit, by name.
    """

    rows: tuple
    diagnostics: dict

    @property
    def columns(self) -> tuple[str, ...]:
        """The column keys shown, in display order: the optional bracket and error-bound
        columns only when some fit has them."""
        shown = {OPTIONAL[k] for k in OPTIONAL for r in self.rows if r[k] is not None}
        return tuple(k for k in COLUMNS if k not in OPTIONAL or OPTIONAL[k] in shown)

    def _cells(self) -> list[list[str]]:
        out = []
        for row in self.rows:
            cells = []
            exact = self.diagnostics[row["name"]].exact_posterior
            for key in self.columns:
                value, fmt = row[key], COLUMNS[key][1]
                if value is None:
                    cells.append("-")
                elif key in ("mean_error", "sd_error") and exact:
                    cells.append("0 (exact)")
                elif key in ("mean_error", "sd_error"):
                    cells.append(fmt.format(value) + ("" if row["bounds_reliable"] else "*"))
                elif key == "gap":
                    cells.append(format_gap(value, row["gap_se"], exact))
                elif key in ("khat", "ess", "gap_se") and exact:
                    cells.append("-")
                elif key in ("khat", "ess") and not math.isfinite(value):
                    cells.append("-")
                elif isinstance(value, float) and not math.isfinite(value):
                    cells.append(str(value))
                else:
                    cells.append(fmt.format(value))
            out.append(cells)
        return out

    def _footnotes(self) -> list[str]:
        kinds = [OPTIONAL[k] for k in self.columns if k in OPTIONAL]
        return [FOOTNOTES[k] for k in dict.fromkeys(kinds)]

    def __str__(self) -> str:
        headers = [COLUMNS[k][0] for k in self.columns]
        cells = self._cells()
        widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]

        def line(parts):
            return "  ".join(
                p.ljust(w) if i < 2 else p.rjust(w)
                for i, (p, w) in enumerate(zip(parts, widths, strict=True))
            )

        rule = "  ".join("-" * w for w in widths)
        return "\n".join([line(headers), rule] + [line(r) for r in cells] + self._footnotes())

    def __repr__(self) -> str:  # the table itself is str(table), or HTML in a notebook
        names = [r["name"] for r in self.rows]
        return f"ComparisonTable({len(self.rows)} fits: {names}; print() it for the table)"

    def _repr_html_(self) -> str:
        head = "".join(f"<th>{html.escape(COLUMNS[k][0])}</th>" for k in self.columns)
        body = "".join(
            "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>"
            for row in self._cells()
        )
        notes = "".join(f"<p>{html.escape(n)}</p>" for n in self._footnotes())
        return (f"<table class='pyrovi-comparison'><thead><tr>{head}</tr></thead>"
                f"<tbody>{body}</tbody></table>{notes}")

    def to_pandas(self):
        """The table as a ``pandas.DataFrame`` indexed by fit name (needs pandas)."""
        try:
            import pandas as pd
        except ImportError as err:  # pragma: no cover - pandas is a test extra
            raise ImportError(
                "ComparisonTable.to_pandas needs pandas; install it with `pip install pandas`"
            ) from err
        columns = list(COLUMNS) + ["bounds_reliable", "verdict"]
        return pd.DataFrame([dict(r) for r in self.rows], columns=columns).set_index("name")


def _row(name: str, result: FitResult, diag: Diagnostics) -> dict:
    return {
        "name": name,
        "family": diag.family,
        "elbo": diag.elbo,
        "elbo_se": diag.elbo_se,
        "log_evidence": diag.log_evidence,
        "log_evidence_se": diag.log_evidence_se,
        "log_evidence_method": diag.log_evidence_method,
        "evidence_of": "p(x | theta)" if diag.given_params else "p(x)",
        "gap": 0.0 if diag.exact_posterior else diag.gap,
        "gap_se": 0.0 if diag.exact_posterior else diag.gap_se,
        "khat": diag.khat if diag.khat_applies else math.nan,
        "ess": diag.ess if diag.khat_applies else math.nan,
        "num_steps": int(result.num_steps),
        "wall_time": float(result.wall_time),
        **_bounds_cells(diag),
    }


def _bounds_cells(diag: Diagnostics) -> dict:
    b, eb = diag.bracket, diag.error_bounds
    cells = {"bracket_lower": None, "bracket_upper": None, "upper_is": None,
             "mean_error": None, "sd_error": None, "bounds_reliable": None,
             "verdict": diag.verdict.sentence if diag.verdict is not None else None}
    if b is not None:
        cells.update(bracket_lower=b.lower, bracket_upper=b.upper,
                     upper_is="bound" if b.upper_is_bound else "estimate")
    if diag.exact_posterior:
        cells.update(mean_error=0.0, sd_error=0.0, bounds_reliable=True)
    elif eb is not None:
        cells.update(mean_error=eb.max_relative_mean_error(),
                     sd_error=eb.max_relative_sd_error(), bounds_reliable=eb.reliable)
    return cells


def _bracket_for(result, bracket):
    """``bracket`` for a fit, False for an exact posterior (nothing to bracket); a Bracket
    object belongs to one fit and is refused for several."""
    if isinstance(bracket, Bracket):
        raise TypeError("compare(bracket=...) takes True or AIS options (one Bracket belongs "
                        "to one fit); pass computed diagnostics with diagnostics= instead")
    return False if isinstance(result, FitResult) and result.exact_posterior else bracket


def compare(
    results: Mapping | Sequence,
    *,
    num_particles: int = 10_000,
    seed: int | None = None,
    evidence="auto",
    diagnostics: Mapping | None = None,
    bounds="auto",
    bracket=False,
    loo: bool = False,
) -> ComparisonTable:
    """Diagnose several fits and tabulate them, one row per fit.

    Parameters
    ----------
    results : mapping of str to result, or sequence of results
        ``{"meanfield": r1, "fullrank": r2, "em": r3}``; a sequence is named by family.
    num_particles, seed, evidence, bounds, bracket
        Passed to :func:`~pyrovi.diagnostics.diagnose` for every fit (``bracket``: the
        bidirectional AIS of each VI fit, off by default for its cost; an exact posterior
        (EM) never gets one).
    diagnostics : mapping of str to Diagnostics, optional
        Diagnostics already computed for some fits (by name); those fits are not diagnosed
        again.
    loo : bool, default False
        Add the importance-corrected PSIS-LOO of each fit (:func:`pyrovi.arviz.loo` on its
        export, with ``seed``): ``elpd_loo``, its se and the number of bad Pareto k.  It
        needs one pointwise log-likelihood variable (one observed site) and a density
        (point-mass fits get ``-``).

    Returns
    -------
    ComparisonTable
    """
    if not isinstance(loo, bool):
        raise TypeError(f"loo must be True or False, got {loo!r}")
    if isinstance(results, Mapping):
        items = [(str(k), v) for k, v in results.items()]
    elif isinstance(results, Sequence) and not isinstance(results, str):
        items, seen = [], {}
        for r in results:
            name = str(r.family) if isinstance(r, FitResult) else type(r).__name__
            seen[name] = seen.get(name, 0) + 1
            items.append((name if seen[name] == 1 else f"{name}#{seen[name]}", r))
    else:
        raise TypeError(
            "results must be a dict of name -> VIResult/EMResult or a list of results, got "
            f"{type(results).__name__}"
        )
    if not items:
        raise ValueError("results is empty; expected at least one fit to compare")
    done = dict(diagnostics or {})
    diags = {
        name: done[name]
        if name in done
        else diagnose(r, num_particles=num_particles, seed=seed, evidence=evidence,
                      bounds=bounds, bracket=_bracket_for(r, bracket))
        for name, r in items
    }
    rows = tuple({**_row(name, r, diags[name]), **_loo_cells(r, loo, seed)}
                 for name, r in items)
    return ComparisonTable(rows, diags)


def _loo_cells(result, wanted: bool, seed) -> dict:
    """The importance-corrected PSIS-LOO of one fit (None cells when not wanted or when
    the fit is a point mass)."""
    cells = {"elpd_loo": None, "elpd_loo_se": None, "loo_bad_k": None}
    if not wanted or not (isinstance(result, FitResult) and result.has_density):
        return cells
    import warnings

    import numpy as np

    from pyrovi.arviz import loo as corrected_loo
    from pyrovi.arviz.backend import arviz_line
    from pyrovi.arviz.converter import to_arviz

    data = to_arviz(result, posterior_predictive=False, seed=seed)
    with warnings.catch_warnings():  # the bad-k count below says it
        warnings.simplefilter("ignore")
        out = corrected_loo(data)
    k = np.asarray(out.pareto_k, dtype=float).ravel()
    # the field is elpd_loo on ArviZ 0.2x, elpd on 1.x; se on both
    elpd = float(out.elpd_loo if arviz_line() == 0 else out.elpd)
    se = float(out.se)
    good_k = min(1 - 1 / np.log10(data["posterior"].sizes["chain"]
                                 * data["posterior"].sizes["draw"]), 0.7)
    cells.update(elpd_loo=elpd, elpd_loo_se=se, loo_bad_k=int(np.sum(k > good_k)))
    return cells
