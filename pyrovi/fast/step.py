r"""One training step -- ELBO, gradient, clipping, Adam -- as a single compiled region.

:func:`step_math` is the math of a step over flat tensors, with every piece of state passed
in and updated in place: draw the particles, evaluate the ELBO, take its gradient
(:func:`torch.func.grad_and_value`), clip it by its total norm as
:func:`torch.nn.utils.clip_grad_norm_` does, and take the Adam step of
:class:`torch.optim.Adam` (defaults, no weight decay).  A step whose ELBO or gradient is not
finite changes nothing and poisons the state, so that the parameters stay at the last
finite step even when the host only looks every window.

:class:`Stepper` traces that function once into a graph of tensor operations
(:func:`torch.fx.experimental.proxy_tensor.make_fx`, which traces through the autodiff
too) and compiles the graph with :func:`torch.compile` (``mode="reduce-overhead"``, i.e.
CUDA graphs, on a GPU) when the policy says so (``PYROVI_COMPILE``; under ``auto`` only
when the predicted saving repays the compile time, see :meth:`Stepper.maybe_compile`).
Uncompiled, or where compilation fails, the traced graph runs eagerly: the same math.
"""

from __future__ import annotations

import dataclasses
import math
import os
import warnings
from collections.abc import Callable

import torch
from torch.fx.experimental.proxy_tensor import make_fx

from pyrovi.fast.params import GuideParams

__all__ = [
    "ADAM_BETAS",
    "ADAM_EPS",
    "adam_update",
    "clip_total_norm",
    "make_neg_elbo",
    "StepState",
    "new_state",
    "step_math",
    "Stepper",
    "compile_policy",
    "COMPILE_COST",
    "COMPILE_SAVING",
]

#: torch.optim.Adam's defaults, which the driver's Adam uses.
ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8


def adam_update(
    theta: torch.Tensor,
    grad: torch.Tensor,
    m: torch.Tensor,
    v: torch.Tensor,
    step: torch.Tensor,
    lr: torch.Tensor,
    betas: tuple[float, float] = ADAM_BETAS,
    eps: float = ADAM_EPS,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The Adam update of ``torch.optim.Adam`` (no weight decay, not amsgrad), functional.

    ``step`` is the 1-based step count (a tensor, so that the graph is step-independent).
    Returns the new ``(theta, m, v)``; the formula is torch's single-tensor one,
    ``theta - lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)``.
    """
    beta1, beta2 = betas
    m = m + (1.0 - beta1) * (grad - m)
    v = v * beta2 + (1.0 - beta2) * grad * grad
    bias1 = 1.0 - torch.pow(beta1, step)
    bias2 = 1.0 - torch.pow(beta2, step)
    denom = v.sqrt() / bias2.sqrt() + eps
    return theta - (lr / bias1) * m / denom, m, v


def clip_total_norm(
    grad: torch.Tensor, max_norm: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale ``grad`` to total 2-norm at most ``max_norm`` as ``clip_grad_norm_`` does;
    returns ``(clipped, norm before clipping)``."""
    norm = torch.linalg.vector_norm(grad)
    coef = torch.clamp(max_norm / (norm + 1e-6), max=1.0)
    return grad * coef, norm


def make_neg_elbo(
    params: GuideParams, log_density: Callable[[torch.Tensor], torch.Tensor]
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    r"""The negative ELBO estimate as a function of ``(theta, eps)``.

    :math:`-\big(\frac1P \sum_p \log p(x, u_p) + H[q]\big)`, ``u_p = loc + A eps_p``, with
    ``log_density`` the flat log-density over one unconstrained vector (vectorized over the
    particles with :func:`torch.vmap`) and the entropy in closed form.
    """
    family = params.family

    def neg_elbo(theta: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        q = params.constrained(theta)
        u = family.draw(q, eps)
        if u.shape[0] == 1:
            log_p = log_density(u[0])
        else:
            log_p = torch.vmap(log_density)(u).mean()
        return -(log_p + family.entropy(q))

    return neg_elbo


@dataclasses.dataclass(frozen=True)
class StepState:
    """All the tensors a step reads and updates in place (one fit's optimizer state).

    Attributes
    ----------
    theta : Tensor (n,)
        The flat unconstrained guide parameters.
    m, v : Tensor (n,)
        Adam's first and second moments.
    t : Tensor ()
        Adam's step count (updates taken; skipped steps do not count, as in torch).
    count : Tensor () int64
        Steps run, skipped ones included; step ``k``'s ELBO goes to ``elbo[k % window]``.
    lr : Tensor ()
        The current step size (the host changes it at plateaus).
    max_norm : Tensor ()
        The gradient-norm clipping threshold (``inf``: none).
    max_skips : Tensor () int64
        Non-finite steps in a row after which the fit halts.
    eps : Tensor (P, noise)
        The standard-normal noise of the next step (the host refills it).
    elbo : Tensor (window,)
        The ELBO estimate of each step of the current window (NaN for a skipped step).
    skipped : Tensor () int64
        Steps skipped so far because the ELBO or the gradient was not finite.
    streak : Tensor () int64
        Non-finite steps in a row, up to the last one.
    first_bad : Tensor () int64
        The first step of the current streak (-1 before any).
    halted : Tensor () bool
        The streak exceeded ``max_skips``: no step changes anything any more.
    """

    theta: torch.Tensor
    m: torch.Tensor
    v: torch.Tensor
    t: torch.Tensor
    count: torch.Tensor
    lr: torch.Tensor
    max_norm: torch.Tensor
    max_skips: torch.Tensor
    eps: torch.Tensor
    elbo: torch.Tensor
    skipped: torch.Tensor
    streak: torch.Tensor
    first_bad: torch.Tensor
    halted: torch.Tensor

    def tensors(self) -> tuple[torch.Tensor, ...]:
        return tuple(getattr(self, f.name) for f in dataclasses.fields(self))


def new_state(
    params: GuideParams,
    *,
    lr: float,
    clip_norm: float | None,
    max_skips: int,
    num_particles: int,
    window: int,
) -> StepState:
    """A fresh :class:`StepState` starting from the store's current parameter values."""
    theta = params.read().clone()
    dtype, device = theta.dtype, theta.device
    noise = params.family.noise_dim(params.layout.dim)
    particles = num_particles if noise > 0 else 1

    def scalar(value, dt=dtype):
        return torch.tensor(value, dtype=dt, device=device)

    return StepState(
        theta=theta,
        m=torch.zeros_like(theta),
        v=torch.zeros_like(theta),
        t=scalar(0.0),
        count=scalar(0, torch.int64),
        lr=scalar(lr),
        max_norm=scalar(float("inf") if clip_norm is None else clip_norm),
        max_skips=scalar(max_skips, torch.int64),
        eps=torch.zeros(particles, noise, dtype=dtype, device=device),
        elbo=torch.zeros(window, dtype=dtype, device=device),
        skipped=scalar(0, torch.int64),
        streak=scalar(0, torch.int64),
        first_bad=scalar(-1, torch.int64),
        halted=scalar(False, torch.bool),
    )


def step_math(neg_elbo: Callable, *state: torch.Tensor) -> tuple:
    """One step over the tensors of a :class:`StepState` (in its field order), in place.

    A step whose ELBO or gradient norm is not finite changes no parameter (as the SVI loop
    skips it), and after more than ``max_skips`` of them in a row nothing changes at all.
    """
    (theta, m, v, t, count, lr, max_norm, max_skips, eps, elbo, skipped, streak, first_bad,
     halted) = state
    grad, loss = torch.func.grad_and_value(neg_elbo)(theta, eps)
    grad, norm = clip_total_norm(grad, max_norm)
    finite = torch.isfinite(loss) & torch.isfinite(norm)
    ok = finite & ~halted
    bad = ~finite & ~halted
    new_t = t + 1.0
    new_theta, new_m, new_v = adam_update(theta, grad, m, v, new_t, lr)
    theta.copy_(torch.where(ok, new_theta, theta))
    m.copy_(torch.where(ok, new_m, m))
    v.copy_(torch.where(ok, new_v, v))
    t.copy_(torch.where(ok, new_t, t))
    slot = torch.remainder(count, elbo.shape[0]).reshape(1)
    value = torch.where(ok, -loss, torch.full_like(loss, float("nan")))
    elbo.index_copy_(0, slot, value.reshape(1).to(elbo.dtype))
    first_bad.copy_(torch.where(bad & (streak == 0), count, first_bad))
    streak.copy_(torch.where(bad, streak + 1, torch.where(ok, 0, streak)))
    skipped.add_(bad.to(skipped.dtype))
    halted.copy_(halted | (streak > max_skips))
    count.add_(1)
    return ()


#: Prior compile time in seconds by device type, used by ``PYROVI_COMPILE=auto`` until this
#: process has compiled a step and measured it (measured here: 2-5 s on a loaded CPU).
COMPILE_COST = {"cpu": 4.0, "cuda": 8.0}

#: Prior fraction of an eager step's time that compiling saves, by device type, until this
#: process has measured one (a CPU step is mostly arithmetic that compiling barely changes;
#: a GPU step is mostly kernel launches that CUDA graphs remove).
COMPILE_SAVING = {"cpu": 0.3, "cuda": 0.8}

#: What this process measured of its last compilation, by device type:
#: ``(compile seconds, fraction of the eager step saved)``; later fits decide with these.
_MEASURED: dict[str, tuple[float, float]] = {}


def compile_policy() -> str:
    """``"auto"``, ``"always"`` or ``"never"``, from ``PYROVI_COMPILE`` (``auto`` | ``1`` |
    ``0``; default ``auto``)."""
    value = os.environ.get("PYROVI_COMPILE", "auto").strip().lower()
    if value in ("0", "false", "no", "never", "off"):
        return "never"
    if value in ("1", "true", "yes", "always", "on"):
        return "always"
    return "auto"


class Stepper:
    """One fit's step: the traced graph, compiled when the policy says so.

    Parameters
    ----------
    neg_elbo : callable
        ``(theta, eps) -> -ELBO`` (see :func:`make_neg_elbo`).
    state : StepState
        The tensors the step updates in place.
    policy : str, optional
        ``"auto"``, ``"always"`` or ``"never"``; default :func:`compile_policy`.

    Calling the object takes one step (the caller refills ``state.eps`` first); the
    caller reports each window's wall time with :meth:`record`, which the ``auto`` policy
    decides with.  ``note`` says, when not None, how the step ran if not compiled as asked;
    :attr:`compile_note` says whether it compiled and what that cost.
    """

    def __init__(self, neg_elbo: Callable, state: StepState, policy: str | None = None):
        self.tensors = state.tensors()
        copies = [t.clone() for t in self.tensors]  # tracing runs the step: not on the state
        self.graph = make_fx(lambda *s: step_math(neg_elbo, *s))(*copies)
        del copies
        self.fn = self.graph
        self.policy = policy or compile_policy()
        self.device = state.theta.device
        self.compiled = False
        self.note: str | None = None
        self._pending = False
        self.eager_step_s = math.inf  # fastest eager step seen (seconds)
        self.compiled_step_s = math.inf  # fastest compiled step seen (seconds)
        self.compile_s: float | None = None  # measured compile time (seconds)
        self.compiled_at: int | None = None  # steps done when it compiled
        self._timing_compile = False
        self._declined: str | None = None

    def __call__(self) -> None:
        if self._pending:
            self._first_compiled_call()
        else:
            self.fn(*self.tensors)

    def maybe_compile(self, steps_done: int, steps_left: int | None = None) -> None:
        r"""Switch to the compiled step if the policy says so after ``steps_done`` steps.

        ``always`` compiles at once, ``never`` never.  ``auto`` (the default) compiles only
        when the predicted saving repays the compile time:

        .. math::

            \min(n_\text{left}, n_\text{done}) \; t_\text{eager} \; s > c,

        with :math:`t_\text{eager}` the eager step time measured on this fit's first
        windows (:meth:`record`), :math:`s` the fraction of it that compiling saves and
        :math:`c` the compile time (:data:`COMPILE_SAVING`, :data:`COMPILE_COST`, or this
        process's last measurement of them).  A fit that has run ``n_done`` steps is
        predicted to run about as many more (capped by ``steps_left``), so a fit that
        stops at its plateau a few thousand steps in never waits on a compilation it does
        not earn back, while a long or slow-stepping fit compiles once it is clear that it
        will.  Nothing is compiled before a step has been timed.
        """
        if self.compiled or self._pending or self.policy == "never":
            return
        if self.policy == "auto":
            if not math.isfinite(self.eager_step_s):
                return
            kind = "cuda" if self.device.type == "cuda" else "cpu"
            cost, saving = _MEASURED.get(kind, (COMPILE_COST[kind], COMPILE_SAVING[kind]))
            left = steps_done if steps_left is None else min(steps_left, steps_done)
            gain = left * self.eager_step_s * saving
            if gain <= cost:
                self._declined = (
                    f"not compiled: at step {steps_done} the predicted saving ({left} more "
                    f"steps x {1e3 * self.eager_step_s:.3g} ms x {saving:.0%} = {gain:.2g} s) "
                    f"was below the compile time ({cost:.2g} s)"
                )
                return
        try:
            if self.device.type == "cuda":
                for t in self.tensors:  # fixed addresses, so CUDA graphs take the mutations
                    torch._dynamo.mark_static_address(t)
                self.fn = torch.compile(
                    self.graph, mode="reduce-overhead", fullgraph=True, dynamic=False
                )
            else:
                self.fn = torch.compile(self.graph, fullgraph=True, dynamic=False)
        except Exception as err:  # torch.compile unavailable in this build
            self.note = f"torch.compile is unavailable ({type(err).__name__}); ran uncompiled"
            self.policy = "never"
            return
        self.compiled = True
        self.compiled_at = steps_done
        self._pending = True
        self._timing_compile = True

    def record(self, steps: int, seconds: float) -> None:
        """Report that the last ``steps`` steps took ``seconds`` of wall time (host synced).

        The first window after compiling holds the compilation: its excess over the eager
        steps is the compile time; later windows give the compiled step's time.  Both are
        kept for later fits in this process (:data:`_MEASURED`).
        """
        if steps <= 0:
            return
        per_step = seconds / steps
        kind = "cuda" if self.device.type == "cuda" else "cpu"
        if self._timing_compile:
            self._timing_compile = False
            if self.compiled and math.isfinite(self.eager_step_s):
                self.compile_s = max(seconds - steps * self.eager_step_s, 0.0)
                saving = _MEASURED.get(kind, (0.0, COMPILE_SAVING[kind]))[1]
                _MEASURED[kind] = (self.compile_s, saving)
            return
        if self.compiled:
            self.compiled_step_s = min(self.compiled_step_s, per_step)
            if self.compile_s is not None and math.isfinite(self.eager_step_s):
                saving = min(max(1.0 - self.compiled_step_s / self.eager_step_s, 0.0), 1.0)
                _MEASURED[kind] = (self.compile_s, saving)
        else:
            self.eager_step_s = min(self.eager_step_s, per_step)

    @property
    def compile_note(self) -> str | None:
        """Whether the step compiled and what it cost, in words (None under ``never`` or
        before a decision)."""
        if self.compiled and self.compiled_at is not None:
            parts = [f"compiled with torch.compile at step {self.compiled_at}"]
            if self.compile_s is not None:
                parts.append(f"compiling took {self.compile_s:.2g} s")
            if math.isfinite(self.eager_step_s) and math.isfinite(self.compiled_step_s):
                parts.append(
                    f"step {1e3 * self.eager_step_s:.3g} ms eager, "
                    f"{1e3 * self.compiled_step_s:.3g} ms compiled"
                )
            return "; ".join(parts)
        return self._declined

    def _first_compiled_call(self) -> None:
        """Compilation happens at the first call; if it fails, restore the state and run the
        traced graph eagerly from then on (same math)."""
        self._pending = False
        saved = [t.clone() for t in self.tensors]
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # torch-internal deprecations
                self.fn(*self.tensors)
        except Exception as err:  # compilation failed: the eager graph computes the same
            with torch.no_grad():
                for t, s in zip(self.tensors, saved, strict=True):
                    t.copy_(s)
            first = str(err).splitlines()[0][:200] if str(err) else ""
            self.note = f"torch.compile failed ({type(err).__name__}: {first}); ran uncompiled"
            self.fn, self.compiled, self.policy = self.graph, False, "never"
            self.fn(*self.tensors)
