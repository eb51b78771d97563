"""The exact posterior of an EM fit: its types, exact draws and densities.

:class:`GaussianPosterior` (linear-Gaussian latents) and :class:`DiscretePosterior` (finite
discrete latents) hold :math:`p(z \\mid x, \\hat\\theta)`.  Draws of a Gaussian posterior and
of a factorized mixture posterior come from the stored moments / marginals; draws of a
general discrete posterior (e.g. a hidden Markov chain) come from Pyro's forward-filter
backward-sample (:func:`pyro.infer.infer_discrete`), vectorized over draws with a particle
plate, and their density is :math:`\\log p(z \\mid x) = \\log p(x, z) - \\log p(x)`, with the
log joint from the model.

The functions on a fit (:func:`sample_posterior`, :func:`log_posterior`, :func:`log_joint`)
take any object with the fields of :class:`~pyrovi.em.EMResult` they use (``posterior``,
``model``, ``args``, ``kwargs``, ``latent_sites``, ``max_plate_nesting``,
``log_evidence`` and ``scope()``); this module does not import the result.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import pyro.poutine as poutine
import torch
from pyro.infer import config_enumerate, infer_discrete

from pyrovi._exact import unflatten
from pyrovi._plates import (
    SiteShape,
    draw_dim,
    draw_plate,
    is_traced_sample,
    pad_draws,
    per_draw_sum,
    unpad_draws,
    vectorize_else_loop,
)

__all__ = [
    "GaussianPosterior",
    "DiscretePosterior",
    "particle_log_joint",
    "plain_log_joint",
    "sample_posterior",
    "log_posterior",
    "log_joint",
    "particle_dim",
    "model_layout",
]


@dataclasses.dataclass(frozen=True)
class GaussianPosterior:
    r"""Exact Gaussian posterior of the continuous latents, as independent Gaussian blocks.

    The latent sites, each flattened (row-major) and concatenated in ``sites`` order, form
    the latent vector :math:`z \in \mathbb{R}^d`; it is cut into ``B`` consecutive blocks of
    ``m`` entries (``d = B m``) that are independent a posteriori.  A generic linear-Gaussian
    model has one block (``B = 1, m = d``); factor analysis has one block per data point.

    Attributes
    ----------
    mean : torch.Tensor
        Posterior means, shape ``(B, m)``.
    covariance : torch.Tensor
        Posterior covariances, shape ``(B, m, m)`` (possibly an expanded view of one matrix).
    sites : tuple of (str, torch.Size)
        The latent sites and their value shapes, in the order they are concatenated.
    """

    mean: torch.Tensor
    covariance: torch.Tensor
    sites: tuple

    def __repr__(self) -> str:
        blocks, m = tuple(self.mean.shape)
        sites = [name for name, _ in self.sites]
        return f"GaussianPosterior(sites={sites}, {blocks} block(s) of {m} dimension(s))"

    @property
    def scale_tril(self) -> torch.Tensor:
        """Lower Cholesky factors of ``covariance``, shape ``(B, m, m)``."""
        return torch.linalg.cholesky(self.covariance)

    @property
    def flat_mean(self) -> torch.Tensor:
        """Mean of the flattened latent vector, shape ``(d,)``."""
        return self.mean.reshape(-1)

    def dense_covariance(self) -> torch.Tensor:
        """Covariance of the flattened latent vector, shape ``(d, d)`` (materialised)."""
        return torch.block_diag(*self.covariance.unbind(0))

    def unflatten(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """Split latent vectors of shape ``(n, d)`` into ``{site: (n, *shape)}``."""
        return unflatten(flat, self.sites)

    def flatten(self, values: dict[str, torch.Tensor]) -> torch.Tensor:
        """Concatenate ``{site: (n, *shape)}`` into latent vectors of shape ``(n, d)``."""
        n = next(iter(values.values())).shape[0]
        return torch.cat([values[name].reshape(n, -1) for name, _ in self.sites], dim=-1)

    def sample_flat(self, n: int) -> torch.Tensor:
        """``n`` exact draws of the flattened latent vector, shape ``(n, d)``."""
        eps = torch.randn((n,) + tuple(self.mean.shape), dtype=self.mean.dtype)
        eps = eps.to(self.mean.device)
        draws = self.mean + torch.einsum("bij,nbj->nbi", self.scale_tril, eps)
        return draws.reshape(n, -1)

    def log_prob_flat(self, flat: torch.Tensor) -> torch.Tensor:
        """Exact log density of latent vectors ``flat`` of shape ``(n, d)``; shape ``(n,)``."""
        blocks = flat.reshape((flat.shape[0],) + tuple(self.mean.shape))
        L = self.scale_tril
        diff = (blocks - self.mean).unsqueeze(-1)
        white = torch.linalg.solve_triangular(L.expand(blocks.shape[:1] + L.shape), diff,
                                              upper=False).squeeze(-1)
        m = self.mean.shape[-1]
        log_det = L.diagonal(dim1=-2, dim2=-1).log().sum()
        return (-0.5 * white.square().sum((-1, -2)) - log_det
                - 0.5 * self.mean.shape[0] * m * math.log(2 * math.pi))

    def entropy(self) -> torch.Tensor:
        r"""Differential entropy :math:`\tfrac12 \log\det(2\pi e \Sigma)` of the latent vector."""
        d = self.mean.numel()
        log_det = 2 * self.scale_tril.diagonal(dim1=-2, dim2=-1).log().sum()
        return 0.5 * (d * (1.0 + math.log(2 * math.pi)) + log_det)


@dataclasses.dataclass(frozen=True)
class DiscretePosterior:
    """Exact posterior of finite discrete latents, as per-site marginal probabilities.

    Attributes
    ----------
    marginals : dict of str to torch.Tensor
        Site -> posterior marginal probabilities of its values, shape
        ``site batch shape + (support size,)``, the last dim indexing the values of the
        site's ``enumerate_support()`` (``0..K-1`` for a Categorical, ``0, 1`` for a
        Bernoulli).
    factorized : bool
        Whether the joint posterior is the product of the marginals (mixture models fitted
        in closed form).  Otherwise (e.g. hidden Markov chains) draws and densities come
        from Pyro's forward-filter backward-sample (``infer_discrete``) and the model.
    """

    marginals: dict
    factorized: bool = False

    def __repr__(self) -> str:
        shapes = {name: tuple(p.shape) for name, p in self.marginals.items()}
        return f"DiscretePosterior(marginals of shape {shapes}, factorized={self.factorized})"


def particle_dim(trace, max_plate_nesting: int) -> int:
    """The batch dim (negative) of the draw plate: left of every plate and of every batch
    dim of the model's sites (a site may have batch dims outside its plates)."""
    depth = max_plate_nesting
    for site in trace.nodes.values():
        if is_traced_sample(site):
            value = site["value"]
            if isinstance(value, torch.Tensor):
                depth = max(depth, value.dim() - site["fn"].event_dim)
    return draw_dim(depth)


def _layout_shape(shape: tuple, event_dim: int) -> SiteShape:
    return SiteShape(tuple(shape), len(shape) - event_dim)


def _site_log_prob(site) -> torch.Tensor:
    log_prob = site["fn"].log_prob(site["value"])
    if site["mask"] is not None and site["mask"] is not True:
        log_prob = log_prob * site["mask"]
    if not isinstance(site["scale"], (int, float)) or site["scale"] != 1.0:
        log_prob = log_prob * site["scale"]
    return log_prob


def plain_log_joint(model: Callable, args: tuple, kwargs: dict, values: dict) -> torch.Tensor:
    """``log p(x, z)`` (scalar) at one draw ``values`` (site -> value of the site's shape)."""
    trace = poutine.trace(poutine.condition(model, data=values)).get_trace(*args, **kwargs)
    total = 0.0
    for site in trace.nodes.values():
        if is_traced_sample(site):
            total = total + _site_log_prob(site).sum()
    return total


def particle_log_joint(
    model: Callable, args: tuple, kwargs: dict, values: dict, dim: int, layout: dict,
    vectorize: bool = True,
) -> torch.Tensor:
    """``log p(x, z_i)`` for ``n`` draws ``values`` (site -> ``(n, *shape)``), shape ``(n,)``.

    One run of the model inside a plate of size ``n`` at batch dim ``dim`` when
    ``vectorize`` (``layout`` maps each latent site to ``(value shape, event_dim)`` of one
    draw), else one run per draw.
    """
    n = next(iter(values.values())).shape[0]
    if n == 1 or not vectorize:
        return torch.stack([
            plain_log_joint(model, args, kwargs, {k: v[i] for k, v in values.items()})
            for i in range(n)
        ])

    max_plate_nesting = -dim - 1

    def vectorized(*a, **k):
        with draw_plate(n, max_plate_nesting):
            return model(*a, **k)

    data = {
        name: pad_draws(v, _layout_shape(*layout[name]), max_plate_nesting)
        for name, v in values.items()
    }
    trace = poutine.trace(poutine.condition(vectorized, data=data)).get_trace(*args, **kwargs)
    total = torch.zeros(n, dtype=next(iter(values.values())).dtype)
    for site in trace.nodes.values():
        if is_traced_sample(site):
            total = total + per_draw_sum(_site_log_prob(site), n, max_plate_nesting)
    return total


def _support_index(value: torch.Tensor) -> torch.Tensor:
    return value.long()


def sample_posterior(result, n: int) -> dict[str, torch.Tensor]:
    """``n`` exact posterior draws of each latent site of ``result``."""
    post = result.posterior
    if isinstance(post, GaussianPosterior):
        return post.unflatten(post.sample_flat(n))
    assert isinstance(post, DiscretePosterior)
    if post.factorized:
        out = {}
        for name, probs in post.marginals.items():
            draws = torch.distributions.Categorical(probs=probs).sample((n,))
            out[name] = draws
        return out
    with result.scope():
        shape_trace = poutine.trace(result.model).get_trace(*result.args, **result.kwargs)
        dim = particle_dim(shape_trace, result.max_plate_nesting)

        def vectorized(*a, **k):
            with draw_plate(n, -dim - 1):
                return result.model(*a, **k)

        sampler = infer_discrete(
            config_enumerate(vectorized, "parallel"), first_available_dim=dim - 1, temperature=1
        )
        with torch.no_grad():
            trace = poutine.trace(sampler).get_trace(*result.args, **result.kwargs)
    out = {}
    for name in result.latent_sites:
        site = shape_trace.nodes[name]
        shape = _layout_shape(tuple(site["value"].shape), site["fn"].event_dim)
        value = trace.nodes[name]["value"]
        while value.dim() > -dim + len(shape.event_shape) and value.shape[0] == 1:
            value = value.squeeze(0)
        out[name] = unpad_draws(value, shape, -dim - 1, n)
    return out


def model_layout(trace, names) -> dict:
    """Site -> (value shape, event_dim) of the latent sites ``names`` in ``trace``."""
    return {
        name: (tuple(trace.nodes[name]["value"].shape), trace.nodes[name]["fn"].event_dim)
        for name in names
    }


def log_joint(result, samples: dict[str, torch.Tensor]) -> torch.Tensor:
    """``log p(x, z)`` at the fitted parameters for each draw in ``samples``."""
    with result.scope(), torch.no_grad():
        shape_trace = poutine.trace(result.model).get_trace(*result.args, **result.kwargs)
        dim = particle_dim(shape_trace, result.max_plate_nesting)
        values = {k: samples[k] for k in result.latent_sites}
        layout = model_layout(shape_trace, result.latent_sites)
        return vectorize_else_loop(lambda vectorize: particle_log_joint(
            result.model, result.args, result.kwargs, values, dim, layout, vectorize=vectorize))


def log_posterior(result, samples: dict[str, torch.Tensor]) -> torch.Tensor:
    """Exact ``log p(z | x, theta)`` of each draw in ``samples``."""
    post = result.posterior
    if isinstance(post, GaussianPosterior):
        return post.log_prob_flat(post.flatten({k: samples[k] for k in result.latent_sites}))
    assert isinstance(post, DiscretePosterior)
    if post.factorized:
        total = 0.0
        for name, probs in post.marginals.items():
            idx = _support_index(samples[name])
            logp = probs.clamp_min(torch.finfo(probs.dtype).tiny).log()
            picked = torch.gather(logp.expand(idx.shape + probs.shape[-1:]), -1,
                                  idx.unsqueeze(-1)).squeeze(-1)
            total = total + picked.reshape(idx.shape[0], -1).sum(-1)
        return total
    return log_joint(result, samples) - result.log_evidence
