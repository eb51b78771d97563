r"""PSIS-LOO for draws of an approximate posterior (Magnusson et al., 2019).

``arviz.loo`` assumes its draws come from the posterior :math:`p(z \mid x)`.  A VI export
holds draws from the guide :math:`q(z)` instead, with ``sample_stats.lp``
:math:`= \log p(x, z)` and ``sample_stats.log_q`` :math:`= \log q(z)` at each draw.  The
leave-one-out importance ratios of such draws are

.. math::  r_{s,i} \propto \frac{p(z_s \mid x)}{q(z_s)} \, \frac{1}{p(x_i \mid z_s)}
           \propto \exp\big(\mathrm{lp}_s - \log q_s - \log p(x_i \mid z_s)\big),

which :func:`loo` smooths with PSIS as ``arviz.loo`` smooths :math:`1 / p(x_i \mid z_s)`.
For exact posterior draws (an EM export, where ``lp - log_q`` is the same at every draw)
the two agree.  ArviZ 1.x offers the same estimator as
``arviz_stats.loo_approximate_posterior(dt, dt.sample_stats.lp, dt.sample_stats.log_q)``,
which :func:`loo` calls there.  On ArviZ 0.2x, which lacks it, :func:`loo` computes it
with ``arviz.psislw`` the way arviz-stats (and R's ``loo``) do: relative efficiency 1 (the
draws are independent), ``p_loo`` the plain mean ``lppd`` over the draws less
``elpd_loo``, ``se`` from the sample variance (``ddof=1``) of the pointwise values.  The
lines then differ only in how many of the largest ratios PSIS smooths
(``ceil(min(S/5, 3 sqrt(S)))`` on 0.2x, ``floor(3 sqrt(S))`` for ``S > 225`` in
arviz-stats): they give the same numbers where the two agree (S = 400, 900, 1600, ...) and
differ far below ``se`` elsewhere (``tests/arviz/test_loo.py`` checks both lines against
one computation by hand).
"""

from __future__ import annotations

import warnings

import numpy as np

from pyrovi.arviz.backend import arviz_line
from pyrovi.errors import PyroviError

__all__ = ["loo"]


def _logsumexp(a: np.ndarray, axis: int = -1) -> np.ndarray:
    m = np.max(a, axis=axis, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    return np.log(np.sum(np.exp(a - m), axis=axis)) + np.squeeze(m, axis=axis)


def _export(data, var_name):
    from pyrovi._result import FitResult

    if isinstance(data, FitResult):
        from pyrovi.arviz.converter import to_arviz

        if not data.has_density:
            raise PyroviError(
                f"a {data.family!r} fit is a point mass: its draws have no density log q, "
                "so they cannot be importance-weighted; use a family with a density."
            )
        data = to_arviz(data, posterior_predictive=False)
    if callable(getattr(data, "groups", None)):  # arviz.InferenceData
        groups = list(data.groups())
    else:  # xarray.DataTree (ArviZ 1.x)
        groups = list(data.children)
    missing = [g for g in ("log_likelihood", "sample_stats") if g not in groups]
    if missing:
        raise PyroviError(
            f"the data lack the group(s) {missing}; loo needs the pointwise log-likelihood "
            "and sample_stats with lp and log_q, as pyrovi's to_arviz exports them."
        )
    stats = data["sample_stats"]
    if "lp" not in stats or "log_q" not in stats:
        raise PyroviError(
            "sample_stats lacks lp or log_q; loo needs both (pyrovi's to_arviz exports them)"
        )
    ll = data["log_likelihood"]
    names = list(ll.data_vars)
    if var_name is None:
        if len(names) != 1:
            raise PyroviError(
                f"the log_likelihood group holds {len(names)} variables {names}; pass "
                "var_name= to choose one."
            )
        var_name = names[0]
    elif var_name not in names:
        raise PyroviError(f"no log_likelihood variable {var_name!r}; the variables are {names}")
    return data, var_name


def loo(data, *, pointwise: bool = True, var_name: str | None = None, reff: float | None = None):
    r"""PSIS-LOO of an export of approximate-posterior draws, importance-corrected by
    :math:`p/q` (``sample_stats.lp - sample_stats.log_q``).

    Parameters
    ----------
    data : VIResult, EMResult, arviz.InferenceData or xarray.DataTree
        A pyrovi fit (exported with ``to_arviz(result)``, no posterior predictive) or an
        export of one.
    pointwise : bool, default True
        Return the pointwise ``loo_i`` and ``pareto_k`` too.
    var_name : str, optional
        The ``log_likelihood`` variable (needed when there are several).
    reff : float, optional
        Relative efficiency of the draws.  The default is 1: pyrovi's draws of q are
        independent (its chains are a split of i.i.d. draws), and ArviZ 1.x's
        ``loo_approximate_posterior`` uses 1.  Another value is taken on ArviZ 0.2x only.

    Returns
    -------
    ELPDData
        As ``arviz.loo`` returns it (``elpd_loo``, ``se``, ``p_loo``, ``pareto_k``, ...),
        so that ``arviz.compare`` takes it.  ``pareto_k`` judges the corrected ratios: a
        k above 0.7 means the guide and the leave-one-out posterior differ too much for
        the estimate to be trusted.

    Raises
    ------
    PyroviError
        When the data lack the log-likelihood, ``lp`` or ``log_q`` (a point-mass fit), or
        when ``reff`` is not 1 on ArviZ 1.x.
    """
    data, var_name = _export(data, var_name)
    exact = data["posterior"].attrs.get("inference_method") == "expectation_maximization"
    if arviz_line() == 1:
        if reff is not None and reff != 1.0:
            raise PyroviError(
                f"reff={reff!r}: ArviZ 1.x's loo_approximate_posterior smooths with relative "
                "efficiency 1 and takes no reff; leave reff unset (pyrovi's draws are "
                "independent), or use arviz.loo(data, reff=...) for the uncorrected LOO."
            )
        from arviz_stats import loo_approximate_posterior

        stats = data["sample_stats"]
        # exact posterior draws (EM): no correction, as below for ArviZ 0.2x
        log_p = stats["log_q"] if exact else stats["lp"]
        return loo_approximate_posterior(
            data, log_p, stats["log_q"], pointwise=pointwise, var_name=var_name,
        )
    import arviz as az
    from arviz.stats.stats_utils import ELPDData

    log_lik = data["log_likelihood"][var_name]
    stats = data["sample_stats"]
    log_weight = (stats["lp"] - stats["log_q"]).stack(__sample__=("chain", "draw"))
    stacked = log_lik.stack(__sample__=("chain", "draw"))
    obs_dims = [d for d in stacked.dims if d != "__sample__"]
    ll = stacked.transpose(*obs_dims, "__sample__")
    values = np.asarray(ll.values, dtype=np.float64)
    n_samples = values.shape[-1]
    flat = values.reshape(-1, n_samples)
    n_data_points = flat.shape[0]
    lw = np.asarray(log_weight.values, dtype=np.float64)
    if exact:
        # exact posterior draws: lp - log_q is the log evidence at every draw, up to the
        # rounding of its two terms; the ratios are those of arviz.loo exactly
        lw = np.zeros_like(lw)
    if not np.all(np.isfinite(lw)):
        raise PyroviError(
            "lp - log_q is not finite at some draws; the draws cannot be importance-weighted"
        )
    if reff is None:
        reff = 1.0  # independent draws; what ArviZ 1.x's loo_approximate_posterior uses
    ratios = lw[None, :] - flat
    smoothed, pareto_k = az.psislw(ratios, reff)
    loo_i = _logsumexp(smoothed + flat)
    # lppd as arviz-stats and R's loo compute it for approximate-posterior draws: the plain
    # mean of p(x_i | z_s) over the draws
    lppd = float(np.sum(_logsumexp(flat) - np.log(n_samples)))
    elpd = float(loo_i.sum())
    # sqrt(n) times the sample sd of loo_i (ddof=1), as arviz-stats and R's loo have it
    se = float((n_data_points * np.var(loo_i, ddof=1)) ** 0.5)
    p_loo = lppd - elpd
    good_k = min(1 - 1 / np.log10(n_samples), 0.7)
    warn_mg = bool(np.any(pareto_k > good_k))
    if warn_mg:
        warnings.warn(
            f"Estimated shape parameter of Pareto distribution is greater than {good_k:.2f} "
            "for one or more observations: the guide and the leave-one-out posterior differ "
            "too much there for the estimate to be reliable.",
            stacklevel=2,
        )
    if not pointwise:
        return ELPDData(
            data=[elpd, se, p_loo, n_samples, n_data_points, warn_mg, "log", good_k],
            index=["elpd_loo", "se", "p_loo", "n_samples", "n_data_points", "warning",
                   "scale", "good_k"],
        )
    shape = ll.shape[:-1]
    coords = {d: ll.coords[d] for d in obs_dims if d in ll.coords}
    import xarray as xr

    loo_da = xr.DataArray(loo_i.reshape(shape), dims=obs_dims, coords=coords, name="loo_i")
    k_da = xr.DataArray(pareto_k.reshape(shape), dims=obs_dims, coords=coords,
                        name="pareto_shape")
    return ELPDData(
        data=[elpd, se, p_loo, n_samples, n_data_points, warn_mg, loo_da, k_da, "log",
              good_k],
        index=["elpd_loo", "se", "p_loo", "n_samples", "n_data_points", "warning", "loo_i",
               "pareto_k", "scale", "good_k"],
    )
