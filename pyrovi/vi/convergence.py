"""The convergence rule of a VI fit, as a pure function of window means of the ELBO.

The rule lives in :mod:`pyrovi._steps`, below both VI backends (Pyro's SVI loop and the
compiled path), which both use it; it is re-exported here, where users find it.  See
:class:`PlateauRule` for the rule and its defaults.
"""

from __future__ import annotations

from pyrovi._steps import PlateauRule, PlateauState

__all__ = ["PlateauRule", "PlateauState"]
