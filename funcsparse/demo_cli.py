"""``funcsparse demo``: the command's arguments and its run (the demo lives in :mod:`.demo`)."""

from __future__ import annotations

import argparse
import sys

from funcsparse.demo import DEFAULT_STEPS, run_demo

__all__ = ["COMMAND", "DESCRIPTION", "HELP", "add_arguments", "main"]

COMMAND = "demo"
HELP = "train a small MLP and prune it gradually while it trains"
DESCRIPTION = (
    "Train a small MLP on synthetic data with a pure torch.func loop while "
    "fs.Pruner raises every weight's fs.WeightNorm level (1x4 blocks) on a cubic "
    "schedule; print the schedule's levels as the masks change, the accuracies and a "
    "per-layer sparsity table."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the demo's options to its sub-parser."""
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument(
        "--steps",
        type=int,
        default=DEFAULT_STEPS,
        help=f"training steps (default: {DEFAULT_STEPS})",
    )
    parser.add_argument(
        "--sparsity",
        type=float,
        default=0.5,
        help="final WeightNorm sparsity, in [0, 1] (default: 0.5)",
    )


def main(args: argparse.Namespace) -> int:
    """Run the demo from parsed arguments; returns the exit status."""
    try:
        run_demo(seed=args.seed, steps=args.steps, sparsity=args.sparsity, out=sys.stdout)
    except (TypeError, ValueError) as err:
        print(f"funcsparse demo: error: {err}", file=sys.stderr)
        return 2
    return 0
