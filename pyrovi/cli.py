"""The ``pyrovi`` command line: ``pyrovi demo`` fits the demo suite and prints the results."""

from __future__ import annotations

import argparse
import sys


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pyrovi", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="fit the demo models with every guide family")
    demo.add_argument("--out", default=None, help="output folder (default: a new folder here)")
    demo.add_argument("--quick", action="store_true", help="a much shorter run")
    demo.add_argument("--force", action="store_true", help="overwrite files in --out")
    demo.add_argument("--device", default=None, help="'cpu' or 'cuda'")
    demo.add_argument("--seed", type=int, default=0)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``pyrovi`` console script."""
    args = _parser().parse_args(argv)
    if args.command == "demo":
        from pyrovi.demo import run_demo

        return run_demo(
            out=args.out, quick=args.quick, force=args.force, device=args.device, seed=args.seed
        )
    return 2


if __name__ == "__main__":
    sys.exit(main())
