"""The few calls that ArviZ 0.2x and ArviZ 1.x spell differently, for tests that run on both.

Each helper calls the installed line's own API (no re-implementation of ArviZ) and returns
plain numbers, arrays or names, so that one assertion checks both lines.

=====================  ==============================  =====================================
what                   ArviZ 0.2x                      ArviZ 1.x (arviz-base/stats/plots)
=====================  ==============================  =====================================
groups from arrays     ``az.from_dict(posterior=)``    ``az.from_dict({"posterior": ...})``
group names            ``idata.groups()``              ``list(dt.children)``
LOO elpd, p, pointwise ``elpd_loo``, ``p_loo``,        ``elpd``, ``p``, ``elpd_i``
                       ``loo_i``
``az.compare`` column  ``elpd_loo``, ``p_loo``         ``elpd``, ``p``
concat along chain     ``az.concat(a, b, dim=...)``    ``xarray.concat`` per group
data frame of a group  ``idata.to_dataframe(groups=)`` ``az.dataset_to_dataframe(ds)``
posterior plot         ``az.plot_posterior`` (axes)    ``az.plot_dist`` (PlotCollection)
=====================  ==============================  =====================================
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from pyrovi.arviz.backend import arviz_line

LINE = arviz_line()


def from_dict(groups: dict, **kwargs):
    """``az.from_dict`` of ``{group: {variable: array}}`` (``coords=``, ``dims=`` as keywords)."""
    import arviz as az

    if LINE == 0:
        return az.from_dict(**groups, **kwargs)
    return az.from_dict(groups, **kwargs)


def group_names(data) -> list[str]:
    """The groups of an export, in order."""
    return list(data.groups()) if LINE == 0 else list(data.children)


def elpd(loo) -> float:
    return float(loo.elpd_loo if LINE == 0 else loo.elpd)


def p_loo(loo) -> float:
    return float(loo.p_loo if LINE == 0 else loo.p)


def elpd_i(loo) -> np.ndarray:
    return np.asarray(loo.loo_i if LINE == 0 else loo.elpd_i, dtype=np.float64)


def pareto_k(loo) -> np.ndarray:
    return np.asarray(loo.pareto_k, dtype=np.float64)


def compare_column(name: str) -> str:
    """An ``az.compare`` column by its 0.2x name (``elpd_loo``, ``p_loo``)."""
    return name if LINE == 0 else {"elpd_loo": "elpd", "p_loo": "p"}.get(name, name)


def concat_chains(a, b):
    """``a`` and ``b`` one after the other along ``chain`` (groups without chains from ``a``).

    ArviZ 1.x has no ``az.concat``: a DataTree's groups are ``xarray.Dataset`` s, which
    ``xarray.concat`` joins; the chains are renumbered ``0..`` as ``az.concat`` leaves them.
    """
    if LINE == 0:
        import arviz as az

        return az.concat(a, b, dim="chain")
    groups = {}
    for name in a.children:
        first = a[name].to_dataset()
        if "chain" in first.dims:
            # join="outer": traces of different lengths padded with NaN, as az.concat does
            both = xr.concat([first, b[name].to_dataset()], dim="chain", join="outer")
            groups[name] = both.assign_coords(chain=np.arange(both.sizes["chain"]))
        else:
            groups[name] = first
    return xr.DataTree.from_dict(groups)


def to_dataframe(data, group: str = "posterior"):
    """One row per draw, one column per scalar (``"theta[0]"`` for an element)."""
    if LINE == 0:
        df = data.to_dataframe(groups=group, include_coords=False)
        return df.drop(columns=["chain", "draw"])
    import arviz as az

    return az.dataset_to_dataframe(data[group].to_dataset())


def extract(data, group: str = "posterior") -> xr.Dataset:
    """``az.extract`` as a Dataset with one ``sample`` dimension, on both lines."""
    import arviz as az

    if LINE == 0:
        return az.extract(data, group=group)
    return az.extract(data, group=group, keep_dataset=True)


def posterior_plot_titles(data) -> list[str]:
    """The panel titles of the line's posterior density plot, one per scalar."""
    import arviz as az

    if LINE == 0:
        axes = az.plot_posterior(data)
        return [ax.get_title() for ax in np.ravel(axes) if ax.get_title()]
    titles = az.plot_dist(data).viz["title"]
    return [t.get_text() for var in titles.data_vars for t in np.ravel(titles[var].values)]


def forest_labels(data) -> str:
    """The variable labels of the line's forest plot, as one string."""
    import arviz as az

    if LINE == 0:
        axes = az.plot_forest(data, combined=True)
        return " ".join(t.get_text() for t in axes[0].get_yticklabels())
    labels = az.plot_forest(data).viz["variable_label"]
    return " ".join(t.get_text() for var in labels.data_vars
                    for t in np.ravel(labels[var].values))


def psis_tail_length(num_draws: int) -> int:
    """How many of the largest ratios the line's PSIS smooths (relative efficiency 1).

    ArviZ 0.2x (``arviz.psislw``): ``ceil(min(S/5, 3 sqrt(S)))``; arviz-stats (1.x):
    ``floor(3 sqrt(S))`` when ``S > 225``, else ``floor(S/5)``.  They agree where
    ``3 sqrt(S)`` is a whole number above 15 (S = 400, 900, 1600, ...): 95 and 94 of 1000.
    """
    if LINE == 0:
        return int(np.ceil(min(num_draws / 5.0, 3.0 * np.sqrt(num_draws))))
    return int(np.floor(3.0 * np.sqrt(num_draws) if num_draws > 225 else num_draws / 5.0))


def compare(models):
    """``az.compare`` with unrounded numbers (ArviZ 1.x rounds to the se's digits)."""
    import arviz as az

    if LINE == 0:
        return az.compare(models)
    return az.compare(models, round_to="none")
