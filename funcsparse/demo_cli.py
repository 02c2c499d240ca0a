"""``funcsparse demo``: the command's arguments and its run (the demo lives in :mod:`.demo`)."""

from __future__ import annotations

import argparse
import sys
from typing import TypeVar

from funcsparse.demo import (
    DEFAULT_OUT,
    DEFAULT_REPEATS,
    DEFAULT_SPARSITIES,
    DEFAULT_STEPS,
    QUICK_REPEATS,
    QUICK_SPARSITIES,
    QUICK_STEPS,
    run_demo,
)

__all__ = ["COMMAND", "DESCRIPTION", "HELP", "add_arguments", "main"]

T = TypeVar("T")

COMMAND = "demo"
HELP = "prune an MLP on real digits while it trains; compare with torch.ao; write plots"
DESCRIPTION = (
    "Train an MLP on the UCI handwritten digits (shipped, CC BY 4.0) in a pure torch.func "
    "loop, once per final sparsity, while fs.Pruner raises an unstructured fs.WeightNorm "
    "level on every weight along a cubic schedule. Print the accuracy per sparsity against "
    "the dense baseline, a per-layer sparsity table, and the time funcsparse and "
    "torch.ao.pruning take for the same masks (which must be identical: exit status 1 "
    "otherwise). Write accuracy.png, masks.png, a sparse checkpoint and summary.json to "
    "--out. The progress bar and the plots need tqdm and matplotlib "
    "(pip install 'funcsparse[demo]')."
)


def _pick(given: T | None, quick: T, default: T, use_quick: bool) -> T:
    """The option's value: as given, else its --quick value or its default."""
    if given is not None:
        return given
    return quick if use_quick else default


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the demo's options to its sub-parser."""
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help=f"training steps per run (default: {DEFAULT_STEPS}; --quick: {QUICK_STEPS})",
    )
    parser.add_argument(
        "--sparsities",
        type=float,
        nargs="+",
        default=None,
        metavar="LEVEL",
        help=(
            "final sparsities in [0, 1], one run each; 0 (the dense baseline) is always run "
            f"(default: {' '.join(f'{s:g}' for s in DEFAULT_SPARSITIES)}; --quick: "
            f"{' '.join(f'{s:g}' for s in QUICK_SPARSITIES)})"
        ),
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=None,
        help=(
            f"timed repetitions of each side of the torch.ao comparison "
            f"(default: {DEFAULT_REPEATS}; --quick: {QUICK_REPEATS})"
        ),
    )
    parser.add_argument(
        "--out",
        default=DEFAULT_OUT,
        metavar="DIR",
        help=f"folder for the plots, the checkpoint and summary.json (default: {DEFAULT_OUT}/)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a few seconds: fewer steps, sparsities and repetitions (what CI runs)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")


def main(args: argparse.Namespace) -> int:
    """Run the demo from parsed arguments; returns the exit status.

    0 when the masks equal torch.ao's, 1 when they do not, 2 for a bad argument.
    """
    quick = bool(args.quick)
    try:
        summary = run_demo(
            seed=args.seed,
            steps=_pick(args.steps, QUICK_STEPS, DEFAULT_STEPS, quick),
            sparsities=_pick(args.sparsities, QUICK_SPARSITIES, DEFAULT_SPARSITIES, quick),
            repeats=_pick(args.repeats, QUICK_REPEATS, DEFAULT_REPEATS, quick),
            out_dir=args.out,
            out=sys.stdout,
            progress=not args.no_progress,
        )
    except (TypeError, ValueError) as err:
        print(f"funcsparse demo: error: {err}", file=sys.stderr)
        return 2
    return 0 if summary["identical"] else 1
