"""Command-line entry point: ``python -m funcsparse COMMAND`` (or the ``funcsparse`` script).

Commands:
    demo: train a small model on real data, prune it gradually, compare with torch.ao,
        write plots, a sparse checkpoint and a JSON summary (:mod:`funcsparse.demo_cli`).
    report: per-layer sparsity, pattern and bytes of a checkpoint (:mod:`funcsparse.report`).

Each command's module owns its arguments (``add_arguments``) and its run (``main``), which
returns the exit status.
"""

from __future__ import annotations

import argparse
import sys

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    from funcsparse import demo_cli, report

    parser = argparse.ArgumentParser(
        prog="funcsparse", description="funcsparse: functional, stateless pruning masks."
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in (demo_cli, report):
        sub = commands.add_parser(module.COMMAND, help=module.HELP, description=module.DESCRIPTION)
        module.add_arguments(sub)
        sub.set_defaults(run=module.main)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (2 for a usage error)."""
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # argparse exits on --help and on bad arguments
        return exit_.code if isinstance(exit_.code, int) else 2
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    status: int = args.run(args)
    return status


if __name__ == "__main__":
    raise SystemExit(main())
