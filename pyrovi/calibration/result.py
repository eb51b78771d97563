"""``CalibrationResult``: the immutable outcome of :func:`pyrovi.calibrate`."""

from __future__ import annotations

import dataclasses

import numpy as np

from pyrovi._runtime import check_positive

__all__ = ["CalibrationResult"]


def _check_alpha(alpha: float) -> float:
    check_positive("alpha", alpha)
    if not alpha < 1:
        raise ValueError(f"alpha must be a significance level in (0, 1), got {alpha!r}")
    return float(alpha)


@dataclasses.dataclass(frozen=True)
class CalibrationResult:
    r"""Simulation-based calibration of a posterior approximation (VSBC, Yao et al. 2018).

    Every dict below is keyed by latent site, in the model's execution order.

    Attributes
    ----------
    probabilities : dict of str to numpy.ndarray
        :math:`p_j = P_q(\theta < \theta^*_j)` for simulation :math:`j` and each scalar
        component, estimated by the randomized rank of :math:`\theta^*_j` among
        ``num_draws`` draws of the fitted approximation (see
        :mod:`pyrovi.calibration.stats`); shape ``(num_simulations, *site_shape)``, values
        in (0, 1).  Uniform, hence symmetric about 1/2, when the fit is the exact
        posterior.
    truth : dict of str to numpy.ndarray
        The values :math:`\theta^*_j` drawn from the prior, shape
        ``(num_simulations, *site_shape)``.
    statistic : dict of str to numpy.ndarray
        Per component, the Kolmogorov-Smirnov distance between the empirical distributions
        of :math:`p` and :math:`1 - p` (Yao et al.'s statistic), in [0, 1]; shape
        ``site_shape`` (a 0-d array for a scalar site).
    pvalue : dict of str to numpy.ndarray
        Per component, the exact p-value of ``statistic`` under symmetry of :math:`p`
        about 1/2; shape ``site_shape``.  Small: the approximation is biased in a
        consistent direction for that component.
    dims : dict of str to list of str
        Names of the site dimensions (plate names where a plate owns the dimension, else
        ``{site}_dim_{i}``), as in :func:`pyrovi.to_arviz`; ArviZ's ``dims=`` argument.
    converged : numpy.ndarray
        Shape ``(num_simulations,)``: whether each fit met its convergence rule.
    num_simulations : int
        Simulated data sets (one fit each).
    num_draws : int
        Draws of each fitted approximation behind each probability.
    guide : str
        The guide family (``"em"`` for :class:`pyrovi.EM`'s exact posterior, as a fit's
        ``family``).
    seed : int
        Seed of the whole calibration (simulations, fits, draws).
    wall_time : float
        Seconds spent, all fits included.
    notes : tuple of str
        Plain-words remarks on how the calibration was done.

    Notes
    -----
    The test checks *symmetry*, not uniformity: an approximation whose errors are
    symmetric over the prior (for instance a posterior scale that is too small, or
    shrinkage towards a prior mean that the prior is symmetric about) passes.  It detects an
    approximation that is biased in one direction, which is what Yao et al. designed it
    for.  Inspect the histograms (:func:`pyrovi.plot_calibration`) for the U or hump shapes
    of a scale that is too small or too large.
    """

    probabilities: dict
    truth: dict
    statistic: dict
    pvalue: dict
    dims: dict
    converged: np.ndarray
    num_simulations: int
    num_draws: int
    guide: str
    seed: int
    wall_time: float
    notes: tuple = ()

    @property
    def sites(self) -> tuple[str, ...]:
        """The latent sites tested, in the model's execution order."""
        return tuple(self.probabilities)

    def passed(self, alpha: float = 0.05) -> dict[str, bool]:
        """Per site, whether no component shows asymmetry at level ``alpha``.

        A site with ``K`` scalar components passes when every component's p-value exceeds
        ``alpha / K`` (Bonferroni), so that a calibrated site fails with probability at
        most ``alpha`` whatever its size.

        Parameters
        ----------
        alpha : float
            Significance level in (0, 1) (default 0.05).

        Returns
        -------
        dict of str to bool
        """
        alpha = _check_alpha(alpha)
        out = {}
        for site, pv in self.pvalue.items():
            pv = np.asarray(pv)
            out[site] = bool(np.all(pv > alpha / max(pv.size, 1)))
        return out

    def summary(self, alpha: float = 0.05) -> str:
        """A plain-text table: per site its components, largest statistic, smallest
        p-value and verdict at ``alpha``."""
        verdicts = self.passed(alpha)
        lines = [
            f"VSBC of guide {self.guide!r}: {self.num_simulations} simulations, "
            f"{self.num_draws} draws each, {int(self.converged.sum())} fits converged",
            f"{'site':<20} {'components':>10} {'max KS':>8} {'min p':>10}  verdict",
        ]
        for site in self.sites:
            stat, pv = np.asarray(self.statistic[site]), np.asarray(self.pvalue[site])
            verdict = "passed" if verdicts[site] else "FAILED"
            lines.append(
                f"{site:<20} {pv.size:>10} {stat.max():>8.3f} {pv.min():>10.3g}  {verdict}"
            )
        return "\n".join(lines)

    def __repr__(self) -> str:  # the table is summary()
        failed = [site for site, ok in self.passed().items() if not ok]
        return (
            f"CalibrationResult(guide={self.guide!r}, {self.num_simulations} simulations x "
            f"{self.num_draws} draws, {int(self.converged.sum())} converged, sites passed at "
            f"0.05: {len(self.sites) - len(failed)} of {len(self.sites)}"
            + (f", failed: {failed}" if failed else "") + "; summary() for the table)"
        )

    # ------------------------------------------------------------------- export
    def to_arviz_dict(self) -> dict[str, np.ndarray]:
        """The probabilities in ArviZ's dict layout, one chain of ``num_simulations`` draws.

        Returns
        -------
        dict of str to numpy.ndarray
            Site -> array of shape ``(1, num_simulations, *site_shape)``: the ``posterior``
            of ``arviz.from_dict``, which each ArviZ line spells differently
            (0.2x: ``from_dict(posterior=arrays, dims=result.dims)``; 1.x:
            ``from_dict({"posterior": arrays}, dims=result.dims)``).
            :meth:`to_arviz` makes the container on either line.
        """
        return {site: p[None] for site, p in self.probabilities.items()}

    def to_arviz(self):
        """The probabilities as the installed ArviZ line's container, for ArviZ's plots.

        One group, ``posterior``: every site's probabilities as one chain of
        ``num_simulations`` draws (:meth:`to_arviz_dict`), with the site dimensions named
        by :attr:`dims`; its attributes are ``guide``, ``num_draws``, ``num_simulations``
        and ``seed``.

        Returns
        -------
        arviz.InferenceData or xarray.DataTree
            An ``InferenceData`` on ArviZ 0.2x, a ``DataTree`` on ArviZ 1.x (see
            :func:`pyrovi.arviz.backend.arviz_line`), as :func:`pyrovi.to_arviz` returns;
            e.g. ``arviz.plot_dist(result.to_arviz())`` on 1.x.
        """
        from pyrovi.arviz.backend import make_container, make_dataset

        posterior = make_dataset(
            self.to_arviz_dict(),
            coords={},
            dims={site: list(names) for site, names in self.dims.items()},
            sample=True,
            attrs={"guide": self.guide, "num_draws": self.num_draws,
                   "num_simulations": self.num_simulations, "seed": self.seed},
        )
        return make_container({"posterior": posterior})

    def to_xarray(self):
        """Everything as one ``xarray.Dataset``.

        Data variables: ``{site}`` (the probabilities, dims ``("simulation", *site
        dims)``), ``{site}_truth`` (the prior draws, same dims), ``{site}_statistic`` and
        ``{site}_pvalue`` (site dims only), and ``converged`` (dim ``simulation``).
        Attributes: ``guide``, ``num_draws``, ``num_simulations``, ``seed``, ``test``.
        """
        import xarray as xr

        data = {}
        for site in self.sites:
            dims = ("simulation", *self.dims[site])
            data[site] = (dims, self.probabilities[site])
            data[f"{site}_truth"] = (dims, self.truth[site])
            data[f"{site}_statistic"] = (dims[1:], np.asarray(self.statistic[site]))
            data[f"{site}_pvalue"] = (dims[1:], np.asarray(self.pvalue[site]))
        data["converged"] = (("simulation",), self.converged)
        return xr.Dataset(
            data,
            coords={"simulation": np.arange(self.num_simulations)},
            attrs={
                "guide": self.guide,
                "num_draws": self.num_draws,
                "num_simulations": self.num_simulations,
                "seed": self.seed,
                "test": "VSBC symmetry of P_q(theta < theta*) about 1/2 (Yao et al. 2018); "
                "KS distance between p and 1 - p, exact random-walk p-value",
            },
        )
