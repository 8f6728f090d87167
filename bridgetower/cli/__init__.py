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
import os
import sys
from collections.abc import Sequence

# OpenMP threads sleep instead of spinning between parallel regions unless the user says
# otherwise: next to another busy process, spinning threads made a 2-thread training step up
# to ~4-20x slower (docs/benchmarks.md, 2026-12-03).  Read once, when torch loads its OpenMP
# runtime, which the imports below do.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from .. import __version__  # noqa: E402
from . import evaluate_retrieval, explain, finetune, index, pretrain, score, search  # noqa: E402
from .common import CLIError  # noqa: E402

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
