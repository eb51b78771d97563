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
import pyro.poutine as poutine
import torch

import pyrovi.arviz.draws as export_draws
from pyrovi._model import ModelInfo, inspect_model, model_name
from pyrovi._plates import SiteShape, is_traced_sample, site_shapes
from pyrovi._result import FitResult
from pyrovi._runtime import check_positive, resolve_seed, warn
from pyrovi._version import __version__
from pyrovi.arviz.adapters import adapter_for
from pyrovi.arviz.attrs import bounds_attrs, plain_attrs
from pyrovi.arviz.backend import make_container, make_dataset
from pyrovi.arviz.dims import default_dims, resolve_layout, site_dims
from pyrovi.errors import ModelWarning, PyroviError

__all__ = ["to_arviz", "ResultConverter", "NUM_CHAINS", "LOG_LIKELIHOOD_KINDS"]

#: Default number of chains the i.i.d. draws are split into (so that ``r_hat`` is defined).
NUM_CHAINS = 4

#: The values of ``to_arviz(log_likelihood=...)`` besides True / False.
LOG_LIKELIHOOD_KINDS = ("marginal", "conditional")


def _numpy(value: torch.Tensor) -> np.ndarray:
    return value.detach().cpu().numpy()


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


#: Names ArviZ reserves for the sample dimensions: a site or plate of that name is exported
#: as ``{name}_`` (with a :class:`~pyrovi.errors.ModelWarning`).
RESERVED = ("chain", "draw")


def _export_name(name: str) -> str:
    while name in RESERVED:
        name = f"{name}_"
    return name


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
        num_chains: int | None = None,
        posterior_predictive: bool,
        log_likelihood: bool | str,
        prior: bool,
        predictions: Any = None,
        coords: Mapping[str, Sequence] | None,
        dims: Mapping[str, Sequence[str]] | None,
        seed: int | None,
        diagnostics: Any = None,
    ):
        check_positive("num_samples", num_samples, integer=True)
        if num_chains is None:
            num_chains = NUM_CHAINS if num_samples % NUM_CHAINS == 0 else 1
        check_positive("num_chains", num_chains, integer=True)
        for flag, value in (
            ("posterior_predictive", posterior_predictive),
            ("prior", prior),
        ):
            if not isinstance(value, bool):
                raise TypeError(f"{flag} must be True or False, got {value!r}")
        if not isinstance(log_likelihood, bool) and log_likelihood not in LOG_LIKELIHOOD_KINDS:
            raise TypeError(
                "log_likelihood must be True, False, 'marginal' or 'conditional', got "
                f"{log_likelihood!r}"
            )
        for arg, value in (("coords", coords), ("dims", dims)):
            if value is not None and not isinstance(value, Mapping):
                raise TypeError(
                    f"{arg} must be a dict (coords: dimension -> values, dims: variable -> "
                    f"list of dimension names) or None, got {type(value).__name__}"
                )
        self.adapter = adapter_for(result)  # refuses anything but a pyrovi result
        if num_samples % num_chains:
            raise ValueError(
                f"num_samples={num_samples} draws do not split into num_chains={num_chains} "
                f"chains of equal length; pass a multiple of {num_chains} (e.g. "
                f"{num_chains * max(1, round(num_samples / num_chains))}) or another "
                "num_chains (1 keeps every draw in one chain)."
            )
        self.result = result
        self.num_samples = num_samples
        self.num_chains = num_chains
        self.seed = result.seed if seed is None else resolve_seed(seed)
        self.diagnostics = None
        self.bounds = {}
        self.site_bounds = None
        if diagnostics is not None:
            self.diagnostics = _scalar_fields(diagnostics, "diagnostics")
            self.bounds = bounds_attrs(diagnostics)
            eb = (None if isinstance(diagnostics, Mapping)
                  else getattr(diagnostics, "error_bounds", None))
            self.site_bounds = eb
        self.prediction_args = _prediction_arguments(predictions)
        # the inspection's draws are thrown away: the caller's random state is left alone
        with torch.random.fork_rng(), result.scope(), torch.no_grad():
            self.info = inspect_model(result.model, result.args, result.kwargs)
        self.shapes = site_shapes(self.info.trace)
        self.latent = tuple(result.latent_sites)
        self.observed = self.info.observed
        self.deterministic = tuple(
            k for k, site in self.info.trace.nodes.items()
            if is_traced_sample(site) and site["infer"].get("_deterministic", False)
        )
        if log_likelihood is not False and not self.observed:
            raise PyroviError(
                f"log_likelihood=True, but model {model_name(result.model)!r} has no observed "
                "site, so there is no likelihood to export; pass log_likelihood=False (and "
                "posterior_predictive=False), or condition the model on data with obs=."
            )
        self.summed = self.adapter.summed_out(self.info)
        if log_likelihood is True:
            log_likelihood = "marginal" if self.summed else "conditional"
        self.log_likelihood_kind = log_likelihood or None
        self.want_predictive = posterior_predictive and bool(self.observed)
        self.subsample = self._plan_subsample()
        self.want_prior = prior
        self.constants = self._constant_arguments(result.args, result.kwargs, self.info)
        self.params = {k: _numpy(v) for k, v in self.adapter.fitted_params(self.info).items()}
        self.names = self._export_names()
        self.sequential = _sequential_groups(self.info.trace, set(self.shapes))

        n, s = num_samples, self.seed
        vectorize = self.adapter.vectorize
        self.draws = self.adapter.posterior(n, s, self.shapes)
        values = self.draws.values
        self.det_values = export_draws.deterministic_draws(
            result, values, self.shapes, self.deterministic,
            vectorize and not self.summed,
        )
        self.log_lik = None
        runs = self._data_runs()
        if self.log_likelihood_kind == "conditional" and runs is None:
            self.log_lik = self.draws.log_lik
        elif self.log_likelihood_kind == "conditional":
            self.log_lik = self._assemble([
                export_draws.log_density(
                    result, values, self.shapes, vectorize and not self.summed, model=m
                )[1] for m, _ in runs
            ], runs)
        elif self.log_likelihood_kind == "marginal":
            continuous = {k: v for k, v in values.items() if k not in self.summed}
            self.log_lik = self._assemble([
                export_draws.marginal_log_likelihood(
                    result, continuous, n, self.observed, self.shapes, model=m
                ) for m, _ in (runs or [(None, None)])
            ], runs)
        self.predictive = None
        if self.want_predictive:
            outs = [
                export_draws.posterior_predictive(
                    result, values, s + 1 + 7919 * c, None, vectorize and not self.summed,
                    model=m,
                ) for c, (m, _) in enumerate(runs or [(None, None)])
            ]
            out = self._assemble(outs, runs)
            self.predictive = {k: out[k] for k in self.observed}
            # deterministic sites that change with the replicated data depend on it
            for k in self.deterministic:
                if k in out and k in self.det_values and not torch.equal(
                    out[k].to(self.det_values[k].dtype), self.det_values[k]
                ):
                    self.predictive[k] = out[k]
        self.prior = (
            export_draws.prior_draws(result, n, s + 2, self.shapes, vectorize) if prior else None
        )
        self.predictions = self.predictions_info = None
        if self.prediction_args is not None:
            self._make_predictions(n, s + 3, vectorize)
        self.observed_values = self._observed_values()
        self.layout = resolve_layout(
            self._shapes_of_vars(), self._default_dims(), self._site_keys(dims), coords
        )

    # ------------------------------------------------------------------ subsampling
    def _plan_subsample(self):
        """For a model that subsamples a plate: ``(plate, chunks)``, the index chunks of
        the plate's subsample size that together cover the full data (the last one
        overlaps its predecessor), so that ``log_likelihood``, ``posterior_predictive``
        and ``observed_data`` cover every observation.  None for a model that does not
        subsample.

        Raises
        ------
        PyroviError
            When the full data cannot be covered: several subsampled plates, or a latent
            site local to the subsampled plate (its draws cover one subsample only).
        """
        info = self.info
        subsampled = sorted(k for k, (full, sub, _) in info.plates.items() if sub != full)
        if not subsampled:
            return None
        wanted = self.log_likelihood_kind is not None or self.want_predictive
        local = [k for k in self.latent if set(info.site_plates.get(k, ())) & set(subsampled)]
        why = None
        if len(subsampled) > 1:
            why = f"it subsamples {len(subsampled)} plates {subsampled} (pyrovi covers one)"
        elif local:
            why = (
                f"latent site(s) {local} live in the subsampled plate {subsampled[0]!r}, so "
                "each posterior draw covers one subsample only"
            )
        if why is not None:
            if wanted:
                raise PyroviError(
                    f"model {model_name(self.result.model)!r} subsamples its data and the "
                    f"export cannot compute the log-likelihood and predictive draws of the "
                    f"full data: {why}. Pass log_likelihood=False and "
                    "posterior_predictive=False (observed_data then holds one subsample)."
                )
            return None
        plate = subsampled[0]
        full, size, _ = info.plates[plate]
        chunks = []
        for start in range(0, full, size):
            first = min(start, full - size)
            chunks.append((torch.arange(first, first + size), start - first))
        return plate, chunks

    def _data_runs(self):
        """``[(model, keep_from)]``: the model conditioned on each index chunk of the
        subsampled plate, or None for a model that does not subsample."""
        if self.subsample is None:
            return None
        plate, chunks = self.subsample
        return [
            (poutine.condition(self.result.model, data={plate: idx}), keep)
            for idx, keep in chunks
        ]

    def _plate_axis(self, site: str):
        """The axis of ``site``'s value (one draw) that the subsampled plate owns."""
        plate, _ = self.subsample
        if plate not in self.info.site_plates.get(site, ()):
            return None
        _, _, dim = self.info.plates[plate]
        return len(self.shapes[site].batch_shape) + dim

    def _assemble(self, parts: list, runs, lead: int = 1) -> dict:
        """Join per-chunk values along the subsampled plate (``lead`` leading draw axes)."""
        if runs is None:
            return parts[0]
        out = {}
        for k in parts[0]:
            axis = self._plate_axis(k) if k in self.shapes else None
            if axis is None:
                out[k] = parts[0][k]
                continue
            pieces = [
                p[k].narrow(lead + axis, keep, p[k].shape[lead + axis] - keep)
                for p, (_, keep) in zip(parts, runs, strict=True)
            ]
            out[k] = torch.cat(pieces, dim=lead + axis)
        return out

    def _observed_values(self) -> dict:
        """The observed data, over the full plate for a subsampled model."""
        nodes = self.info.trace.nodes
        runs = self._data_runs()
        if runs is None:
            return {k: torch.as_tensor(nodes[k]["value"]) for k in self.observed}
        parts = []
        with self.result.scope(), torch.no_grad():
            for model, _ in runs:
                trace = poutine.trace(model).get_trace(*self.result.args, **self.result.kwargs)
                parts.append({k: torch.as_tensor(trace.nodes[k]["value"]) for k in self.observed})
        out = self._assemble(parts, runs, lead=0)
        # the export's shapes and plates describe the full data from here on
        plate, _ = self.subsample
        full, _, dim = self.info.plates[plate]
        for k, v in out.items():
            self.shapes[k] = SiteShape(tuple(v.shape), self.shapes[k].batch_ndim)
        self.info.plates[plate] = (full, full, dim)
        return out

    def _stack_sequential(self, data: dict, dims: dict, coords: dict, axis: int):
        """Sites of a sequential plate (``obs_0, obs_1, ...`` from ``for i in
        pyro.plate("steps", T)``) as one variable ``obs`` along a dimension named after
        the plate, so that ``arviz.loo`` sees one variable; groups whose members are not
        all present with one shape are left as they are."""
        if not self.sequential:
            return data, dims, coords
        data, dims, coords = dict(data), dict(dims), dict(coords)
        for base, (plate, members) in self.sequential.items():
            if base in data or not all(m in data for m in members):
                continue
            shapes = {tuple(np.shape(data[m])) for m in members}
            names = {tuple(dims.get(m, ())) for m in members}
            if len(shapes) != 1 or len(names) != 1:
                continue
            dim = _export_name(plate)
            if dim in next(iter(names)):
                continue
            data[base] = np.stack([np.asarray(data.pop(m)) for m in members], axis=axis)
            member_dims = list(dims.pop(members[0]))
            for m in members[1:]:
                dims.pop(m, None)
            dims[base] = member_dims[: max(0, axis - 2)] + [dim] + member_dims[max(0, axis - 2):]
            coords[dim] = np.arange(len(members))
        return data, dims, coords

    # ------------------------------------------------------------------ names
    def _export_names(self) -> dict[str, str]:
        """Site -> exported variable name (``chain`` / ``draw`` renamed, with a warning)."""
        names = {}
        sites = list(self.shapes) + list(self.params) + list(self.constants)
        for k in sites:
            new = _export_name(k)
            if new != k:
                if k not in names:
                    warn(
                        f"site {k!r} has a name ArviZ reserves for its sample dimensions; it "
                        f"is exported as {new!r}. Rename the site in the model to avoid this.",
                        ModelWarning,
                    )
            names[k] = new
        return names

    def _site_keys(self, dims):
        """The user's ``dims`` keyed by site name (exported names accepted)."""
        if dims is None:
            return None
        back = {v: k for k, v in self.names.items()}
        return {back.get(k, k): v for k, v in dims.items()}

    # ------------------------------------------------------------------ layout
    def _constant_arguments(self, args, kwargs, info: ModelInfo) -> dict[str, np.ndarray]:
        """The model's tensor arguments by their parameter names, the observed data left
        out (they are ``observed_data``)."""
        try:
            bound = inspect.signature(self.result.model).bind(*args, **kwargs)
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
            named = {f"arg_{i}": v for i, v in enumerate(args)}
            named.update(kwargs)
        observed = [info.trace.nodes[k]["value"] for k in info.observed]
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
        shapes.update({k: self.shapes[k].shape for k in self.deterministic})
        if self.prior is not None:
            shapes.update({k: self.shapes[k].shape for k in self.prior})
        shapes.update({k: v.shape for k, v in self.constants.items() if k not in shapes})
        shapes.update({k: v.shape for k, v in self.params.items() if k not in shapes})
        return shapes

    def _default_dims(self) -> dict[str, tuple]:
        out = {}
        for k, s in self.shapes.items():
            names = site_dims(k, s, self.info.site_plates.get(k, ()), self.info.plates)
            if k in self.deterministic:
                names = _deterministic_dims(k, s, self.info.trace.nodes[k], self.info.plates)
            out[k] = tuple(_export_name(d) for d in names)
        out.update({k: default_dims(k, v.shape) for k, v in self.constants.items()})
        out.update({k: default_dims(k, v.shape) for k, v in self.params.items() if k not in out})
        return out

    # ------------------------------------------------------------------ predictions
    def _make_predictions(self, n: int, seed: int, vectorize: bool) -> None:
        """The ``predictions`` group: the model at new arguments, run at each posterior
        draw: its observed and deterministic sites, and the latents it draws afresh
        (latents of plates whose size changed, discrete latents the fit sums out)."""
        args, kwargs = self.prediction_args
        r = self.result
        with r.scope(), torch.no_grad():
            info = inspect_model(r.model, args, kwargs)
        shapes = site_shapes(info.trace)
        # latents of the new data's own plates (another size than in the fit: new
        # groups, new data points) are drawn afresh given the global draws
        values = {
            k: v for k, v in self.draws.values.items()
            if k not in self.summed and k in shapes and tuple(v.shape[1:]) == shapes[k].shape
        }
        out = export_draws.posterior_predictive(
            r, values, seed, None, vectorize and not self.summed, args=args, kwargs=kwargs
        )
        keep = [
            k for k in out
            if k in self.observed or k in self.deterministic
            or (k in info.latent and k not in values) or k in info.observed
        ]
        self.predictions = {k: out[k] for k in keep}
        self.predictions_info = (info, shapes)
        constants = self._constant_arguments(args, kwargs, info)
        self.prediction_constants = {
            k: v for k, v in constants.items() if k not in self.predictions
        }

    def _prediction_layout(self, data: dict, sample: bool):
        info, shapes = self.predictions_info
        dims, coords = {}, {}
        for k, v in data.items():
            shape = tuple(v.shape[2:] if sample else v.shape)
            if k in shapes and tuple(shapes[k].shape) == shape:
                if k in self.deterministic:
                    names = _deterministic_dims(k, shapes[k], info.trace.nodes[k], info.plates)
                else:
                    names = site_dims(k, shapes[k], info.site_plates.get(k, ()), info.plates)
            else:
                names = default_dims(k, shape)
            names = tuple(_export_name(d) for d in names)
            # the fit's own names where a dimension keeps its size (coords included)
            fit_names = self.layout.dims.get(k)
            if fit_names is not None and len(fit_names) == len(shape):
                names = tuple(
                    f if f == d or f not in self.layout.coords
                    or len(self.layout.coords[f]) == size else d
                    for f, d, size in zip(fit_names, names, shape, strict=True)
                )
            dims[k] = list(names)
            for d, size in zip(names, shape, strict=True):
                c = self.layout.coords.get(d)
                coords[d] = c if c is not None and len(c) == size else np.arange(size)
        return dims, coords

    # ------------------------------------------------------------------ attributes
    def attrs(self) -> dict[str, Any]:
        """Attributes shared by every group (plain Python values; ``pyrovi.save_netcdf``
        encodes them for netCDF)."""
        attrs = {
            **self.adapter.attrs(),
            "model": model_name(self.result.model),
            "num_samples": int(self.num_samples),
            "num_chains": int(self.num_chains),
            "export_seed": int(self.seed),
            "pyrovi_version": __version__,
            "pyro_version": pyro.__version__,
            "torch_version": str(torch.__version__),
        }
        return plain_attrs(attrs)

    def _chains(self, value) -> np.ndarray:
        """``(n, ...)`` draws -> ``(num_chains, n / num_chains, ...)``: i.i.d. draws split
        into chains in order."""
        value = _numpy(value) if isinstance(value, torch.Tensor) else np.asarray(value)
        return value.reshape((self.num_chains, -1) + value.shape[1:])

    def _per_chain(self, value) -> np.ndarray:
        """A value of the whole fit repeated for each chain: ``(num_chains, ...)``."""
        value = np.asarray(value)
        return np.broadcast_to(value, (self.num_chains,) + value.shape).copy()

    def _dataset(
        self,
        data: dict,
        *,
        sample: bool = True,
        attrs: dict | None = None,
        layout: tuple[dict, dict] | None = None,
        chain_only: bool = False,
    ):
        if layout is None:
            if chain_only:
                shapes = {k: v.shape[1:] for k, v in data.items()}
            else:
                shapes = {k: v.shape[2:] if sample else v.shape for k, v in data.items()}
            dims, coords = self.layout.for_vars(shapes)
        else:
            dims, coords = layout
        dims = {k: list(v) for k, v in dims.items()}
        coords = dict(coords)
        if chain_only:
            dims = {k: ["chain", *v] for k, v in dims.items()}
            coords["chain"] = np.arange(self.num_chains)
            sample = False
        data, dims, coords = self._stack_sequential(data, dims, coords, 2 if sample else 0)
        rename = self.names
        data = {rename.get(k, k): v for k, v in data.items()}
        dims = {rename.get(k, k): v for k, v in dims.items()}
        return make_dataset(
            data,
            coords=coords,
            dims=dims,
            sample=sample,
            attrs={**self.attrs(), **plain_attrs(attrs or {})},
            library=pyro,
        )

    # ------------------------------------------------------------------ groups
    def posterior_to_xarray(self):
        """Posterior draws of every latent site and every ``pyro.deterministic`` site,
        ``(chain, draw, *site dims)``."""
        data = {k: self._chains(v) for k, v in self.draws.values.items()}
        data.update({k: self._chains(v) for k, v in self.det_values.items()})
        return self._dataset(data)

    def sample_stats_to_xarray(self):
        """``lp``, ``log_q`` and ``log_weight = lp - log_q`` per draw."""
        d = self.draws
        data = {"lp": d.lp, "log_q": d.log_q, "log_weight": d.log_weight}
        return self._dataset({k: self._chains(v) for k, v in data.items()})

    def log_likelihood_to_xarray(self):
        """Pointwise log-likelihood of every observed site, ``(chain, draw, *batch dims)``;
        marginal (the discrete latents the fit sums out summed out per observation) or
        conditional on the drawn latents, as the group's attribute ``log_likelihood``
        says."""
        if self.log_lik is None:
            return None
        attrs = {"log_likelihood": self.log_likelihood_kind,
                 "summed_out": list(self.summed) if self.log_likelihood_kind == "marginal"
                 else []}
        return self._dataset({k: self._chains(v) for k, v in self.log_lik.items()},
                             attrs=attrs)

    def posterior_predictive_to_xarray(self):
        """Observed sites drawn anew at each posterior draw (and the deterministic sites
        that depend on them)."""
        if self.predictive is None:
            return None
        return self._dataset({k: self._chains(v) for k, v in self.predictive.items()})

    def prior_to_xarray(self):
        """Prior draws of the latent and deterministic sites (at the fitted ``pyro.param``
        values)."""
        if self.prior is None:
            return None
        keys = [k for k in (*self.latent, *self.deterministic) if k in self.prior]
        return self._dataset({k: self._chains(self.prior[k]) for k in keys})

    def prior_predictive_to_xarray(self):
        """Observed sites drawn from the prior predictive."""
        if self.prior is None or not self.observed:
            return None
        return self._dataset({k: self._chains(self.prior[k]) for k in self.observed})

    def observed_data_to_xarray(self):
        """The data the model was conditioned on."""
        if not self.observed:
            return None
        return self._dataset({k: _numpy(v) for k, v in self.observed_values.items()},
                             sample=False)

    def constant_data_to_xarray(self):
        """The model's tensor arguments other than the observed data."""
        if not self.constants:
            return None
        return self._dataset(dict(self.constants), sample=False)

    def predictions_to_xarray(self):
        """The model at the ``predictions`` arguments, one run per posterior draw."""
        if self.predictions is None:
            return None
        data = {k: self._chains(v) for k, v in self.predictions.items()}
        return self._dataset(data, layout=self._prediction_layout(data, True))

    def predictions_constant_data_to_xarray(self):
        """The tensor arguments of the ``predictions`` run."""
        if self.predictions is None or not self.prediction_constants:
            return None
        data = dict(self.prediction_constants)
        return self._dataset(data, sample=False, layout=self._prediction_layout(data, False))

    def fitted_params_to_xarray(self):
        """The model's point-estimated ``pyro.param`` values, ``(chain, *param dims)``:
        the same value for every chain (a chain records the fit it came from, so that
        ``arviz.concat`` of two exports along ``chain`` keeps each fit's values)."""
        if not self.params:
            return None
        data = {k: self._per_chain(v) for k, v in self.params.items()}
        return self._dataset(data, chain_only=True)

    def trace_to_xarray(self):
        """The optimization trace: ``vi_trace`` (ELBO per step, dims ``chain, step``) or
        ``em_trace`` (log evidence per iteration, dims ``chain, iteration``), the same
        for every chain, with the final estimates and any diagnostics as attributes."""
        a = self.adapter
        var, dim, values = a.trace_var, a.trace_dim, a.trace()
        extra = a.trace_attrs()
        if self.diagnostics is not None:
            extra.update({f"diagnostics_{k}": v for k, v in self.diagnostics.items()})
            extra.update(self.bounds)
        layout = ({var: ["chain", dim]},
                  {"chain": np.arange(self.num_chains), dim: np.arange(len(values))})
        return self._dataset(
            {var: self._per_chain(values)}, sample=False, attrs=extra, layout=layout
        )

    #: Coordinates of the ``bound`` dimension of the ``error_bounds`` group.
    BOUND_FIELDS = ("q_mean", "q_sd", "mean_error", "sd_error", "w2")

    def error_bounds_to_xarray(self):
        """Per-site error bounds of a diagnosis (``diagnostics=`` with error bounds): one
        variable per latent site, dims ``bound, *site dims``, ``bound`` =
        ``q_mean, q_sd, mean_error, sd_error, w2`` (constrained space); the summary and
        whether they are reliable in the attributes.  Sites of a sequential plate stay one
        variable per member here."""
        eb = self.site_bounds
        if eb is None or not eb.sites:
            return None
        data = {k: np.stack([_numpy(getattr(site, f)) for f in self.BOUND_FIELDS])
                for k, site in eb.sites.items()}
        dims, coords = self.layout.for_vars({k: v.shape[1:] for k, v in data.items()})
        dims = {k: ["bound", *v] for k, v in dims.items()}
        coords = {**coords, "bound": list(self.BOUND_FIELDS)}
        rename = self.names
        attrs = {**self.attrs(), **self.bounds.get("diagnostics_error_bounds", {})}
        return make_dataset(
            {rename.get(k, k): v for k, v in data.items()},
            coords=coords,
            dims={rename.get(k, k): v for k, v in dims.items()},
            sample=False,
            attrs=attrs,
            library=pyro,
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
            "predictions": self.predictions_to_xarray(),
            "prior": self.prior_to_xarray(),
            "prior_predictive": self.prior_predictive_to_xarray(),
            "observed_data": self.observed_data_to_xarray(),
            "constant_data": self.constant_data_to_xarray(),
            "predictions_constant_data": self.predictions_constant_data_to_xarray(),
            "fitted_params": self.fitted_params_to_xarray(),
            self.trace_group: self.trace_to_xarray(),
            "error_bounds": self.error_bounds_to_xarray(),
        }
        return make_container({k: v for k, v in groups.items() if v is not None})


def _sequential_groups(trace, sites: set) -> dict[str, tuple[str, list[str]]]:
    """Sites made by a sequential plate, grouped: ``base -> (plate, [site per index])``.

    A site belongs to a group when it sits in a sequential (non-vectorized) plate and its
    name is ``{base}{sep}{i}`` (``sep`` one of ``_``, ``-``, ``.`` or nothing, ``i`` an
    integer); a group needs at least two members whose integers run without gap, and a
    base that is not itself a site.  Members are ordered by their integer.
    """
    import re

    found: dict = {}
    for name, site in trace.nodes.items():
        if site["type"] != "sample" or name not in sites:
            continue
        frames = [f for f in site["cond_indep_stack"] if not f.vectorized]
        if not frames:
            continue
        match = re.fullmatch(r"(.+?)[_\-.]?(\d+)", name)
        if match is None:
            continue
        key = (match.group(1), frames[-1].name)  # innermost last in cond_indep_stack
        found.setdefault(key, {})[int(match.group(2))] = name
    out = {}
    for (base, plate), members in found.items():
        index = sorted(members)
        if len(index) < 2 or base in sites or base in out:
            continue
        if index != list(range(index[0], index[0] + len(index))):
            continue
        out[base] = (plate, [members[i] for i in index])
    return out


def _deterministic_dims(name, shape, site, plates) -> tuple[str, ...]:
    """Dimension names of a deterministic site: its plates own its leading batch dims."""
    site_plates = tuple(
        f.name for f in sorted(site["cond_indep_stack"], key=lambda f: f.dim) if f.vectorized
    )
    return site_dims(name, shape, site_plates, plates)


def _prediction_arguments(predictions) -> tuple[tuple, dict] | None:
    """``predictions`` as ``(args, kwargs)``: a tuple ``(args, kwargs)``, a dict of keyword
    arguments, or None."""
    if predictions is None:
        return None
    if isinstance(predictions, Mapping):
        return (), dict(predictions)
    if (
        isinstance(predictions, tuple) and len(predictions) == 2
        and isinstance(predictions[0], (tuple, list)) and isinstance(predictions[1], Mapping)
    ):
        return tuple(predictions[0]), dict(predictions[1])
    raise TypeError(
        "predictions must be (args, kwargs) (a tuple of the model's positional arguments "
        "and a dict of its keyword arguments, e.g. ((X_new,), {'y': None})), a dict of "
        f"keyword arguments, or None; got {type(predictions).__name__}"
    )


def to_arviz(
    result: FitResult,
    num_samples: int = 1000,
    *,
    num_chains: int | None = None,
    posterior_predictive: bool = True,
    log_likelihood: bool | str = True,
    prior: bool = False,
    predictions: Any = None,
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
        Draws from the fitted posterior (the guide, or the exact EM posterior) in all.
    num_chains : int, optional
        The draws are independent; they are stored as ``num_chains`` chains of
        ``num_samples / num_chains`` draws each (``num_samples`` must be a multiple), so
        that ArviZ's ``r_hat`` is defined (about 1 for independent draws).  Default: 4
        when ``num_samples`` is a multiple of 4 (the default 1000 is), else 1.
    posterior_predictive : bool, default True
        Add ``posterior_predictive``: the observed sites drawn anew at each posterior draw
        (and the deterministic sites that depend on them).
    log_likelihood : bool or {"marginal", "conditional"}, default True
        Add ``log_likelihood``: :math:`\log p(x_i \mid z^{(s)})` for every observation
        :math:`x_i` of every observed site and every draw :math:`z^{(s)}`, as
        ``arviz.loo`` and ``arviz.compare`` need.  For a fit that sums discrete latents
        out (VI with enumerated sites, EM on a mixture or HMM), True means
        ``"marginal"``: those latents summed out per observation, e.g.
        :math:`\log \sum_k \pi_k\, N(x_i \mid \mu_k, \Sigma_k)`;
        ``"conditional"`` conditions on their drawn values instead.
    prior : bool, default False
        Add ``prior`` and ``prior_predictive`` (``num_samples`` draws from the model
        without its observations, at the fitted ``pyro.param`` values).
    predictions : (args, kwargs) or dict, optional
        Model arguments for out-of-sample predictions, e.g. ``((X_new,), {"y": None})``:
        adds ``predictions`` (the observed and deterministic sites of the model run at
        these arguments at each posterior draw) and ``predictions_constant_data`` (their
        tensor arguments), as ``arviz.from_pyro(predictions=...)`` does.
    coords : dict of str to array_like, optional
        Dimension name -> coordinate values, overriding the default ``0..size-1``.
    dims : dict of str to list of str, optional
        Variable -> names of its dimensions besides ``chain`` and ``draw``, overriding the
        defaults (plate names for plate dimensions, ``{site}_dim_{i}`` for the others).
    seed : int, optional
        Seed of the draws; the fit's own seed when None, so that exporting twice gives the
        same draws.  Posterior, posterior predictive, prior and predictions use ``seed``,
        ``seed + 1``, ``seed + 2`` and ``seed + 3``.
    diagnostics : dataclass or mapping, optional
        A diagnosis of ``result`` (for instance pyrovi's ``Diagnostics``): its scalar fields
        are stored as attributes ``diagnostics_<field>`` of the optimization group, and
        so are, from a ``Diagnostics``, its bracket, CUBO and error-bound summary
        (``diagnostics_bracket``, ``diagnostics_cubo``, ``diagnostics_error_bounds``:
        dicts that say which numbers are bounds and which estimates), its verdict
        (``diagnostics_verdict``, ``diagnostics_trust``); its per-site error bounds become
        the group ``error_bounds`` (one variable per latent site, dims
        ``bound, *site dims``).

    Returns
    -------
    arviz.InferenceData or xarray.DataTree
        An ``InferenceData`` with ArviZ 0.2x, a ``DataTree`` with ArviZ 1.x
        (``arviz_base``; same groups, variables and attributes).  Groups ``posterior``
        (latent and ``pyro.deterministic`` sites); ``sample_stats`` with ``lp``
        (:math:`\log p(x, z)`), ``log_q`` (:math:`\log q(z)`) and ``log_weight``
        (``lp - log_q``) per draw; ``log_likelihood``; ``posterior_predictive``;
        ``predictions`` and ``predictions_constant_data`` when asked; ``prior`` and
        ``prior_predictive`` when asked; ``observed_data``; ``constant_data`` (the
        model's tensor arguments by parameter name); ``fitted_params`` (the model's
        ``pyro.param`` values, dims ``chain, *param dims``); and ``vi_trace`` (variable
        ``elbo``, dims ``chain, step``) or ``em_trace`` (variable ``log_evidence``, dims
        ``chain, iteration``); ``error_bounds`` with a diagnosis that has them.  Every
        group carries the attributes ``inference_method``,
        ``guide_family``, ``num_steps``, ``seed``, ``converged``, ``num_samples``,
        ``num_chains``, ``pyrovi_version``, ``pyro_version`` and ``torch_version`` as
        plain Python values; ``pyrovi.save_netcdf`` encodes those netCDF cannot store.

    Raises
    ------
    ValueError
        ``num_samples`` below 1 or not a multiple of a given ``num_chains``; ``log_likelihood``
        for a model without observed sites; ``coords`` or ``dims`` that do not fit the
        shapes (the message names the variable and both shapes).
    TypeError
        Arguments of the wrong type.

    Warns
    -----
    ModelWarning
        A site named ``chain`` or ``draw`` (names ArviZ reserves): it is exported as
        ``chain_`` / ``draw_``.

    Notes
    -----
    For a VI fit whose discrete latents were enumerated, ``lp`` is
    :math:`\log p(x, z_c)` with the discrete latents summed out and ``log_q`` the guide's
    density of the continuous latents; the discrete latents in ``posterior`` are drawn from
    their exact conditional.  For an EM fit ``log_q`` is the exact
    :math:`\log p(z \mid x, \hat\theta)`, so ``log_weight`` equals the log evidence at
    every draw.
    """
    converter = ResultConverter(
        result,
        num_samples,
        num_chains=num_chains,
        posterior_predictive=posterior_predictive,
        log_likelihood=log_likelihood,
        prior=prior,
        predictions=predictions,
        coords=coords,
        dims=dims,
        seed=seed,
        diagnostics=diagnostics,
    )
    return converter.to_inference_data()
