"""``funcsparse report PATH``: per-layer sparsity, pattern and bytes of a checkpoint."""

from __future__ import annotations

import argparse
import sys

__all__ = ["COMMAND", "DESCRIPTION", "HELP", "add_arguments", "main"]

COMMAND = "report"
HELP = "per-layer sparsity, pattern and bytes of a checkpoint"
DESCRIPTION = "Report a sparse checkpoint or a plain state_dict file (not implemented yet)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the report's options to its sub-parser."""
    parser.add_argument("path", help="a funcsparse sparse checkpoint or a torch.save'd state_dict")


def main(args: argparse.Namespace) -> int:
    """Run the report from parsed arguments; returns the exit status."""
    print("funcsparse report: not implemented yet", file=sys.stderr)
    return 2
