"""Exact posterior draws and densities of an EM fit: now in :mod:`pyrovi.em.posterior`.

This module only re-exports them, so that earlier imports keep working.
"""

from pyrovi.em.posterior import (
    _to_particle_layout,
    log_joint,
    log_posterior,
    model_layout,
    particle_dim,
    particle_log_joint,
    plain_log_joint,
    sample_posterior,
)

__all__ = [
    "particle_log_joint",
    "plain_log_joint",
    "sample_posterior",
    "log_posterior",
    "log_joint",
    "particle_dim",
    "model_layout",
    "_to_particle_layout",
]
