"""The ``pyrovi`` command line.

Every argument is checked before any work and before any folder is created; a bad one ends
the command with one line on standard error that names it and says what to do (exit 2).
"""

from __future__ import annotations

import argparse
import os
import sys

from pyrovi._version import __version__

_DESCRIPTION = """\
pyrovi: variational inference, exact EM and ELBO-vs-log-evidence diagnostics for Pyro
models.

commands:
  demo    fit a Gaussian mixture (EM against variational Bayes), a Bayesian linear
          regression (exact evidence against every guide family) and eight schools
          (evidence by annealed importance sampling); print a table and a verdict per
          model and write netCDF files, plots and report.md to --out
"""


class UsageError(SystemExit):
    """A bad command-line argument: one line, exit status 2."""

    def __init__(self, message: str):
        super().__init__(2)
        self.message = message

    def __str__(self) -> str:
        return self.message


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pyrovi", description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"pyrovi {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")
    demo = sub.add_parser(
        "demo", help="fit the demo models with EM and every guide family",
        description="Fit the demo suite and write its results to a folder.",
    )
    demo.add_argument("--out", default=None,
                      help="output folder, new or empty (default: ./pyrovi-demo-<time>)")
    demo.add_argument("--quick", action="store_true", help="a much shorter run (~1 minute)")
    demo.add_argument("--force", action="store_true",
                      help="write into an --out folder that already holds files")
    demo.add_argument("--device", default=None,
                      help="'cpu' or 'cuda' / 'cuda:N' (default: cpu)")
    demo.add_argument("--seed", type=int, default=0, help="seed of every fit (default: 0)")
    return parser


def check_device(device: str | None) -> str | None:
    """Return ``device`` if this machine has it, else raise :class:`UsageError` with the
    reason :func:`pyrovi._runtime.check_device` gives (the one check of every fit)."""
    from pyrovi._runtime import check_device as _check

    try:
        _check(device)
    except (TypeError, ValueError) as err:
        raise UsageError(f"pyrovi demo: --{err}") from None
    return device


def check_out(out: str | None) -> str | None:
    """Refuse an ``--out`` that cannot become the output folder, before creating anything.

    Refused: an empty string, a path that is (or lies under) a file, a symbolic link (a
    dangling one, or one whose target is outside the link's folder: the demo writes only
    where ``--out`` says).
    """
    if out is None:
        return None
    if not out.strip():
        raise UsageError("pyrovi demo: --out is empty; pass a folder, e.g. --out results")
    path = os.path.abspath(out)
    if os.path.islink(path):
        target = os.path.realpath(path)
        if not os.path.exists(target):
            raise UsageError(
                f"pyrovi demo: --out {out!r} is a symbolic link to {target!r}, which does "
                "not exist; pass a real folder"
            )
        raise UsageError(
            f"pyrovi demo: --out {out!r} is a symbolic link (to {target!r}); pass the "
            "folder itself"
        )
    if os.path.exists(path) and not os.path.isdir(path):
        raise UsageError(f"pyrovi demo: --out {out!r} is a file, not a folder; pass a folder")
    parent = path
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise UsageError(
            f"pyrovi demo: --out {out!r} lies under {parent!r}, which is a file; pass a "
            "folder path"
        )
    if not os.access(parent, os.W_OK):
        raise UsageError(
            f"pyrovi demo: cannot create or write {out!r} ({parent!r} is not writable); "
            "pass a writable folder"
        )
    return out


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``pyrovi`` console script."""
    args = _parser().parse_args(argv)
    if args.command == "demo":
        out = check_out(args.out)
        device = check_device(args.device)
        from pyrovi.demo import run_demo

        return run_demo(out=out, quick=args.quick, force=args.force, device=device,
                        seed=args.seed)
    return 2


def console() -> None:
    """The console script: print a :class:`UsageError` as its one line, no traceback."""
    try:
        sys.exit(main())
    except UsageError as err:
        print(err.message, file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    console()
