r"""Exact E-steps of the generic EM path, as functions of a Pyro model at fixed parameters.

Two kinds of latents have an exact posterior that pyrovi computes:

* **finite discrete latents** (mixtures, hidden Markov chains): Pyro's parallel
  enumeration (:func:`~pyro.infer.config_enumerate`, :class:`~pyro.poutine.enum`) lays out
  every site's log-density over the enumerated values, and Pyro's tensor message passing
  (:func:`pyro.ops.contract.contract_to_tensor`, the same contraction ``TraceEnum_ELBO``
  uses) sums them out to the exact log evidence :math:`\log Z = \log p(x \mid \theta)`.
  The posterior marginal of every factor is the gradient of :math:`\log Z` with respect to
  that factor, so one backward pass gives the weights of

  .. math:: Q(\theta \mid \theta_t) = \sum_f \sum_{v} p(v \mid x, \theta_t)\,
            \log f_\theta(v),

  the expectation the M-step maximises (pairwise marginals of a Markov chain included).

* **linear-Gaussian latents**: the log joint :math:`g(z) = \log p(x, z \mid \theta)` is
  quadratic in the flattened latent vector ``z``, so the posterior is
  :math:`N(\mu, (-H)^{-1})` with ``H`` the Hessian of ``g`` and
  :math:`\mu = z_0 - H^{-1} \nabla g(z_0)`, and the Laplace identity is exact:
  :math:`\log p(x) = g(\mu) + \tfrac d2 \log 2\pi - \tfrac12 \log\det(-H)`
  (:mod:`pyrovi._exact`, shared with the exact evidence of :mod:`pyrovi.diagnostics`).
  :math:`E_q[g_\theta(z)]` is computed exactly with ``2d`` symmetric sigma points
  :math:`\mu \pm \sqrt d\, L e_i` (:math:`L L^\top = \Sigma`), which is exact for every
  quadratic ``g``.
"""

from __future__ import annotations

import dataclasses
import math
from collections import OrderedDict
from collections.abc import Callable

import pyro
import pyro.poutine as poutine
import torch
from pyro.infer import config_enumerate
from pyro.ops import packed
from pyro.ops.contract import contract_to_tensor
from pyro.poutine.util import prune_subsample_sites

from pyrovi._exact import (
    LaplaceGaussian,
    NotConcaveError,
    flat_sites,
    grad_hessian,
    is_real_support,
    laplace_gaussian,
    nonquadratic_site,
    unflatten,
)
from pyrovi._model import ModelInfo, model_name
from pyrovi._runtime import warn
from pyrovi.em.posterior import particle_log_joint
from pyrovi.errors import FallbackWarning, ModelError, PyroviError

__all__ = [
    "latent_kind",
    "EnumEStep",
    "enum_trace",
    "enum_e_step",
    "enum_expected_log_joint",
    "q_of_trace",
    "GaussianEStep",
    "gaussian_e_step",
    "gaussian_expected_log_joint",
    "check_quadratic",
    "prove_quadratic",
    "make_log_joint",
    "latent_layout",
    "current_params",
]

_VI_HINT = "use pyrovi.VI for this model instead"


def latent_kind(info: ModelInfo, model: Callable) -> str:
    """``"discrete"`` or ``"gaussian"``: which exact E-step fits the model's latents.

    Raises
    ------
    ModelError
        Before any work, naming the site, when a latent has an infinite discrete support,
        a constrained (non-Gaussian) continuous support, or when discrete and continuous
        latents are mixed.
    """
    name = model_name(model)
    if not info.latent:
        raise ModelError(
            f"model {name!r} has no latent (unobserved) sample site; EM needs latent "
            "variables to take the expectation over. Fit the parameters by maximum "
            "likelihood (e.g. pyrovi.VI with an empty guide) instead."
        )
    if info.subsampled:
        raise ModelError(
            f"model {name!r} subsamples a plate; exact EM needs the whole data set in every "
            "iteration. Remove the plate's subsample_size, or use pyrovi.VI for minibatch fits."
        )
    for site in info.infinite_discrete:
        support = info.trace.nodes[site]["fn"]
        raise ModelError(
            f"site {site!r} is discrete with infinite support ({type(support).__name__}); EM "
            "needs a finite support or a conjugate Gaussian latent - " + _VI_HINT,
            site=site,
        )
    cont = info.continuous
    for site in cont:
        support = info.trace.nodes[site]["fn"].support
        if not is_real_support(support):
            raise ModelError(
                f"site {site!r} is a continuous latent with support {support}; EM needs its "
                "log joint to be quadratic in an unconstrained (real) latent, i.e. a "
                "linear-Gaussian model, or a finite discrete latent - " + _VI_HINT,
                site=site,
            )
    if cont and info.discrete:
        raise ModelError(
            f"model {name!r} mixes discrete latents {list(info.discrete)} with continuous "
            f"latents {list(cont)} (first continuous site {cont[0]!r}); exact EM handles "
            "either finite discrete latents or linear-Gaussian latents, not both - " + _VI_HINT,
            site=cont[0],
        )
    return "gaussian" if cont else "discrete"


# --------------------------------------------------------------------------- enumeration


def enum_trace(model: Callable, max_plate_nesting: int, args: tuple, kwargs: dict):
    """The model's trace under parallel enumeration, log-densities computed and packed."""
    enum_model = poutine.enum(
        config_enumerate(model, "parallel"), first_available_dim=-1 - max_plate_nesting
    )
    trace = poutine.trace(enum_model).get_trace(*args, **kwargs)
    trace = prune_subsample_sites(trace)
    trace.compute_log_prob()
    for site in trace.nodes.values():
        if (
            site["type"] == "sample"
            and site["mask"] is not None
            and site["infer"].get("_enumerate_dim") is not None
        ):
            # the evidence factor of a masked enumerated site (see _factors): unmasked,
            # scaled, and of the masked factor's shape, so that its marginals (the
            # gradient of log Z) pair element by element with the masked factor of Q
            unmasked = site["unscaled_log_prob"] * site["scale"]
            site["unscaled_log_prob"] = unmasked.expand(
                torch.broadcast_shapes(unmasked.shape, site["log_prob"].shape)
            )
    trace.pack_tensors()
    return trace


def _factors(trace, evidence: bool = False) -> tuple[list, list, set]:
    """(ordinal, packed log-prob) of every sample site, and the enumerated dim symbols.

    With ``evidence=True`` a masked enumerated site's factor is its log-probability *before*
    the mask (scaled as the site is), as in ``TraceEnum_ELBO``: a latent masked out by
    ``poutine.mask`` (the padded steps of ``examples/hmm.py``) still sums to one over its
    values.  Masked to zero it would sum to its number of values instead, adding ``log K``
    per masked latent to the evidence.  The expected log joint keeps the masked factor
    (zero): the masked latent is not part of the model the parameters are fitted to.
    """
    factors, names = [], []
    enum_dims: set = set()
    plate_dims: set = set()
    for name, site in trace.nodes.items():
        if site["type"] != "sample":
            continue
        ordinal = frozenset(
            trace.plate_to_symbol[f.name] for f in site["cond_indep_stack"] if f.vectorized
        )
        log_prob = site["packed"]["log_prob"]
        plate_dims |= ordinal
        if site["infer"].get("_enumerate_dim") is not None:
            if evidence and site["mask"] is not None:
                log_prob = site["packed"]["unscaled_log_prob"]  # unmasked: enum_trace
            enum_dims.update(log_prob._pyro_dims)
        factors.append((ordinal, log_prob))
        names.append(name)
    return factors, names, enum_dims - plate_dims


@dataclasses.dataclass(frozen=True)
class EnumEStep:
    """Exact E-step of finite discrete latents.

    Attributes
    ----------
    log_evidence : torch.Tensor
        Scalar :math:`\\log p(x \\mid \\theta_t)` (detached).
    weights : tuple of torch.Tensor
        Posterior marginal of every site factor of the enumerated trace (trace order),
        packed like the factor; ``1`` for factors that depend on no enumerated value.
    trace : pyro.poutine.Trace or None
        The enumerated trace at :math:`\\theta_t` (:func:`enum_trace`, computed without
        gradients) that the weights belong to; the closed-form M-step reads its sites.
    """

    log_evidence: torch.Tensor
    weights: tuple
    trace: object = dataclasses.field(default=None, repr=False, compare=False)


def enum_e_step(
    model: Callable, max_plate_nesting: int, args: tuple, kwargs: dict, trace=None
) -> EnumEStep:
    """Exact log evidence and factor marginals by enumeration, at the current parameters
    (from ``trace``, their :func:`enum_trace`, when the caller has it already)."""
    if trace is None:
        with torch.no_grad():
            trace = enum_trace(model, max_plate_nesting, args, kwargs)
    factors, _, sum_dims = _factors(trace, evidence=True)
    with torch.no_grad():  # a trace taken with gradients (the M-step's) is only read
        local = _local_marginals(factors, sum_dims)
    log_z, weights = local if local is not None else _contracted_marginals(factors, sum_dims)
    return EnumEStep(log_evidence=log_z.detach(), weights=weights, trace=trace)


def _contracted_marginals(factors: list, sum_dims: set) -> tuple:
    """``log Z`` by Pyro's tensor contraction, and the factor marginals as its gradient."""
    leaves, tree, const = [], OrderedDict(), 0.0
    with torch.enable_grad():
        for ordinal, log_prob in factors:
            leaf = log_prob.detach().requires_grad_()
            leaf._pyro_dims = log_prob._pyro_dims
            leaves.append(leaf)
            if sum_dims.isdisjoint(log_prob._pyro_dims):
                const = const + leaf.sum()
            else:
                tree.setdefault(ordinal, []).append(leaf)
        log_z = const
        if tree:
            log_z = log_z + contract_to_tensor(tree, sum_dims).sum()
        grads = torch.autograd.grad(log_z, leaves, allow_unused=True)
    weights = tuple(
        torch.ones_like(leaf) if g is None else g.detach()
        for leaf, g in zip(leaves, grads, strict=True)
    )
    return torch.as_tensor(log_z).detach(), weights


def _local_marginals(factors: list, sum_dims: set) -> tuple | None:
    """:func:`_contracted_marginals` in closed form where every enumerated dim is local
    (a mixture's assignment), or None where it is not.

    Local: no factor holds two enumerated dims, and the factors that hold one all lie in
    the same plates, each of which they span.  Then ``log Z`` is, per enumerated dim, the
    plate-wise ``logsumexp`` over it of the sum of its factors (plus the factors that hold
    none), and the marginal of each factor is the posterior ``softmax`` summed over the
    dims the factor lacks: no tensor contraction and no backward pass.
    """
    groups: dict[str, list[int]] = {}
    log_z = 0.0
    for i, (_, log_prob) in enumerate(factors):
        held = [d for d in log_prob._pyro_dims if d in sum_dims]
        if len(held) > 1:
            return None
        if held:
            groups.setdefault(held[0], []).append(i)
        else:
            log_z = log_z + log_prob.sum()
    weights: list = [None] * len(factors)
    for symbol, members in groups.items():
        ordinals = {factors[i][0] for i in members}
        terms = [factors[i][1] for i in members]
        dims = "".join(sorted({d for t in terms for d in t._pyro_dims}))
        if len(ordinals) != 1 or set(dims) != set(ordinals.pop()) | {symbol}:
            return None
        joint = sum(packed.broadcast_all(*terms, dims=dims))
        at = dims.index(symbol)
        lse = joint.logsumexp(at, keepdim=True)
        log_z = log_z + lse.sum()
        post = (joint - lse).exp()
        for i, term in zip(members, terms, strict=True):
            own = term._pyro_dims
            lacking = tuple(k for k, d in enumerate(dims) if d not in own)
            w = post.sum(lacking) if lacking else post
            kept = "".join(d for d in dims if d in own)
            weights[i] = w.permute(tuple(kept.index(d) for d in own)) if kept != own else w
    weights = tuple(torch.ones_like(lp) if w is None else w
                    for (_, lp), w in zip(factors, weights, strict=True))
    return torch.as_tensor(log_z).detach(), weights


def enum_expected_log_joint(
    model: Callable, max_plate_nesting: int, args: tuple, kwargs: dict, estep: EnumEStep
) -> torch.Tensor:
    r""":math:`Q(\theta \mid \theta_t)` at the current parameters, differentiable in them."""
    return q_of_trace(enum_trace(model, max_plate_nesting, args, kwargs), estep)


def q_of_trace(trace, estep: EnumEStep) -> torch.Tensor:
    r""":math:`Q(\theta \mid \theta_t)` of an enumerated trace (:func:`enum_trace`) at
    :math:`\theta`, with the weights of the E-step at :math:`\theta_t`."""
    factors, _, _ = _factors(trace)
    total = 0.0
    for (_, log_prob), w in zip(factors, estep.weights, strict=True):
        lp = log_prob.expand_as(w) if log_prob.shape != w.shape else log_prob
        total = total + torch.where(w > 0, w * lp, torch.zeros_like(lp)).sum()
    return total


# ------------------------------------------------------------------------ linear-Gaussian


#: Exact E-step of linear-Gaussian latents (one block over the whole latent vector): the
#: log evidence by the (exact) Laplace identity, the posterior mean ``(d,)`` and covariance
#: ``(d, d)`` of the flattened latent vector; see :class:`pyrovi._exact.LaplaceGaussian`.
GaussianEStep = LaplaceGaussian


def prove_quadratic(
    f: Callable, z0: torch.Tensor, sites: tuple
) -> tuple[LaplaceGaussian, tuple[str, str] | None]:
    """The premise of every exact Gaussian computation (EM's E-step here, the exact log
    evidence of :mod:`pyrovi.diagnostics.exact`), checked once for both.

    Expands ``f`` at ``z0`` (:func:`~pyrovi._exact.laplace_gaussian`), then checks with
    :func:`~pyrovi._exact.nonquadratic_site` that the Hessian is the same at ``z0`` and at
    the mode and that the quadratic predicts ``f`` at 0.5 to 8 posterior standard
    deviations from the mode, both signs, along each site's block and all together: a
    kink (``abs``, ``relu`` of a latent) or a curvature that changes away from the mode
    has a constant Hessian near it and is caught only by the second check.  Tolerances
    follow the dtype (``1e-6`` / ``1e-5`` relative in float64, ``1e-2`` / ``1e-1`` in
    float32, on the Hessian / the prediction).

    Returns
    -------
    (LaplaceGaussian, (str, str) or None)
        The expansion, and the offending site with why, or None when ``f`` passes.

    Raises
    ------
    NotConcaveError
        When ``-H`` at ``z0`` is not positive definite (no Gaussian posterior at all).
    """
    rtol = 1e-7 if z0.dtype == torch.float64 else 1e-3
    g0, h0 = grad_hessian(f, z0)
    fit = laplace_gaussian(f, z0, grad=g0, hessian=h0)
    bad = nonquadratic_site(f, z0, fit.mean, sites, rtol=10 * rtol, hessian0=h0, fit=fit,
                            predict_rtol=100 * rtol)
    return fit, bad


def check_quadratic(f: Callable, z0: torch.Tensor, sites: tuple) -> None:
    """Refuse, naming the site, a log joint that is not quadratic in the latents
    (:func:`prove_quadratic`), so that no E-step is called exact that is not.

    A log joint that is not concave at ``z0`` passes here: the E-step at the same point
    refuses it with its own message.
    """
    try:
        _, bad = prove_quadratic(f, z0, sites)
    except NotConcaveError:
        return
    if bad is not None:
        name, why = bad
        raise ModelError(
            f"site {name!r} is a continuous latent whose log joint is not quadratic ({why}), "
            "so its posterior is not Gaussian and EM has no exact E-step for it - "
            + _VI_HINT,
            site=name,
        )


def gaussian_e_step(f: Callable, z0: torch.Tensor, sites: tuple) -> GaussianEStep:
    """Exact Gaussian posterior and log evidence of a log joint ``f`` quadratic in ``z``."""
    try:
        return laplace_gaussian(f, z0)
    except NotConcaveError as err:
        raise PyroviError(
            "the posterior precision -H of the latents "
            f"{[name for name, _ in sites]} is not positive definite at the current "
            "parameters (the log joint is not concave in the latents: an improper prior or a "
            "latent the data do not determine); give every latent a proper Gaussian prior"
        ) from err


def gaussian_expected_log_joint(f: Callable, estep: GaussianEStep) -> torch.Tensor:
    r"""Exact :math:`E_{N(\mu,\Sigma)}[f(z)]` for quadratic ``f`` by ``2d`` sigma points."""
    d = estep.mean.numel()
    L = torch.linalg.cholesky(estep.covariance)
    offsets = math.sqrt(d) * L.mT  # row i = sqrt(d) * column i of L
    points = torch.cat([estep.mean + offsets, estep.mean - offsets], dim=0)
    return f(points).mean()


def make_log_joint(
    model: Callable, args: tuple, kwargs: dict, sites: tuple, particle_dim: int, layout: dict
) -> Callable[[torch.Tensor], torch.Tensor]:
    """``f(z)``: the model's log joint at latent vectors ``z`` of shape ``(n, d)``, ``(n,)``.

    Evaluated in one vectorized run of the model inside a particle plate; a model that does
    not broadcast over that plate is evaluated one draw at a time (with a FallbackWarning).
    """
    state = {"vectorize": True}

    def f(flat: torch.Tensor) -> torch.Tensor:
        values = unflatten(flat, sites)
        if state["vectorize"] and flat.shape[0] > 1:
            try:
                return particle_log_joint(model, args, kwargs, values, particle_dim, layout)
            except (RuntimeError, ValueError) as err:
                state["vectorize"] = False
                warn(
                    f"model {model_name(model)!r} does not broadcast over an extra batch "
                    f"dim {particle_dim} ({type(err).__name__}: {str(err).splitlines()[0]}); "
                    "EM evaluates its log joint one latent value at a time, which is "
                    "slower. Write the model with batch-friendly ops (e.g. "
                    "(x * w).sum(-1) for x @ w) to vectorize it.",
                    FallbackWarning,
                )
        return particle_log_joint(model, args, kwargs, values, particle_dim, layout,
                                  vectorize=False)

    return f


def latent_layout(info: ModelInfo) -> tuple[tuple, torch.Tensor]:
    """The latent sites with their value shapes, and their prototype values flattened."""
    return flat_sites(info.trace, info.latent)


def current_params() -> list[torch.Tensor]:
    """The unconstrained leaves of the active parameter store."""
    return [p for _, p in pyro.get_param_store().named_parameters()]
