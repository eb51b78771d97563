"""``compare``: one row of ELBO-vs-evidence diagnostics per fit, as a text table, an HTML
table for notebooks, or a pandas DataFrame."""

from __future__ import annotations

import dataclasses
import html
import math
from collections.abc import Mapping, Sequence

from pyrovi._result import FitResult
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
}


@dataclasses.dataclass(frozen=True)
class ComparisonTable:
    """Diagnostics of several fits side by side.

    Attributes
    ----------
    rows : tuple of dict
        One dict per fit with the keys of :data:`COLUMNS`: ``name``, ``family``, ``elbo``,
        ``elbo_se``, ``log_evidence``, ``log_evidence_se``, ``log_evidence_method``,
        ``evidence_of`` (``"p(x)"``, or ``"p(x | theta)"`` when the evidence is conditional on
        fitted ``pyro.param`` values: EM's, say; such a number is not a marginal likelihood
        and compares only with fits of the same parameters), ``gap``, ``gap_se`` (nats),
        ``khat``, ``ess`` (NaN where they do not apply: an exact posterior), ``num_steps``
        (optimizer steps or EM iterations) and ``wall_time`` (seconds of the fit).

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
        """The column keys, in display order."""
        return tuple(COLUMNS)

    def _cells(self) -> list[list[str]]:
        out = []
        for row in self.rows:
            cells = []
            exact = self.diagnostics[row["name"]].exact_posterior
            for key, (_, fmt) in COLUMNS.items():
                value = row[key]
                if key == "gap":
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

    def __str__(self) -> str:
        headers = [h for h, _ in COLUMNS.values()]
        cells = self._cells()
        widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]

        def line(parts):
            return "  ".join(
                p.ljust(w) if i < 2 else p.rjust(w)
                for i, (p, w) in enumerate(zip(parts, widths, strict=True))
            )

        rule = "  ".join("-" * w for w in widths)
        return "\n".join([line(headers), rule] + [line(r) for r in cells])

    def __repr__(self) -> str:  # the table itself is str(table), or HTML in a notebook
        names = [r["name"] for r in self.rows]
        return f"ComparisonTable({len(self.rows)} fits: {names}; print() it for the table)"

    def _repr_html_(self) -> str:
        head = "".join(f"<th>{html.escape(h)}</th>" for h, _ in COLUMNS.values())
        body = "".join(
            "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>"
            for row in self._cells()
        )
        return (f"<table class='pyrovi-comparison'><thead><tr>{head}</tr></thead>"
                f"<tbody>{body}</tbody></table>")

    def to_pandas(self):
        """The table as a ``pandas.DataFrame`` indexed by fit name (needs pandas)."""
        try:
            import pandas as pd
        except ImportError as err:  # pragma: no cover - pandas is a test extra
            raise ImportError(
                "ComparisonTable.to_pandas needs pandas; install it with `pip install pandas`"
            ) from err
        return pd.DataFrame([dict(r) for r in self.rows], columns=list(COLUMNS)).set_index("name")


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
    }


def compare(
    results: Mapping | Sequence,
    *,
    num_particles: int = 10_000,
    seed: int | None = None,
    evidence="auto",
    diagnostics: Mapping | None = None,
) -> ComparisonTable:
    """Diagnose several fits and tabulate them, one row per fit.

    Parameters
    ----------
    results : mapping of str to result, or sequence of results
        ``{"meanfield": r1, "fullrank": r2, "em": r3}``; a sequence is named by family.
    num_particles, seed, evidence
        Passed to :func:`~pyrovi.diagnostics.diagnose` for every fit.
    diagnostics : mapping of str to Diagnostics, optional
        Diagnostics already computed for some fits (by name); those fits are not diagnosed
        again.

    Returns
    -------
    ComparisonTable
    """
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
        else diagnose(r, num_particles=num_particles, seed=seed, evidence=evidence)
        for name, r in items
    }
    rows = tuple(_row(name, r, diags[name]) for name, r in items)
    return ComparisonTable(rows, diags)
