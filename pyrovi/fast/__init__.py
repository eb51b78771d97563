"""Compiled fast path for the Gaussian guide families (meanfield, lowrank, fullrank, delta).

``pyrovi.VI(..., backend="auto")`` uses it when the model allows: the model is traced once
into a flat log-density over one unconstrained vector (:mod:`pyrovi.fast.potential`, on
Pyro's HMC potential machinery), the ELBO of a family is plain tensor math (the math
objects of the family registry, :mod:`pyrovi.families`), and one step -- draws, ELBO,
gradient, clipping, Adam -- is a single traced and compiled graph
(:mod:`pyrovi.fast.step`).  The fitted values are written back into the autoguide's
parameters, so results behave exactly as after Pyro's SVI.

It is a backend of :class:`pyrovi.VI` that takes values and returns values
(:mod:`pyrovi.fast.backend`): :func:`plan` ``-> Plan | reason`` and :func:`train`
``-> Outcome`` (:class:`Settings`, :class:`Outcome` and :class:`NonFinite` live in
:mod:`pyrovi._steps`, shared with the SVI loop).  It imports nothing from
:mod:`pyrovi.vi`.  Set ``PYROVI_COMPILE=0`` to run the traced step without
``torch.compile`` (same math, no compilation time).
"""

from pyrovi._steps import NonFinite, Outcome, Settings
from pyrovi.fast.backend import Plan, plan, run_steps, train

__all__ = ["Plan", "plan", "train", "run_steps", "Settings", "Outcome", "NonFinite"]
