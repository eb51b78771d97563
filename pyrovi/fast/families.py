"""The compiled path's family math, re-exported from :mod:`pyrovi.families`.

The math classes (:class:`~pyrovi.families.MeanField`, :class:`~pyrovi.families.FullRank`,
:class:`~pyrovi.families.LowRank`, :class:`~pyrovi.families.Delta`) live with the family
records in :mod:`pyrovi.families`, their one home: this package imports the VI driver,
which needs the records, so the records cannot import the math from here.  A family's math
is ``Family.math_for(guide)``; a :class:`~pyrovi.fast.params.GuideParams` holds it as
``params.family``.
"""

from __future__ import annotations

from pyrovi.families import COMPILED, Delta, FamilyMath, FullRank, LowRank, MeanField, QParams

__all__ = ["QParams", "FamilyMath", "MeanField", "FullRank", "LowRank", "Delta", "FAMILIES"]

#: The names of the families the compiled path takes (``pyrovi.families.COMPILED``).
FAMILIES = COMPILED
