r"""``log_evidence``: :math:`\log p(x)` of a Pyro model, exactly where it is tractable,
else by importance sampling from a guide or by annealed importance sampling.

Methods
-------
``"exact"``
    All latents discrete with finite support: Pyro's enumeration (``TraceEnum_ELBO`` with
    an empty guide sums every assignment out).  Linear-Gaussian (``log p(x, z)`` quadratic
    in unconstrained, real-valued latents): the Laplace identity
    :math:`\log p(x) = \log p(x, z^*) + \tfrac d2 \log 2\pi - \tfrac12 \log\det(-H)`, exact
    for a quadratic log joint, after checking that the Hessian is the same at two points and
    that the quadratic predicts the log joint elsewhere.  An EM result: its exact
    :math:`\log p(x \mid \hat\theta)`.
``"importance"``
    :math:`\log \frac1S \sum_s p(x, z_s) / q(z_s)` with a fitted guide as proposal, with a
    delta-method standard error (reliable when PSIS k-hat < 0.7).
``"ais"`` or :class:`~pyrovi.diagnostics.ais.AIS`
    Annealed importance sampling (Neal, 2001) from a Gaussian matched to the guide (or the
    prior) to the posterior, standard error over independent runs.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping

import pyro
import pyro.poutine as poutine
import torch
from pyro.distributions import constraints
from pyro.infer import TraceEnum_ELBO, config_enumerate
from pyro.infer.mcmc.util import initialize_model

from pyrovi._model import inspect_model
from pyrovi._runtime import resolve_seed, seeded
from pyrovi.diagnostics.ais import AIS, run_ais
from pyrovi.diagnostics.bounds import ess, log_mean_exp
from pyrovi.diagnostics.weights import (
    _check_particles,
    importance_log_weights,
    result_log_weights,
)
from pyrovi.errors import ModelError

__all__ = ["Estimate", "log_evidence", "exact_log_evidence", "IntractableError", "METHODS"]

METHODS = ("exact", "importance", "ais")


class IntractableError(ModelError):
    """``method="exact"`` was asked of a model whose evidence has no exact form here."""


@dataclasses.dataclass(frozen=True)
class Estimate:
    """An estimate of the log evidence :math:`\\log p(x)`.

    Attributes
    ----------
    value : float
        :math:`\\log p(x)` in nats (total over the data, constants included).
    se : float
        Its standard error (0 for ``"exact"``).
    method : str
        ``"exact"``, ``"importance"`` or ``"ais"``.
    num_particles : int
        Importance draws or AIS chains behind it (0 for ``"exact"``).
    info : dict
        Method details: ``how`` for exact (``"enumeration"``, ``"gaussian"``, ``"em"``);
        ``ess`` for importance; ``num_runs``, ``num_temperatures``, ``transition``,
        ``acceptance`` and ``base`` for AIS.
    """

    value: float
    se: float
    method: str
    num_particles: int
    info: dict = dataclasses.field(default_factory=dict, compare=False)

    def __str__(self) -> str:
        se = "" if self.method == "exact" else f" ± {self.se:.4g}"
        return f"log p(x) = {self.value:.6g}{se} ({self.method}, {self.num_particles} draws)"


def _is_result(obj) -> bool:
    return hasattr(obj, "param_state") and hasattr(obj, "scope") and hasattr(obj, "model")


def _empty_guide(*args, **kwargs) -> None:
    return None


def _refuse(site: str, why: str) -> IntractableError:
    return IntractableError(
        f"method='exact' is not tractable for this model: site {site!r} {why}. Exact "
        "evidence needs all latents discrete with finite support, or a linear-Gaussian "
        "model (real-valued latents, log p(x, z) quadratic in them). Use method='ais' "
        "(annealed importance sampling), or method='importance' with a fitted guide.",
        site=site,
    )


def _is_real(support) -> bool:
    while isinstance(support, constraints.independent):
        support = support.base_constraint
    return support is constraints.real


def _gaussian_exact(model, args, kwargs, info) -> float:
    trace = info.trace
    sites = [(n, trace.nodes[n]["value"].shape) for n in info.latent]
    for name, _ in sites:
        fn = trace.nodes[name]["fn"]
        if not _is_real(fn.support):
            raise _refuse(name, f"has support {fn.support} (not the whole real line), so "
                                 "log p(x, z) is not Gaussian in it")
    sizes = [math.prod(s) for _, s in sites]
    bounds = [sum(sizes[:i]) for i in range(len(sizes) + 1)]
    d = bounds[-1]
    if d > 5000:
        raise _refuse(sites[0][0], f"is one of {d} latent dimensions; the exact Gaussian "
                                    "evidence needs a d x d Hessian (d <= 5000)")

    def log_joint(flat: torch.Tensor) -> torch.Tensor:
        data = {n: flat[bounds[i] : bounds[i + 1]].reshape(s) for i, (n, s) in enumerate(sites)}
        tr = poutine.trace(poutine.condition(model, data=data)).get_trace(*args, **kwargs)
        return tr.log_prob_sum()

    z0 = torch.cat([trace.nodes[n]["value"].detach().reshape(-1) for n, _ in sites])
    dtype = z0.dtype
    rtol = 1e-7 if dtype == torch.float64 else 1e-3
    hess = torch.autograd.functional.hessian
    with torch.enable_grad():
        h0 = hess(log_joint, z0)
        z = z0.clone().requires_grad_(True)
        g0 = torch.autograd.grad(log_joint(z), z)[0]
    neg_h = -0.5 * (h0 + h0.T)
    chol, bad = torch.linalg.cholesky_ex(neg_h)
    if bad:
        i = int(torch.diagonal(neg_h).argmin())
        raise _refuse(_site_of(i, sites, bounds), "makes -Hessian of log p(x, z) not positive "
                                                   "definite (the posterior is not Gaussian)")
    z_star = (z0 + torch.cholesky_solve(g0.unsqueeze(-1), chol).squeeze(-1)).detach()
    with torch.enable_grad():
        h1 = hess(log_joint, z_star)
    scale = h0.abs().max().clamp_min(1.0)
    diff = (h1 - h0).abs()
    if float(diff.max()) > rtol * float(scale) * 10:
        i = int(diff.max(1).values.argmax())
        raise _refuse(_site_of(i, sites, bounds), "enters log p(x, z) non-quadratically "
                                                   "(its Hessian changes with z)")
    with torch.no_grad():
        f_star = log_joint(z_star)
        gen = torch.Generator().manual_seed(0)
        for i, (name, _) in enumerate(sites):  # the quadratic must predict log p elsewhere
            delta = torch.zeros(d, dtype=dtype)
            delta[bounds[i] : bounds[i + 1]] = torch.randn(
                bounds[i + 1] - bounds[i], generator=gen, dtype=dtype
            )
            delta = torch.linalg.solve_triangular(chol.T, delta.unsqueeze(-1), upper=True)[:, 0]
            predicted = f_star - 0.5 * delta @ (neg_h @ delta)
            actual = log_joint(z_star + delta)
            if abs(float(actual - predicted)) > rtol * 100 * (1 + abs(float(f_star))):
                raise _refuse(name, "enters log p(x, z) non-quadratically")
    log_det = 2 * chol.diagonal().log().sum()
    return float(f_star + 0.5 * d * math.log(2 * math.pi) - 0.5 * log_det)


def _site_of(i: int, sites, bounds) -> str:
    for k, (name, _) in enumerate(sites):
        if bounds[k] <= i < bounds[k + 1]:
            return name
    return sites[-1][0]


def exact_log_evidence(
    model: Callable, args: tuple = (), kwargs: Mapping | None = None
) -> Estimate:
    """Exact :math:`\\log p(x)` with the model's parameters at their current values.

    Raises
    ------
    IntractableError
        Naming the site that makes the evidence intractable (and suggesting ``"ais"``).
    """
    kwargs = dict(kwargs or {})
    info = inspect_model(model, args, kwargs)
    if info.infinite_discrete:
        name = info.infinite_discrete[0]
        raise _refuse(name, "is discrete with infinite support "
                            f"({type(info.trace.nodes[name]['fn']).__name__}) and cannot be "
                            "enumerated")
    if not info.latent:
        with torch.no_grad():
            return Estimate(float(info.trace.log_prob_sum()), 0.0, "exact", 0, {"how": "none"})
    if info.discrete and not info.continuous:
        elbo = TraceEnum_ELBO(max_plate_nesting=info.max_plate_nesting)
        with torch.no_grad():
            loss = elbo.loss(config_enumerate(model, default="parallel"), _empty_guide,
                             *args, **kwargs)
        return Estimate(-float(loss), 0.0, "exact", 0, {"how": "enumeration"})
    if info.discrete:
        raise _refuse(info.continuous[0], f"is continuous while {info.discrete[0]!r} is "
                                          "discrete (a mixed model has no exact form here)")
    return Estimate(_gaussian_exact(model, args, kwargs, info), 0.0, "exact", 0,
                    {"how": "gaussian"})


def _flat_potential(model, args, kwargs, nesting):
    """Pyro's unconstrained potential, flattened and vmapped over a batch of points."""
    init, potential_fn, transforms, proto = initialize_model(
        model, model_args=args, model_kwargs=kwargs, max_plate_nesting=nesting
    )
    names = list(init)
    shapes = [init[n].shape for n in names]
    sizes = [math.prod(s) for s in shapes]

    def unflatten(flat):
        out, k = {}, 0
        for n, s, m in zip(names, shapes, sizes, strict=True):
            out[n] = flat[..., k : k + m].reshape(flat.shape[:-1] + s)
            k += m
        return out

    def one(flat):
        return -potential_fn(unflatten(flat))

    batched = torch.func.vmap(torch.func.grad_and_value(one))

    def log_density(u):
        with pyro.validation_enabled(False), torch.enable_grad():
            try:
                grad, value = batched(u)
            except Exception:  # vmap is refused by some models (e.g. enumeration); loop
                grads, values = [], []
                for row in u:
                    x = row.detach().clone().requires_grad_(True)
                    val = one(x)
                    grads.append(torch.autograd.grad(val, x)[0])
                    values.append(val.detach())
                grad, value = torch.stack(grads), torch.stack(values)
        return value.detach(), grad.detach()

    def to_flat(values: Mapping[str, torch.Tensor], n: int) -> torch.Tensor:
        return torch.cat(
            [transforms[k](values[k]).reshape(n, -1) for k in names], dim=-1
        ).detach()

    return log_density, to_flat, names, sum(sizes), proto


def _base_draws(model, args, kwargs, guide, n, names):
    """Constrained draws of the sites ``names`` from the guide (or a fit, or the prior)."""
    if _is_result(guide):
        if hasattr(guide, "draws"):  # VIResult: vectorized draws of the continuous latents
            return dict(guide.draws(n).values), "guide"
        return guide.sample(n), "guide"
    source = guide if guide is not None else model
    rows: dict = {k: [] for k in names}
    with torch.no_grad():
        for _ in range(n):
            tr = poutine.trace(source).get_trace(*args, **kwargs)
            for k in names:
                rows[k].append(tr.nodes[k]["value"])
    return {k: torch.stack(v) for k, v in rows.items()}, ("guide" if guide is not None else
                                                          "prior")


def _ais(model, args, kwargs, guide, options: AIS, num_particles: int) -> Estimate:
    info = inspect_model(model, args, kwargs)
    if info.infinite_discrete:
        name = info.infinite_discrete[0]
        raise ModelError(
            f"method='ais' cannot handle site {name!r}: it is discrete with infinite support; "
            "AIS needs continuous latents (finite discrete ones are summed out)", site=name)
    log_density, to_flat, names, d, _ = _flat_potential(model, args, kwargs,
                                                        info.max_plate_nesting)
    if d == 0:
        return exact_log_evidence(model, args, kwargs)
    values, base = _base_draws(model, args, kwargs, guide, options.base_draws, names)
    flat = to_flat(values, options.base_draws).to(torch.float64)
    mean = flat.mean(0)
    cov = torch.atleast_2d(torch.cov(flat.T))
    cov = cov + 1e-6 * cov.diagonal().mean().clamp_min(1e-12) * torch.eye(d, dtype=cov.dtype)
    dtype = next(iter(values.values())).dtype
    dtype = dtype if dtype.is_floating_point else torch.get_default_dtype()
    scale_tril = torch.linalg.cholesky(cov).to(dtype)
    chains = max(1, num_particles // options.num_runs)
    run = run_ais(log_density, mean.to(dtype), scale_tril, options=options,
                  chains_per_run=chains)
    # each run's Z estimate (mean of its chains' weights) is unbiased; the pooled log Z has
    # the delta-method standard error sd(Z_r) / (sqrt(R) mean(Z_r)) over independent runs.
    per_run = torch.logsumexp(run.log_w, 1) - math.log(chains)
    value, se = log_mean_exp(per_run)
    if not math.isfinite(value):
        raise ModelError(
            "AIS produced non-finite log-weights; expected finite log p(x, z) along the "
            "annealing path. Check the model for values outside a support, or lower "
            "AIS(step_size=...)")
    return Estimate(value, se, "ais", int(run.log_w.numel()), {
        "num_runs": options.num_runs, "num_temperatures": options.num_temperatures,
        "transition": options.transition, "acceptance": run.acceptance, "base": base,
    })


def log_evidence(
    model,
    *args,
    method: str | AIS = "exact",
    guide=None,
    num_particles: int | None = None,
    seed: int | None = None,
    **kwargs,
) -> Estimate:
    """The log evidence :math:`\\log p(x)` of ``model(*args, **kwargs)``.

    Parameters
    ----------
    model : callable or fit result
        A Pyro model, its ``pyro.param`` parameters at their current values; or a
        ``VIResult`` / ``EMResult``, whose model, arguments, fitted parameters and posterior
        approximation are used (then pass no model arguments).
    *args, **kwargs
        The model's arguments.
    method : {"exact", "importance", "ais"} or AIS
        See the module docstring; pass :class:`~pyrovi.diagnostics.ais.AIS` to set the AIS
        options.
    guide : callable or fit result, optional
        The importance proposal (``"importance"``, required) or the AIS starting point
        (``"ais"``; default the prior).  A fit result's guide is evaluated inside its
        ``scope()``, so that its fitted parameters (and the model's) are used.
    num_particles : int, optional
        Importance draws (default 10,000) or AIS chains over all runs (default 64); >= 2.
    seed : int, optional
        Seed of the draws (the caller's random state is left untouched).

    Returns
    -------
    Estimate

    Raises
    ------
    IntractableError
        ``method="exact"`` on a model without an exact form; names the site.
    ValueError
        Unknown method, ``num_particles`` < 2, importance without a guide.
    """
    if isinstance(method, str):
        if method not in METHODS:
            raise ValueError(
                f"method={method!r} is not known; expected one of {METHODS} or an AIS(...)"
            )
        options = AIS() if method == "ais" else None
    elif isinstance(method, AIS):
        options, method = method, "ais"
    else:
        raise TypeError(f"method must be one of {METHODS} or an AIS(...), got {method!r}")
    if num_particles is not None:
        _check_particles(num_particles)
    if _is_result(model):
        if args or kwargs:
            raise TypeError(
                "log_evidence(result, ...) takes the model arguments from the result; got "
                f"extra arguments {args or ''}{kwargs or ''}. Pass either a result or a model "
                "with its arguments."
            )
        result = model
        model, args, kwargs = result.model, tuple(result.args), dict(result.kwargs)
        guide = result if guide is None else guide
        if method == "exact" and hasattr(result, "log_posterior"):
            return Estimate(float(result.log_evidence), 0.0, "exact", 0, {"how": "em"})
    if not callable(model):
        raise TypeError(f"model must be a Pyro model or a fit result, got {type(model).__name__}")
    scope = guide.scope() if _is_result(guide) else _null()
    seed = resolve_seed(seed)
    with scope, seeded(seed):
        if method == "exact":
            return exact_log_evidence(model, args, kwargs)
        if method == "importance":
            if guide is None:
                raise ValueError(
                    "method='importance' needs a proposal: pass guide=<fitted guide or "
                    "VIResult>; got guide=None. Without a guide use method='ais'."
                )
            n = num_particles or 10_000
            if hasattr(guide, "log_posterior"):  # EMResult: its exact posterior
                lw = result_log_weights(guide, n, seed=seed)
            elif _is_result(guide):
                lw = importance_log_weights(model, guide.guide, args, kwargs, num_particles=n)
            else:
                lw = importance_log_weights(model, guide, args, kwargs, num_particles=n)
            value, se = log_mean_exp(lw.log_w)
            return Estimate(value, se, "importance", n, {"ess": ess(lw.log_w)})
        return _ais(model, args, kwargs, guide, options, num_particles or 64)


class _null:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False

