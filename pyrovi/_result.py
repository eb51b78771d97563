"""What every pyrovi result shares: the model with its arguments, and a way back into the fit.

``VIResult`` and ``EMResult`` both derive from :class:`FitResult`, so diagnostics and the
ArviZ export need nothing but the result.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch

from pyrovi._runtime import param_scope


class FitResult:
    """Mixin for frozen dataclasses that hold ``model``, ``args``, ``kwargs``,
    ``param_state`` (the fit's own Pyro parameter-store state) and ``device``."""

    model: Callable
    args: tuple
    kwargs: dict
    param_state: dict
    device: torch.device

    @contextlib.contextmanager
    def scope(self) -> Iterator[None]:
        """Re-enter the fit: its parameter store is active and its device is the default.

        Inside the block ``pyro.param(name)`` returns the fitted value and running the model
        or guide uses the fitted parameters; the caller's global store is restored after.
        Draws from a copy of the stored state, so evaluation never changes the result.
        """
        state = {
            "params": dict(self.param_state["params"]),
            "constraints": dict(self.param_state["constraints"]),
        }
        with param_scope(state), torch.device(self.device):
            yield
