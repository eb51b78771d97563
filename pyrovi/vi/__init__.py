"""Variational inference: the driver, its objective, convergence rule and result."""

from pyrovi.vi.driver import VI
from pyrovi.vi.result import VIResult

__all__ = ["VI", "VIResult"]
