"""``python -m bridgetower.cli`` (as ``torchrun -m bridgetower.cli`` runs it) = the ``bridgetower`` command."""

import sys

from . import main

sys.exit(main())
