"""Shared test configuration.

Tests marked ``interpret`` run Triton kernels under the Triton interpreter.  The
interpreter is switched on by ``TRITON_INTERPRET=1`` and must be set before the module that
defines the ``@triton.jit`` functions is imported, so ``make test`` runs those tests in a
second pytest process with the variable set.  Without it they are skipped, saying why.
"""

from __future__ import annotations

import os

import pytest
import torch

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


def pytest_collection_modifyitems(config, items):
    if INTERPRET:
        return
    skip = pytest.mark.skip(
        reason="needs TRITON_INTERPRET=1 before import; run by the second pass of `make test`"
    )
    for item in items:
        if "interpret" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
