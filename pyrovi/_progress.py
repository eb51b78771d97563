"""What a fit shows on the terminal while it runs, and the line it leaves when it ends.

One :class:`Progress` per fit, on tqdm (``tqdm.auto``: a widget in a notebook, a bar on
stderr elsewhere).  The drivers and backends tell it what they already know -- the steps
done, a window's mean ELBO with its Monte Carlo error and where the convergence rule
stands, an L-BFGS iteration, a fresh-draw check, an EM iteration -- and it never asks for
anything: no value crosses from the device for the display alone (the stochastic-gradient
loops report once per convergence window, when the rule reads the ELBO anyway).

A live bar shows the current stage; a fit governed by a convergence rule has no total
(the rule, not ``num_steps``, decides where it ends: the bar counts and shows the rule's
stage instead of a percentage that would stop at 12 %), a fixed-length run (``tol=0``) has
``num_steps`` as its total.  Events a user should not miss (a compilation about to start,
a change of method) are printed as lines of their own, and :meth:`Progress.finish` replaces
the bar with one line that stays on screen and carries the result's own numbers, e.g.::

    VI meanfield (sgd, compiled): converged after 1,234 steps, ELBO -500.43 +- 0.01, 2.1 s

``enabled=False`` prints nothing at all.
"""

from __future__ import annotations

import math
import sys
import time

from tqdm.auto import tqdm

__all__ = ["Progress", "format_estimate", "format_count"]


def format_count(n: int) -> str:
    """``1234 -> "1,234"``."""
    return f"{int(n):,}"


def format_estimate(value: float, se: float | None = None) -> str:
    """A value with its standard error, to the error's precision: ``"-500.43 +- 0.012"``.

    Without a usable error (``None``, NaN, infinite) the value alone, to 2 decimals; an
    error of 0 (an exact value) prints as ``"+- 0"``.
    """
    if not math.isfinite(value):
        return f"{value}"
    if se is None or not math.isfinite(se):
        return f"{value:.2f}"
    if se <= 0:
        return f"{value:.2f} +- 0"
    decimals = min(max(1 - math.floor(math.log10(se)), 2), 6)
    return f"{value:.{decimals}f} +- {se:.2g}"


class Progress:
    """The progress display of one fit (see the module docstring).

    Parameters
    ----------
    name : str
        What is fitted, first word of every line (``"VI meanfield"``, ``"EM"``).
    enabled : bool
        Show anything at all.
    """

    def __init__(self, name: str, *, enabled: bool):
        self.name = name
        self.enabled = bool(enabled)
        self.bar = None
        self.start = time.perf_counter()
        self.lines: list[str] = []  # every line left on screen, for the caller and tests

    # ---------------------------------------------------------------------- stages
    def stage(self, desc: str, *, total: int | None = None, unit: str = "step",
              initial: int = 0) -> None:
        """Open the live bar of a new stage (closing the previous one): ``desc`` says what
        runs and by which rule it ends; ``total`` only when the stage's length is known."""
        self.close()
        if not self.enabled:
            return
        self.bar = tqdm(
            total=total, initial=initial, desc=f"{self.name}: {desc}", unit=unit,
            leave=False, file=sys.stderr, dynamic_ncols=True,
        )

    def advance(self, n: int = 1) -> None:
        """``n`` more steps (iterations) done."""
        if self.bar is not None and n:
            self.bar.update(n)

    def show(self, refresh: bool = True, **fields: str) -> None:
        """Replace what the bar shows after its count (``ELBO="-500.4 +- 0.1"``, ...);
        ``refresh=False`` leaves the redraw to tqdm's next timed update."""
        if self.bar is not None:
            self.bar.set_postfix_str(
                ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in fields.items()),
                refresh=refresh,
            )

    def say(self, text: str) -> None:
        """A line of its own that stays on screen, above the bar."""
        if not self.enabled:
            return
        line = f"{self.name}: {text}"
        self.lines.append(line)
        if self.bar is not None:
            self.bar.write(line, file=sys.stderr)
        else:
            tqdm.write(line, file=sys.stderr)

    # ------------------------------------------------------- what the fits report
    def window(self, mean: float, se: float, state, rule, lr: float) -> None:
        """A stochastic-gradient window: its mean ELBO with its error, and the rule's stage
        (``state``: :class:`~pyrovi._steps.PlateauState`; ``rule``:
        :class:`~pyrovi._steps.PlateauRule`)."""
        if self.bar is None:
            return
        fields = {"ELBO": format_estimate(mean, se)}
        if math.isfinite(rule.patience):
            fields["lr cut"] = f"{state.reductions}/{rule.max_reductions}"
            fields["stalled"] = f"{state.stalls}/{rule.patience}"
        fields["lr"] = f"{lr:.2g}"
        self.show(**fields)

    def lbfgs(self, elbo: float) -> None:
        """One more L-BFGS iteration of DADVI, with the fixed-draw ELBO after it (a host
        float already)."""
        if self.bar is None:
            return
        self.show(refresh=False, ELBO=f"{elbo:.4f} (fixed draws)")
        self.bar.update(1)

    def check(self, num_draws: int, elbo: float, fresh: float, se: float, passed: bool,
              num_fresh: int, *, fit: str = "") -> None:
        """DADVI's fresh-draw check of a fit with ``num_draws`` fixed draws (``fit`` names
        an intermediate fit, such as a lowrank fit's fullrank start)."""
        verdict = "passed" if passed else "not passed"
        of = f" of {fit}" if fit else ""
        self.say(
            f"fresh-draw check{of} with M = {num_draws} fixed draws {verdict}: fixed-draw ELBO "
            f"{elbo:.4f} vs {format_estimate(fresh, se)} on {format_count(num_fresh)} "
            "fresh draws (antithetic pairs)"
        )

    def em(self, log_evidence: float, change: float) -> None:
        """One more EM iteration, with its log evidence and its change per observation."""
        if self.bar is None:
            return
        self.show(refresh=False, log_evidence=f"{log_evidence:.6g}", change=f"{change:.2g}/obs")
        self.bar.update(1)

    # ------------------------------------------------------------------- the end
    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def finish(self, text: str, seconds: float | None = None) -> str:
        """Close the bar and leave ``"<name>: <text>, <seconds> s"`` on screen; the line."""
        self.close()
        seconds = self.elapsed() if seconds is None else seconds
        line = f"{text}, {seconds:.1f} s"
        self.say(line)
        return f"{self.name}: {line}"

    def close(self) -> None:
        """Close the live bar, if any (it is erased: lines written by :meth:`say` stay)."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
