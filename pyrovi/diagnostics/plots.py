"""Plots of the ELBO against the log evidence, in ArviZ's look (matplotlib).

Both functions draw on ``ax`` (a new figure when None), return the axes and never call
``plt.show()``.  ArviZ's ``arviz-darkgrid`` style is applied inside a context manager, so the
caller's global matplotlib style is left alone.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Mapping, Sequence

import numpy as np

from pyrovi._result import FitResult

__all__ = ["plot_elbo", "plot_gap"]


def _style():
    try:
        import arviz as az

        return az.style.context("arviz-darkgrid")
    except Exception:  # arviz without its styles: plain matplotlib look
        return contextlib.nullcontext()


def _named(results) -> list[tuple[str, FitResult]]:
    if isinstance(results, FitResult):
        named = [(str(results.family), results)]
    elif isinstance(results, Mapping):
        named = [(str(k), v) for k, v in results.items()]
    elif isinstance(results, Sequence) and not isinstance(results, str):
        named = [
            (str(r.family) if isinstance(r, FitResult) else str(i), r)
            for i, r in enumerate(results)
        ]
    else:
        named = [("fit", results)]
    for name, r in named:
        if not isinstance(r, FitResult):
            raise TypeError(
                f"plot_elbo expects pyrovi results (VIResult or EMResult), but {name!r} is a "
                f"{type(r).__name__}; pass a result, a list of results or a dict of name -> "
                "result"
            )
    return named


def _trace(result: FitResult) -> np.ndarray:
    return np.asarray(result.objective_trace, dtype=float)


def _running_mean(x: np.ndarray, window: int) -> np.ndarray:
    """Trailing running mean (NaNs of skipped steps ignored); the first values average
    what is there so far."""
    if window <= 1 or x.size == 0:
        return x
    finite = np.isfinite(x)
    csum = np.concatenate([[0.0], np.cumsum(np.where(finite, x, 0.0))])
    ccount = np.concatenate([[0], np.cumsum(finite)])
    idx = np.arange(1, x.size + 1)
    lo = np.maximum(idx - window, 0)
    count = ccount[idx] - ccount[lo]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, (csum[idx] - csum[lo]) / np.maximum(count, 1), np.nan)


def _running_se(x: np.ndarray, window: int) -> np.ndarray:
    """Monte Carlo standard error of :func:`_running_mean` (spread of the window / sqrt n)."""
    if window <= 1 or x.size == 0:
        return np.zeros_like(x)
    mean = _running_mean(x, window)
    mean_sq = _running_mean(np.where(np.isfinite(x), x, np.nan) ** 2, window)
    finite = np.isfinite(x)
    ccount = np.concatenate([[0], np.cumsum(finite)])
    idx = np.arange(1, x.size + 1)
    count = ccount[idx] - ccount[np.maximum(idx - window, 0)]
    with np.errstate(invalid="ignore", divide="ignore"):
        var = np.maximum(mean_sq - mean**2, 0.0) * count / np.maximum(count - 1, 1)
        return np.sqrt(var / np.maximum(count, 1))


def _diagnostics_by_name(diagnostics) -> Mapping:
    if diagnostics is None:
        return {}
    table = getattr(diagnostics, "diagnostics", None)  # a ComparisonTable
    if table is not None:
        return table
    if isinstance(diagnostics, Mapping):
        return diagnostics
    raise TypeError(
        "diagnostics must be a ComparisonTable from pyrovi.compare or a dict of name -> "
        f"Diagnostics, got {type(diagnostics).__name__}"
    )


def plot_elbo(results, log_evidence=None, ax=None, *, diagnostics=None):
    """Each fit's training objective with its Monte Carlo band, its final ELBO estimate,
    and the log-evidence line.

    A VI fit's per-step ELBO is a noisy estimate: its running mean is drawn with a band of
    two standard errors, and the final ELBO estimate (the number in the tables) as a point
    with a two-standard-error bar at the last step, so a running mean that touches the
    evidence line reads as noise, not as an ELBO above the evidence.  EM iterations are few:
    with VI fits beside them they get their own axis (top); EM's trace is the log evidence
    at each iteration.  Fits trained as a MAP (``delta``, ``laplace``) trace log p(x, z),
    not an ELBO, and are labelled so.

    Parameters
    ----------
    results : result, sequence of results, or mapping of name to result
        Any pyrovi result; its ``objective_trace`` is drawn.
    log_evidence : float or Estimate, optional
        The reference :math:`\\log p(x)` (e.g. ``pyrovi.log_evidence(...)``); drawn as a
        horizontal line with its standard-error band.
    ax : matplotlib.axes.Axes, optional
    diagnostics : ComparisonTable or mapping of name to Diagnostics, optional
        Where given, the final ELBO point and the gap in the legend are these numbers
        (the same as in the table), else the fit's own ``elbo`` and ``elbo_se``.

    Returns
    -------
    matplotlib.axes.Axes
        The axes of the VI traces (EM's axis, when there is one, is its twin).

    Raises
    ------
    TypeError
        When an entry of ``results`` is not a pyrovi result.
    """
    import matplotlib.pyplot as plt

    from pyrovi.diagnostics.diagnose import format_gap

    named = _named(results)
    diags = _diagnostics_by_name(diagnostics)
    evidence = None
    if log_evidence is not None:
        evidence = float(getattr(log_evidence, "value", log_evidence))
        evidence_se = float(getattr(log_evidence, "se", 0.0) or 0.0)
    iterative = [(n, r) for n, r in named if not r.exact_posterior]
    em = [(n, r) for n, r in named if r.exact_posterior]
    with _style():
        if ax is None:
            _, ax = plt.subplots(figsize=(8, 4.5))
        em_ax = ax.twiny() if (em and iterative) else ax
        lows, highs = [], []
        for i, (name, result) in enumerate(named):
            color = f"C{i}"
            trace = _trace(result)
            steps = np.arange(1, trace.size + 1)
            diag = diags.get(name)
            elbo = diag.elbo if diag is not None else float(result.elbo)
            elbo_se = diag.elbo_se if diag is not None else float(result.elbo_se)
            if result.exact_posterior:
                em_ax.plot(steps, trace, "o-", ms=3, lw=1.2, color=color,
                           label=f"{name}: log p(x | theta) by EM iteration")
                lows.append(np.nanmin(trace[trace.size // 2:]) if trace.size else np.nan)
                highs.append(np.nanmax(trace) if trace.size else np.nan)
                continue
            window = max(1, trace.size // 50)
            smooth = _running_mean(trace, window)
            band = 2 * _running_se(trace, window)
            what = ("log p(x, z) at the MAP (training objective)" if result.map_trained
                    else "ELBO, running mean ± 2 se")
            ax.plot(steps, smooth, lw=1.0, alpha=0.8, color=color, label=f"{name}: {what}")
            ax.fill_between(steps, smooth - band, smooth + band, color=color, alpha=0.15,
                            lw=0)
            tail = smooth[smooth.size // 2:] if smooth.size > 1 else smooth
            lows.append(np.nanpercentile(tail, 1) if tail.size else np.nan)
            highs.append(np.nanmax(tail) if tail.size else np.nan)
            if result.map_trained or not math.isfinite(elbo) or not trace.size:
                continue
            label = f"{name}: final ELBO {elbo:.4g} ± {elbo_se:.2g}"
            if evidence is not None:
                if diag is not None:
                    gap, gap_se = diag.gap, diag.gap_se
                else:
                    gap, gap_se = evidence - elbo, math.hypot(elbo_se, evidence_se)
                label += f", gap {format_gap(gap, gap_se)} ± {gap_se:.2g}"
            ax.errorbar([steps[-1]], [elbo], yerr=[2 * elbo_se], fmt="D", ms=5, capsize=3,
                        color=color, label=label)
        if evidence is not None:
            method = getattr(log_evidence, "method", "")
            ax.axhline(evidence, color="k", ls="--", lw=1.2,
                       label="log p(x)" + (f" ({method})" if method else ""))
            if evidence_se > 0 and math.isfinite(evidence_se):
                ax.axhspan(evidence - evidence_se, evidence + evidence_se, color="k",
                           alpha=0.1)
            highs.append(evidence + evidence_se)
            lows.append(evidence - evidence_se)
        lo, hi = np.nanmin(lows), np.nanmax(highs)
        if math.isfinite(lo) and math.isfinite(hi) and hi > lo:
            pad = 0.1 * (hi - lo)
            ax.set_ylim(lo - pad, hi + pad)
        if iterative:
            ax.set_xlabel("optimizer step")
        if em:
            em_ax.set_xlabel("EM iteration")
        ax.set_ylabel("nats")
        if evidence is not None:
            title = "ELBO vs log evidence"
        elif iterative:
            title = "Training objective (no evidence given)"
        else:
            title = "Log evidence by EM iteration"
        ax.set_title(title)
        handles, labels = ax.get_legend_handles_labels()
        if em_ax is not ax:
            more = em_ax.get_legend_handles_labels()
            handles, labels = handles + more[0], labels + more[1]
        ax.legend(handles, labels, fontsize="small")
    return ax


def plot_gap(comparison, ax=None):
    """The gap ``log p(x) - ELBO`` (an estimate of KL(q || posterior)) per fit, with
    standard-error bars.

    Parameters
    ----------
    comparison : ComparisonTable
        From :func:`pyrovi.diagnostics.compare`.
    ax : matplotlib.axes.Axes, optional

    Returns
    -------
    matplotlib.axes.Axes
        One bar per row of the table.
    """
    import matplotlib.pyplot as plt

    rows = getattr(comparison, "rows", None)
    if rows is None:
        raise TypeError(
            f"plot_gap expects a ComparisonTable from pyrovi.compare, got "
            f"{type(comparison).__name__}"
        )
    names = [r["name"] for r in rows]
    gaps = np.array([r["gap"] for r in rows], dtype=float)
    ses = np.array([r["gap_se"] for r in rows], dtype=float)
    with _style():
        if ax is None:
            _, ax = plt.subplots(figsize=(max(4, 1.2 * len(rows) + 2), 4))
        x = np.arange(len(rows))
        ax.bar(x, gaps, yerr=ses, capsize=4, color=[f"C{i}" for i in range(len(rows))])
        ax.axhline(0.0, color="k", lw=0.8)
        ax.set_xticks(x)
        ax.set_xticklabels(names)
        ax.set_ylabel("gap = log p(x) - ELBO (nats)")
        ax.set_title("Gap to the log evidence (KL(q || posterior)) by fit, ± 1 se")
        for xi, (g, se) in zip(x, zip(gaps, ses, strict=True), strict=True):
            if math.isfinite(g):
                ax.annotate(f"{g:.3g}", (xi, g + (se if math.isfinite(se) else 0)),
                            ha="center", va="bottom", fontsize="small")
    return ax
