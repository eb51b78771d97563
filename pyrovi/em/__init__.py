"""Exact-posterior EM for Pyro models, with closed-form ready models.

``EM(model, ...).run(*args)`` fits the ``pyro.param`` sites of a Pyro model whose latents
have an exact posterior (finite discrete, or linear-Gaussian) and returns an
:class:`EMResult`.  The ready models :func:`gaussian_mixture_model`,
:func:`factor_analysis_model` and :func:`ppca_model` run their E- and M-steps in closed form,
and ``EM(model).stream(chunks)`` fits them to data read a chunk at a time (exact batch EM, or
:class:`OnlineEM`), on one process or on every rank of a ``torch.distributed`` group.
"""

from pyrovi.em.closed_form import ClosedFormModel
from pyrovi.em.driver import EM
from pyrovi.em.factor_analysis import FactorAnalysisModel, factor_analysis_model, ppca_model
from pyrovi.em.gmm import GaussianMixtureModel, gaussian_mixture_model
from pyrovi.em.mstep import LBFGSMStep
from pyrovi.em.posterior import DiscretePosterior, GaussianPosterior
from pyrovi.em.result import EMResult
from pyrovi.em.source import chunked
from pyrovi.em.stream import OnlineEM

__all__ = [
    "EM",
    "EMResult",
    "DiscretePosterior",
    "GaussianPosterior",
    "ClosedFormModel",
    "GaussianMixtureModel",
    "gaussian_mixture_model",
    "FactorAnalysisModel",
    "factor_analysis_model",
    "ppca_model",
    "LBFGSMStep",
    "OnlineEM",
    "chunked",
]
