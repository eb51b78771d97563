"""``pyrovi.calibrate``: simulate from the prior, fit, record where the truth falls.

The driver only simulates, fits and collects; the math (posterior probabilities and the
symmetry test) is in :mod:`pyrovi.calibration.stats`.
"""

from __future__ import annotations

import functools
import time
import warnings
from collections.abc import Callable, Mapping

import numpy as np
import pyro.poutine as poutine
import torch
from pyro.infer.autoguide import AutoGuide
from tqdm.auto import tqdm

from pyrovi._model import inspect_model, model_name
from pyrovi._plates import site_shapes
from pyrovi._runtime import (
    check_positive,
    param_scope,
    resolve_device,
    resolve_seed,
    seeded,
    warn,
)
from pyrovi.arviz.dims import site_dims
from pyrovi.calibration.result import CalibrationResult
from pyrovi.calibration.stats import posterior_probability, symmetry_test
from pyrovi.errors import ConvergenceWarning, ModelError
from pyrovi.guides import parse_guide

__all__ = ["calibrate"]

_RESERVED = ("seed", "progress")


def _conditioned(model: Callable, data: dict) -> Callable:
    """``model`` with its observed sites set to ``data``, keeping its name for messages."""
    conditioned = poutine.condition(model, data=data)

    @functools.wraps(model)
    def wrapped(*args, **kwargs):
        return conditioned(*args, **kwargs)

    return wrapped


def _check_guide(guide: object) -> str:
    """Validate ``guide``; return its name (``"em"`` for EM's exact posterior, also
    accepted as ``"exact"``)."""
    if isinstance(guide, str) and guide.strip().lower() in ("em", "exact"):
        return "em"
    if isinstance(guide, AutoGuide):
        raise TypeError(
            f"guide={type(guide).__name__}(...) is an AutoGuide instance, which is bound to "
            "one model and keeps its parameters between fits; calibrate fits a new model "
            f"per simulation. Pass the class (guide={type(guide).__name__}) or a family name "
            "such as 'fullrank'."
        )
    return parse_guide(guide).name


def _make_fitter(model: Callable, guide: object, exact: bool, seed: int, fit_kwargs: dict):
    if exact:
        from pyrovi.em import EM

        return EM(model, seed=seed, progress=False, **fit_kwargs)
    from pyrovi.vi import VI

    return VI(model, guide, seed=seed, progress=False, **fit_kwargs)


def _check_fit_kwargs(fit_kwargs, model, guide, exact) -> dict:
    if fit_kwargs is None:
        return {}
    if not isinstance(fit_kwargs, Mapping):
        raise TypeError(
            f"fit_kwargs must be a dict of keyword arguments for "
            f"{'pyrovi.EM' if exact else 'pyrovi.VI'}, got {type(fit_kwargs).__name__}"
        )
    fit_kwargs = dict(fit_kwargs)
    reserved = [k for k in _RESERVED if k in fit_kwargs]
    if reserved:
        raise ValueError(
            f"fit_kwargs sets {reserved[0]!r}, which calibrate sets itself per simulation; "
            f"remove it from fit_kwargs (pass seed= and progress= to calibrate instead)"
        )
    try:  # the fitter's own checks, before any simulation
        _make_fitter(model, guide, exact, 0, fit_kwargs)
    except TypeError as err:
        raise TypeError(
            f"fit_kwargs={fit_kwargs!r} was refused by "
            f"{'pyrovi.EM' if exact else 'pyrovi.VI'}: {err}"
        ) from err
    return fit_kwargs


def calibrate(
    model: Callable,
    *args,
    guide: object = "meanfield",
    num_simulations: int = 100,
    num_draws: int = 1000,
    seed: int | None = None,
    progress: bool = True,
    fit_kwargs: Mapping | None = None,
    **kwargs,
) -> CalibrationResult:
    r"""Simulation-based calibration of a guide on ``model(*args, **kwargs)`` (VSBC).

    The check of Yao, Vehtari, Simpson & Gelman (2018), *Yes, but did it work?: Evaluating
    variational inference*.  For each of ``num_simulations`` simulations :math:`j`:

    1. run the model with its observed sites set free (``pyro.poutine.uncondition``),
       which draws the latents :math:`\theta^*_j` from the prior and data :math:`y_j` from
       the likelihood together;
    2. fit the guide to the model conditioned on :math:`y_j`
       (``pyro.poutine.condition(model, data={site: y_j})``) with
       ``pyrovi.VI(conditioned, guide, **fit_kwargs).run(*args, **kwargs)``, or with
       ``pyrovi.EM`` for ``guide="em"``;
    3. record :math:`p_j = P_q(\theta < \theta^*_j)` for every scalar component of every
       latent site, from ``num_draws`` draws of the fit.

    When the fit is the exact posterior the :math:`p_j` are uniform; Yao et al. test that
    their distribution is symmetric about 1/2, which fails when the approximation is
    biased in one direction.  See :mod:`pyrovi.calibration.stats` for the estimator and
    the test (Yao et al.'s KS statistic between :math:`p` and :math:`1 - p`, with an exact
    p-value, since ``scipy.stats.ks_2samp``'s assumes independent samples and rejects a
    calibrated method about four times too often at the 1% level).

    Parameters
    ----------
    model : callable
        A Pyro model whose data enter only through ``obs=`` of observed sample sites (as
        with ``pyrovi.VI``).  The values passed as ``obs=`` are replaced by simulated ones;
        only their shapes matter.
    *args, **kwargs
        The model's arguments, as for ``VI.run``.  A model keyword argument named like one
        of the options below must be passed through a ``functools.partial`` of the model.
    guide : str, AutoGuide class, callable, or "em"
        What to calibrate: any ``guide`` that :class:`pyrovi.VI` accepts except an
        AutoGuide *instance* (it is bound to one model), or ``"em"`` (also written
        ``"exact"``) for the exact posterior of :class:`pyrovi.EM` (the model must then have
        ``pyro.param`` sites and latents EM supports).  A guide function must not read the
        observed values from its arguments: they are the ones passed here, not the
        simulated ones.
    num_simulations : int
        Number of simulated data sets, one fit each (>= 2; default 100).  The test has
        little power below about 50.
    num_draws : int
        Draws of each fit behind each probability (default 1,000).
    seed : int, optional
        Seed of the whole calibration; the caller's random state is left untouched.
    progress : bool
        Show a progress bar over the simulations (default True).
    fit_kwargs : dict, optional
        Keyword arguments for ``pyrovi.VI`` (or ``pyrovi.EM``), e.g.
        ``{"num_steps": 2000, "elbo_particles": 10}``; ``seed`` and ``progress`` are set
        by calibrate.  ``elbo_particles`` defaults to 10 here, since the final ELBO is not
        used.

    Returns
    -------
    CalibrationResult

    Raises
    ------
    ModelError
        Before any fit, when the model has no observed site or no latent site,
        subsamples a plate, or (``guide="em"``) has no ``pyro.param`` site; when a
        simulated data set is not finite.

    Warns
    -----
    ConvergenceWarning
        Once, after all fits, when some fits stopped at their step budget (each fit's own
        warning is silenced); ``result.converged`` says which.

    Notes
    -----
    Model parameters (``pyro.param`` sites) are held at their initial values to simulate
    and fitted again on every simulated data set, so with parameters the check is of the
    empirical-Bayes posterior, which is only approximately calibrated even when exact.
    The check costs ``num_simulations`` fits; lower ``num_steps`` in ``fit_kwargs`` where
    the posterior is easy.

    Examples
    --------
    >>> result = pyrovi.calibrate(model, y, guide="fullrank", num_simulations=100,
    ...                           fit_kwargs={"num_steps": 2000})  # doctest: +SKIP
    >>> result.passed()  # doctest: +SKIP
    {'mu': True}
    """
    start = time.perf_counter()
    # ---- arguments, before any work
    if not callable(model):
        raise TypeError(f"model must be a callable Pyro model, got {type(model).__name__}")
    guide_name = _check_guide(guide)
    exact = guide_name == "em"
    check_positive("num_simulations", num_simulations, integer=True)
    if num_simulations < 2:
        raise ValueError(
            f"num_simulations must be an int >= 2 (the test compares simulations; about 100 "
            f"is typical), got {num_simulations!r}"
        )
    check_positive("num_draws", num_draws, integer=True)
    fit_kwargs = _check_fit_kwargs(fit_kwargs, model, guide, exact)
    if not exact:
        fit_kwargs.setdefault("elbo_particles", 10)
    seed = resolve_seed(seed)
    device = resolve_device(None, args, kwargs)

    # ---- the model, traced once in a private parameter store and random state
    with seeded(seed, device), param_scope():
        info = inspect_model(model, args, kwargs)
    name = model_name(model)
    if not info.observed:
        raise ModelError(
            f"model {name!r} has no observed site, so there are no data to simulate; "
            "calibrate needs the likelihood's sites marked with obs=. Pass the data (or a "
            "placeholder tensor of the right shape) as obs= in the model's arguments."
        )
    if not info.latent:
        raise ModelError(
            f"model {name!r} has no latent sample site, so there is nothing to calibrate; "
            "expected at least one pyro.sample site without obs="
        )
    if info.subsampled:
        plate = next(p for p, (full, sub, _) in info.plates.items() if full != sub)
        raise ModelError(
            f"model {name!r} subsamples plate {plate!r}; calibrate simulates whole data sets. "
            "Pass subsample_size=None (the full data) for the calibration."
        )
    params = [n for n, s in info.trace.nodes.items() if s["type"] == "param"]
    if exact and not params:
        raise ModelError(
            f"guide='exact' fits with pyrovi.EM, which needs pyro.param sites, and model "
            f"{name!r} has none. Use guide='fullrank' (exact for a Gaussian posterior "
            "up to optimization error), or give the model a parameter."
        )
    notes = []
    if params:
        notes.append(
            f"the model's parameters {params} were held at their initial values to simulate "
            "and fitted on each simulated data set (empirical Bayes)"
        )
    shapes = site_shapes(info.trace)
    dims = {
        s: list(site_dims(s, shapes[s], info.site_plates.get(s, ()), info.plates))
        for s in info.latent
    }

    # ---- simulations
    rng = np.random.default_rng(seed)
    seeds = rng.integers(0, 2**31 - 1, size=(num_simulations, 3))
    probs: dict[str, list] = {s: [] for s in info.latent}
    truth: dict[str, list] = {s: [] for s in info.latent}
    converged = np.zeros(num_simulations, dtype=bool)
    for j in tqdm(range(num_simulations), disable=not progress, desc="calibrate"):
        sim_seed, fit_seed, draw_seed = (int(v) for v in seeds[j])
        with seeded(sim_seed, device), param_scope(), torch.no_grad():
            sim = poutine.trace(poutine.uncondition(model)).get_trace(*args, **kwargs)
        data = {s: sim.nodes[s]["value"].detach() for s in info.observed}
        for s, value in data.items():
            if value.is_floating_point() and not bool(torch.isfinite(value).all()):
                raise ModelError(
                    f"simulation {j}: the prior predictive drew non-finite values at observed "
                    f"site {s!r}; calibrate needs priors that give finite data. Tighten the "
                    "priors.",
                    site=s,
                )
        fitter = _make_fitter(_conditioned(model, data), guide, exact, fit_seed, fit_kwargs)
        try:
            with warnings.catch_warnings():
                # silenced per fit, reported once below from result.converged
                warnings.simplefilter("ignore", ConvergenceWarning)
                fit = fitter.run(*args, **kwargs)
        except Exception as err:
            if hasattr(err, "add_note"):
                err.add_note(f"(raised while fitting simulation {j} of pyrovi.calibrate)")
            raise
        converged[j] = bool(fit.converged)
        draws = fit.sample(num_draws, seed=draw_seed)
        for s in info.latent:
            true_value = sim.nodes[s]["value"].detach().cpu().numpy()
            truth[s].append(true_value)
            probs[s].append(
                posterior_probability(draws[s].detach().cpu().numpy(), true_value, rng)
            )

    probabilities = {s: np.stack(v) for s, v in probs.items()}
    statistic, pvalue = {}, {}
    for s, p in probabilities.items():
        flat = p.reshape(num_simulations, -1)
        tests = [symmetry_test(flat[:, k]) for k in range(flat.shape[1])]
        statistic[s] = np.array([t[0] for t in tests]).reshape(p.shape[1:])
        pvalue[s] = np.array([t[1] for t in tests]).reshape(p.shape[1:])
    if not converged.all():
        missed = int((~converged).sum())
        notes.append(f"{missed} of {num_simulations} fits stopped before converging")
        warn(
            f"{missed} of {num_simulations} calibration fits stopped at their step budget "
            "before converging (result.converged); an unconverged fit can fail the check "
            "for lack of steps. Raise num_steps or lr in fit_kwargs.",
            ConvergenceWarning,
        )
    return CalibrationResult(
        probabilities=probabilities,
        truth={s: np.stack(v) for s, v in truth.items()},
        statistic=statistic,
        pvalue=pvalue,
        dims=dims,
        converged=converged,
        num_simulations=num_simulations,
        num_draws=num_draws,
        guide=guide_name,
        seed=seed,
        wall_time=time.perf_counter() - start,
        notes=tuple(notes),
    )
