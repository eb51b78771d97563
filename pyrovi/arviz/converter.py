"""``to_arviz``: a pyrovi result as an ArviZ ``InferenceData``.

One converter for every kind of result, one ``*_to_xarray`` method per group, each
returning ``None`` when the group is absent (the layout of ArviZ's own converters,
``arviz_base/io_numpyro.py``).  What differs between kinds of result (where the posterior
draws and their densities come from, the trace group) is the business of an adapter
(:mod:`pyrovi.arviz.adapters`), chosen by ``result.kind``.  The datasets are built with
ArviZ's ``dict_to_dataset`` and wrapped in its ``InferenceData``; pyrovi supplies only what
ArviZ cannot know: the draws and their densities (:mod:`pyrovi.arviz.adapters`,
:mod:`pyrovi.arviz.draws`), dimension names from the model's plates
(:mod:`pyrovi.arviz.dims`) and netCDF-safe attributes (:mod:`pyrovi.arviz.attrs`).
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pyro
import torch

import pyrovi.arviz.draws as export_draws
from pyrovi._model import inspect_model, model_name
from pyrovi._plates import site_shapes
from pyrovi._result import FitResult
from pyrovi._runtime import check_positive, resolve_seed
from pyrovi._version import __version__
from pyrovi.arviz.adapters import adapter_for
from pyrovi.arviz.attrs import encode_attrs
from pyrovi.arviz.backend import make_container, make_dataset
from pyrovi.arviz.dims import default_dims, resolve_layout, site_dims
from pyrovi.errors import PyroviError

__all__ = ["to_arviz", "ResultConverter"]


def _numpy(value: torch.Tensor) -> np.ndarray:
    return value.detach().cpu().numpy()


def _chain(value: torch.Tensor) -> np.ndarray:
    """``(n, ...)`` draws -> ``(1, n, ...)``: one chain, as ArviZ keeps non-MCMC draws."""
    return _numpy(value)[None]


def _plain_array(value):
    return value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)


def _scalar_fields(obj: Any, name: str) -> dict[str, Any]:
    """The scalar fields (numbers, strings, bools, None) of a dataclass or mapping."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        items = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
    elif isinstance(obj, Mapping):
        items = dict(obj)
    else:
        raise TypeError(
            f"{name} must be a dataclass (such as pyrovi's Diagnostics) or a mapping of "
            f"names to numbers, got {type(obj).__name__}"
        )
    out = {}
    for key, value in items.items():
        if isinstance(value, (np.generic, torch.Tensor)) and np.ndim(_plain_array(value)) == 0:
            value = _plain_array(value).item()
        if value is None or isinstance(value, (bool, int, float, str)):
            out[str(key)] = value
    return out


class ResultConverter:
    """Turn any :class:`~pyrovi._result.FitResult` into ArviZ groups, through the adapter
    of its kind (:func:`pyrovi.arviz.adapters.adapter_for`).

    Parameters are those of :func:`to_arviz`; the draws are taken once, when the
    converter is built, so that every group describes the same draws.
    """

    def __init__(
        self,
        result: FitResult,
        num_samples: int,
        *,
        posterior_predictive: bool,
        log_likelihood: bool,
        prior: bool,
        coords: Mapping[str, Sequence] | None,
        dims: Mapping[str, Sequence[str]] | None,
        seed: int | None,
        diagnostics: Any = None,
    ):
        check_positive("num_samples", num_samples, integer=True)
        for flag, value in (
            ("posterior_predictive", posterior_predictive),
            ("log_likelihood", log_likelihood),
            ("prior", prior),
        ):
            if not isinstance(value, bool):
                raise TypeError(f"{flag} must be True or False, got {value!r}")
        for arg, value in (("coords", coords), ("dims", dims)):
            if value is not None and not isinstance(value, Mapping):
                raise TypeError(
                    f"{arg} must be a dict (coords: dimension -> values, dims: variable -> "
                    f"list of dimension names) or None, got {type(value).__name__}"
                )
        self.adapter = adapter_for(result)  # refuses anything but a pyrovi result
        self.result = result
        self.num_samples = num_samples
        self.seed = result.seed if seed is None else resolve_seed(seed)
        self.diagnostics = None
        if diagnostics is not None:
            self.diagnostics = _scalar_fields(diagnostics, "diagnostics")
        with result.scope(), torch.no_grad():
            self.info = inspect_model(result.model, result.args, result.kwargs)
        self.shapes = site_shapes(self.info.trace)
        self.latent = tuple(result.latent_sites)
        self.observed = self.info.observed
        if log_likelihood and not self.observed:
            raise PyroviError(
                f"log_likelihood=True, but model {model_name(result.model)!r} has no observed "
                "site, so there is no likelihood to export; pass log_likelihood=False (and "
                "posterior_predictive=False), or condition the model on data with obs=."
            )
        self.want_log_likelihood = log_likelihood
        self.want_predictive = posterior_predictive and bool(self.observed)
        self.want_prior = prior
        self.constants = self._constant_arguments()

        n, s = num_samples, self.seed
        vectorize = self.adapter.vectorize
        self.draws = self.adapter.posterior(n, s, self.shapes)
        self.predictive = (
            export_draws.posterior_predictive(
                result, self.draws.values, s + 1, self.observed, vectorize
            )
            if self.want_predictive
            else None
        )
        self.prior = (
            export_draws.prior_draws(result, n, s + 2, self.shapes, vectorize) if prior else None
        )
        self.layout = resolve_layout(self._shapes_of_vars(), self._default_dims(), dims, coords)

    # ------------------------------------------------------------------ layout
    def _constant_arguments(self) -> dict[str, np.ndarray]:
        """The model's tensor arguments by their parameter names, the observed data left
        out (they are ``observed_data``)."""
        try:
            bound = inspect.signature(self.result.model).bind(
                *self.result.args, **self.result.kwargs
            )
        except (TypeError, ValueError):  # no signature: name positionals by position
            bound = None
        if bound is not None:
            named = dict(bound.arguments)
            params = inspect.signature(self.result.model).parameters
            for key, param in params.items():  # flatten *args / **kwargs
                if param.kind is param.VAR_POSITIONAL and key in named:
                    values = named.pop(key)
                    named.update({f"{key}_{i}": v for i, v in enumerate(values)})
                elif param.kind is param.VAR_KEYWORD and key in named:
                    named.update(named.pop(key))
        else:
            named = {f"arg_{i}": v for i, v in enumerate(self.result.args)}
            named.update(self.result.kwargs)
        observed = [self.info.trace.nodes[k]["value"] for k in self.observed]
        out = {}
        for key, value in named.items():
            if not isinstance(value, torch.Tensor):
                continue
            if any(value is obs for obs in observed) or key in self.shapes:
                continue
            out[key] = _numpy(value)
        return out

    def _shapes_of_vars(self) -> dict[str, tuple]:
        shapes = {k: self.shapes[k].shape for k in self.latent}
        shapes.update({k: self.shapes[k].shape for k in self.observed})
        if self.prior is not None:
            shapes.update({k: self.shapes[k].shape for k in self.prior})
        shapes.update({k: v.shape for k, v in self.constants.items() if k not in shapes})
        return shapes

    def _default_dims(self) -> dict[str, tuple]:
        out = {}
        for k, s in self.shapes.items():
            out[k] = site_dims(k, s, self.info.site_plates.get(k, ()), self.info.plates)
        out.update({k: default_dims(k, v.shape) for k, v in self.constants.items()})
        return out

    # ------------------------------------------------------------------ attributes
    def attrs(self) -> dict[str, Any]:
        """Attributes shared by every group (encoded for netCDF)."""
        attrs = {
            **self.adapter.attrs(),
            "model": model_name(self.result.model),
            "num_samples": int(self.num_samples),
            "export_seed": int(self.seed),
            "pyrovi_version": __version__,
            "pyro_version": pyro.__version__,
            "torch_version": torch.__version__,
        }
        return encode_attrs(attrs)

    def _dataset(
        self,
        data: dict,
        *,
        sample: bool = True,
        attrs: dict | None = None,
        layout: tuple[dict, dict] | None = None,
    ):
        shapes = {k: v.shape[2:] if sample else v.shape for k, v in data.items()}
        dims, coords = layout if layout is not None else self.layout.for_vars(shapes)
        return make_dataset(
            data,
            coords=coords,
            dims=dims,
            sample=sample,
            attrs={**self.attrs(), **(attrs or {})},
            library=pyro,
        )

    # ------------------------------------------------------------------ groups
    def posterior_to_xarray(self):
        """Posterior draws of every latent site, ``(chain=1, draw, *site dims)``."""
        return self._dataset({k: _chain(v) for k, v in self.draws.values.items()})

    def sample_stats_to_xarray(self):
        """``lp``, ``log_q`` and ``log_weight = lp - log_q`` per draw."""
        d = self.draws
        data = {"lp": d.lp, "log_q": d.log_q, "log_weight": d.log_weight}
        return self._dataset({k: _chain(v) for k, v in data.items()})

    def log_likelihood_to_xarray(self):
        """Pointwise log-likelihood of every observed site, ``(chain, draw, *batch dims)``."""
        if not self.want_log_likelihood:
            return None
        return self._dataset({k: _chain(v) for k, v in self.draws.log_lik.items()})

    def posterior_predictive_to_xarray(self):
        """Observed sites drawn anew at each posterior draw."""
        if self.predictive is None:
            return None
        return self._dataset({k: _chain(v) for k, v in self.predictive.items()})

    def prior_to_xarray(self):
        """Prior draws of the latent sites (at the fitted ``pyro.param`` values)."""
        if self.prior is None:
            return None
        return self._dataset({k: _chain(self.prior[k]) for k in self.latent})

    def prior_predictive_to_xarray(self):
        """Observed sites drawn from the prior predictive."""
        if self.prior is None or not self.observed:
            return None
        return self._dataset({k: _chain(self.prior[k]) for k in self.observed})

    def observed_data_to_xarray(self):
        """The data the model was conditioned on."""
        if not self.observed:
            return None
        nodes = self.info.trace.nodes
        data = {k: _numpy(torch.as_tensor(nodes[k]["value"])) for k in self.observed}
        return self._dataset(data, sample=False)

    def constant_data_to_xarray(self):
        """The model's tensor arguments other than the observed data."""
        if not self.constants:
            return None
        return self._dataset(dict(self.constants), sample=False)

    def trace_to_xarray(self):
        """The optimization trace: ``vi_trace`` (ELBO per step, dim ``step``) or ``em_trace``
        (log evidence per iteration, dim ``iteration``), with the final estimates and any
        diagnostics as attributes."""
        a = self.adapter
        var, dim, values = a.trace_var, a.trace_dim, a.trace()
        extra = a.trace_attrs()
        if self.diagnostics is not None:
            extra.update({f"diagnostics_{k}": v for k, v in self.diagnostics.items()})
        layout = ({var: [dim]}, {dim: np.arange(len(values))})
        return self._dataset(
            {var: values}, sample=False, attrs=encode_attrs(extra), layout=layout
        )

    @property
    def trace_group(self) -> str:
        """``"em_trace"`` or ``"vi_trace"``."""
        return self.adapter.trace_group

    def to_inference_data(self):
        """All groups, those that are ``None`` left out, as an ``arviz.InferenceData``
        (ArviZ 0.2x) or an ``xarray.DataTree`` (ArviZ 1.x)."""
        groups = {
            "posterior": self.posterior_to_xarray(),
            "sample_stats": self.sample_stats_to_xarray(),
            "log_likelihood": self.log_likelihood_to_xarray(),
            "posterior_predictive": self.posterior_predictive_to_xarray(),
            "prior": self.prior_to_xarray(),
            "prior_predictive": self.prior_predictive_to_xarray(),
            "observed_data": self.observed_data_to_xarray(),
            "constant_data": self.constant_data_to_xarray(),
            self.trace_group: self.trace_to_xarray(),
        }
        return make_container({k: v for k, v in groups.items() if v is not None})


def to_arviz(
    result: FitResult,
    num_samples: int = 1000,
    *,
    posterior_predictive: bool = True,
    log_likelihood: bool = True,
    prior: bool = False,
    coords: Mapping[str, Sequence] | None = None,
    dims: Mapping[str, Sequence[str]] | None = None,
    seed: int | None = None,
    diagnostics: Any = None,
):
    r"""Export a pyrovi fit to an ArviZ ``InferenceData``.

    Parameters
    ----------
    result : VIResult or EMResult
        The fit.
    num_samples : int, default 1000
        Draws from the fitted posterior (the guide, or the exact EM posterior), stored as
        one chain of ``num_samples`` draws.
    posterior_predictive : bool, default True
        Add ``posterior_predictive``: the observed sites drawn anew at each posterior draw.
    log_likelihood : bool, default True
        Add ``log_likelihood``: :math:`\log p(x_i \mid z^{(s)})` for every observation
        :math:`x_i` of every observed site and every draw :math:`z^{(s)}`, as
        ``arviz.loo`` and ``arviz.compare`` need.
    prior : bool, default False
        Add ``prior`` and ``prior_predictive`` (``num_samples`` draws from the model
        without its observations, at the fitted ``pyro.param`` values).
    coords : dict of str to array_like, optional
        Dimension name -> coordinate values, overriding the default ``0..size-1``.
    dims : dict of str to list of str, optional
        Variable -> names of its dimensions besides ``chain`` and ``draw``, overriding the
        defaults (plate names for plate dimensions, ``{site}_dim_{i}`` for the others).
    seed : int, optional
        Seed of the draws; the fit's own seed when None, so that exporting twice gives the
        same draws.  Posterior, posterior predictive and prior use ``seed``, ``seed + 1``
        and ``seed + 2``.
    diagnostics : dataclass or mapping, optional
        A diagnosis of ``result`` (for instance pyrovi's ``Diagnostics``): its scalar fields
        are stored as attributes ``diagnostics_<field>`` of the optimization group.

    Returns
    -------
    arviz.InferenceData or xarray.DataTree
        An ``InferenceData`` with ArviZ 0.2x, a ``DataTree`` with ArviZ 1.x
        (``arviz_base``; same groups, variables and attributes).  Groups ``posterior``;
        ``sample_stats`` with ``lp`` (:math:`\log p(x, z)`),
        ``log_q`` (:math:`\log q(z)`) and ``log_weight`` (``lp - log_q``) per draw;
        ``log_likelihood``; ``posterior_predictive``; ``prior`` and ``prior_predictive``
        when asked; ``observed_data``; ``constant_data`` (the model's tensor arguments by
        parameter name); and ``vi_trace`` (variable ``elbo``, dim ``step``) or ``em_trace``
        (variable ``log_evidence``, dim ``iteration``).  Every group carries the
        attributes ``inference_method``, ``guide_family``, ``num_steps``, ``seed``,
        ``converged``, ``pyrovi_version``, ``pyro_version`` and ``torch_version``; values
        that netCDF cannot store (bools, None, lists) are JSON strings that
        :func:`pyrovi.arviz.decode_attrs` reads back.

    Raises
    ------
    ValueError
        ``num_samples`` below 1; ``log_likelihood=True`` for a model without observed
        sites; ``coords`` or ``dims`` that do not fit the shapes (the message names the
        variable and both shapes).
    TypeError
        Arguments of the wrong type.

    Notes
    -----
    For a VI fit whose discrete latents were enumerated, ``lp`` is
    :math:`\log p(x, z_c)` with the discrete latents summed out and ``log_q`` the guide's
    density of the continuous latents; the discrete latents in ``posterior`` are drawn from
    their exact conditional, and ``log_likelihood`` is conditional on them.  For an EM fit
    ``log_q`` is the exact :math:`\log p(z \mid x, \hat\theta)`, so ``log_weight`` equals
    the log evidence at every draw.
    """
    converter = ResultConverter(
        result,
        num_samples,
        posterior_predictive=posterior_predictive,
        log_likelihood=log_likelihood,
        prior=prior,
        coords=coords,
        dims=dims,
        seed=seed,
        diagnostics=diagnostics,
    )
    return converter.to_inference_data()
