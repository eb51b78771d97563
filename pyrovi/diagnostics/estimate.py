"""The value a log-evidence estimator returns, and the error of an intractable request.

Kept apart from the estimators (:mod:`pyrovi.diagnostics.exact`,
:mod:`pyrovi.diagnostics.ais_evidence`) and their dispatcher
(:mod:`pyrovi.diagnostics.evidence`) so that each of them can import it.
"""

from __future__ import annotations

import dataclasses

from pyrovi.errors import IntractableError

__all__ = ["Estimate", "IntractableError"]


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

    def __repr__(self) -> str:
        return (f"Estimate(value={self.value:.6g}, se={self.se:.3g}, method={self.method!r}, "
                f"num_particles={self.num_particles})")

    def __str__(self) -> str:
        se = "" if self.method == "exact" else f" ± {self.se:.4g}"
        return f"log p(x) = {self.value:.6g}{se} ({self.method}, {self.num_particles} draws)"

