"""Sub-commands of the ``bridgetower`` command line that live outside :mod:`bridgetower.cli`.

Each module exposes ``add_parsers(subparsers)``, which registers its sub-commands on the
``argparse`` sub-parser action and sets ``handler`` (``handler(args) -> exit status``) as a
default of each, so ``bridgetower.cli.main`` runs ``args.handler(args)``.
"""

from __future__ import annotations

import argparse

from . import downstream

__all__ = ["add_parsers", "downstream"]


def add_parsers(subparsers: argparse._SubParsersAction) -> None:
    """Register every sub-command of this package (``finetune``, ``evaluate-retrieval``)."""
    downstream.add_parsers(subparsers)
