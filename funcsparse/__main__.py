"""Command-line entry point: ``python -m funcsparse demo`` (or the ``funcsparse`` script)."""

from __future__ import annotations

import argparse
import sys

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    from funcsparse.demo import DEFAULT_STEPS

    parser = argparse.ArgumentParser(
        prog="funcsparse", description="funcsparse: functional, stateless pruning masks."
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = commands.add_parser(
        "demo",
        help="train a small MLP and prune it gradually while it trains",
        description="Train a small MLP on synthetic data with a pure torch.func loop while "
        "fs.Pruner raises every weight's fs.WeightNorm level (1x4 blocks) on a cubic "
        "schedule; print the schedule's levels as the masks change, the accuracies and a "
        "per-layer sparsity table.",
    )
    demo.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    demo.add_argument(
        "--steps",
        type=int,
        default=DEFAULT_STEPS,
        help=f"training steps (default: {DEFAULT_STEPS})",
    )
    demo.add_argument(
        "--sparsity",
        type=float,
        default=0.5,
        help="final WeightNorm sparsity, in [0, 1] (default: 0.5)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (2 for a usage error)."""
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # argparse exits on --help and on bad arguments
        return exit_.code if isinstance(exit_.code, int) else 2
    if args.command != "demo":
        parser.print_help(sys.stderr)
        return 2

    from funcsparse.demo import run_demo

    try:
        run_demo(seed=args.seed, steps=args.steps, sparsity=args.sparsity, out=sys.stdout)
    except (TypeError, ValueError) as err:
        print(f"funcsparse demo: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
