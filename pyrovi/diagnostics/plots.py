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


def plot_elbo(results, log_evidence=None, ax=None):
    """Each fit's ELBO trace (running mean), the log-evidence line, and the gap between the
    final ELBO estimate and the log evidence shaded.  Fits trained as a MAP (``delta``,
    ``laplace``) trace log p(x, z), not an ELBO, and get no gap shading.

    Parameters
    ----------
    results : result, sequence of results, or mapping of name to result
        Any pyrovi result; its ``objective_trace`` is drawn (a ``VIResult``'s
        ``elbo_trace``, an ``EMResult``'s ``log_evidence_trace``).
    log_evidence : float or Estimate, optional
        The reference :math:`\\log p(x)` (e.g. ``pyrovi.log_evidence(...)``); drawn as a
        horizontal line with its standard-error band, and the gap to the last ELBO window
        shaded.
    ax : matplotlib.axes.Axes, optional

    Returns
    -------
    matplotlib.axes.Axes
        One line per fit, plus one for the log evidence when given.

    Raises
    ------
    TypeError
        When an entry of ``results`` is not a pyrovi result.
    """
    import matplotlib.pyplot as plt

    named = _named(results)
    with _style():
        if ax is None:
            _, ax = plt.subplots(figsize=(7, 4))
        lows, highs = [], []
        for name, result in named:
            trace = _trace(result)
            steps = np.arange(1, trace.size + 1)
            # a single-particle ELBO is noisy: draw its running mean over 1/50 of the fit
            smooth = _running_mean(trace, max(1, trace.size // 50))
            map_trained = result.map_trained
            label = (f"{name}: log p(x, z) at the MAP (its training objective)"
                     if map_trained else f"{name} ELBO")
            (line,) = ax.plot(steps, smooth, lw=1.2, alpha=0.9, label=label)
            tail = smooth[smooth.size // 2 :] if smooth.size > 1 else smooth
            lows.append(np.nanpercentile(tail, 1) if tail.size else np.nan)
            highs.append(np.nanmax(tail) if tail.size else np.nan)
            if log_evidence is not None and trace.size and not map_trained:
                value = float(getattr(log_evidence, "value", log_evidence))
                window = max(1, trace.size // 10)
                final = float(result.elbo)
                if not math.isfinite(final):
                    final = float(np.nanmean(trace[-window:]))
                ax.fill_between(
                    steps[-window:], final, value, color=line.get_color(), alpha=0.25,
                    label=f"{name} gap {value - final:.3g}",
                )
        if log_evidence is not None:
            value = float(getattr(log_evidence, "value", log_evidence))
            se = float(getattr(log_evidence, "se", 0.0) or 0.0)
            method = getattr(log_evidence, "method", "")
            ax.axhline(value, color="k", ls="--", lw=1.2,
                       label="log p(x)" + (f" ({method})" if method else ""))
            if se > 0 and math.isfinite(se):
                ax.axhspan(value - se, value + se, color="k", alpha=0.1)
            highs.append(value + se)
            lows.append(value - se)
        lo, hi = np.nanmin(lows), np.nanmax(highs)
        if math.isfinite(lo) and math.isfinite(hi) and hi > lo:
            pad = 0.1 * (hi - lo)
            ax.set_ylim(lo - pad, hi + pad)
        ax.set_xlabel("step")
        ax.set_ylabel("nats")
        ax.set_title("ELBO vs log evidence")
        ax.legend(fontsize="small")
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
        ax.set_title("KL(q || posterior) by guide")
    return ax
