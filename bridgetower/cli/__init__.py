"""The ``bridgetower`` command line: ``pretrain``, ``score``, ``finetune``, ``evaluate-retrieval``.

One module per command (:mod:`~bridgetower.cli.pretrain`, :mod:`~bridgetower.cli.score`,
:mod:`~bridgetower.cli.finetune`, :mod:`~bridgetower.cli.evaluate_retrieval`), each of which
only parses its arguments and calls a driver in :mod:`bridgetower.training`; what they share
is in :mod:`~bridgetower.cli.common`.  Each module's ``add_parser(subparsers)`` registers its
command with a ``handler(args) -> exit status``; :func:`main` runs it and turns a
:class:`~bridgetower.cli.common.CLIError` into ``bridgetower COMMAND: error: ...`` with exit
status 2.

``bridgetower pretrain`` with no arguments runs the bundled demo; ``bridgetower score IMAGE
TEXT...`` prints the ITM scores of one image against several texts from a saved checkpoint.
``python -m bridgetower`` and ``python -m bridgetower.cli`` (what ``torchrun -m`` needs) run
the same :func:`main`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

# The OpenMP wait policy is left to the user: on an idle machine spinning threads (the
# default) run the demo about 2x faster than OMP_WAIT_POLICY=PASSIVE; on a shared machine,
# OMP_NUM_THREADS=1 is the setting that degrades least (docs/benchmarks.md, 2026-12-03).
from .. import __version__
from . import evaluate_retrieval, explain, finetune, index, pretrain, score, search
from .common import CLIError

__all__ = ["CLIError", "add_parsers", "build_parser", "main"]


def add_parsers(subparsers: argparse._SubParsersAction) -> None:
    """Register every command on ``subparsers`` (each sets ``handler``)."""
    for command in (pretrain, score, finetune, evaluate_retrieval, index, search, explain):
        command.add_parser(subparsers)


def build_parser() -> argparse.ArgumentParser:
    """The ``bridgetower`` argument parser with every command."""
    parser = argparse.ArgumentParser(
        prog="bridgetower",
        description="BridgeTower vision-language models: pretrain, fine-tune, score image-text pairs.",
    )
    parser.add_argument("--version", action="version", version=f"bridgetower {__version__}")
    add_parsers(parser.add_subparsers(dest="command", metavar="COMMAND"))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``bridgetower`` command; returns the exit status (argument errors
    and ``--help`` / ``--version`` exit through ``argparse``)."""
    parser = build_parser()
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return int(args.handler(args))
    except CLIError as e:
        print(f"bridgetower {args.command}: error: {e}", file=sys.stderr)
        return 2
