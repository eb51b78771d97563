"""Compiled fast path for the Gaussian guide families (meanfield, lowrank, fullrank, delta).

``pyrovi.VI(..., backend="auto")`` uses it when the model allows: the model is traced once
into a flat log-density over one unconstrained vector (:mod:`pyrovi.fast.potential`, on
Pyro's HMC potential machinery), the ELBO of a family is plain tensor math
(:mod:`pyrovi.fast.families`), and one step -- draws, ELBO, gradient, clipping, Adam -- is a
single traced and compiled graph (:mod:`pyrovi.fast.step`).  The fitted values are written
back into the autoguide's parameters, so results behave exactly as after Pyro's SVI.

The driver hooks are :func:`compiled_unsupported` and :func:`train_compiled`
(:mod:`pyrovi.fast.train`).  Set ``PYROVI_COMPILE=0`` to run the traced step without
``torch.compile`` (same math, no compilation time).
"""

from pyrovi.fast.train import compiled_unsupported, train_compiled

__all__ = ["compiled_unsupported", "train_compiled"]
